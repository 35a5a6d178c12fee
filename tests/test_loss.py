"""Instance-sequence matcher and criterion: parity with the original's loss fixture, label validation, edge cases
and gradients."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from helpers import random_inputs, randomize_weights, require_fixture, unit_test_config
from referformer import ReferFormerConfig, ReferFormerForReferringVideoObjectSegmentation
from referformer import loss_referformer
from referformer.conversion import build_converted_model
from referformer.loss_referformer import (
    ReferFormerInstanceSequenceMatcher,
    ReferFormerLoss,
    average_num_boxes,
    generalized_box_iou,
    prepare_targets,
)


LAYER_NAMES = ("aux_0", "aux_1", "final")  # rows of `matched_query_indices`


# ----------------------------------------------------------------------------- fixture parity


@pytest.fixture(scope="module")
def loss_fixture():
    """Stored predictions of the original model, the targets in our label format and the original's results."""
    root = require_fixture("original_resnet")
    outputs = load_file(root / "outputs.safetensors")
    targets = load_file(root / "loss" / "targets.safetensors")
    height, width = outputs["pred_masks"].shape[-2] * 4, outputs["pred_masks"].shape[-1] * 4  # 96 x 128
    labels = []
    for index in range(outputs["pred_logits"].shape[0]):
        masks = targets[f"targets.{index}.masks"]
        labels.append(
            {
                # Zero-padded from the clip's unpadded size to the padded input size, as `collate_clips` does.
                "masks": F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2])),
                "boxes": targets[f"targets.{index}.boxes"],
                "valid": targets[f"targets.{index}.valid"],
                "class_labels": targets[f"targets.{index}.labels"],
            }
        )
    predictions = {
        "logits": outputs["pred_logits"],
        "pred_boxes": outputs["pred_boxes"],
        "pred_masks": outputs["pred_masks"],
        "auxiliary_outputs": [
            {key: outputs[f"aux_outputs.{layer}.{name}"] for key, name in _FIXTURE_KEYS.items()} for layer in range(2)
        ],
    }
    return {
        "predictions": predictions,
        "labels": labels,
        "reference": json.loads((root / "loss" / "loss.json").read_text()),
        "intermediates": load_file(root / "loss" / "loss_intermediates.safetensors"),
    }


_FIXTURE_KEYS = {"logits": "pred_logits", "pred_boxes": "pred_boxes", "pred_masks": "pred_masks"}


def _layer_predictions(predictions, layer_name):
    if layer_name == "final":
        return [predictions[key] for key in _FIXTURE_KEYS]
    layer = predictions["auxiliary_outputs"][int(layer_name[-1])]
    return [layer[key] for key in _FIXTURE_KEYS]


