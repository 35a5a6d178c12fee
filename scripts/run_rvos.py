#!/usr/bin/env python
"""Referring video object segmentation with ReferFormer: predict, evaluate, train, generate data and demo.

    python scripts/run_rvos.py demo                              # the embedded demo model on fresh synthetic clips
    python scripts/run_rvos.py predict --model MODEL --video dog.mp4 --text "a brown dog" --output_dir out
    python scripts/run_rvos.py evaluate --model MODEL --dataset ref-davis17 --data_root DIR --davis_root DAVIS --output_dir out
    python scripts/run_rvos.py train --dataset ref-youtube-vos --data_root DIR --config_name resnet50 --output_dir run
    accelerate launch scripts/run_rvos.py train args.json        # any number of processes / GPUs
    python scripts/run_rvos.py generate --output_dir shapes --num_videos 400    # synthetic referring-shapes data
    python scripts/run_rvos.py serve                             # web demo on http://127.0.0.1:7860 (the demo extra)

`python scripts/run_rvos.py COMMAND --help` lists the options of a command. Options can also come from a JSON or
YAML file: `run_rvos.py COMMAND options.json`.
"""

import dataclasses
import functools
import json
import logging
import math
import re
import sys
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoTokenizer, HfArgumentParser, PretrainedConfig

from referformer import (
    ReferFormerConfig,
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
)
from referformer.cli_presets import CONFIG_PRESETS, DEFAULT_TOKENIZERS, build_shapes_tokenizer, tiny_config
from referformer.data import (
    ReferringVideoTrainTransform,
    expand_clip_starts,
    load_a2d_sentences,
    load_jhmdb_sentences,
    load_ref_davis17,
    load_ref_youtube_vos,
    load_refcoco,
)
from referformer.data_synthetic import ATTRIBUTES, generate_referring_shapes
from referformer.evaluation import ref_davis_label_maps
from referformer.evaluation_protocols import (
    evaluate_a2d,
    evaluate_ref_davis,
    evaluate_ytvos_folder,
    predict_a2d,
    write_ytvos_submission,
)
from referformer.inference import (
    CompressedArray,
    ReferringVideoSegmenter,
    iter_frames,
    process_state,
    run_sharded,
    write_predictions,
)
from referformer.model_cards import usage_section
from referformer.output_folders import ALL_ENTRIES, MANIFEST_NAME, check_output_target, staged_output
from referformer.processing_referformer import IMAGE_EXTENSIONS, natural_sort_key
from referformer.training import AccelerateTrainingArguments, check_training_checkpoint, collate_clips, train_with_accelerate
from referformer.visualization import write_palette_masks


EVAL_DATASETS = ("synthetic", "ref-youtube-vos", "ref-davis17", "a2d-sentences", "jhmdb-sentences")
TRAIN_DATASETS = ("synthetic", "ref-youtube-vos", "a2d-sentences", "refcoco", "joint")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
DEMO_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "referformer-tiny-shapes"
# What the demo model was trained on: six-frame clips whose expressions name what one frame shows.
DEMO_CLIP_FRAMES = 6
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
DAVIS_WINDOW = 36  # the original's Ref-DAVIS17 inference: independent 36-frame clips
DEMO_EXPRESSION_ATTRIBUTES = ("size", "color", "shape", "position")


class UsageError(ValueError):
    """A bad option or input, reported to the user as one line (no traceback)."""


# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


# Every option is checked when it is parsed (in the `__post_init__` of its dataclass), before anything is written.


def _check_choice(value, choices, option: str) -> None:
    if value not in choices:
        raise UsageError(f"Unknown {option} {value!r}; choose one of: {', '.join(choices)}.")


def _check_number(value, option: str, minimum=None, maximum=None, open_interval: bool = False) -> None:
    """`value` must be finite and within [minimum, maximum] ((minimum, maximum) with `open_interval`)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}.")
    below = minimum is not None and (value <= minimum if open_interval else value < minimum)
    above = maximum is not None and (value >= maximum if open_interval else value > maximum)
    if below or above:
        low, high = ("(", ")") if open_interval else ("[", "]")
        bounds = f"{low}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{high}"
        raise UsageError(f"{option} must be in {bounds}, got {value}.")


def _check_device(name: str, option: str = "--device") -> None:
    """`auto`, `cpu`, or an accelerator type (with index) that this machine has."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"Unknown {option} {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    if not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise UsageError(f"{option} {name} needs a {device.type} device and none is available here; use --device cpu.")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if device.index is not None and device.index >= count:
        raise UsageError(f"{option} {name}: this machine has {count} {device.type} device(s).")


@dataclass
class ModelArguments:
    """Which model to run, and where."""

    model: str = field(
        metadata={"help": "A ReferFormer model saved with save_pretrained (model + processor): local folder or Hub id."}
    )
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "Inference precision."})

    def __post_init__(self):
        _check_choice(self.dtype, ("fp32", "bf16", "fp16"), "--dtype")
        _check_device(self.device)


