"""The training recipe of `scripts/run_rvos.py train`: which clips a dataset gives and how they are augmented, the
original's schedules in epochs turned into optimizer steps, and a new model with its processor from a preset.

    model, processor = new_model_and_processor("tiny", "synthetic", inference_size=96, max_size=144)
    dataset, settings = build_train_dataset("synthetic", "shapes", processor.tokenizer, seed=0)
    args = schedule_steps(AccelerateTrainingArguments("run", max_steps=-1), len(dataset), 1, SCHEDULES["synthetic"]["new"])
    train_with_accelerate(model, dataset, args)

Every clip is drawn by [`SeededClips`], whose augmentation depends only on (seed, epoch, clip index): a resumed or
multi-process run sees exactly the clips of an uninterrupted single-process one.
"""

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from .cli_presets import CONFIG_PRESETS, DEFAULT_TOKENIZERS, build_shapes_tokenizer, tiny_config
from .configuration_referformer import ReferFormerConfig
from .data import (
    ReferringVideoTrainTransform,
    expand_clip_starts,
    load_a2d_sentences,
    load_ref_youtube_vos,
    load_refcoco,
    load_video_frames,
)
from .modeling_referformer import ReferFormerForReferringVideoObjectSegmentation
from .processing_referformer import ReferFormerProcessor, ReferFormerVideoProcessor


__all__ = [
    "REFCOCO_DATASETS",
    "SCHEDULES",
    "TRAIN_DATASETS",
    "SeededClips",
    "build_train_dataset",
    "default_inference_size",
    "new_model_and_processor",
    "schedule_steps",
    "synthetic_frame_height",
]

TRAIN_DATASETS = ("synthetic", "ref-youtube-vos", "a2d-sentences", "refcoco", "joint")
REFCOCO_DATASETS = ("refcoco", "refcoco+", "refcocog")
# The original schedules (epochs, epochs after which the learning rates drop): fine-tuning a saved model / training a
# new one.
SCHEDULES = {
    "ref-youtube-vos": {"fine-tune": (6, [3, 5]), "new": (10, [6, 8])},
    "a2d-sentences": {"fine-tune": (6, [3, 5]), "new": (12, [8, 10])},
    "refcoco": {"fine-tune": (12, [8, 10]), "new": (12, [8, 10])},
    "joint": {"fine-tune": (12, [8, 10]), "new": (12, [8, 10])},
    "synthetic": {"fine-tune": (6, [3, 5]), "new": (10, [6, 8])},
}
DEFAULT_INFERENCE_SIZE = 360  # the original's inference resolution (shorter side)


class SeededClips(torch.utils.data.Dataset):
    """Training clips drawn from one or more row datasets, each with a train transform seeded by (seed, epoch,
    index): a clip's frames and augmentation do not depend on the process, the worker or earlier draws, so a resumed
    or multi-process run sees exactly the clips of an uninterrupted single-process one.

    Args:
        parts: `[(rows, make_transform)]`: a `referformer.data` table and a factory taking `seed=` that returns its
            train transform.
        seed: the run's seed.
    """

    def __init__(self, parts, seed: int):
        self.parts = parts
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
        return make_transform(seed=seed)(rows[row])


def synthetic_frame_height(rows) -> int:
    """Height of the first frame of a table's first row (the synthetic clips all have one size)."""
    return load_video_frames(rows[0], [0])[0].height


def default_inference_size(dataset: str, data_root, split: str = "train") -> int:
    """Shorter side a new model's processor resizes to: the frame height of synthetic data (trained without
    rescaling), else the original's 360."""
    if dataset == "synthetic":
        return synthetic_frame_height(load_ref_youtube_vos(data_root, split))
    return DEFAULT_INFERENCE_SIZE