def test_loss_parity_with_original_criterion(loss_fixture):
    reference = loss_fixture["reference"]
    criterion = ReferFormerLoss(ReferFormerConfig())
    loss, loss_dict, matched = criterion(**loss_fixture["predictions"], labels=loss_fixture["labels"])

    assert list(loss_dict) == list(reference["loss_dict"])
    for key, expected in reference["loss_dict"].items():
        torch.testing.assert_close(loss_dict[key].item(), expected, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(loss.item(), reference["total_loss"], rtol=1e-5, atol=1e-6)
    expected_total = sum(loss_dict[key] * weight for key, weight in reference["weight_dict"].items())
    torch.testing.assert_close(loss, expected_total)

    assert matched.dtype == torch.long and matched.shape == (3, 2)
    for row, layer_name in enumerate(LAYER_NAMES):
        assert matched[row].tolist() == reference["matched_query_index"][layer_name], layer_name


def test_converted_fixture_model_with_labels_reproduces_the_original_losses(loss_fixture):
    """The converted original model, run with `labels=`, gives the original criterion's losses (within 1e-3)."""
    root = require_fixture("original_resnet")
    args = json.loads((root / "config.json").read_text())["model_args"]
    model = build_converted_model(load_file(root / "original_state_dict.safetensors"), args)
    inputs = load_file(root / "inputs.safetensors")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"],
            pixel_mask=inputs["pixel_mask"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=loss_fixture["labels"],
        )
    reference = loss_fixture["reference"]
    assert set(outputs.loss_dict) == set(reference["loss_dict"])
    for key, expected in reference["loss_dict"].items():
        torch.testing.assert_close(outputs.loss_dict[key].item(), expected, rtol=1e-3, atol=1e-5, msg=key)
    torch.testing.assert_close(outputs.loss.item(), reference["total_loss"], rtol=1e-3, atol=1e-5)
    for row, layer_name in enumerate(LAYER_NAMES):
        assert outputs.matched_query_indices[row].tolist() == reference["matched_query_index"][layer_name]


def test_matcher_costs_parity(loss_fixture):
    reference, intermediates = loss_fixture["reference"], loss_fixture["intermediates"]
    config = ReferFormerConfig()
    matcher = ReferFormerInstanceSequenceMatcher(
        config.class_cost, config.bbox_cost, config.giou_cost, config.mask_cost, config.dice_cost
    )
    logits, _, pred_masks = _layer_predictions(loss_fixture["predictions"], "final")
    targets = prepare_targets(loss_fixture["labels"], logits.shape[1], pred_masks.shape[-2:], logits.shape[-1])
    torch.testing.assert_close(targets.masks, intermediates["target_masks_stride4"], rtol=0, atol=0)
    assert average_num_boxes(targets.valid).item() == reference["num_boxes"] == 5

    for layer_name in LAYER_NAMES:
        predictions = _layer_predictions(loss_fixture["predictions"], layer_name)
        costs = matcher.compute_costs(*predictions, targets)
        torch.testing.assert_close(
            costs["total"], intermediates[f"matcher_cost.{layer_name}"], rtol=1e-5, atol=1e-5, msg=layer_name
        )
        for component in ("class", "bbox", "giou", "mask", "dice"):
            torch.testing.assert_close(
                costs[component],
                intermediates[f"matcher_cost_component.{layer_name}.{component}"],
                rtol=1e-5,
                atol=1e-5,
                msg=f"{layer_name}.{component}",
            )
        assert matcher(*predictions, targets).tolist() == intermediates[f"matched_query.{layer_name}"].tolist()


def test_loss_parity_in_float64_and_with_unpadded_width_rounding(loss_fixture):
    """float64 predictions give the same values; masks whose size only rounds up to the grid are zero-padded."""
    predictions = loss_fixture["predictions"]
    double = {key: predictions[key].double() for key in _FIXTURE_KEYS}
    double["auxiliary_outputs"] = [
        {key: value.double() for key, value in layer.items()} for layer in predictions["auxiliary_outputs"]
    ]
    # 94 x 126 lies in the same 24 x 32 stride-4 grid; the cropped rows/columns are empty in this fixture.
    labels = [{**clip, "masks": clip["masks"][:, :94, :126]} for clip in loss_fixture["labels"]]
    loss, loss_dict, _ = ReferFormerLoss(ReferFormerConfig())(**double, labels=labels)
    assert loss.dtype == torch.float64
    for key, expected in loss_fixture["reference"]["loss_dict"].items():
        torch.testing.assert_close(loss_dict[key].item(), expected, rtol=1e-5, atol=1e-6, msg=key)


def test_each_aux_layer_is_matched_independently(loss_fixture):
    """Reusing the final layer's matching for the auxiliary layers would change `loss_*_0` (the README's trap)."""
    _, loss_dict, matched = ReferFormerLoss(ReferFormerConfig())(
        **loss_fixture["predictions"], labels=loss_fixture["labels"]
    )
    assert matched[0].tolist() != matched[-1].tolist()
    torch.testing.assert_close(loss_dict["loss_bbox_0"].item(), 0.745421290397644, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- small synthetic batches


def make_batch(batch_size=2, num_frames=3, num_queries=4, num_classes=1, grid=(6, 8), seed=0, requires_grad=False):
    """Random predictions of every decoder layer and matching random labels (object visible in every frame)."""
    generator = torch.Generator().manual_seed(seed)

    def layer():
        tensors = {
            "logits": torch.randn(batch_size, num_frames, num_queries, num_classes, generator=generator),
            "pred_boxes": torch.rand(batch_size, num_frames, num_queries, 4, generator=generator) * 0.5 + 0.25,
            "pred_masks": torch.randn(batch_size, num_frames, num_queries, *grid, generator=generator),
        }
        return {key: value.requires_grad_(requires_grad) for key, value in tensors.items()}

    height, width = grid[0] * 4, grid[1] * 4
    labels = []
    for _ in range(batch_size):
        masks = torch.zeros(num_frames, height, width, dtype=torch.bool)
        masks[:, height // 4 : height // 2, width // 4 : 3 * width // 4] = True
        boxes = torch.rand(num_frames, 4, generator=generator) * 0.4 + 0.3
        labels.append(
            {
                "masks": masks,
                "boxes": boxes,
                "valid": torch.ones(num_frames, dtype=torch.bool),
                "class_labels": torch.randint(0, num_classes, (num_frames,), generator=generator),
            }
        )
    final = layer()
    return {**final, "auxiliary_outputs": [layer(), layer()]}, labels


def test_loss_dict_keys_coefficients_and_no_auxiliary_outputs():
    config = ReferFormerConfig(class_loss_coefficient=1.5, dice_loss_coefficient=0.5)
    predictions, labels = make_batch()
    loss, loss_dict, matched = ReferFormerLoss(config)(**predictions, labels=labels)
    assert len(loss_dict) == 15 and matched.shape == (3, 2)
    weights = {"ce": 1.5, "bbox": 5.0, "giou": 2.0, "mask": 2.0, "dice": 0.5}
    expected = sum(value * weights[key.split("_")[1]] for key, value in loss_dict.items())
    torch.testing.assert_close(loss, expected)

    predictions.pop("auxiliary_outputs")
    loss, loss_dict, matched = ReferFormerLoss(config)(**predictions, labels=labels)
    assert list(loss_dict) == ["loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"]
    assert matched.shape == (1, 2)


def test_generalized_box_iou_epsilons():
    box = torch.tensor([0.1, 0.2, 0.5, 0.6])
    torch.testing.assert_close(generalized_box_iou(box, box), torch.tensor(1.0))
    zero = torch.zeros(4)
    # Two empty boxes: (0 + 1e-6) / (0 + 1e-6) - (0 + 1e-6) / (0 + 1e-6) = 0, finite.
    torch.testing.assert_close(generalized_box_iou(zero, zero), torch.tensor(0.0))
    # Disjoint unit-area boxes: IoU ~ 0, enclosing area 4, union 2.
    first, second = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 2.0, 2.0])
    expected = 1e-6 / (2 + 1e-6) - (2 + 1e-6) / (4 + 1e-6)
    torch.testing.assert_close(generalized_box_iou(first, second), torch.tensor(expected))


def test_multiclass_uses_the_label_column():
    predictions, labels = make_batch(num_classes=3, seed=1)
    for clip in labels:
        clip["class_labels"] = torch.tensor([2, 2, 2])
    logits = predictions["logits"]
    _, loss_dict, matched = ReferFormerLoss(ReferFormerConfig(num_classes=3))(**predictions, labels=labels)

    targets = torch.zeros_like(logits)
    for clip, query in enumerate(matched[-1].tolist()):
        targets[clip, :, query, 2] = 1
    probabilities = logits.sigmoid()
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    focal = alpha_t * F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (1 - p_t) ** 2
    torch.testing.assert_close(loss_dict["loss_ce"], focal.sum() / 6)

    # The class cost reads column 2; changing the other columns does not change it.
    config = ReferFormerConfig(num_classes=3)
    targets = prepare_targets(labels, 3, (6, 8), 3)
    matcher = ReferFormerInstanceSequenceMatcher(config.class_cost, 0, 0, 0, 0)
    costs = matcher.compute_costs(logits, predictions["pred_boxes"], predictions["pred_masks"], targets)
    shuffled = logits.clone()
    shuffled[..., :2] = torch.randn_like(shuffled[..., :2])
    shuffled_costs = matcher.compute_costs(shuffled, predictions["pred_boxes"], predictions["pred_masks"], targets)
    torch.testing.assert_close(costs["class"], shuffled_costs["class"])


def test_single_class_ignores_class_labels():
    predictions, labels = make_batch()
    _, reference, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    for clip in labels:
        clip["class_labels"] = torch.full((3,), 40)  # a category id beyond the single logit column
    _, with_ids, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    without_ids = [{key: value for key, value in clip.items() if key != "class_labels"} for clip in labels]
    _, without, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=without_ids)
    for key in reference:
        torch.testing.assert_close(with_ids[key], reference[key])
        torch.testing.assert_close(without[key], reference[key])


