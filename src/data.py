"""The referring video object segmentation benchmarks of ReferFormer as `datasets.Dataset` objects.

Every loader returns one row per (video, expression, referred object) with the same columns, so datasets can be
concatenated. By default the media columns hold file paths (`DATASET_FEATURES`); with `embed_media=True` they are
`datasets` media features (`MEDIA_DATASET_FEATURES`): `save_to_disk`, `push_to_hub` and the datasets streamed from
them carry the files' bytes, so the dataset works on a machine without the source folders. Frames and masks are
decoded by the transforms (`ReferringVideoTrainTransform`, `ReferringVideoEvalTransform`, on one row or a batch) or
with `load_video_frames` / `load_object_masks`, from either form.

```python
from referformer.data import ReferringVideoTrainTransform, load_ref_youtube_vos

train = load_ref_youtube_vos("data/ref-youtube-vos", "train").with_transform(ReferringVideoTrainTransform(5, seed=0))
sample = train[0]   # pixel_values [5, 3, h, w], expression, labels {masks, boxes, valid, class_labels, ...}
load_ref_youtube_vos("data/ref-youtube-vos", "train", embed_media=True).push_to_hub("me/ref-youtube-vos")
```

Columns:

* `dataset`: "ref-youtube-vos", "ref-davis17", "a2d-sentences", "jhmdb-sentences", "refcoco", "refcoco+", "refcocog".
* `video_id`, `exp_id`, `obj_id` (strings; `obj_id` is "" when the split has no ground truth), `expression` (as
  annotated; the transforms lower-case it), `category` (object category name, "" when unknown).
* `frames`: the ordered frames; `frame_names`: their names (used to name prediction files); `video`: a video file to
  decode instead, when `frames` is empty (A2D-Sentences without extracted frames).
* `mask_type` and its `masks`: "palette" (one palette PNG of object ids per frame, object pixels == `obj_id`),
  "a2d_h5" ([h5 of the annotated frame], instance `obj_id`), "jhmdb_mat" ([puppet_mask.mat], frame
  `annotated_frame`), "binary" (the referred object's binary mask, mode "1", of the annotated frame, or of every
  frame when `annotated_frame` is -1), "coco" (no `masks`: `segmentation` as JSON and `bbox` xywh), "none" (no
  ground truth).
* `annotated_frame`: 0-based index of the only annotated frame (A2D/JHMDB), -1 when every frame is annotated.
* `image_id`: the evaluation id of the sample ("v_<video>_f_<frame>_i_<instance>" for A2D, "v_<video>_f_<frame>"
  for JHMDB, the converted COCO image id for RefCOCO, "" otherwise).
* `start_frame`: clip start set by `expand_clip_starts`, -1 otherwise.

The two forms of `frames`, `masks` and `video`:

* paths (`DATASET_FEATURES`): file path strings, `video` "" when there is none.
* `embed_media=True` (`MEDIA_DATASET_FEATURES`): frames and masks as `List(Image(decode=False))`, the video as
  `Video(decode=False)` (None when there is none). The frames stay a sequence of images, not a video: the datasets
  ship JPEG (or PNG) frame folders, whose files are kept byte for byte (so the pixels are those of the path form),
  and a clip decodes only the frames it samples; A2D-Sentences without extracted frames keeps its MP4 file as a
  `Video`. Palette PNGs are kept as they are; the A2D .h5 and JHMDB .mat masks, which are not images, are decoded
  when the dataset is loaded into the referred object's binary mask of the annotated frame (mask type "binary").
  Until the dataset is written, the values point at the source files, as `datasets`' image folders do; `save_to_disk`
  and `push_to_hub` read the bytes in. Undecoded (`decode=False`) because a clip needs a few frames of a video:
  `dataset.cast_column("frames", List(Image()))` gives PIL images, which the transforms read too. Every row holds
  its own frames: a video with several expressions is stored once per expression.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from datasets import Dataset, Features, Image, List, Value, Video
from PIL import Image as PILImage

from .data_synthetic import (
    describe_attributes,
    generate_referring_shapes,
    matching_objects,
)
from .data_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ReferringVideoEvalTransform,
    ReferringVideoTrainTransform,
    centered_window_indices,
    clean_expression,
    count_video_frames,
    iter_row_frames,
    load_object_masks,
    load_video_frames,
    photometric_distort,
    sample_train_frame_indices,
    swap_left_right,
)
from .video_io import list_frame_files


__all__ = [
    "DATASET_FEATURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEDIA_DATASET_FEATURES",
    "REFCOCO_SPLITS",
    "ReferringVideoEvalTransform",
    "ReferringVideoTrainTransform",
    "centered_window_indices",
    "check_meta_expressions",
    "clean_expression",
    "count_video_frames",
    "describe_attributes",
    "expand_clip_starts",
    "generate_referring_shapes",
    "iter_row_frames",
    "load_a2d_sentences",
    "load_jhmdb_sentences",
    "load_object_masks",
    "load_ref_davis17",
    "load_ref_youtube_vos",
    "load_refcoco",
    "load_video_frames",
    "matching_objects",
    "photometric_distort",
    "sample_train_frame_indices",
    "swap_left_right",
]

DATASET_FEATURES = Features(
    {
        "dataset": Value("string"),
        "video_id": Value("string"),
        "exp_id": Value("string"),
        "obj_id": Value("string"),
        "expression": Value("string"),
        "category": Value("string"),
        "frames": List(Value("string")),
        "frame_names": List(Value("string")),
        "video": Value("string"),
        "mask_type": Value("string"),
        "masks": List(Value("string")),
        "annotated_frame": Value("int32"),
        "segmentation": Value("string"),
        "bbox": List(Value("float32")),
        "image_id": Value("string"),
        "start_frame": Value("int32"),
    }
)

MEDIA_DATASET_FEATURES = Features(
    {
        **DATASET_FEATURES,
        "frames": List(Image(decode=False)),
        "video": Video(decode=False),
        "masks": List(Image(decode=False)),
    }
)

YTVOS_SPLITS = ("train", "valid", "test")
DAVIS_SPLITS = ("train", "valid")
A2D_SPLITS = ("train", "test")
REFCOCO_SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _existing_dir(path: str | os.PathLike, description: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{description} not found: {path} is not a directory.")
    return path


def _read_json(path: Path, description: str):
    if not path.is_file():
        raise FileNotFoundError(f"{description} not found: {path}")
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{description} {path} is not valid JSON: {error}") from error


def check_meta_expressions(meta, source) -> dict:
    """The `videos` of a Ref-YouTube-VOS `meta_expressions.json` content `meta` (read from `source`), each checked to
    hold its `frames` (a list of names) and its `expressions` (an object of `{"exp": sentence, ...}` by id)."""
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise ValueError(f"{source} has no \"videos\" object: not a meta_expressions.json file.")
    for video_id, video in videos.items():
        if not isinstance(video, dict) or not isinstance(video.get("frames"), list):
            raise ValueError(f"{source}: video {video_id!r} has no \"frames\" list.")
        expressions = video.get("expressions")
        if not isinstance(expressions, dict):
            raise ValueError(
                f"{source}: video {video_id!r} has no \"expressions\" object (expected e.g. "
                '{"0": {"exp": "the red circle", "obj_id": "1"}}); remove the video or give it its expressions.'
            )
        for exp_id, expression in expressions.items():
            if not isinstance(expression, dict) or not isinstance(expression.get("exp"), str):
                raise ValueError(f"{source}: expression {exp_id!r} of video {video_id!r} has no \"exp\" sentence.")
    return videos


def _check_choice(value: str, choices: Iterable[str], what: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}.")


def _row(dataset: str, video_id: str, exp_id: str, expression: str, **fields) -> dict:
    row = {
        "dataset": dataset,
        "video_id": video_id,
        "exp_id": exp_id,
        "obj_id": "",
        "expression": expression,
        "category": "",
        "frames": [],
        "frame_names": [],
        "video": "",
        "mask_type": "none",
        "masks": [],
        "annotated_frame": -1,
        "segmentation": "",
        "bbox": [],
        "image_id": "",
        "start_frame": -1,
    }
    unknown = fields.keys() - row.keys()
    if unknown:
        raise KeyError(f"Unknown columns {sorted(unknown)}.")
    row.update(fields)
    return row


def _binary_mask_png(mask) -> bytes:
    """A `[H, W]` bool mask as the bytes of a mode "1" PNG."""
    buffer = io.BytesIO()
    PILImage.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG")
    return buffer.getvalue()


def _media_row(row: dict) -> dict:
    """The `embed_media` form of a path-form row: the same files as Image/Video values, A2D/JHMDB masks (not images)
    decoded into one binary mask image."""
    if row["mask_type"] in ("a2d_h5", "jhmdb_mat"):
        row = {**row, "mask_type": "binary", "masks": [_binary_mask_png(load_object_masks(row, [])[0])]}
    return {**row, "video": row["video"] or None}


def _to_dataset(rows: list[dict], split: str, embed_media: bool) -> Dataset:
    # An in-memory table: rows are only paths, strings and small mask images, and nothing is cached under a stale
    # fingerprint when the annotation files change.
    if embed_media:
        return Dataset.from_list([_media_row(row) for row in rows], features=MEDIA_DATASET_FEATURES, split=split)
    return Dataset.from_list(rows, features=DATASET_FEATURES, split=split)


# ---------------------------------------------------------------------------------------------------
# Ref-YouTube-VOS layout (Ref-YouTube-VOS, Ref-DAVIS17, synthetic shapes)
# ---------------------------------------------------------------------------------------------------


def _load_ytvos_layout(root: Path, split: str, dataset: str, description: str, embed_media: bool) -> Dataset:
    expressions_file = root / "meta_expressions" / split / "meta_expressions.json"
    videos = check_meta_expressions(_read_json(expressions_file, f"{description} expressions file"), expressions_file)
    split_dir = _existing_dir(root / split, f"{description} {split} folder")
    image_dir = _existing_dir(split_dir / "JPEGImages", f"{description} {split} frames folder")
    annotation_dir = split_dir / "Annotations"
    meta_file = split_dir / "meta.json"
    if split == "train":
        _existing_dir(annotation_dir, f"{description} train masks folder")
        objects_by_video = _read_json(meta_file, f"{description} train meta.json")["videos"]
    else:
        objects_by_video = (
            _read_json(meta_file, f"{description} {split} meta.json")["videos"] if meta_file.is_file() else {}
        )
    has_masks = annotation_dir.is_dir()

    excluded = set()
    if dataset == "ref-youtube-vos" and split == "valid":
        # The competition "valid" file also lists the test videos; the original keeps the ones not in the test file.
        test_file = root / "meta_expressions" / "test" / "meta_expressions.json"
        if test_file.is_file():
            excluded = set(_read_json(test_file, f"{description} test expressions file")["videos"])

    rows = []
    for video_id, video in videos.items():
        if video_id in excluded:
            continue
        frame_names = sorted(video["frames"])
        frames = [str(image_dir / video_id / f"{name}.jpg") for name in frame_names]
        objects = objects_by_video.get(video_id, {}).get("objects", {})
        for exp_id, expression in video["expressions"].items():
            obj_id = str(expression.get("obj_id", ""))
            if split == "train" and not obj_id:
                raise ValueError(f"{expressions_file}: expression {exp_id} of video {video_id} has no obj_id.")
            has_ground_truth = bool(obj_id) and has_masks
            masks = [str(annotation_dir / video_id / f"{name}.png") for name in frame_names]
            rows.append(
                _row(
                    dataset,
                    video_id,
                    str(exp_id),
                    expression["exp"],
                    obj_id=obj_id,
                    category=objects.get(obj_id, {}).get("category", ""),
                    frames=frames,
                    frame_names=frame_names,
                    mask_type="palette" if has_ground_truth else "none",
                    masks=masks if has_ground_truth else [],
                )
            )
    return _to_dataset(rows, split, embed_media)


def load_ref_youtube_vos(root: str | os.PathLike, split: str = "train", *, embed_media: bool = False) -> Dataset:
    """Ref-YouTube-VOS: `root/{split}/JPEGImages/<video>/<frame>.jpg`, palette masks in `root/{split}/Annotations`,
    objects in `root/{split}/meta.json`, expressions in `root/meta_expressions/{split}/meta_expressions.json`.

    The train split needs masks and `meta.json`. Other splits have masks when their `Annotations` folder exists and
    the expressions carry an `obj_id` (the official valid/test expressions have only `exp`: `mask_type` "none"). The
    official "valid" expressions file also lists the test videos: those listed in the test file are dropped, as the
    original does. `embed_media`: frames and masks as `datasets` Image features (see the module docstring).
    """
    root = _existing_dir(root, "Ref-YouTube-VOS root")
    _check_choice(split, YTVOS_SPLITS, "Ref-YouTube-VOS split")
    return _load_ytvos_layout(root, split, "ref-youtube-vos", "Ref-YouTube-VOS", embed_media)


def load_ref_davis17(root: str | os.PathLike, split: str = "valid", *, embed_media: bool = False) -> Dataset:
    """Ref-DAVIS17 converted to the Ref-YouTube-VOS layout by the original `convert_davis_to_ytvos.py`.

    `root/{train,valid}/{JPEGImages,Annotations}/<video>/`, `root/{split}/meta.json`,
    `root/meta_expressions/{split}/meta_expressions.json` with four expressions per object (expression id
    4 * (obj - 1) + k for annotator-1 first-frame, annotator-1 full-video, annotator-2 first-frame, annotator-2
    full-video). `embed_media`: frames and masks as `datasets` Image features (see the module docstring).
    """
    root = _existing_dir(root, "Ref-DAVIS17 root")
    _check_choice(split, DAVIS_SPLITS, "Ref-DAVIS17 split")
    return _load_ytvos_layout(root, split, "ref-davis17", "Ref-DAVIS17", embed_media)


# ---------------------------------------------------------------------------------------------------
# A2D-Sentences and JHMDB-Sentences
# ---------------------------------------------------------------------------------------------------


def load_a2d_sentences(
    root: str | os.PathLike,
    split: str = "train",
    frames_dir: str | os.PathLike | None = None,
    *,
    embed_media: bool = False,
) -> Dataset:
    """A2D-Sentences (MTTR annotation files): one row per `[query, video_id, frame_idx, instance_id]` entry of
    `root/a2d_sentences_single_frame_{split}_annotations.json` (split "train" or "test"; the original calls the test
    file "val").

    Frames are decoded from `root/Release/clips320H/<video>.mp4` (as the original does), or read from
    `frames_dir/<video>/` (every frame of the video extracted as images, listed in natural order) when given.
    Masks: `root/text_annotations/a2d_annotation_with_instances/<video>/<frame_idx:05d>.h5` (h5py needed to decode).
    `embed_media`: the frames (or the video file) as `datasets` media features and each mask decoded into a binary
    mask image (see the module docstring).
    """
    root = _existing_dir(root, "A2D-Sentences root")
    _check_choice(split, A2D_SPLITS, "A2D-Sentences split")
    annotation_file = root / f"a2d_sentences_single_frame_{split}_annotations.json"
    annotations = _read_json(annotation_file, "A2D-Sentences annotation file")
    masks_dir = _existing_dir(root / "text_annotations" / "a2d_annotation_with_instances", "A2D-Sentences masks folder")
    if frames_dir is None:
        videos_dir = _existing_dir(root / "Release" / "clips320H", "A2D-Sentences videos folder")
    else:
        frames_dir = _existing_dir(frames_dir, "A2D-Sentences frames folder")
    frames_by_video: dict[str, list[Path]] = {}

    rows = []
    for index, entry in enumerate(annotations):
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError(f"{annotation_file}: entry {index} is not [query, video_id, frame_idx, instance_id].")
        query, video_id, frame_idx, instance_id = entry
        frame_idx, instance_id = int(frame_idx), int(instance_id)
        if frames_dir is None:
            source = {"video": str(videos_dir / f"{video_id}.mp4")}
        else:
            if video_id not in frames_by_video:
                frames_by_video[video_id] = list_frame_files(frames_dir / video_id)
            paths = frames_by_video[video_id]
            source = {"frames": [str(path) for path in paths], "frame_names": [path.stem for path in paths]}
        rows.append(
            _row(
                "a2d-sentences",
                video_id,
                str(index),
                query,
                obj_id=str(instance_id),
                mask_type="a2d_h5",
                masks=[str(masks_dir / video_id / f"{frame_idx:05d}.h5")],
                annotated_frame=frame_idx - 1,
                image_id=f"v_{video_id}_f_{frame_idx}_i_{instance_id}",
                **source,
            )
        )
    return _to_dataset(rows, split, embed_media)


def _relocate(root: Path, path: str, anchor: str) -> Path:
    """Re-roots a path of the samples metadata at `root`, from its `anchor` component on (the original prefixes a
    hard-coded `data/`)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if anchor not in parts:
        raise ValueError(f"Path {path!r} of the JHMDB-Sentences metadata has no {anchor!r} component.")
    return root.joinpath(*parts[parts.index(anchor) :])


