"""The "referring-video-object-segmentation" pipeline: registered with the package, the same masks as the library API,
batching over videos, dtype, and saved folders carrying it: `pipeline(model=folder, trust_remote_code=True)` infers
the task and runs the folder's code where the package is not imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import pipeline

from helpers import (
    FP32_ROUNDING,
    REPO_ROOT,
    assert_masks_equal_up_to_rounding,
    moving_square_clip,
    randomize_weights,
    unit_test_config,
)
from referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
    ReferringVideoObjectSegmentationPipeline,
)
from referformer.cli_presets import build_shapes_tokenizer
from referformer.inference import ReferringVideoSegmenter


TASK = "referring-video-object-segmentation"
DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SENTENCES = ["the bright square", "the dark background"]


def clip(num_frames, height=48, width=72, seed=0):
    generator = np.random.default_rng(seed)
    frames = generator.integers(0, 120, (num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        frames[index, 10:26, 3 * index : 3 * index + 16] = (250, 240, 30)
    return frames


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config())).save_pretrained(folder)
    ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": 40}), build_shapes_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segment(model_dir):
    return pipeline(TASK, model=str(model_dir), device="cpu")


def test_a_generator_of_frames_gives_the_results_of_the_frames(segment):
    frames = clip(5)
    expected = segment(frames, text=SENTENCES)
    for text in (SENTENCES[0], SENTENCES):  # one sentence streams through preprocessing, several read it once
        outputs = segment((frame for frame in frames), text=text)
        for output, reference in zip([outputs] if isinstance(text, str) else outputs, expected):
            np.testing.assert_array_equal(output["masks"], reference["masks"])
            assert output["frame_indices"] == list(range(5))


def test_pipeline_gives_the_library_api_results(segment, model_dir):
    assert isinstance(segment, ReferringVideoObjectSegmentationPipeline)
    frames = clip(6)
    outputs = segment(frames, text=SENTENCES)
    expected = ReferringVideoSegmenter.from_pretrained(model_dir, device="cpu")(frames, SENTENCES)
    assert [output["sentence"] for output in outputs] == SENTENCES
    for output, reference in zip(outputs, expected):
        np.testing.assert_array_equal(output["masks"], reference.masks)
        np.testing.assert_allclose(output["scores"], reference.scores, atol=1e-6, rtol=0)
        np.testing.assert_allclose(output["boxes"], reference.boxes, atol=1e-4, rtol=0)
        assert output["query_index"] == reference.query_indices[0] and output["frame_indices"] == list(range(6))
    single = segment(frames, text=SENTENCES[0], max_frames=3, frame_stride=2, threshold=0.4)
    assert single["masks"].shape == (3, 48, 72) and single["frame_indices"] == [0, 2, 4]


def test_batching_over_videos_equals_one_by_one(segment):
    videos = [clip(4, seed=0), clip(4, seed=1), clip(4, seed=2)]
    one_by_one = segment(videos, text=SENTENCES[0])
    batched = segment(videos, text=[SENTENCES[0]] * 3, batch_size=2)
    for single, batch in zip(one_by_one, batched):
        assert single["query_index"] == batch["query_index"]
        assert (single["masks"] != batch["masks"]).mean() < 1e-3  # the same up to float summation order
        np.testing.assert_allclose(single["scores"], batch["scores"], atol=1e-5, rtol=0)
    # Videos of different sizes are padded in a batch (as the processor pads); results come at each video's size.
    mixed = segment([clip(4), clip(4, height=56, width=64, seed=1)], text=SENTENCES[0], batch_size=2)
    assert [output["masks"].shape for output in mixed] == [(4, 48, 72), (4, 56, 64)]
    with pytest.raises(ValueError, match="same number of kept frames"):
        segment([clip(4), clip(3)], text="a square", batch_size=2)
    with pytest.raises(ValueError, match="one sentence per video"):
        segment(videos, text=SENTENCES)
    with pytest.raises(ValueError, match="needs `text`"):
        segment(videos[0])
    with pytest.raises(ValueError, match=r"No video given: pass a video \(file"):
        segment([], text="a square")
    for one_or_many in (videos[0], videos):
        with pytest.raises(ValueError, match="text must be a sentence or a non-empty list of sentences"):
            segment(one_or_many, text=[])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1.5"):
        segment(videos[0], text="a square", threshold=1.5)


def test_bfloat16_pipeline(model_dir):
    segment = pipeline(TASK, model=str(model_dir), device="cpu", dtype=torch.bfloat16)
    assert segment.model.dtype == torch.bfloat16
    output = segment(clip(4), text=SENTENCES[0])
    assert output["scores"].dtype == np.float32 and output["masks"].shape == (4, 48, 72)


def test_saved_model_folder_carries_the_pipeline_and_the_package_serves_the_task(model_dir, tmp_path):
    """A model's `save_pretrained` writes the pipeline's code and names it in config.json; with the package imported,
    `pipeline(TASK, model=folder)` runs the package's pipeline (never the folder's code), with or without
    `trust_remote_code`."""
    assert (model_dir / "pipeline_referformer.py").read_text() == (REPO_ROOT / "src" / "pipeline_referformer.py").read_text()
    saved_pipelines = {
        TASK: {
            "impl": "pipeline_referformer.ReferringVideoObjectSegmentationPipeline",
            "pt": ["AutoModelForZeroShotObjectDetection"],
            "type": "multimodal",
        }
    }
    assert json.loads((model_dir / "config.json").read_text())["custom_pipelines"] == saved_pipelines
    for trust_remote_code in (None, True):
        segment = pipeline(TASK, model=str(model_dir), device="cpu", trust_remote_code=trust_remote_code)
        assert type(segment) is ReferringVideoObjectSegmentationPipeline
        assert type(segment.model) is ReferFormerForReferringVideoObjectSegmentation
        assert not hasattr(segment.model.config, "custom_pipelines")  # the package's task, not the folder's
        segment.model.save_pretrained(tmp_path)
        assert not hasattr(segment.model.config, "custom_pipelines")  # only the saved config names the pipeline
        assert json.loads((tmp_path / "config.json").read_text())["custom_pipelines"] == saved_pipelines


# Runs `pipeline(model=folder, trust_remote_code=True)` on each case folder of argv (`case.json`: the model folder and
# the sentences; `clip.safetensors`: the frames), in a process that does not import the package: with the package
# blocked, everything comes from the folder; with it installed, the pipeline does, and the folder's deformable attention
# imports the package for its compiled operator, which registers the package's model and processor classes (and its
# task: the next folder then needs the task named, see `ReferFormerConfig.package_pipeline_tasks`).
REMOTE_PIPELINE = textwrap.dedent(
    """
    import importlib.util
    import json
    import sys

    package, cases = sys.argv[1], sys.argv[2:]
    if package == "blocked":
        sys.modules["referformer"] = None  # not importable: everything comes from the folder
    else:
        assert importlib.util.find_spec("referformer") is not None, "the package is not installed"
    from safetensors.numpy import load_file, save_file
    from transformers import pipeline

    for case in cases:
        spec = json.load(open(case + "/case.json"))
        segment = pipeline(model=spec["folder"], trust_remote_code=True, device="cpu")
        assert segment.task == "referring-video-object-segmentation", segment.task
        remote_components = (segment, segment.model, segment.processor) if package == "blocked" else (segment,)
        for component in remote_components:
            assert type(component).__module__.startswith("transformers_modules."), type(component).__module__
        assert type(segment.model).__name__ == "ReferFormerForReferringVideoObjectSegmentation", type(segment.model)
        outputs = segment(load_file(case + "/clip.safetensors")["frames"], text=spec["sentences"])
        save_file(
            {f"{key}{index}": output[key] for index, output in enumerate(outputs) for key in ("masks", "scores")},
            case + "/remote.safetensors",
        )
    print("remote pipeline ok")
    """
)


@pytest.fixture(scope="module")
def pipeline_cases(model_dir, segment, tmp_path_factory):
    """Folders as users get them, by name, each with a clip and sentences: a model's `save_pretrained` (`model_dir`),
    the pipeline's `save_pretrained`, and a copy of the committed demo folder (with sentences it knows)."""
    root = tmp_path_factory.mktemp("pipeline_cases")
    segment.save_pretrained(root / "pipeline_saved")
    shutil.copytree(DEMO_MODEL, root / "demo")
    cases = {}
    for name, folder, frames, sentences in (
        ("model_saved", model_dir, clip(4), SENTENCES),
        ("pipeline_saved", root / "pipeline_saved", clip(4, seed=1), SENTENCES),
        ("demo", root / "demo", moving_square_clip(4, height=96, width=144), ["the yellow square", "the red circle"]),
    ):
        case = root / f"{name}_case"
        case.mkdir()
        (case / "case.json").write_text(json.dumps({"folder": str(folder), "sentences": sentences}))
        save_file({"frames": frames}, case / "clip.safetensors")
        cases[name] = case
    return cases