@dataclass
class PredictArguments:
    """A video and sentences in; masks, overlays and boxes out."""

    video: str = field(
        metadata={
            "help": "Video file (any format PyAV decodes), folder of frame images, or a folder of such videos (split "
            "across the processes of `accelerate launch`)."
        }
    )
    text: list[str] = field(
        metadata={"help": "One or more referring expressions, each quoted: --text 'the red car' 'the dog'."}
    )
    output_dir: str = field(
        metadata={"help": "Writes <output_dir>/<video>/<exp>/<frame>.png masks, overlay_<exp>.gif and predictions.json."}
    )
    window: int | None = field(
        default=None,
        metadata={
            "help": "Unset: one query over the whole video (the Ref-YouTube-VOS protocol). N: independent windows of N "
            "frames, each with its own query (the Ref-DAVIS17 protocol: 36)."
        },
    )
    frame_stride: int = field(default=1, metadata={"help": "Keep every N-th frame of the video."})
    max_frames: int | None = field(default=None, metadata={"help": "Keep at most this many frames (after the stride)."})
    threshold: float = field(default=0.5, metadata={"help": "Mask probability threshold."})
    overlay_format: Literal["gif", "mp4"] = field(default="gif", metadata={"help": "File type of the overlay videos."})
    fps: float = field(default=10.0, metadata={"help": "Frame rate of the overlay videos."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an earlier run's results for this video (never other files)."}
    )

    def __post_init__(self):
        _check_choice(self.overlay_format, ("gif", "mp4"), "--overlay_format")
        for option in ("window", "frame_stride", "max_frames"):
            _check_number(getattr(self, option), f"--{option}", minimum=1)
        _check_number(self.threshold, "--threshold", 0, 1, open_interval=True)
        _check_number(self.fps, "--fps", 0, 1000, open_interval=True)


@dataclass
class EvaluateArguments:
    """A benchmark (or a synthetic folder) in; scores, and the Ref-YouTube-VOS submission, out."""

    dataset: str = field(metadata={"help": f"One of: {', '.join(EVAL_DATASETS)}."})
    data_root: str = field(metadata={"help": "Dataset folder (the Ref-YouTube-VOS layout for the first three datasets)."})
    output_dir: str = field(metadata={"help": "Writes results.json (and Annotations/ + submission.zip for Ref-YouTube-VOS)."})
    split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: valid; test for A2D-Sentences; JHMDB has one)."}
    )
    window: int | None = field(
        default=None,
        metadata={
            "help": "Frames per forward pass, each window with its own query. Default: the whole video with one query "
            "(the Ref-YouTube-VOS protocol); 36 for ref-davis17 (its protocol)."
        },
    )
    num_frames: int = field(default=5, metadata={"help": "A2D/JHMDB: frames of the window centered on the annotated frame."})
    threshold: float = field(default=0.5, metadata={"help": "Mask probability threshold."})
    davis_root: str | None = field(
        default=None, metadata={"help": "Ref-DAVIS17: the DAVIS-2017 folder (ImageSets/, Annotations_unsupervised/)."}
    )
    ground_truth: str | None = field(
        default=None,
        metadata={"help": "A2D/JHMDB: COCO-format ground truth (default: the benchmark's file under --data_root)."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an earlier evaluation's results (never other files)."}
    )

    def __post_init__(self):
        _check_choice(self.dataset, EVAL_DATASETS, "--dataset")
        _check_number(self.window, "--window", minimum=1)
        _check_number(self.num_frames, "--num_frames", minimum=1)
        _check_number(self.threshold, "--threshold", 0, 1, open_interval=True)


@dataclass
class TrainModelArguments:
    """The model to start from: a saved model, or a new one from a configuration."""

    init_from: str | None = field(
        default=None, metadata={"help": "Fine-tune this saved ReferFormer model (local folder or Hub id)."}
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "Train a new model: a preset ("
            + "; ".join(f"{name}: {text}" for name, text in CONFIG_PRESETS.items())
            + ") or the path of a ReferFormerConfig JSON file."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer of a new model (default: the preset's); local folder or Hub id."}
    )

    def __post_init__(self):
        if (self.init_from is None) == (self.config_name is None):
            raise UsageError("Give exactly one of --init_from (a saved model) and --config_name (a new model).")


@dataclass
class TrainDataArguments:
    """Training data and augmentation."""

    dataset: str = field(metadata={"help": f"One of: {', '.join(TRAIN_DATASETS)} (joint = Ref-YouTube-VOS + RefCOCO)."})
    data_root: str = field(
        metadata={"help": "Dataset folder (for refcoco: the COCO folder with train2014/ and refcoco*/ annotations)."}
    )
    refcoco_root: str | None = field(default=None, metadata={"help": "joint: the COCO folder of the RefCOCO data."})
    refcoco_datasets: list[str] = field(
        default_factory=lambda: ["refcoco", "refcoco+", "refcocog"],
        metadata={"help": "refcoco/joint: the referring-expression datasets to concatenate."},
    )
    split: str = field(default="train", metadata={"help": "Split of --data_root to train on."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames per clip (default 5; 1 for refcoco)."})
    train_sizes: list[int] | None = field(
        default=None,
        metadata={"help": "Shorter sides drawn for training (default: the original's 288..512; synthetic: frame height)."},
    )
    max_size: int = field(default=640, metadata={"help": "Longest side after resizing, for training and inference."})
    crop_prob: float | None = field(default=None, metadata={"help": "Random-crop probability (default 0.5; synthetic 0)."})
    photometric: bool | None = field(
        default=None,
        metadata={"help": "Photometric distortion (default on; off for synthetic data, whose expressions name colours)."},
    )
    inference_size: int | None = field(
        default=None, metadata={"help": "Shorter side the saved processor resizes to (default 360; synthetic: frame height)."}
    )
    mask_interpolation: str | None = field(
        default=None,
        metadata={
            "help": "How the saved processor brings masks to frame size: logits (the original; default for a new "
            "model) or probabilities (sigmoid first: better edges for small models on small objects)."
        },
    )
    eval_split: str | None = field(
        default=None,
        metadata={"help": "synthetic/ref-youtube-vos: after training, J&F on this split of --data_root (needs its masks)."},
    )

    def __post_init__(self):
        _check_choice(self.dataset, TRAIN_DATASETS, "--dataset")
        _check_number(self.num_frames, "--num_frames", minimum=1)
        _check_number(self.max_size, "--max_size", minimum=32)
        _check_number(self.inference_size, "--inference_size", minimum=32)
        _check_number(self.crop_prob, "--crop_prob", 0, 1)
        for size in self.train_sizes or ():
            _check_number(size, "--train_sizes", minimum=32)
        if self.mask_interpolation is not None:
            _check_choice(self.mask_interpolation, ("logits", "probabilities"), "--mask_interpolation")
        if self.dataset == "joint" and not self.refcoco_root:
            raise UsageError("--dataset joint needs --refcoco_root (the COCO folder with the RefCOCO annotations).")


@dataclass
class RunTrainingArguments(AccelerateTrainingArguments):
    """Optimization, schedule, checkpoints and publishing."""

    max_steps: int = field(
        default=-1, metadata={"help": "Optimizer steps; -1 derives them from --num_train_epochs (the default)."}
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Epochs (default, the original's schedules: 6 to fine-tune (12 on RefCOCO/joint); for a new model "
            "10 on Ref-YouTube-VOS/synthetic, 12 on A2D-Sentences/RefCOCO/joint)."
        },
    )
    lr_drop_epochs: list[int] | None = field(
        default=None,
        metadata={"help": "Epochs after which the learning rates are divided by 10 (default: 3 5, 6 8 or 8 10 as above)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Continue exactly from a checkpoint-<step> folder of --output_dir."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Train into a non-empty --output_dir (the final model replaces same-named files)."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the final model and its card to this Hub repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self):
        _check_choice(self.mixed_precision, ("no", "fp16", "bf16"), "--mixed_precision")
        for option in ("learning_rate", "backbone_learning_rate", "text_encoder_learning_rate"):
            _check_number(getattr(self, option), f"--{option}", minimum=0, maximum=1)
        for option in ("linear_projection_multiplier", "weight_decay", "max_grad_norm", "checkpoint_every", "log_every",
                       "num_workers"):
            _check_number(getattr(self, option), f"--{option}", minimum=0)
        for option in ("per_device_batch_size", "gradient_accumulation_steps"):
            _check_number(getattr(self, option), f"--{option}", minimum=1)
        _check_number(self.num_train_epochs, "--num_train_epochs", minimum=0, open_interval=True)
        if self.max_steps == 0 or self.max_steps < -1:
            raise UsageError(f"--max_steps must be positive (or -1: from --num_train_epochs), got {self.max_steps}.")


@dataclass
class GenerateArguments:
    """Synthetic referring-shapes clips (2-4 moving shapes, unambiguous expressions) in the Ref-YouTube-VOS layout."""

    output_dir: str = field(metadata={"help": "Dataset folder; <split>/ and meta_expressions/<split>/ are created in it."})
    split: str = field(default="train", metadata={"help": "train, valid or test (every split gets masks)."})
    num_videos: int = field(default=400, metadata={"help": "Number of clips."})
    num_frames: int = field(default=DEMO_CLIP_FRAMES, metadata={"help": "Frames per clip."})
    height: int = field(default=96, metadata={"help": "Frame height."})
    width: int = field(default=144, metadata={"help": "Frame width."})
    seed: int = field(default=0, metadata={"help": "Clip i depends only on (seed, i)."})
    min_objects: int = field(default=2, metadata={"help": "Fewest shapes per clip."})
    max_objects: int = field(default=4, metadata={"help": "Most shapes per clip."})
    expressions_per_object: int = field(default=2, metadata={"help": "Expressions per shape (fewer if not unique)."})
    expression_attributes: list[str] = field(
        default_factory=lambda: list(DEMO_EXPRESSION_ATTRIBUTES),
        metadata={"help": f"Attributes the expressions may name, among {' '.join(ATTRIBUTES)}."},
    )

    def __post_init__(self):
        _check_choice(self.split, ("train", "valid", "test"), "--split")
        for name in self.expression_attributes:
            _check_choice(name, ATTRIBUTES, "--expression_attributes")


@dataclass
class DemoArguments:
    """Fresh synthetic clips in; the demo model's masks and overlays, and its J&F against the generator's masks, out."""

    output_dir: str = field(
        default="referformer-demo",
        metadata={"help": "Writes clips/ (the generated data), predictions/<clip>/ (masks, overlays) and results.json."},
    )
    model: str = field(default=str(DEMO_MODEL), metadata={"help": "Model to run (default: the embedded demo model)."})
    num_videos: int = field(default=8, metadata={"help": "Number of fresh clips (2 to 4 shapes each)."})
    seed: int = field(default=1000, metadata={"help": "Seed of the clips (the demo model was trained on seed 0)."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', ..."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier demo's results (never other files)."})

    def __post_init__(self):
        _check_device(self.device)
        if self.num_videos < 2:
            raise UsageError(
                f"--num_videos must be at least 2 (the language check swaps expressions between clips), got "
                f"{self.num_videos}."
            )


@dataclass
class ServeArguments:
    """A web page where one uploads a video, types sentences and gets the overlay video, the masks and the scores."""

    model: str = field(default=str(DEMO_MODEL), metadata={"help": "Default model folder (the page can name another)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', ..."})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "Inference precision."})
    max_frames: int = field(default=300, metadata={"help": "Longest video accepted, in frames."})

    def __post_init__(self):
        _check_choice(self.dtype, ("fp32", "bf16", "fp16"), "--dtype")
        if self.max_frames < 1:
            raise UsageError(f"--max_frames must be at least 1, got {self.max_frames}.")


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


def check_referformer_source(name: str, what: str = "model") -> None:
    """Fails clearly unless `name` is a saved ReferFormer model (local folder, or Hub id when no such path exists)."""
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"The {what} {name} has no config.json: not a folder written by save_pretrained.")
    elif not HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"The {what} {name} does not exist (neither a local folder nor a Hub id).")
    try:
        config, _ = PretrainedConfig.get_config_dict(name)
    except OSError as error:
        raise FileNotFoundError(f"Cannot load the {what} {name}: {error}") from error
    model_type = config.get("model_type")
    if model_type != ReferFormerConfig.model_type:
        raise UsageError(
            f"The {what} {name} is a {model_type!r} model, not a ReferFormer one (model_type 'referformer')."
        )


def load_model(args: ModelArguments) -> ReferringVideoSegmenter:
    """The model and processor of `args.model`, on `--device`, in `--dtype`."""
    check_referformer_source(args.model)
    device = process_state().device if args.device == "auto" else args.device  # each process its own GPU
    return ReferringVideoSegmenter.from_pretrained(args.model, device=device, dtype=args.dtype)


# ---------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------


def video_frame_names(video: str, indices: list[int]) -> list[str]:
    """Names of the kept frames: the image file names of a frame folder, `00000`-style indices for a video file."""
    path = Path(video)
    if path.is_dir():
        files = sorted(
            (child for child in path.iterdir() if child.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda child: natural_sort_key(child.name),
        )
        return [files[index].stem for index in indices]
    return [f"{index:05d}" for index in indices]


def check_video_source(video: str) -> None:
    """Fails clearly unless `video` is an existing regular file or folder (a FIFO or device would block reading)."""
    path = Path(video)
    if not path.exists():
        raise FileNotFoundError(f"The video {video} does not exist.")
    if not (path.is_file() or path.is_dir()):
        raise UsageError(f"The video {video} is neither a regular file nor a folder of frames.")


def list_videos(path: Path) -> list[Path]:
    """The videos of `--video`: a video file, a folder of frames, or a folder of video files and frame folders."""
    check_video_source(path)
    if path.is_file() or any(child.suffix.lower() in IMAGE_EXTENSIONS for child in path.iterdir()):
        return [path]
    videos = [
        child for child in path.iterdir()
        if (child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS)
        or (child.is_dir() and any(grandchild.suffix.lower() in IMAGE_EXTENSIONS for grandchild in child.iterdir()))
    ]
    if not videos:
        raise UsageError(f"{path} holds no frame image, video file ({', '.join(VIDEO_EXTENSIONS)}) or frame folder.")
    return sorted(videos, key=lambda video: natural_sort_key(video.name))


def run_predict(model_args: ModelArguments, args: PredictArguments) -> list[Path] | None:
    check_referformer_source(model_args.model)
    videos = list_videos(Path(args.video))
    video_dirs = [Path(args.output_dir) / (video.stem if video.is_file() else video.resolve().name) for video in videos]
    if len(set(video_dirs)) != len(video_dirs):
        raise UsageError(f"Two videos of {args.video} have the same name (without extension).")
    for video, video_dir in zip(videos, video_dirs):
        check_output_target(video_dir, args.overwrite, inputs=(video, model_args.model))
    segmenter = load_model(model_args)

    def predict(video_and_folder):
        video, video_dir = video_and_folder
        with staged_output(video_dir, args.overwrite, inputs=(video, model_args.model)) as staging:
            results = segmenter(video, args.text, args.window, args.frame_stride, args.max_frames, args.threshold, progress=True)
            frame_names = video_frame_names(str(video), results[0].frame_indices)
            frames = iter_frames(video, args.frame_stride, args.max_frames)
            write_predictions(
                staging, frames, results, frame_names, args.overlay_format, args.fps, video_name=video_dir.name
            )
        return len(frame_names)

    num_frames = run_sharded(predict, zip(videos, video_dirs), "videos" if len(videos) > 1 else None)
    if not process_state().is_main_process:
        return None
    for video_dir, count in zip(video_dirs, num_frames):
        print(f"{count} frames, {len(args.text)} expression(s): results in {video_dir}")
    return video_dirs


# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------


def group_by_video(rows) -> dict[str, list[dict]]:
    videos = defaultdict(list)
    for row in rows:
        videos[row["video_id"]].append(row)
    return videos


def evaluate_ytvos_layout(segmenter: ReferringVideoSegmenter, args: EvaluateArguments, split: str, output_dir) -> dict:
    """Ref-YouTube-VOS layout (Ref-YouTube-VOS, synthetic): the submission folder and zip in `output_dir`, and J&F
    when masks exist."""
    rows = load_ref_youtube_vos(args.data_root, split)
    if len(rows) == 0:
        raise UsageError(f"{args.data_root} lists no expression for split {split!r}.")

    def segment(video_rows):
        results = segmenter(video_rows[0]["frames"], [row["expression"] for row in video_rows], args.window, threshold=args.threshold)
        return [(row["exp_id"], row["frame_names"], CompressedArray(result.masks)) for row, result in zip(video_rows, results)]

    videos = group_by_video(rows)
    segmented = run_sharded(segment, videos.values(), "videos")
    if not process_state().is_main_process:
        return None
    predictions = (
        (video_id, exp_id, frame_names, masks.numpy())
        for video_id, expressions in zip(videos, segmented)
        for exp_id, frame_names, masks in expressions
    )
    zip_path = write_ytvos_submission(predictions, output_dir)
    results = {"num_expressions": len(rows), "submission": str(Path(args.output_dir) / zip_path.name)}
    if all(mask_type != "none" for mask_type in rows["mask_type"]):
        root = Path(args.data_root)
        results.update(
            evaluate_ytvos_folder(
                output_dir,
                root / split / "Annotations",
                root / "meta_expressions" / split / "meta_expressions.json",
            )
        )
    return results


def evaluate_davis(segmenter: ReferringVideoSegmenter, args: EvaluateArguments, split: str) -> dict:
    """Ref-DAVIS17: probabilities of 36-frame clips, the four expression sets, DAVIS-2017 unsupervised J&F."""
    if not args.davis_root:
        raise UsageError("--dataset ref-davis17 needs --davis_root (the DAVIS-2017 folder with Annotations_unsupervised/).")
    videos = group_by_video(load_ref_davis17(args.data_root, split))

    def label_maps(video_rows):
        video_rows = sorted(video_rows, key=lambda row: int(row["exp_id"]))
        sentences = [row["expression"] for row in video_rows]
        results = segmenter(video_rows[0]["frames"], sentences, args.window or DAVIS_WINDOW, threshold=args.threshold)
        return CompressedArray(np.stack(ref_davis_label_maps([result.probabilities() for result in results])))

    segmented = run_sharded(label_maps, videos.values(), "videos")
    if not process_state().is_main_process:
        return None
    predictions = ((video_id, maps.numpy()) for video_id, maps in zip(videos, segmented))
    subset = "val" if split == "valid" else split
    scores = evaluate_ref_davis(args.davis_root, predictions, subset=subset, label_maps=True)
    return {"J&F": scores["J&F-Mean"], "J": scores["J-Mean"], "F": scores["F-Mean"], **scores}


A2D_GROUND_TRUTH = {
    "a2d-sentences": "a2d_sentences_test_annotations_in_coco_format.json",
    "jhmdb-sentences": "jhmdb_sentences_gt_annotations_in_coco_format.json",
}


def evaluate_a2d_like(segmenter: ReferringVideoSegmenter, args: EvaluateArguments, split: str) -> dict:
    """A2D-Sentences / JHMDB-Sentences: every query's mask on the annotated frame, P@K, IoUs and mask mAP."""
    ground_truth = Path(args.ground_truth or Path(args.data_root) / A2D_GROUND_TRUTH[args.dataset])
    if not ground_truth.is_file():
        raise FileNotFoundError(f"Ground-truth file not found: {ground_truth} (set --ground_truth).")
    if args.dataset == "a2d-sentences":
        rows = load_a2d_sentences(args.data_root, split)
    else:
        rows = load_jhmdb_sentences(args.data_root)

    def predict(index):
        ((image_id, masks, scores),) = predict_a2d(segmenter, rows, args.num_frames, args.threshold, indices=[index])
        return image_id, CompressedArray(masks), scores

    predictions = run_sharded(predict, range(len(rows)), "samples")
    if not process_state().is_main_process:
        return None
    return evaluate_a2d(ground_truth, ((image_id, masks.numpy(), scores) for image_id, masks, scores in predictions))


def format_table(results: dict) -> str:
    rows = [(key, f"{value:.4f}" if isinstance(value, float) else str(value)) for key, value in results.items()
            if isinstance(value, (int, float, str))]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def run_evaluate(model_args: ModelArguments, args: EvaluateArguments, model_name: str | None = None) -> dict:
    """Scores `--model` on the benchmark; results.json names the model `model_name` (default: `--model`)."""
    if not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"The dataset folder {args.data_root} does not exist.")
    inputs = (model_args.model, args.data_root, args.davis_root, args.ground_truth)
    check_output_target(args.output_dir, args.overwrite, inputs)
    segmenter = load_model(model_args)
    split = args.split or ("test" if args.dataset in A2D_GROUND_TRUTH else "valid")
    # Every process segments its share; the main one writes the outputs (staged, then moved into place).
    main_process = process_state().is_main_process
    with staged_output(args.output_dir, args.overwrite, inputs) if main_process else nullcontext() as staging:
        if args.dataset in ("synthetic", "ref-youtube-vos"):
            results = evaluate_ytvos_layout(segmenter, args, split, staging)
        elif args.dataset == "ref-davis17":
            results = evaluate_davis(segmenter, args, split)
        else:
            results = evaluate_a2d_like(segmenter, args, split)
        if not main_process:
            return None
        results = {"dataset": args.dataset, "split": split, "model": model_name or model_args.model, **results}
        (staging / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(format_table(results))
    return results


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------

# The original schedules (epochs, learning-rate drops): fine-tuning a saved model / training a new one.
SCHEDULES = {
    "ref-youtube-vos": {"fine-tune": (6, [3, 5]), "new": (10, [6, 8])},
    "a2d-sentences": {"fine-tune": (6, [3, 5]), "new": (12, [8, 10])},
    "refcoco": {"fine-tune": (12, [8, 10]), "new": (12, [8, 10])},
    "joint": {"fine-tune": (12, [8, 10]), "new": (12, [8, 10])},
    "synthetic": {"fine-tune": (6, [3, 5]), "new": (10, [6, 8])},
}


class SeededClips(torch.utils.data.Dataset):
    """Training clips drawn from one or more row datasets, each with a train transform seeded by (seed, epoch,
    index): a clip's frames and augmentation do not depend on the process, the worker or earlier draws, so a resumed
    or multi-process run sees exactly the clips of an uninterrupted single-process one."""

    def __init__(self, parts, seed: int):
        self.parts = parts  # [(rows, transform factory taking `seed`)]
        self.seed = seed
        self.epoch = 0
        self.offsets = np.cumsum([0] + [len(rows) for rows, _ in parts])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        rows, make_transform = self.parts[part]
        row = index - int(self.offsets[part])
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        sample = make_transform(seed=seed)(rows[row : row + 1])
        return {key: values[0] for key, values in sample.items()}


def synthetic_frame_height(rows) -> int:
    with Image.open(rows[0]["frames"][0]) as image:
        return image.height


def build_train_dataset(args: TrainDataArguments, tokenizer, seed: int) -> tuple[SeededClips, dict]:
    """The training clips and the data settings actually used (for the model card)."""
    video_frames = args.num_frames or 5
    settings = {"num_frames": video_frames}
    if args.dataset == "refcoco":
        settings["num_frames"] = args.num_frames or 1
    parts = []
    if args.dataset in ("synthetic", "ref-youtube-vos", "joint"):
        rows = load_ref_youtube_vos(args.data_root, args.split)
        if args.dataset != "synthetic":
            rows = expand_clip_starts(rows, video_frames)
        synthetic = args.dataset == "synthetic"
        settings.update(
            train_sizes=args.train_sizes or ([synthetic_frame_height(rows)] if synthetic else None),
            crop_prob=args.crop_prob if args.crop_prob is not None else (0.0 if synthetic else 0.5),
            photometric=args.photometric if args.photometric is not None else not synthetic,
        )
        parts.append((rows, video_transform_factory(args, settings, video_frames, tokenizer)))
    if args.dataset == "a2d-sentences":
        rows = load_a2d_sentences(args.data_root, args.split)
        settings.update(train_sizes=args.train_sizes, crop_prob=args.crop_prob, photometric=args.photometric)
        parts.append((rows, video_transform_factory(args, settings, video_frames, tokenizer)))
    if args.dataset in ("refcoco", "joint"):
        root = args.data_root if args.dataset == "refcoco" else args.refcoco_root
        for name in args.refcoco_datasets:
            rows = load_refcoco(root, name, "train")
            image_frames = settings["num_frames"]
            parts.append((rows, functools.partial(ReferringVideoTrainTransform.for_images, image_frames, tokenizer=tokenizer)))
    return SeededClips(parts, seed), settings


def video_transform_factory(args: TrainDataArguments, settings: dict, num_frames: int, tokenizer):
    options = {"max_size": args.max_size, "tokenizer": tokenizer}
    if settings.get("train_sizes"):
        options["scales"] = settings["train_sizes"]
    if settings.get("crop_prob") is not None:
        options["crop_prob"] = settings["crop_prob"]
    if settings.get("photometric") is not None:
        options["photometric"] = settings["photometric"]
    return functools.partial(ReferringVideoTrainTransform, num_frames, **options)


def new_model_and_processor(
    model_args: TrainModelArguments, data_args: TrainDataArguments, inference_size: int
):
    """A randomly initialized model and its processor from `--config_name`."""
    name = model_args.config_name
    if name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name) if model_args.tokenizer_name else build_shapes_tokenizer()
        config = tiny_config(len(tokenizer), tokenizer.model_max_length)
    else:
        if name == "resnet50":
            config = ReferFormerConfig()
        elif Path(name).is_file():
            config = ReferFormerConfig.from_json_file(name)
        else:
            raise UsageError(f"Unknown --config_name {name!r}: use {', '.join(CONFIG_PRESETS)} or a JSON config file.")
        tokenizer_name = model_args.tokenizer_name or DEFAULT_TOKENIZERS.get(name)
        if tokenizer_name is None:
            raise UsageError("A new model from a JSON config needs --tokenizer_name.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if data_args.dataset == "refcoco":
        config.freeze_text_encoder = False  # the original pretraining trains the text encoder
    video_processor = ReferFormerVideoProcessor(size={"shortest_edge": inference_size, "longest_edge": data_args.max_size})
    return ReferFormerForReferringVideoObjectSegmentation(config), ReferFormerProcessor(video_processor, tokenizer)


def schedule_steps(args: RunTrainingArguments, dataset_size: int, num_processes: int, schedule) -> RunTrainingArguments:
    """`max_steps` and `lr_drop_steps` from the epochs (or kept as given)."""
    clips_per_step = args.per_device_batch_size * num_processes * args.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(dataset_size / clips_per_step))
    epochs, drops = schedule
    if args.num_train_epochs is not None:
        epochs = args.num_train_epochs
    if args.lr_drop_epochs is not None:
        drops = args.lr_drop_epochs
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(epochs * steps_per_epoch)
    lr_drop_steps = args.lr_drop_steps or [epoch * steps_per_epoch for epoch in drops]
    return dataclasses.replace(args, max_steps=max_steps, lr_drop_steps=lr_drop_steps)


def model_card(name: str, data_args: TrainDataArguments, model_args: TrainModelArguments, args, settings, results) -> str:
    """A README.md for the trained model: data, recipe and evaluation results."""
    datasets = {
        "synthetic": "synthetic referring shapes (`referformer.data_synthetic.generate_referring_shapes`)",
        "ref-youtube-vos": "Ref-YouTube-VOS",
        "a2d-sentences": "A2D-Sentences",
        "refcoco": "+".join(data_args.refcoco_datasets) + " (images as one-frame clips)",
        "joint": "Ref-YouTube-VOS + " + "+".join(data_args.refcoco_datasets)
        + " (each image repeated as a static clip; the original's random-affine pseudo-clips are not reproduced)",
    }
    if model_args.init_from:
        start = f"fine-tuned from `{model_args.init_from}`"
    else:
        start = f"new model (`--config_name {model_args.config_name}`)"
    recipe = {
        "start": start,
        "clips per step and process": args.per_device_batch_size * args.gradient_accumulation_steps,
        "optimizer steps": args.max_steps,
        "learning rates (default / backbone / text encoder)": (
            f"{args.learning_rate} / {args.backbone_learning_rate} / {args.text_encoder_learning_rate}"
        ),
        "learning-rate drops (x0.1) after steps": args.lr_drop_steps or "none",
        "weight decay / gradient clipping": f"{args.weight_decay} / {args.max_grad_norm}",
        "mixed precision": args.mixed_precision,
        **{key.replace("_", " "): value for key, value in settings.items()},
    }
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: mask-generation",
        "tags: [referformer, referring-video-object-segmentation, video-segmentation]",
        "---",
        "",
        f"# {name}",
        "",
        "A [ReferFormer](https://arxiv.org/abs/2201.00487) referring video object segmentation model trained with",
        "`scripts/run_rvos.py train`.",
        "",
        "## Training data",
        "",
        f"{datasets[data_args.dataset]}, split `{data_args.split}` of `{data_args.data_root}`.",
        "",
        "## Training recipe",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in recipe.items()],
        "",
        "The complete options are in `training_args.json` (`python scripts/run_rvos.py train training_args.json`).",
        "",
        "## Evaluation results",
        "",
    ]
    if results:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {value:.4f} |" for key, value in results.items() if isinstance(value, float)]
        lines += ["", f"On split `{data_args.eval_split}` of `{data_args.data_root}`."]
    else:
        lines.append("Not evaluated after training (see `run_rvos.py evaluate`).")
    lines += ["", *usage_section(name, "the red circle")]
    return "\n".join(lines)


def push_folder_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    import huggingface_hub

    api = huggingface_hub.HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message="Upload ReferFormer trained with run_rvos.py",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", MANIFEST_NAME],
    )
    return getattr(commit, "commit_url", repo_id)


def run_train(model_args: TrainModelArguments, data_args: TrainDataArguments, args: RunTrainingArguments):
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    output_dir = Path(args.output_dir)
    inputs = (model_args.init_from, data_args.data_root, data_args.refcoco_root)
    if args.resume_from_checkpoint:
        check_training_checkpoint(args.resume_from_checkpoint)
    overwrite = args.overwrite or bool(args.resume_from_checkpoint)
    check_output_target(output_dir, overwrite, inputs, "--overwrite (or --resume_from_checkpoint)", ALL_ENTRIES)
    if model_args.init_from:
        check_referformer_source(model_args.init_from, "--init_from model")
    if not Path(data_args.data_root).is_dir():
        raise FileNotFoundError(f"The dataset folder {data_args.data_root} does not exist.")
    if data_args.eval_split and data_args.dataset not in ("synthetic", "ref-youtube-vos"):
        raise UsageError("--eval_split is available for the synthetic and ref-youtube-vos datasets.")

    # After the checks: every process has checked before any writes. ACCELERATE_USE_CPU must reach this first state
    # (the Accelerator reuses it), or CPU processes launched together would each train alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.is_main_process and args.log_every:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
        logging.getLogger("referformer.training").setLevel(logging.INFO)
    set_seed(args.seed)
    if model_args.init_from:
        model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(model_args.init_from)
        processor = ReferFormerProcessor.from_pretrained(model_args.init_from)
        schedule = SCHEDULES[data_args.dataset]["fine-tune"]
    else:
        inference_size = data_args.inference_size
        if inference_size is None:
            probe = load_ref_youtube_vos(data_args.data_root, data_args.split) if data_args.dataset == "synthetic" else None
            inference_size = synthetic_frame_height(probe) if probe is not None else 360
        model, processor = new_model_and_processor(model_args, data_args, inference_size)
        schedule = SCHEDULES[data_args.dataset]["new"]
    if data_args.mask_interpolation:
        processor.video_processor.mask_interpolation = data_args.mask_interpolation
    dataset, settings = build_train_dataset(data_args, processor.tokenizer, args.seed)
    loop_args = schedule_steps(args, len(dataset), state.num_processes, schedule)
    collate = functools.partial(collate_clips, pad_token_id=processor.tokenizer.pad_token_id)
    model = train_with_accelerate(model, dataset, loop_args, collate, resume_from_checkpoint=args.resume_from_checkpoint)

    if not state.is_main_process:
        return model
    # The final model is staged and moved into --output_dir at the end (its checkpoints and logs stay).
    with staged_output(output_dir, overwrite=True, inputs=inputs, units=ALL_ENTRIES) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        options = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(args)}
        (staging / "training_args.json").write_text(json.dumps(options, indent=1), encoding="utf-8")
        results = {}
        if data_args.eval_split:
            eval_args = EvaluateArguments(
                dataset=data_args.dataset,
                data_root=data_args.data_root,
                output_dir=str(staging / f"eval-{data_args.eval_split}"),
                split=data_args.eval_split,
            )
            device = str(next(model.parameters()).device)
            results = run_evaluate(ModelArguments(model=str(staging), device=device), eval_args, str(output_dir))
        card = model_card(args.push_to_hub or output_dir.name, data_args, model_args, loop_args, settings, results)
        (staging / "README.md").write_text(card, encoding="utf-8")
    print(f"model, processor and model card saved in {output_dir}")
    if args.push_to_hub:
        print(f"pushed to {push_folder_to_hub(output_dir, args.push_to_hub, args.hub_private)}")
    return model


