"""bf16 autocast with the compiled deformable-attention operator (its autocast rule), heads kept in float32, training
steps in bf16 (Trainer and Accelerate), and `torch.compile` of the whole model."""

import math

import pytest
import torch
from transformers import TrainingArguments

from helpers import FP32_ROUNDING, random_inputs, randomize_weights, synthetic_training_clips, unit_test_config, tiny_training_model
from referformer import ReferFormerForReferringVideoObjectSegmentation, kernels
from referformer import ms_deform_attn as deformable_attention


@pytest.fixture(scope="module")
def cpu_op():
    if not kernels.is_available("cpu"):
        pytest.fail("the CPU kernel must build here (g++ and ninja are installed)")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config())).eval()


@pytest.fixture
def op_only(monkeypatch):
    """Fails the test if the deformable attention falls back to the PyTorch implementation."""
    monkeypatch.setattr(deformable_attention, "_grid_sample_attention", pytest.fail)


def test_bf16_autocast_uses_the_operator_and_keeps_heads_in_float32(cpu_op, model, op_only):
    inputs = random_inputs(model.config, num_frames=3)
    with torch.no_grad():
        reference = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(**inputs)
            selected = model(**inputs, output_all_queries=False)
    for name in ("logits", "pred_boxes", "pred_masks"):
        assert mixed[name].dtype == torch.float32 and selected[name].dtype == torch.float32, name
    assert mixed.last_hidden_state.dtype == torch.bfloat16  # the transformer itself ran in bf16
    torch.testing.assert_close(mixed.pred_boxes, reference.pred_boxes, atol=0.05, rtol=0)
    agreement = ((mixed.pred_masks > 0) == (reference.pred_masks > 0)).float().mean()
    assert agreement > 0.9
    assert not torch.equal(mixed.logits, reference.logits)


def test_trainer_trains_in_bf16_with_the_operator(cpu_op, tmp_path, op_only):
    from referformer.data_transforms import collate_clips
    from referformer.training import ReferFormerTrainer

    model = tiny_training_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        bf16=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
    )
    trainer = ReferFormerTrainer(model=model, args=args, train_dataset=synthetic_training_clips(4), data_collator=collate_clips)
    assert math.isfinite(trainer.train().training_loss)
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert any("encoder.layers.0.self_attn" in name for name in changed)


def test_accelerate_loop_trains_in_bf16_with_the_operator(cpu_op, tmp_path, op_only):
    from referformer.training import AccelerateTrainingArguments, train_with_accelerate

    args = AccelerateTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, learning_rate=1e-3, mixed_precision="bf16", log_every=0
    )
    model = train_with_accelerate(tiny_training_model(), synthetic_training_clips(2), args)
    assert all(torch.isfinite(value).all() for value in model.state_dict().values() if value.is_floating_point())


def test_whole_model_compiles(cpu_op, model):
    inputs = random_inputs(model.config, num_frames=2)
    with torch.no_grad():
        eager = model(**inputs, output_all_queries=False)
        compiled = torch.compile(model)(**inputs, output_all_queries=False)
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(compiled[name], eager[name], **FP32_ROUNDING)
    assert torch.equal(compiled.selected_query_indices, eager.selected_query_indices)