def load_jhmdb_sentences(root: str | os.PathLike, *, embed_media: bool = False) -> Dataset:
    """JHMDB-Sentences (evaluation only): one row per `[video_id, chosen_frame_path, masks_path, total_frames, query]`
    of `root/jhmdb_sentences_samples_metadata.json`.

    Frames `root/Rename_Images/<class>/<video>/<frame:05d>.png` (1-based), masks `part_mask` (H x W x frames) of
    `root/puppet_mask/<class>/<video>/puppet_mask.mat`. The metadata paths are re-rooted at `root`. `embed_media`:
    the frames as `datasets` Image features and each mask decoded into a binary mask image (see the module docstring).
    """
    root = _existing_dir(root, "JHMDB-Sentences root")
    metadata_file = root / "jhmdb_sentences_samples_metadata.json"
    metadata = _read_json(metadata_file, "JHMDB-Sentences samples metadata")
    rows = []
    for index, entry in enumerate(metadata):
        if not (isinstance(entry, list) and len(entry) == 5):
            raise ValueError(
                f"{metadata_file}: entry {index} is not [video_id, frame_path, masks_path, total_frames, query]."
            )
        video_id, chosen_frame_path, masks_path, total_frames, query = entry
        frame_dir = _relocate(root, chosen_frame_path, "Rename_Images").parent
        chosen_frame = int(PurePosixPath(chosen_frame_path).stem)
        frame_names = [f"{i:05d}" for i in range(1, int(total_frames) + 1)]
        rows.append(
            _row(
                "jhmdb-sentences",
                video_id,
                str(index),
                query,
                obj_id="1",
                frames=[str(frame_dir / f"{name}.png") for name in frame_names],
                frame_names=frame_names,
                mask_type="jhmdb_mat",
                masks=[str(_relocate(root, masks_path, "puppet_mask"))],
                annotated_frame=chosen_frame - 1,
                image_id=f"v_{video_id}_f_{chosen_frame}",
            )
        )
    return _to_dataset(rows, "test", embed_media)


