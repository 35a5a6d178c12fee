"""Training utilities for ReferFormer: the original's optimizer parameter groups, a `Trainer` that uses them and a data
collator for clip-level samples.

The original trains with AdamW (lr 1e-4, backbone 5e-5, text encoder 1e-5, weight decay 5e-4 on every parameter),
clips gradients to a total norm of 0.1 and divides the learning rate by 10 at fixed epochs. With
[`ReferFormerTrainer`] the matching `TrainingArguments` are `learning_rate=1e-4, weight_decay=5e-4,
max_grad_norm=0.1` (the `TrainingArguments` defaults differ) and `eval_do_concat_batches=False`; the trainer always
uses `remove_unused_columns=False` (the collator needs the raw columns; the labels are a list of dicts). The step decay per epoch has no built-in `lr_scheduler_type`;
`"constant"` reproduces the learning rate before the first drop.
"""

import base64
import copy
import dataclasses
import functools
import json
import pickle
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from .cli_presets import error_line
from .loss_referformer import upsample_mask_logits
from .modeling_referformer import select_referred_query
from .pipeline_referformer import TASK as PIPELINE_TASK
from .data_transforms import collate_clips


logger = logging.get_logger(__name__)


BACKBONE_KEYWORD = ".backbone."
TEXT_ENCODER_KEYWORD = ".text_encoder."
LINEAR_PROJECTION_KEYWORDS = ("reference_points", "sampling_offsets")


def get_parameter_groups(
    model: nn.Module,
    learning_rate: float = 1e-4,
    backbone_learning_rate: float = 5e-5,
    text_encoder_learning_rate: float = 1e-5,
    linear_projection_multiplier: float = 1.0,
    weight_decay: float = 5e-4,
) -> list[dict]:
    """The original's four AdamW parameter groups, as dicts with `name`, `params`, `lr` and `weight_decay`.

    In this order: `"default"` (every other parameter, `learning_rate`), `"backbone"` (parameters under a module
    named `backbone`, `backbone_learning_rate`), `"text_encoder"` (under `text_encoder`, `text_encoder_learning_rate`)
    and `"linear_projection"` (names containing `reference_points` or `sampling_offsets`, `learning_rate *
    linear_projection_multiplier`). The backbone and text-encoder groups take precedence over the linear-projection
    one, so every trainable parameter is in exactly one group; frozen parameters are left out (a group may be empty,
    e.g. the text encoder when it is frozen). As in the original, the same weight decay applies to all parameters,
    biases and norms included.
    """
    groups = {
        "default": {"params": [], "lr": learning_rate},
        "backbone": {"params": [], "lr": backbone_learning_rate},
        "text_encoder": {"params": [], "lr": text_encoder_learning_rate},
        "linear_projection": {"params": [], "lr": learning_rate * linear_projection_multiplier},
    }
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        dotted_name = f".{name}"
        if BACKBONE_KEYWORD in dotted_name:
            group = "backbone"
        elif TEXT_ENCODER_KEYWORD in dotted_name:
            group = "text_encoder"
        elif any(keyword in name for keyword in LINEAR_PROJECTION_KEYWORDS):
            group = "linear_projection"
        else:
            group = "default"
        groups[group]["params"].append(parameter)
    return [{"name": name, **group, "weight_decay": weight_decay} for name, group in groups.items()]


