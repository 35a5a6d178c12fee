"""Dynamic int8 inference: the model runs with quantized `Linear` layers (torch.ao's `quantize_dynamic` and torchao),
`quantize_int8` keeps its masks and query choices, and `ReferringVideoSegmenter(dtype="int8")` applies it."""

import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from helpers import REPO_ROOT, random_inputs, randomize_weights, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation
from referformer.data_synthetic import render_referring_video
from referformer.inference import ReferringVideoSegmenter, resolve_dtype
from referformer.modeling_referformer import select_referred_query
from referformer.quantization import quantize_int8
from referformer.shapes_demo import DEMO_CLIP_FRAMES, DEMO_EXPRESSION_ATTRIBUTES


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
METHODS = ["dynamic", "torchao"]
# Clips of the synthetic generator on which the demo model finds every referred object (J >= 0.8 in float32).
CLIP_SEEDS = (0, 4)


def require_method(method: str) -> None:
    if method == "torchao":
        pytest.importorskip("torchao", reason="int8 with torchao needs the `quantization` extra")


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval())


def quantize_every_linear(model: nn.Module, method: str) -> nn.Module:
    """Every `Linear` of the model in int8, the heads included, as a user would quantize any model."""
    if method == "dynamic":
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


# torch.ao.quantization's deprecation in favour of torchao (see `referformer.quantization`).
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated", "ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("method", METHODS)
def test_model_runs_with_every_linear_quantized(random_model, method):
    require_method(method)
    inputs = random_inputs(random_model.config, batch_size=2, num_frames=3)
    with torch.no_grad():
        expected = random_model(**inputs)
        outputs = quantize_every_linear(random_model, method)(**inputs)
    # int8 products (about two significant digits, through some 20 layers) move logits of magnitude ~1 by a few
    # hundredths (measured: 0.07 with per-tensor activations, 0.03 per token) and flip few mask pixels (2%, 1%).
    assert (outputs.logits - expected.logits).abs().max() < 0.15
    assert ((outputs.pred_masks > 0) == (expected.pred_masks > 0)).float().mean() > 0.95


@pytest.mark.parametrize("method", METHODS)
def test_quantize_int8_keeps_the_query_choice(random_model, method):
    require_method(method)
    model = quantize_int8(copy.deepcopy(random_model), method)
    inputs = random_inputs(random_model.config, batch_size=2, num_frames=3)
    with torch.no_grad():
        expected, outputs = random_model(**inputs), model(**inputs)
    scores = expected.logits.sigmoid().mean(1).max(-1).values  # [B, Q]: the selection rule's frame-averaged scores
    best_two = scores.topk(2, -1).values
    # int8 moves the scores by less than half the margin between the best and the second query (measured: 1.7e-3
    # and 3e-4 against a smallest margin of 1.6e-2), so the selection cannot change.
    quantized_scores = outputs.logits.sigmoid().mean(1).max(-1).values
    assert (quantized_scores - scores).abs().max() < (best_two[:, 0] - best_two[:, 1]).min() / 2
    assert torch.equal(select_referred_query(outputs.logits), select_referred_query(expected.logits))


def test_quantize_int8_selects_the_per_pixel_linears(random_model):
    model = quantize_int8(copy.deepcopy(random_model))
    modules = dict(model.named_modules())
    quantized = {name for name, module in modules.items() if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)}
    float_linears = {name for name, module in modules.items() if type(module) is nn.Linear}
    config = random_model.config
    expected = {
        f"model.encoder.layers.{layer}.{name}"
        for layer in range(config.encoder_layers)
        for name in ("self_attn.value_proj", "self_attn.output_proj", "fc1", "fc2")
    } | {
        f"model.pixel_decoder.blocks.{block}.{name}"
        for block in range(len(random_model.model.pixel_decoder.blocks))
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.out_proj", "fc1", "fc2")
    }
    assert quantized == expected
    kept_in_float = (
        "class_embed.0", "model.decoder.bbox_embed.0.layers.0", "controller.layers.0", "model.reference_points",
        "model.encoder.layers.0.self_attn.sampling_offsets", "model.text_projection.fc",
    )
    assert set(kept_in_float) <= float_linears
    assert quantize_int8(model) is model  # nothing left to quantize: unchanged
    assert {name for name, module in model.named_modules() if type(module) is nn.Linear} == float_linears