# ---------------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg
# ---------------------------------------------------------------------------------------------------


def load_refcoco(
    root: str | os.PathLike, dataset: str = "refcoco", split: str = "train", *, embed_media: bool = False
) -> Dataset:
    """RefCOCO, RefCOCO+ or RefCOCOg converted to COCO format by the original `convert_refexp_to_coco.py`.

    `root/train2014/<file_name>` and `root/<dataset>/instances_<dataset>_<split>.json`, where every (image, sentence)
    pair is its own COCO image with a `caption` and one annotation. Each row is a one-frame clip. `embed_media`: the
    image as a `datasets` Image feature (see the module docstring).
    """
    root = _existing_dir(root, "RefCOCO root (COCO folder)")
    _check_choice(dataset, REFCOCO_SPLITS, "referring expression dataset")
    _check_choice(split, REFCOCO_SPLITS[dataset], f"{dataset} split")
    annotation_file = root / dataset / f"instances_{dataset}_{split}.json"
    coco = _read_json(annotation_file, f"{dataset} annotation file")
    image_dir = _existing_dir(root / "train2014", "COCO train2014 images folder")
    categories = {category["id"]: category["name"] for category in coco.get("categories", [])}
    annotations_by_image = defaultdict(list)
    for annotation in coco["annotations"]:
        annotations_by_image[annotation["image_id"]].append(annotation)

    rows = []
    for image in coco["images"]:
        annotations = annotations_by_image[image["id"]]
        if len(annotations) != 1:
            raise ValueError(
                f"{annotation_file}: image {image['id']} has {len(annotations)} annotations; the converted referring "
                "expression format has exactly one per (image, sentence)."
            )
        annotation = annotations[0]
        rows.append(
            _row(
                dataset,
                str(image.get("original_id", image["id"])),
                str(image["id"]),
                image["caption"],
                obj_id=str(annotation.get("original_id", annotation["id"])),
                category=categories.get(annotation["category_id"], ""),
                frames=[str(image_dir / image["file_name"])],
                frame_names=[Path(image["file_name"]).stem],
                mask_type="coco",
                segmentation=json.dumps(annotation["segmentation"]),
                bbox=[float(value) for value in annotation["bbox"]],
                image_id=str(image["id"]),
            )
        )
    return _to_dataset(rows, split, embed_media)


# ---------------------------------------------------------------------------------------------------
# Epoch composition
# ---------------------------------------------------------------------------------------------------


def expand_clip_starts(dataset: Dataset, num_frames: int) -> Dataset:
    """One row per (expression, clip start 0, T, 2T, ...) as the original training epochs of Ref-YouTube-VOS and
    Ref-DAVIS17; the train transform then centers each clip on `start_frame`. Rows with an annotated frame, or
    without frame files, are kept once."""
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")

    def expand(batch: dict[str, list]) -> dict[str, list]:
        output = {column: [] for column in batch}
        for i, frames in enumerate(batch["frames"]):
            if batch["annotated_frame"][i] >= 0 or not frames:
                starts = [batch["start_frame"][i]]
            else:
                starts = list(range(0, len(frames), num_frames))
            for start in starts:
                for column in batch:
                    output[column].append(batch[column][i])
                output["start_frame"][-1] = start
        return output

    return dataset.map(expand, batched=True, features=dataset.features, desc="Expanding clip starts")
