"""Tests of `referformer.evaluation` and `referformer.evaluation_protocols`.

Expected values are derived by hand on small arrays (see the comments). Randomised cases are checked
against `_reference_*` helpers, direct dense transcriptions of the official definitions (boundary map
with zero-filled shifts, dilation by a `disk(r)` structuring element, per-pair loops and Hungarian
matching), which the fast implementation must match bit for bit.
"""

import json
import math
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from referformer import ReferFormerVideoProcessor
from referformer.evaluation import (
    A2DEvaluator,
    RefDavisEvaluator,
    a2d_iou_metrics,
    a2d_metrics,
    boundary_map,
    contour_accuracy,
    davis_unsupervised_jf,
    jf_statistics,
    ref_davis_label_maps,
    ref_davis_scores,
    region_similarity,
    rvos_metric_path,
    sequence_statistics,
    top_prediction_index,
)
from referformer.evaluation_protocols import (
    evaluate_a2d,
    group_by_video,
    post_process_a2d_masks,
    evaluate_ref_davis,
    evaluate_ytvos_folder,
    write_ytvos_submission,
)


# ---------------------------------------------------------------------------------------------------
# Dense reference transcriptions of the official definitions
# ---------------------------------------------------------------------------------------------------


def _reference_boundary(seg):
    seg = seg.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _reference_disk(radius):
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return x**2 + y**2 <= radius**2


def _reference_f(gt, pred, void=None, bound_th=0.008):
    void = np.zeros(gt.shape, dtype=bool) if void is None else void.astype(bool)
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(gt.shape))
    pred_boundary = _reference_boundary(pred.astype(bool) & ~void)
    gt_boundary = _reference_boundary(gt.astype(bool) & ~void)
    disk = _reference_disk(int(radius))
    pred_dilated = ndimage.binary_dilation(pred_boundary, structure=disk)
    gt_dilated = ndimage.binary_dilation(gt_boundary, structure=disk)
    n_fg, n_gt = pred_boundary.sum(), gt_boundary.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(pred_boundary & gt_dilated) / float(n_fg)
        recall = np.sum(gt_boundary & pred_dilated) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _reference_j(gt, pred, void=None):
    gt, pred = gt.astype(bool), pred.astype(bool)
    valid = np.ones(gt.shape, dtype=bool) if void is None else ~void.astype(bool)
    intersection = np.sum(gt & pred & valid, axis=(-2, -1))
    union = np.sum((gt | pred) & valid, axis=(-2, -1))
    with np.errstate(invalid="ignore"):
        return np.where(union == 0, 1.0, intersection / union)


def _reference_unsupervised(gt_labels, pred_labels):
    labels = gt_labels.astype(np.int64)
    void = labels == 255
    labels[void] = 0
    num_gt = labels[0].max()
    gt = np.stack([labels == k for k in range(1, num_gt + 1)]) if num_gt else np.zeros((0, *labels.shape), bool)
    num_pred = pred_labels.max()
    rows = max(num_pred, num_gt)
    pred = np.stack([pred_labels == k for k in range(1, rows + 1)]) if rows else np.zeros((0, *labels.shape), bool)
    j = np.zeros((rows, num_gt, labels.shape[0]))
    f = np.zeros_like(j)
    for obj in range(num_gt):
        for row in range(rows):
            j[row, obj] = _reference_j(gt[obj], pred[row], void)
            f[row, obj] = [_reference_f(gt[obj][t], pred[row][t], void[t]) for t in range(labels.shape[0])]
    row_ind, col_ind = linear_sum_assignment(-((np.mean(j, axis=2) + np.mean(f, axis=2)) / 2))
    return j[row_ind, col_ind], f[row_ind, col_ind]


def _random_masks(rng, shape, smooth):
    if not smooth:
        return rng.random(shape) < rng.random()
    field = ndimage.gaussian_filter(rng.random(shape), sigma=[0] * (len(shape) - 2) + [1.5, 1.5])
    return field > np.quantile(field, rng.uniform(0.2, 0.9))


# ---------------------------------------------------------------------------------------------------
# Boundary map
# ---------------------------------------------------------------------------------------------------


def _points(mask):
    return set(zip(*np.nonzero(mask)))


def test_boundary_of_single_pixels():
    mask = np.zeros((6, 7), dtype=bool)
    mask[3, 4] = True  # interior pixel: itself, left, upper and upper-left neighbours
    assert _points(boundary_map(mask)) == {(2, 3), (2, 4), (3, 3), (3, 4)}

    mask = np.zeros((6, 7), dtype=bool)
    mask[0, 0] = True  # top-left corner: only itself
    assert _points(boundary_map(mask)) == {(0, 0)}

    mask = np.zeros((6, 7), dtype=bool)
    mask[5, 6] = True  # bottom-right corner: itself is forced to 0, its three upper-left neighbours remain
    assert _points(boundary_map(mask)) == {(4, 5), (4, 6), (5, 5)}


def test_boundary_never_on_image_border():
    assert not boundary_map(np.ones((5, 6), dtype=bool)).any()
    assert not boundary_map(np.zeros((5, 6), dtype=bool)).any()

    # A block touching the right and bottom edges: boundary only on its top and left sides (outside pixels).
    mask = np.zeros((5, 6), dtype=bool)
    mask[2:, 3:] = True
    expected = {(1, c) for c in range(2, 6)} | {(r, 2) for r in range(1, 5)}
    assert _points(boundary_map(mask)) == expected

    # A block touching the top and left edges: boundary on its own right column and bottom row.
    mask = np.zeros((5, 5), dtype=bool)
    mask[:3, :3] = True
    assert _points(boundary_map(mask)) == {(0, 2), (1, 2), (2, 2), (2, 0), (2, 1)}


def test_boundary_of_checkerboard_equals_boundary_of_complement():
    checkerboard = (np.indices((6, 8)).sum(axis=0) % 2).astype(bool)
    np.testing.assert_array_equal(boundary_map(checkerboard), boundary_map(~checkerboard))
    # Every pixel but the bottom-right one differs from its east or south neighbour.
    assert boundary_map(checkerboard).sum() == 6 * 8 - 1


def test_boundary_matches_reference_and_stacks():
    rng = np.random.default_rng(0)
    stack = np.stack([_random_masks(rng, (9, 13), smooth=t % 2 == 0) for t in range(6)])
    stacked = boundary_map(stack)
    for t in range(6):
        np.testing.assert_array_equal(stacked[t], _reference_boundary(stack[t]))
    for shape in [(1, 1), (1, 7), (7, 1), (2, 2)]:
        mask = rng.random(shape) < 0.5
        np.testing.assert_array_equal(boundary_map(mask), _reference_boundary(mask))


# ---------------------------------------------------------------------------------------------------
# J
# ---------------------------------------------------------------------------------------------------


