"""Benchmark protocols built on `referformer.evaluation`: files in, scores or submissions out.

* Ref-YouTube-VOS: `write_ytvos_submission` writes the PNG masks and the `submission.zip` of the
  evaluation server; `evaluate_ytvos_folder` scores predictions in that layout offline against
  ground-truth masks (e.g. on a held-out part of the training set).
* Ref-DAVIS17: `evaluate_ref_davis` turns per-expression probability maps into the four `anno_k`
  label maps and runs the DAVIS-2017 unsupervised evaluation against the DAVIS annotations.
* A2D-Sentences / JHMDB-Sentences: `evaluate_a2d` scores per-sample predictions against the
  COCO-format ground-truth file of the benchmark; `predict_a2d` runs a model over the benchmark's samples, its masks
  post-processed by the benchmark's rule (`post_process_a2d_masks`).

`evaluate_benchmark` runs a `referformer.inference.ReferringVideoSegmenter` over one of `BENCHMARKS` with its protocol
(the videos split across the processes of `accelerate launch`) and scores it: what `run_rvos.py evaluate` does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import (
    ReferringVideoEvalTransform,
    check_meta_expressions,
    load_a2d_sentences,
    load_jhmdb_sentences,
    load_ref_davis17,
    load_ref_youtube_vos,
)
from .data_transforms import check_object_occurs, collate_clips, iter_row_frames, read_annotation_png
from .evaluation import (
    A2DEvaluator,
    RefDavisEvaluator,
    _as_strict_binary_masks,
    contour_accuracy,
    ref_davis_label_maps,
    region_similarity,
)


__all__ = [
    "A2D_GROUND_TRUTH",
    "CompressedArray",
    "BENCHMARKS",
    "REF_DAVIS_WINDOW",
    "davis_sequence_names",
    "default_split",
    "evaluate_a2d",
    "evaluate_a2d_benchmark",
    "evaluate_benchmark",
    "evaluate_ref_davis17_benchmark",
    "evaluate_ytvos_layout",
    "group_by_video",
    "post_process_a2d_masks",
    "evaluate_ref_davis",
    "evaluate_ytvos_folder",
    "predict_a2d",
    "process_state",
    "read_davis_annotations",
    "run_sharded",
    "write_ytvos_submission",
]

YTVOS_ANNOTATIONS_DIR = "Annotations"
YTVOS_SUBMISSION_ZIP = "submission.zip"


def _check_path_component(name, what: str) -> str:
    name = str(name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"Invalid {what} {name!r}: it must be a plain file name.")
    return name


def _existing_mask(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Missing mask {path}.")
    return path


def _read_png(path: Path) -> np.ndarray:
    with Image.open(_existing_mask(path)) as image:
        mode = image.mode
        array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{path} is not a single-channel mask (mode {mode}).")
    return array


def _load_json(source) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    with open(source, encoding="utf-8") as file:
        return json.load(file)


# ---------------------------------------------------------------------------------------------------
# Ref-YouTube-VOS
# ---------------------------------------------------------------------------------------------------


def _iter_ytvos_predictions(predictions) -> Iterator[tuple[str, str, list[str], list[np.ndarray]]]:
    if isinstance(predictions, Mapping):
        for video_id, expressions in predictions.items():
            for exp_id, frames in expressions.items():
                yield video_id, exp_id, list(frames.keys()), list(frames.values())
    else:
        for video_id, exp_id, frame_names, masks in predictions:
            frame_names = list(frame_names)
            if len(frame_names) != len(masks):
                raise ValueError(
                    f"Video {video_id!r}, expression {exp_id!r}: {len(frame_names)} frame names for "
                    f"{len(masks)} masks."
                )
            yield video_id, exp_id, frame_names, list(masks)


def write_ytvos_submission(predictions, output_dir, overwrite: bool = False) -> Path:
    """Write Ref-YouTube-VOS predictions in the layout of the evaluation server and zip them.

    Masks are saved as `<output_dir>/Annotations/<video>/<exp_id>/<frame>.png` (uint8 0/255, mode "L", as
    the original inference writes them) and zipped into `<output_dir>/submission.zip` with the
    `Annotations/...` paths the server expects. Everything is written to a temporary folder inside
    `output_dir` first and moved into place at the end, so an interrupted run leaves no partial output.

    Args:
        predictions: `{video_id: {exp_id: {frame_name: mask [H, W]}}}`, or an iterable of
            `(video_id, exp_id, frame_names, masks [T, H, W])`. Masks must be binary (booleans, 0 and 1).
        output_dir: folder receiving `Annotations/` and `submission.zip` (created if needed).
        overwrite: replace an existing `Annotations/` folder and `submission.zip` instead of raising.

    Returns:
        The path of `submission.zip`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir = output_dir / YTVOS_ANNOTATIONS_DIR
    zip_path = output_dir / YTVOS_SUBMISSION_ZIP
    if not overwrite and (annotations_dir.exists() or zip_path.exists()):
        raise FileExistsError(
            f"{annotations_dir} or {zip_path} already exists; pass `overwrite=True` to replace them."
        )

    staging = Path(tempfile.mkdtemp(prefix=".submission-", dir=output_dir))
    try:
        staged_annotations = staging / YTVOS_ANNOTATIONS_DIR
        written = set()
        for video_id, exp_id, frame_names, masks in _iter_ytvos_predictions(predictions):
            video_id = _check_path_component(video_id, "video id")
            exp_id = _check_path_component(exp_id, "expression id")
            if (video_id, exp_id) in written:
                raise ValueError(f"Video {video_id!r}, expression {exp_id!r} appears twice.")
            written.add((video_id, exp_id))
            expression_dir = staged_annotations / video_id / exp_id
            expression_dir.mkdir(parents=True)
            for frame_name, mask in zip(frame_names, masks):
                frame_name = _check_path_component(frame_name, "frame name")
                path = expression_dir / f"{frame_name}.png"
                if path.exists():
                    raise ValueError(f"Video {video_id!r}, expression {exp_id!r}: frame {frame_name!r} appears twice.")
                binary = _as_strict_binary_masks(mask, f"mask of {video_id}/{exp_id}/{frame_name}", ndims=(2,))
                Image.fromarray(binary.astype(np.uint8) * 255).save(path)
        if not written:
            raise ValueError("No prediction to write.")

        staged_zip = staging / YTVOS_SUBMISSION_ZIP
        with zipfile.ZipFile(staged_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staged_annotations.rglob("*.png")):
                archive.write(path, path.relative_to(staging).as_posix())

        previous_annotations = staging / "previous-annotations"
        if annotations_dir.exists():
            os.replace(annotations_dir, previous_annotations)
        try:
            os.replace(staged_annotations, annotations_dir)
        except OSError:
            if previous_annotations.exists():
                os.replace(previous_annotations, annotations_dir)
            raise
        os.replace(staged_zip, zip_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return zip_path


def evaluate_ytvos_folder(predictions_dir, annotations_dir, meta_expressions, bound_th=0.008) -> dict[str, float]:
    """J&F of predictions in the Ref-YouTube-VOS layout against ground-truth masks.

    For each expression, J and F are computed on every frame listed for its video in `meta_expressions`,
    against the mask of the referred object (`obj_id`), and averaged over the frames; the results are
    averaged over expressions.

    Args:
        predictions_dir: folder with `<video>/<exp_id>/<frame>.png` masks (any non-zero value is foreground),
            i.e. the `Annotations` folder written by `write_ytvos_submission` (or the folder containing it).
        annotations_dir: ground-truth folder with `<video>/<frame>.png` palette label maps (pixel value = object
            id; see `referformer.data_transforms.read_annotation_png`).
        meta_expressions: path of `meta_expressions.json` (or its loaded content); every expression needs an
            `obj_id` that occurs in at least one of its video's masks, as in the training split.
        bound_th: the boundary tolerance of F (see `contour_accuracy`).

    Returns:
        `{"J&F", "J", "F"}` as fractions.
    """
    predictions_dir = Path(predictions_dir)
    if (predictions_dir / YTVOS_ANNOTATIONS_DIR).is_dir():
        predictions_dir = predictions_dir / YTVOS_ANNOTATIONS_DIR
    annotations_dir = Path(annotations_dir)
    source = "`meta_expressions`" if isinstance(meta_expressions, Mapping) else meta_expressions
    videos = check_meta_expressions(_load_json(meta_expressions), source)

    j_per_expression, f_per_expression = [], []
    for video_id, video in videos.items():
        frames = video["frames"]
        labels = None
        for exp_id, expression in video["expressions"].items():
            if "obj_id" not in expression:
                raise KeyError(f"Video {video_id!r}, expression {exp_id!r} has no `obj_id` to evaluate against.")
            if labels is None:
                labels = np.stack([read_annotation_png(_existing_mask(annotations_dir / video_id / f"{frame}.png"))
                                   for frame in frames])
            gt = labels == int(expression["obj_id"])
            if not gt.any():
                check_object_occurs(labels, int(expression["obj_id"]), video_id, exp_id)
            pred = np.stack([_read_png(predictions_dir / video_id / exp_id / f"{frame}.png") for frame in frames])
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Video {video_id!r}, expression {exp_id!r}: predicted masks {pred.shape} vs ground truth "
                    f"{gt.shape}."
                )
            j_per_expression.append(np.mean(region_similarity(gt, pred)))
            f_per_expression.append(np.mean(contour_accuracy(gt, pred, bound_th=bound_th)))
    if not j_per_expression:
        raise ValueError("`meta_expressions` lists no expression.")
    j, f = float(np.mean(j_per_expression)), float(np.mean(f_per_expression))
    return {"J&F": (j + f) / 2, "J": j, "F": f}


