"""Multi-scale deformable attention, in one place: the public function `ms_deform_attn` and the module
`MultiScaleDeformableAttention` that the model calls.

`ms_deform_attn` runs the compiled `torch.ops.referformer.ms_deform_attn` operator (built by `referformer.kernels` on
first use, installed with the package only, never with remote code) when it is usable for the inputs, and the PyTorch
implementation (`grid_sample` per level) otherwise or with `use_custom_kernel=False`. `MultiScaleDeformableAttention`
keeps the forward signature of transformers' Deformable DETR, so that a compatible Hub kernel can replace it
(`use_kernels=True`). The one off-switch of the compiled operator is `ReferFormerConfig.disable_custom_kernels`.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.integrations import use_kernel_forward_from_hub


try:  # the compiled operator ships with the installed package only
    from referformer import kernels as referformer_kernels
except ImportError:
    referformer_kernels = None


# Dtypes the compiled kernels are built for, per device type.
CUSTOM_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _check_inputs(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, spatial_shapes_list=None
) -> None:
    """Raises a clear error for operands of the wrong type, rank, shape, dtype or device, and for a
    `spatial_shapes_list` that does not tile `value` (metadata only, so it is traceable by `torch.compile`)."""
    operands = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in operands.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if value.dim() != 4:
        raise ValueError(
            f"ms_deform_attn: value must be [batch, num_values, heads, head_dim], got {tuple(value.shape)}"
        )
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be [levels, 2], got {tuple(spatial_shapes.shape)}")
    if level_start_index.dim() != 1:
        raise ValueError(f"ms_deform_attn: level_start_index must be [levels], got {tuple(level_start_index.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[5] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be [batch, queries, heads, levels, points, 2], got "
            f"{tuple(sampling_locations.shape)}"
        )
    batch_size, _, num_heads, _ = value.shape
    _, _, _, num_levels, _, _ = sampling_locations.shape
    if sampling_locations.shape[0] != batch_size or sampling_locations.shape[2] != num_heads:
        raise ValueError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} does not match the batch size and "
            f"heads of value {tuple(value.shape)}"
        )
    if spatial_shapes.shape[0] != num_levels or level_start_index.shape[0] != num_levels:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes {tuple(spatial_shapes.shape)} and level_start_index "
            f"{tuple(level_start_index.shape)} must describe the {num_levels} levels of sampling_locations"
        )
    if attention_weights.shape != sampling_locations.shape[:5]:
        raise ValueError(
            f"ms_deform_attn: attention_weights must be {tuple(sampling_locations.shape[:5])} to match "
            f"sampling_locations, got {tuple(attention_weights.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    mixed_precision = torch.is_autocast_enabled(value.device.type)  # operands then run in float32 (see below)
    if not mixed_precision and (sampling_locations.dtype != value.dtype or attention_weights.dtype != value.dtype):
        raise TypeError(
            "ms_deform_attn: value, sampling_locations and attention_weights must have the same dtype, got "
            f"{value.dtype}, {sampling_locations.dtype} and {attention_weights.dtype}"
        )
    if spatial_shapes.dtype != torch.int64 or level_start_index.dtype != torch.int64:
        raise TypeError(
            "ms_deform_attn: spatial_shapes and level_start_index must be int64, got "
            f"{spatial_shapes.dtype} and {level_start_index.dtype}"
        )
    for name, tensor in operands.items():
        if tensor.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {tensor.device} but value is on {value.device}")
    if spatial_shapes_list is None:
        return
    if not isinstance(spatial_shapes_list, (list, tuple)) or len(spatial_shapes_list) != num_levels:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes_list must be a list of the (height, width) of the {num_levels} levels, "
            f"got {spatial_shapes_list!r}"
        )
    if sum(height * width for height, width in spatial_shapes_list) != value.shape[1]:
        raise ValueError(
            f"ms_deform_attn: the levels {spatial_shapes_list} do not tile the {value.shape[1]} values of value"
        )


def _custom_kernel_usable(value: torch.Tensor) -> bool:
    """Whether the compiled operator can run `value`'s device and dtype (float32 under autocast, whose rule casts the
    operands). `torch.export` (non-strict, the default) builds it on first use as an eager call does; Dynamo
    (`torch.compile`, strict export) cannot build, so it uses only an operator an earlier call loaded, and a strict
    export before any build fails rather than silently exporting the PyTorch implementation."""
    if referformer_kernels is None:
        return False
    dtype = torch.float32 if torch.is_autocast_enabled(value.device.type) else value.dtype
    if dtype not in CUSTOM_KERNEL_DTYPES.get(value.device.type, ()):
        return False
    if torch.compiler.is_dynamo_compiling():
        if torch.compiler.is_exporting() and not referformer_kernels.build_attempted():
            raise RuntimeError(
                "torch.export(strict=True) cannot build the compiled deformable-attention operator: call "
                "referformer.kernels.is_available(device) before exporting, export with strict=False, or set "
                "config.disable_custom_kernels=True to export the PyTorch implementation."
            )
        return value.device.type in referformer_kernels.loaded_device_types()
    return referformer_kernels.is_available(value.device)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    use_custom_kernel: bool = True,
) -> torch.Tensor:
    """Multi-scale deformable attention.

    Bilinearly samples every level of `value` at `sampling_locations` (zero padding outside a level) and sums the
    samples weighted by `attention_weights`. Runs the compiled `torch.ops.referformer.ms_deform_attn` when
    `use_custom_kernel` and it is available for the device and dtype (building it on first use), the PyTorch
    implementation otherwise.

    Args:
        value: `[batch, num_values, heads, head_dim]`, the flattened levels concatenated along `num_values`.
        spatial_shapes: `[levels, 2]` int64, `(height, width)` of each level.
        level_start_index: `[levels]` int64, offset of each level in `num_values`.
        sampling_locations: `[batch, queries, heads, levels, points, 2]`, `(x, y)` in [0, 1] relative to each level
            (`grid_sample` convention with `align_corners=False`: pixel = location * size - 0.5).
        attention_weights: `[batch, queries, heads, levels, points]`.
        spatial_shapes_list: optional `(height, width)` of each level as Python ints, the same levels as
            `spatial_shapes`. When given, the PyTorch implementation uses it instead of reading `spatial_shapes` on
            the host, so it neither synchronizes with the device nor breaks `torch.compile` / `torch.export` graphs.
        use_custom_kernel: `False` always runs the PyTorch implementation.

    Returns:
        `[batch, queries, heads * head_dim]`; under `torch.autocast` the operands may have mixed floating dtypes and
        the attention runs (and returns) in float32.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, spatial_shapes_list)
    if use_custom_kernel and _custom_kernel_usable(value):
        return torch.ops.referformer.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if spatial_shapes_list is None:
        spatial_shapes_list = [(height, width) for height, width in spatial_shapes.tolist()]
        level_sizes = [height * width for height, width in spatial_shapes_list]
        expected_starts = [sum(level_sizes[:level]) for level in range(len(level_sizes))]
        if sum(level_sizes) != value.shape[1] or level_start_index.tolist() != expected_starts:
            raise ValueError(
                f"ms_deform_attn: the levels {spatial_shapes_list} starting at {level_start_index.tolist()} do not "
                f"tile the {value.shape[1]} values of value (expected starts {expected_starts})"
            )
    if torch.is_autocast_enabled(value.device.type):  # the same float32 computation as the operator's autocast rule
        with torch.autocast(value.device.type, enabled=False):
            return _grid_sample_attention(
                value.float(), spatial_shapes_list, sampling_locations.float(), attention_weights.float()
            )
    return _grid_sample_attention(value, spatial_shapes_list, sampling_locations, attention_weights)


