"""Multi-scale deformable attention: the custom operator when it is usable, the PyTorch reference otherwise."""

import torch

from ..ms_deform_attn_pytorch import ms_deform_attn_pytorch
from . import _loader


# Dtypes the custom kernels are compiled for, per device type.
_SUPPORTED_DTYPES = {
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


def is_available(device: str | torch.device = "cpu") -> bool:
    """Whether the custom operator can run on `device` ("cpu", "cuda" or a `torch.device`); builds it on first use."""
    device_type = torch.device(device).type
    if device_type not in _SUPPORTED_DTYPES or (device_type == "cuda" and not torch.cuda.is_available()):
        return False
    return device_type in _loader.load_ms_deform_attn()


def _compute_dtype(value: torch.Tensor) -> torch.dtype:
    """float32 under autocast (the operator's autocast rule casts its operands), the operands' dtype otherwise."""
    return torch.float32 if torch.is_autocast_enabled(value.device.type) else value.dtype


def _can_use_custom_op(value: torch.Tensor) -> bool:
    if _compute_dtype(value) not in _SUPPORTED_DTYPES.get(value.device.type, ()):
        return False
    if torch.compiler.is_compiling():
        # Never build while tracing: use the operator only if an earlier eager call loaded it.
        return not _loader.custom_kernels_disabled() and value.device.type in _loader.loaded_device_types()
    return is_available(value.device)


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable attention (`grid_sample` per level), same signature as `ms_deform_attn`.

    Without `spatial_shapes_list` it reads `spatial_shapes` and `level_start_index` on the host, which synchronizes
    with the device and breaks `torch.compile` graphs; with it, the tensors are not read.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, spatial_shapes_list)
    if spatial_shapes_list is not None:
        return ms_deform_attn_pytorch(value, spatial_shapes_list, sampling_locations, attention_weights)
    spatial_shapes_list = [(height, width) for height, width in spatial_shapes.tolist()]
    level_sizes = [height * width for height, width in spatial_shapes_list]
    expected_starts = [sum(level_sizes[:level]) for level in range(len(level_sizes))]
    if sum(level_sizes) != value.shape[1] or level_start_index.tolist() != expected_starts:
        raise ValueError(
            f"ms_deform_attn: the levels {spatial_shapes_list} starting at {level_start_index.tolist()} do not tile "
            f"the {value.shape[1]} values of value (expected starts {expected_starts})"
        )
    if torch.is_autocast_enabled(value.device.type):  # the same float32 computation as the operator's autocast rule
        with torch.autocast(value.device.type, enabled=False):
            return ms_deform_attn_pytorch(
                value.float(), spatial_shapes_list, sampling_locations.float(), attention_weights.float()
            )
    return ms_deform_attn_pytorch(value, spatial_shapes_list, sampling_locations, attention_weights)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention.

    Bilinearly samples every level of `value` at `sampling_locations` (zero padding outside a level) and sums the
    samples weighted by `attention_weights`. Runs the compiled `torch.ops.referformer.ms_deform_attn` when it is
    available for the device and dtype (building it on first use), otherwise `ms_deform_attn_reference`.

    Args:
        value: `[batch, num_values, heads, head_dim]`, the flattened levels concatenated along `num_values`.
        spatial_shapes: `[levels, 2]` int64, `(height, width)` of each level.
        level_start_index: `[levels]` int64, offset of each level in `num_values`.
        sampling_locations: `[batch, queries, heads, levels, points, 2]`, `(x, y)` in [0, 1] relative to each level
            (`grid_sample` convention with `align_corners=False`: pixel = location * size - 0.5).
        attention_weights: `[batch, queries, heads, levels, points]`.
        spatial_shapes_list: optional `(height, width)` of each level as Python ints, the same levels as
            `spatial_shapes`. When given, the PyTorch fallback uses it instead of reading `spatial_shapes` on the
            host, so it neither synchronizes with the device nor breaks `torch.compile` / `torch.export` graphs.

    Returns:
        `[batch, queries, heads * head_dim]`; under `torch.autocast` the operands may have mixed floating dtypes and
        the attention runs (and returns) in float32.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, spatial_shapes_list)
    if _can_use_custom_op(value):
        return torch.ops.referformer.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, spatial_shapes_list
    )