# ---------------------------------------------------------------------------------------------------
# generate and demo
# ---------------------------------------------------------------------------------------------------


def run_generate(args: GenerateArguments) -> dict:
    """Writes the split into a staging folder and moves it (frames, masks, meta_expressions) into place at the end."""
    units = [args.split, f"meta_expressions/{args.split}"]
    with staged_output(args.output_dir, overwrite=False, option=None, units=units) as staging:
        # the options are the generator's arguments
        metadata = generate_referring_shapes(**{**dataclasses.asdict(args), "output_dir": staging})
    count = sum(len(video["expressions"]) for video in metadata["videos"].values())
    print(f"{args.num_videos} clips, {count} expressions: {Path(args.output_dir) / args.split}")
    return metadata


def swap_expressions(meta_expressions: dict) -> dict:
    """Each clip gets the expression texts of the next clip (cyclically), keeping its own referred objects."""
    videos = meta_expressions["videos"]
    video_ids = list(videos)
    swapped = {}
    for index, video_id in enumerate(video_ids):
        texts = [expression["exp"] for expression in videos[video_ids[(index + 1) % len(video_ids)]]["expressions"].values()]
        expressions = {
            exp_id: {**expression, "exp": texts[position % len(texts)]}
            for position, (exp_id, expression) in enumerate(videos[video_id]["expressions"].items())
        }
        swapped[video_id] = {**videos[video_id], "expressions": expressions}
    return {"videos": swapped}


