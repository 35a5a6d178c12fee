// CPU kernels of referformer::ms_deform_attn.
//
// The forward pass is parallel over (batch, query): each task writes its own output rows. The backward pass is
// parallel over (batch, head, level): the slice of grad_value that a sample scatters into, value[b, level, h, :],
// and the gradients of its location and attention weight all belong to that task, so no two threads write the
// same element and no atomics or per-thread buffers are needed. Inner loops run over the contiguous channels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../ms_deform_attn.h"
#include "../ms_deform_attn_bilinear.h"

namespace referformer::ops {

namespace {

using detail::BilinearCorners;
using detail::bilinear_corners;

// out[d] += sum_k weight[k] * corner[k][d]
template <typename scalar_t>
inline void accumulate_corners(
    scalar_t* __restrict__ out,
    const scalar_t* __restrict__ corner0,
    const scalar_t* __restrict__ corner1,
    const scalar_t* __restrict__ corner2,
    const scalar_t* __restrict__ corner3,
    const scalar_t (&weight)[4],
    int64_t head_dim) {
  const scalar_t w0 = weight[0], w1 = weight[1], w2 = weight[2], w3 = weight[3];
#pragma omp simd
  for (int64_t d = 0; d < head_dim; ++d) {
    out[d] += w0 * corner0[d] + w1 * corner1[d] + w2 * corner2[d] + w3 * corner3[d];
  }
}

// dot[k] = sum_d grad[d] * corner[k][d]
template <typename scalar_t>
inline void dot_corners(
    const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ corner0,
    const scalar_t* __restrict__ corner1,
    const scalar_t* __restrict__ corner2,
    const scalar_t* __restrict__ corner3,
    scalar_t (&dot)[4],
    int64_t head_dim) {
  scalar_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t d = 0; d < head_dim; ++d) {
    s0 += grad[d] * corner0[d];
    s1 += grad[d] * corner1[d];
    s2 += grad[d] * corner2[d];
    s3 += grad[d] * corner3[d];
  }
  dot[0] = s0;
  dot[1] = s1;
  dot[2] = s2;
  dot[3] = s3;
}

// out[d] += alpha * x[d]
template <typename scalar_t>
inline void axpy(scalar_t* __restrict__ out, scalar_t alpha, const scalar_t* __restrict__ x, int64_t head_dim) {
#pragma omp simd
  for (int64_t d = 0; d < head_dim; ++d) {
    out[d] += alpha * x[d];
  }
}

// Checks that every level lies inside the num_values rows of value (the kernels index value with these numbers).
void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t num_values) {
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  for (int64_t level = 0; level < spatial_shapes.size(0); ++level) {
    const int64_t height = shapes[2 * level], width = shapes[2 * level + 1], start = starts[level];
    TORCH_CHECK(
        height >= 0 && width >= 0 && start >= 0 && start + height * width <= num_values, "ms_deform_attn: level ",
        level, " (", height, "x", width, " starting at ", start, ") does not fit in the ", num_values,
        " values of value");
  }
}

