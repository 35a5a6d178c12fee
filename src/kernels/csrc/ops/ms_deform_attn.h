// Shape and dtype checks shared by the CPU and CUDA implementations of referformer::ms_deform_attn.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace referformer::ops {

struct MSDeformAttnSizes {
  int64_t batch_size;
  int64_t num_values;
  int64_t num_heads;
  int64_t head_dim;
  int64_t num_queries;
  int64_t num_levels;
  int64_t num_points;
};

// Validates the operands of the forward op and returns their sizes.
inline MSDeformAttnSizes check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(
      value.dim() == 4, "ms_deform_attn: value must be [batch, num_values, heads, head_dim], got ", value.sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "ms_deform_attn: spatial_shapes must be [levels, 2], got ", spatial_shapes.sizes());
  TORCH_CHECK(
      level_start_index.dim() == 1,
      "ms_deform_attn: level_start_index must be [levels], got ",
      level_start_index.sizes());
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
      "ms_deform_attn: sampling_locations must be [batch, queries, heads, levels, points, 2], got ",
      sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.dim() == 5,
      "ms_deform_attn: attention_weights must be [batch, queries, heads, levels, points], got ",
      attention_weights.sizes());

  const MSDeformAttnSizes sizes{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.size(1),
      sampling_locations.size(3),
      sampling_locations.size(4)};
  TORCH_CHECK(
      spatial_shapes.size(0) == sizes.num_levels && level_start_index.size(0) == sizes.num_levels,
      "ms_deform_attn: spatial_shapes ", spatial_shapes.sizes(), " and level_start_index ", level_start_index.sizes(),
      " must describe the ", sizes.num_levels, " levels of sampling_locations");
  TORCH_CHECK(
      sampling_locations.size(0) == sizes.batch_size && sampling_locations.size(2) == sizes.num_heads,
      "ms_deform_attn: sampling_locations ", sampling_locations.sizes(), " does not match value ", value.sizes());
  TORCH_CHECK(
      attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
      "ms_deform_attn: attention_weights ", attention_weights.sizes(), " does not match sampling_locations ",
      sampling_locations.sizes());

  TORCH_CHECK(
      value.is_floating_point(), "ms_deform_attn: value must be a floating-point tensor, got ", value.scalar_type());
  TORCH_CHECK(
      sampling_locations.scalar_type() == value.scalar_type() &&
          attention_weights.scalar_type() == value.scalar_type(),
      "ms_deform_attn: value, sampling_locations and attention_weights must have the same dtype, got ",
      value.scalar_type(), ", ", sampling_locations.scalar_type(), " and ", attention_weights.scalar_type());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: spatial_shapes and level_start_index must be int64");

  for (const at::Tensor* tensor : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(
        tensor->device() == value.device(), "ms_deform_attn: all tensors must be on the device of value (",
        value.device(), "), got ", tensor->device());
  }
  return sizes;
}

// Validates the incoming gradient of the backward op against the forward sizes.
inline void check_ms_deform_attn_grad_output(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const MSDeformAttnSizes& sizes) {
  TORCH_CHECK(
      grad_output.dim() == 3 && grad_output.size(0) == sizes.batch_size && grad_output.size(1) == sizes.num_queries &&
          grad_output.size(2) == sizes.num_heads * sizes.head_dim,
      "ms_deform_attn_backward: grad_output must be [", sizes.batch_size, ", ", sizes.num_queries, ", ",
      sizes.num_heads * sizes.head_dim, "], got ", grad_output.sizes());
  TORCH_CHECK(
      grad_output.scalar_type() == value.scalar_type() && grad_output.device() == value.device(),
      "ms_deform_attn_backward: grad_output must have the dtype and device of value");
}

} // namespace referformer::ops
