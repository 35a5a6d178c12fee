"""A saved model, and the committed demo folder, load through the transformers Auto classes (`AutoModel`: the base
model, `AutoModelForZeroShotObjectDetection`: the segmentation model) with the package imported, and with
`trust_remote_code=True` in a fresh process where `referformer` and the packages only it needs cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForZeroShotObjectDetection
from transformers.dynamic_module_utils import get_relative_import_files

from helpers import FP32_ROUNDING, REPO_ROOT, randomize_weights, unit_test_config
from referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerModel,
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
)
from referformer.cli_presets import build_shapes_tokenizer


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
REMOTE_CODE_FILES = (
    "configuration_referformer.py",
    "modeling_referformer.py",
    "frame_chunking.py",
    "ms_deform_attn.py",
    "swin_backbones.py",
    "processing_referformer.py",
    "video_io.py",
    "loss_referformer.py",
)
# A saved segmentation model also carries its pipeline: the pipeline's module and the modules it imports.
PIPELINE_SOURCE = REPO_ROOT / "src" / "pipeline_referformer.py"
PIPELINE_CODE_FILES = {PIPELINE_SOURCE.name, *(Path(path).name for path in get_relative_import_files(PIPELINE_SOURCE))}
AUTO_MAP = {
    "AutoConfig": "configuration_referformer.ReferFormerConfig",
    "AutoModel": "modeling_referformer.ReferFormerModel",
    "AutoModelForZeroShotObjectDetection": "modeling_referformer.ReferFormerForReferringVideoObjectSegmentation",
}
# Remote code must run with torch, transformers, timm and safetensors (and their own dependencies) only.
PACKAGE_ONLY_MODULES = ("referformer", "av", "scipy", "pycocotools", "h5py", "datasets", "evaluate", "gradio", "accelerate")
REMOTE_LOAD = (
    "import sys\n"
    f"for name in {PACKAGE_ONLY_MODULES!r}:\n"
    "    sys.modules[name] = None  # not importable: everything must come from the folder\n"
) + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotObjectDetection, AutoProcessor

    folder, data = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    assert type(base).__name__ == "ReferFormerModel", type(base)
    assert type(model).__name__ == "ReferFormerForReferringVideoObjectSegmentation", type(model)
    for loaded in (base, model):
        assert type(loaded).__module__.startswith("transformers_modules."), type(loaded).__module__
    # The base model is the segmentation model's `model`, every weight read from the folder.
    base_weights, segmentation_weights = base.state_dict(), model.model.state_dict()
    assert base_weights.keys() == segmentation_weights.keys()
    assert all(torch.equal(base_weights[key], segmentation_weights[key]) for key in base_weights)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    frames = load_file(data + "/frames.safetensors")["frames"].numpy()
    inputs = processor(videos=frames, text="the bright square")
    with torch.no_grad():
        outputs = model(**inputs)
    masks = processor.post_process_referring_video_segmentation(outputs, inputs["original_sizes"], inputs["resized_sizes"])
    save_file(
        {"logits": outputs.logits, "pred_masks": outputs.pred_masks, "masks": masks[0]["masks"]},
        data + "/remote_outputs.safetensors",
    )
    print("remote load ok")
    """
)


def load_as_remote_code(folder, data, tmp_path) -> dict:
    """Runs `REMOTE_LOAD` on `folder` with the frames of `data` in a fresh process; returns its outputs."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(folder), str(data)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote load ok" in result.stdout
    return load_file(data / "remote_outputs.safetensors")


@pytest.mark.parametrize("saved_class", [ReferFormerForReferringVideoObjectSegmentation, ReferFormerModel])
def test_auto_classes_give_the_base_and_the_segmentation_model(tmp_path, saved_class):
    """With the package imported (no `trust_remote_code`), `AutoModel` gives the base model and the task Auto class the
    segmentation model, whichever of the two was saved; config.json's `auto_map` names both for remote code."""
    torch.manual_seed(0)
    segmentation = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()))
    saved = segmentation if saved_class is ReferFormerForReferringVideoObjectSegmentation else segmentation.model
    saved.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    # Only the segmentation model carries the pipeline (the base model has no heads to segment with).
    assert ("custom_pipelines" in config) == (saved_class is ReferFormerForReferringVideoObjectSegmentation)
    base = AutoModel.from_pretrained(tmp_path)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tmp_path)
    assert type(base) is ReferFormerModel and type(model) is ReferFormerForReferringVideoObjectSegmentation
    for loaded, original in ((base, segmentation.model), (model.model, segmentation.model)):
        loaded_weights = loaded.state_dict()
        assert loaded_weights.keys() == original.state_dict().keys()
        assert all(torch.equal(loaded_weights[key], value) for key, value in original.state_dict().items())
    if saved_class is ReferFormerForReferringVideoObjectSegmentation:  # the heads too
        assert all(torch.equal(model.state_dict()[key], value) for key, value in segmentation.state_dict().items())


@pytest.mark.parametrize("backbone", ["timm", "video_swin"])
def test_remote_code_load_without_the_package(tmp_path, backbone):
    overrides = {}
    if backbone == "video_swin":
        overrides["backbone_config"] = {
            "model_type": "referformer_video_swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]
        }
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**overrides)).eval())
    folder, data = tmp_path / "model", tmp_path / "data"
    data.mkdir()
    processor = ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": 64}), build_shapes_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert {path.name for path in folder.glob("*.py")} == set(REMOTE_CODE_FILES) | PIPELINE_CODE_FILES
    frames = torch.randint(0, 256, (2, 48, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"frames": frames}, data / "frames.safetensors")
    inputs = processor(videos=frames.numpy(), text="the bright square")
    with torch.no_grad():
        expected = model(**inputs)
    expected_masks = processor.post_process_referring_video_segmentation(
        expected, inputs["original_sizes"], inputs["resized_sizes"]
    )[0]["masks"]

    remote = load_as_remote_code(folder, data, tmp_path)
    torch.testing.assert_close(remote["logits"], expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(remote["pred_masks"], expected.pred_masks, atol=1e-4, rtol=1e-4)
    assert remote["masks"].shape == (2, 48, 60)
    assert (remote["masks"] != expected_masks).float().mean() < 1e-3  # thresholding of equal-within-1e-4 logits


def test_committed_demo_folder_loads_as_remote_code(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    frames = torch.randint(0, 256, (3, 96, 144, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"frames": frames}, data / "frames.safetensors")
    model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL).eval()
    processor = ReferFormerProcessor.from_pretrained(DEMO_MODEL)
    inputs = processor(videos=frames.numpy(), text="the bright square")
    with torch.no_grad():
        expected = model(**inputs)
    remote = load_as_remote_code(DEMO_MODEL, data, tmp_path)
    torch.testing.assert_close(remote["logits"], expected.logits, **FP32_ROUNDING)
    torch.testing.assert_close(remote["pred_masks"], expected.pred_masks, **FP32_ROUNDING)


def test_committed_demo_folder_code_is_the_current_source():
    """The folder's code files and `auto_map` are what `save_pretrained` writes today. After changing one of these
    sources, refresh them with the command of the README's "Demo: the embedded model" section."""
    code_files = sorted(path.name for path in DEMO_MODEL.glob("*.py"))
    assert code_files == sorted(set(REMOTE_CODE_FILES) | PIPELINE_CODE_FILES)
    assert json.loads((DEMO_MODEL / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name in code_files:
        assert (DEMO_MODEL / name).read_text() == (REPO_ROOT / "src" / name).read_text(), f"{name} is stale"