def segment_meta_expressions(segmenter, meta_expressions: dict, frames_root: Path, output_dir: Path, overlays: bool):
    """Masks (and with `overlays`, overlay GIFs and predictions.json) of every expression, in the Ref-YouTube-VOS
    prediction layout `<output_dir>/<video>/<exp_id>/<frame>.png`."""
    for video_id, video in tqdm(meta_expressions["videos"].items(), desc="clips"):
        frame_paths = [frames_root / video_id / f"{name}.jpg" for name in video["frames"]]
        exp_ids = list(video["expressions"])
        texts = [video["expressions"][exp_id]["exp"] for exp_id in exp_ids]
        results = segmenter(frame_paths, texts)
        if overlays:
            write_predictions(output_dir / video_id, iter_frames(frame_paths), results, video["frames"], "gif", 4.0, exp_ids)
        else:
            for exp_id, result in zip(exp_ids, results):
                write_palette_masks(result.masks, output_dir / video_id / exp_id, video["frames"], overwrite=True)


def run_demo(args: DemoArguments) -> dict:
    """Generates clips the model has not seen, segments every expression, and scores the masks (J&F) against the
    generator's; then gives each clip the expressions of another clip and scores again (the model must use the
    language: the second score has to be much lower)."""
    with staged_output(args.output_dir, args.overwrite, inputs=(args.model,)) as staging:
        results = write_demo(staging, args)
    print(format_table(results))
    print(f"overlays and masks: {Path(args.output_dir) / 'predictions'}/<clip>/")
    return results


