"""Instance-sequence matching and training losses of ReferFormer, numerically identical to the original
`models/matcher.py` and `models/criterion.py`.

Labels
------
`labels` is a list with one dict per clip, describing the referred object over the clip's T frames:

- `masks` (`torch.BoolTensor` of shape `(T, H, W)`): the object mask at the **padded** input resolution, i.e. the
  `height, width` of the `pixel_values` given to the model (zero outside the clip's unpadded frame). All False where
  the object is absent. [`referformer.data_transforms.collate_clips`] produces them from unpadded masks.
- `boxes` (`torch.FloatTensor` of shape `(T, 4)`): (center_x, center_y, width, height) divided by the **unpadded**
  frame width/height, all in [0, 1]; zeros where the object is absent.
- `valid` (`torch.Tensor` of shape `(T,)`, bool or int): nonzero where the object is visible in the frame.
- `class_labels` (`torch.LongTensor` of shape `(T,)`): category id of the object. Only read when the model has more
  than one class (then it must lie in `[0, num_classes)` on visible frames); with one class (every released model)
  class 0 is used and the key may be omitted.

Other keys are ignored.

Matching and losses
-------------------
Every clip has exactly one target sequence, so each decoder layer matches it independently to the single query
(the same query index in all frames) of minimal cost `class_cost * class + bbox_cost * L1 + giou_cost * (-GIoU) +
mask_cost * focal + dice_cost * (-dice)`: the class cost is averaged over visible frames only, every other cost over
all frames (absent frames compare with the zero box and the empty mask). The ground-truth masks are sub-sampled to
the stride-4 prediction grid by taking every 4th pixel from offset 2 (predictions are not up-sampled); with
`config.mask_loss_at_input_resolution` (not in the original) the predicted logits are instead up-sampled 4x
bilinearly, cropped to the input size and compared with the full-resolution masks.

All losses are normalized by `num_boxes`, the number of visible frames in the batch (averaged over processes,
at least 1). `loss_ce` is a sigmoid focal loss over all frames and queries whose only positives are the matched
query on visible frames; `loss_bbox`, `loss_giou`, `loss_mask` and `loss_dice` use the matched query on **all**
frames, as the original does (quirk 15 of the specification: absent frames regress towards the zero box and the
empty mask although they do not count in `num_boxes`).

As in the original, `focal_alpha` only sets the alpha of `loss_ce`; the matcher's class cost and both mask focal
terms use alpha 0.25, and every focal term uses gamma 2.

Behaviour on unusual labels: a clip whose object is never visible is accepted (its class cost is 0, so boxes and
masks decide the match; `loss_ce` then pushes every query of the clip towards background), and a batch without any
visible frame normalizes by 1. Labels with the wrong number of frames, masks that are not at the padded input
resolution, boxes outside [0, 1] and out-of-range class labels raise a `ValueError`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import is_accelerate_available

from .configuration_referformer import ReferFormerConfig


if is_accelerate_available():
    from accelerate import PartialState
    from accelerate.utils import reduce


# Hard-coded in the original: stride of the predicted masks, focal gamma, and the alpha of the matcher's class cost
# and of the mask focal terms (only `loss_ce` uses `config.focal_alpha`).
MASK_STRIDE = 4
FOCAL_GAMMA = 2.0
FIXED_FOCAL_ALPHA = 0.25
LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(center_x, center_y, width, height) -> (x1, y1, x2, y2) on the last dimension."""
    center_x, center_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [center_x - 0.5 * width, center_y - 0.5 * height, center_x + 0.5 * width, center_y + 0.5 * height], dim=-1
    )


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of corresponding (broadcast) `(x1, y1, x2, y2)` boxes, with the original's epsilons.

    IoU is `(intersection + 1e-6) / (union + 1e-6)` and the enclosing-area term `(area - union + 1e-6) /
    (area + 1e-6)`, so zero-size boxes (absent frames) give finite values.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    intersection_size = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2]))
    intersection_size = intersection_size.clamp(min=0)
    intersection = intersection_size[..., 0] * intersection_size[..., 1]
    union = area1 + area2 - intersection
    iou = (intersection + 1e-6) / (union + 1e-6)
    enclosing_size = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2]))
    enclosing_size = enclosing_size.clamp(min=0)
    enclosing_area = enclosing_size[..., 0] * enclosing_size[..., 1]
    return iou - ((enclosing_area - union) + 1e-6) / (enclosing_area + 1e-6)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float = FOCAL_GAMMA):
    """Element-wise sigmoid focal loss (RetinaNet) of logits against {0, 1} targets of the same shape."""
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_coefficient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smoothed dice `(2 sum(p t) + 1) / (sum(p) + sum(t) + 1)` over the last dimension, with `p = sigmoid(logits)`.

    `logits` and `targets` broadcast against each other.
    """
    probabilities = logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return (numerator + 1) / (denominator + 1)


@dataclass
class ReferFormerTargets:
    """Labels of a batch, validated and stacked on the prediction device.

    Attributes:
        masks: `[B, T, h, w]` ground-truth masks sub-sampled to the prediction grid, in the prediction dtype.
        boxes: `[B, T, 4]` normalized (cx, cy, w, h).
        valid: `[B, T]` bool, True where the object is visible.
        class_labels: `[B, T]` long category ids (0 on absent frames and when there is a single class).
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    class_labels: torch.Tensor


