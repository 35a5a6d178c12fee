"""The compiled C++/CUDA operator `torch.ops.referformer.ms_deform_attn`, built lazily on first use.

This package builds, loads and registers the operator; `referformer.ms_deform_attn.ms_deform_attn` is the function that
runs it (or the PyTorch implementation). `onnx_translation_table()` lets `torch.onnx.export(..., dynamo=True)`
translate the operator to standard ONNX.
"""

import torch

from ._loader import build_attempted, load_ms_deform_attn, loaded_device_types


def is_available(device: str | torch.device = "cpu") -> bool:
    """Whether the compiled operator can run on `device` ("cpu", "cuda" or a `torch.device`); builds it on first use."""
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda") or (device_type == "cuda" and not torch.cuda.is_available()):
        return False
    return device_type in load_ms_deform_attn()


def onnx_translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export(..., dynamo=True)`: `referformer::ms_deform_attn` as one ONNX
    `GridSample` per level. Needs `onnxscript` (the `export` extra). Builds the operator first, so that a fresh
    process exports what the model runs; empty when it cannot be built (the model then runs, and exports, the
    PyTorch implementation).
    """
    from ._onnx_translation import ms_deform_attn_onnx

    if not is_available("cpu") and not is_available("cuda"):
        return {}
    return {torch.ops.referformer.ms_deform_attn.default: ms_deform_attn_onnx}


__all__ = ["build_attempted", "is_available", "loaded_device_types", "onnx_translation_table"]
