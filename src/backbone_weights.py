"""Initialization of a ReferFormer backbone from ImageNet / Kinetics weights, to train a model from scratch.

The original ReferFormer starts training from a pretrained backbone: torchvision's ImageNet ResNets, the Microsoft
ImageNet Swin checkpoints (loaded with `strict=False`, so the per-stage output norms `norm0`..`norm3` keep their
initialization) and the Kinetics Video Swin checkpoints (`backbone.*` keys, the temporal kernel 2 of the patch
embedding summed to the kernel 1 ReferFormer uses). [`load_backbone_weights`] reads such files, and the backbone part of
original ReferFormer checkpoints (`backbone.0.body.*`), into `model.model.backbone`:

    from referformer.backbone_weights import load_backbone_weights

    model = ReferFormerForReferringVideoObjectSegmentation(config)
    report = load_backbone_weights(model, "swin_tiny_patch244_window877_kinetics400_1k.pth")
"""

import argparse
import collections
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging

from .cli_presets import error_line
from .modeling_referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerModel,
    ReferFormerTimmBackbone,
)
from .swin_backbones import ReferFormerSwinBackbone, ReferFormerVideoSwinBackbone


logger = logging.get_logger(__name__)

# Prefixes under which checkpoints keep their backbone, most specific first: the original ReferFormer's, then
# mmcv / mmaction's (e.g. the Kinetics Video Swin files). Files without either hold bare backbone keys.
ORIGINAL_BACKBONE_PREFIX = "backbone.0.body."
BACKBONE_PREFIXES = (ORIGINAL_BACKBONE_PREFIX, "backbone.")
# Containers wrapping the weights in training checkpoints (mmcv: `state_dict`; Microsoft Swin, ReferFormer: `model`).
CONTAINER_KEYS = ("state_dict", "model", "module")

# (file key regex, backbone key) renames per backbone class, applied after the prefix is stripped.
KEY_RENAMES = {
    ReferFormerTimmBackbone: [(r"^", "body.")],  # the timm feature extractor is the backbone's `body`
    ReferFormerSwinBackbone: [],
    # ReferFormer's wrapper moves each stage's patch merging out of the stage.
    ReferFormerVideoSwinBackbone: [(r"^layers\.(\d+)\.downsample\.", r"downsamples.\1.")],
}
# File keys that carry nothing for the backbone (classifier heads, recomputed buffers, the classifier's final norm).
IGNORED_KEYS = {
    ReferFormerTimmBackbone: [r"^body\.fc\.", r"\.num_batches_tracked$"],
    ReferFormerSwinBackbone: [r"^head\.", r"^norm\.", r"\.relative_position_index$", r"\.attn_mask$"],
    ReferFormerVideoSwinBackbone: [r"^norm\.", r"\.relative_position_index$", r"\.attn_mask$"],
}

# The standard ResNets of timm: block type and blocks per stage (what original ResNet weights show), and back.
TIMM_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
RESNET_NAMES = {architecture: name for name, architecture in TIMM_RESNETS.items()}


@dataclass
class BackboneWeightsReport:
    """What [`load_backbone_weights`] did.

    `loaded` and `missing` (backbone weights the file did not fill) are keys of `model.model.backbone`; `unexpected`
    (file keys that match no backbone weight) and `ignored` (file keys known to hold nothing for the backbone:
    classifier heads, recomputed buffers, weights outside the backbone) are keys of the file.
    """

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} backbone weights, {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected and {len(self.ignored)} ignored file keys"
        ]
        if self.missing:
            lines.append(f"missing: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected: {', '.join(self.unexpected)}")
        return "\n".join(lines)