def check_mask_size(masks: torch.Tensor, grid_size: tuple[int, int]) -> None:
    """Checks that `[..., H, W]` label masks are at the padded input resolution of an `(h, w)` stride-4 prediction
    grid: `4(h - 1) < H <= 4h`, likewise `W`."""
    height, width = masks.shape[-2:]
    grid_height, grid_width = grid_size
    for name, size, grid in (("height", height, grid_height), ("width", width, grid_width)):
        if not MASK_STRIDE * (grid - 1) < size <= MASK_STRIDE * grid:
            raise ValueError(
                f"Label masks have {name} {size}, which does not match the prediction grid of {grid} (stride "
                f"{MASK_STRIDE}): masks must be at the padded input resolution of the model, i.e. the size of "
                "`pixel_values` (zero-pad each clip's masks like its frames)."
            )


def subsample_target_masks(masks: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Reduces `[..., H, W]` masks at the padded input resolution to the `(h, w)` stride-4 prediction grid.

    As the original: the masks are zero-padded to `(4h, 4w)` and every 4th pixel from offset 2 is kept.
    """
    check_mask_size(masks, grid_size)
    grid_height, grid_width = grid_size
    start = MASK_STRIDE // 2
    masks = masks[..., start::MASK_STRIDE, start::MASK_STRIDE]
    return F.pad(masks, (0, grid_width - masks.shape[-1], 0, grid_height - masks.shape[-2]))


def upsample_mask_logits(pred_masks: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """`[..., h, w]` stride-4 mask logits -> `[..., H, W]`: bilinear 4x up-sampling cropped to the input size."""
    grid = pred_masks.flatten(0, -3)[:, None]
    upsampled = F.interpolate(grid, scale_factor=MASK_STRIDE, mode="bilinear", align_corners=False)
    return upsampled[:, 0, : input_size[0], : input_size[1]].unflatten(0, pred_masks.shape[:-2])


def prepare_targets(
    labels: list[dict[str, torch.Tensor]],
    num_frames: int,
    grid_size: tuple[int, int],
    num_classes: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    subsample_masks: bool = True,
) -> ReferFormerTargets:
    """Validates the per-clip label dicts (see the module docstring) and stacks them into [`ReferFormerTargets`].

    Args:
        labels: one dict per clip with `masks`, `boxes`, `valid` and (when `num_classes > 1`) `class_labels`.
        num_frames: number of frames T of the predictions.
        grid_size: `(h, w)` of the predicted masks.
        num_classes: number of class logits of the model.
        device: device of the predictions.
        dtype: floating dtype of the predicted masks.
        subsample_masks: reduce the masks to the prediction grid (the original); else keep the input resolution.
    """
    if len(labels) == 0:
        raise ValueError("`labels` must contain one dict per clip, got an empty list.")
    required_keys = ("masks", "boxes", "valid") + (("class_labels",) if num_classes > 1 else ())
    # Expected leading dimensions and number of dimensions of every key.
    expected_shapes = {"masks": ((num_frames,), 3), "boxes": ((num_frames, 4), 2), "valid": ((num_frames,), 1)}
    expected_shapes["class_labels"] = ((num_frames,), 1)
    for index, clip_labels in enumerate(labels):
        missing = [key for key in required_keys if key not in clip_labels]
        if missing:
            raise ValueError(f"Labels of clip {index} lack {missing}; expected keys {list(required_keys)}.")
        for key in required_keys:
            shape = tuple(clip_labels[key].shape)
            leading, ndim = expected_shapes[key]
            if len(shape) != ndim or shape[: len(leading)] != leading:
                expected = leading + ("*",) * (ndim - len(leading))
                raise ValueError(
                    f"Labels of clip {index}: `{key}` has shape {shape}, expected {expected} (the predictions have "
                    f"{num_frames} frames)."
                )
    mask_sizes = {tuple(clip_labels["masks"].shape[-2:]) for clip_labels in labels}
    if len(mask_sizes) > 1:
        raise ValueError(
            f"Label masks of one batch must all be at the padded input resolution, got sizes {sorted(mask_sizes)}."
        )

    masks = torch.stack([clip_labels["masks"].to(device) for clip_labels in labels])
    if masks.dtype != torch.bool and not ((masks == 0) | (masks == 1)).all():
        values = masks.unique()
        raise ValueError(
            f"Label masks must be binary (bool, or 0 and 1), got values {values[:5].tolist()}"
            f"{' ...' if len(values) > 5 else ''}; for palette or 0/255 masks compare with the object id first."
        )
    if subsample_masks:
        masks = subsample_target_masks(masks, grid_size).to(dtype)
    else:
        check_mask_size(masks, grid_size)
        masks = masks.to(dtype)
    boxes = torch.stack([clip_labels["boxes"].to(device=device, dtype=dtype) for clip_labels in labels])
    valid = torch.stack([clip_labels["valid"].to(device).bool() for clip_labels in labels])
    outside = ~((boxes >= 0) & (boxes <= 1)).all(-1).all(-1)
    if outside.any():
        raise ValueError(
            f"Label boxes of clips {outside.nonzero().flatten().tolist()} are not normalized (cx, cy, w, h) values "
            "in [0, 1]."
        )
    if num_classes > 1:
        class_labels = torch.stack([clip_labels["class_labels"].to(device).long() for clip_labels in labels])
        class_labels = torch.where(valid, class_labels, 0)
        out_of_range = (class_labels < 0) | (class_labels >= num_classes)
        if out_of_range.any():
            raise ValueError(
                f"class_labels of visible frames must lie in [0, {num_classes}), got "
                f"{class_labels[out_of_range].unique().tolist()}."
            )
    else:
        class_labels = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)
    return ReferFormerTargets(masks=masks, boxes=boxes, valid=valid, class_labels=class_labels)


def average_num_boxes(valid: torch.Tensor) -> torch.Tensor:
    """Number of visible frames in the batch, averaged over processes (accelerate), clamped to at least 1."""
    num_boxes = valid.sum().to(torch.float32)
    if is_accelerate_available() and PartialState._shared_state != {}:
        num_boxes = reduce(num_boxes, reduction="mean")
    return num_boxes.clamp(min=1)


def _select_query(predictions: torch.Tensor, query_indices: torch.Tensor) -> torch.Tensor:
    """`[B, T, Q, ...]` -> `[B, T, ...]`: the predictions of query `query_indices[b]` in every frame of clip b."""
    batch_indices = torch.arange(predictions.shape[0], device=predictions.device)
    return predictions[batch_indices, :, query_indices]


def _check_layer_shapes(layer: dict[str, torch.Tensor], logits_shape: torch.Size, suffix: str):
    batch_size, num_frames, num_queries, _ = logits_shape
    shapes = {key: tuple(layer[key].shape) for key in ("logits", "pred_boxes", "pred_masks")}
    if (
        shapes["logits"] != tuple(logits_shape)
        or shapes["pred_boxes"] != (batch_size, num_frames, num_queries, 4)
        or len(shapes["pred_masks"]) != 5
        or shapes["pred_masks"][:3] != (batch_size, num_frames, num_queries)
    ):
        layer_name = f"auxiliary layer {suffix[1:]}" if suffix else "the last layer"
        raise ValueError(
            f"Inconsistent predictions of {layer_name}: {shapes}; expected logits [B, T, Q, K], pred_boxes "
            f"[B, T, Q, 4] and pred_masks [B, T, Q, h, w] with (B, T, Q, K) = {tuple(logits_shape)}."
        )


class ReferFormerInstanceSequenceMatcher(nn.Module):
    """Matches the target sequence of every clip to one query (the same index in all frames): the query of minimal
    cost over the whole clip. Each clip has a single target, so this is an argmin rather than a Hungarian matching.

    Args:
        class_cost, bbox_cost, giou_cost, mask_cost, dice_cost: weights of the focal class cost (visible frames),
            L1 box cost, -GIoU, mask focal cost and -dice (all frames).
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        mask_cost: float = 2.0,
        dice_cost: float = 5.0,
    ):
        super().__init__()
        if class_cost == bbox_cost == giou_cost == mask_cost == dice_cost == 0:
            raise ValueError("At least one matching cost must be nonzero.")
        self.weights = {
            "class": class_cost,
            "bbox": bbox_cost,
            "giou": giou_cost,
            "mask": mask_cost,
            "dice": dice_cost,
        }

    @torch.no_grad()
    def compute_costs(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: ReferFormerTargets,
    ) -> dict[str, torch.Tensor]:
        """Unweighted cost components (`class`, `bbox`, `giou`, `mask`, `dice`; giou and dice already negated) and
        their weighted sum `total`, each `[B, Q]`.

        Args:
            logits: `[B, T, Q, K]` class logits.
            pred_boxes: `[B, T, Q, 4]` normalized (cx, cy, w, h).
            pred_masks: `[B, T, Q, h, w]` mask logits.
            targets: the prepared labels ([`prepare_targets`]).
        """
        probabilities = logits.sigmoid()
        # One class: column 0; several: the column of the target class of each frame.
        class_index = targets.class_labels[:, :, None, None].expand(-1, -1, logits.shape[2], 1)
        probabilities = probabilities.gather(-1, class_index).squeeze(-1)  # [B, T, Q]
        alpha, gamma = FIXED_FOCAL_ALPHA, FOCAL_GAMMA
        negative = (1 - alpha) * (probabilities**gamma) * (-(1 - probabilities + 1e-8).log())
        positive = alpha * ((1 - probabilities) ** gamma) * (-(probabilities + 1e-8).log())
        valid = targets.valid[:, :, None]
        class_cost = torch.where(valid, positive - negative, 0).sum(1) / valid.sum(1).clamp(min=1)

        target_boxes = targets.boxes[:, :, None]  # [B, T, 1, 4]
        bbox_cost = (pred_boxes - target_boxes).abs().sum(-1).mean(1)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)).mean(1)

        mask_logits = pred_masks.transpose(1, 2).flatten(2)  # [B, Q, T*h*w]
        target_masks = targets.masks.flatten(1)[:, None].expand_as(mask_logits)
        mask_cost = sigmoid_focal_loss(mask_logits, target_masks, FIXED_FOCAL_ALPHA).mean(-1)
        dice_cost = -dice_coefficient(mask_logits, target_masks)

        costs = {"class": class_cost, "bbox": bbox_cost, "giou": giou_cost, "mask": mask_cost, "dice": dice_cost}
        costs["total"] = sum(self.weights[name] * cost for name, cost in costs.items())
        return costs

    @torch.no_grad()
    def forward(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: ReferFormerTargets,
    ) -> torch.LongTensor:
        """Index `[B]` of the matched query of every clip; arguments as in [`compute_costs`]."""
        return self.compute_costs(logits, pred_boxes, pred_masks, targets)["total"].argmin(-1)