def test_quantize_int8_refuses_bad_arguments(random_model):
    with pytest.raises(ValueError, match="Unknown int8 method 'int4'; choose one of: dynamic, torchao"):
        quantize_int8(copy.deepcopy(random_model), "int4")
    with pytest.raises(ValueError, match="runs on the CPU; the model is on meta"):
        quantize_int8(copy.deepcopy(random_model).to("meta"))
    assert resolve_dtype("int8") == torch.qint8
    with pytest.raises(ValueError, match="choose one of: fp32, bf16, fp16, int8"):
        resolve_dtype("int4")


@pytest.fixture(scope="module")
def clips():
    """Clips of the demo's kind (three shapes on a textured background): frames, sentences and referred masks."""
    clips = []
    for seed in CLIP_SEEDS:
        video, frames, labels = render_referring_video(
            np.random.default_rng(seed), DEMO_CLIP_FRAMES, 96, 144, 3, textured=True, per_object=1,
            attribute_names=DEMO_EXPRESSION_ATTRIBUTES,
        )
        expressions = list(video["expressions"].values())
        targets = [labels == int(expression["obj_id"]) for expression in expressions]
        clips.append((list(frames), [expression["exp"] for expression in expressions], targets))
    return clips


def region_similarity(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / (first | second).sum())


@pytest.fixture(scope="module")
def float_segmentations(clips):
    segmenter = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu")
    return [segmenter(frames, sentences) for frames, sentences, _ in clips]


@pytest.mark.parametrize("method", METHODS)
def test_int8_demo_model_segments_as_float32(clips, float_segmentations, method):
    require_method(method)
    segmenter = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu")
    quantize_int8(segmenter.model, method)
    for (frames, sentences, targets), expected_results in zip(clips, float_segmentations):
        for result, expected, target in zip(segmenter(frames, sentences), expected_results, targets):
            assert region_similarity(expected.masks, target) >= 0.8, "a clip the float32 model does not segment"
            assert result.query_indices == expected.query_indices
            # Measured: IoU >= 0.996 with the float32 masks, J within 0.001, scores within 5e-3.
            assert region_similarity(result.masks, expected.masks) >= 0.98, result.sentence
            assert abs(region_similarity(result.masks, target) - region_similarity(expected.masks, target)) <= 0.01
            np.testing.assert_allclose(result.scores, expected.scores, atol=0.02)


def test_segmenter_int8_dtype_quantizes_the_loaded_model(clips, float_segmentations):
    segmenter = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu", dtype="int8")
    assert segmenter.dtype == torch.qint8
    assert any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in segmenter.model.modules())
    with segmenter.autocast():
        assert not torch.is_autocast_enabled("cpu")
    frames, sentences, _ = clips[0]
    for result, expected in zip(segmenter(frames, sentences), float_segmentations[0]):
        assert region_similarity(result.masks, expected.masks) >= 0.98, result.sentence


def test_int8_without_torchao():
    """In a process where torchao cannot be imported: the default method works, torchao's fails with one line."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torchao"] = None
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        import torch
        from helpers import unit_test_config
        from referformer import ReferFormerForReferringVideoObjectSegmentation
        from referformer.quantization import quantize_int8

        model = quantize_int8(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval())
        assert any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules())
        try:
            quantize_int8(model, "torchao")
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "int8 with method='torchao' needs torchao: pip install 'referformer[quantization]'"


def test_pipeline_and_from_pretrained_int8_dtype(clips, float_segmentations):
    """`pipeline(..., dtype="int8")` on a folder (loaded by `from_pretrained(dtype="int8")`) and on a given float model
    (quantized by the pipeline) quantizes the same layers as `quantize_int8` and segments as the float32 model."""
    from transformers import pipeline

    from referformer import ReferFormerProcessor

    expected_layers = sum(
        isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
        for module in quantize_int8(ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL)).modules()
    )
    loaded = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL, dtype="int8")
    task = "referring-video-object-segmentation"
    pipelines = {
        "folder": pipeline(task, model=str(DEMO_MODEL), dtype="int8", device="cpu"),
        "given model": pipeline(
            task, model=ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL),
            processor=ReferFormerProcessor.from_pretrained(DEMO_MODEL), dtype="int8", device="cpu",
        ),
    }
    for model in (loaded, *(segment.model for segment in pipelines.values())):
        quantized = sum(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules())
        assert expected_layers > 0 and quantized == expected_layers
        assert not model.training
    frames, sentences, _ = clips[0]
    for name, segment in pipelines.items():
        for result, expected in zip(segment(frames, text=sentences), float_segmentations[0]):
            assert [result["query_index"]] == expected.query_indices, name
            assert region_similarity(result["masks"], expected.masks) >= 0.98, (name, result["label"])