template <typename scalar_t>
void forward_kernel(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output,
    const MSDeformAttnSizes& sizes) {
  const scalar_t* value_data = value.const_data_ptr<scalar_t>();
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  const scalar_t* locations = sampling_locations.const_data_ptr<scalar_t>();
  const scalar_t* weights = attention_weights.const_data_ptr<scalar_t>();
  scalar_t* output_data = output.mutable_data_ptr<scalar_t>();

  const int64_t num_heads = sizes.num_heads, head_dim = sizes.head_dim;
  const int64_t num_levels = sizes.num_levels, num_points = sizes.num_points;
  // Distance between two spatial positions in value.
  const int64_t row_stride = num_heads * head_dim;
  // Corners outside the map read this row of zeros, so every sample runs the same four-corner loop.
  const std::vector<scalar_t> zeros(head_dim, scalar_t(0));
  const int64_t cost_per_query = std::max<int64_t>(num_heads * num_levels * num_points * head_dim * 4, 1);
  const int64_t grain_size = std::max<int64_t>(at::internal::GRAIN_SIZE / cost_per_query, 1);

  at::parallel_for(0, sizes.batch_size * sizes.num_queries, grain_size, [&](int64_t begin, int64_t end) {
    for (int64_t query = begin; query < end; ++query) {
      const scalar_t* value_batch = value_data + (query / sizes.num_queries) * sizes.num_values * row_stride;
      for (int64_t head = 0; head < num_heads; ++head) {
        scalar_t* out = output_data + (query * num_heads + head) * head_dim;
        std::fill(out, out + head_dim, scalar_t(0));
        const int64_t first_sample = (query * num_heads + head) * num_levels * num_points;
        for (int64_t level = 0; level < num_levels; ++level) {
          const int64_t height = shapes[2 * level], width = shapes[2 * level + 1];
          const scalar_t* value_level = value_batch + starts[level] * row_stride + head * head_dim;
          for (int64_t point = 0; point < num_points; ++point) {
            const int64_t sample = first_sample + level * num_points + point;
            BilinearCorners<scalar_t> corners;
            if (!bilinear_corners(locations[2 * sample], locations[2 * sample + 1], height, width, corners)) {
              continue;
            }
            const scalar_t attention = weights[sample];
            const scalar_t* rows[4];
            scalar_t corner_weights[4];
            for (int k = 0; k < 4; ++k) {
              rows[k] = corners.inside[k] ? value_level + corners.index[k] * row_stride : zeros.data();
              corner_weights[k] = attention * corners.weight[k];
            }
            accumulate_corners(out, rows[0], rows[1], rows[2], rows[3], corner_weights, head_dim);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& grad_value,
    at::Tensor& grad_sampling_locations,
    at::Tensor& grad_attention_weights,
    const MSDeformAttnSizes& sizes) {
  const scalar_t* grad_output_data = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* value_data = value.const_data_ptr<scalar_t>();
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  const scalar_t* locations = sampling_locations.const_data_ptr<scalar_t>();
  const scalar_t* weights = attention_weights.const_data_ptr<scalar_t>();
  scalar_t* grad_value_data = grad_value.mutable_data_ptr<scalar_t>();
  scalar_t* grad_locations = grad_sampling_locations.mutable_data_ptr<scalar_t>();
  scalar_t* grad_weights = grad_attention_weights.mutable_data_ptr<scalar_t>();

  const int64_t num_queries = sizes.num_queries, num_heads = sizes.num_heads, head_dim = sizes.head_dim;
  const int64_t num_levels = sizes.num_levels, num_points = sizes.num_points;
  const int64_t row_stride = num_heads * head_dim;
  const std::vector<scalar_t> zeros(head_dim, scalar_t(0));

  at::parallel_for(0, sizes.batch_size * num_heads * num_levels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t level = task % num_levels;
      const int64_t head = (task / num_levels) % num_heads;
      const int64_t batch = task / (num_levels * num_heads);
      const int64_t height = shapes[2 * level], width = shapes[2 * level + 1];
      const int64_t level_offset = (batch * sizes.num_values + starts[level]) * row_stride + head * head_dim;
      const scalar_t* value_level = value_data + level_offset;
      scalar_t* grad_value_level = grad_value_data + level_offset;

      for (int64_t query = batch * num_queries; query < (batch + 1) * num_queries; ++query) {
        const scalar_t* grad = grad_output_data + (query * num_heads + head) * head_dim;
        const int64_t first_sample = ((query * num_heads + head) * num_levels + level) * num_points;
        for (int64_t sample = first_sample; sample < first_sample + num_points; ++sample) {
          BilinearCorners<scalar_t> corners;
          if (!bilinear_corners(locations[2 * sample], locations[2 * sample + 1], height, width, corners)) {
            continue;
          }
          const scalar_t attention = weights[sample];
          const scalar_t* rows[4];
          for (int k = 0; k < 4; ++k) {
            rows[k] = corners.inside[k] ? value_level + corners.index[k] * row_stride : zeros.data();
          }
          scalar_t dot[4];
          dot_corners(grad, rows[0], rows[1], rows[2], rows[3], dot, head_dim);

          scalar_t grad_weight = 0, grad_x = 0, grad_y = 0;
          for (int k = 0; k < 4; ++k) {
            grad_weight += corners.weight[k] * dot[k];
            grad_x += corners.weight_dx[k] * dot[k];
            grad_y += corners.weight_dy[k] * dot[k];
            if (corners.inside[k]) {
              axpy(grad_value_level + corners.index[k] * row_stride, attention * corners.weight[k], grad, head_dim);
            }
          }
          grad_weights[sample] = grad_weight;
          // pixel x = location x * width - 0.5, hence the factors width and height.
          grad_locations[2 * sample] = attention * static_cast<scalar_t>(width) * grad_x;
          grad_locations[2 * sample + 1] = attention * static_cast<scalar_t>(height) * grad_y;
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnSizes sizes =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const at::Tensor value_ = value.contiguous();
  const at::Tensor spatial_shapes_ = spatial_shapes.contiguous();
  const at::Tensor level_start_index_ = level_start_index.contiguous();
  const at::Tensor sampling_locations_ = sampling_locations.contiguous();
  const at::Tensor attention_weights_ = attention_weights.contiguous();
  check_levels(spatial_shapes_, level_start_index_, sizes.num_values);

  at::Tensor output =
      at::empty({sizes.batch_size, sizes.num_queries, sizes.num_heads * sizes.head_dim}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(
        value_, spatial_shapes_, level_start_index_, sampling_locations_, attention_weights_, output, sizes);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnSizes sizes =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad_output(grad_output, value, sizes);
  const at::Tensor grad_output_ = grad_output.contiguous();
  const at::Tensor value_ = value.contiguous();
  const at::Tensor spatial_shapes_ = spatial_shapes.contiguous();
  const at::Tensor level_start_index_ = level_start_index.contiguous();
  const at::Tensor sampling_locations_ = sampling_locations.contiguous();
  const at::Tensor attention_weights_ = attention_weights.contiguous();
  check_levels(spatial_shapes_, level_start_index_, sizes.num_values);

  at::Tensor grad_value = at::zeros_like(value_);
  at::Tensor grad_sampling_locations = at::zeros_like(sampling_locations_);
  at::Tensor grad_attention_weights = at::zeros_like(attention_weights_);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        grad_output_, value_, spatial_shapes_, level_start_index_, sampling_locations_, attention_weights_, grad_value,
        grad_sampling_locations, grad_attention_weights, sizes);
  });
  return {grad_value, grad_sampling_locations, grad_attention_weights};
}

} // namespace

TORCH_LIBRARY_IMPL(referformer, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cpu);
  m.impl("_ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

} // namespace referformer::ops
