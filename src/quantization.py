"""Dynamic int8 inference on the CPU: int8 weights, and activations quantized at every call, for the `Linear` layers
that carry ReferFormer's per-pixel work; everything else stays in float.

    model = quantize_int8(ReferFormerForReferringVideoObjectSegmentation.from_pretrained(folder).eval())
    segmenter = ReferringVideoSegmenter.from_pretrained(folder, dtype="int8")  # the same, loaded and quantized

Which layers:

* int8: the deformable encoder layers' value and output projections and feed-forward blocks, and every `Linear` of
  the cross-modal FPN's blocks (attention projections, feed-forward). They run on every pixel token of every frame
  (strides 8 to 64 in the encoder, 4 to 32 in the FPN): nearly all of the model's `Linear` work.
* float: the encoder's sampling offsets and attention weights (where deformable attention samples: quantizing them
  moved the masks and scores most), the early fusion, the text encoder and its projection, the decoder, the reference
  points and the heads (class, box, the dynamic mask head's controller, OnlineRefer's track embedding): together a
  few percent of the work (words and queries, not pixels), and every query's score, box and mask depends on them.
  Convolutions (the backbone, the input projections, the FPN's adapters) and Swin backbones stay float.

Methods:

* `"dynamic"` (the default, the faster on CPU: 0.65x the float32 CPU time of the released architecture, one
  thread): `torch.ao.quantization.quantize_dynamic`, whose fbgemm operator quantizes the activations (per tensor)
  itself; weights per tensor;
* `"torchao"`: torchao's `Int8DynamicActivationInt8WeightConfig` (weights per output channel, activations per
  token): closer to float32, but its eager CPU path is slower (0.85x float32; several passes over the activations
  and products, written for `torch.compile` to fuse); needs the `quantization` extra.
"""

import warnings

import torch
from torch import nn

from .modeling_referformer import ReferFormerEncoderLayer, ReferFormerPixelDecoderBlock


__all__ = ["quantize_int8"]

INT8_METHODS = ("dynamic", "torchao")
# How callers name int8: our dtype string, transformers' `pipeline(dtype="int8")` (which turns it into `torch.int8`),
# and `referformer.inference.resolve_dtype`'s `torch.qint8`.
INT8_DTYPES = ("int8", torch.int8, torch.qint8)


def is_int8_dtype(dtype) -> bool:
    """Whether `dtype` asks for dynamic int8 inference (see `INT8_DTYPES`)."""
    return isinstance(dtype, (str, torch.dtype)) and dtype in INT8_DTYPES


def _int8_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The float `Linear` layers to quantize, by qualified name (see the module docstring); layers already quantized
    are left out, so quantizing twice changes nothing."""
    selected = {}
    for name, module in model.named_modules():
        if isinstance(module, ReferFormerEncoderLayer):
            layers = {"self_attn.value_proj", "self_attn.output_proj", "fc1", "fc2"}
        elif isinstance(module, ReferFormerPixelDecoderBlock):
            layers = {child for child, layer in module.named_modules() if isinstance(layer, nn.Linear)}
        else:
            continue
        for child in layers:
            linear = module.get_submodule(child)
            if isinstance(linear, nn.Linear) and type(linear.weight) is nn.Parameter:
                selected[f"{name}.{child}"] = linear
    return selected


def quantize_dynamic_linears(model: nn.Module, linears: set) -> nn.Module:
    """torch.ao's dynamic int8 (fbgemm) of the `Linear` layers `linears` of `model` (qualified names, or `{nn.Linear}`
    for all), in place; returns the model."""
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao, whose eager CPU kernels are slower
        # than float32 here: keep the faster kernels without the warnings at every load.
        warnings.filterwarnings("ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor.* are deprecated", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, linears, dtype=torch.qint8, inplace=True)


def quantize_int8(model: nn.Module, method: str = "dynamic") -> nn.Module:
    """Quantizes the per-pixel `Linear` layers of a ReferFormer (`ReferFormerForReferringVideoObjectSegmentation` or
    `ReferFormerModel`, on the CPU) to dynamic int8, in place, for inference; returns the model.

    `method`: `"dynamic"` (torch.ao's `quantize_dynamic`, the faster on CPU) or `"torchao"` (see the module docstring).

    Example:

    ```python
    >>> import numpy as np, torch
    >>> from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor
    >>> from referformer.quantization import quantize_int8
    >>> folder = "checkpoints/referformer-tiny-shapes"
    >>> model = quantize_int8(ReferFormerForReferringVideoObjectSegmentation.from_pretrained(folder).eval())
    >>> sum(type(module).__name__ == "Linear" and "quantized" in type(module).__module__ for module in model.modules()) > 0
    True
    >>> video = np.full((3, 96, 144, 3), 128, np.uint8)
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> processor = ReferFormerProcessor.from_pretrained(folder)
    >>> inputs = processor(videos=video, text="the yellow square")
    >>> with torch.no_grad():
    ...     outputs = model(**inputs)
    >>> masks = processor.post_process_referring_video_segmentation(
    ...     outputs, inputs["original_sizes"], inputs["resized_sizes"])[0]["masks"]
    >>> bool(masks[:, 30:60, 20:50].float().mean() > 0.8)  # the int8 model still finds the square
    True

    ```
    """
    if method not in INT8_METHODS:
        raise ValueError(f"Unknown int8 method {method!r}; choose one of: {', '.join(INT8_METHODS)}.")
    devices = {parameter.device.type for parameter in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(
            f"int8 inference runs on the CPU; the model is on {', '.join(sorted(devices))}: use device='cpu'."
        )
    linears = _int8_linears(model)
    if method == "dynamic":
        return quantize_dynamic_linears(model, set(linears))
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as error:
        raise ImportError(
            "int8 with method='torchao' needs torchao: pip install 'referformer[quantization]'"
        ) from error
    targets = set(linears.values())
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda module, name: module in targets)
    return model
