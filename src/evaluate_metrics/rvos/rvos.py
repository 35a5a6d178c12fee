"""Referring video object segmentation metrics for the `evaluate` library, computed from masks.

A wrapper of `referformer.evaluation`, whose functions compute every value (one place for each metric):

* `default`: one row per (video, expression) with its predicted and ground-truth binary masks `[T, H, W]` -> J and
  F per frame (`region_similarity`, `contour_accuracy`), then `J&F`, `J`, `F` (averaged over frames, then over
  rows, as `referformer.evaluation_protocols.evaluate_ytvos_folder` scores Ref-YouTube-VOS) and the DAVIS statistics
  `J&F-Mean`, `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay` (`jf_statistics`).
* `ref_davis`: one row per sequence with its four predicted label maps (one per expression set) and its ground-truth
  label map -> the DAVIS-2017 unsupervised evaluation of each set averaged over the sets (`RefDavisEvaluator`).
* `a2d`: one row per annotated sample with every query's mask, the scores and the ground-truth mask -> `P@0.5` ..
  `P@0.9`, `overall_iou`, `mean_iou`, `mAP` and `coco_stats` (`A2DEvaluator`).

The masks are buffered as Arrow bit-packed booleans (label maps as uint8) and turned back into arrays one row at a
time, so memory holds one row's masks, not the dataset's.
"""

import datasets
import evaluate
import numpy as np
import pyarrow as pa

from referformer.evaluation import A2DEvaluator
from referformer.evaluation import RefDavisEvaluator
from referformer.evaluation import _as_binary_masks
from referformer.evaluation import contour_accuracy
from referformer.evaluation import jf_statistics
from referformer.evaluation import region_similarity


_DESCRIPTION = """\
Metrics of referring video object segmentation from predicted and ground-truth masks, in exact agreement
with the official code: DAVIS-2017 region similarity J and contour accuracy F and their statistics (also
averaged over the four Ref-DAVIS17 expression sets), and the A2D-Sentences / JHMDB-Sentences precision@K,
overall IoU, mean IoU and COCO mask mAP. Every value is computed by `referformer.evaluation`.
"""

_CITATION = """\
@inproceedings{wu2022referformer,
  title={Language as Queries for Referring Video Object Segmentation},
  author={Wu, Jiannan and Jiang, Yi and Sun, Peize and Yuan, Zehuan and Luo, Ping},
  booktitle={CVPR},
  year={2022}
}
@article{pont2017davis,
  title={The 2017 DAVIS Challenge on Video Object Segmentation},
  author={Pont-Tuset, Jordi and Perazzi, Federico and Caelles, Sergi and Arbel{\'a}ez, Pablo and
          Sorkine-Hornung, Alexander and Van Gool, Luc},
  journal={arXiv:1704.00675},
  year={2017}
}
"""

_INPUTS_DESCRIPTION = """
Config `default` (one row per (video, expression)):
    predictions (`list` of `[T, H, W]` masks): predicted masks, numpy arrays or lists of `[H, W]` arrays; booleans,
        integers (non-zero is foreground) or 0/1 floats (threshold probabilities first).
    references (`list` of `[T, H, W]` masks): ground-truth masks of the same shapes.
    bound_th (`float`, optional, a `compute` argument): the boundary tolerance of F (default 0.008).
Config `ref_davis` (one row per sequence):
    predictions (`list` of `[4, T, H, W]` label maps): the label maps of the four expression sets (0 background,
        k predicted object k), e.g. from `referformer.evaluation.ref_davis_label_maps`.
    references (`list` of `[T, H, W]` label maps): ground truth (0 background, k object k, 255 void).
Config `a2d` (one row per annotated sample):
    predictions (`list` of `[N, H, W]` masks): the binary mask of every query on the annotated frame.
    references (`list` of `[H, W]` masks): the ground-truth binary mask.
    scores (`list` of `[N]` floats): the score of every query.
    image_ids (`list` of `str`): the sample ids of the ground truth, e.g. `v_<video>_f_<frame>_i_<instance>`.
    top1_only (`bool`, optional, a `compute` argument): score only the top query of each sample for the mAP.

Returns:
    `default`: `J&F`, `J`, `F`, `J&F-Mean`, `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay`.
    `ref_davis`: `J&F-Mean`, `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay` averaged over the
        four sets, and `per_run`.
    `a2d`: `P@0.5`, `P@0.6`, `P@0.7`, `P@0.8`, `P@0.9`, `overall_iou`, `mean_iou`, `mAP`, `coco_stats`.

Example:
    >>> import evaluate, numpy as np
    >>> from referformer.evaluation import rvos_metric_path
    >>> metric = evaluate.load(rvos_metric_path())
    >>> gt = np.zeros((2, 8, 8), dtype=bool); gt[:, 2:6, 2:6] = True
    >>> pred = gt.copy(); pred[1] = False
    >>> metric.compute(predictions=[pred], references=[gt])["J"]
    0.5
"""


