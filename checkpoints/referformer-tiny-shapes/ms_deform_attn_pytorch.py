"""Pure-PyTorch multi-scale deformable attention (the reference every compiled kernel is checked against).

Kept in its own dependency-free module so that both the model (also when loaded as remote code) and
`referformer.kernels` use this single implementation.
"""

import torch
from torch.nn import functional as F


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling of every level at `sampling_locations`, weighted by `attention_weights`.

    Args:
        value: `[B, S, heads, head_dim]`, the flattened levels concatenated along `S`.
        spatial_shapes_list: `(height, width)` of each level, in the order of `value`.
        sampling_locations: `[B, Lq, heads, levels, points, 2]`, (x, y) in [0, 1] relative to each level
            (`grid_sample` semantics with `align_corners=False`: pixel = location * size - 0.5).
        attention_weights: `[B, Lq, heads, levels, points]`.

    Returns:
        `[B, Lq, heads * head_dim]`. Samples outside a level read zeros.
    """
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
