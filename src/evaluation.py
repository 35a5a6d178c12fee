"""Evaluation metrics of referring video object segmentation, in exact agreement with the reference code.

* J (region similarity), F (contour accuracy) and the mean / recall / decay statistics reproduce
  `davis2017/metrics.py` and `davis2017/utils.py` of the official DAVIS-2017 evaluation
  (`davisvideochallenge/davis2017-evaluation`), edge cases included.
* The Ref-DAVIS17 protocol reproduces ReferFormer's `inference_davis.py` (four expression sets turned
  into label maps) and `eval_davis.py` (DAVIS-2017 *unsupervised* evaluation of each set), averaged
  over the four sets as reported in the paper.
* The A2D-Sentences / JHMDB-Sentences metrics reproduce MTTR's `metrics.py` (P@K, overall and mean IoU
  with its float32 arithmetic and tie-breaking) and the class-agnostic COCO mask mAP computed with
  pycocotools by ReferFormer's `engine.evaluate_a2d`.

The F measure is computed without rasterised dilations: a boundary pixel is matched when the Euclidean
distance to the nearest boundary pixel of the other mask is at most the dilation radius, which is
exactly membership in the dilation by the disk structuring element the official code uses.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


__all__ = [
    "A2DEvaluator",
    "RefDavisEvaluator",
    "a2d_iou_metrics",
    "a2d_metrics",
    "boundary_map",
    "contour_accuracy",
    "davis_unsupervised_jf",
    "jf_statistics",
    "ref_davis_label_maps",
    "ref_davis_scores",
    "ref_davis_summary",
    "region_similarity",
    "rvos_metric_path",
    "sequence_statistics",
    "top_prediction_index",
]

DAVIS_VOID_LABEL = 255
DAVIS_MAX_PROPOSALS = 20
REF_DAVIS_NUM_RUNS = 4
REF_DAVIS_BACKGROUND_SCORE = 0.1
REF_DAVIS_MASK_THRESHOLD = 0.5
DAVIS_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
IOU_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------


def _as_binary_masks(array, name: str, ndims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Boolean view of a mask array: any non-zero value is foreground, as in the official code.

    Floating-point arrays must only hold 0 and 1, so that a probability map that was not thresholded
    raises instead of being silently read as "everything above 0 is foreground".
    """
    mask = np.asarray(array)
    if mask.ndim not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"`{name}` must be {expected}, got an array of shape {mask.shape}.")
    if mask.ndim >= 2 and (mask.shape[-1] == 0 or mask.shape[-2] == 0):
        raise ValueError(f"`{name}` has an empty spatial size {mask.shape[-2:]}.")
    if mask.dtype == np.bool_:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        return mask != 0
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError(
                f"`{name}` is a floating-point array with values other than 0 and 1. Threshold probability "
                "maps first (e.g. `probabilities > 0.5`)."
            )
        return mask != 0
    raise TypeError(f"`{name}` must be a boolean, integer or 0/1 floating-point array, got dtype {mask.dtype}.")


def _as_strict_binary_masks(array, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """Boolean view of a mask array that must hold only booleans, 0 and 1."""
    mask = np.asarray(array)
    if np.issubdtype(mask.dtype, np.integer) and not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"`{name}` must be binary (booleans, 0 and 1), got values {np.unique(mask)[:8].tolist()}.")
    return _as_binary_masks(mask, name, ndims)


def _check_mask_pair(gt, pred, void) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    gt_mask = _as_binary_masks(gt, "gt")
    pred_mask = _as_binary_masks(pred, "pred")
    if gt_mask.shape != pred_mask.shape:
        raise ValueError(f"`gt` and `pred` shapes differ: {gt_mask.shape} vs {pred_mask.shape}.")
    if void is None:
        return gt_mask, pred_mask, None
    void_mask = _as_binary_masks(void, "void")
    if void_mask.shape != gt_mask.shape:
        raise ValueError(f"`void` shape {void_mask.shape} differs from the mask shape {gt_mask.shape}.")
    return gt_mask, pred_mask, void_mask


def _as_label_maps(array, name: str) -> np.ndarray:
    labels = np.asarray(array)
    if labels.ndim != 3:
        raise ValueError(f"`{name}` must be a [T, H, W] label map, got an array of shape {labels.shape}.")
    if 0 in labels.shape:
        raise ValueError(f"`{name}` is empty (shape {labels.shape}).")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`{name}` must be an integer label map, got dtype {labels.dtype}.")
    if labels.min() < 0:
        raise ValueError(f"`{name}` contains negative labels.")
    return labels


# ---------------------------------------------------------------------------------------------------
# J: region similarity
# ---------------------------------------------------------------------------------------------------


def region_similarity(gt, pred, void=None):
    """Region similarity J (Jaccard index), identical to the official `db_eval_iou`.

    Args:
        gt: ground-truth mask `[H, W]` or `[T, H, W]`; any non-zero value is foreground.
        pred: predicted mask of the same shape (threshold probability maps first).
        void: optional mask of pixels removed from both the intersection and the union.

    Returns:
        A float for a `[H, W]` input, a float64 array of `T` values for a `[T, H, W]` input. A frame whose
        union is empty (both masks empty, or everything void) scores 1.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import region_similarity
    >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True  # a 4x4 square
    >>> pred = np.zeros((8, 8), dtype=bool); pred[2:6, 3:7] = True  # the same square, one pixel to the right
    >>> round(region_similarity(gt, pred), 3)  # 12 shared pixels out of 20
    0.6
    >>> region_similarity(np.stack([gt, gt]), np.stack([pred, gt])).round(3).tolist()  # [T, H, W]: one J per frame
    [0.6, 1.0]

    ```
    """
    gt_mask, pred_mask, void_mask = _check_mask_pair(gt, pred, void)
    intersection = gt_mask & pred_mask
    union = gt_mask | pred_mask
    if void_mask is not None:
        intersection &= ~void_mask
        union &= ~void_mask
    intersection = np.count_nonzero(intersection, axis=(-2, -1))
    union = np.count_nonzero(union, axis=(-2, -1))
    jaccard = np.where(union == 0, 1.0, intersection / np.maximum(union, 1))
    return float(jaccard) if gt_mask.ndim == 2 else jaccard