def _grid_sample_attention(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The PyTorch implementation (one `grid_sample` per level), the reference every compiled kernel is checked
    against; shapes as [`ms_deform_attn`]."""
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([height * width for height, width in spatial_shapes_list], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled_per_level = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        # [B, H*W, heads, head_dim] -> [B*heads, head_dim, H, W]
        value_level = value_per_level[level].flatten(2).transpose(1, 2).reshape(
            batch_size * num_heads, head_dim, height, width
        )
        # [B, Lq, heads, points, 2] -> [B*heads, Lq, points, 2]
        grid_level = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled_per_level.append(
            F.grid_sample(value_level, grid_level, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [B, Lq, heads, levels, points] -> [B*heads, 1, Lq, levels*points]
    attention_weights = attention_weights.transpose(1, 2).reshape(
        batch_size * num_heads, 1, num_queries, num_levels * num_points
    )
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(batch_size, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


@use_kernel_forward_from_hub("MultiScaleDeformableAttention")
class MultiScaleDeformableAttention(nn.Module):
    """Stateless multi-scale deformable attention core: [`ms_deform_attn`] with the forward signature of
    transformers' Deformable DETR, so that a compatible Hub kernel can replace it (`use_kernels=True`)."""

    def __init__(self, use_custom_kernel: bool = True):
        super().__init__()
        self.use_custom_kernel = use_custom_kernel

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        return ms_deform_attn(
            value,
            value_spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            spatial_shapes_list=value_spatial_shapes_list,
            use_custom_kernel=self.use_custom_kernel,
        )


__all__ = ["MultiScaleDeformableAttention", "ms_deform_attn"]