def test_region_similarity_hand_values():
    empty = np.zeros((4, 5), dtype=bool)
    gt = empty.copy()
    gt[1, 1:3] = True  # 2 pixels
    pred = empty.copy()
    pred[1, 2:4] = True  # 2 pixels, 1 shared -> 1 / 3
    assert region_similarity(empty, empty) == 1.0
    assert isinstance(region_similarity(empty, empty), float)
    assert region_similarity(gt, empty) == 0.0
    assert region_similarity(empty, gt) == 0.0
    assert region_similarity(gt, pred) == 1 / 3
    assert region_similarity(pred, gt) == 1 / 3
    assert region_similarity(np.ones((3, 3)), np.ones((3, 3))) == 1.0


def test_region_similarity_void_and_foreground_values():
    gt = np.zeros((4, 5), dtype=np.uint8)
    gt[0, :2] = 255  # any non-zero value is foreground
    pred = np.zeros((4, 5), dtype=np.int64)
    pred[0, :2] = 7
    pred[3, 4] = 1  # a false positive...
    void = np.zeros((4, 5), dtype=bool)
    void[3, 4] = True  # ...inside the void region
    assert region_similarity(gt, pred) == 2 / 3
    assert region_similarity(gt, pred, void) == 1.0
    # Everything void: the union is empty, J = 1.
    assert region_similarity(gt, pred, np.ones((4, 5), dtype=bool)) == 1.0


def test_region_similarity_sequence():
    gt = np.zeros((3, 4, 4), dtype=bool)
    pred = np.zeros((3, 4, 4), dtype=bool)
    gt[0, :2, :2] = True
    pred[0, :2, :1] = True  # frame 0: 2 / 4
    gt[1, 0, 0] = True  # frame 1: 0
    # frame 2: both empty -> 1
    values = region_similarity(gt, pred)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [0.5, 0.0, 1.0])