class ReferFormerLoss(nn.Module):
    """The original ReferFormer criterion: per decoder layer, instance-sequence matching then focal class loss, L1 and
    GIoU box losses and focal and dice mask losses, all normalized by the number of visible frames.

    Args:
        config: provides the matching costs (`class_cost`, ..., `dice_cost`), the loss weights
            (`class_loss_coefficient`, ..., `dice_loss_coefficient`) and `focal_alpha`.
    """

    def __init__(self, config: ReferFormerConfig):
        super().__init__()
        self.matcher = ReferFormerInstanceSequenceMatcher(
            class_cost=config.class_cost,
            bbox_cost=config.bbox_cost,
            giou_cost=config.giou_cost,
            mask_cost=config.mask_cost,
            dice_cost=config.dice_cost,
        )
        self.focal_alpha = config.focal_alpha
        self.mask_loss_at_input_resolution = config.mask_loss_at_input_resolution
        self.loss_coefficients = {
            "loss_ce": config.class_loss_coefficient,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient,
            "loss_mask": config.mask_loss_coefficient,
            "loss_dice": config.dice_loss_coefficient,
        }

    def forward(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.LongTensor]:
        """Matches and scores the predictions of the last decoder layer and of every auxiliary layer.

        Args:
            logits: `[B, T, Q, K]` class logits of the last decoder layer.
            pred_boxes: `[B, T, Q, 4]` boxes of the last decoder layer.
            pred_masks: `[B, T, Q, h, w]` mask logits of the last decoder layer.
            labels: one dict per clip, see the module docstring.
            auxiliary_outputs: predictions of the earlier decoder layers, in layer order, each a dict with `logits`,
                `pred_boxes` and `pred_masks`.

        Returns:
            `loss`: scalar, the sum of every loss term times its coefficient, over all layers.
            `loss_dict`: the unweighted terms under the original names (`loss_ce`, `loss_bbox`, `loss_giou`,
                `loss_mask`, `loss_dice` for the last layer, with suffix `_0`, `_1`, ... for auxiliary layer 0, 1,
                ...).
            `matched_query_indices`: `[L, B]` long, the matched query of every clip for each decoder layer in layer
                order: row `i < L - 1` is auxiliary layer `i`, row `-1` the last layer.
        """
        batch_size, num_frames, num_queries, num_classes = logits.shape
        final_layer = {"logits": logits, "pred_boxes": pred_boxes, "pred_masks": pred_masks}
        # The original's order: the last layer without suffix, then auxiliary layer i with suffix `_i`.
        named_layers = [("", final_layer)] + [(f"_{i}", layer) for i, layer in enumerate(auxiliary_outputs or [])]
        for suffix, layer in named_layers:
            _check_layer_shapes(layer, logits.shape, suffix)
        if len(labels) != batch_size:
            raise ValueError(f"Got {len(labels)} label dicts for a batch of {batch_size} clips.")

        dtype = torch.promote_types(pred_masks.dtype, torch.float32)
        targets = prepare_targets(
            labels,
            num_frames,
            tuple(pred_masks.shape[-2:]),
            num_classes,
            device=pred_masks.device,
            dtype=dtype,
            subsample_masks=not self.mask_loss_at_input_resolution,
        )
        num_boxes = average_num_boxes(targets.valid)

        loss, loss_dict, matched_per_layer = 0.0, {}, []
        for suffix, layer in named_layers:
            predictions = [layer[key].to(dtype) for key in ("logits", "pred_boxes", "pred_masks")]
            if self.mask_loss_at_input_resolution:
                predictions[2] = upsample_mask_logits(predictions[2], tuple(targets.masks.shape[-2:]))
            matched = self.matcher(*predictions, targets)
            for name, value in self._layer_losses(*predictions, targets, matched, num_boxes).items():
                loss_dict[name + suffix] = value
                loss = loss + self.loss_coefficients[name] * value
            matched_per_layer.append(matched)
        matched_query_indices = torch.stack(matched_per_layer[1:] + matched_per_layer[:1])
        return loss, loss_dict, matched_query_indices

    def _layer_losses(self, logits, pred_boxes, pred_masks, targets, matched, num_boxes) -> dict[str, torch.Tensor]:
        _, _, num_queries, num_classes = logits.shape
        # Positive: the matched query, on visible frames, in the target class column (column 0 with one class).
        query_one_hot = F.one_hot(matched, num_queries)[:, None, :, None]
        class_one_hot = F.one_hot(targets.class_labels, num_classes)[:, :, None, :]
        class_targets = (query_one_hot * class_one_hot * targets.valid[:, :, None, None]).to(logits.dtype)
        loss_ce = sigmoid_focal_loss(logits, class_targets, self.focal_alpha).sum() / num_boxes

        matched_boxes = _select_query(pred_boxes, matched)  # [B, T, 4]
        loss_bbox = (matched_boxes - targets.boxes).abs().sum() / num_boxes
        giou = generalized_box_iou(box_cxcywh_to_xyxy(matched_boxes), box_cxcywh_to_xyxy(targets.boxes))
        loss_giou = (1 - giou).sum() / num_boxes

        matched_masks = _select_query(pred_masks, matched).flatten(1)  # [B, T*h*w]
        target_masks = targets.masks.flatten(1)
        loss_mask = sigmoid_focal_loss(matched_masks, target_masks, FIXED_FOCAL_ALPHA).mean(1).sum() / num_boxes
        loss_dice = (1 - dice_coefficient(matched_masks, target_masks)).sum() / num_boxes
        return dict(zip(LOSS_NAMES, (loss_ce, loss_bbox, loss_giou, loss_mask, loss_dice)))


__all__ = [
    "ReferFormerInstanceSequenceMatcher",
    "ReferFormerLoss",
    "ReferFormerTargets",
    "average_num_boxes",
    "prepare_targets",
]
