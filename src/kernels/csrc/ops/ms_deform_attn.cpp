// Schema of the referformer::ms_deform_attn operators. The CPU and CUDA kernels are registered in cpu/ and cuda/,
// the fake (meta) kernels, the autograd formula and the autocast rule in Python (referformer/kernels/_registrations.py).
// The backward operator is private (leading underscore): it exists for the autograd formula only.
#include <torch/library.h>

TORCH_LIBRARY(referformer, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "_ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}