# ---------------------------------------------------------------------------------------------------
# F: contour accuracy
# ---------------------------------------------------------------------------------------------------


def boundary_map(mask) -> np.ndarray:
    """Boundary map of a mask as the official `_seg2bmap` computes it.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour; the last row
    only compares with the east neighbour, the last column only with the south neighbour and the
    bottom-right pixel is never a boundary, so the image border never creates a boundary.

    Args:
        mask: a mask `[H, W]`, or a stack `[..., H, W]` processed frame by frame.

    Returns:
        A boolean array of the same shape.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import boundary_map
    >>> mask = np.zeros((4, 5), dtype=bool); mask[1:3, 1:4] = True
    >>> boundary_map(mask).astype(int)  # pixels that differ from their east, south or south-east neighbour
    array([[1, 1, 1, 1, 0],
           [1, 0, 0, 1, 0],
           [1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])

    ```
    """
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"`mask` must have at least 2 dimensions [..., H, W], got shape {mask.shape}.")
    seg = _as_binary_masks(mask, "mask", ndims=(mask.ndim,))
    boundary = np.zeros_like(seg)
    core = seg[..., :-1, :-1]
    boundary[..., :-1, :-1] = (core ^ seg[..., :-1, 1:]) | (core ^ seg[..., 1:, :-1]) | (core ^ seg[..., 1:, 1:])
    boundary[..., -1, :-1] = seg[..., -1, :-1] ^ seg[..., -1, 1:]
    boundary[..., :-1, -1] = seg[..., :-1, -1] ^ seg[..., 1:, -1]
    return boundary


def _dilation_radius(frame_shape: tuple[int, int], bound_th) -> int:
    """Dilation radius in pixels, as `f_measure` derives it from `bound_th`."""
    if isinstance(bound_th, bool) or not isinstance(bound_th, numbers.Real):
        raise TypeError(f"`bound_th` must be a real number, got {bound_th!r}.")
    bound_th = float(bound_th)
    if not math.isfinite(bound_th) or bound_th < 0:
        raise ValueError(f"`bound_th` must be a finite non-negative number, got {bound_th}.")
    if bound_th >= 1:
        if not bound_th.is_integer():
            raise ValueError(
                f"`bound_th` >= 1 is a radius in pixels and must be an integer, got {bound_th} (the official code "
                "would build a half-integer disk)."
            )
        return int(bound_th)
    height, width = frame_shape
    # Same float64 operations as `np.ceil(bound_th * np.linalg.norm(shape))`.
    return math.ceil(bound_th * math.sqrt(height * height + width * width))


class _BoundaryPoints:
    """Boundary pixels of a stack of frames, laid out on one plane so that one k-d tree serves every frame.

    Frame `t` is shifted down by `t * (H + radius + 1)` rows, so pixels of different frames are always
    more than `radius` apart and never match each other.
    """

    def __init__(self, frame: np.ndarray, points: np.ndarray, num_frames: int):
        self.frame = frame
        self.points = points
        self.counts = np.bincount(frame, minlength=num_frames)
        self._tree = None

    @classmethod
    def from_masks(cls, masks: np.ndarray, radius: int) -> _BoundaryPoints:
        num_frames, height, width = masks.shape
        frame, offset = np.divmod(np.flatnonzero(boundary_map(masks)), height * width)
        row, col = np.divmod(offset, width)
        points = np.stack([frame * (height + radius + 1) + row, col], axis=1)
        return cls(frame, points, num_frames)

    @classmethod
    def empty(cls, num_frames: int) -> _BoundaryPoints:
        return cls(np.zeros(0, dtype=np.intp), np.zeros((0, 2), dtype=np.intp), num_frames)

    @property
    def tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.points, balanced_tree=False, compact_nodes=False)
        return self._tree

    def count_matched(self, other: _BoundaryPoints, radius: int) -> np.ndarray:
        """Per frame, the number of these points within Euclidean distance `radius` of a point of `other`.

        This is `sum(boundary * dilate(other_boundary, disk(radius)))` of the official code.
        """
        num_frames = len(self.counts)
        if len(self.points) == 0 or len(other.points) == 0:
            return np.zeros(num_frames, dtype=np.intp)
        # The nearest neighbour decides; the bound only prunes the search. Distances are re-checked on
        # the integer coordinates so that no floating-point rounding is involved.
        _, nearest = other.tree.query(self.points, k=1, distance_upper_bound=radius + 0.5)
        found = np.flatnonzero(nearest < len(other.points))
        offsets = self.points[found] - other.points[nearest[found]]
        close = found[np.einsum("ij,ij->i", offsets, offsets) <= radius * radius]
        return np.bincount(self.frame[close], minlength=num_frames)


