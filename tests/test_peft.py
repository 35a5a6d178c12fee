"""PEFT on ReferFormer: LoRA on the attention projections with the per-decoder-layer heads fully trained
(`modules_to_save`), one training step, and the adapter saved and reloaded onto the saved base model."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from helpers import FP32_ROUNDING, random_inputs, randomize_weights, tiny_training_model
from referformer import ReferFormerForReferringVideoObjectSegmentation


SAVED_MODULES = ("class_embed", "bbox_embed", "controller")


def referred_square_labels(batch_size, num_frames, height, width):
    masks = torch.zeros(num_frames, height, width, dtype=torch.bool)
    masks[:, 16:40, 20:44] = True
    boxes = torch.tensor([[0.5, 0.45, 0.375, 0.375]] * num_frames)
    return [{"masks": masks, "boxes": boxes, "valid": torch.ones(num_frames, dtype=torch.long)}] * batch_size


def test_lora_with_saved_heads_trains_saves_and_reloads(tmp_path):
    base = randomize_weights(tiny_training_model())
    base.save_pretrained(tmp_path / "base")
    base_keys = set(base.state_dict())
    inputs = random_inputs(base.config, batch_size=2, num_frames=2, height=64, width=64)
    labels = referred_square_labels(2, 2, 64, 64)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "value_proj", "output_proj"], modules_to_save=list(SAVED_MODULES)
    )
    model = get_peft_model(base, config)
    model.train()
    model(**inputs, labels=labels).loss.backward()

    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or ".modules_to_save." in name for name in trainable)
    for module in SAVED_MODULES:
        saved = {name: parameter for name, parameter in trainable.items() if f".{module}.modules_to_save." in name}
        assert saved and all(parameter.grad.abs().sum() > 0 for parameter in saved.values()), module
    # LoRA's B starts at zero, so A gets a zero gradient at the first step and B a non-zero one.
    lora_b = [parameter for name, parameter in trainable.items() if "lora_B" in name]
    assert lora_b and all(parameter.grad.abs().sum() > 0 for parameter in lora_b)
    assert all(parameter.grad is not None for name, parameter in trainable.items() if "lora_A" in name)
    assert all(parameter.grad is None for parameter in model.parameters() if not parameter.requires_grad)

    torch.optim.AdamW(trainable.values(), lr=1e-2).step()
    model.eval()
    with torch.no_grad():
        trained = model(**inputs)
        with model.disable_adapter():
            untrained = model(**inputs)
    assert not torch.allclose(trained.logits, untrained.logits, atol=1e-3)

    model.save_pretrained(tmp_path / "adapter")
    base_again = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base_again, tmp_path / "adapter").eval()
    with torch.no_grad():
        outputs = reloaded(**inputs)
    # A saved and reloaded model sums in another memory layout: equal up to fp32 rounding.
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(outputs, name), getattr(trained, name), **FP32_ROUNDING, msg=name)
    # Merged, the model has the checkpoint keys of the base model.
    assert set(reloaded.merge_and_unload().state_dict()) == base_keys