def load_checkpoint_file(path: str | Path):
    """Unpickles a `torch.save` file safely: `weights_only=True`, allowing only the globals official ReferFormer
    training checkpoints contain (`argparse.Namespace` arguments, `collections.Counter` in the LR-scheduler state).
    Anything else raises a `ValueError` that names the refused global; an empty or damaged file one that says so."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace, collections.Counter]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler's message names the offending global
        raise ValueError(
            f"Refusing to load {path}: it does not load with weights_only=True ({error_line(error)})"
        ) from error
    except Exception as error:
        raise ValueError(
            f"Cannot read {path}: it is empty, truncated or not a torch.save file ({error_line(error)})."
        ) from error


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or of a `torch.save` file (loaded with `weights_only=True`), unwrapped from
    the `state_dict` / `model` / `module` containers of training checkpoints and from a DataParallel `module.`
    prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Backbone weights not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    checkpoint = load_checkpoint_file(path)
    while isinstance(checkpoint, dict) and not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        container = next((key for key in CONTAINER_KEYS if isinstance(checkpoint.get(key), dict)), None)
        if container is None:
            raise ValueError(f"{path} holds no dict of tensors (looked under {', '.join(CONTAINER_KEYS)}).")
        checkpoint = checkpoint[container]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, expected a dict of tensors.")
    if checkpoint and all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key.removeprefix("module."): value for key, value in checkpoint.items()}
    return checkpoint


def _backbone_of(model: nn.Module) -> nn.Module:
    if isinstance(model, ReferFormerForReferringVideoObjectSegmentation):
        return model.model.backbone
    if isinstance(model, ReferFormerModel):
        return model.backbone
    raise TypeError(
        f"Expected a ReferFormerModel or ReferFormerForReferringVideoObjectSegmentation, got {type(model).__name__}."
    )


def _sum_temporal_kernel(key: str, tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Kinetics patch embeddings have a temporal kernel of 2; ReferFormer needs per-frame patches (kernel 1) and, as
    the original, sums the kernel over time."""
    is_patch_kernel = key == "patch_embed.proj.weight" and tensor.dim() == target.dim() == 5
    if is_patch_kernel and target.shape[2] == 1 and tensor.shape[2] > 1:
        logger.info(f"Summing the temporal kernel {tensor.shape[2]} of {key} to 1, as the original does.")
        return tensor.sum(dim=2, keepdim=True)
    return tensor


def load_backbone_weights(model: nn.Module, path: str | Path, strict: bool = False) -> BackboneWeightsReport:
    """Loads pretrained backbone weights from `path` into the backbone of `model` (a [`ReferFormerModel`] or a
    [`ReferFormerForReferringVideoObjectSegmentation`]) and returns what was loaded.

    Understood formats: timm / torchvision ResNets (`conv1.weight`, `layer1.0...`; `fc.*` ignored), the original
    ReferFormer's `backbone.0.body.*` keys, Swin checkpoints of Microsoft (bare `patch_embed.*`, `layers.*`; `head.*`
    and the final `norm.*` ignored, the per-stage `norm{i}` reported missing) or mmcv (`backbone.*`), and Kinetics
    Video Swin checkpoints (`backbone.*`: the temporal patch kernel is summed to 1 and `layers.{i}.downsample.*` go to
    `downsamples.{i}.*`). `relative_position_index` / `attn_mask` buffers are recomputed by the model, not loaded.

    Raises a `ValueError`, before loading anything, when a weight's shape differs from the model's (naming the keys),
    when no file key matches the backbone, and with `strict=True` when a backbone weight is missing or a file key is
    unexpected.
    """
    backbone = _backbone_of(model)
    backbone_class = type(backbone)
    file_weights = read_weights(path)
    prefix = next((p for p in BACKBONE_PREFIXES if any(key.startswith(p) for key in file_weights)), "")
    renames = [(re.compile(pattern), replacement) for pattern, replacement in KEY_RENAMES[backbone_class]]
    ignored_patterns = [re.compile(pattern) for pattern in IGNORED_KEYS[backbone_class]]
    model_state = backbone.state_dict()

    to_load, unexpected, ignored, mismatched = {}, [], [], []
    for file_key, tensor in file_weights.items():
        if not file_key.startswith(prefix):
            ignored.append(file_key)  # outside the backbone, e.g. a classification head or a detector's neck
            continue
        key = file_key[len(prefix) :]
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key, count=1)
        if key not in model_state:
            (ignored if any(pattern.search(key) for pattern in ignored_patterns) else unexpected).append(file_key)
            continue
        tensor = _sum_temporal_kernel(key, tensor, model_state[key])
        if tensor.shape != model_state[key].shape:
            mismatched.append(f"{file_key} {tuple(tensor.shape)} vs backbone {key} {tuple(model_state[key].shape)}")
            continue
        to_load[key] = tensor
    if mismatched:
        raise ValueError(f"Shape mismatch between {path} and the backbone: {'; '.join(mismatched)}")
    if not to_load:
        raise ValueError(
            f"No weight of {path} matches the {backbone_class.__name__} (first file keys: "
            f"{', '.join(list(file_weights)[:5])})."
        )
    # Batch-norm step counters are no weights: loaded when present, never required.
    missing = [key for key in model_state if key not in to_load and not key.endswith("num_batches_tracked")]
    report = BackboneWeightsReport(loaded=list(to_load), missing=missing, unexpected=unexpected, ignored=ignored)
    if strict and (missing or unexpected):
        raise ValueError(f"Strict loading of {path} failed: {report}")
    backbone.load_state_dict(to_load, strict=False)
    log = logger.warning if missing or unexpected else logger.info
    log(f"Backbone weights from {path}: {report}")
    return report
