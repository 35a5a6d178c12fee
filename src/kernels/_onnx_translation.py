"""ONNX translation of `referformer::ms_deform_attn` for `torch.onnx.export(..., dynamo=True)`.

The operator becomes one standard `GridSample` per level (opset 18, the opset of torch's ONNX function library), so
the exported graph runs in any ONNX runtime without a custom-op library. Requires `onnxscript` (the `export` extra).
"""

from onnxscript import opset18 as op


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Builds the ONNX graph of `ms_deform_attn` (same operands and semantics as `referformer.ms_deform_attn.ms_deform_attn`).

    The numbers of heads, levels and points and the head size are read from the static operand shapes; the level
    sizes and offsets come from the `spatial_shapes` / `level_start_index` tensors, so they may be graph values.
    """
    num_heads, head_dim = value.shape[2], value.shape[3]
    num_levels, num_points = sampling_locations.shape[3], sampling_locations.shape[4]
    if not all(isinstance(size, int) for size in (num_heads, head_dim, num_levels, num_points)):
        raise ValueError(
            "ms_deform_attn ONNX translation: heads, head size, levels and points must be static, got value "
            f"{value.shape} and sampling_locations {sampling_locations.shape}"
        )
    num_queries = op.Shape(sampling_locations, start=1, end=2)
    # [B, Lq, heads, levels, points, 2] in [0, 1] -> grids in [-1, 1] as [B, heads, Lq, levels, points, 2].
    sampling_grids = op.Transpose(
        op.Sub(op.Mul(sampling_locations, op.CastLike(2.0, sampling_locations)), op.CastLike(1.0, sampling_locations)),
        perm=[0, 2, 1, 3, 4, 5],
    )
    grid_shape = op.Concat(_ints(-1), num_queries, _ints(num_points, 2), axis=0)
    sampled_per_level = []
    for level in range(num_levels):
        level_shape = op.Gather(spatial_shapes, _ints(level), axis=0)  # [1, 2]
        start = op.Gather(level_start_index, _ints(level), axis=0)
        end = op.Add(start, op.ReduceProd(level_shape, _ints(1), keepdims=0))
        # [B, H*W, heads, head_dim] -> [B*heads, head_dim, H, W]
        value_level = op.Transpose(op.Slice(value, start, end, _ints(1)), perm=[0, 2, 3, 1])
        value_level = op.Reshape(value_level, op.Concat(_ints(-1, head_dim), op.Reshape(level_shape, _ints(2)), axis=0))
        # [B, heads, Lq, points, 2] -> [B*heads, Lq, points, 2]
        grid_level = op.Reshape(op.Gather(sampling_grids, _ints(level), axis=3), grid_shape)
        sampled_per_level.append(
            op.GridSample(value_level, grid_level, mode="bilinear", padding_mode="zeros", align_corners=0)
        )
    # [B*heads, head_dim, Lq, levels*points], level-major like the weights below.
    sampled = op.Concat(*sampled_per_level, axis=-1)
    # [B, Lq, heads, levels, points] -> [B*heads, 1, Lq, levels*points]
    weights = op.Reshape(
        op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4]),
        op.Concat(_ints(-1, 1), num_queries, _ints(num_levels * num_points), axis=0),
    )
    output = op.ReduceSum(op.Mul(sampled, weights), _ints(-1), keepdims=0)  # [B*heads, head_dim, Lq]
    output = op.Reshape(output, op.Concat(op.Shape(value, start=0, end=1), _ints(num_heads * head_dim, -1), axis=0))
    return op.Transpose(output, perm=[0, 2, 1])

