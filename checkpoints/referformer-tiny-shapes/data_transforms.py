"""Decoding, clip sampling and augmentation of referring-video rows, as ReferFormer's data pipelines do.

The rows come from the loaders of `referformer.data` (one row per video, expression and referred object), holding
file paths or, with `embed_media=True`, `datasets` Image/Video values; rows whose images were decoded to PIL images
are read too. The transforms of this module decode the sampled frames and the referred object's masks (through the
readers of the "Decoding" section, the one place that reads a row's media), and turn a row into model inputs, one
row at a time (`transform(row)`, `dataset.map(transform)`) or a batch of rows (`dataset.with_transform(transform)`,
`dataset.map(transform, batched=True)`, every key then a list):

```python
{
    "pixel_values": FloatTensor[T, 3, h, w],   # ImageNet-normalized, unpadded
    "expression": str,                          # lower-cased, whitespace-collapsed (left/right swapped when flipped)
    "input_ids": LongTensor[L], "attention_mask": LongTensor[L],   # only when a tokenizer is given
    "labels": {
        "masks": BoolTensor[T', h, w],
        "boxes": FloatTensor[T', 4],            # cx, cy, w, h normalized by (w, h); zeros where the object is absent
        "valid": LongTensor[T'],                # 1 where the object is visible
        "class_labels": LongTensor[T'],
        "resized_size": LongTensor[2],          # (h, w) of the transformed clip
        "original_size": LongTensor[2],         # (H, W) of the source frames
    },                                          # absent for rows without ground truth (e.g. Ref-YouTube-VOS valid)
    "frame_indices": LongTensor[T],             # indices of the sampled frames in the row's video
    "valid_frame_index": int or None,           # A2D / JHMDB: position of the annotated frame in the window
    "original_size": LongTensor[2], "resized_size": LongTensor[2],
    "video_id": str, "exp_id": str, "image_id": str,
}
```

`T'` is `T`, except for A2D-Sentences / JHMDB-Sentences where only the annotated frame has a mask: `T' = 1` and
`valid_frame_index` tells which frame of the window it is (the original's `valid_indices`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from pycocotools import mask as mask_utils
from scipy.io import loadmat

from .processing_referformer import ReferFormerVideoProcessor, get_resize_output_size, normalize_frames
from .video_io import count_video_file_frames, decode_video_file, file_name, frame_to_rgb, read_frame_image


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ReferringVideoEvalTransform",
    "ReferringVideoTrainTransform",
    "centered_window_indices",
    "check_object_occurs",
    "clean_expression",
    "collate_clips",
    "count_video_frames",
    "iter_row_frames",
    "load_object_masks",
    "load_video_frames",
    "photometric_distort",
    "read_annotation_png",
    "read_binary_mask",
    "sample_train_frame_indices",
    "swap_left_right",
]

# The video processor's normalization (transformers' ImageNet constants).
IMAGENET_MEAN = tuple(ReferFormerVideoProcessor.image_mean)
IMAGENET_STD = tuple(ReferFormerVideoProcessor.image_std)

# Ref-YouTube-VOS / Ref-DAVIS17 / A2D-Sentences training (`datasets/ytvos.py` `make_coco_transforms`).
VIDEO_TRAIN_SCALES = (288, 320, 352, 392, 416, 448, 480, 512)
CROP_PRE_RESIZE_SCALES = (400, 500, 600)
CROP_SIZE_RANGE = (384, 600)
# RefCOCO/+/g pretraining (`datasets/refexp.py`, MDETR-style image transforms).
IMAGE_TRAIN_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768)
IMAGE_CROP_SCALES = (296, 328, 360, 392, 416, 448, 480, 512)

_LEFT_RIGHT = re.compile(r"(?<![a-z])(left|right)")
_FLOAT_EPS = np.finfo(np.float32).eps
# Channel permutations of the SSD photometric distortion and the HSV -> BGR sector table of OpenCV.
_CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_HSV_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


# ---------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------


def clean_expression(text: str) -> str:
    """Lower-cases an expression and collapses its whitespace, as every ReferFormer dataset class does."""
    return " ".join(text.lower().split())


def swap_left_right(text: str) -> str:
    """Swaps the words "left" and "right" (also as word prefixes: "leftmost" -> "rightmost").

    The original replaces every substring, which also turns "bright" into "bleft"; here only occurrences that start
    a word are swapped.
    """
    return _LEFT_RIGHT.sub(lambda match: "right" if match.group(1) == "left" else "left", text)


# ---------------------------------------------------------------------------------------------------
# Frame sampling
# ---------------------------------------------------------------------------------------------------


def sample_train_frame_indices(
    num_video_frames: int, num_frames: int, center: int, rng: np.random.Generator
) -> list[int]:
    """Training clip of `num_frames` frame indices around `center`, sampled like the original (`datasets/ytvos.py`).

    The center frame, one frame 1-3 before and one 1-3 after it (clamped to the video); when more frames are needed,
    distinct random frames outside that local range (or anywhere, or with repeats for short videos). The indices are
    sorted and may repeat.
    """
    if num_video_frames < 1:
        raise ValueError(f"A video needs at least one frame, got {num_video_frames}.")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
    if not 0 <= center < num_video_frames:
        raise ValueError(f"Center frame {center} is outside the video of {num_video_frames} frames.")
    indices = [center]
    if num_frames != 1:
        before, after = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        indices += [max(0, center - before), min(num_video_frames - 1, center + after)]
        if num_frames > 3:
            num_global = num_frames - len(indices)
            outside = list(range(min(indices))) + list(range(max(indices), num_video_frames))
            if len(outside) > num_global:
                indices += [outside[i] for i in rng.choice(len(outside), num_global, replace=False)]
            elif num_video_frames >= num_global:
                indices += [int(i) for i in rng.choice(num_video_frames, num_global, replace=False)]
            else:
                extra = rng.choice(num_video_frames, num_global - num_video_frames, replace=False)
                indices += [int(i) for i in extra] + list(range(num_video_frames))
    return sorted(indices)[:num_frames]


def centered_window_indices(num_video_frames: int, num_frames: int, center: int) -> list[int]:
    """The `num_frames` consecutive indices centered on `center` (`[c - T//2, c + (T+1)//2)`), edge frames repeated."""
    if num_video_frames < 1:
        raise ValueError(f"A video needs at least one frame, got {num_video_frames}.")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
    start = center - num_frames // 2
    return [min(max(i, 0), num_video_frames - 1) for i in range(start, start + num_frames)]


# ---------------------------------------------------------------------------------------------------
# Decoding: the one place a row (path form or `embed_media` form) becomes frames and masks
# ---------------------------------------------------------------------------------------------------

_MEDIA_VALUES = {
    "frame": "a file path, a PIL image or a `datasets.Image` value (bytes or path)",
    "mask": "a file path, a PIL image or a `datasets.Image` value (bytes or path)",
    "video": (
        "a file path or an undecoded `datasets.Video` value (bytes or path; cast a decoded column with "
        "`datasets.Video(decode=False)`)"
    ),
}


def _media_file(value, what: str):
    """A file of a row (`what`: a frame, a mask or a video) as PIL and PyAV open it: a path as it is, a `datasets`
    Image/Video value `{"bytes", "path"}` as a `io.BytesIO` of its bytes named by its path (or its path when it holds
    no bytes)."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        return value
    if isinstance(value, Mapping) and set(value) == {"bytes", "path"} and (value["bytes"] or value["path"]):
        if value["bytes"] is None:
            return value["path"]
        buffer = io.BytesIO(value["bytes"])
        buffer.name = value["path"] or f"({what} bytes)"
        return buffer
    raise TypeError(f"A row's {what} must be {_MEDIA_VALUES[what]}, got {type(value).__name__} {str(value)[:60]!r}.")


