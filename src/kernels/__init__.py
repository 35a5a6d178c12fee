"""Custom C++/CUDA kernels of ReferFormer, built lazily on first use with a pure-PyTorch fallback.

`ms_deform_attn` runs the `torch.ops.referformer.ms_deform_attn` operator when it is available for the inputs and
`ms_deform_attn_reference` otherwise. Set `REFERFORMER_DISABLE_CUSTOM_KERNELS=1` to always use PyTorch.
"""

from ._ms_deform_attn import is_available, ms_deform_attn, ms_deform_attn_reference


__all__ = ["is_available", "ms_deform_attn", "ms_deform_attn_reference"]