# ---------------------------------------------------------------------------------------------------
# Ref-DAVIS17
# ---------------------------------------------------------------------------------------------------


def davis_sequence_names(davis_root, subset: str = "val") -> list[str]:
    """Sequence names of a DAVIS-2017 subset, in the order of `ImageSets/2017/<subset>.txt`."""
    path = Path(davis_root) / "ImageSets" / "2017" / f"{subset}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Missing DAVIS sequence list {path}.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_davis_annotations(davis_root, sequence: str, resolution: str = "480p") -> np.ndarray:
    """Unsupervised ground truth of one DAVIS sequence: label maps `[T, H, W]` (255 void), frames sorted by name."""
    folder = Path(davis_root) / "Annotations_unsupervised" / resolution / sequence
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"No annotation found in {folder}.")
    return np.stack([_read_png(path) for path in paths])


def evaluate_ref_davis(
    davis_root, predictions, subset: str = "val", resolution: str = "480p", label_maps: bool = False
) -> dict:
    """Ref-DAVIS17 evaluation from per-expression probability maps.

    Each video's expression maps become the four `anno_k` label maps (`ref_davis_label_maps`), each set is
    scored with the DAVIS-2017 unsupervised protocol against `Annotations_unsupervised/<resolution>` and the
    four global results are averaged. Videos are processed one at a time, so `predictions` can be a
    generator.

    Args:
        davis_root: the DAVIS-2017 folder (`ImageSets/`, `Annotations_unsupervised/`).
        predictions: mapping or iterable of `(sequence, expression_probabilities)`, where
            `expression_probabilities` holds the `[T, H, W]` sigmoid maps of the video's expressions in
            expression order (`4 * object + annotator_set`).
        subset: the DAVIS subset whose sequences are all evaluated.
        resolution: the annotation resolution folder.
        label_maps: the items hold the four label maps of `ref_davis_label_maps` instead of the probabilities.

    Returns:
        The dictionary of `ref_davis_scores`.
    """
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    evaluator = RefDavisEvaluator()
    for sequence, maps in items:
        ground_truth = read_davis_annotations(davis_root, sequence, resolution)
        if label_maps:
            evaluator.add(sequence, ground_truth, maps)
        else:
            evaluator.add_probabilities(sequence, ground_truth, maps)
    return evaluator.compute(sequence_order=davis_sequence_names(davis_root, subset))