@contextlib.contextmanager
def _open_image(value, what: str) -> Iterator[tuple[Image.Image, str]]:
    """`(image, name for messages)` of a row's frame or mask; a PIL image given as is is neither copied nor closed."""
    if isinstance(value, Image.Image):
        yield value, getattr(value, "filename", "") or f"({what} image)"
        return
    source = _media_file(value, what)
    try:
        image = Image.open(source)
    except OSError as error:
        raise ValueError(f"Cannot read {what} image {file_name(source)}: {error}") from error
    with image:
        yield image, file_name(source)


def _frame_array(value) -> np.ndarray:
    """One frame of a row (path, `datasets.Image` value or PIL image) as RGB uint8 `[H, W, 3]`."""
    if isinstance(value, Image.Image):
        return frame_to_rgb(value)
    return read_frame_image(_media_file(value, "frame"))


class _FrameSequence:
    """A video stored as one image per frame: file paths, `datasets.Image` values or PIL images."""

    def __init__(self, frames: Sequence):
        self.frames = list(frames)
        self.num_frames = len(self.frames)

    def read(self, indices: Sequence[int]) -> list[Image.Image]:
        images = {index: Image.fromarray(_frame_array(self.frames[index])) for index in set(indices)}
        return [images[index] for index in indices]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (_frame_array(frame) for frame in self.frames)


class _VideoFile:
    """A video file (a path or a `datasets.Video` value) decoded with PyAV; the frame count comes from the container
    header when it has one."""

    def __init__(self, value):
        self.source = _media_file(value, "video")
        self.num_frames = count_video_file_frames(self.source)
        if self.num_frames <= 0:
            raise ValueError(f"Video {file_name(self.source)} has no frames.")

    def read(self, indices: Sequence[int]) -> list[Image.Image]:
        """Decodes up to the last requested frame; indices past the decoded end map to the last decoded frame."""
        wanted, last = set(indices), max(indices)
        frames = dict(decode_video_file(self.source, lambda index: index in wanted if index <= last else None))
        missing = wanted - frames.keys()
        if missing:  # the header counted more frames than the stream decodes
            *_, (_, last_frame) = decode_video_file(self.source, lambda index: True)
            frames.update(dict.fromkeys(missing, last_frame))
        images = {index: Image.fromarray(frame) for index, frame in frames.items()}
        return [images[index] for index in indices]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (frame for _, frame in decode_video_file(self.source, lambda index: True))


def _open_video(example: Mapping) -> _FrameSequence | _VideoFile:
    if example["frames"]:
        return _FrameSequence(example["frames"])
    if example["video"]:
        return _VideoFile(example["video"])
    raise ValueError(f"Row {example['video_id']!r}/{example['exp_id']!r} has neither frames nor a video file.")


