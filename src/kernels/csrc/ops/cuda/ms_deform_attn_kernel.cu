// CUDA kernels of referformer::ms_deform_attn.
//
// Forward: one thread per output element (batch, query, head, channel); neighbouring threads read neighbouring
// channels of value. Backward: one warp per (batch, query, head); the lanes split the channels, reduce the
// gradients of the sampling location and attention weight with warp shuffles, and scatter the gradient of value
// with atomics into an accumulator of the op-math type (float for half and bfloat16).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../ms_deform_attn.h"
#include "../ms_deform_attn_bilinear.h"

namespace referformer::ops {

namespace {

using detail::BilinearCorners;
using detail::bilinear_corners;

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int64_t kMaxBlocks = 1 << 20;

int64_t num_blocks(int64_t num_threads) {
  return std::max<int64_t>(std::min<int64_t>((num_threads + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks), 1);
}

template <typename scalar_t>
__global__ void forward_kernel(
    int64_t num_elements,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const scalar_t* __restrict__ sampling_locations,
    const scalar_t* __restrict__ attention_weights,
    scalar_t* __restrict__ output,
    MSDeformAttnSizes sizes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = sizes.num_heads * sizes.head_dim;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < num_elements;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t channel = index % sizes.head_dim;
    const int64_t head = (index / sizes.head_dim) % sizes.num_heads;
    const int64_t query = index / row_stride;  // flattened (batch, query)
    const int64_t batch = query / sizes.num_queries;
    const scalar_t* value_head = value + batch * sizes.num_values * row_stride + head * sizes.head_dim + channel;
    const int64_t first_sample = (query * sizes.num_heads + head) * sizes.num_levels * sizes.num_points;

    acc_t result = 0;
    for (int64_t level = 0; level < sizes.num_levels; ++level) {
      const int64_t height = spatial_shapes[2 * level], width = spatial_shapes[2 * level + 1];
      const scalar_t* value_level = value_head + level_start_index[level] * row_stride;
      for (int64_t point = 0; point < sizes.num_points; ++point) {
        const int64_t sample = first_sample + level * sizes.num_points + point;
        BilinearCorners<acc_t> corners;
        if (!bilinear_corners<acc_t>(
                sampling_locations[2 * sample], sampling_locations[2 * sample + 1], height, width, corners)) {
          continue;
        }
        acc_t sampled = 0;
        for (int k = 0; k < 4; ++k) {
          if (corners.inside[k]) {
            sampled += corners.weight[k] * static_cast<acc_t>(value_level[corners.index[k] * row_stride]);
          }
        }
        result += static_cast<acc_t>(attention_weights[sample]) * sampled;
      }
    }
    output[index] = static_cast<scalar_t>(result);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffff, x, offset);
  }
  return x;
}

template <typename scalar_t>
__global__ void backward_kernel(
    int64_t num_warps,
    const scalar_t* __restrict__ grad_output,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const scalar_t* __restrict__ sampling_locations,
    const scalar_t* __restrict__ attention_weights,
    at::opmath_type<scalar_t>* __restrict__ grad_value,
    scalar_t* __restrict__ grad_sampling_locations,
    scalar_t* __restrict__ grad_attention_weights,
    MSDeformAttnSizes sizes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = sizes.num_heads * sizes.head_dim;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps_per_grid = static_cast<int64_t>(blockDim.x) * gridDim.x / kWarpSize;
  // The loop condition is the same for all lanes of a warp, so the shuffles below always see the full warp.
  for (int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarpSize; warp < num_warps;
       warp += warps_per_grid) {
    const int64_t head = warp % sizes.num_heads;
    const int64_t query = warp / sizes.num_heads;  // flattened (batch, query)
    const int64_t batch = query / sizes.num_queries;
    const int64_t head_offset = batch * sizes.num_values * row_stride + head * sizes.head_dim;
    const scalar_t* grad = grad_output + warp * sizes.head_dim;
    const int64_t first_sample = warp * sizes.num_levels * sizes.num_points;

    for (int64_t level = 0; level < sizes.num_levels; ++level) {
      const int64_t height = spatial_shapes[2 * level], width = spatial_shapes[2 * level + 1];
      const int64_t level_offset = head_offset + level_start_index[level] * row_stride;
      for (int64_t point = 0; point < sizes.num_points; ++point) {
        const int64_t sample = first_sample + level * sizes.num_points + point;
        BilinearCorners<acc_t> corners;
        if (!bilinear_corners<acc_t>(
                sampling_locations[2 * sample], sampling_locations[2 * sample + 1], height, width, corners)) {
          continue;
        }
        const acc_t attention = attention_weights[sample];
        acc_t dot[4] = {0, 0, 0, 0};
        for (int64_t channel = lane; channel < sizes.head_dim; channel += kWarpSize) {
          const acc_t g = grad[channel];
          for (int k = 0; k < 4; ++k) {
            if (corners.inside[k]) {
              const int64_t offset = level_offset + corners.index[k] * row_stride + channel;
              dot[k] += g * static_cast<acc_t>(value[offset]);
              atomicAdd(grad_value + offset, attention * corners.weight[k] * g);
            }
          }
        }
        acc_t grad_weight = 0, grad_x = 0, grad_y = 0;
        for (int k = 0; k < 4; ++k) {
          const acc_t total = warp_sum(dot[k]);
          grad_weight += corners.weight[k] * total;
          grad_x += corners.weight_dx[k] * total;
          grad_y += corners.weight_dy[k] * total;
        }
        if (lane == 0) {
          grad_attention_weights[sample] = static_cast<scalar_t>(grad_weight);
          grad_sampling_locations[2 * sample] = static_cast<scalar_t>(attention * static_cast<acc_t>(width) * grad_x);
          grad_sampling_locations[2 * sample + 1] =
              static_cast<scalar_t>(attention * static_cast<acc_t>(height) * grad_y);
        }
      }
    }
  }
}

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnSizes sizes =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const at::Tensor value_ = value.contiguous();
  const at::Tensor spatial_shapes_ = spatial_shapes.contiguous();
  const at::Tensor level_start_index_ = level_start_index.contiguous();
  const at::Tensor sampling_locations_ = sampling_locations.contiguous();
  const at::Tensor attention_weights_ = attention_weights.contiguous();