# ---------------------------------------------------------------------------------------------------
# A2D-Sentences / JHMDB-Sentences
# ---------------------------------------------------------------------------------------------------


def evaluate_a2d(ground_truth, predictions: Iterable | Mapping, top1_only: bool = False) -> dict:
    """A2D-Sentences / JHMDB-Sentences evaluation against the benchmark's COCO-format ground truth.

    Args:
        ground_truth: path of `a2d_sentences_test_annotations_in_coco_format.json` or
            `jhmdb_sentences_gt_annotations_in_coco_format.json` (or the loaded content): one annotation per
            image id.
        predictions: mapping `image_id -> (pred_masks [N, H, W], scores [N])` or iterable of
            `(image_id, pred_masks, scores)`, with all queries' binary masks at the original resolution. Every
            ground-truth image needs a prediction.
        top1_only: score only the top prediction of each sample for the mAP.

    Returns:
        The dictionary of `a2d_metrics`.
    """
    dataset = _load_json(ground_truth)
    annotations = {}
    for annotation in dataset["annotations"]:
        if annotation["image_id"] in annotations:
            raise ValueError(f"Image {annotation['image_id']!r} has more than one ground-truth annotation.")
        annotations[annotation["image_id"]] = annotation
    items = ((key, *value) for key, value in predictions.items()) if isinstance(predictions, Mapping) else predictions
    evaluator = A2DEvaluator()
    for image_id, pred_masks, scores in items:
        if image_id not in annotations:
            raise KeyError(f"Image id {image_id!r} is not in the ground truth.")
        gt = mask_utils.decode(annotations[image_id]["segmentation"])
        evaluator.add(image_id, gt, pred_masks, scores)
    return evaluator.compute(top1_only=top1_only, image_order=[image["id"] for image in dataset["images"]])