def count_video_frames(example: Mapping) -> int:
    """Number of frames of a row's video (its frames, or the header of its video file)."""
    return _open_video(example).num_frames


def load_video_frames(example: Mapping, frame_indices: Sequence[int]) -> list[Image.Image]:
    """Decodes frames `frame_indices` of a row's video as RGB PIL images."""
    return _open_video(example).read(list(frame_indices))


def iter_row_frames(example: Mapping) -> Iterator[np.ndarray]:
    """Every frame of a row's video in order, RGB uint8 `[H, W, 3]`, decoded one at a time (a video
    `ReferringVideoSegmenter` reads lazily)."""
    return iter(_open_video(example))


def read_annotation_png(source) -> np.ndarray:
    """The object ids of a Ref-YouTube-VOS-layout annotation PNG (a path, a `datasets.Image` value or a PIL image) as
    `[H, W]` uint8, 0 background.

    Only palette (mode "P") images are accepted, as the datasets ship them: their pixel values are the object ids. A
    grayscale, binary or colour PNG is refused, since its values (e.g. 0/255 of a saved binary mask) are not ids.
    """
    with _open_image(source, "mask") as (image, name):
        if image.mode != "P":
            raise ValueError(
                f"{name} is a mode {image.mode!r} image, not a palette (mode 'P') PNG of object ids: save the masks as "
                "palette PNGs whose pixel values are the object ids (0 background), as Ref-YouTube-VOS ships them."
            )
        return np.array(image)


def read_binary_mask(source) -> np.ndarray:
    """A binary mask image (a path, a `datasets.Image` value or a PIL image of mode "1", as
    `PIL.Image.fromarray(mask)` makes it from a bool array) as `[H, W]` bool."""
    with _open_image(source, "mask") as (image, name):
        if image.mode != "1":
            raise ValueError(
                f"{name} is a mode {image.mode!r} image, not a binary (mode '1') mask: save binary masks with "
                "`PIL.Image.fromarray(mask.astype(bool))`."
            )
        return np.array(image)


def check_object_occurs(label_maps: Iterable[np.ndarray], obj_id: int, video_id: str, exp_id: str) -> None:
    """Raises a `ValueError` unless `obj_id` occurs in one of `label_maps` (all annotated frames of the video): an
    expression whose object is in no mask would train on, or be scored against, empty masks."""
    found, count = set(), 0
    for labels in label_maps:
        if (labels == obj_id).any():
            return
        found.update(np.unique(labels).tolist())
        count += 1
    ids = ", ".join(str(value) for value in sorted(found - {0})) or "none"
    raise ValueError(
        f"Video {video_id!r}, expression {exp_id!r}: object id {obj_id} occurs in none of the video's {count} "
        f"annotated frames (object ids found: {ids})."
    )


def _read_a2d_mask(path: str, instance_id: int) -> np.ndarray:
    try:
        import h5py
    except ImportError as error:
        raise ImportError("Reading A2D-Sentences masks (.h5) requires `h5py`: pip install h5py") from error
    with h5py.File(path, "r") as file:
        instances = np.asarray(file["instance"]).reshape(-1)
        masks = np.asarray(file["reMask"])
    if masks.ndim == 2:
        masks = masks[None]
    # MATLAB-written masks are stored transposed: [instances, W, H].
    masks = masks.transpose(0, 2, 1)
    matches = np.flatnonzero(instances == instance_id)
    if len(matches) == 0:
        raise ValueError(f"{path}: instance {instance_id} not found (instances {instances.tolist()}).")
    return masks[matches[0]] > 0


def _read_jhmdb_mask(path: str, frame_index: int) -> np.ndarray:
    part_mask = loadmat(path)["part_mask"]
    if not 0 <= frame_index < part_mask.shape[2]:
        raise ValueError(f"{path}: frame {frame_index} outside the {part_mask.shape[2]} annotated frames.")
    return part_mask[:, :, frame_index] > 0


def _decode_coco_segmentation(segmentation: str, height: int, width: int) -> np.ndarray:
    segmentation = json.loads(segmentation)
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _image_size(value) -> tuple[int, int]:
    with _open_image(value, "frame") as (image, _):
        return image.height, image.width


