"""Custom C++/CUDA kernels of ReferFormer, built lazily on first use with a pure-PyTorch fallback.

`ms_deform_attn` runs the `torch.ops.referformer.ms_deform_attn` operator when it is available for the inputs and
`ms_deform_attn_reference` otherwise. Set `REFERFORMER_DISABLE_CUSTOM_KERNELS=1` to always use PyTorch.
`onnx_translation_table()` lets `torch.onnx.export(..., dynamo=True)` translate the operator to standard ONNX.
"""

import torch

from ._ms_deform_attn import is_available, ms_deform_attn, ms_deform_attn_reference


def onnx_translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export(..., dynamo=True)`: `referformer::ms_deform_attn` as one ONNX
    `GridSample` per level. Needs `onnxscript` (the `export` extra).

    Empty when the compiled operator is not loaded: the model then runs, and exports, the pure-PyTorch path.
    """
    from ._onnx_translation import ms_deform_attn_onnx

    if not hasattr(torch.ops.referformer, "ms_deform_attn"):
        return {}
    return {torch.ops.referformer.ms_deform_attn.default: ms_deform_attn_onnx}


__all__ = ["is_available", "ms_deform_attn", "ms_deform_attn_reference", "onnx_translation_table"]