@torch.no_grad()
def predict_a2d(segmenter, rows, num_frames: int, threshold: float = 0.5, progress: bool = False, indices=None):
    """Predictions of a `referformer.inference.ReferringVideoSegmenter` in the A2D-Sentences / JHMDB-Sentences
    protocol, as `evaluate_a2d` takes them: for each sample of `rows` (a `referformer.data` table), a
    window of `num_frames` frames centred on the annotated frame goes through the model and every query's mask on
    that frame is brought to the original size (as the original: through the padded input size) and thresholded.
    Yields `(image_id, masks [Q, H, W] bool, scores [Q])` for the samples `indices` (default: all)."""
    video_processor = segmenter.processor.video_processor
    size = video_processor.size
    transform = ReferringVideoEvalTransform(
        num_frames,
        size=size["shortest_edge"],
        max_size=size.get("longest_edge") or 640,
        tokenizer=segmenter.processor.tokenizer,
        mean=video_processor.image_mean,
        std=video_processor.image_std,
    )
    indices = range(len(rows)) if indices is None else indices
    for index in tqdm(indices, desc="samples", disable=not progress):
        sample = transform(rows[index])
        batch = collate_clips([sample], pad_token_id=segmenter.processor.tokenizer.pad_token_id)
        batch.pop("labels", None)
        with segmenter.autocast():
            outputs = segmenter.model(**{key: value.to(segmenter.device) for key, value in batch.items()})
        scores = outputs.logits[0, 0].float().sigmoid().max(-1).values.cpu()
        masks = post_process_a2d_masks(
            video_processor, outputs.pred_masks[0, 0], sample["resized_size"].tolist(),
            sample["original_size"].tolist(), threshold,
        )
        yield sample["image_id"], masks.cpu().numpy(), scores.numpy()


def post_process_a2d_masks(video_processor, mask_logits, resized_size, original_size, threshold: float = 0.5):
    """The A2D-Sentences / JHMDB-Sentences mask rule of the original: the stride-4 mask logits `[Q, h, w]` of the
    annotated frame go to the padded input size (4x, the way `video_processor.mask_interpolation` says), are
    thresholded, cropped to the resized frame `resized_size` and brought to `original_size` by nearest neighbour
    (the whole-video rule of `post_process_referring_video_segmentation` interpolates to the frame size instead).
    Returns boolean masks `[Q, H, W]`."""
    masks = video_processor.mask_probabilities(mask_logits, 4 * mask_logits.shape[-2], 4 * mask_logits.shape[-1])
    height, width = resized_size
    masks = (masks > threshold)[:, :height, :width].float()
    return F.interpolate(masks[None], size=tuple(original_size), mode="nearest")[0].bool()


# ---------------------------------------------------------------------------------------------------
# A model on a benchmark
# ---------------------------------------------------------------------------------------------------

# Splitting work across the processes of `accelerate launch` (evaluation and `run_rvos.py predict`).


class CompressedArray:
    """A numpy array held zlib-compressed (binary masks and label maps shrink by orders of magnitude), to send
    results between processes."""

    def __init__(self, array):
        array = np.ascontiguousarray(array)
        self.dtype, self.shape, self.data = array.dtype.str, array.shape, zlib.compress(array.tobytes(), 1)

    def numpy(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), dtype=self.dtype).reshape(self.shape)