def test_region_similarity_input_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        region_similarity(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        region_similarity(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="Threshold probability maps"):
        region_similarity(np.zeros((4, 5)), np.full((4, 5), 0.3))
    with pytest.raises(ValueError, match="void"):
        region_similarity(np.zeros((4, 5)), np.zeros((4, 5)), void=np.zeros((4, 4)))
    with pytest.raises(TypeError):
        region_similarity(np.full((2, 2), "a"), np.full((2, 2), "a"))


# ---------------------------------------------------------------------------------------------------
# F
# ---------------------------------------------------------------------------------------------------


def test_contour_accuracy_empty_and_full_cases():
    empty = np.zeros((8, 9), dtype=bool)
    full = np.ones((8, 9), dtype=bool)
    block = empty.copy()
    block[2:5, 3:6] = True
    assert contour_accuracy(empty, empty) == 1.0  # both boundaries empty
    assert contour_accuracy(full, full) == 1.0
    assert contour_accuracy(block, block) == 1.0
    assert contour_accuracy(block, empty) == 0.0  # P = 1, R = 0
    assert contour_accuracy(empty, block) == 0.0  # P = 0, R = 1
    # A full prediction against an empty ground truth: no boundary at all, F = 1 although J = 0.
    assert contour_accuracy(empty, full) == 1.0 and region_similarity(empty, full) == 0.0
    # A 1x1 image never has a boundary.
    assert contour_accuracy(np.zeros((1, 1)), np.ones((1, 1))) == 1.0
    # A 1-pixel checkerboard against its complement: same boundary, F = 1, J = 0.
    checkerboard = (np.indices((6, 8)).sum(axis=0) % 2).astype(bool)
    assert contour_accuracy(checkerboard, ~checkerboard) == 1.0
    assert region_similarity(checkerboard, ~checkerboard) == 0.0
    # A one-pixel hole in a full prediction: J almost 1, but the ground truth has no boundary, so F = 0.
    holed = full.copy()
    holed[4, 4] = False
    assert region_similarity(full, holed) == 71 / 72
    assert contour_accuracy(full, holed) == 0.0


def _radius_probe(shape, bound_th, radius):
    """F of a ground-truth pixel at (0, 0) (boundary {(0, 0)}) against a predicted pixel at (0, radius + 1)
    (boundary {(0, radius), (0, radius + 1)}): exactly one predicted boundary pixel is within `radius`, so
    P = 1/2, R = 1 and F = 2/3 if and only if the dilation radius is `radius`."""
    gt = np.zeros(shape, dtype=bool)
    gt[0, 0] = True
    pred = np.zeros(shape, dtype=bool)
    pred[0, radius + 1] = True
    return contour_accuracy(gt, pred, bound_th=bound_th)


@pytest.mark.parametrize(
    "shape, radius",
    [
        ((37, 53), 1),
        ((64, 64), 1),
        ((100, 37), 1),
        ((120, 213), 2),
        ((200, 200), 3),
        ((240, 427), 4),
        ((480, 854), 8),
        ((720, 1280), 12),
    ],
)
def test_dilation_radius_from_image_diagonal(shape, radius):
    assert radius == math.ceil(0.008 * math.hypot(*shape))
    assert _radius_probe(shape, 0.008, radius) == 2 * 0.5 * 1.0 / 1.5


def test_dilation_radius_in_pixels_and_zero():
    assert _radius_probe((20, 30), 3, 3) == 2 * 0.5 * 1.0 / 1.5
    assert _radius_probe((20, 30), 3.0, 3) == 2 * 0.5 * 1.0 / 1.5
    assert _radius_probe((20, 30), 1, 1) == 2 * 0.5 * 1.0 / 1.5
    assert _radius_probe((20, 30), 0.0, 0) == 2 * 0.5 * 1.0 / 1.5  # radius 0: only coincident pixels match
    with pytest.raises(ValueError, match="must be an integer"):
        contour_accuracy(np.zeros((5, 5)), np.zeros((5, 5)), bound_th=2.5)
    with pytest.raises(ValueError, match="non-negative"):
        contour_accuracy(np.zeros((5, 5)), np.zeros((5, 5)), bound_th=-0.1)
    with pytest.raises(TypeError):
        contour_accuracy(np.zeros((5, 5)), np.zeros((5, 5)), bound_th=True)


def test_dilation_uses_a_euclidean_disk():
    # Ground-truth boundary {(0, 0)}; predicted pixel at (2, 2) has boundary {(1, 1), (1, 2), (2, 1), (2, 2)}
    # at squared distances 2, 5, 5, 8 from (0, 0).
    gt = np.zeros((20, 20), dtype=bool)
    gt[0, 0] = True
    pred = np.zeros((20, 20), dtype=bool)
    pred[2, 2] = True
    assert contour_accuracy(gt, pred, bound_th=1) == 0.0  # nothing within 1
    assert contour_accuracy(gt, pred, bound_th=2) == 2 * 0.25 * 1.0 / 1.25  # only (1, 1); a square would take 4
    assert contour_accuracy(gt, pred, bound_th=3) == 1.0  # all within 3
    # At the DAVIS resolution (radius 8), a predicted pixel at (6, 6): squared distances 50, 61, 61, 72 -> 3 of 4.
    gt = np.zeros((480, 854), dtype=bool)
    gt[0, 0] = True
    pred = np.zeros((480, 854), dtype=bool)
    pred[6, 6] = True
    assert contour_accuracy(gt, pred) == 2 * 0.75 * 1.0 / 1.75


def test_contour_accuracy_shifted_pixels():
    # Single interior pixels: boundaries are 2x2 squares; shifted by 2 columns, one column of each is within 1.
    gt = np.zeros((10, 12), dtype=bool)
    gt[4, 4] = True
    pred = np.zeros((10, 12), dtype=bool)
    pred[4, 6] = True
    assert contour_accuracy(gt, pred, bound_th=1) == 0.5
    pred = np.zeros((10, 12), dtype=bool)
    pred[4, 7] = True  # 3 columns apart: nothing within 1, 2 of 4 within 2
    assert contour_accuracy(gt, pred, bound_th=1) == 0.0
    assert contour_accuracy(gt, pred, bound_th=2) == 0.5


def test_contour_accuracy_void_creates_boundary():
    gt = np.ones((4, 6), dtype=bool)
    pred = np.ones((4, 6), dtype=bool)
    pred[:, 5] = False
    void = np.zeros((4, 6), dtype=bool)
    void[:, 5] = True
    # Without void: the full ground truth has no boundary, the prediction has one -> F = 0.
    assert contour_accuracy(gt, pred) == 0.0
    assert region_similarity(gt, pred) == 20 / 24
    # With void: both masks are cut at the void column and get the same boundary along it.
    assert contour_accuracy(gt, pred, void) == 1.0
    assert region_similarity(gt, pred, void) == 1.0


def test_contour_accuracy_sequence_matches_frames():
    rng = np.random.default_rng(1)
    gt = np.stack([_random_masks(rng, (15, 17), smooth=True) for _ in range(5)])
    pred = np.stack([_random_masks(rng, (15, 17), smooth=True) for _ in range(5)])
    gt[3] = False
    pred[3] = False
    void = rng.random(gt.shape) < 0.05
    values = contour_accuracy(gt, pred, void)
    assert values.shape == (5,) and values.dtype == np.float64
    assert values[3] == 1.0
    for t in range(5):
        assert values[t] == contour_accuracy(gt[t], pred[t], void[t])


def test_j_and_f_match_reference_on_random_masks():
    rng = np.random.default_rng(2)
    for case in range(300):
        height, width = rng.integers(1, 32, size=2)
        gt = _random_masks(rng, (height, width), smooth=case % 3 != 0)
        pred = _random_masks(rng, (height, width), smooth=case % 2 == 0)
        void = rng.random((height, width)) < 0.1 if case % 4 == 0 else None
        bound_th = [0.008, 0.03, 0.1, 0.0, 1, 2, 3][case % 7]
        assert contour_accuracy(gt, pred, void, bound_th) == _reference_f(gt, pred, void, bound_th), case
        assert region_similarity(gt, pred, void) == _reference_j(gt, pred, void), case


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------


def test_sequence_statistics_hand_values():
    assert sequence_statistics([0.7]) == (0.7, 1.0, 0.0)  # one frame: every bin is [v0]
    assert sequence_statistics([0.9, 0.2]) == (0.55, 0.5, 0.9 - 0.2)  # bin edges [0, 0, 1, 1, 1]
    # Recall is strict: 0.5 is a failure.
    assert sequence_statistics([0.5, 0.6])[1] == 0.5
    # 5 frames: edges [0, 1, 2, 3, 4], first bin v[0:2], last bin v[3:5].
    values = [1.0, 0.8, 0.6, 0.4, 0.0]
    assert sequence_statistics(values)[2] == np.mean([1.0, 0.8]) - np.mean([0.4, 0.0])
    # 10 frames: linspace(1, 10, 5) = [1, 3.25, 5.5, 7.75, 10] -> edges [0, 2, 5, 7, 9].
    values = np.arange(10) / 10
    assert sequence_statistics(values)[2] == np.mean(values[0:3]) - np.mean(values[7:10])
    # NaN frames are ignored by the mean and count as failures for the recall.
    mean, recall, _ = sequence_statistics([np.nan, 1.0])
    assert (mean, recall) == (1.0, 0.5)


def test_sequence_statistics_uint8_bin_edges():
    values = np.linspace(1, 0, 300)
    for num_frames in (1, 2, 3, 4, 7, 99, 255):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sequence_statistics(values[:num_frames])
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        # 256 frames: the last edge 255 + 1 wraps to 0 in uint8, the last bin is empty and the decay is NaN.
        with pytest.warns(UserWarning, match="wrap around"):
            assert math.isnan(sequence_statistics(values[:256])[2])
    with pytest.raises(ValueError):
        sequence_statistics([])


def test_jf_statistics_averages_objects():
    result = jf_statistics([[1.0, 0.5], [0.0]], [[1.0, 1.0], [0.25]])
    # Object means J: 0.75 and 0.0; F: 1.0 and 0.25.
    assert result["J-Mean"] == 0.375
    assert result["F-Mean"] == 0.625
    assert result["J&F-Mean"] == 0.5
    assert result["J-Recall"] == 0.25  # (1/2 + 0) / 2
    assert result["J-Decay"] == 0.25  # (0.5 + 0) / 2
    with pytest.raises(ValueError):
        jf_statistics([[1.0]], [])


# ---------------------------------------------------------------------------------------------------
# Ref-DAVIS17
# ---------------------------------------------------------------------------------------------------


def _davis_ground_truth():
    """Two frames of 8x8. Object 1: a block in both frames; object 2: a block in frame 0 only."""
    gt = np.zeros((2, 8, 8), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[0, 5:7, 5:7] = 2
    return gt


def _davis_result(mean, recall, decay):
    """Global results of a run whose J and F statistics are equal."""
    return {
        "J&F-Mean": mean,
        "J-Mean": mean,
        "J-Recall": recall,
        "J-Decay": decay,
        "F-Mean": mean,
        "F-Recall": recall,
        "F-Decay": decay,
    }


def _noisy_expression_maps(rng, gt, num_objects):
    """Float32 probability maps of the 4 expressions of each object: the object's mask plus noise."""
    return [
        np.clip((gt == obj + 1) * 0.8 + rng.normal(0, 0.3, gt.shape), 0, 1).astype(np.float32)
        for obj in range(num_objects)
        for _ in range(4)
    ]


def _runs(label_maps):
    """`{sequence: [4 label maps]}` -> the four `{sequence: label map}` predictions of `ref_davis_scores`."""
    return [{name: maps[run] for name, maps in label_maps.items()} for run in range(4)]


def test_unsupervised_matching_of_swapped_ids():
    gt = _davis_ground_truth()
    pred = np.zeros_like(gt)
    pred[gt == 1] = 2
    pred[gt == 2] = 1
    j, f = davis_unsupervised_jf(gt, pred)
    np.testing.assert_array_equal(j, np.ones((2, 2)))
    np.testing.assert_array_equal(f, np.ones((2, 2)))


def test_unsupervised_padding_extra_ids_and_object_count():
    gt = _davis_ground_truth()
    # Only object 1 predicted: id 2 is padded with an empty mask, which scores 0 on frame 0 and 1 on frame 1.
    pred = (gt == 1).astype(np.uint8)
    j, f = davis_unsupervised_jf(gt, pred)
    np.testing.assert_array_equal(j, [[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(f, [[1.0, 1.0], [0.0, 1.0]])
    # An extra predicted id is simply left unmatched.
    pred = gt.copy()
    pred[1, 6, 0] = 3
    j, _ = davis_unsupervised_jf(gt, pred)
    assert j.shape == (2, 2) and j[0, 0] == 1.0
    # Objects are counted in the first frame: an object appearing later with a higher id is dropped (and its
    # pixels are background, not void, for the other objects).
    late = gt.copy()
    late[1, 5:7, 0:2] = 3
    pred = late.copy()
    j, f = davis_unsupervised_jf(late, pred)
    assert j.shape == (2, 2)
    pred[1, 5:7, 0:2] = 1  # predicting the late object as object 1 is a false positive for object 1
    j, _ = davis_unsupervised_jf(late, pred)
    assert j[0, 1] == 4 / 8


def test_unsupervised_void_and_errors():
    gt = _davis_ground_truth()
    gt[:, 0, :] = 255  # void row
    pred = np.where(gt == 255, 1, gt).astype(np.uint8)  # object 1 spills into the void row
    j, f = davis_unsupervised_jf(gt, pred)
    np.testing.assert_array_equal(j, np.ones((2, 2)))
    np.testing.assert_array_equal(f, np.ones((2, 2)))
    with pytest.raises(ValueError, match="maximum number of proposals"):
        davis_unsupervised_jf(gt, np.full_like(gt, 21))
    with pytest.raises(ValueError, match="shape"):
        davis_unsupervised_jf(gt, gt[:1])
    with pytest.raises(TypeError):
        davis_unsupervised_jf(gt, gt.astype(np.float32))


def test_unsupervised_matches_reference_on_random_sequences():
    rng = np.random.default_rng(3)
    for case in range(25):
        num_frames = rng.integers(1, 5)
        height, width = rng.integers(4, 20, size=2)

        def labels(num_labels):
            field = ndimage.gaussian_filter(rng.random((num_frames, height, width)), (0, 1.5, 1.5))
            edges = np.quantile(field, np.linspace(0, 1, num_labels + 2)[1:-1])
            return np.digitize(field, edges).astype(np.uint8) if num_labels else np.zeros(field.shape, np.uint8)

        gt = labels(rng.integers(1, 4))
        if case % 2:
            gt[rng.random(gt.shape) < 0.05] = 255
        pred = labels(rng.integers(0, 5))
        if gt[0][gt[0] != 255].max(initial=0) == 0:
            continue
        j, f = davis_unsupervised_jf(gt, pred)
        j_ref, f_ref = _reference_unsupervised(gt, pred)
        np.testing.assert_array_equal(j, j_ref)
        np.testing.assert_array_equal(f, f_ref)


def test_ref_davis_scores_four_runs():
    gt = _davis_ground_truth()
    swapped = np.zeros_like(gt)
    swapped[gt == 1] = 2
    swapped[gt == 2] = 1
    only_first = (gt == 1).astype(np.uint8)
    extra = gt.copy()
    extra[1, 7, 0] = 3
    empty = np.zeros_like(gt)
    scores = ref_davis_scores({"seq": gt}, [{"seq": swapped}, {"seq": only_first}, {"seq": extra}, {"seq": empty}])
    perfect = _davis_result(mean=1.0, recall=1.0, decay=0.0)
    # Run 1: object 1 perfect; object 2 J = F = [0, 1] -> mean 0.5, recall 0.5, decay -1.
    run_1 = _davis_result(mean=0.75, recall=0.75, decay=-0.5)
    # Run 3: object 1 J = F = [0, 0]; object 2 [0, 1].
    run_3 = _davis_result(mean=0.25, recall=0.25, decay=-0.5)
    assert scores["per_run"] == [perfect, run_1, perfect, run_3]
    assert scores["J&F-Mean"] == 0.75
    assert scores["J-Mean"] == 0.75
    assert scores["J-Decay"] == -0.25
    assert scores["F-Recall"] == 0.75


def test_ref_davis_scores_errors():
    gt = _davis_ground_truth()
    with pytest.raises(ValueError, match="4 mappings"):
        ref_davis_scores({"seq": gt}, [{"seq": gt}] * 3)
    with pytest.raises(KeyError, match="seq"):
        ref_davis_scores({"seq": gt}, [{"seq": gt}] * 3 + [{}])
    evaluator = RefDavisEvaluator()
    with pytest.raises(ValueError, match="4 predicted label maps"):
        evaluator.add("seq", gt, [gt, gt])
    with pytest.raises(ValueError, match="No ground-truth object"):
        evaluator.compute()


def test_ref_davis_label_maps_follow_the_original_argmax():
    # One frame of 1x5, two objects, expressions ordered 4 * obj + set.
    obj_1 = np.array([[[0.9, 0.4, 0.6, 0.7, 0.0]]], dtype=np.float32)
    obj_2 = np.array([[[0.8, 0.45, 0.6, 0.9, 0.0]]], dtype=np.float32)
    other = np.zeros((1, 1, 5), dtype=np.float32)
    expressions = [obj_1, other, other, obj_1, obj_2, obj_2, other, obj_2]
    label_maps = ref_davis_label_maps(expressions)
    assert len(label_maps) == 4 and all(labels.dtype == np.uint8 for labels in label_maps)
    # Set 0: [obj1 0.9 > obj2 0.8, both < 0.5 -> background, tie 0.6 -> first object, 0.9 -> obj2, background].
    np.testing.assert_array_equal(label_maps[0], [[[1, 0, 1, 2, 0]]])
    np.testing.assert_array_equal(label_maps[1], [[[2, 0, 2, 2, 0]]])
    np.testing.assert_array_equal(label_maps[2], [[[0, 0, 0, 0, 0]]])
    np.testing.assert_array_equal(label_maps[3], [[[1, 0, 1, 2, 0]]])
    # A mapping is read in insertion order.
    mapping = {str(index): probabilities for index, probabilities in enumerate(expressions)}
    for a, b in zip(ref_davis_label_maps(mapping), label_maps):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="4 expressions per object"):
        ref_davis_label_maps(expressions[:6])
    with pytest.raises(ValueError, match="outside"):
        ref_davis_label_maps([obj_1 * 2] * 4)


def test_ref_davis_evaluator_from_probabilities_and_order():
    rng = np.random.default_rng(4)
    ground_truth, probabilities, label_maps = {}, {}, {}
    for name in ("b", "a"):
        gt = np.zeros((3, 12, 12), dtype=np.uint8)
        gt[:, 1:5, 1:6] = 1
        gt[:, 7:11, 4:10] = 2
        gt[:, 0, :] = 255
        ground_truth[name] = gt
        probabilities[name] = _noisy_expression_maps(rng, gt, num_objects=2)
        label_maps[name] = ref_davis_label_maps(probabilities[name])
    expected = ref_davis_scores(ground_truth, _runs(label_maps))
    evaluator = RefDavisEvaluator()
    for name in ("a", "b"):  # added out of order, evaluated in the official order
        evaluator.add_probabilities(name, ground_truth[name], probabilities[name])
    assert evaluator.compute(sequence_order=["b", "a"]) == expected
    with pytest.raises(KeyError):
        evaluator.compute(sequence_order=["b", "a", "c"])


# ---------------------------------------------------------------------------------------------------
# A2D-Sentences / JHMDB-Sentences
# ---------------------------------------------------------------------------------------------------


def _block(shape, rows, cols):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


def test_top_prediction_index_ties():
    assert top_prediction_index([0.2, 0.9, 0.9]) == 2  # last of the equal top scores
    assert top_prediction_index([0.9, 0.2]) == 0
    assert top_prediction_index(np.array([0.5, 0.5, 0.5], dtype=np.float32)) == 2
    with pytest.raises(ValueError):
        top_prediction_index([])
    with pytest.raises(ValueError):
        top_prediction_index([0.1, np.nan])


def test_a2d_iou_float32_thresholds():
    # With counts >= 32 the 1e-6 disappears in float32: 60/100 is stored as 0.6000000238 (> 0.6), 70/100 as
    # 0.699999988 (not > 0.7), 80/100 as 0.8000000119 (> 0.8), 90/100 as 0.899999976, 50/100 as exactly 0.5.
    for intersection, expected in [
        (50, [0, 0, 0, 0, 0]),
        (60, [1, 1, 0, 0, 0]),
        (70, [1, 1, 0, 0, 0]),
        (80, [1, 1, 1, 1, 0]),
        (90, [1, 1, 1, 1, 0]),
    ]:
        metrics = a2d_iou_metrics([intersection], [100])
        assert [metrics[f"P@{k}"] for k in (0.5, 0.6, 0.7, 0.8, 0.9)] == expected, intersection
        assert metrics["mean_iou"] == float(np.float32(intersection / 100))
    # With tiny counts the epsilon survives: (1 + 1e-6) / (2 + 1e-6) = 0.50000024 in float32, counted > 0.5.
    metrics = a2d_iou_metrics([1], [2])
    assert metrics["P@0.5"] == 1.0
    assert metrics["mean_iou"] == float((np.float32(1) + np.float32(1e-6)) / (np.float32(2) + np.float32(1e-6)))
    # Empty prediction and empty ground truth: IoU 1; empty prediction against 100 pixels: about 1e-8.
    metrics = a2d_iou_metrics([0, 0], [0, 100])
    assert metrics["P@0.9"] == 0.5
    assert metrics["overall_iou"] == 0.0
    assert metrics["mean_iou"] == np.mean([1.0, float(np.float32(1e-6) / np.float32(100))])
    with pytest.raises(ValueError, match="every prediction and ground-truth mask is empty"):
        a2d_iou_metrics([0], [0])
    with pytest.raises(ValueError):
        a2d_iou_metrics([3], [2])


def test_a2d_metrics_perfect_predictions():
    shape = (10, 20)
    samples = [
        {"image_id": "v_a_f_1_i_1", "gt": _block(shape, slice(0, 10), slice(0, 10)), "scores": [0.9, 0.2],
         "pred_masks": [_block(shape, slice(0, 10), slice(0, 10)), _block(shape, slice(0, 2), slice(15, 20))]},
        {"image_id": "v_b_f_1_i_1", "gt": _block(shape, slice(2, 8), slice(5, 15)), "scores": [0.7],
         "pred_masks": [_block(shape, slice(2, 8), slice(5, 15))]},
    ]
    metrics = a2d_metrics(samples)
    assert all(metrics[f"P@{k}"] == 1.0 for k in (0.5, 0.6, 0.7, 0.8, 0.9))
    assert metrics["overall_iou"] == 1.0 and metrics["mean_iou"] == 1.0
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert len(metrics["coco_stats"]) == 12


def test_a2d_metrics_half_overlap_and_map():
    shape = (10, 20)
    gt = _block(shape, slice(0, 10), slice(0, 10))  # 100 pixels
    half = _block(shape, slice(0, 10), slice(0, 5))  # I = 50, U = 100 -> IoU exactly 0.5 in float32
    metrics = a2d_metrics([{"image_id": "x", "gt": gt, "pred_masks": [half], "scores": [1.0]}])
    assert metrics["P@0.5"] == 0.0 and metrics["overall_iou"] == 0.5 and metrics["mean_iou"] == 0.5
    assert metrics["mAP"] == pytest.approx(0.1, abs=1e-12)  # AP 1 at IoU thresholds 0.5 only (>=), 0 at 0.55..0.95

    # Image A: the top prediction is right. Image B: the top prediction is disjoint (IoU 0), a low-scored one
    # is right. Detections by score: TP (A), FP (B), TP (B): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1, so AP
    # is 1 on the 51 recall points up to 0.5 and 2/3 on the 50 others, at every IoU threshold.
    wrong = _block(shape, slice(0, 10), slice(10, 20))
    samples = [
        {"image_id": "a", "gt": gt, "pred_masks": [gt], "scores": [0.9]},
        {"image_id": "b", "gt": gt, "pred_masks": [wrong, gt], "scores": [0.8, 0.1]},
    ]
    metrics = a2d_metrics(samples)
    assert metrics["mAP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    stats = metrics["coco_stats"]
    assert stats[1] == pytest.approx(metrics["mAP"]) and stats[2] == pytest.approx(metrics["mAP"])
    assert stats[3] == pytest.approx(metrics["mAP"])  # ground-truth areas of 100 px are all "small"
    assert stats[4] == -1.0 and stats[5] == -1.0
    assert stats[6] == pytest.approx(0.5) and stats[8] == pytest.approx(1.0)  # AR@1 and AR@100
    assert metrics["P@0.5"] == 0.5
    assert metrics["overall_iou"] == 100 / 300
    assert metrics["mean_iou"] == np.mean([1.0, float(np.float32(1e-6) / np.float32(200))])
    # Only the top predictions: TP (A), FP (B) -> AP 1 up to recall 0.5, nothing above.
    assert a2d_metrics(samples, top1_only=True)["mAP"] == pytest.approx(51 / 101, abs=1e-12)


def test_a2d_tie_uses_last_prediction():
    shape = (10, 20)
    gt = _block(shape, slice(0, 10), slice(0, 10))
    sample = {"image_id": "x", "gt": gt, "pred_masks": [gt, np.zeros(shape, np.uint8)], "scores": [0.5, 0.5]}
    metrics = a2d_metrics([sample])
    assert metrics["P@0.5"] == 0.0  # the empty (last) prediction is used for P@K...
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-12)  # ...while COCOeval ranks the first one first


def test_a2d_input_errors():
    gt = _block((4, 4), slice(0, 2), slice(0, 2))
    evaluator = A2DEvaluator()
    evaluator.add("x", gt, [gt], [0.5])
    with pytest.raises(ValueError, match="already added"):
        evaluator.add("x", gt, [gt], [0.5])
    with pytest.raises(TypeError):
        evaluator.add(3, gt, [gt], [0.5])
    with pytest.raises(ValueError, match="no prediction"):
        evaluator.add("y", gt, np.zeros((0, 4, 4)), [])
    with pytest.raises(ValueError, match="differs"):
        evaluator.add("y", gt, np.zeros((1, 4, 5)), [0.5])
    with pytest.raises(ValueError, match="scores"):
        evaluator.add("y", gt, [gt], [0.5, 0.1])
    with pytest.raises(ValueError, match="binary"):
        evaluator.add("y", gt * 255, [gt], [0.5])
    with pytest.raises(ValueError, match="No sample"):
        A2DEvaluator().compute()
    with pytest.raises(KeyError):
        a2d_metrics([{"image_id": "x", "gt": gt}])


# ---------------------------------------------------------------------------------------------------
# Protocols: Ref-YouTube-VOS submission and offline J&F, Ref-DAVIS17 and A2D drivers
# ---------------------------------------------------------------------------------------------------


def _ytvos_predictions():
    masks = np.zeros((2, 6, 8), dtype=bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 3:5, 1:4] = True
    return {
        "vid1": {"0": {"00000": masks[0], "00005": masks[1]}, "1": {"00000": masks[1], "00005": masks[0]}},
        "vid2": {"0": {"00010": masks[0]}},
    }


def test_write_ytvos_submission_layout_and_zip(tmp_path):
    predictions = _ytvos_predictions()
    zip_path = write_ytvos_submission(predictions, tmp_path / "out")
    assert zip_path == tmp_path / "out" / "submission.zip"
    expected = sorted(
        f"Annotations/{video}/{exp}/{frame}.png"
        for video, expressions in predictions.items()
        for exp, frames in expressions.items()
        for frame in frames
    )
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == expected
        for name in expected:
            assert archive.read(name) == (tmp_path / "out" / name).read_bytes()
    with Image.open(tmp_path / "out" / "Annotations" / "vid1" / "0" / "00005.png") as image:
        assert image.mode == "L"
        array = np.asarray(image)
    assert set(np.unique(array)) == {0, 255}
    np.testing.assert_array_equal(array == 255, predictions["vid1"]["0"]["00005"])
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["Annotations", "submission.zip"]

    # The iterator form writes the same files.
    items = [
        (video, exp, list(frames), np.stack(list(frames.values())))
        for video, expressions in predictions.items()
        for exp, frames in expressions.items()
    ]
    write_ytvos_submission(iter(items), tmp_path / "iter")
    for name in expected:
        assert (tmp_path / "iter" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_write_ytvos_submission_is_atomic(tmp_path):
    def failing():
        yield "vid1", "0", ["00000"], np.zeros((1, 4, 4), dtype=bool)
        raise RuntimeError("inference crashed")

    with pytest.raises(RuntimeError, match="inference crashed"):
        write_ytvos_submission(failing(), tmp_path)
    assert list(tmp_path.iterdir()) == []

    write_ytvos_submission(_ytvos_predictions(), tmp_path)
    with pytest.raises(FileExistsError):
        write_ytvos_submission(_ytvos_predictions(), tmp_path)
    with pytest.raises(RuntimeError):
        write_ytvos_submission(failing(), tmp_path, overwrite=True)
    assert (tmp_path / "Annotations" / "vid2").is_dir()  # the previous submission is untouched
    write_ytvos_submission({"vid3": {"0": {"00000": np.ones((4, 4), dtype=bool)}}}, tmp_path, overwrite=True)
    assert sorted(path.name for path in (tmp_path / "Annotations").iterdir()) == ["vid3"]
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert archive.namelist() == ["Annotations/vid3/0/00000.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Annotations", "submission.zip"]


def test_write_ytvos_submission_input_errors(tmp_path):
    mask = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="plain file name"):
        write_ytvos_submission({"../x": {"0": {"00000": mask}}}, tmp_path / "a")
    with pytest.raises(ValueError, match="binary"):
        write_ytvos_submission({"v": {"0": {"00000": mask.astype(np.uint8) + 2}}}, tmp_path / "b")
    with pytest.raises(ValueError, match="appears twice"):
        write_ytvos_submission([("v", "0", ["00000"], [mask]), ("v", "0", ["00005"], [mask])], tmp_path / "c")
    with pytest.raises(ValueError, match="frame names"):
        write_ytvos_submission([("v", "0", ["00000", "00005"], [mask])], tmp_path / "d")
    assert not any(path.is_file() for path in tmp_path.rglob("*"))


def test_evaluate_ytvos_folder(tmp_path):
    frames = ["00000", "00005"]
    labels = np.zeros((2, 6, 8), dtype=np.uint8)
    labels[:, 1:3, 2:5] = 1
    labels[:, 3:6, 5:8] = 2
    for t, frame in enumerate(frames):
        (tmp_path / "gt" / "vid").mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(labels[t], mode="P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        image.save(tmp_path / "gt" / "vid" / f"{frame}.png")
    expressions = {"0": {"exp": "a", "obj_id": "1"}, "1": {"exp": "b", "obj_id": "2"}}
    meta = {"videos": {"vid": {"frames": frames, "expressions": expressions}}}
    # Expression 0 is perfect (J = F = 1); expression 1 predicts nothing while object 2 is visible (J = F = 0).
    predictions = {"vid": {"0": {frame: labels[t] == 1 for t, frame in enumerate(frames)},
                           "1": {frame: np.zeros((6, 8), dtype=bool) for frame in frames}}}
    write_ytvos_submission(predictions, tmp_path / "pred")
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    scores = evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "meta.json")
    assert scores == {"J&F": 0.5, "J": 0.5, "F": 0.5}
    assert evaluate_ytvos_folder(tmp_path / "pred" / "Annotations", tmp_path / "gt", meta)["J"] == 0.5
    meta["videos"]["vid"]["expressions"]["2"] = {"exp": "c", "obj_id": "1"}
    with pytest.raises(FileNotFoundError, match="Missing mask"):
        evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", meta)
    with pytest.raises(KeyError, match="obj_id"):
        no_object = {"videos": {"vid": {"frames": frames, "expressions": {"0": {"exp": "a"}}}}}
        evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", no_object)
    # An obj_id in none of the video's masks: an error, not J = F = 0 against empty masks.
    absent = {"videos": {"vid": {"frames": frames, "expressions": {"0": {"exp": "a", "obj_id": "7"}}}}}
    with pytest.raises(ValueError, match=r"^Video 'vid', expression '0': object id 7 occurs in none of the video's 2 "
                                         r"annotated frames \(object ids found: 1, 2\)\.$"):
        evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", absent)
    # Ground truth saved as 0/255 grayscale PNGs: refused, not scored as empty masks (J&F 0).
    for t, frame in enumerate(frames):
        Image.fromarray((labels[t] == 1).astype(np.uint8) * 255).save(tmp_path / "gt" / "vid" / f"{frame}.png")
    with pytest.raises(ValueError, match=r"00000.png is a mode 'L' image, not a palette \(mode 'P'\) PNG"):
        evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "meta.json")


def test_evaluate_ref_davis_from_folder(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("seq-b\nseq-a\n")
    ground_truth, probabilities = {}, {}
    for name in ("seq-b", "seq-a"):
        gt = np.zeros((3, 10, 12), dtype=np.uint8)
        gt[:, 1:5, 1:6] = 1
        gt[:, 6:9, 5:11] = 2
        gt[:, :, 0] = 255
        folder = tmp_path / "Annotations_unsupervised" / "480p" / name
        folder.mkdir(parents=True)
        for t in range(3):
            Image.fromarray(gt[t]).save(folder / f"{t:05d}.png")
        ground_truth[name] = gt
        probabilities[name] = _noisy_expression_maps(rng, gt, num_objects=2)
    label_maps = {name: ref_davis_label_maps(maps) for name, maps in probabilities.items()}
    expected = ref_davis_scores(ground_truth, _runs(label_maps))
    generator = ((name, probabilities[name]) for name in ("seq-a", "seq-b"))
    assert evaluate_ref_davis(tmp_path, generator) == expected
    with pytest.raises(KeyError, match="seq-b"):
        evaluate_ref_davis(tmp_path, {"seq-a": probabilities["seq-a"]})


def test_evaluate_a2d_from_coco_ground_truth(tmp_path):
    rng = np.random.default_rng(6)
    images, annotations, samples = [], [], []
    for index in range(6):
        image_id = f"v_vid{index}_f_{index + 1}_i_1"
        gt = _block((12, 16), slice(index, index + 5), slice(2, 9 + index))
        pred_masks = [(rng.random((12, 16)) < 0.4) | gt.astype(bool) for _ in range(3)]
        scores = rng.choice([0.2, 0.7], size=3)
        rle = mask_utils.encode(np.asfortranarray(gt))
        rle["counts"] = rle["counts"].decode("ascii")
        images.append({"id": image_id, "height": 12, "width": 16})
        annotations.append({"id": index + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                            "area": float(mask_utils.area(rle)), "iscrowd": 0})
        samples.append({"image_id": image_id, "gt": gt, "pred_masks": np.stack(pred_masks), "scores": scores})
    path = tmp_path / "gt.json"
    categories = [{"id": 1, "name": "dummy_class"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    expected = a2d_metrics(samples)
    reversed_predictions = [(s["image_id"], s["pred_masks"], s["scores"]) for s in reversed(samples)]
    assert evaluate_a2d(path, reversed_predictions) == expected
    mapping = {s["image_id"]: (s["pred_masks"], s["scores"]) for s in samples}
    assert evaluate_a2d(path, mapping, top1_only=True) == a2d_metrics(samples, top1_only=True)
    with pytest.raises(KeyError, match="No prediction"):
        evaluate_a2d(path, reversed_predictions[:-1])
    with pytest.raises(KeyError, match="not in the ground truth"):
        evaluate_a2d(path, [("unknown", samples[0]["pred_masks"], samples[0]["scores"])])


def test_a2d_mask_rule_goes_through_the_padded_input_size():
    # A 2x3 stride-4 grid, logit 10 in cell (0, 0) and -10 elsewhere. Bilinear 4x up-sampling (half-pixel centres)
    # keeps logits > 0 on pixels 0..3 of that cell: the padded 8x12 mask is exactly the cell. Cropped to the
    # resized 6x10 frame and brought to 3x5 by nearest neighbour (source pixels 0, 2, 4 and 0, 2, 4, 6, 8).
    logits = torch.full((2, 2, 3), -10.0)
    logits[0, 0, 0] = 10.0
    masks = post_process_a2d_masks(ReferFormerVideoProcessor(), logits, (6, 10), (3, 5), threshold=0.5)
    expected = np.zeros((2, 3, 5), dtype=bool)
    expected[0, :2, :2] = True
    assert masks.dtype == torch.bool
    np.testing.assert_array_equal(masks.numpy(), expected)


def test_group_by_video_keeps_first_appearance_order():
    rows = [{"video_id": "b", "exp_id": "0"}, {"video_id": "a", "exp_id": "0"}, {"video_id": "b", "exp_id": "1"}]
    grouped = group_by_video(rows)
    assert list(grouped) == ["b", "a"] and [row["exp_id"] for row in grouped["b"]] == ["0", "1"]


# ---------------------------------------------------------------------------------------------------
# `evaluate` module, loaded offline from its local path
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def load_rvos_metric(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def load(config_name=None):
        return evaluate.load(rvos_metric_path(), config_name, keep_in_memory=True, cache_dir=str(tmp_path))

    return load


def test_rvos_metric_path_points_to_the_module():
    import os

    assert os.path.isfile(os.path.join(rvos_metric_path(), "rvos.py"))


def _hand_built_rows():
    """Two (video, expression) rows on 10x10 frames (F's radius is ceil(0.008 * 14.1) = 1 pixel).

    Row 0, frame 0: the prediction is the 4x4 ground-truth block: J = F = 1. Frame 1: the prediction is a 4x7 block
    with the same top-left corner: J = 16/28 = 4/7. Boundaries (pixels differing from their east, south or south-east
    neighbour) are rings around the blocks, 16 pixels for the ground truth and 22 for the prediction; within one pixel
    of the other ring lie 15 of the 16 (the middle of the ground truth's right side is 3 pixels from the prediction's)
    and 15 of the 22 (the prediction's right side and the last two pixels of its top and bottom rows are not): R =
    15/16, P = 15/22, F = 2PR / (P + R) = 15/19.
    Row 1, one frame: an empty prediction of a non-empty ground truth: J = F = 0.
    """
    ground_truth = np.zeros((2, 10, 10), dtype=bool)
    ground_truth[:, 2:6, 2:6] = True
    prediction = ground_truth.copy()
    prediction[1, 2:6, 2:9] = True
    empty_truth = np.zeros((1, 10, 10), dtype=bool)
    empty_truth[0, 2:6, 2:6] = True
    return [prediction, np.zeros((1, 10, 10), dtype=bool)], [ground_truth, empty_truth]


def test_evaluate_module_computes_j_and_f_from_masks(load_rvos_metric, tmp_path):
    predictions, references = _hand_built_rows()
    np.testing.assert_array_equal(region_similarity(references[0], predictions[0]), [1.0, 4 / 7])
    np.testing.assert_allclose(contour_accuracy(references[0], predictions[0]), [1.0, 15 / 19], rtol=1e-15)
    result = load_rvos_metric().compute(predictions=predictions, references=references)
    # The hand-derived fractions, up to the float64 rounding of their sums and divisions.
    j, f = (1 + 4 / 7) / 2 / 2, (1 + 15 / 19) / 2 / 2
    expected = {"J": j, "F": f, "J&F": (j + f) / 2, "J-Mean": j, "F-Mean": f, "J&F-Mean": (j + f) / 2,
                "J-Recall": 0.5, "F-Recall": 0.5, "J-Decay": (1 - 4 / 7) / 2, "F-Decay": (1 - 15 / 19) / 2}
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-15, abs=1e-15), key
    # Exactly what the J and F functions give, in this process, on the same masks.
    rows_j = [region_similarity(gt, pred) for gt, pred in zip(references, predictions)]
    rows_f = [contour_accuracy(gt, pred) for gt, pred in zip(references, predictions)]
    statistics = jf_statistics(rows_j, rows_f)
    assert result == {"J&F": statistics["J&F-Mean"], "J": statistics["J-Mean"], "F": statistics["F-Mean"], **statistics}

    # The Ref-YouTube-VOS offline score of the same masks written as files.
    for video, labels in (("vid0", references[0]), ("vid1", references[1])):
        (tmp_path / "gt" / video).mkdir(parents=True)
        for t, frame in enumerate(labels):
            image = Image.fromarray(frame.astype(np.uint8), mode="P")
            image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
            image.save(tmp_path / "gt" / video / f"{t:05d}.png")
    submission = {video: {"0": {f"{t:05d}": frame for t, frame in enumerate(masks)}}
                  for video, masks in (("vid0", predictions[0]), ("vid1", predictions[1]))}
    write_ytvos_submission(submission, tmp_path / "pred")
    meta = {"videos": {video: {"frames": [f"{t:05d}" for t in range(len(masks))],
                               "expressions": {"0": {"exp": "the block", "obj_id": "1"}}}
                       for video, masks in (("vid0", predictions[0]), ("vid1", predictions[1]))}}
    assert evaluate_ytvos_folder(tmp_path / "pred", tmp_path / "gt", meta) == {
        key: result[key] for key in ("J&F", "J", "F")
    }

    # Row by row, as lists of frames, and with a wider boundary tolerance (3 pixels: row 0's F becomes 1).
    metric = load_rvos_metric()
    metric.add(prediction=list(predictions[0]), reference=list(references[0]))
    metric.add_batch(predictions=predictions[1:], references=references[1:])
    assert metric.compute() == result
    assert load_rvos_metric().compute(predictions=predictions, references=references, bound_th=3)["F"] == 0.5


def test_evaluate_module_refuses_bad_masks_in_one_line(load_rvos_metric):
    predictions, references = _hand_built_rows()
    cases = (
        ([predictions[0] * 0.5], references[:1], r"`predictions\[0\]` is a floating-point array with values other"),
        ([predictions[0][0]], references[:1], r"`predictions\[0\]` must be 3-D"),
        ([[predictions[0][0], predictions[0][0, :5]]], references[:1], r"`predictions\[0\]` is not a 3-D array"),
        (predictions[:1], [references[0][:, :5]], r"`gt` and `pred` shapes differ"),
        ([predictions[0][:0]], [references[0][:0]], r"`predictions\[0\]` is empty \(shape \(0, 10, 10\)\)"),
    )
    for bad_predictions, bad_references, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            load_rvos_metric().compute(predictions=bad_predictions, references=bad_references)
        assert "\n" not in str(raised.value)
    labels = np.zeros((4, 1, 4, 4), dtype=np.int64)
    labels[0, 0, 0, 0] = 300
    with pytest.raises(ValueError, match=r"`predictions\[0\]` must hold labels in 0..255, got \[0, 300\]"):
        load_rvos_metric("ref_davis").compute(predictions=[labels], references=[labels[0]])


def test_evaluate_module_ref_davis_and_a2d_from_masks(load_rvos_metric):
    rng = np.random.default_rng(7)
    # Ref-DAVIS17: one row per sequence, the label maps of its four expression sets and its ground truth.
    sequences = {}
    for name, num_frames in (("seq", 4), ("other", 3)):
        gt = np.zeros((num_frames, 12, 12), dtype=np.uint8)
        gt[:, 1:5, 1:6] = 1
        gt[:3, 6:9, 5:11] = 2
        gt[0, 0, :] = 255  # void
        sequences[name] = (gt, [np.where(rng.random(gt.shape) < 0.1, 0, gt % 255).astype(np.uint8) for _ in range(4)])
    expected = ref_davis_scores(
        {name: gt for name, (gt, _) in sequences.items()},
        [{name: runs[run] for name, (_, runs) in sequences.items()} for run in range(4)],
    )
    result = load_rvos_metric("ref_davis").compute(
        predictions=[np.stack(runs) for _, runs in sequences.values()], references=[gt for gt, _ in sequences.values()]
    )
    assert result == expected

    # A2D: every query's mask, the scores and the ground truth of each sample, with its id.
    shape = (10, 20)
    samples = []
    for index in range(5):
        gt_mask = _block(shape, slice(index, index + 6), slice(0, 8 + index))
        pred_masks = np.stack([(rng.random(shape) < 0.3) | gt_mask.astype(bool) for _ in range(3)])
        samples.append(
            {"image_id": f"v_clip_f_{index}", "gt": gt_mask, "pred_masks": pred_masks, "scores": [0.4, 0.9, 0.9]}
        )
    metric = load_rvos_metric("a2d")
    result = metric.compute(
        predictions=[sample["pred_masks"] for sample in samples],
        references=[sample["gt"] for sample in samples],
        scores=[sample["scores"] for sample in samples],
        image_ids=[sample["image_id"] for sample in samples],
    )
    assert result == a2d_metrics(samples)
    top1 = metric.compute(
        predictions=[sample["pred_masks"] for sample in samples],
        references=[sample["gt"] for sample in samples],
        scores=[sample["scores"] for sample in samples],
        image_ids=[sample["image_id"] for sample in samples],
        top1_only=True,
    )
    assert top1 == a2d_metrics(samples, top1_only=True) and top1["mAP"] != result["mAP"]


def test_evaluate_module_rejects_unknown_config(load_rvos_metric):
    with pytest.raises(KeyError, match="Unknown configuration"):
        load_rvos_metric("unknown")