def load_object_masks(example: Mapping, frame_indices: Sequence[int]) -> np.ndarray:
    """Binary masks of the referred object at the source resolution.

    Returns `[len(frame_indices), H, W]` bool for per-frame annotations (Ref-YouTube-VOS, Ref-DAVIS17, RefCOCO), or
    `[1, H, W]` for the annotated frame of A2D-Sentences / JHMDB-Sentences rows.
    """
    mask_type, masks = example["mask_type"], example["masks"]
    if mask_type == "palette":
        obj_id = int(example["obj_id"])
        selected = np.stack([read_annotation_png(masks[i]) == obj_id for i in frame_indices])
        if not selected.any():  # absent from these frames: it must be in another annotated frame of the video
            check_object_occurs(map(read_annotation_png, masks), obj_id, example["video_id"], example["exp_id"])
        return selected
    if mask_type == "binary":
        if example["annotated_frame"] >= 0:
            return read_binary_mask(masks[0])[None]
        return np.stack([read_binary_mask(masks[i]) for i in frame_indices])
    if mask_type == "a2d_h5":
        return _read_a2d_mask(masks[0], int(example["obj_id"]))[None]
    if mask_type == "jhmdb_mat":
        return _read_jhmdb_mask(masks[0], example["annotated_frame"])[None]
    if mask_type == "coco":
        mask = _decode_coco_segmentation(example["segmentation"], *_image_size(example["frames"][0]))
        return np.repeat(mask[None], len(frame_indices), axis=0)
    if mask_type == "none":
        raise ValueError(f"Row {example['video_id']!r}/{example['exp_id']!r} has no ground-truth masks.")
    raise ValueError(f"Unknown mask type {mask_type!r}.")


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """xyxy boxes of binary masks with the original's inclusive maxima (`x2` = last column); zeros for empty masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1], rows[-1])
    return boxes


def _coco_boxes(example: Mapping, num_boxes: int, height: int, width: int) -> np.ndarray:
    x, y, w, h = example["bbox"]
    box = np.array([x, y, x + w, y + h], dtype=np.float32)
    box[0::2] = box[0::2].clip(0, width)
    box[1::2] = box[1::2].clip(0, height)
    return np.repeat(box[None], num_boxes, axis=0)


# ---------------------------------------------------------------------------------------------------
# Clip operations (one geometric draw for the whole clip)
# ---------------------------------------------------------------------------------------------------


class _Clip:
    """Frames of a clip and, when there is ground truth, the referred object's masks [L, H, W] and xyxy boxes [L, 4]."""

    def __init__(self, images: list[Image.Image], masks: np.ndarray | None, boxes: np.ndarray | None):
        self.images = images
        self.masks = masks
        self.boxes = boxes

    @property
    def size(self) -> tuple[int, int]:
        return self.images[0].height, self.images[0].width