def process_state():
    """The Accelerate state of this process (`PartialState`): one of the processes of `accelerate launch`, on the CPU
    when launched with `ACCELERATE_USE_CPU=1` (or `--cpu`), or the only process."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def end_process_group() -> None:
    """After a command's work succeeded on every process of `accelerate launch`: wait for all of them, then destroy
    the process group. A process that exits with its group alive can abort in the communication library's threads at
    interpreter exit (`terminate called without an active exception`, SIGABRT), failing a run whose results are
    complete. Not called after an error: the other processes may be inside a collective the barrier would never meet."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_sharded(function, items, description: str | None = None) -> list:
    """`[function(item) for item in items]` with the items split across the processes of `accelerate launch` (item
    `i` on process `i % num_processes`) and the results gathered, in item order, on every process. Without
    `accelerate launch` this is one process doing everything. Results must be picklable (and small: see
    `CompressedArray`)."""
    from accelerate.utils import gather_object

    state = process_state()
    items = list(items)
    mine = range(state.process_index, len(items), state.num_processes)
    progress = tqdm(mine, desc=description, disable=description is None or not state.is_main_process)
    results = [(index, function(items[index])) for index in progress]
    if state.num_processes > 1:
        results = sorted(gather_object(results), key=lambda pair: pair[0])
    return [result for _, result in results]


BENCHMARKS = ("synthetic", "ref-youtube-vos", "ref-davis17", "a2d-sentences", "jhmdb-sentences")
A2D_GROUND_TRUTH = {
    "a2d-sentences": "a2d_sentences_test_annotations_in_coco_format.json",
    "jhmdb-sentences": "jhmdb_sentences_gt_annotations_in_coco_format.json",
}
REF_DAVIS_WINDOW = 36  # the original's Ref-DAVIS17 inference: independent 36-frame clips


def default_split(benchmark: str) -> str:
    """The split a benchmark is evaluated on: `test` for A2D-Sentences (JHMDB-Sentences has one), else `valid`."""
    return "test" if benchmark in A2D_GROUND_TRUTH else "valid"


def group_by_video(rows) -> dict[str, list[dict]]:
    """The rows of a `referformer.data` table grouped by `video_id`, videos in order of first appearance."""
    videos = defaultdict(list)
    for row in rows:
        videos[row["video_id"]].append(row)
    return videos


