"""Optimizer parameter groups, ReferFormerTrainer, the clip collator and the training recipe."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from helpers import randomize_weights, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor, ReferFormerVideoProcessor
from referformer.cli_presets import build_shapes_tokenizer
from referformer.loss_referformer import ReferFormerLoss
from referformer.data_transforms import collate_clips
from referformer.training import AccelerateTrainingArguments, ReferFormerTrainer, get_parameter_groups
from referformer.training_recipe import SCHEDULES, SeededClips, schedule_steps


GROUP_NAMES = ["default", "backbone", "text_encoder", "linear_projection"]


def build_model(**overrides):
    torch.manual_seed(0)
    return ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**overrides))


def expected_group(name):
    if name.startswith("model.backbone."):
        return "backbone"
    if name.startswith("model.text_encoder."):
        return "text_encoder"
    if "reference_points" in name or "sampling_offsets" in name:
        return "linear_projection"
    return "default"


# ----------------------------------------------------------------------------- parameter groups


@pytest.mark.parametrize("freeze_text_encoder", [True, False])
def test_parameter_groups_partition_the_trainable_parameters(freeze_text_encoder):
    model = build_model(freeze_text_encoder=freeze_text_encoder)
    groups = get_parameter_groups(
        model,
        learning_rate=1e-4,
        backbone_learning_rate=5e-5,
        text_encoder_learning_rate=1e-5,
        linear_projection_multiplier=0.1,
        weight_decay=5e-4,
    )
    assert [group["name"] for group in groups] == GROUP_NAMES
    assert [group["lr"] for group in groups] == pytest.approx([1e-4, 5e-5, 1e-5, 1e-5])
    assert all(group["weight_decay"] == 5e-4 for group in groups)

    group_of = {}
    for group in groups:
        for parameter in group["params"]:
            assert id(parameter) not in group_of, "a parameter is in two groups"
            group_of[id(parameter)] = group["name"]
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert len(group_of) == len(trainable)
    for name, parameter in trainable.items():
        assert group_of[id(parameter)] == expected_group(name), name

    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    assert any(name.startswith("model.backbone.") for name in frozen)  # stem and first stage
    assert (len(groups[2]["params"]) == 0) == freeze_text_encoder
    assert len(groups[1]["params"]) > 0 and len(groups[3]["params"]) == 8
    assert all(not name.startswith("model.text_encoder.") for name in trainable) == freeze_text_encoder

    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=5e-4)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-4, 5e-5, 1e-5, 1e-5])


def test_parameter_groups_of_the_base_model_and_defaults():
    model = build_model().model  # ReferFormerModel: names start with "backbone.", "text_encoder."
    groups = {group["name"]: group for group in get_parameter_groups(model)}
    backbone = {id(p) for name, p in model.named_parameters() if name.startswith("backbone.") and p.requires_grad}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    assert groups["default"]["lr"] == 1e-4 and groups["backbone"]["lr"] == 5e-5
    assert groups["text_encoder"]["lr"] == 1e-5 and groups["linear_projection"]["lr"] == 1e-4
    assert all(group["weight_decay"] == 5e-4 for group in groups.values())


def test_trainer_creates_optimizer_with_the_groups(tmp_path):
    model = build_model()
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=2e-4, weight_decay=1e-4, use_cpu=True, report_to="none"
    )
    trainer = ReferFormerTrainer(
        model=model,
        args=args,
        backbone_learning_rate=3e-5,
        text_encoder_learning_rate=0.0,
        linear_projection_multiplier=0.5,
    )
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["name"] for group in optimizer.param_groups] == GROUP_NAMES
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([2e-4, 3e-5, 0.0, 1e-4])
    assert all(group["weight_decay"] == 1e-4 for group in optimizer.param_groups)
    expected = get_parameter_groups(model, 2e-4, 3e-5, 0.0, 0.5, 1e-4)
    for created, reference in zip(optimizer.param_groups, expected):
        assert [id(p) for p in created["params"]] == [id(p) for p in reference["params"]]
    assert trainer.create_optimizer() is optimizer


def test_trainer_keeps_the_columns_the_collator_needs(tmp_path, caplog):
    import datasets

    dataset = datasets.Dataset.from_dict({"video_id": ["a", "b"], "expression": ["the red circle", "the blue square"]})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.remove_unused_columns  # the transformers default, which drops every column here
    with caplog.at_level(logging.WARNING, logger="referformer.training"):
        trainer = ReferFormerTrainer(model=build_model(), args=args)
    assert "remove_unused_columns=False" in caplog.text
    assert args.remove_unused_columns and not trainer.args.remove_unused_columns  # the caller's arguments untouched
    assert trainer._remove_unused_columns(dataset).column_names == ["video_id", "expression"]
    default_trainer = ReferFormerTrainer(model=build_model())
    assert not default_trainer.args.remove_unused_columns


def test_trainer_collates_clips_by_default_with_the_tokenizer_pad_id(tmp_path):
    samples = [make_sample(2, 40, 50, 5, seed=0), make_sample(2, 40, 50, 3, seed=1)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert ReferFormerTrainer(model=build_model(), args=args).data_collator is collate_clips
    tokenizer = build_shapes_tokenizer()
    tokenizer.pad_token_id = 7  # not RoBERTa's 1, which collate_clips assumes without a tokenizer
    for processing_class in (tokenizer, ReferFormerProcessor(ReferFormerVideoProcessor(), tokenizer)):
        trainer = ReferFormerTrainer(model=build_model(), args=args, processing_class=processing_class)
        batch = trainer.data_collator(samples)
        assert batch["input_ids"][1, 3:].tolist() == [7, 7]
        assert torch.equal(batch["pixel_values"], collate_clips(samples)["pixel_values"])


def test_trainer_rejects_optimizers_with_their_own_groups(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ReferFormerTrainer(
        model=build_model(), args=args, optimizer_cls_and_kwargs=(torch.optim.SGD, {"params": [], "lr": 0.1})
    )
    with pytest.raises(ValueError, match="builds its own parameter groups"):
        trainer.create_optimizer()


# ----------------------------------------------------------------------------- collator


def make_sample(num_frames, height, width, text_length, seed, with_labels=True, with_attention_mask=True):
    generator = torch.Generator().manual_seed(seed)
    sample = {
        "pixel_values": torch.randn(num_frames, 3, height, width, generator=generator),
        "input_ids": torch.randint(3, 50, (text_length,), generator=generator),
    }
    if with_attention_mask:
        sample["attention_mask"] = torch.ones(text_length, dtype=torch.long)
    if with_labels:
        masks = torch.rand(num_frames, height, width, generator=generator) > 0.5
        sample["labels"] = {
            "masks": masks,
            "boxes": torch.rand(num_frames, 4, generator=generator),
            "valid": torch.ones(num_frames, dtype=torch.int32),
            "class_labels": torch.zeros(num_frames, dtype=torch.long),
            "resized_size": torch.tensor([height, width]),
        }
    return sample


def test_collate_clips_pads_frames_masks_and_text():
    samples = [make_sample(2, 40, 50, 5, seed=0), make_sample(2, 64, 70, 7, seed=1, with_attention_mask=False)]
    batch = collate_clips(samples)
    assert set(batch) == {"pixel_values", "pixel_mask", "input_ids", "attention_mask", "labels"}
    assert batch["pixel_values"].shape == (2, 2, 3, 64, 96)
    assert batch["pixel_mask"].shape == (2, 2, 64, 96) and batch["pixel_mask"].dtype == torch.long
    for index, sample in enumerate(samples):
        height, width = sample["pixel_values"].shape[-2:]
        torch.testing.assert_close(batch["pixel_values"][index, :, :, :height, :width], sample["pixel_values"])
        assert batch["pixel_values"][index, :, :, height:].abs().sum() == 0
        assert batch["pixel_values"][index, :, :, :, width:].abs().sum() == 0
        assert batch["pixel_mask"][index, :, :height, :width].eq(1).all()
        assert batch["pixel_mask"][index].sum() == 2 * height * width

        labels = batch["labels"][index]
        assert labels["masks"].shape == (2, 64, 96) and labels["masks"].dtype == torch.bool
        assert torch.equal(labels["masks"][:, :height, :width], sample["labels"]["masks"])
        assert not labels["masks"][:, height:].any() and not labels["masks"][:, :, width:].any()
        for key in ("boxes", "valid", "class_labels", "resized_size"):
            assert torch.equal(labels[key], sample["labels"][key])

    assert batch["input_ids"].shape == (2, 7) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][0, :5], samples[0]["input_ids"])
    assert batch["input_ids"][0, 5:].tolist() == [1, 1]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0, 0], [1] * 7]


def test_collate_clips_without_labels_and_padding_options():
    samples = [
        make_sample(3, 33, 40, 4, seed=0, with_labels=False),
        make_sample(3, 20, 64, 4, seed=1, with_labels=False),
    ]
    batch = collate_clips(samples, pad_to_multiple_of=None, pad_token_id=0)
    assert "labels" not in batch
    assert batch["pixel_values"].shape == (2, 3, 3, 33, 64)
    assert batch["pixel_mask"][1, :, :20, :].eq(1).all() and batch["pixel_mask"][1, :, 20:].eq(0).all()
    assert collate_clips(samples)["pixel_values"].shape == (2, 3, 3, 64, 64)


def test_collated_labels_feed_the_loss():
    samples = [make_sample(2, 40, 50, 5, seed=0), make_sample(2, 64, 70, 7, seed=1)]
    batch = collate_clips(samples)
    height, width = batch["pixel_values"].shape[-2:]
    predictions = {
        "logits": torch.randn(2, 2, 3, 1),
        "pred_boxes": torch.rand(2, 2, 3, 4),
        "pred_masks": torch.randn(2, 2, 3, height // 4, width // 4),
    }
    loss, _, _ = ReferFormerLoss(unit_test_config())(**predictions, labels=batch["labels"])
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s[1].update(pixel_values=torch.randn(3, 3, 64, 70)), "same number of frames"),
        (lambda s: s[0]["labels"].update(masks=torch.zeros(3, 40, 50, dtype=torch.bool)), r"labels\['masks'\]"),
        (lambda s: s[0]["labels"].update(boxes=torch.zeros(1, 4)), r"labels\['boxes'\]"),
        (lambda s: s[1]["labels"].update(valid=torch.ones(5)), r"labels\['valid'\]"),
        (lambda s: s[0]["labels"].update(masks=torch.zeros(2, 64, 70, dtype=torch.bool)), "unpadded frame size"),
        (lambda s: s[0].update(pixel_values=torch.randn(2, 1, 40, 50)), r"\(frames, 3, height, width\)"),
        (lambda s: s[0].update(attention_mask=torch.ones(3)), "different shapes"),
        (lambda s: s[1].pop("labels"), "every sample or none"),
    ],
)
def test_collate_clips_errors(edit, message):
    samples = [make_sample(2, 40, 50, 5, seed=0), make_sample(2, 64, 70, 7, seed=1)]
    edit(samples)
    with pytest.raises(ValueError, match=message):
        collate_clips(samples)


# ----------------------------------------------------------------------------- one Trainer step


def test_trainer_step_with_collated_clips(tmp_path):
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()))
    dataset = [make_sample(2, 40, 50, 5, seed=0), make_sample(2, 64, 60, 6, seed=1)]
    for sample in dataset:
        sample["labels"]["boxes"] = torch.tensor([[0.5, 0.5, 0.4, 0.4]] * 2)
        sample["input_ids"][0], sample["input_ids"][-1] = 0, 2
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-4,
        weight_decay=5e-4,
        max_grad_norm=0.1,
        remove_unused_columns=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
    )
    trainer = ReferFormerTrainer(model=model, args=args, train_dataset=dataset)  # collate_clips by default
    head_before = model.class_embed[-1].weight.detach().clone()
    frozen_before = model.model.text_encoder.embeddings.word_embeddings.weight.detach().clone()
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert [group["name"] for group in trainer.optimizer.param_groups] == GROUP_NAMES
    assert not torch.equal(model.class_embed[-1].weight, head_before)
    assert torch.equal(model.model.text_encoder.embeddings.word_embeddings.weight, frozen_before)


def test_collate_annotated_frame_clips():
    """A2D/JHMDB samples: labels of the annotated frame only, collated with `valid_frame_indices`."""
    samples = [make_sample(3, 40, 50, 5, seed=0), make_sample(3, 40, 50, 5, seed=1)]
    for sample, frame in zip(samples, (2, 0)):
        sample["labels"] = {key: value[frame : frame + 1] for key, value in sample["labels"].items() if key != "resized_size"}
        sample["valid_frame_index"] = frame
    batch = collate_clips(samples)
    assert batch["valid_frame_indices"].tolist() == [2, 0]
    assert batch["labels"][0]["masks"].shape == (1, 64, 64)
    samples[1] = make_sample(3, 40, 50, 5, seed=1)  # a regular clip with labels for every frame
    with pytest.raises(ValueError, match="valid_frame_index"):
        collate_clips(samples)


def test_schedule_steps_turns_epochs_into_optimizer_steps():
    args = AccelerateTrainingArguments("run", max_steps=-1, per_device_batch_size=2, gradient_accumulation_steps=2)
    # 2 clips x 2 processes x 2 accumulated passes = 8 clips per step: 10 clips are 2 steps per epoch.
    scheduled = schedule_steps(args, 10, 2, SCHEDULES["ref-youtube-vos"]["new"])
    assert (scheduled.max_steps, scheduled.lr_drop_steps) == (20, [12, 16])
    overridden = schedule_steps(args, 10, 2, SCHEDULES["ref-youtube-vos"]["new"], num_train_epochs=1.5, lr_drop_epochs=[])
    assert (overridden.max_steps, overridden.lr_drop_steps) == (3, [])
    kept = schedule_steps(dataclasses.replace(args, max_steps=7, lr_drop_steps=[5]), 10, 2, (10, [6, 8]))
    assert (kept.max_steps, kept.lr_drop_steps) == (7, [5])


def test_seeded_clips_draw_from_seed_epoch_and_index_only():
    def transform_factory(seed):
        return lambda row: {"seed": seed, "row": row}

    clips = SeededClips([(["a", "b"], transform_factory), (["c"], transform_factory)], seed=3)
    expected = [int(np.random.SeedSequence([3, 0, index]).generate_state(1)[0]) for index in range(3)]
    assert len(clips) == 3
    assert [clips[index]["row"] for index in (2, 0, 1)] == ["c", "a", "b"]
    assert [clips[index]["seed"] for index in range(3)] == expected
    clips.set_epoch(1)
    assert clips[0]["seed"] == int(np.random.SeedSequence([3, 1, 0]).generate_state(1)[0]) != expected[0]


def test_referring_segmentation_metrics_values():
    from transformers import EvalPrediction

    from referformer.training import ReferringSegmentationMetrics

    # One frame, two queries on a 2x2 stride-4 grid (masks 8x8 after the 4x bilinear up-sampling). A logit of 10 in
    # cell (0, 0) and -10 elsewhere gives that cell's 4x4 pixels but the corner (3, 3): along one axis the half-pixel
    # interpolation stays positive up to pixel 3 (weight 0.625 on 10), at the corner it is 10 * 0.625^2 - 10 * (1 -
    # 0.625^2) < 0.
    cell = torch.full((2, 2), -10.0)
    cell[0, 0] = 10.0
    empty = torch.full((2, 2), -10.0)
    logits = torch.tensor([[[[-3.0], [2.0]]], [[[1.0], [-1.0]]]])  # clip 0 selects query 1, clip 1 query 0
    pred_masks = torch.stack([torch.stack([empty, cell])[None], torch.stack([empty, cell])[None]])  # [2, 1, 2, 2, 2]
    ground_truth = torch.zeros(1, 8, 8, dtype=torch.bool)
    ground_truth[0, :4, :4] = True
    ground_truth[0, 3, 3] = False
    padded = ground_truth.clone()
    padded[0, 7, 7] = True  # in the padding: cropped away by `resized_size`
    labels = [{"masks": padded.numpy(), "resized_size": (6, 8)}, {"masks": ground_truth.numpy()}]
    predictions = (logits.numpy(), torch.zeros(2, 1, 2, 4).numpy(), pred_masks.numpy())

    metrics = ReferringSegmentationMetrics()
    # Clip 0: the selected query's mask is the ground truth (J = F = 1); clip 1 selects the empty mask (J = F = 0).
    assert metrics(EvalPrediction(predictions, labels), compute_result=True) == {"J": 0.5, "F": 0.5, "J&F": 0.5}
    # Batch by batch: the first batch is kept until the result is computed, then the state is reset.
    first = tuple(array[:1] for array in predictions)
    assert metrics(EvalPrediction(first, labels[:1]), compute_result=False) is None
    second = tuple(array[1:] for array in predictions)
    assert metrics(EvalPrediction(second, labels[1:]), compute_result=True) == {"J": 0.5, "F": 0.5, "J&F": 0.5}
    assert metrics(EvalPrediction(first, labels[:1]), compute_result=True) == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    older_labels = [{"masks": padded.numpy(), "size": (6, 8)}]  # the key's older name crops the same way
    assert metrics(EvalPrediction(first, older_labels), compute_result=True) == {"J": 1.0, "F": 1.0, "J&F": 1.0}