class ReferFormerTrainer(Trainer):
    """A [`~transformers.Trainer`] whose optimizer uses the original ReferFormer parameter groups
    ([`get_parameter_groups`]).

    The default group takes `args.learning_rate`, every group `args.weight_decay`; the optimizer class and its other
    keyword arguments come from `args.optim` (default: torch AdamW with `adam_beta1/2`, `adam_epsilon`, which match
    the original). Gradient clipping is `args.max_grad_norm` (0.1 in the original). The learning-rate scheduler of
    `args.lr_scheduler_type` scales every group by the same factor, so the ratios between groups are preserved.

    Args:
        backbone_learning_rate (`float`, defaults to 5e-5):
            Learning rate of the visual backbone.
        text_encoder_learning_rate (`float`, defaults to 1e-5):
            Learning rate of the text encoder (irrelevant when it is frozen).
        linear_projection_multiplier (`float`, defaults to 1.0):
            Learning-rate multiplier of the deformable-attention `sampling_offsets` and `reference_points` layers.
        model, args, **kwargs:
            Passed to [`~transformers.Trainer`]. `args` defaults to `TrainingArguments` with
            `remove_unused_columns=False`; given arguments asking to remove columns are copied with it set to False
            (with a warning), since the ReferFormer collators read dataset columns that the model does not take.
            `data_collator` defaults to [`collate_clips`] (padding text with the pad id of `processing_class`, a
            processor or tokenizer, when given).

    The library's own loop, with its seeding, schedules and exact resumption, is [`train_with_accelerate`] (what
    `scripts/run_rvos.py train` runs); this class only brings the ReferFormer optimizer groups and data defaults to
    `Trainer` users.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        backbone_learning_rate: float = 5e-5,
        text_encoder_learning_rate: float = 1e-5,
        linear_projection_multiplier: float = 1.0,
        **kwargs,
    ):
        if args is None:
            args = TrainingArguments(output_dir="trainer_output", remove_unused_columns=False)
        elif args.remove_unused_columns:
            logger.warning(
                "ReferFormerTrainer keeps the dataset columns the model does not take (the collator needs them): "
                "using remove_unused_columns=False."
            )
            args = copy.copy(args)
            args.remove_unused_columns = False
        if kwargs.get("data_collator") is None:
            processing_class = kwargs.get("processing_class")
            pad_token_id = getattr(getattr(processing_class, "tokenizer", processing_class), "pad_token_id", None)
            kwargs["data_collator"] = (
                collate_clips if pad_token_id is None else functools.partial(collate_clips, pad_token_id=pad_token_id)
            )
        super().__init__(model=model, args=args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate
        self.text_encoder_learning_rate = text_encoder_learning_rate
        self.linear_projection_multiplier = linear_projection_multiplier

    def create_model_card(self, dataset=None, tags=None, **kwargs) -> None:
        """`Trainer.create_model_card`, with what transformers cannot infer for ReferFormer: the benchmarks trained and
        evaluated on (the rows' `dataset` column, e.g. "ref-youtube-vos") as `dataset` when not given, the
        `referring-video-object-segmentation` tag, and two fixes to its text: a model built from a config is "trained
        from scratch" (transformers reads the empty `_name_or_path` as a base model's name) and the metric keeps its
        name J&F (transformers capitalizes each word of a metric's name: "J&f")."""
        if dataset is None:
            names = set()
            for rows in (self.train_dataset, self.eval_dataset):
                if rows is not None and "dataset" in (getattr(rows, "column_names", None) or ()):
                    names.update(rows.unique("dataset"))
            dataset = sorted(names) or None
        kwargs.setdefault("dataset_tags", dataset)
        kwargs.setdefault("dataset_args", None if dataset is None else [None] * len(_listed(dataset)))
        tags = [*_listed(tags), PIPELINE_TASK]
        super().create_model_card(dataset=dataset, tags=tags, **kwargs)
        card_path = Path(self.args.output_dir) / "README.md"
        card = card_path.read_text(encoding="utf-8")
        card = card.replace("This model is a fine-tuned version of [](https://huggingface.co/) on", "This model was trained from scratch on")
        card_path.write_text(card.replace("J&f", "J&F"), encoding="utf-8")

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Builds the optimizer on the four ReferFormer parameter groups (unless one was passed to the trainer)."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            parameter_groups = get_parameter_groups(
                opt_model,
                learning_rate=self.args.learning_rate,
                backbone_learning_rate=self.backbone_learning_rate,
                text_encoder_learning_rate=self.text_encoder_learning_rate,
                linear_projection_multiplier=self.linear_projection_multiplier,
                weight_decay=self.args.weight_decay,
            )
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            unsupported = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
            if unsupported:
                raise ValueError(
                    f"The optimizer `{self.args.optim}` builds its own parameter groups, which ReferFormerTrainer "
                    "cannot combine with the ReferFormer learning-rate groups; use an AdamW variant."
                )
            self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer


def _listed(value) -> list:
    """None -> [], a string -> [it], a list -> itself."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


class ReferringSegmentationMetrics:
    """`compute_metrics` for [`~transformers.Trainer`] evaluation, used with `batch_eval_metrics=True` (masks are scored
    batch by batch, never accumulated): J (region similarity), F (contour accuracy) and J&F of the query selected by
    the paper's rule, against the label masks, averaged over the frames of a clip and then over clips.

    The predicted stride-4 mask logits are upsampled 4x (bilinear), thresholded at `threshold` and cropped to the
    unpadded size (`labels["resized_size"]` when present). Needs the model outputs in the order `logits, pred_boxes,
    pred_masks, ...` (what `Trainer` passes, the config's `keys_to_ignore_at_inference` removing the others).
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self._region, self._contour = [], []

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict | None:
        from .evaluation import contour_accuracy, region_similarity

        logits, _, pred_masks = (torch.as_tensor(array) for array in eval_prediction.predictions[:3])
        queries = select_referred_query(logits)
        for index, labels in enumerate(eval_prediction.label_ids):
            ground_truth = torch.as_tensor(labels["masks"]).bool()
            size = labels.get("resized_size", labels.get("size", ground_truth.shape[-2:]))  # "size": the older name
            height, width = (int(v) for v in size)
            mask_logits = upsample_mask_logits(pred_masks[index, :, queries[index]].float(), (height, width))
            predicted = (mask_logits.sigmoid() > self.threshold).cpu().numpy()
            ground_truth = ground_truth[:, :height, :width].cpu().numpy()
            self._region.append(float(region_similarity(ground_truth, predicted).mean()))
            self._contour.append(float(contour_accuracy(ground_truth, predicted).mean()))
        if not compute_result:
            return None
        region, contour = float(np.mean(self._region)), float(np.mean(self._contour))
        self._region, self._contour = [], []
        return {"J": region, "F": contour, "J&F": (region + contour) / 2}


@dataclass
class AccelerateTrainingArguments:
    """Options of [`train_with_accelerate`] (also the `train` options of `scripts/run_rvos.py`)."""

    output_dir: str = field(metadata={"help": "Folder for checkpoints (checkpoint-<step>/) and logs."})
    max_steps: int = field(default=1000, metadata={"help": "Number of optimizer steps to train for."})
    per_device_batch_size: int = field(default=1, metadata={"help": "Clips per process and forward pass."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the transformer and heads."})
    backbone_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the visual backbone."})
    text_encoder_learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the text encoder (unused while it is frozen)."}
    )
    linear_projection_multiplier: float = field(
        default=1.0, metadata={"help": "Learning-rate factor of the sampling-offset and reference-point layers."}
    )
    weight_decay: float = field(default=5e-4, metadata={"help": "AdamW weight decay (all parameters)."})
    max_grad_norm: float = field(default=0.1, metadata={"help": "Gradient clipping (total norm); 0 disables it."})
    lr_drop_steps: list[int] = field(
        default_factory=list, metadata={"help": "Steps after which the learning rates are divided by 10."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimizer step."})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16'."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    checkpoint_every: int = field(default=0, metadata={"help": "Save a resumable checkpoint every N steps (0: never)."})
    log_every: int = field(default=10, metadata={"help": "Log losses, learning rates and throughput every N steps."})
    seed: int = field(default=42, metadata={"help": "Seed of the initialization and of the data order."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle the clips (a new seeded order every epoch)."})
    num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    report_to: str | None = field(default=None, metadata={"help": "Accelerate tracker for the logs, e.g. 'tensorboard'."})


TRAINING_STATE_FILE = "training_state.json"
MODEL_STATE_FILE = "model.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.pt"


class CheckpointError(ValueError):
    """A folder that is not a training checkpoint this code wrote; nothing in it was executed or loaded."""


@dataclass
class TrainingState:
    """What `training_state.json` holds: the step, the position in the data, Accelerate's step counter, the scheduler
    (as JSON), the loss scaler and every process's random generators."""

    step: int
    epoch: int
    batches_in_epoch: int
    accelerator_step: int
    scheduler: dict
    scaler: dict | None
    rng: list[dict]


class NonFiniteTrainingError(FloatingPointError):
    """The loss or the weights became NaN or infinite; training stopped before saving them."""


def train_with_accelerate(
    model,
    train_dataset,
    args: AccelerateTrainingArguments,
    collate_fn=None,
    resume_from_checkpoint: str | None = None,
    accelerator=None,
):
    """Trains `model` on `train_dataset` (clip samples, batched by `collate_fn`, default [`collate_clips`]) with
    Accelerate: one or many processes (CPU or GPU), mixed precision, gradient accumulation and checkpointing.

    `resume_from_checkpoint` (a `checkpoint-<step>` folder) restores model, optimizer, scheduler and random states and
    continues with the same step counter and data order as an uninterrupted run. Returns the unwrapped model.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if accelerator is None:
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=args.report_to,
            project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=args.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
    set_seed(args.seed)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    dataloader = DataLoader(
        train_dataset,
        batch_size=args.per_device_batch_size,
        shuffle=args.shuffle,
        collate_fn=collate_fn or collate_clips,
        num_workers=args.num_workers,
    )
    optimizer = torch.optim.AdamW(
        get_parameter_groups(
            model,
            args.learning_rate,
            args.backbone_learning_rate,
            args.text_encoder_learning_rate,
            args.linear_projection_multiplier,
            args.weight_decay,
        )
    )
    # Stepped once per optimizer step by hand: a prepared scheduler would step once per process.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_drop_steps), gamma=0.1)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    if args.report_to:
        accelerator.init_trackers("referformer", config={k: v for k, v in vars(args).items() if k != "lr_drop_steps"})

    step, epoch, batches_done = 0, 0, 0
    if resume_from_checkpoint:
        step, epoch, batches_done = load_training_checkpoint(
            accelerator, resume_from_checkpoint, model, optimizer, scheduler
        )
        accelerator.print(f"resumed from {resume_from_checkpoint} at step {step}")

    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    window_start, window_clips = time.perf_counter(), 0
    while step < args.max_steps:
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, batches_done) if batches_done else dataloader
        for batch in batches:
            batches_done += 1
            with accelerator.accumulate(model):
                outputs = model(**batch)
                check_finite(accelerator, step + 1, torch.isfinite(outputs.loss.detach()), "the loss", outputs.loss_dict)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    weights_finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
                    check_finite(accelerator, step + 1, weights_finite, "the weights")
            window_clips += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            progress.update(1)
            if args.log_every and (step % args.log_every == 0 or step == args.max_steps):
                logs = {key: accelerator.reduce(value.detach(), "mean").item() for key, value in outputs.loss_dict.items()}
                logs["loss"] = accelerator.reduce(outputs.loss.detach(), "mean").item()
                logs.update({f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups})
                logs["clips_per_second"] = window_clips / (time.perf_counter() - window_start)
                window_start, window_clips = time.perf_counter(), 0
                progress.set_postfix(loss=f"{logs['loss']:.3f}")
                accelerator.log(logs, step=step)
                logger.info(f"step {step}: " + ", ".join(f"{key}={value:.4g}" for key, value in logs.items()))
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                save_training_checkpoint(
                    accelerator, Path(args.output_dir) / f"checkpoint-{step}", model, optimizer, scheduler,
                    step, epoch, batches_done,
                )
            if step >= args.max_steps:
                break
        else:
            epoch, batches_done = epoch + 1, 0
    progress.close()
    accelerator.end_training()
    return accelerator.unwrap_model(model)


def check_finite(accelerator, step: int, finite: torch.Tensor, what: str, loss_terms: dict | None = None) -> None:
    """Raises [`NonFiniteTrainingError`] on every process when `finite` (a boolean tensor: the loss or the weights
    are finite) is false on any of them."""
    broken = (~finite.all()).float().reshape(1)
    if accelerator.num_processes > 1:
        broken = accelerator.reduce(broken, "max")
    if bool(broken[0] > 0):
        terms = ""
        if loss_terms:  # the final layer's terms (the auxiliary ones end in _<layer>)
            values = [f"{key}={float(value.detach()):.4g}" for key, value in loss_terms.items() if not key[-1].isdigit()]
            terms = f" ({', '.join(values)})"
        raise NonFiniteTrainingError(
            f"Step {step}: {what} became NaN or infinite{terms}; training stopped and nothing was saved for this "
            "step. Lower the learning rates or check the labels (masks must be binary)."
        )


def _rng_state() -> dict:
    """This process's random generators as JSON values (no pickles)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "cuda": [base64.b64encode(state.numpy().tobytes()).decode() for state in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(text) for text in state["cuda"]])


def _scheduler_state(scheduler) -> dict:
    state = dict(scheduler.state_dict())
    state["milestones"] = sorted(state["milestones"].items())  # a Counter: stored as [milestone, count] pairs
    return state


def save_training_checkpoint(
    accelerator, folder: Path, model, optimizer, scheduler, step: int, epoch: int, batches_in_epoch: int
) -> None:
    """Writes a resumable checkpoint without pickles of Python objects: the weights (`model.safetensors`), the
    optimizer state (`optimizer.pt`, tensors and numbers only, read back with `weights_only=True`) and a JSON file
    with the step, the position in the data, the scheduler, the loss scaler and every process's random generators.
    The folder appears complete or not at all."""
    from accelerate.utils import gather_object
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    from .output_folders import staged_output

    rng_states = gather_object([_rng_state()])
    if accelerator.is_main_process:
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = TrainingState(
            step, epoch, batches_in_epoch, accelerator.step, _scheduler_state(scheduler), scaler, rng_states
        )
        try:
            with staged_output(folder, overwrite=True) as staging:
                save_model(accelerator.unwrap_model(model), str(staging / MODEL_STATE_FILE))
                torch.save(optimizer.state_dict(), staging / OPTIMIZER_STATE_FILE)
                (staging / TRAINING_STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), allow_nan=False))
        except (OSError, SafetensorError, RuntimeError) as error:  # e.g. a full disk; nothing was published
            raise OSError(f"Cannot write the checkpoint {folder}: {error_line(error)}") from error
    accelerator.wait_for_everyone()


def check_training_checkpoint(folder) -> None:
    """Raises a [`CheckpointError`] unless `folder` holds exactly the files [`save_training_checkpoint`] writes."""
    from .output_folders import MANIFEST_NAME

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"The checkpoint {folder} does not exist or is not a folder.")
    expected = {MODEL_STATE_FILE, OPTIMIZER_STATE_FILE, TRAINING_STATE_FILE}
    present = {child.name for child in folder.iterdir()} - {MANIFEST_NAME}
    if present != expected:
        problems = [f"unexpected {', '.join(sorted(present - expected))}"] if present - expected else []
        problems += [f"missing {', '.join(sorted(expected - present))}"] if expected - present else []
        raise CheckpointError(
            f"{folder} is not a training checkpoint written by this code ({'; '.join(problems)}); refusing to load "
            f"it (only {', '.join(sorted(expected))} are read, never pickles)."
        )


def _read_training_state(path: Path) -> TrainingState:
    """The [`TrainingState`] of `path`; a [`CheckpointError`] when the file is not one (damaged, edited, truncated)."""
    try:
        state = TrainingState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid training state ({error_line(error)}).") from error
    counters = (state.step, state.epoch, state.batches_in_epoch, state.accelerator_step)
    well_typed = (
        all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in counters)
        and isinstance(state.scheduler, dict)
        and (state.scaler is None or isinstance(state.scaler, dict))
        and isinstance(state.rng, list)
        and all(isinstance(rng, dict) for rng in state.rng)
    )
    if not well_typed:
        raise CheckpointError(f"{path} is not a valid training state (a field has the wrong type).")
    return state


def _scheduler_from_json(values: dict, reference: dict) -> dict:
    """The scheduler state [`_scheduler_state`] stored, with its Python types restored after `reference` (the
    scheduler's own state); raises `ValueError`, `TypeError` or `KeyError` when `values` is not such a state."""
    if values.keys() != reference.keys():
        raise ValueError(f"scheduler fields {sorted(values)} instead of {sorted(reference)}")
    state = {}
    for key, value in values.items():
        if key == "milestones":
            state[key] = Counter({int(step): int(count) for step, count in value})
        elif isinstance(reference[key], list):
            state[key] = [float(item) for item in value]
        else:
            state[key] = type(reference[key])(value)
    return state


def load_training_checkpoint(accelerator, folder, model, optimizer, scheduler) -> tuple[int, int, int]:
    """Restores what [`save_training_checkpoint`] wrote and returns `(step, epoch, batches_in_epoch)`.

    Only the three files it writes are read, none of them can run code (safetensors, a `weights_only` tensor file,
    JSON); a folder holding anything else (e.g. Accelerate's pickles), or a file that does not hold what this code
    wrote, is refused with a [`CheckpointError`].
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    folder = Path(folder)
    check_training_checkpoint(folder)
    state = _read_training_state(folder / TRAINING_STATE_FILE)
    if len(state.rng) != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {len(state.rng)} process(es); resume it with as many (got "
            f"{accelerator.num_processes})."
        )
    try:
        load_model(accelerator.unwrap_model(model), str(folder / MODEL_STATE_FILE), strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise CheckpointError(f"{folder / MODEL_STATE_FILE} does not hold this model's weights: {error}") from error
    try:
        optimizer_state = torch.load(folder / OPTIMIZER_STATE_FILE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"{folder / OPTIMIZER_STATE_FILE} holds more than tensors and numbers (or is damaged); refusing to load "
            f"it: {error_line(error)}"
        ) from error
    try:
        optimizer.load_state_dict(optimizer_state)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
        raise CheckpointError(
            f"{folder / OPTIMIZER_STATE_FILE} does not hold this optimizer's state ({error_line(error)})."
        ) from error
    try:
        scheduler.load_state_dict(_scheduler_from_json(state.scheduler, _scheduler_state(scheduler)))
        if state.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state.scaler)
        _set_rng_state(state.rng[accelerator.process_index])
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise CheckpointError(
            f"{folder / TRAINING_STATE_FILE} is not a valid training state ({error_line(error)})."
        ) from error
    accelerator.step = state.accelerator_step
    return state.step, state.epoch, state.batches_in_epoch


__all__ = [
    "AccelerateTrainingArguments",
    "CheckpointError",
    "NonFiniteTrainingError",
    "ReferFormerTrainer",
    "ReferringSegmentationMetrics",
    "check_training_checkpoint",
    "get_parameter_groups",
    "load_training_checkpoint",
    "save_training_checkpoint",
    "train_with_accelerate",
]
