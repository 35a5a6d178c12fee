"""Referring video object segmentation metrics for the `evaluate` library.

A thin wrapper of `referformer.evaluation`, fed with per-sample statistics instead of full masks:

* `default`: one row per object (or per (video, expression)) with its per-frame J and F values
  -> `J&F-Mean`, `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay` (DAVIS statistics).
* `ref_davis`: the same rows tagged with their expression set `run` (0..3) -> the Ref-DAVIS17 average
  of the four runs, plus `per_run`.
* `a2d`: one row per sample with the intersection and union areas and the score of every query
  -> `P@0.5` .. `P@0.9`, `overall_iou`, `mean_iou` (the top-scoring query of each sample is used).
"""

import datasets
import evaluate
import numpy as np

from referformer.evaluation import REF_DAVIS_NUM_RUNS
from referformer.evaluation import a2d_iou_metrics
from referformer.evaluation import jf_statistics
from referformer.evaluation import ref_davis_summary
from referformer.evaluation import top_prediction_index


_DESCRIPTION = """\
Metrics of referring video object segmentation, in exact agreement with the official code: DAVIS-2017
region similarity J and contour accuracy F statistics (also averaged over the four Ref-DAVIS17
expression sets), and the A2D-Sentences / JHMDB-Sentences precision@K, overall IoU and mean IoU.
Per-frame J and F or per-query pixel counts are computed with `referformer.evaluation` (e.g.
`region_similarity`, `contour_accuracy`, `davis_unsupervised_jf`); this module aggregates them.
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
Config `default` (one row per object or per (video, expression)):
    j (`list[float]`): per-frame region similarity J of the object.
    f (`list[float]`): per-frame contour accuracy F of the object (same length).
Config `ref_davis` (one row per (expression set, object), from `davis_unsupervised_jf`):
    run (`int`): expression set 0..3.
    j, f: as in `default`.
Config `a2d` (one row per annotated sample):
    intersections (`list[int]`): intersection area of each query's mask with the ground truth.
    unions (`list[int]`): union area of each query's mask with the ground truth.
    scores (`list[float]`): score of each query.

Returns:
    `default`: `J&F-Mean`, `J-Mean`, `J-Recall`, `J-Decay`, `F-Mean`, `F-Recall`, `F-Decay`.
    `ref_davis`: the same keys averaged over the four runs, and `per_run`.
    `a2d`: `P@0.5`, `P@0.6`, `P@0.7`, `P@0.8`, `P@0.9`, `overall_iou`, `mean_iou`.

Example:
    >>> import evaluate
    >>> from referformer.evaluation import rvos_metric_path
    >>> metric = evaluate.load(rvos_metric_path())
    >>> metric.compute(j=[[1.0, 0.5]], f=[[1.0, 0.0]])["J&F-Mean"]
    0.625
"""

_FLOATS = datasets.List(datasets.Value("float64"))
_FEATURES = {
    "default": datasets.Features({"j": _FLOATS, "f": _FLOATS}),
    "ref_davis": datasets.Features({"run": datasets.Value("int32"), "j": _FLOATS, "f": _FLOATS}),
    "a2d": datasets.Features(
        {
            "intersections": datasets.List(datasets.Value("int64")),
            "unions": datasets.List(datasets.Value("int64")),
            "scores": _FLOATS,
        }
    ),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS_DESCRIPTION)
class Rvos(evaluate.Metric):
    """J&F (DAVIS statistics), Ref-DAVIS17 and A2D/JHMDB IoU metrics from per-sample statistics."""

    def _info(self):
        if self.config_name not in _FEATURES:
            raise KeyError(f"Unknown configuration {self.config_name!r}; choose one of {sorted(_FEATURES)}.")
        return evaluate.MetricInfo(
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

    def _compute(self, **inputs):
        if self.config_name == "a2d":
            return self._compute_a2d(inputs["intersections"], inputs["unions"], inputs["scores"])
        if self.config_name == "ref_davis":
            return self._compute_ref_davis(inputs["run"], inputs["j"], inputs["f"])
        return jf_statistics(inputs["j"], inputs["f"])

    @staticmethod
    def _compute_ref_davis(runs, j, f):
        unknown = sorted(set(runs) - set(range(REF_DAVIS_NUM_RUNS)))
        if unknown:
            raise ValueError(f"`run` must be in 0..{REF_DAVIS_NUM_RUNS - 1}, got {unknown}.")
        per_run = []
        for run in range(REF_DAVIS_NUM_RUNS):
            rows = [index for index, row_run in enumerate(runs) if row_run == run]
            if not rows:
                raise ValueError(f"No row for expression set {run}.")
            per_run.append(jf_statistics([j[index] for index in rows], [f[index] for index in rows]))
        return ref_davis_summary(per_run)

    @staticmethod
    def _compute_a2d(intersections, unions, scores):
        top_intersections, top_unions = [], []
        for sample, (sample_intersections, sample_unions, sample_scores) in enumerate(
            zip(intersections, unions, scores)
        ):
            if not len(sample_intersections) == len(sample_unions) == len(sample_scores):
                raise ValueError(f"Sample {sample}: intersections, unions and scores must have one value per query.")
            top = top_prediction_index(sample_scores)
            top_intersections.append(sample_intersections[top])
            top_unions.append(sample_unions[top])
        return a2d_iou_metrics(np.array(top_intersections, dtype=np.int64), np.array(top_unions, dtype=np.int64))