def _nested_list(dimensions: int, value_type: str):
    """`datasets` feature of a `dimensions`-D array of `value_type`, any shape."""
    feature = datasets.Value(value_type)
    for _ in range(dimensions):
        feature = datasets.List(feature)
    return feature


_FEATURES = {
    "default": datasets.Features({"predictions": _nested_list(3, "bool"), "references": _nested_list(3, "bool")}),
    "ref_davis": datasets.Features({"predictions": _nested_list(4, "uint8"), "references": _nested_list(3, "uint8")}),
    "a2d": datasets.Features(
        {
            "predictions": _nested_list(3, "bool"),
            "references": _nested_list(2, "bool"),
            "scores": datasets.List(datasets.Value("float64")),
            "image_ids": datasets.Value("string"),
        }
    ),
}
# What each configuration's masks are (kind and dimensions), checked before they are buffered: as booleans, a
# probability of 0.3 would become foreground; as uint8, label 256 would not fit.
_MASKS = {
    "default": {"predictions": ("binary", 3), "references": ("binary", 3)},
    "ref_davis": {"predictions": ("labels", 4), "references": ("labels", 3)},
    "a2d": {"predictions": ("binary", 3), "references": ("binary", 2)},
}


def _check_masks(masks, name: str, kind: str, dimensions: int) -> None:
    for index, mask in enumerate(masks):
        try:
            array = np.asarray(mask)
        except ValueError as error:  # a list of frames of different sizes
            raise ValueError(f"`{name}[{index}]` is not a {dimensions}-D array: {error}") from None
        if 0 in array.shape:
            raise ValueError(f"`{name}[{index}]` is empty (shape {array.shape}).")
        if kind == "binary":
            _as_binary_masks(array, f"{name}[{index}]", ndims=(dimensions,))
        elif array.ndim != dimensions or not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise ValueError(
                f"`{name}[{index}]` must be a {dimensions}-D integer label map, got {array.dtype} {array.shape}."
            )
        elif array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"`{name}[{index}]` must hold labels in 0..255, got [{array.min()}, {array.max()}].")


def _to_array(value: pa.ListScalar, dimensions: int) -> np.ndarray:
    """The `dimensions`-D array of one row of a nested list column (a non-empty array, as `_check_masks` let in)."""
    array, shape = value.values, [len(value.values)]
    for _ in range(dimensions - 1):
        shape.append(len(array[0]))
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False).reshape(shape)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS_DESCRIPTION)
class Rvos(evaluate.Metric):
    """J&F (DAVIS statistics), Ref-DAVIS17 and A2D/JHMDB metrics from predicted and ground-truth masks."""

    def _info(self):
        if self.config_name not in _FEATURES:
            raise KeyError(f"Unknown configuration {self.config_name!r}; choose one of {sorted(_FEATURES)}.")
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=_FEATURES[self.config_name],
            reference_urls=[
                "https://github.com/davisvideochallenge/davis2017-evaluation",
                "https://github.com/wjn922/ReferFormer",
                "https://github.com/mttr2021/MTTR",
            ],
        )
        # `_compute` gets the buffered Arrow columns and reads one row at a time: the default format would first turn
        # every mask into nested Python lists. Set after construction, since `MetricInfo` takes a format only for
        # features that are all `Value`s (a check written for the numpy format).
        info.format = "arrow"
        return info

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.add_batch`, the masks checked first."""
        for name, masks in (("predictions", predictions), ("references", references)):
            _check_masks(masks if masks is not None else [], name, *_MASKS[self.config_name][name])
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """`evaluate.Metric.add`, the masks checked first."""
        for name, mask in (("predictions", prediction), ("references", reference)):
            _check_masks([mask] if mask is not None else [], name, *_MASKS[self.config_name][name])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, scores=None, image_ids=None, bound_th=0.008, top1_only=False):
        if self.config_name == "a2d":
            evaluator = A2DEvaluator()
            for prediction, reference, row_scores, image_id in zip(predictions, references, scores, image_ids):
                evaluator.add(
                    image_id.as_py(),
                    _to_array(reference, 2),
                    _to_array(prediction, 3),
                    row_scores.values.to_numpy(zero_copy_only=False),
                )
            return evaluator.compute(top1_only=top1_only)
        if self.config_name == "ref_davis":
            evaluator = RefDavisEvaluator()
            for row, (prediction, reference) in enumerate(zip(predictions, references)):
                evaluator.add(str(row), _to_array(reference, 3), _to_array(prediction, 4))
            return evaluator.compute()
        j_rows, f_rows = [], []
        for prediction, reference in zip(predictions, references):
            predicted, ground_truth = _to_array(prediction, 3), _to_array(reference, 3)
            j_rows.append(region_similarity(ground_truth, predicted))
            f_rows.append(contour_accuracy(ground_truth, predicted, bound_th=bound_th))
        statistics = jf_statistics(j_rows, f_rows)
        return {"J&F": statistics["J&F-Mean"], "J": statistics["J-Mean"], "F": statistics["F-Mean"], **statistics}
