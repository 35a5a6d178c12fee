#!/usr/bin/env python
"""Referring video object segmentation with ReferFormer: predict, evaluate, train, generate data and demo.

    python scripts/run_rvos.py demo                              # the embedded demo model on fresh synthetic clips
    python scripts/run_rvos.py predict --model MODEL --videos dog.mp4 --text "a brown dog" --output_dir out
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
import pickle
import re
import signal
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import HfArgumentParser, PretrainedConfig

from referformer import (
    ReferFormerConfig,
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerProcessor,
)
from referformer.cli_presets import CONFIG_PRESETS, error_line
from referformer.conversion import first_non_finite_weight
from referformer.data_synthetic import ATTRIBUTES, generate_referring_shapes
from referformer.data_transforms import collate_clips
from referformer.evaluation_protocols import BENCHMARKS, default_split, end_process_group, evaluate_benchmark, process_state, run_sharded
from referformer.inference import BACKENDS, DTYPES, PredictionWriter, ReferringVideoSegmenter, write_predictions
from referformer.model_cards import trained_model_card
from referformer.output_folders import ALL_ENTRIES, check_output_target, push_folder_to_hub, staged_output
from referformer.video_io import iter_video_frames, list_frame_files, natural_sort_key, video_frame_names
from referformer.training import AccelerateTrainingArguments, check_training_checkpoint, train_with_accelerate
from referformer.training_recipe import (
    REFCOCO_DATASETS,
    SCHEDULES,
    TRAIN_DATASETS,
    build_train_dataset,
    default_inference_size,
    new_model_and_processor,
    schedule_steps,
)
from referformer.shapes_demo import DEMO_CLIP_FRAMES, DEMO_EXPRESSION_ATTRIBUTES, write_demo


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
DEMO_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "referformer-tiny-shapes"
INTEGER_OPTION_LIMIT = 2**31 - 1
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
STREAM_WINDOW = 36  # frames per window of `predict --stream` unless --window says otherwise


class UsageError(ValueError):
    """A bad option or input, reported to the user as one line (no traceback)."""


# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


# Every option is checked when it is parsed (in the `__post_init__` of its dataclass), before anything is written.


def _check_choice(value, choices, option: str) -> None:
    if value not in choices:
        raise UsageError(f"Unknown {option} {value!r}; choose one of: {', '.join(choices)}.")


def _check_number(value, option: str, minimum=None, maximum=None, open_interval: bool = False, integer: bool = False) -> None:
    """`value` must be finite and within [minimum, maximum] ((minimum, maximum) with `open_interval`), and an integer
    with `integer` (an option file may give 2.5 where the command line would refuse it)."""
    if value is None:
        return
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"{option} must be an integer, got {value!r}.")
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


def dtype_field():
    """The `--dtype` option of the commands that run a model."""
    return field(
        default="fp32",
        metadata={"help": "Inference precision (int8: CPU, dynamic int8 of the per-pixel layers; auto: the fastest here)."},
    )


@dataclass
class ModelArguments:
    """Which model to run, and where."""

    model: str = field(
        metadata={"help": "A ReferFormer model saved with save_pretrained (model + processor): local folder or Hub id."}
    )
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."})
    dtype: Literal["fp32", "bf16", "fp16", "int8", "auto"] = dtype_field()
    backend: Literal["pytorch", "openvino"] = field(
        default="pytorch",
        metadata={"help": "What runs the model: pytorch, or openvino (CPU, fp32/bf16: the exported graph in OpenVINO, "
                  "exported once per frame size; give long videos a --window)."},
    )

    def __post_init__(self):
        _check_choice(self.dtype, (*DTYPES, "auto"), "--dtype")
        _check_choice(self.backend, BACKENDS, "--backend")
        _check_device(self.device)


@dataclass
class PredictArguments:
    """A video and sentences in; masks, overlays and boxes out."""

    videos: str = field(
        metadata={
            "help": "Video file (any format PyAV decodes), folder of frame images, or a folder of such videos (split "
            "across the processes of `accelerate launch`)."
        }
    )
    text: list[str] = field(
        metadata={
            "help": "One or more referring expressions, each quoted, all applied to every video: --text 'the red car' "
            "'the dog'."
        }
    )
    output_dir: str = field(
        metadata={"help": "Writes <output_dir>/<video>/<exp>/<frame>.png masks, overlay_<exp>.gif and predictions.json."}
    )
    window: int | None = field(
        default=None,
        metadata={
            "help": "Unset: one query over the whole video (the Ref-YouTube-VOS protocol). N: independent windows of N "
            "frames, each with its own query (the Ref-DAVIS17 protocol: 36). With --stream: frames per window (36)."
        },
    )
    stream: bool = field(
        default=False,
        metadata={
            "help": "Stream the video in windows of --window frames sharing --overlap frames, the referred object kept "
            "across windows; masks and overlays are written as frames become final, in memory bounded by the window. "
            "An online (OnlineRefer) model always streams, frame by frame."
        },
    )
    overlap: int = field(default=8, metadata={"help": "With --stream: frames shared by consecutive windows."})
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
            _check_number(getattr(self, option), f"--{option}", minimum=1, integer=True)
        _check_number(self.overlap, "--overlap", minimum=0, integer=True)
        if self.stream:
            self.window = self.window or STREAM_WINDOW
            if self.overlap >= self.window:
                raise UsageError(f"--overlap ({self.overlap}) must be smaller than --window ({self.window}).")
        _check_number(self.threshold, "--threshold", 0, 1, open_interval=True)
        _check_number(self.fps, "--fps", 0, 1000, open_interval=True)


@dataclass
class EvaluateArguments:
    """A benchmark (or a synthetic folder) in; scores, and the Ref-YouTube-VOS submission, out."""

    dataset: str = field(metadata={"help": f"One of: {', '.join(BENCHMARKS)}."})
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
        _check_choice(self.dataset, BENCHMARKS, "--dataset")
        _check_number(self.window, "--window", minimum=1)
        _check_number(self.num_frames, "--num_frames", minimum=1)
        _check_number(self.threshold, "--threshold", 0, 1, open_interval=True)
        if self.dataset == "ref-davis17" and not self.davis_root:
            raise UsageError("--dataset ref-davis17 needs --davis_root (the DAVIS-2017 folder with Annotations_unsupervised/).")


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
        if self.config_name is not None and self.config_name not in CONFIG_PRESETS:
            if not Path(self.config_name).is_file():
                raise UsageError(
                    f"Unknown --config_name {self.config_name!r}: use {', '.join(CONFIG_PRESETS)} or a JSON config file."
                )
            if self.tokenizer_name is None:
                raise UsageError("A new model from a JSON config needs --tokenizer_name.")


@dataclass
class TrainDataArguments:
    """Training data and augmentation."""

    dataset: str = field(metadata={"help": f"One of: {', '.join(TRAIN_DATASETS)} (joint = Ref-YouTube-VOS + RefCOCO)."})
    data_root: str = field(
        metadata={"help": "Dataset folder (for refcoco: the COCO folder with train2014/ and refcoco*/ annotations)."}
    )
    refcoco_root: str | None = field(default=None, metadata={"help": "joint: the COCO folder of the RefCOCO data."})
    refcoco_datasets: list[str] = field(
        default_factory=lambda: list(REFCOCO_DATASETS),
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
        default=None,
        metadata={
            "help": "Continue exactly from a checkpoint-<step> folder of --output_dir, with the options the run "
            "recorded in its training_args.json (the model, data, optimization and schedule options must not change)."
        },
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
    dtype: Literal["fp32", "bf16", "fp16", "int8", "auto"] = dtype_field()
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier demo's results (never other files)."})

    def __post_init__(self):
        _check_choice(self.dtype, (*DTYPES, "auto"), "--dtype")
        _check_device(self.device)
        if self.num_videos < 2:
            raise UsageError(
                f"--num_videos must be at least 2 (the language check swaps expressions between clips), got "
                f"{self.num_videos}."
            )


@dataclass
class ServeArguments:
    """A web page where one uploads a video, types sentences and gets the overlay video, the masks and the scores."""

    model: list[str] | None = field(
        default=None,
        metadata={
            "help": "The model folders the page offers, by folder name (default: the embedded demo model); each is "
            "checked and loaded at start-up: --model DIR [--model DIR ...].",
            "action": "extend",
        },
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', ..."})
    dtype: Literal["fp32", "bf16", "fp16", "int8", "auto"] = dtype_field()
    max_frames: int = field(default=300, metadata={"help": "Longest video accepted, in frames."})

    def __post_init__(self):
        self.model = self.model or [str(DEMO_MODEL)]
        _check_choice(self.dtype, (*DTYPES, "auto"), "--dtype")
        _check_device(self.device)
        _check_number(self.max_frames, "--max_frames", minimum=1, integer=True)
        names = [Path(model).name for model in self.model]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise UsageError(f"Two --model folders have the name {duplicate!r}: the page names models by folder name.")


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


def check_finite_model(model, name: str, what: str = "model") -> None:
    """Refuses a model whose weights hold a NaN or an infinity (its masks would be empty and its scores NaN)."""
    bad = first_non_finite_weight(model.state_dict())
    if bad is not None:
        raise UsageError(f"The {what} {name} holds NaN or infinite weights (first: {bad}); use a model with finite weights.")


@contextmanager
def reading_weights(name: str, what: str = "model"):
    """Turns the errors of an empty, truncated or damaged weights file of a model folder into one line naming it."""
    try:
        yield
    except (SafetensorError, EOFError, pickle.UnpicklingError, RuntimeError) as error:
        raise UsageError(f"Cannot load the {what} {name}: a weights file is empty or damaged ({error_line(error)}).") from error


def load_model(args: ModelArguments) -> ReferringVideoSegmenter:
    """The model and processor of `args.model`, on `--device`, in `--dtype`; its weights must be finite."""
    check_referformer_source(args.model)
    # Each process its own GPU; OpenVINO runs on the CPU.
    device = process_state().device if args.device == "auto" and args.backend == "pytorch" else args.device
    with reading_weights(args.model):
        segmenter = ReferringVideoSegmenter.from_pretrained(args.model, device=device, dtype=args.dtype, backend=args.backend)
    check_finite_model(segmenter.model, args.model)
    return segmenter


# ---------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------


def check_video_source(video: str) -> None:
    """Fails clearly unless `video` is an existing regular file or folder (a FIFO or device would block reading)."""
    path = Path(video)
    if not path.exists():
        raise FileNotFoundError(f"The video {video} does not exist.")
    if not (path.is_file() or path.is_dir()):
        raise UsageError(f"The video {video} is neither a regular file nor a folder of frames.")


def list_videos(path: Path) -> list[Path]:
    """The videos of `--videos`: a video file, a folder of frames, or a folder of video files and frame folders."""
    check_video_source(path)
    if path.is_file() or list_frame_files(path):
        return [path]
    videos = [
        child for child in path.iterdir()
        if (child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS) or (child.is_dir() and list_frame_files(child))
    ]
    if not videos:
        raise UsageError(f"{path} holds no frame image, video file ({', '.join(VIDEO_EXTENSIONS)}) or frame folder.")
    return sorted(videos, key=lambda video: natural_sort_key(video.name))


def video_output_name(video: Path) -> str:
    """The name of a video's result folder: the file name without its extension, or the frame folder's name."""
    name = video.stem if video.is_file() else video.resolve().name
    if name in ("", ".", ".."):
        raise UsageError(f"The video {video} gives no usable name for its result folder ({name!r}): rename it.")
    return name


def stream_predictions(segmenter, video: Path, output_dir: Path, args: PredictArguments, video_name: str) -> int:
    """`predict --stream`: writes each frame's masks and overlays as soon as the stream yields it; returns the number
    of frames."""
    file_names = None if video.is_file() else video_frame_names(video, range(len(list_frame_files(video))))
    outputs = segmenter.stream(
        video, args.text, window=args.window, overlap=args.overlap, frame_stride=args.frame_stride,
        max_frames=args.max_frames, threshold=args.threshold, keep_frames=True,
    )
    with PredictionWriter(output_dir, args.text, overlay_format=args.overlay_format, fps=args.fps, video_name=video_name) as writer:
        for output in outputs:
            writer.write(file_names[output.frame_index] if file_names else f"{output.frame_index:05d}", output)
    return len(writer.frame_names)


def run_predict(model_args: ModelArguments, args: PredictArguments) -> list[Path] | None:
    check_referformer_source(model_args.model)
    videos = list_videos(Path(args.videos))
    video_dirs = [Path(args.output_dir) / video_output_name(video) for video in videos]
    if len(set(video_dirs)) != len(video_dirs):
        raise UsageError(f"Two videos of {args.videos} have the same name (without extension).")
    for video, video_dir in zip(videos, video_dirs):
        check_output_target(video_dir, args.overwrite, inputs=(video, model_args.model))
    segmenter = load_model(model_args)

    def predict(video_and_folder):
        video, video_dir = video_and_folder
        with staged_output(video_dir, args.overwrite, inputs=(video, model_args.model)) as staging:
            if args.stream or segmenter.online:  # an online (OnlineRefer) model streams frame by frame
                return stream_predictions(segmenter, video, staging, args, video_dir.name)
            results = segmenter(video, args.text, args.window, args.frame_stride, args.max_frames, args.threshold, progress=True)
            frame_names = video_frame_names(video, results[0].frame_indices)
            frames = iter_video_frames(video, args.frame_stride, args.max_frames)
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
    split = args.split or default_split(args.dataset)
    # Every process segments its share; the main one writes the outputs (staged, then moved into place).
    main_process = process_state().is_main_process
    with staged_output(args.output_dir, args.overwrite, inputs) if main_process else nullcontext() as staging:
        results = evaluate_benchmark(
            segmenter, args.dataset, args.data_root, staging, split, args.window, args.num_frames, args.threshold,
            args.davis_root, args.ground_truth,
        )
        if not main_process:
            return None
        if "submission" in results:  # where it will be once the staged folder is in place
            results["submission"] = str(Path(args.output_dir) / Path(results["submission"]).name)
        results = {"dataset": args.dataset, "split": split, "model": model_name or model_args.model, **results}
        (staging / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False), encoding="utf-8")
    print(format_table(results))
    return results


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------

TRAINING_ARGS_FILE = "training_args.json"
# The options that define a training run (its model, data, optimization and schedule): a resumed run must have the
# ones its first run recorded in training_args.json. The others (output, checkpoints, logging, workers, gradient
# checkpointing, the evaluation after training, publishing) may change between the runs.
RUN_OPTIONS = (
    "init_from", "config_name", "tokenizer_name",
    "dataset", "data_root", "refcoco_root", "refcoco_datasets", "split", "num_frames", "train_sizes", "max_size",
    "crop_prob", "photometric", "inference_size", "mask_interpolation",
    "max_steps", "num_train_epochs", "lr_drop_epochs", "lr_drop_steps", "per_device_batch_size",
    "gradient_accumulation_steps", "learning_rate", "backbone_learning_rate", "text_encoder_learning_rate",
    "linear_projection_multiplier", "weight_decay", "max_grad_norm", "mixed_precision", "seed", "shuffle",
)
CHECKPOINT_FOLDER = re.compile(r"checkpoint-\d+")


def training_options(model_args: TrainModelArguments, data_args: TrainDataArguments, args: RunTrainingArguments) -> dict:
    """Every `train` option, as training_args.json records them (JSON values)."""
    options = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(args)}
    return json.loads(json.dumps(options, allow_nan=False))


def check_resumable(output_dir: Path, checkpoint: str, options: dict, overwrite: bool) -> None:
    """A resumed run continues its own run: the checkpoint is a `checkpoint-<step>` folder of `--output_dir`, whose
    training_args.json records the same `RUN_OPTIONS` (each difference is named, old -> new). Without --overwrite,
    the folder may hold nothing but the run's checkpoints and what this project published into it."""
    check_training_checkpoint(checkpoint)
    if Path(checkpoint).resolve().parent != output_dir.resolve() or not CHECKPOINT_FOLDER.fullmatch(Path(checkpoint).name):
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint} is not a checkpoint-<step> folder of --output_dir {output_dir}: a "
            "run resumes into its own folder."
        )
    recorded_file = output_dir / TRAINING_ARGS_FILE
    try:
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(
            f"Cannot read the options of the run to resume from {recorded_file} ({error_line(error)}); every run "
            "writes them when it starts."
        ) from error
    if not isinstance(recorded, dict):
        raise UsageError(f"{recorded_file} does not hold the options of a run (a JSON object).")
    changed = [
        f"--{name} {json.dumps(recorded.get(name))} -> {json.dumps(options[name])}"
        for name in RUN_OPTIONS if recorded.get(name) != options[name]
    ]
    if changed:
        raise UsageError(
            f"The resumed run must have the options of the run in {output_dir}; these differ: {'; '.join(changed)}. "
            "Give the recorded values, or start a new run in another --output_dir."
        )
    if not overwrite:
        entries = [child.name for child in output_dir.iterdir() if not CHECKPOINT_FOLDER.fullmatch(child.name)]
        check_output_target(output_dir, True, (), "--resume_from_checkpoint", entries)