def test_focal_alpha_only_changes_loss_ce():
    """As the original: the matcher's class cost and the mask focal terms keep alpha 0.25."""
    predictions, labels = make_batch()
    _, default, matched_default = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    _, changed, matched_changed = ReferFormerLoss(ReferFormerConfig(focal_alpha=0.5))(**predictions, labels=labels)
    assert torch.equal(matched_default, matched_changed)
    for key in default:
        if key.startswith("loss_ce"):
            assert not torch.allclose(default[key], changed[key])
        else:
            torch.testing.assert_close(default[key], changed[key])


def test_mask_losses_at_input_resolution_compare_upsampled_logits_with_full_masks():
    predictions, labels = make_batch()
    labels = [{**clip, "masks": clip["masks"][..., :22, :30]} for clip in labels]  # unpadded 22 x 30 input, grid 6 x 8
    config = ReferFormerConfig(mask_loss_at_input_resolution=True)
    _, loss_dict, matched = ReferFormerLoss(config)(**predictions, labels=labels)

    batch_size, num_frames, num_queries = predictions["logits"].shape[:3]
    upsampled = F.interpolate(predictions["pred_masks"].flatten(0, 2)[:, None], scale_factor=4, mode="bilinear")
    upsampled = upsampled[:, 0, :22, :30].view(batch_size, num_frames, num_queries, 22, 30)
    targets = prepare_targets(labels, num_frames, (6, 8), 1, subsample_masks=False)
    expected_match = ReferFormerInstanceSequenceMatcher()(
        predictions["logits"], predictions["pred_boxes"], upsampled, targets
    )
    assert torch.equal(matched[-1], expected_match)
    probabilities = upsampled[torch.arange(batch_size), :, expected_match].flatten(1).sigmoid()
    ground_truth = targets.masks.flatten(1)
    dice = (2 * (probabilities * ground_truth).sum(1) + 1) / (probabilities.sum(1) + ground_truth.sum(1) + 1)
    torch.testing.assert_close(loss_dict["loss_dice"], (1 - dice).sum() / (batch_size * num_frames))
    # Same matches here as on the grid, so the class and box terms are the grid criterion's; the mask terms are not.
    _, grid_dict, grid_matched = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    assert torch.equal(grid_matched, matched)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(grid_dict[name], loss_dict[name])
    assert not torch.allclose(grid_dict["loss_dice"], loss_dict["loss_dice"])