  at::Tensor output =
      at::empty({sizes.batch_size, sizes.num_queries, sizes.num_heads * sizes.head_dim}, value.options());
  const int64_t num_elements = output.numel();
  if (num_elements == 0) {
    return output;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(num_elements), kThreadsPerBlock, 0, stream>>>(
        num_elements, value_.const_data_ptr<scalar_t>(), spatial_shapes_.const_data_ptr<int64_t>(),
        level_start_index_.const_data_ptr<int64_t>(), sampling_locations_.const_data_ptr<scalar_t>(),
        attention_weights_.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), sizes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnSizes sizes =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad_output(grad_output, value, sizes);
  // The value and location gradients are accumulated with atomicAdd: their summation order varies between runs.
  at::globalContext().alertNotDeterministic("referformer::_ms_deform_attn_backward (CUDA)");
  const c10::cuda::CUDAGuard device_guard(value.device());
  const at::Tensor grad_output_ = grad_output.contiguous();
  const at::Tensor value_ = value.contiguous();
  const at::Tensor spatial_shapes_ = spatial_shapes.contiguous();
  const at::Tensor level_start_index_ = level_start_index.contiguous();
  const at::Tensor sampling_locations_ = sampling_locations.contiguous();
  const at::Tensor attention_weights_ = attention_weights.contiguous();

  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value = at::zeros(value_.sizes(), value_.options().dtype(acc_type));
  at::Tensor grad_sampling_locations = at::zeros_like(sampling_locations_);
  at::Tensor grad_attention_weights = at::zeros_like(attention_weights_);
  const int64_t num_warps = sizes.batch_size * sizes.num_queries * sizes.num_heads;
  if (num_warps > 0 && sizes.head_dim > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          backward_kernel<scalar_t><<<num_blocks(num_warps * kWarpSize), kThreadsPerBlock, 0, stream>>>(
              num_warps, grad_output_.const_data_ptr<scalar_t>(), value_.const_data_ptr<scalar_t>(),
              spatial_shapes_.const_data_ptr<int64_t>(), level_start_index_.const_data_ptr<int64_t>(),
              sampling_locations_.const_data_ptr<scalar_t>(), attention_weights_.const_data_ptr<scalar_t>(),
              grad_value.mutable_data_ptr<at::opmath_type<scalar_t>>(),
              grad_sampling_locations.mutable_data_ptr<scalar_t>(),
              grad_attention_weights.mutable_data_ptr<scalar_t>(), sizes);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_value.to(value.scalar_type()), grad_sampling_locations, grad_attention_weights};
}

} // namespace

TORCH_LIBRARY_IMPL(referformer, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cuda);
  m.impl("_ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

} // namespace referformer::ops