def run_train(model_args: TrainModelArguments, data_args: TrainDataArguments, args: RunTrainingArguments):
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    output_dir = Path(args.output_dir)
    inputs = (model_args.init_from, data_args.data_root, data_args.refcoco_root)
    options = training_options(model_args, data_args, args)
    if args.resume_from_checkpoint:
        check_resumable(output_dir, args.resume_from_checkpoint, options, args.overwrite)
    overwrite = args.overwrite or bool(args.resume_from_checkpoint)
    check_output_target(output_dir, overwrite, inputs, "--overwrite", ALL_ENTRIES)
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
        with reading_weights(model_args.init_from, "--init_from model"):
            model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(model_args.init_from)
        check_finite_model(model, model_args.init_from, "--init_from model")
        processor = ReferFormerProcessor.from_pretrained(model_args.init_from)
    else:
        inference_size = data_args.inference_size or default_inference_size(data_args.dataset, data_args.data_root, data_args.split)
        model, processor = new_model_and_processor(
            model_args.config_name, data_args.dataset, inference_size, data_args.max_size, model_args.tokenizer_name,
        )
    if data_args.mask_interpolation:
        processor.video_processor.mask_interpolation = data_args.mask_interpolation
    dataset, settings = build_train_dataset(
        data_args.dataset, data_args.data_root, processor.tokenizer, args.seed, data_args.split, data_args.num_frames,
        data_args.max_size, data_args.train_sizes, data_args.crop_prob, data_args.photometric, data_args.refcoco_root,
        data_args.refcoco_datasets,
    )
    schedule = SCHEDULES[data_args.dataset]["fine-tune" if model_args.init_from else "new"]
    loop_args = schedule_steps(
        args, len(dataset), state.num_processes, schedule, args.num_train_epochs, args.lr_drop_epochs
    )
    collate = functools.partial(collate_clips, pad_token_id=processor.tokenizer.pad_token_id)
    if state.is_main_process and not args.resume_from_checkpoint:  # the run's options, recorded before it starts
        with staged_output(output_dir, overwrite=True, inputs=inputs, units=ALL_ENTRIES) as staging:
            (staging / TRAINING_ARGS_FILE).write_text(json.dumps(options, indent=1, allow_nan=False), encoding="utf-8")
    model = train_with_accelerate(model, dataset, loop_args, collate, resume_from_checkpoint=args.resume_from_checkpoint)

    if not state.is_main_process:
        return model
    # The final model is staged and moved into --output_dir at the end (its checkpoints and logs stay).
    with staged_output(output_dir, overwrite=True, inputs=inputs, units=ALL_ENTRIES) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
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
        card = trained_model_card(
            args.push_to_hub or output_dir.name, data_args.dataset, data_args.data_root, data_args.split, loop_args,
            settings, model_args.init_from, model_args.config_name, data_args.refcoco_datasets, results,
            data_args.eval_split,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
    print(f"model, processor and model card saved in {output_dir}")
    if args.push_to_hub:
        commit = push_folder_to_hub(output_dir, args.push_to_hub, "Upload ReferFormer trained with run_rvos.py", args.hub_private)
        print(f"pushed to {commit}")
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


def run_demo(args: DemoArguments) -> dict:
    """Generates clips the model has not seen, segments every expression, and scores the masks (J&F) against the
    generator's; then gives each clip the expressions of another clip and scores again (the model must use the
    language: the second score has to be much lower)."""
    segmenter = load_model(ModelArguments(model=args.model, device=args.device, dtype=args.dtype))
    with staged_output(args.output_dir, args.overwrite, inputs=(args.model,)) as staging:
        results = write_demo(segmenter, staging, args.num_videos, args.seed, model_name=args.model)
    print(format_table(results))
    print(f"overlays and masks: {Path(args.output_dir) / 'predictions'}/<clip>/")
    return results


def run_serve(args: ServeArguments) -> None:
    """Loads the operator's models (each checked as `predict` checks it), then serves the page until interrupted or
    terminated; the request results' temporary folder is deleted at exit."""
    try:
        from referformer.web_demo import ResultFolders, WebDemo, build_demo
    except ImportError as error:
        raise UsageError(f"The web demo needs Gradio: pip install -e \".[demo]\" ({error}).") from error
    segmenters = {
        Path(model).name: load_model(ModelArguments(model=model, device=args.device, dtype=args.dtype))
        for model in args.model
    }
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # terminated: closes as on Ctrl-C, cleaning up
    results = ResultFolders()
    try:
        demo = build_demo(WebDemo(segmenters, args.max_frames, results))
        demo.queue().launch(server_name=args.host, server_port=args.port)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, whenever it arrives: a normal stop
        pass
    finally:
        results.close()


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


def _raise_usage_error(message: str):
    raise UsageError(message)


def check_integer_options(arguments) -> None:
    """Every integer option (and every integer of a list option) must fit in 32 bits: larger values overflow the
    libraries' C integers far from the option that caused it."""
    for group in arguments:
        for option in dataclasses.fields(group):
            value = getattr(group, option.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, int) and not isinstance(number, bool) and abs(number) > INTEGER_OPTION_LIMIT:
                    raise UsageError(
                        f"--{option.name} must be between {-INTEGER_OPTION_LIMIT} and {INTEGER_OPTION_LIMIT}, got {number}."
                    )


def parse(command: str, argv: list[str]):
    dataclass_types, _, description = COMMANDS[command]
    parser = HfArgumentParser(dataclass_types, prog=f"run_rvos.py {command}", description=description)
    parser.error = _raise_usage_error  # a bad option value is one line, like every other error
    if len(argv) == 1 and argv[0].endswith(".json"):
        arguments = parser.parse_json_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        arguments = parser.parse_yaml_file(argv[0])
    else:
        arguments = parser.parse_args_into_dataclasses(argv)
    check_integer_options(arguments)
    return arguments


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
        result = COMMANDS[command][1](*arguments)
    except (ValueError, OSError, FloatingPointError, StrictDataclassError) as error:  # bad options, inputs, files
        sys.exit(f"run_rvos.py {command}: error: {error_line(error)}")
    end_process_group()
    return result


if __name__ == "__main__":
    main()