# ----------------------------------------------------------------------------- unusual labels


def test_object_never_visible_in_a_clip():
    """Allowed: class cost 0 for that clip, its queries are all negatives, and only visible frames normalize."""
    predictions, labels = make_batch()
    labels[1]["valid"] = torch.zeros(3, dtype=torch.bool)
    labels[1]["boxes"] = torch.zeros(3, 4)
    labels[1]["masks"] = torch.zeros_like(labels[1]["masks"])
    loss, loss_dict, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    assert torch.isfinite(loss) and all(torch.isfinite(value) for value in loss_dict.values())

    targets = prepare_targets(labels, 3, (6, 8), 1)
    assert average_num_boxes(targets.valid).item() == 3
    matcher = ReferFormerInstanceSequenceMatcher()
    costs = matcher.compute_costs(predictions["logits"], predictions["pred_boxes"], predictions["pred_masks"], targets)
    assert torch.equal(costs["class"][1], torch.zeros(4))

    # Clip 1 contributes to loss_ce as pure background: compare with the loss of clip 0 alone (same normalizer).
    logits = predictions["logits"][1]
    probabilities = logits.sigmoid()
    background = 0.75 * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    background = (background * probabilities**2).sum() / 3
    single = {key: predictions[key][:1] for key in ("logits", "pred_boxes", "pred_masks")}
    _, clip0_only, _ = ReferFormerLoss(ReferFormerConfig())(**single, labels=labels[:1])
    torch.testing.assert_close(loss_dict["loss_ce"], clip0_only["loss_ce"] + background)