def write_demo(output_dir: Path, args: DemoArguments) -> dict:
    """The demo's clips, predictions and results, written into `output_dir`."""
    segmenter = load_model(ModelArguments(model=args.model, device=args.device))
    size = segmenter.processor.video_processor.size  # the demo model's processor keeps its training frames' size
    clips = output_dir / "clips"
    generate_referring_shapes(
        clips,
        num_videos=args.num_videos,
        num_frames=DEMO_CLIP_FRAMES,
        height=size["shortest_edge"],
        width=size.get("longest_edge") or size["shortest_edge"],
        seed=args.seed,
        split="valid",
        expression_attributes=DEMO_EXPRESSION_ATTRIBUTES,
    )
    meta_expressions = json.loads((clips / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    swapped = swap_expressions(meta_expressions)
    (clips / "meta_expressions" / "valid" / "meta_expressions_swapped.json").write_text(json.dumps(swapped, indent=1))
    frames_root, annotations = clips / "valid" / "JPEGImages", clips / "valid" / "Annotations"
    segment_meta_expressions(segmenter, meta_expressions, frames_root, output_dir / "predictions", overlays=True)
    segment_meta_expressions(segmenter, swapped, frames_root, output_dir / "swapped_predictions", overlays=False)
    scores = evaluate_ytvos_folder(output_dir / "predictions", annotations, meta_expressions)
    swapped_scores = evaluate_ytvos_folder(output_dir / "swapped_predictions", annotations, swapped)
    results = {
        "model": args.model,
        "clips": args.num_videos,
        "seed": args.seed,
        "expressions": sum(len(video["expressions"]) for video in meta_expressions["videos"].values()),
        **scores,
        "J&F, expressions of another clip": swapped_scores["J&F"],
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


def run_serve(args: ServeArguments) -> None:
    check_referformer_source(args.model)
    try:
        from referformer.web_demo import build_demo
    except ImportError as error:
        raise UsageError(f"The web demo needs Gradio: pip install -e \".[demo]\" ({error}).") from error
    demo = build_demo(args.model, device=args.device, dtype=args.dtype, max_frames=args.max_frames)
    demo.queue().launch(server_name=args.host, server_port=args.port)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

COMMANDS = {
    "predict": ((ModelArguments, PredictArguments), run_predict, "segment the objects that sentences describe in a video"),
    "evaluate": ((ModelArguments, EvaluateArguments), run_evaluate, "score a model on a benchmark or a synthetic folder"),
    "train": (
        (TrainModelArguments, TrainDataArguments, RunTrainingArguments),
        run_train,
        "train or fine-tune with Accelerate (use `accelerate launch` for several processes)",
    ),
    "generate": ((GenerateArguments,), run_generate, "write a synthetic referring-shapes dataset"),
    "demo": ((DemoArguments,), run_demo, "segment fresh synthetic clips with the embedded demo model, print J&F"),
    "serve": ((ServeArguments,), run_serve, "web demo (Gradio): upload a video, type sentences, see the masks"),
}


def usage() -> str:
    commands = "\n".join(f"  {name:<9} {description}" for name, (_, _, description) in COMMANDS.items())
    return f"{__doc__}\ncommands:\n{commands}\n"


def parse(command: str, argv: list[str]):
    dataclass_types, _, description = COMMANDS[command]
    parser = HfArgumentParser(dataclass_types, prog=f"run_rvos.py {command}", description=description)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    command, options = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"run_rvos.py: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see --help).")
    try:
        arguments = parse(command, options)
        return COMMANDS[command][1](*arguments)
    except (ValueError, OSError, FloatingPointError) as error:  # bad options, inputs or files: one line, no traceback
        sys.exit(f"run_rvos.py {command}: error: {error}")


if __name__ == "__main__":
    main()
