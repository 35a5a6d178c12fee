"""Python registrations of the `referformer::ms_deform_attn` operators: fake (meta) kernels for `torch.compile` /
`torch.export`, the autograd formula and the autocast rule. The schemas and the CPU/CUDA kernels are registered by
the C++ library."""

import torch


_registered = False
# Device types whose autocast runs the operator in float32 (the dtype `ms_deform_attn` promises under autocast).
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch_size, _, num_heads, head_dim = value.shape
    return value.new_empty(batch_size, sampling_locations.shape[1], num_heads * head_dim)


def _ms_deform_attn_backward_fake(
    grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    # The kernels return contiguous gradients, whatever the strides of the inputs.
    return (
        value.new_empty(value.shape),
        sampling_locations.new_empty(sampling_locations.shape),
        attention_weights.new_empty(attention_weights.shape),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    grad_value, grad_sampling_locations, grad_attention_weights = torch.ops.referformer._ms_deform_attn_backward(
        grad_output, *ctx.saved_tensors
    )
    return grad_value, None, None, grad_sampling_locations, grad_attention_weights


def register_python_implementations() -> None:
    """Registers the fake kernels and the autograd formula once the C++ library is loaded (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("referformer::ms_deform_attn", _ms_deform_attn_fake)
    torch.library.register_fake("referformer::_ms_deform_attn_backward", _ms_deform_attn_backward_fake)
    torch.library.register_autograd("referformer::ms_deform_attn", _backward, setup_context=_setup_context)
    # Under autocast the operands come in mixed precisions (bf16/fp16 values from the projections, fp32 locations):
    # like torchvision's deformable ops, run the kernel on float32 copies (sampling locations need fp32 precision).
    for device_type in AUTOCAST_DEVICE_TYPES:
        torch.library.register_autocast("referformer::ms_deform_attn", device_type, torch.float32)
    _registered = True