def _f_measure(pred_points: _BoundaryPoints, gt_points: _BoundaryPoints, radius: int) -> np.ndarray:
    """Per-frame boundary F-measure, with the official empty-boundary rules."""
    n_fg = pred_points.counts
    n_gt = gt_points.counts
    fg_match = pred_points.count_matched(gt_points, radius)
    gt_match = gt_points.count_matched(pred_points, radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        # An empty boundary counts as perfectly precise (prediction) or perfectly recalled (ground truth).
        precision = np.where(n_fg > 0, fg_match / n_fg, 1.0)
        recall = np.where(n_gt > 0, gt_match / n_gt, 1.0)
        total = precision + recall
        return np.where(total > 0, 2 * precision * recall / total, 0.0)


def contour_accuracy(gt, pred, void=None, bound_th=0.008):
    """Contour accuracy F (boundary F-measure), identical to the official `db_eval_boundary`.

    Args:
        gt: ground-truth mask `[H, W]` or `[T, H, W]`; any non-zero value is foreground.
        pred: predicted mask of the same shape (threshold probability maps first).
        void: optional mask; both masks are cleared on void pixels *before* their boundaries are extracted.
        bound_th: below 1, the dilation radius is `ceil(bound_th * sqrt(H**2 + W**2))` pixels; from 1 on,
            it is the radius in pixels itself and must be an integer.

    Returns:
        A float for a `[H, W]` input, a float64 array of `T` values for a `[T, H, W]` input.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import contour_accuracy
    >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True
    >>> pred = np.zeros((8, 8), dtype=bool); pred[2:6, 3:7] = True  # one pixel to the right
    >>> round(contour_accuracy(gt, pred), 3)  # radius ceil(0.008 * sqrt(8**2 + 8**2)) = 1 pixel: all pixels match
    1.0
    >>> round(contour_accuracy(gt, pred, bound_th=0), 3)  # no tolerance: only the boundary pixels that coincide match
    0.5

    ```
    """
    gt_mask, pred_mask, void_mask = _check_mask_pair(gt, pred, void)
    radius = _dilation_radius(gt_mask.shape[-2:], bound_th)
    if void_mask is not None:
        gt_mask = gt_mask & ~void_mask
        pred_mask = pred_mask & ~void_mask
    single_frame = gt_mask.ndim == 2
    if single_frame:
        gt_mask, pred_mask = gt_mask[None], pred_mask[None]
    f = _f_measure(
        _BoundaryPoints.from_masks(pred_mask, radius), _BoundaryPoints.from_masks(gt_mask, radius), radius
    )
    return float(f[0]) if single_frame else f


# ---------------------------------------------------------------------------------------------------
# Statistics and aggregation (DAVIS)
# ---------------------------------------------------------------------------------------------------


def sequence_statistics(values) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame J or F values, as the official `db_statistics`.

    Mean is the NaN-ignoring mean, recall the fraction of frames scoring strictly above 0.5 (NaN frames
    count as failures), decay the mean of the first quarter of the frames minus the mean of the last
    quarter (four overlapping bins). The official code stores the bin edges as uint8: from 256 frames on
    they wrap around and the decay is meaningless (NaN at exactly 256 frames under NumPy 2); this is
    reproduced, with a warning.

    Example:

    ```python
    >>> from referformer.evaluation import sequence_statistics
    >>> mean, recall, decay = sequence_statistics([1.0, 0.9, 0.4, 0.2])  # J of four frames
    >>> round(mean, 3), round(recall, 3), round(decay, 3)  # decay: mean of frames 0-1 minus mean of frames 2-3
    (0.625, 0.5, 0.65)

    ```
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`values` must be a non-empty 1-D sequence, got shape {values.shape}.")
    num_frames = values.size
    if num_frames >= 256:
        warnings.warn(
            f"Decay over {num_frames} frames: the official bin edges are uint8 and wrap around from 256 frames "
            "on, so the decay value (reproduced as the official code computes it) is not meaningful.",
            stacklevel=2,
        )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        edges = (np.round(np.linspace(1, num_frames, 5) + 1e-10) - 1).astype(np.uint8)
        first_bin = values[edges[0] : edges[1] + 1]
        last_bin = values[edges[3] : edges[4] + 1]
        decay = np.nanmean(first_bin) - np.nanmean(last_bin)
    return float(mean), float(recall), float(decay)


def jf_statistics(j_per_object, f_per_object) -> dict[str, float]:
    """Global DAVIS results of one evaluation run from the per-frame J and F of each object.

    Each object (each row, e.g. each (sequence, object) pair or each (video, expression) pair) counts
    equally: statistics are computed per object with `sequence_statistics`, then averaged over objects.

    Args:
        j_per_object: sequence of 1-D arrays, the per-frame J of each object.
        f_per_object: sequence of 1-D arrays, the per-frame F of each object (same lengths).

    Returns:
        `{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}`.

    Example:

    ```python
    >>> from referformer.evaluation import jf_statistics
    >>> j = [[1.0, 0.6], [0.8, 0.6]]  # two objects, two frames each
    >>> f = [[1.0, 0.2], [0.6, 0.6]]
    >>> {key: round(value, 3) for key, value in jf_statistics(j, f).items()}
    {'J&F-Mean': 0.675, 'J-Mean': 0.75, 'J-Recall': 1.0, 'J-Decay': 0.3, 'F-Mean': 0.6, 'F-Recall': 0.75,
     'F-Decay': 0.4}

    ```
    """
    if len(j_per_object) != len(f_per_object):
        raise ValueError(f"Got J for {len(j_per_object)} objects but F for {len(f_per_object)}.")
    if len(j_per_object) == 0:
        raise ValueError("No object to evaluate.")
    j_stats, f_stats = [], []
    for j_values, f_values in zip(j_per_object, f_per_object):
        if np.shape(j_values) != np.shape(f_values):
            raise ValueError(
                f"J and F of an object have different shapes: {np.shape(j_values)} vs {np.shape(f_values)}."
            )
        j_stats.append(sequence_statistics(j_values))
        f_stats.append(sequence_statistics(f_values))
    j_mean, j_recall, j_decay = (np.mean(column) for column in zip(*j_stats))
    f_mean, f_recall, f_decay = (np.mean(column) for column in zip(*f_stats))
    values = ((j_mean + f_mean) / 2.0, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
    return {key: float(value) for key, value in zip(DAVIS_KEYS, values)}


class _DavisSequence:
    """Ground truth of one DAVIS sequence, prepared once for the evaluation of several predictions."""

    def __init__(self, ground_truth):
        labels = _as_label_maps(ground_truth, "ground_truth")
        if labels.max() > DAVIS_VOID_LABEL:
            raise ValueError(f"Ground-truth labels must be at most {DAVIS_VOID_LABEL} (void), got {labels.max()}.")
        self.void = labels == DAVIS_VOID_LABEL
        labels = np.where(self.void, 0, labels)
        # The number of objects is the largest label of the first frame; later, higher ids are background.
        self.num_objects = int(labels[0].max())
        self.object_ids = np.where(labels <= self.num_objects, labels, 0).astype(np.uint8)
        self.shape = labels.shape
        self.radius = _dilation_radius(self.shape[1:], 0.008)
        self.boundaries = [
            _BoundaryPoints.from_masks(self.object_ids == object_id, self.radius)
            for object_id in range(1, self.num_objects + 1)
        ]

    def match(self, prediction, max_proposals: int = DAVIS_MAX_PROPOSALS) -> tuple[np.ndarray, np.ndarray]:
        pred = _as_label_maps(prediction, "prediction")
        if pred.shape != self.shape:
            raise ValueError(f"Prediction shape {pred.shape} differs from the ground-truth shape {self.shape}.")
        num_pred = int(pred.max())
        if num_pred > max_proposals:
            raise ValueError(
                f"The prediction has an id of {num_pred}, above the maximum number of proposals ({max_proposals})."
            )
        num_frames, num_gt = self.shape[0], self.num_objects
        # Missing predicted ids are evaluated as empty masks.
        num_rows = max(num_pred, num_gt)

        # Joint histogram of (predicted id, ground-truth object) over the non-void pixels of each frame.
        num_keys = (num_pred + 1) * (num_gt + 1)
        counts = np.zeros((num_frames, num_rows + 1, num_gt + 1), dtype=np.int64)
        for t in range(num_frames):
            keys = pred[t].astype(np.intp) * (num_gt + 1) + self.object_ids[t]
            keys[self.void[t]] = num_keys
            histogram = np.bincount(keys.ravel(), minlength=num_keys + 1)[:num_keys]
            counts[t, : num_pred + 1] = histogram.reshape(num_pred + 1, num_gt + 1)
        intersection = counts[:, 1:, 1:].transpose(1, 2, 0)
        pred_area = counts[:, 1:, :].sum(axis=2).T
        gt_area = counts[:, :, 1:].sum(axis=1).T
        union = pred_area[:, None, :] + gt_area[None, :, :] - intersection
        j = np.ascontiguousarray(np.where(union == 0, 1.0, intersection / np.maximum(union, 1)), dtype=np.float64)

        valid = ~self.void
        pred_boundaries = [
            _BoundaryPoints.from_masks((pred == pred_id) & valid, self.radius) for pred_id in range(1, num_pred + 1)
        ]
        pred_boundaries += [_BoundaryPoints.empty(num_frames)] * (num_rows - num_pred)
        f = np.empty((num_rows, num_gt, num_frames), dtype=np.float64)
        for row, pred_points in enumerate(pred_boundaries):
            for column, gt_points in enumerate(self.boundaries):
                f[row, column] = _f_measure(pred_points, gt_points, self.radius)

        rows, columns = linear_sum_assignment(-((np.mean(j, axis=2) + np.mean(f, axis=2)) / 2))
        return j[rows, columns], f[rows, columns]


def davis_unsupervised_jf(ground_truth, prediction, max_proposals: int = DAVIS_MAX_PROPOSALS):
    """Per-frame J and F of every ground-truth object of a sequence under the DAVIS-2017 unsupervised protocol.

    Ground-truth pixels labelled 255 are void (removed from J, cleared before boundary extraction for F).
    The number of ground-truth objects is the largest label of the first frame; the number of predicted
    ids is the largest predicted label over all frames (missing ids are empty masks). J and F are computed
    for every (predicted id, object) pair and predicted ids are assigned to objects by maximising the mean
    of (J + F) / 2 with the Hungarian algorithm.

    Args:
        ground_truth: integer label map `[T, H, W]` (0 background, k object k, 255 void).
        prediction: integer label map `[T, H, W]` (0 background, k predicted id k).
        max_proposals: more predicted ids than this is an error (the official script exits).

    Returns:
        `(j, f)`, two float64 arrays `[num_objects, T]`, rows in the official order (by matched predicted id).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import davis_unsupervised_jf
    >>> gt = np.zeros((2, 8, 8), dtype=np.uint8); gt[:, 1:4, 1:4] = 1; gt[:, 5:8, 5:8] = 2  # two objects
    >>> pred = gt.copy(); pred[1, 5:8, 4:8] = 2  # object 2 one column too wide in frame 1
    >>> j, f = davis_unsupervised_jf(gt, pred)
    >>> j.round(3).tolist(), f.round(3).tolist()  # [num_objects, T]; the extra column is within F's 1-pixel tolerance
    ([[1.0, 1.0], [1.0, 0.75]], [[1.0, 1.0], [1.0, 1.0]])

    ```
    """
    return _DavisSequence(ground_truth).match(prediction, max_proposals=max_proposals)


# ---------------------------------------------------------------------------------------------------
# Ref-DAVIS17
# ---------------------------------------------------------------------------------------------------


def ref_davis_label_maps(expression_probabilities) -> list[np.ndarray]:
    """The four `anno_k` label maps of one video from its per-expression probability maps.

    Reproduces ReferFormer's `inference_davis.py`: expression `4 * obj + k` is object `obj + 1` as described
    by annotator set `k`; for each set, probabilities below 0.5 are set to 0, a constant background of 0.1
    is prepended and the argmax (first maximum on ties) gives the label of each pixel.

    Args:
        expression_probabilities: the sigmoid probability maps `[T, H, W]` of all expressions of the video, in
            expression order (a sequence, or a mapping expression id -> map in insertion order). Pass the
            float32 maps of the model to reproduce exact ties between objects.

    Returns:
        Four uint8 label maps `[T, H, W]`, one per annotator set.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import ref_davis_label_maps
    >>> first = np.array([[[0.9, 0.7, 0.2, 0.1]]], dtype=np.float32)  # [T=1, H=1, W=4]
    >>> second = np.array([[[0.1, 0.8, 0.6, 0.3]]], dtype=np.float32)
    >>> expressions = [first, first, first, np.zeros_like(first)] + [second] * 4  # 4 per object; set 3 misses object 1
    >>> [labels.ravel().tolist() for labels in ref_davis_label_maps(expressions)]
    [[1, 2, 2, 0], [1, 2, 2, 0], [1, 2, 2, 0], [0, 2, 2, 0]]

    ```
    """
    if isinstance(expression_probabilities, Mapping):
        expression_probabilities = list(expression_probabilities.values())
    maps = [np.asarray(probabilities) for probabilities in expression_probabilities]
    if len(maps) == 0 or len(maps) % REF_DAVIS_NUM_RUNS:
        raise ValueError(
            f"Ref-DAVIS17 has {REF_DAVIS_NUM_RUNS} expressions per object, got {len(maps)} probability maps."
        )
    num_objects = len(maps) // REF_DAVIS_NUM_RUNS
    if num_objects > 255:
        raise ValueError(f"At most 255 objects fit a uint8 label map, got {num_objects}.")
    shape = maps[0].shape
    for index, probabilities in enumerate(maps):
        if probabilities.ndim != 3 or probabilities.shape != shape:
            raise ValueError(f"Probability map {index} has shape {probabilities.shape}, expected a [T, H, W] {shape}.")
        if not np.issubdtype(probabilities.dtype, np.floating):
            raise TypeError(f"Probability map {index} must be floating-point, got dtype {probabilities.dtype}.")
        if not np.all((probabilities >= 0) & (probabilities <= 1)):
            raise ValueError(f"Probability map {index} has values outside [0, 1] (or NaN).")
    # The background map is built in the maps' precision, like the original's float32 `0.1 * ones`.
    dtype = np.result_type(*maps)
    label_maps = []
    for run in range(REF_DAVIS_NUM_RUNS):
        labels = np.zeros(shape, dtype=np.uint8)
        best = np.full(shape, REF_DAVIS_BACKGROUND_SCORE, dtype=dtype)
        for obj in range(num_objects):
            probabilities = maps[REF_DAVIS_NUM_RUNS * obj + run].astype(dtype, copy=False)
            scores = np.where(probabilities < REF_DAVIS_MASK_THRESHOLD, 0, probabilities)
            # A strict comparison keeps the earlier candidate on ties, like argmax.
            better = scores > best
            labels[better] = obj + 1
            best[better] = scores[better]
        label_maps.append(labels)
    return label_maps


def ref_davis_summary(per_run: Sequence[Mapping[str, float]]) -> dict:
    """Average the global results of the four Ref-DAVIS17 runs, as the reported numbers are.

    Example:

    ```python
    >>> from referformer.evaluation import jf_statistics, ref_davis_summary
    >>> per_run = [jf_statistics([[j, j]], [[1.0, 1.0]]) for j in (1.0, 0.8, 0.6, 0.6)]  # one object, F = 1
    >>> summary = ref_davis_summary(per_run)
    >>> round(summary["J-Mean"], 3), round(summary["J&F-Mean"], 3), len(summary["per_run"])
    (0.75, 0.875, 4)

    ```
    """
    if len(per_run) != REF_DAVIS_NUM_RUNS:
        raise ValueError(f"Ref-DAVIS17 averages {REF_DAVIS_NUM_RUNS} runs, got {len(per_run)}.")
    summary = {key: float(np.mean([run[key] for run in per_run])) for key in DAVIS_KEYS}
    summary["per_run"] = [{key: float(run[key]) for key in DAVIS_KEYS} for run in per_run]
    return summary


class RefDavisEvaluator:
    """Streaming Ref-DAVIS17 evaluation: the DAVIS-2017 unsupervised protocol on each of the four
    expression sets, averaged over the sets.

    Sequences are added one by one; only their per-frame J and F are kept.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import RefDavisEvaluator
    >>> labels = np.zeros((2, 8, 8), dtype=np.uint8); labels[:, 2:6, 2:6] = 1  # one object, two frames
    >>> found = (labels == 1).astype(np.float32)  # the probability map of an expression that finds it
    >>> evaluator = RefDavisEvaluator()
    >>> evaluator.add_probabilities("square", labels, [found, found, found, np.zeros_like(found)])  # its 4 expressions
    >>> scores = evaluator.compute()
    >>> round(scores["J&F-Mean"], 3), [round(run["J&F-Mean"], 3) for run in scores["per_run"]]
    (0.75, [1.0, 1.0, 1.0, 0.0])

    ```
    """

    def __init__(self):
        self._results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self._results)

    def add(self, sequence: str, ground_truth, predictions) -> None:
        """Add one sequence: its label map `[T, H, W]` (255 void) and the four predicted label maps."""
        if sequence in self._results:
            raise ValueError(f"Sequence {sequence!r} was already added.")
        if isinstance(predictions, (str, bytes, Mapping)):
            raise TypeError(f"`predictions` must be a list of {REF_DAVIS_NUM_RUNS} label maps for {sequence!r}.")
        predictions = list(predictions)
        if len(predictions) != REF_DAVIS_NUM_RUNS:
            raise ValueError(
                f"Expected {REF_DAVIS_NUM_RUNS} predicted label maps (one per expression set) for {sequence!r}, "
                f"got {len(predictions)}."
            )
        gt = _DavisSequence(ground_truth)
        self._results[sequence] = [gt.match(prediction) for prediction in predictions]

    def add_probabilities(self, sequence: str, ground_truth, expression_probabilities) -> None:
        """Add one sequence from the probability maps of all its expressions (see `ref_davis_label_maps`)."""
        self.add(sequence, ground_truth, ref_davis_label_maps(expression_probabilities))

    def compute(self, sequence_order: Sequence[str] | None = None) -> dict:
        """Averaged global results, plus `per_run` (the global results of each expression set).

        Args:
            sequence_order: the sequences to evaluate, in the order of the official sequence list (objects are
                averaged in that order, which fixes the last bits of the means). Defaults to all added
                sequences, in the order they were added. Added sequences not listed are ignored.
        """
        if sequence_order is None:
            sequence_order = list(self._results)
        missing = [name for name in sequence_order if name not in self._results]
        if missing:
            raise KeyError(f"No prediction was added for sequences {missing}.")
        per_run = []
        for run in range(REF_DAVIS_NUM_RUNS):
            j_rows = [row for name in sequence_order for row in self._results[name][run][0]]
            f_rows = [row for name in sequence_order for row in self._results[name][run][1]]
            if not j_rows:
                raise ValueError("No ground-truth object to evaluate (no sequence, or no object in any first frame).")
            per_run.append(jf_statistics(j_rows, f_rows))
        return ref_davis_summary(per_run)


def ref_davis_scores(ground_truth: Mapping, predictions: Sequence[Mapping]) -> dict:
    """Ref-DAVIS17 scores: the DAVIS-2017 unsupervised protocol on each expression set, averaged.

    Args:
        ground_truth: sequence name -> label map `[T, H, W]` (0 background, k object k, 255 void), in the
            order of the official sequence list.
        predictions: four mappings (expression sets `anno_0` .. `anno_3`) sequence name -> predicted label
            map `[T, H, W]`. Sequences absent from `ground_truth` are ignored, as in the official script.

    Returns:
        `{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}` averaged over the
        four runs (fractions, not percentages), and `per_run` with the same keys for each run.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import ref_davis_scores
    >>> labels = np.zeros((2, 8, 8), dtype=np.uint8); labels[:, 1:4, 1:4] = 1; labels[:, 5:8, 5:8] = 2
    >>> swapped = np.where(labels == 0, 0, 3 - labels).astype(np.uint8)  # ids swapped: still matched perfectly
    >>> only_first = np.where(labels == 1, 1, 0).astype(np.uint8)  # object 2 missed
    >>> predictions = [{"squares": pred} for pred in (swapped, only_first, swapped, swapped)]  # one per expression set
    >>> scores = ref_davis_scores({"squares": labels}, predictions)
    >>> round(scores["J&F-Mean"], 3), [round(run["J-Mean"], 3) for run in scores["per_run"]]
    (0.875, [1.0, 0.5, 1.0, 1.0])

    ```
    """
    if not isinstance(ground_truth, Mapping):
        raise TypeError("`ground_truth` must be a mapping sequence name -> label map.")
    if isinstance(predictions, Mapping) or len(predictions) != REF_DAVIS_NUM_RUNS:
        raise ValueError(f"`predictions` must be a list of {REF_DAVIS_NUM_RUNS} mappings, one per expression set.")
    for run, prediction in enumerate(predictions):
        missing = [name for name in ground_truth if name not in prediction]
        if missing:
            raise KeyError(f"Expression set {run} has no prediction for sequences {missing}.")
    evaluator = RefDavisEvaluator()
    for name, labels in ground_truth.items():
        evaluator.add(name, labels, [prediction[name] for prediction in predictions])
    return evaluator.compute()


# ---------------------------------------------------------------------------------------------------
# A2D-Sentences / JHMDB-Sentences
# ---------------------------------------------------------------------------------------------------


def top_prediction_index(scores) -> int:
    """Index of the prediction used for P@K and IoU: the highest score, the *last* one on ties.

    This is `sorted(predictions, key=score)[-1]` of the reference code (the opposite of COCOeval's order).

    Example:

    ```python
    >>> from referformer.evaluation import top_prediction_index
    >>> top_prediction_index([0.2, 0.9, 0.9])  # a tie: the last one wins
    2

    ```
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"`scores` must be a non-empty 1-D sequence, got shape {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("`scores` must be finite.")
    return int(scores.size - 1 - np.argmax(scores[::-1]))


def a2d_iou_metrics(intersections, unions) -> dict[str, float]:
    """P@0.5..0.9, overall IoU and mean IoU from the intersection and union areas of the top predictions.

    The per-sample IoU is `(I + 1e-6) / (U + 1e-6)` in float32 as the reference computes it in torch (an
    empty prediction against an empty ground truth scores 1, and float32 rounding decides exact ties
    such as 0.6 or 0.7); P@K counts IoUs strictly above K; overall IoU is `sum(I) / sum(U)`.

    Example:

    ```python
    >>> from referformer.evaluation import a2d_iou_metrics
    >>> metrics = a2d_iou_metrics(intersections=[15, 10, 0], unions=[20, 16, 10])  # IoUs 0.75, 0.625, 0
    >>> {key: round(value, 3) for key, value in metrics.items()}
    {'P@0.5': 0.667, 'P@0.6': 0.667, 'P@0.7': 0.333, 'P@0.8': 0.0, 'P@0.9': 0.0, 'overall_iou': 0.543,
     'mean_iou': 0.458}

    ```
    """
    intersections = np.asarray(intersections)
    unions = np.asarray(unions)
    if intersections.ndim != 1 or intersections.shape != unions.shape or intersections.size == 0:
        raise ValueError(
            f"`intersections` and `unions` must be non-empty 1-D sequences of the same length, got shapes "
            f"{intersections.shape} and {unions.shape}."
        )
    if not (np.issubdtype(intersections.dtype, np.integer) and np.issubdtype(unions.dtype, np.integer)):
        raise TypeError("`intersections` and `unions` must be integer pixel counts.")
    if np.any(intersections < 0) or np.any(intersections > unions):
        raise ValueError("Pixel counts must satisfy 0 <= intersection <= union.")
    eps = np.float32(IOU_EPS)
    ious = ((intersections.astype(np.float32) + eps) / (unions.astype(np.float32) + eps)).astype(np.float64)
    total_union = int(unions.sum())
    if total_union == 0:
        raise ValueError("The overall IoU is undefined: every prediction and ground-truth mask is empty.")
    metrics = {f"P@{k}": int(np.count_nonzero(ious > k)) / ious.size for k in PRECISION_THRESHOLDS}
    metrics["overall_iou"] = float(int(intersections.sum())) / float(total_union)
    metrics["mean_iou"] = float(np.mean(ious))
    return metrics


def _coco_mask_stats(images: list[dict], annotations: list[dict], results: list[dict]) -> list[float]:
    """The 12 COCOeval mask statistics, class-agnostic (`useCats = 0`), as the reference runs it."""
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [dict(image) for image in images],
        "annotations": [dict(annotation) for annotation in annotations],
        "categories": [{"id": 1, "name": "dummy_class"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_pred = coco_gt.loadRes([dict(result) for result in results])
        coco_eval = COCOeval(coco_gt, coco_pred, iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(value) for value in coco_eval.stats]


class A2DEvaluator:
    """Streaming A2D-Sentences / JHMDB-Sentences evaluation (P@K, overall / mean IoU, COCO mask mAP).

    Each sample is one annotated frame and one referred object. All queries' masks are kept (RLE-encoded)
    for the mAP; the top-scoring one gives the IoU metrics.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import A2DEvaluator
    >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True
    >>> evaluator = A2DEvaluator()
    >>> evaluator.add("v_abc_f_12_i_0", gt, np.stack([gt, ~gt]), scores=[0.9, 0.2])  # the top query is right
    >>> evaluator.add("v_abc_f_15_i_0", gt, np.stack([gt, ~gt]), scores=[0.4, 0.7])  # the top query is wrong
    >>> metrics = evaluator.compute()  # the mAP scores every query; top1_only=True only the top ones
    >>> metrics["P@0.5"], round(metrics["mAP"], 3), round(evaluator.compute(top1_only=True)["mAP"], 3)
    (0.5, 0.835, 0.505)

    ```
    """

    def __init__(self):
        self._images: list[dict] = []
        self._annotations: list[dict] = []
        self._results: list[dict] = []
        self._top_results: list[int] = []
        self._intersections: list[int] = []
        self._unions: list[int] = []
        self._sample_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._images)

    def add(self, image_id: str, gt, pred_masks, scores) -> None:
        """Add one sample.

        Args:
            image_id: unique string id, e.g. `v_<video>_f_<frame>_i_<instance>` (A2D) or `v_<video>_f_<frame>` (JHMDB).
            gt: binary ground-truth mask `[H, W]` at the original resolution.
            pred_masks: binary masks `[N, H, W]` of all queries, already thresholded and at the original resolution.
            scores: `[N]` scores of the queries.
        """
        if not isinstance(image_id, str):
            raise TypeError(f"`image_id` must be a string, got {type(image_id).__name__}.")
        if image_id in self._sample_index:
            raise ValueError(f"Image id {image_id!r} was already added; each sample needs a unique id.")
        gt_mask = _as_strict_binary_masks(gt, "gt", ndims=(2,))
        pred = _as_strict_binary_masks(pred_masks, "pred_masks", ndims=(3,))
        if pred.shape[0] == 0:
            raise ValueError(f"Sample {image_id!r} has no prediction.")
        if pred.shape[1:] != gt_mask.shape:
            raise ValueError(
                f"Sample {image_id!r}: prediction size {pred.shape[1:]} differs from the ground truth {gt_mask.shape}."
            )
        scores = np.asarray(scores)
        if scores.shape != (pred.shape[0],):
            raise ValueError(f"Sample {image_id!r}: expected {pred.shape[0]} scores, got shape {scores.shape}.")
        top = top_prediction_index(scores)

        gt_rle = mask_utils.encode(np.asfortranarray(gt_mask.astype(np.uint8)))
        gt_rle["counts"] = gt_rle["counts"].decode("ascii")
        pred_rles = mask_utils.encode(np.asfortranarray(pred.transpose(1, 2, 0).astype(np.uint8)))
        self._sample_index[image_id] = len(self._images)
        self._images.append({"id": image_id, "height": gt_mask.shape[0], "width": gt_mask.shape[1]})
        self._annotations.append(
            {
                "id": len(self._annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": gt_rle,
                "area": float(mask_utils.area(gt_rle)),
                "iscrowd": 0,
            }
        )
        self._top_results.append(len(self._results) + top)
        for rle, score in zip(pred_rles, scores.tolist()):
            self._results.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)})
        self._intersections.append(int(np.count_nonzero(pred[top] & gt_mask)))
        self._unions.append(int(np.count_nonzero(pred[top] | gt_mask)))

    def compute(self, top1_only: bool = False, image_order: Sequence[str] | None = None) -> dict:
        """P@0.5..0.9, `overall_iou`, `mean_iou`, `mAP` (COCO AP@[.5:.95]) and the 12 `coco_stats`.

        Args:
            top1_only: score only the top prediction of each sample for the mAP (by default all are scored,
                as the reference does).
            image_order: every image id, in the order of the ground-truth file (per-sample IoUs are averaged
                in that order, which fixes the last bits of `mean_iou`). Defaults to the order of `add`.
        """
        if not self._images:
            raise ValueError("No sample to evaluate.")
        if image_order is None:
            order = range(len(self._images))
        else:
            image_order = list(image_order)
            missing = [image_id for image_id in image_order if image_id not in self._sample_index]
            if missing:
                raise KeyError(f"No prediction was added for {len(missing)} images, e.g. {missing[:3]}.")
            if len(set(image_order)) != len(image_order) or len(image_order) != len(self._images):
                raise ValueError("`image_order` must list every added image id exactly once.")
            order = [self._sample_index[image_id] for image_id in image_order]
        metrics = a2d_iou_metrics(
            np.array([self._intersections[index] for index in order], dtype=np.int64),
            np.array([self._unions[index] for index in order], dtype=np.int64),
        )
        results = [self._results[index] for index in self._top_results] if top1_only else self._results
        stats = _coco_mask_stats(self._images, self._annotations, results)
        metrics["mAP"] = stats[0]
        metrics["coco_stats"] = stats
        return metrics


def a2d_metrics(samples, top1_only: bool = False) -> dict:
    """A2D-Sentences / JHMDB-Sentences metrics of a list of samples.

    Args:
        samples: iterable of dicts with `image_id` (str), `gt` `[H, W]`, `pred_masks` `[N, H, W]` (binary, at the
            original resolution) and `scores` `[N]`.
        top1_only: score only the top prediction of each sample for the mAP.

    Returns:
        `P@0.5` .. `P@0.9`, `overall_iou`, `mean_iou`, `mAP` and `coco_stats` (see `A2DEvaluator.compute`).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.evaluation import a2d_metrics
    >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True  # 16 pixels
    >>> wide = np.zeros((8, 8), dtype=bool); wide[2:6, 1:7] = True  # 24 pixels covering them: IoU 2/3
    >>> sample = {"image_id": "v_abc_f_12_i_0", "gt": gt, "pred_masks": np.stack([wide, ~gt]), "scores": [0.8, 0.3]}
    >>> metrics = a2d_metrics([sample])
    >>> metrics["P@0.6"], metrics["P@0.7"], round(metrics["overall_iou"], 3), round(metrics["mAP"], 3)
    (1.0, 0.0, 0.667, 0.4)

    ```
    """
    evaluator = A2DEvaluator()
    for sample in samples:
        missing = {"image_id", "gt", "pred_masks", "scores"} - set(sample)
        if missing:
            raise KeyError(f"Sample is missing the keys {sorted(missing)}.")
        evaluator.add(sample["image_id"], sample["gt"], sample["pred_masks"], sample["scores"])
    return evaluator.compute(top1_only=top1_only)


# ---------------------------------------------------------------------------------------------------
# `evaluate` module
# ---------------------------------------------------------------------------------------------------


def rvos_metric_path() -> str:
    """Local path of the `evaluate` module wrapping these metrics: `evaluate.load(rvos_metric_path())`.

    Example:

    ```python
    >>> import evaluate, numpy as np
    >>> from referformer.evaluation import rvos_metric_path
    >>> metric = evaluate.load(rvos_metric_path())  # one [T, H, W] prediction and ground truth per (video, expression)
    >>> gt = np.zeros((2, 8, 8), dtype=bool); gt[:, 2:6, 2:6] = True
    >>> pred = gt.copy(); pred[1] = np.roll(gt[1], 1, axis=1)  # one pixel to the right in frame 1
    >>> results = metric.compute(predictions=[pred], references=[gt])
    >>> round(results["J&F"], 3), round(results["J"], 3), round(results["F"], 3)
    (0.9, 0.8, 1.0)

    ```
    """
    return str(Path(__file__).resolve().parent / "evaluate_metrics" / "rvos")