def test_batch_without_any_visible_frame_is_finite():
    predictions, labels = make_batch(requires_grad=True)
    for clip in labels:
        clip["valid"] = torch.zeros(3, dtype=torch.long)
        clip["boxes"] = torch.zeros(3, 4)
        clip["masks"] = torch.zeros_like(clip["masks"])
    loss, loss_dict, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    assert average_num_boxes(torch.zeros(2, 3, dtype=torch.bool)).item() == 1
    assert torch.isfinite(loss) and all(torch.isfinite(value) for value in loss_dict.values())
    loss.backward()
    assert torch.isfinite(predictions["pred_boxes"].grad).all()


def test_valid_accepts_int_and_bool():
    predictions, labels = make_batch()
    labels[0]["valid"] = torch.tensor([1, 0, 1], dtype=torch.int32)
    _, as_int, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    labels[0]["valid"] = torch.tensor([True, False, True])
    _, as_bool, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    for key in as_int:
        torch.testing.assert_close(as_int[key], as_bool[key])


def _corrupt(labels, clip, key, value):
    labels = [dict(clip_labels) for clip_labels in labels]
    labels[clip][key] = value
    return labels


@pytest.mark.parametrize(
    "corruption, message",
    [
        (lambda labels: labels[:1], "Got 1 label dicts for a batch of 2"),
        (lambda labels: _corrupt(labels, 1, "boxes", torch.rand(2, 4)), r"`boxes` has shape \(2, 4\)"),
        (lambda labels: _corrupt(labels, 0, "valid", torch.ones(4)), r"`valid` has shape \(4,\)"),
        (lambda labels: _corrupt(labels, 0, "masks", torch.zeros(2, 24, 32, dtype=torch.bool)), "`masks` has shape"),
        (lambda labels: _corrupt(labels, 0, "masks", torch.zeros(3, 20, 28)), "must all be at the padded input"),
        (
            lambda labels: [{**clip, "masks": torch.zeros(3, 20, 32, dtype=torch.bool)} for clip in labels],
            "height 20, which does not match the prediction grid of 6",
        ),
        (
            lambda labels: [{**clip, "masks": torch.zeros(3, 24, 36, dtype=torch.bool)} for clip in labels],
            "width 36, which does not match the prediction grid of 8",
        ),
        (lambda labels: _corrupt(labels, 1, "boxes", torch.full((3, 4), 1.5)), r"clips \[1\] are not normalized"),
        (lambda labels: _corrupt(labels, 0, "boxes", -torch.rand(3, 4)), r"clips \[0\] are not normalized"),
        (lambda labels: _corrupt(labels, 0, "boxes", torch.full((3, 4), float("nan"))), "are not normalized"),
        (lambda labels: [{"boxes": clip["boxes"]} for clip in labels], "lack"),
    ],
)
def test_bad_labels_raise(corruption, message):
    predictions, labels = make_batch()
    with pytest.raises(ValueError, match=message):
        ReferFormerLoss(ReferFormerConfig())(**predictions, labels=corruption(labels))


