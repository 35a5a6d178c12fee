"""The "referring-video-object-segmentation" pipeline: registered with the package; every input form (video file, frame
folder, lists of frames or of image paths, 4-D arrays, images, dicts, `inputs=`, generators streamed frame by frame) and
the one list rule with its errors; the output structure with the segmenter's values; one broadcasting rule; misspelt
keywords named; batching over videos, dtype, and saved folders carrying it: `pipeline(model=folder,
trust_remote_code=True)` infers the task and runs the folder's code where the package is not imported."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
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
from referformer.visualization import write_video


TASK = "referring-video-object-segmentation"
DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SENTENCES = ["the bright square", "the dark background"]
VIDEO_KEYS = {"label", "score", "query_index", "frame_indices", "masks", "scores", "boxes"}
FRAME_KEYS = {"label", "frame_index", "score", "query_index", "mask", "box"}
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
SCORE_ROUNDING = {"abs": FP32_ROUNDING["atol"], "rel": FP32_ROUNDING["rtol"]}  # FP32_ROUNDING for pytest.approx

clip = moving_square_clip


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


@pytest.fixture(scope="module")
def segmenter(model_dir):
    """The library API on the same folder, as a user loads it (its own model instance, frames in chunks of 2)."""
    return ReferringVideoSegmenter.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def image_model_dir(model_dir, tmp_path_factory):
    """The same model with frames resized to 80 pixels: a single frame's stride-64 level then has more than one value
    per GroupNorm group of the tiny config (at 40 pixels it has one, which GroupNorm refuses)."""
    folder = tmp_path_factory.mktemp("image-model")
    ReferFormerForReferringVideoObjectSegmentation.from_pretrained(model_dir).save_pretrained(folder)
    ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": 80}), build_shapes_tokenizer()).save_pretrained(folder)
    return folder


def assert_boxes_match(boxes, expected):
    """Box dicts are the segmenter's float boxes truncated to int pixels, as zero-shot-object-detection truncates; a
    coordinate within fp32 rounding (`FP32_ROUNDING`) of an integer may truncate either way."""
    assert len(boxes) == len(expected)
    for box, reference in zip(boxes, expected):
        assert tuple(box) == BOX_KEYS and all(isinstance(box[key], int) for key in BOX_KEYS)
        for key, value in zip(BOX_KEYS, reference.tolist()):
            near_integer = abs(value - round(value)) <= FP32_ROUNDING["atol"] + FP32_ROUNDING["rtol"] * abs(value)
            assert box[key] == int(value) or (near_integer and abs(box[key] - int(value)) <= 1), (box, reference)


def assert_matches_segmenter(results, expected, threshold=0.5):
    """The pipeline's results of one video against the segmenter's: two fp32 computations of the same outputs (frame
    chunks, pixel mask or not), equal up to `FP32_ROUNDING`; masks may differ only at pixels within 1e-4 of the
    threshold."""
    assert [result["label"] for result in results] == [reference.sentence for reference in expected]
    for result, reference in zip(results, expected):
        assert result.keys() == VIDEO_KEYS
        assert isinstance(result["score"], float) and result["score"] == pytest.approx(reference.score, **SCORE_ROUNDING)
        # The video-level score is the mean of the per-frame scores: a float32 mean of T values in [0, 1], within T
        # float32 ulps (2^-24 each) of the float64 mean of the same values.
        assert result["score"] == pytest.approx(np.mean(result["scores"]), abs=len(result["scores"]) * 2**-24)
        assert result["query_index"] == reference.query_indices[0] and result["frame_indices"] == reference.frame_indices
        assert isinstance(result["masks"], np.ndarray) and result["masks"].dtype == np.bool_
        assert_masks_equal_up_to_rounding(
            torch.from_numpy(result["masks"]), torch.from_numpy(reference.masks),
            torch.from_numpy(reference.probabilities()), threshold,
        )
        assert all(isinstance(score, float) for score in result["scores"])
        np.testing.assert_allclose(result["scores"], reference.scores, **FP32_ROUNDING)
        assert_boxes_match(result["boxes"], reference.boxes)


def assert_same_results(actual, expected, name=""):
    """Results of the same pixels through the same computation in one process: equal exactly."""
    assert len(actual) == len(expected), name
    for result, reference in zip(actual, expected):
        assert result.keys() == reference.keys(), name
        np.testing.assert_array_equal(result["masks"], reference["masks"], err_msg=name)
        assert {key: value for key, value in result.items() if key != "masks"} == {
            key: value for key, value in reference.items() if key != "masks"
        }, name


def test_pipeline_gives_the_segmenters_results(segment, segmenter):
    assert isinstance(segment, ReferringVideoObjectSegmentationPipeline)
    frames = clip(6)
    results = segment(frames, text=SENTENCES)
    assert_matches_segmenter(results, segmenter(frames, SENTENCES))
    assert results[0]["masks"].any() and not results[0]["masks"].all()
    assert results[0]["score"] != results[1]["score"]  # each sentence conditions its own result
    options = {"frame_stride": 2, "max_frames": 2, "threshold": 0.4}
    single = segment(frames, text=SENTENCES[0], **options)
    assert len(single) == 1 and single[0]["masks"].shape == (2, 48, 72) and single[0]["frame_indices"] == [0, 2]
    assert_matches_segmenter(single, segmenter(frames, SENTENCES[0], **options), threshold=0.4)


def test_every_form_of_one_video_gives_its_results(segment, tmp_path):
    frames = clip(4)
    expected = segment(frames, text=SENTENCES)  # a 4-D array
    folder = tmp_path / "frames"
    folder.mkdir()
    paths = []
    for index, frame in enumerate(frames):
        paths.append(folder / f"{index:03d}.png")  # PNG: the same pixels back
        Image.fromarray(frame).save(paths[-1])
    forms = {
        "list of arrays": list(frames),
        "tuple of arrays": tuple(frames),
        "list of PIL images": [Image.fromarray(frame) for frame in frames],
        "frame folder": str(folder),
        "frame folder (Path)": folder,
        "list of image paths": [str(path) for path in paths],
        "torch [T, C, H, W]": torch.from_numpy(frames).permute(0, 3, 1, 2),
    }
    for name, video in forms.items():
        assert_same_results(segment(video, text=SENTENCES), expected, name)
    assert_same_results(segment(inputs=frames, text=SENTENCES), expected)
    assert_same_results(segment(videos=frames, text=SENTENCES), expected)
    assert_same_results(segment({"video": frames, "text": SENTENCES}), expected)


def test_video_files_one_and_several(segment, segmenter, tmp_path):
    paths = [write_video(clip(4, seed=seed), tmp_path / f"clip{seed}.mp4", fps=5) for seed in (0, 1)]
    one = segment(str(paths[0]), text=SENTENCES)
    assert_matches_segmenter(one, segmenter(str(paths[0]), SENTENCES))  # the same decoded frames
    several = segment([str(path) for path in paths], text=SENTENCES)  # a list of video files: several videos
    assert len(several) == 2
    assert_same_results(several[0], one)
    assert_same_results(several[1], segment(paths[1], text=SENTENCES))


def test_an_image_is_a_one_frame_video(image_model_dir, tmp_path):
    segment = pipeline(TASK, model=str(image_model_dir), device="cpu")
    segmenter = ReferringVideoSegmenter.from_pretrained(image_model_dir, device="cpu")
    image = clip(1)[0]
    results = segment(Image.fromarray(image), text=SENTENCES)
    assert [result["masks"].shape for result in results] == [(1, 48, 72)] * 2
    assert all(result["frame_indices"] == [0] and len(result["boxes"]) == 1 for result in results)
    assert_matches_segmenter(results, segmenter(Image.fromarray(image), SENTENCES))
    Image.fromarray(image).save(tmp_path / "image.png")
    for same in ([image], str(tmp_path / "image.png"), tmp_path / "image.png", [str(tmp_path / "image.png")]):
        assert_same_results(segment(same, text=SENTENCES), results)


def test_the_list_rule_and_its_errors(segment, tmp_path):
    frames = clip(3)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(frame).save(paths[-1])
    one = segment(paths, text=SENTENCES[0])  # image paths: the frames of ONE video
    assert len(one) == 1 and one[0]["masks"].shape == (3, 48, 72)
    several = segment([paths[:2], paths[1:]], text=SENTENCES[0])  # lists of frames: several videos
    assert [len(results) for results in several] == [1, 1]
    assert_same_results(several[1], segment(paths[1:], text=SENTENCES[0]))
    # A list of dicts: several videos, each with its own sentences.
    videos = [clip(3, seed=1), clip(3, seed=2)]
    dicts = segment([{"video": videos[0], "text": SENTENCES[0]}, {"video": videos[1], "text": SENTENCES}])
    assert [[result["label"] for result in results] for results in dicts] == [SENTENCES[:1], SENTENCES]
    assert_same_results(dicts[1], segment(videos[1], text=SENTENCES))
    errors = [
        (([frames[0], "clip.mp4"],), {"text": "x"}, ValueError, "not both: item 0 is a frame, item 1 a video"),
        (([paths[0], videos[0]],), {"text": "x"}, ValueError, "not both: item 0 is a frame, item 1 a video"),
        (([{"video": frames, "text": "x"}, frames],), {}, ValueError, "must hold only {'video': ..., 'text': ...} dicts"),
        (({"videos": frames, "text": "x"},), {}, TypeError, "unexpected key 'videos' (did you mean 'video'?)"),
        (({"video": frames},), {}, ValueError, "needs the keys 'video' and 'text', got ['video']"),
        (({"video": frames, "text": "x"},), {"text": "y"}, ValueError, "carry their own text"),
        (({"video": videos, "text": "x"},), {}, ValueError, "is one video, got a list of 2 videos"),
        (([],), {"text": "x"}, ValueError, "No video given"),
        ((frames,), {}, ValueError, "needs `text`"),
        ((), {"text": "x"}, ValueError, "needs videos"),
        ((frames,), {"inputs": frames, "text": "x"}, TypeError, "Give the videos once"),
        ((frames,), {"text": []}, ValueError, "text must be a sentence or a non-empty list of sentences"),
        ((videos,), {"text": []}, ValueError, "text must be a sentence or a non-empty list of sentences"),
        ((frames,), {"text": "x", "threshold": 1.5}, ValueError, "threshold must be in (0, 1), got 1.5"),
        ((frames[0],), {"text": "x"}, ValueError, "A video array must be 4-D"),
    ]
    for args, kwargs, error, message in errors:
        with pytest.raises(error, match=re.escape(message)):
            segment(*args, **kwargs)


def test_misspelt_keywords_are_named(segment):
    frames = clip(2)
    for kwargs, message in [
        ({"video": frames, "text": "x"}, "argument 'video' (did you mean 'videos'?)"),
        ({"videos": frames, "txt": "x"}, "argument 'txt' (did you mean 'text'?)"),
        ({"videos": frames, "text": "x", "max_frame": 2}, "argument 'max_frame' (did you mean 'max_frames'?)"),
        ({"videos": frames, "text": "x", "treshold": 0.4, "colour": 1},
         "arguments 'treshold' (did you mean 'threshold'?), 'colour'."),
    ]:
        with pytest.raises(TypeError, match=re.escape(f"__call__() got an unexpected keyword {message}")):
            segment(**kwargs)
    with pytest.raises(ValueError, match="window apply to a streamed video only"):
        segment(frames, text="x", window=4)


def test_one_sentence_or_a_list_applies_to_every_video(segment):
    videos = [clip(3, seed=0), clip(3, seed=1)]
    every = segment(videos, text=SENTENCES)
    assert [[result["label"] for result in results] for results in every] == [SENTENCES, SENTENCES]
    for video, results in zip(videos, every):
        assert_same_results(results, segment(video, text=SENTENCES))
    one = segment(videos, text=SENTENCES[0])
    assert [[result["label"] for result in results] for results in one] == [SENTENCES[:1], SENTENCES[:1]]
    for video, results in zip(videos, one):
        assert_same_results(results, segment(video, text=SENTENCES[0]))


def test_batching_over_videos_equals_one_by_one(segment):
    videos = [clip(4, seed=0), clip(4, seed=1), clip(4, seed=2)]
    one_by_one = segment(videos, text=SENTENCES)
    batched = segment(videos, text=SENTENCES, batch_size=2)  # (video, sentence) rows, 4 then 2
    for singles, batch in zip(one_by_one, batched):
        for single, result in zip(singles, batch):
            assert single["label"] == result["label"] and single["query_index"] == result["query_index"]
            # Batch size changes the summation order only: fp32 rounding apart (a few pixels at the threshold).
            assert (single["masks"] != result["masks"]).mean() < 1e-3
            np.testing.assert_allclose(single["scores"], result["scores"], **FP32_ROUNDING)
    # Videos of different sizes are padded in a batch (as the processor pads); results come at each video's size.
    mixed = segment([clip(4), clip(4, height=56, width=64, seed=1)], text=SENTENCES[0], batch_size=2)
    assert [results[0]["masks"].shape for results in mixed] == [(4, 48, 72), (4, 56, 64)]
    with pytest.raises(ValueError, match="same number of kept frames"):
        segment([clip(4), clip(3)], text="a square", batch_size=2)


def test_a_generator_of_frames_is_streamed_frame_by_frame(segment, segmenter):
    frames = clip(6)
    streamed = segment((frame for frame in frames), text=SENTENCES)
    assert isinstance(streamed, Iterator)  # lazy: one list per frame, as frames become final
    streamed = list(streamed)
    assert len(streamed) == 6
    whole = segmenter(frames, SENTENCES)  # 6 frames fit one window: the whole-video protocol
    for position, frame_results in enumerate(streamed):
        assert [result["label"] for result in frame_results] == SENTENCES
        for result, reference in zip(frame_results, whole):
            assert result.keys() == FRAME_KEYS and result["frame_index"] == position
            assert result["query_index"] == reference.query_indices[0]
            assert isinstance(result["score"], float)
            assert result["score"] == pytest.approx(reference.scores[position], **SCORE_ROUNDING)
            assert_boxes_match([result["box"]], reference.boxes[position : position + 1])
            assert result["mask"].shape == (48, 72) and result["mask"].dtype == np.bool_
            assert_masks_equal_up_to_rounding(
                torch.from_numpy(result["mask"]), torch.from_numpy(reference.masks[position]),
                torch.from_numpy(reference.probabilities(position, position + 1)[0]),
            )
    # The options reach the segmenter's streaming: the same model and computation, equal exactly.
    same_model = ReferringVideoSegmenter(segment.model, segment.processor)
    options = {"window": 3, "overlap": 1, "frame_stride": 1, "max_frames": 5, "threshold": 0.4}
    expected = list(same_model.stream(iter(frames), SENTENCES, **options))
    streamed = list(segment(iter(list(frames)), text=SENTENCES, **options))  # any iterator streams
    assert [results[0]["frame_index"] for results in streamed] == [output.frame_index for output in expected]
    for frame_results, output in zip(streamed, expected):
        for index, result in enumerate(frame_results):
            np.testing.assert_array_equal(result["mask"], output.masks[index])
            assert result["score"] == float(output.scores[index]) and result["query_index"] == output.query_indices[index]
            assert result["box"] == dict(zip(BOX_KEYS, (int(value) for value in output.boxes[index])))
    strided = list(segment((frame for frame in frames), text=SENTENCES[0], frame_stride=2))
    assert [results[0]["frame_index"] for results in strided] == [0, 2, 4]
    with pytest.raises(TypeError, match=re.escape("unexpected keyword argument 'batch_size'")):
        segment((frame for frame in frames), text="x", batch_size=2)


def test_bfloat16_pipeline(model_dir):
    segment = pipeline(TASK, model=str(model_dir), device="cpu", dtype=torch.bfloat16)
    assert segment.model.dtype == torch.bfloat16
    results = segment(clip(4), text=SENTENCES[0])
    assert isinstance(results[0]["score"], float) and results[0]["masks"].shape == (4, 48, 72)
    streamed = list(segment((frame for frame in clip(3)), text=SENTENCES[0]))
    assert [results[0]["mask"].shape for results in streamed] == [(48, 72)] * 3


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

    import numpy as np

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
            {f"{key}{index}": np.asarray(output[key]) for index, output in enumerate(outputs) for key in ("masks", "scores")},
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