def evaluate_benchmark(
    segmenter,
    benchmark: str,
    data_root,
    output_dir,
    split: str | None = None,
    window: int | None = None,
    num_frames: int = 5,
    threshold: float = 0.5,
    davis_root=None,
    ground_truth=None,
) -> dict | None:
    """Segments `benchmark` (one of `BENCHMARKS`) with `segmenter` under its protocol and scores it.

    Args:
        segmenter: a `referformer.inference.ReferringVideoSegmenter`.
        benchmark: `synthetic` and `ref-youtube-vos` (the Ref-YouTube-VOS layout: `evaluate_ytvos_layout`),
            `ref-davis17` (`evaluate_ref_davis17_benchmark`), `a2d-sentences` or `jhmdb-sentences`
            (`evaluate_a2d_benchmark`).
        data_root: the dataset folder.
        output_dir: receives the Ref-YouTube-VOS submission (`Annotations/`, `submission.zip`); unused otherwise.
        split: default `default_split(benchmark)`.
        window: frames per forward pass, each window with its own query; default the whole video
            (`REF_DAVIS_WINDOW` for Ref-DAVIS17).
        num_frames: A2D/JHMDB: frames of the window centred on the annotated frame.
        threshold: mask probability threshold.
        davis_root: Ref-DAVIS17: the DAVIS-2017 folder.
        ground_truth: A2D/JHMDB: the COCO-format ground truth (default: the benchmark's file in `data_root`).

    Returns:
        The scores (and for the Ref-YouTube-VOS layout `num_expressions` and the `submission` path) on the main
        process, None on the others.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}.")
    split = split or default_split(benchmark)
    if benchmark in ("synthetic", "ref-youtube-vos"):
        return evaluate_ytvos_layout(segmenter, data_root, split, output_dir, window, threshold)
    if benchmark == "ref-davis17":
        return evaluate_ref_davis17_benchmark(segmenter, data_root, davis_root, split, window or REF_DAVIS_WINDOW, threshold)
    return evaluate_a2d_benchmark(segmenter, benchmark, data_root, split, ground_truth, num_frames, threshold)


def evaluate_ytvos_layout(segmenter, data_root, split: str, output_dir, window=None, threshold=0.5) -> dict | None:
    """A dataset in the Ref-YouTube-VOS layout (Ref-YouTube-VOS, synthetic): one query per video (or per `window`),
    the submission folder and zip written into `output_dir`, and J&F when the split has masks."""
    rows = load_ref_youtube_vos(data_root, split)
    if len(rows) == 0:
        raise ValueError(f"{data_root} lists no expression for split {split!r}.")

    def segment(video_rows):
        sentences = [row["expression"] for row in video_rows]
        results = segmenter(iter_row_frames(video_rows[0]), sentences, window, threshold=threshold)
        return [(row["exp_id"], row["frame_names"], CompressedArray(result.masks)) for row, result in zip(video_rows, results)]

    videos = group_by_video(rows)
    segmented = run_sharded(segment, videos.values(), "videos")
    if not process_state().is_main_process:
        return None
    predictions = (
        (video_id, exp_id, frame_names, masks.numpy())
        for video_id, expressions in zip(videos, segmented)
        for exp_id, frame_names, masks in expressions
    )
    zip_path = write_ytvos_submission(predictions, output_dir)
    results = {"num_expressions": len(rows), "submission": str(zip_path)}
    if all(mask_type != "none" for mask_type in rows["mask_type"]):
        root = Path(data_root)
        annotations = root / split / YTVOS_ANNOTATIONS_DIR
        results.update(evaluate_ytvos_folder(output_dir, annotations, root / "meta_expressions" / split / "meta_expressions.json"))
    return results


def evaluate_ref_davis17_benchmark(
    segmenter, data_root, davis_root, split: str = "valid", window: int = REF_DAVIS_WINDOW, threshold: float = 0.5
) -> dict | None:
    """Ref-DAVIS17: probabilities of independent `window`-frame clips, the four expression sets' label maps, and the
    DAVIS-2017 unsupervised J&F against `davis_root`."""
    if not davis_root:
        raise ValueError("Ref-DAVIS17 needs the DAVIS-2017 folder with Annotations_unsupervised/ (`davis_root`).")
    videos = group_by_video(load_ref_davis17(data_root, split))

    def label_maps(video_rows):
        video_rows = sorted(video_rows, key=lambda row: int(row["exp_id"]))
        sentences = [row["expression"] for row in video_rows]
        results = segmenter(iter_row_frames(video_rows[0]), sentences, window, threshold=threshold)
        return CompressedArray(np.stack(ref_davis_label_maps([result.probabilities() for result in results])))

    segmented = run_sharded(label_maps, videos.values(), "videos")
    if not process_state().is_main_process:
        return None
    predictions = ((video_id, maps.numpy()) for video_id, maps in zip(videos, segmented))
    subset = "val" if split == "valid" else split
    scores = evaluate_ref_davis(davis_root, predictions, subset=subset, label_maps=True)
    return {"J&F": scores["J&F-Mean"], "J": scores["J-Mean"], "F": scores["F-Mean"], **scores}


def evaluate_a2d_benchmark(
    segmenter, benchmark: str, data_root, split: str = "test", ground_truth=None, num_frames: int = 5, threshold=0.5
) -> dict | None:
    """A2D-Sentences / JHMDB-Sentences (`benchmark`): every query's mask on the annotated frame (`predict_a2d`), P@K,
    IoUs and mask mAP against the COCO-format `ground_truth` (default: the benchmark's file in `data_root`)."""
    ground_truth = Path(ground_truth or Path(data_root) / A2D_GROUND_TRUTH[benchmark])
    if not ground_truth.is_file():
        raise FileNotFoundError(f"Ground-truth file not found: {ground_truth} (pass `ground_truth`, `--ground_truth`).")
    rows = load_a2d_sentences(data_root, split) if benchmark == "a2d-sentences" else load_jhmdb_sentences(data_root)

    def predict(index):
        ((image_id, masks, scores),) = predict_a2d(segmenter, rows, num_frames, threshold, indices=[index])
        return image_id, CompressedArray(masks), scores

    predictions = run_sharded(predict, range(len(rows)), "samples")
    if not process_state().is_main_process:
        return None
    return evaluate_a2d(ground_truth, ((image_id, masks.numpy(), scores) for image_id, masks, scores in predictions))