@pytest.mark.parametrize(
    "package, case_names", [("blocked", ("model_saved", "pipeline_saved", "demo")), ("installed", ("model_saved",))]
)
def test_saved_folders_run_as_remote_code_without_a_task(pipeline_cases, package, case_names, tmp_path):
    """`pipeline(model=folder, trust_remote_code=True)` infers the task from config.json and runs the folder's
    pipeline, with the package not importable or installed (not imported by the caller); its results are the
    package's (another process: equal up to fp32 rounding, derived below)."""
    cases = [pipeline_cases[name] for name in case_names]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE, package, *map(str, cases)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote pipeline ok" in result.stdout
    for case in cases:
        spec = json.loads((case / "case.json").read_text())
        frames = load_file(case / "clip.safetensors")["frames"]
        expected = ReferringVideoSegmenter.from_pretrained(spec["folder"], device="cpu")(frames, spec["sentences"])
        package_outputs = pipeline(TASK, model=spec["folder"], device="cpu")(frames, text=spec["sentences"])
        remote = load_file(case / "remote.safetensors")
        for index, (reference, package_output) in enumerate(zip(expected, package_outputs)):
            np.testing.assert_array_equal(package_output["masks"], reference.masks)  # one process: exactly
            # Another process may round differently (memory alignment, SIMD path): `FP32_ROUNDING` on the scores, and
            # masks that differ only at pixels whose probability is within 1e-4 of the threshold.
            np.testing.assert_allclose(remote[f"scores{index}"], reference.scores, **FP32_ROUNDING)
            assert_masks_equal_up_to_rounding(
                torch.from_numpy(remote[f"masks{index}"]),
                torch.from_numpy(reference.masks),
                torch.from_numpy(reference.probabilities()),
            )
        if case.name == "demo_case":  # the trained model finds the yellow square: the comparison is not of empty masks
            assert expected[0].masks.any() and not expected[0].masks.all()