def build_train_dataset(
    dataset: str,
    data_root,
    tokenizer,
    seed: int,
    split: str = "train",
    num_frames: int | None = None,
    max_size: int = 640,
    train_sizes: list[int] | None = None,
    crop_prob: float | None = None,
    photometric: bool | None = None,
    refcoco_root=None,
    refcoco_datasets=REFCOCO_DATASETS,
) -> tuple[SeededClips, dict]:
    """The training clips of `dataset` (one of `TRAIN_DATASETS`) and the data settings actually used (for the model
    card).

    Defaults follow the original: 5 frames per clip (1 for RefCOCO), shorter sides 288..512, random crops with
    probability 0.5 and photometric distortion; synthetic data keeps its frame height, is not cropped and keeps its
    colours (its expressions name them). `joint` is Ref-YouTube-VOS in `data_root` plus the `refcoco_datasets` of the
    COCO folder `refcoco_root`, each image a static clip.
    """
    if dataset not in TRAIN_DATASETS:
        raise ValueError(f"Unknown training dataset {dataset!r}; choose one of: {', '.join(TRAIN_DATASETS)}.")
    if dataset == "joint" and not refcoco_root:
        raise ValueError("Joint training needs the COCO folder of the RefCOCO data (`refcoco_root`).")
    video_frames = num_frames or 5
    settings = {"num_frames": (num_frames or 1) if dataset == "refcoco" else video_frames}
    parts = []
    if dataset in ("synthetic", "ref-youtube-vos", "joint"):
        rows = load_ref_youtube_vos(data_root, split)
        synthetic = dataset == "synthetic"
        if not synthetic:
            rows = expand_clip_starts(rows, video_frames)
        settings.update(
            train_sizes=train_sizes or ([synthetic_frame_height(rows)] if synthetic else None),
            crop_prob=crop_prob if crop_prob is not None else (0.0 if synthetic else 0.5),
            photometric=photometric if photometric is not None else not synthetic,
        )
        parts.append((rows, _video_transform_factory(video_frames, tokenizer, max_size, settings)))
    if dataset == "a2d-sentences":
        rows = load_a2d_sentences(data_root, split)
        settings.update(train_sizes=train_sizes, crop_prob=crop_prob, photometric=photometric)
        parts.append((rows, _video_transform_factory(video_frames, tokenizer, max_size, settings)))
    if dataset in ("refcoco", "joint"):
        root = data_root if dataset == "refcoco" else refcoco_root
        image_transform = functools.partial(ReferringVideoTrainTransform.for_images, settings["num_frames"], tokenizer=tokenizer)
        parts += [(load_refcoco(root, name, "train"), image_transform) for name in refcoco_datasets]
    return SeededClips(parts, seed), settings


def _video_transform_factory(num_frames: int, tokenizer, max_size: int, settings: dict):
    """The video train transform with the settings that are set (the others keep the transform's defaults)."""
    options = {"max_size": max_size, "tokenizer": tokenizer}
    if settings.get("train_sizes"):
        options["scales"] = settings["train_sizes"]
    for name in ("crop_prob", "photometric"):
        if settings.get(name) is not None:
            options[name] = settings[name]
    return functools.partial(ReferringVideoTrainTransform, num_frames, **options)


def new_model_and_processor(
    config_name: str,
    dataset: str,
    inference_size: int,
    max_size: int = 640,
    tokenizer_name: str | None = None,
):
    """A randomly initialized model and its processor.

    Args:
        config_name: a preset of `referformer.cli_presets.CONFIG_PRESETS` or the path of a `ReferFormerConfig` JSON
            file.
        dataset: the training dataset; RefCOCO pretraining trains the text encoder, as the original does.
        inference_size, max_size: shorter and longest side the processor resizes frames to.
        tokenizer_name: the tokenizer (local folder or Hub id); default the preset's (the `tiny` preset builds its
            word-level tokenizer locally). Required with a JSON config.
    """
    if config_name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name) if tokenizer_name else build_shapes_tokenizer()
        config = tiny_config(len(tokenizer), tokenizer.model_max_length)
    else:
        if config_name == "resnet50":
            config = ReferFormerConfig()
        elif Path(config_name).is_file():
            config = ReferFormerConfig.from_json_file(config_name)
        else:
            raise ValueError(f"Unknown config {config_name!r}: use {', '.join(CONFIG_PRESETS)} or a JSON config file.")
        tokenizer_name = tokenizer_name or DEFAULT_TOKENIZERS.get(config_name)
        if tokenizer_name is None:
            raise ValueError("A new model from a JSON config needs a tokenizer name.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if dataset == "refcoco":
        config.freeze_text_encoder = False
    video_processor = ReferFormerVideoProcessor(size={"shortest_edge": inference_size, "longest_edge": max_size})
    return ReferFormerForReferringVideoObjectSegmentation(config), ReferFormerProcessor(video_processor, tokenizer)


def schedule_steps(args, dataset_size: int, num_processes: int, schedule, num_train_epochs=None, lr_drop_epochs=None):
    """A copy of the `AccelerateTrainingArguments` `args` whose `max_steps` (unless positive) and `lr_drop_steps`
    (unless given) come from a schedule in epochs: `schedule` is `(epochs, lr_drop_epochs)` (one of `SCHEDULES`),
    overridden by `num_train_epochs` and `lr_drop_epochs` when these are not None. An epoch is `dataset_size` clips
    over `num_processes` processes."""
    clips_per_step = args.per_device_batch_size * num_processes * args.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(dataset_size / clips_per_step))
    epochs = schedule[0] if num_train_epochs is None else num_train_epochs
    drops = schedule[1] if lr_drop_epochs is None else lr_drop_epochs
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(epochs * steps_per_epoch)
    lr_drop_steps = args.lr_drop_steps or [epoch * steps_per_epoch for epoch in drops]
    return dataclasses.replace(args, max_steps=max_steps, lr_drop_steps=lr_drop_steps)