def test_multiclass_label_validation():
    predictions, labels = make_batch(num_classes=3)
    criterion = ReferFormerLoss(ReferFormerConfig(num_classes=3))
    with pytest.raises(ValueError, match="lack"):
        criterion(**predictions, labels=[{k: v for k, v in clip.items() if k != "class_labels"} for clip in labels])
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        criterion(**predictions, labels=_corrupt(labels, 0, "class_labels", torch.tensor([0, 3, 0])))
    # Labels of absent frames are never read.
    labels = _corrupt(labels, 0, "class_labels", torch.tensor([0, -1, 1]))
    labels[0]["valid"] = torch.tensor([1, 0, 1])
    loss, _, _ = criterion(**predictions, labels=labels)
    assert torch.isfinite(loss)


def test_inconsistent_predictions_raise():
    predictions, labels = make_batch()
    predictions["auxiliary_outputs"][1]["pred_boxes"] = predictions["auxiliary_outputs"][1]["pred_boxes"][:, :2]
    with pytest.raises(ValueError, match="auxiliary layer 1"):
        ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)


def test_all_zero_matching_costs_raise():
    with pytest.raises(ValueError, match="nonzero"):
        ReferFormerInstanceSequenceMatcher(0, 0, 0, 0, 0)


def test_num_boxes_is_averaged_across_processes(monkeypatch):
    """Under distributed training the count is all-reduced with accelerate's mean (the original's sum / world size)."""
    calls = []

    def fake_reduce(tensor, reduction):
        calls.append(reduction)
        return (tensor + 3) / 2  # another process holding 3 visible frames

    monkeypatch.setattr(loss_referformer.PartialState, "_shared_state", {"initialized": True})
    monkeypatch.setattr(loss_referformer, "reduce", fake_reduce)
    assert average_num_boxes(torch.ones(2, 3, dtype=torch.bool)).item() == 4.5
    assert calls == ["mean"]


# ----------------------------------------------------------------------------- gradients


def test_gradients_are_finite():
    predictions, labels = make_batch(requires_grad=True, seed=3)
    labels[0]["valid"] = torch.tensor([1, 0, 1])
    labels[0]["boxes"][1] = 0
    loss, _, _ = ReferFormerLoss(ReferFormerConfig())(**predictions, labels=labels)
    loss.backward()
    layers = [predictions] + predictions["auxiliary_outputs"]
    for layer in layers:
        for key in ("logits", "pred_boxes", "pred_masks"):
            gradient = layer[key].grad
            assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0, key


def test_loss_on_tiny_model_outputs_backpropagates():
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()))
    model.train()
    inputs = random_inputs(model.config, batch_size=2, num_frames=2, height=64, width=64)
    outputs = model(**inputs)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[:, 16:40, 20:44] = True
    labels = [
        {"masks": masks, "boxes": torch.tensor([[0.5, 0.45, 0.375, 0.375]] * 2), "valid": torch.tensor([1, 1])},
        {"masks": masks, "boxes": torch.tensor([[0.5, 0.45, 0.375, 0.375]] * 2), "valid": torch.tensor([1, 1])},
    ]
    loss, loss_dict, matched = ReferFormerLoss(model.config)(
        outputs.logits, outputs.pred_boxes, outputs.pred_masks, labels, outputs.auxiliary_outputs
    )
    assert matched.shape == (model.config.decoder_layers, 2)
    assert set(loss_dict) == {f"{name}{suffix}" for name in loss_referformer.LOSS_NAMES for suffix in ("", "_0")}
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert gradients and all(torch.isfinite(gradient).all() for gradient in gradients)
    assert model.class_embed[-1].weight.grad.abs().sum() > 0 and model.controller.layers[0].weight.grad.abs().sum() > 0