def _nearest_indices(input_size: int, output_size: int) -> np.ndarray:
    """Source indices of torch's `interpolate(mode="nearest")` (float32 scale, floor), as the original resizes masks."""
    scale = np.float32(input_size) / np.float32(output_size)
    positions = np.floor(np.arange(output_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(positions, input_size - 1)


def _hflip(clip: _Clip) -> _Clip:
    width = clip.size[1]
    images = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in clip.images]
    if clip.masks is None:
        return _Clip(images, None, None)
    boxes = clip.boxes[:, [2, 1, 0, 3]] * np.float32([-1, 1, -1, 1]) + np.float32([width, 0, width, 0])
    return _Clip(images, clip.masks[:, :, ::-1], boxes)


def _resize(clip: _Clip, size: int, max_size: int | None) -> _Clip:
    height, width = clip.size
    new_height, new_width = get_resize_output_size(height, width, size, max_size)
    images = [image.resize((new_width, new_height), Image.Resampling.BILINEAR) for image in clip.images]
    if clip.masks is None:
        return _Clip(images, None, None)
    masks = clip.masks[:, _nearest_indices(height, new_height)][:, :, _nearest_indices(width, new_width)]
    scale = np.float32([new_width / width, new_height / height] * 2)
    return _Clip(images, masks, clip.boxes * scale)


def _crop(clip: _Clip, top: int, left: int, height: int, width: int) -> _Clip:
    images = [image.crop((left, top, left + width, top + height)) for image in clip.images]
    if clip.masks is None:
        return _Clip(images, None, None)
    boxes = clip.boxes.reshape(-1, 2, 2) - np.float32([left, top])
    boxes = np.minimum(boxes, np.float32([width, height])).clip(min=0)
    return _Clip(images, clip.masks[:, top : top + height, left : left + width], boxes.reshape(-1, 4))


def _random_size_crop(clip: _Clip, min_size: int, max_size: int, rng: np.random.Generator) -> _Clip:
    """RandomSizeCrop: a crop of random width and height in [min_size, max_size], at a random position.

    Frames smaller than `min_size` (the original assumes they are not) are cropped to at most their own size.
    """
    height, width = clip.size
    crop_width = int(rng.integers(min(min_size, width), min(width, max_size) + 1))
    crop_height = int(rng.integers(min(min_size, height), min(height, max_size) + 1))
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    return _crop(clip, top, left, crop_height, crop_width)


def _check(clip: _Clip) -> np.ndarray:
    """The original `Check`: frames whose box became empty are invalid and their box is zeroed."""
    boxes = clip.boxes.reshape(-1, 2, 2)
    keep = np.all(boxes[:, 1, :] > boxes[:, 0, :], axis=1)
    clip.boxes = np.where(keep[:, None], clip.boxes, np.float32(0))
    return keep.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Photometric distortion (SSD-style, per frame)
# ---------------------------------------------------------------------------------------------------


def _bgr_to_hsv(image: np.ndarray) -> np.ndarray:
    """OpenCV's float BGR -> HSV (H in degrees, S in [0, 1], V in the input's range)."""
    blue, green, red = image[..., 0], image[..., 1], image[..., 2]
    value, minimum = image.max(-1), image.min(-1)
    difference = value - minimum
    saturation = difference / (np.abs(value) + _FLOAT_EPS)
    scale = 60.0 / (difference + _FLOAT_EPS)
    hue = np.where(
        value == red,
        (green - blue) * scale,
        np.where(value == green, (blue - red) * scale + 120.0, (red - green) * scale + 240.0),
    )
    hue = np.where(hue < 0, hue + 360.0, hue)
    return np.stack([hue, saturation, value], -1).astype(np.float32)


def _hsv_to_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's float HSV -> BGR."""
    hue, saturation, value = image[..., 0], image[..., 1], image[..., 2]
    hue = np.mod(hue / 60.0, 6.0)
    sector = np.floor(hue).astype(np.int64)
    fraction = hue - sector
    out_of_range = (sector < 0) | (sector >= 6)
    sector[out_of_range], fraction[out_of_range] = 0, 0.0
    table = np.stack(
        [
            value,
            value * (1 - saturation),
            value * (1 - saturation * fraction),
            value * (1 - saturation * (1 - fraction)),
        ],
        -1,
    )
    bgr = np.take_along_axis(table, _HSV_SECTORS[sector], axis=-1)
    return np.where((saturation == 0)[..., None], value[..., None], bgr).astype(np.float32)


def photometric_distort(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The original `PhotometricDistort` on one frame.

    Random brightness (+-32), contrast (0.5-1.5, before or after the HSV steps), saturation (0.5-1.5) and hue (+-18
    degrees), each applied with probability 1/2, then a random channel permutation with probability 1/2. As in the
    original, the RGB array goes through OpenCV's BGR -> HSV conversion (so hue shifts run the other way round).
    Unlike the original, the result is clipped to [0, 255] before the uint8 conversion instead of wrapping around.
    """
    array = np.asarray(image, dtype=np.float32).copy()
    if rng.integers(2):
        array += rng.uniform(-32, 32)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        array *= rng.uniform(0.5, 1.5)
    hsv = _bgr_to_hsv(array)
    if rng.integers(2):
        hsv[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.integers(2):
        hsv[..., 0] += rng.uniform(-18, 18)
        hsv[..., 0] = np.where(hsv[..., 0] > 360.0, hsv[..., 0] - 360.0, hsv[..., 0])
        hsv[..., 0] = np.where(hsv[..., 0] < 0.0, hsv[..., 0] + 360.0, hsv[..., 0])
    array = _hsv_to_bgr(hsv)
    if not contrast_first and rng.integers(2):
        array *= rng.uniform(0.5, 1.5)
    if rng.integers(2):
        array = array[..., list(_CHANNEL_PERMUTATIONS[int(rng.integers(len(_CHANNEL_PERMUTATIONS)))])]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------


class _ReferringTransform:
    """Shared decoding and output formatting; subclasses define `transform_example` (frames and augmentation)."""

    def __init__(
        self,
        tokenizer: Callable | None,
        category_to_id: Mapping[str, int] | None,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        self.tokenizer = tokenizer
        self.category_to_id = dict(category_to_id) if category_to_id is not None else None
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, examples: Mapping) -> dict:
        """One row (`transform(dataset[i])`, `dataset.map(transform)`) into one sample, or a batch of rows, every
        column a list (`dataset.with_transform(transform)`, `dataset.map(transform, batched=True)`), into a batch of
        samples, every key a list."""
        video_id = examples.get("video_id") if isinstance(examples, Mapping) else None
        if isinstance(video_id, str):
            return self.transform_example(examples)
        if not isinstance(video_id, list):
            given = f"`video_id` {video_id!r}" if isinstance(examples, Mapping) else type(examples).__name__
            raise TypeError(
                "A transform takes one row of a `referformer.data` dataset (a mapping whose `video_id` is a string) or "
                f"a batch of rows (a mapping whose every column is a list), got {given}."
            )
        lengths = {column: len(values) if isinstance(values, list) else None for column, values in examples.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ValueError(f"A batch of rows needs every column as a list of one length, got lengths {lengths}.")
        columns = list(examples)
        rows = [dict(zip(columns, values)) for values in zip(*(examples[column] for column in columns))]
        samples = [self.transform_example(row) for row in rows]
        if not samples:
            return {}
        if any(sample.keys() != samples[0].keys() for sample in samples):
            raise ValueError("A batch mixes rows with and without ground truth (or a tokenizer output); split it.")
        return {key: [sample[key] for sample in samples] for key in samples[0]}

    def _category_id(self, example: Mapping) -> int:
        if self.category_to_id is None:
            return 0
        if example["category"] not in self.category_to_id:
            raise ValueError(
                f"Category {example['category']!r} of video {example['video_id']!r} is not in `category_to_id`."
            )
        return self.category_to_id[example["category"]]

    def _label_frames(self, example: Mapping, frame_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        masks = load_object_masks(example, frame_indices)
        if example["mask_type"] == "coco":
            boxes = _coco_boxes(example, len(masks), *masks.shape[1:])
        else:
            boxes = _mask_boxes(masks)
        return masks, boxes

    def _clip(
        self, example: Mapping, images: list[Image.Image], masks: np.ndarray | None, boxes: np.ndarray | None
    ) -> _Clip:
        height, width = images[0].height, images[0].width
        for image in images:
            if image.size != images[0].size:
                raise ValueError(f"Frames of video {example['video_id']!r} differ in size.")
        if masks is None:
            return _Clip(images, None, None)
        if masks.shape[1:] != (height, width):
            raise ValueError(
                f"Masks of video {example['video_id']!r} are {masks.shape[1:]} but its frames are {(height, width)}."
            )
        return _Clip(images, masks, boxes.astype(np.float32))

    def _format(
        self,
        example: Mapping,
        clip: _Clip,
        expression: str,
        frame_indices: list[int],
        valid: np.ndarray | None,
        valid_frame_index: int | None,
        original_size: tuple[int, int],
    ) -> dict:
        height, width = clip.size
        pixels = np.stack([np.asarray(image) for image in clip.images])
        sample = {"pixel_values": normalize_frames(pixels, ReferFormerVideoProcessor.rescale_factor, self.mean, self.std)}
        sample["expression"] = expression
        if self.tokenizer is not None:
            encoding = self.tokenizer(expression)
            sample["input_ids"] = torch.as_tensor(encoding["input_ids"], dtype=torch.long)
            sample["attention_mask"] = torch.as_tensor(encoding["attention_mask"], dtype=torch.long)
        if clip.masks is not None:
            x1, y1, x2, y2 = clip.boxes.T
            boxes = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1) / np.float32([width, height] * 2)
            category_id = self._category_id(example)
            sample["labels"] = {
                "masks": torch.from_numpy(np.ascontiguousarray(clip.masks, dtype=bool)),
                "boxes": torch.from_numpy(boxes.astype(np.float32)),
                "valid": torch.from_numpy(valid.astype(np.int64)),
                "class_labels": torch.full((len(clip.masks),), category_id, dtype=torch.long),
                "resized_size": torch.tensor([height, width]),
                "original_size": torch.tensor(original_size),
            }
        sample.update(
            frame_indices=torch.tensor(frame_indices, dtype=torch.long),
            valid_frame_index=valid_frame_index,
            original_size=torch.tensor(original_size),
            resized_size=torch.tensor([height, width]),
            video_id=example["video_id"],
            exp_id=example["exp_id"],
            image_id=example["image_id"],
        )
        return sample


class ReferringVideoTrainTransform(_ReferringTransform):
    """ReferFormer's training pipeline (`datasets/transforms_video.py`), on one row or a batch (see `__call__`).

    Per row: a clip of `num_frames` frames sampled around a center frame (the annotated frame for A2D/JHMDB rows, the
    `start_frame` column when set by `expand_clip_starts`, otherwise a uniformly random frame), then, with one random
    draw for the whole clip: horizontal flip (also swapping "left"/"right" in the expression), photometric distortion
    (independently per frame), and either a resize of the shorter side to one of `scales` (longer side at most
    `max_size`), or a resize to one of `crop_pre_scales`, a random crop of `crop_size` and a resize to one of
    `crop_scales` (at most `crop_max_size`). Frames whose box was cropped away become invalid with a zero box.

    The original redraws a random other sample when no frame of the clip keeps the object; a transform cannot switch
    rows, so it draws new frames and a new augmentation of the same row, up to `max_attempts` times (the last draw is
    returned even when it has no valid frame).

    Args:
        num_frames: clip length (5 in the paper; 1 for RefCOCO pretraining).
        tokenizer: optional callable returning `input_ids` / `attention_mask` for a string.
        category_to_id: category name -> class id; all class labels are 0 (the `--binary` setting) when `None`.
        seed: seed of the random draws; with DataLoader workers, each worker gets its own stream derived from the seed
            and the worker seed. `None` draws fresh entropy.
    """

    def __init__(
        self,
        num_frames: int = 5,
        *,
        scales: Sequence[int] = VIDEO_TRAIN_SCALES,
        max_size: int | None = 640,
        crop_prob: float = 0.5,
        crop_pre_scales: Sequence[int] = CROP_PRE_RESIZE_SCALES,
        crop_size: tuple[int, int] = CROP_SIZE_RANGE,
        crop_scales: Sequence[int] | None = None,
        crop_max_size: int | None = 640,
        flip_prob: float = 0.5,
        photometric: bool = True,
        max_attempts: int = 10,
        tokenizer: Callable | None = None,
        category_to_id: Mapping[str, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
    ):
        super().__init__(tokenizer, category_to_id, mean, std)
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
        if max_attempts < 1:
            raise ValueError(f"`max_attempts` must be at least 1, got {max_attempts}.")
        if not scales or not crop_pre_scales:
            raise ValueError("`scales` and `crop_pre_scales` must not be empty.")
        self.num_frames = num_frames
        self.scales = tuple(scales)
        self.max_size = max_size
        self.crop_prob = crop_prob
        self.crop_pre_scales = tuple(crop_pre_scales)
        self.crop_size = tuple(crop_size)
        self.crop_scales = tuple(crop_scales) if crop_scales is not None else self.scales
        self.crop_max_size = crop_max_size
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.max_attempts = max_attempts
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_stream: int | None = None

    @classmethod
    def for_images(cls, num_frames: int = 1, **kwargs) -> ReferringVideoTrainTransform:
        """The RefCOCO/+/g pretraining pipeline (`datasets/refexp.py`): no photometric distortion, shorter side in
        480-768 (at most 800), or crop then 296-512 (at most 640)."""
        defaults = {
            "scales": IMAGE_TRAIN_SCALES,
            "max_size": 800,
            "crop_scales": IMAGE_CROP_SCALES,
            "crop_max_size": 640,
            "photometric": False,
        }
        return cls(num_frames, **{**defaults, **kwargs})

    def _generator(self) -> np.random.Generator:
        """The random stream of this process: one per DataLoader worker, derived from `seed` and the worker seed."""
        worker = torch.utils.data.get_worker_info()
        stream = None if worker is None else worker.seed
        if self._rng is None or stream != self._rng_stream:
            entropy = [self.seed] if stream is None else [self.seed, stream]
            self._rng = np.random.default_rng(None if self.seed is None else entropy)
            self._rng_stream = stream
        return self._rng

    def _augment(self, clip: _Clip, expression: str, rng: np.random.Generator) -> tuple[_Clip, str, np.ndarray]:
        if rng.random() < self.flip_prob:
            clip, expression = _hflip(clip), swap_left_right(expression)
        if self.photometric:
            clip = _Clip([photometric_distort(image, rng) for image in clip.images], clip.masks, clip.boxes)
        if rng.random() < self.crop_prob:
            clip = _resize(clip, int(rng.choice(self.crop_pre_scales)), None)
            clip = _random_size_crop(clip, *self.crop_size, rng)
            clip = _resize(clip, int(rng.choice(self.crop_scales)), self.crop_max_size)
        else:
            clip = _resize(clip, int(rng.choice(self.scales)), self.max_size)
        return clip, expression, _check(clip)

    def transform_example(self, example: Mapping) -> dict:
        """Samples and augments one training clip of a row."""
        rng = self._generator()
        video = _open_video(example)
        for _ in range(self.max_attempts - 1):
            sample = self._draw(example, video, rng, require_object=True)
            if sample is not None:
                return sample
        return self._draw(example, video, rng, require_object=False)

    def _draw(
        self, example: Mapping, video: _FrameSequence | _VideoFile, rng: np.random.Generator, require_object: bool
    ) -> dict | None:
        """One draw of frames and augmentation; `None` when `require_object` and no frame keeps the object."""
        annotated = example["annotated_frame"]
        if annotated >= 0:
            center = annotated
        elif example.get("start_frame", -1) >= 0:
            center = min(example["start_frame"], video.num_frames - 1)
        else:
            center = int(rng.integers(video.num_frames))
        frame_indices = sample_train_frame_indices(video.num_frames, self.num_frames, center, rng)
        masks, boxes = self._label_frames(example, [annotated] if annotated >= 0 else frame_indices)
        if require_object and not masks.any():
            return None
        clip = self._clip(example, video.read(frame_indices), masks, boxes)
        original_size = clip.size
        clip, expression, valid = self._augment(clip, clean_expression(example["expression"]), rng)
        if require_object and not valid.any():
            return None
        valid_frame_index = frame_indices.index(annotated) if annotated >= 0 else None
        return self._format(example, clip, expression, frame_indices, valid, valid_frame_index, original_size)


class ReferringVideoEvalTransform(_ReferringTransform):
    """ReferFormer's evaluation pipeline: shorter side resized to `size` (longer side at most `max_size`), normalized.

    Rows with one annotated frame (A2D-Sentences, JHMDB-Sentences) give the `num_frames` consecutive frames centered on
    it (edge frames repeated); other rows give every frame of the video. Rows without ground truth have no `labels`.
    """

    def __init__(
        self,
        num_frames: int | None = None,
        *,
        size: int = 360,
        max_size: int | None = 640,
        tokenizer: Callable | None = None,
        category_to_id: Mapping[str, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(tokenizer, category_to_id, mean, std)
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
        self.num_frames = num_frames
        self.size = size
        self.max_size = max_size

    def transform_example(self, example: Mapping) -> dict:
        """Decodes and resizes the evaluation clip of a row."""
        video = _open_video(example)
        annotated = example["annotated_frame"]
        if annotated >= 0:
            if self.num_frames is None:
                raise ValueError(
                    f"Row {example['video_id']!r}/{example['exp_id']!r} has one annotated frame: evaluating it needs "
                    "the window length `num_frames` (5 in the paper, 6 for some released A2D models)."
                )
            frame_indices = centered_window_indices(video.num_frames, self.num_frames, annotated)
            label_indices, valid_frame_index = [annotated], frame_indices.index(annotated)
        else:
            frame_indices = label_indices = list(range(video.num_frames))
            valid_frame_index = None
        images = video.read(frame_indices)
        masks = boxes = valid = None
        if example["mask_type"] != "none":
            masks, boxes = self._label_frames(example, label_indices)
            valid = masks.reshape(len(masks), -1).any(1).astype(np.int64)
        clip = self._clip(example, images, masks, boxes)
        original_size = clip.size
        clip = _resize(clip, self.size, self.max_size)
        expression = clean_expression(example["expression"])
        return self._format(example, clip, expression, frame_indices, valid, valid_frame_index, original_size)


def collate_clips(
    samples: list[dict],
    pad_to_multiple_of: int | None = 32,
    pad_token_id: int = 1,
) -> dict:
    """Batches clip-level samples for [`ReferFormerForReferringVideoObjectSegmentation`] and [`ReferFormerTrainer`].

    Each sample is a dict with:

    - `pixel_values` (`torch.FloatTensor` of shape `(T, 3, h, w)`): the normalized frames of one clip at its own
      (unpadded) size;
    - `input_ids` (`torch.LongTensor` of shape `(L,)`): the tokenized referring expression;
    - `attention_mask` (`torch.LongTensor` of shape `(L,)`, *optional*): defaults to all ones;
    - `labels` (`dict`, *optional*): `masks` `(T, h, w)` bool at the clip's unpadded size, `boxes` `(T, 4)`
      normalized by the unpadded size, `valid` `(T,)` and `class_labels` `(T,)`; other keys are kept as they are;
    - `valid_frame_index` (`int`, *optional*): A2D/JHMDB clips whose labels describe only this annotated frame (the
      labels then have one frame); collated into the model's `valid_frame_indices`.

    Other sample keys are ignored. All clips must have the same number of frames T.

    Returns a dict with `pixel_values` `(B, T, 3, H, W)` zero-padded at the bottom/right to the largest clip, rounded
    up to `pad_to_multiple_of` (the original pads to 32 for training; `None` disables rounding), `pixel_mask`
    `(B, T, H, W)` long (1 on real pixels), `input_ids` and `attention_mask` `(B, L_max)` right-padded with
    `pad_token_id` and 0, and, when the samples have labels, `labels`: a list of dicts whose masks are zero-padded
    to `(H, W)`, the format of [`~referformer.loss_referformer.ReferFormerLoss`].
    """
    if len(samples) == 0:
        raise ValueError("Cannot collate an empty list of samples.")
    num_frames = None
    for index, sample in enumerate(samples):
        pixel_values = sample["pixel_values"]
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"Sample {index}: pixel_values must be (frames, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        if num_frames is None:
            num_frames = pixel_values.shape[0]
        elif pixel_values.shape[0] != num_frames:
            raise ValueError(
                f"All clips of a batch must have the same number of frames: sample 0 has {num_frames}, sample "
                f"{index} has {pixel_values.shape[0]}."
            )
        if sample["input_ids"].dim() != 1:
            raise ValueError(f"Sample {index}: input_ids must be 1-D, got shape {tuple(sample['input_ids'].shape)}.")
        if "attention_mask" in sample and sample["attention_mask"].shape != sample["input_ids"].shape:
            raise ValueError(f"Sample {index}: attention_mask and input_ids have different shapes.")
        if "labels" in sample:
            label_frames = 1 if sample.get("valid_frame_index") is not None else num_frames
            _check_clip_labels(sample["labels"], tuple(pixel_values.shape[-2:]), label_frames, index)
    with_labels = ["labels" in sample for sample in samples]
    if any(with_labels) and not all(with_labels):
        raise ValueError("Either every sample or none must have `labels`.")
    annotated_frames = [sample.get("valid_frame_index") for sample in samples]
    if any(frame is not None for frame in annotated_frames) and any(frame is None for frame in annotated_frames):
        raise ValueError("Either every sample or none must have a `valid_frame_index`.")

    clips = [sample["pixel_values"] for sample in samples]
    pixel_values, pixel_mask = ReferFormerVideoProcessor.pad(clips, pad_to_multiple_of)
    height, width = pixel_values.shape[-2:]
    text_length = max(sample["input_ids"].shape[0] for sample in samples)

    def pad_frames(frames: torch.Tensor) -> torch.Tensor:
        return F.pad(frames, (0, width - frames.shape[-1], 0, height - frames.shape[-2]))

    def pad_text(tokens: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(tokens, (0, text_length - tokens.shape[0]), value=value)

    batch = {
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
        "input_ids": torch.stack([pad_text(sample["input_ids"].long(), pad_token_id) for sample in samples]),
        "attention_mask": torch.stack(
            [
                pad_text(sample.get("attention_mask", torch.ones_like(sample["input_ids"])).long(), 0)
                for sample in samples
            ]
        ),
    }
    if all(with_labels):
        batch["labels"] = [
            {**sample["labels"], "masks": pad_frames(sample["labels"]["masks"].bool())} for sample in samples
        ]
    if annotated_frames[0] is not None:
        batch["valid_frame_indices"] = torch.tensor(annotated_frames, dtype=torch.long)
    return batch


def _check_clip_labels(labels: dict, frame_size: tuple[int, int], num_frames: int, index: int):
    for key in ("masks", "boxes", "valid", "class_labels"):
        if key in labels and (labels[key].dim() == 0 or labels[key].shape[0] != num_frames):
            raise ValueError(
                f"Sample {index}: labels[{key!r}] has shape {tuple(labels[key].shape)} but the clip has {num_frames} "
                "frames."
            )
    if "masks" not in labels:
        raise ValueError(f"Sample {index}: labels must contain `masks`.")
    if tuple(labels["masks"].shape[-2:]) != frame_size or labels["masks"].dim() != 3:
        raise ValueError(
            f"Sample {index}: label masks {tuple(labels['masks'].shape)} must be (frames, height, width) at the "
            f"clip's unpadded frame size {frame_size}."
        )
