"""The "referring-video-object-segmentation" pipeline: registered with the package, the same masks as the library API,
batching over videos, dtype, and `pipeline(model=folder, trust_remote_code=True)` without the package."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import pipeline

from helpers import randomize_weights, unit_test_config
from referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
    ReferringVideoObjectSegmentationPipeline,
)
from referformer.cli_presets import build_shapes_tokenizer
from referformer.inference import ReferringVideoSegmenter


TASK = "referring-video-object-segmentation"
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


REMOTE_PIPELINE = textwrap.dedent(
    """
    import sys
    sys.modules["referformer"] = None  # the package is not importable: the pipeline comes from the folder
    from safetensors.numpy import load_file, save_file
    from transformers import pipeline

    folder, data = sys.argv[1], sys.argv[2]
    segment = pipeline(model=folder, trust_remote_code=True, device="cpu")
    assert type(segment).__module__.startswith("transformers_modules."), type(segment).__module__
    assert segment.task == "referring-video-object-segmentation", segment.task
    outputs = segment(load_file(data + "/clip.safetensors")["frames"], text=["the bright square", "the dark background"])
    save_file({f"masks{index}": output["masks"] for index, output in enumerate(outputs)}, data + "/remote.safetensors")
    print("remote pipeline ok")
    """
)


def test_saved_pipeline_runs_as_remote_code_without_the_package(segment, tmp_path):
    folder = tmp_path / "pipeline"
    segment.save_pretrained(folder)
    assert (folder / "pipeline_referformer.py").is_file() and (folder / "processor_config.json").is_file()
    frames = clip(5)
    save_file({"frames": frames}, tmp_path / "clip.safetensors")
    expected = segment(frames, text=SENTENCES)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE, str(folder), str(tmp_path)], capture_output=True, text=True, env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote pipeline ok" in result.stdout
    remote = load_file(tmp_path / "remote.safetensors")
    for index, output in enumerate(expected):
        assert (remote[f"masks{index}"] != output["masks"]).mean() < 1e-3  # another process: same within rounding
