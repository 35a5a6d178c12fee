"""A synthetic referring video dataset: simple moving shapes described by unambiguous expressions.

`generate_referring_shapes` renders clips of 2-4 coloured circles, squares and triangles moving in straight lines on
a plain or textured grey background and writes them in the Ref-YouTube-VOS layout, so the folder loads with
`referformer.data.load_ref_youtube_vos(root, split)`:

```
root/{split}/JPEGImages/<video>/<frame>.jpg
root/{split}/Annotations/<video>/<frame>.png          palette PNG, pixel value = object id
root/{split}/meta.json                                {"videos": {video: {"objects": {id: {"category", "frames"}}}}}
root/meta_expressions/{split}/meta_expressions.json   {"videos": {video: {"expressions": {id: {"exp", "obj_id"}},
                                                                          "frames": [...]}}}
```

Each expression names a subset of its object's attributes (size, colour, shape, horizontal position, motion) that
no other object of the clip shares, e.g. "the red circle", "the big blue square on the left", "the green triangle
moving up". Objects are drawn without anti-aliasing from the same label map as the masks, and every object keeps at
least half of its area visible in every frame. The output is a pure function of the arguments: the same seed gives
the same bytes.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .visualization import voc_palette


__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "MOTIONS",
    "SHAPES",
    "describe_attributes",
    "generate_referring_shapes",
    "matching_objects",
    "render_referring_video",
]

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 190),
    "orange": (245, 130, 20),
}
# Half extent of a shape, as a fraction of the frame's shorter side.
SIZES = {"small": (0.08, 0.11), "big": (0.15, 0.19)}
MOTIONS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0), "still": (0, 0)}
POSITIONS = ("left", "middle", "right")
ATTRIBUTES = ("size", "color", "shape", "position", "motion")
_POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
_MOTION_PHRASES = {
    "up": "moving up",
    "down": "moving down",
    "left": "moving left",
    "right": "moving right",
    "still": "that is not moving",
}
_MIN_VISIBLE_FRACTION = 0.5
_MAX_LAYOUT_ATTEMPTS = 200


def describe_attributes(attributes: Mapping[str, str]) -> str:
    """The expression for a subset of attributes, e.g. {"size": "big", "color": "blue", "shape": "square",
    "position": "left"} -> "the big blue square on the left"."""
    unknown = attributes.keys() - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"Unknown attributes {sorted(unknown)}; expected a subset of {ATTRIBUTES}.")
    words = ["the"]
    words += [attributes[name] for name in ("size", "color") if name in attributes]
    words.append(attributes.get("shape", "shape"))
    if "position" in attributes:
        words.append(_POSITION_PHRASES[attributes["position"]])
    if "motion" in attributes:
        words.append(_MOTION_PHRASES[attributes["motion"]])
    return " ".join(words)


def matching_objects(attributes: Mapping[str, str], objects: Mapping[str, Mapping]) -> list[str]:
    """Ids of the objects (metadata of one clip) whose attributes agree with all of `attributes`."""
    return [obj_id for obj_id, obj in objects.items() if all(obj[name] == value for name, value in attributes.items())]


def _shape_mask(shape: str, center: tuple[float, float], radius: float, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx, dy = xs - center[0], ys - center[1]
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = 0.85 * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Upward triangle with its apex at the top and its base 0.8 radius below the center.
    base = 0.8 * radius
    inside_height = (dy >= -radius) & (dy <= base)
    half_width = (dy + radius) / (base + radius) * radius
    return inside_height & (np.abs(dx) <= half_width)


def _background(rng: np.random.Generator, height: int, width: int, textured: bool) -> np.ndarray:
    """A grey background (no saturation, so it never looks like an object colour): flat, or smooth grey noise."""
    if not textured:
        return np.full((height, width, 3), int(rng.integers(70, 171)), dtype=np.uint8)
    coarse = rng.integers(70, 171, size=(max(2, height // 12), max(2, width // 12))).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(-6, 7, size=(height, width), dtype=np.int16)
    gray = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _draw_object(rng: np.random.Generator, num_frames: int, height: int, width: int) -> dict:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    motion = list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
    radius = float(rng.uniform(*SIZES[size]) * min(height, width))
    direction = np.array(MOTIONS[motion], dtype=np.float64)
    # Travel a visible distance along the motion axis without leaving the frame.
    extent = np.array([width, height], dtype=np.float64) - 2 * radius
    travel = float(rng.uniform(0.3, 0.6)) * extent @ np.abs(direction)
    low = radius + np.where(direction < 0, travel, 0.0)
    high = radius + extent - np.where(direction > 0, travel, 0.0)
    start = rng.uniform(low, high)
    steps = np.linspace(0.0, travel, num_frames)
    centers = start[None] + steps[:, None] * direction[None]
    mean_x = float(centers[:, 0].mean())
    position = POSITIONS[min(2, int(3 * mean_x / width))]
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "position": position,
        "motion": motion,
        "rgb": list(COLORS[color]),
        "radius": round(radius, 3),
        "centers": [[round(float(x), 3), round(float(y), 3)] for x, y in centers],
    }


def _render(objects: list[dict], num_frames: int, height: int, width: int) -> np.ndarray:
    """Label maps [T, H, W] (0 background, k + 1 for object k; later objects are drawn on top)."""
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    for index, obj in enumerate(objects):
        for t in range(num_frames):
            labels[t][_shape_mask(obj["shape"], obj["centers"][t], obj["radius"], height, width)] = index + 1
    return labels


def _layout_is_usable(
    objects: list[dict], labels: np.ndarray, height: int, width: int, attribute_names: Sequence[str]
) -> bool:
    signatures = {tuple(obj[name] for name in attribute_names) for obj in objects}
    if len(signatures) != len(objects):
        return False
    for index, obj in enumerate(objects):
        for t, center in enumerate(obj["centers"]):
            full = _shape_mask(obj["shape"], center, obj["radius"], height, width).sum()
            if (labels[t] == index + 1).sum() < _MIN_VISIBLE_FRACTION * full:
                return False
    return True


def _unique_attribute_sets(obj_id: str, objects: Mapping[str, Mapping], attribute_names: Sequence[str]) -> list[dict]:
    candidates = []
    for count in range(1, len(attribute_names) + 1):
        for names in itertools.combinations(attribute_names, count):
            attributes = {name: objects[obj_id][name] for name in names}
            if matching_objects(attributes, objects) == [obj_id]:
                candidates.append(attributes)
    return candidates


def render_referring_video(
    rng: np.random.Generator,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int,
    textured: bool,
    per_object: int,
    attribute_names: Sequence[str] = ATTRIBUTES,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """One clip in memory, as [`generate_referring_shapes`] writes each of its clips: the clip's metadata
    (`{"background", "objects", "expressions"}`), RGB frames `[T, H, W, 3]` uint8 and label maps `[T, H, W]` (pixel
    value = object id), with up to `per_object` expressions per object naming `attribute_names` only."""
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        objects = [_draw_object(rng, num_frames, height, width) for _ in range(num_objects)]
        labels = _render(objects, num_frames, height, width)
        if _layout_is_usable(objects, labels, height, width, attribute_names):
            break
    else:
        raise RuntimeError(
            f"Could not place {num_objects} distinguishable, mostly visible objects in {height}x{width} frames; "
            "use larger frames or fewer objects."
        )
    background = _background(rng, height, width, textured)
    frames = np.repeat(background[None], num_frames, axis=0)
    for index, obj in enumerate(objects):
        frames[labels == index + 1] = obj["rgb"]

    objects_by_id = {str(index + 1): obj for index, obj in enumerate(objects)}
    expressions = {}
    for obj_id in objects_by_id:
        candidates = _unique_attribute_sets(obj_id, objects_by_id, attribute_names)
        chosen = rng.choice(len(candidates), size=min(per_object, len(candidates)), replace=False)
        for candidate in sorted(int(i) for i in chosen):
            attributes = candidates[candidate]
            expressions[str(len(expressions))] = {
                "exp": describe_attributes(attributes),
                "obj_id": obj_id,
                "attributes": attributes,
            }
    video = {"background": "textured" if textured else "plain", "objects": objects_by_id, "expressions": expressions}
    return video, frames, labels


def generate_referring_shapes(
    output_dir: str | os.PathLike,
    num_videos: int = 8,
    num_frames: int = 8,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    *,
    split: str = "train",
    min_objects: int = 2,
    max_objects: int = 4,
    expressions_per_object: int = 2,
    expression_attributes: Sequence[str] = ATTRIBUTES,
    background: str = "mixed",
    frame_stride: int = 5,
    jpeg_quality: int = 95,
) -> dict:
    """Renders `num_videos` clips of moving shapes and writes them in the Ref-YouTube-VOS layout under `output_dir`.

    Args:
        split: split folder to write ("train", "valid" or "test"); every split gets masks and `obj_id`s, so it can be
            used for evaluation. Writing into an existing split folder is refused.
        expression_attributes: the attributes expressions may name (objects of a clip always differ in them), e.g.
            `("size", "color", "shape", "position")` for descriptions that a single frame shows: motion needs
            several frames, which ReferFormer's per-frame query scores do not compare.
        background: "plain", "textured" or "mixed" (each clip picks one at random).
        frame_stride: frame names are `f"{stride * i:05d}"`, like the 5-frame spacing of Ref-YouTube-VOS.
        jpeg_quality: JPEG quality (4:4:4 chroma, so colours stay close to the masks' objects).

    Returns:
        The metadata: `{"split", "height", "width", "seed", "videos": {video_id: {"frames", "background", "objects":
        {obj_id: {"shape", "color", "size", "position", "motion", "rgb", "radius", "centers"}}, "expressions":
        {exp_id: {"exp", "obj_id", "attributes"}}}}}`. Clip `i` depends only on `seed` and `i`.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Unknown split {split!r}; expected 'train', 'valid' or 'test'.")
    if num_videos < 1 or num_frames < 2:
        raise ValueError(f"Need at least one video and two frames per video, got {num_videos} and {num_frames}.")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"Need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}.")
    if min(height, width) < 32:
        raise ValueError(f"Frames must be at least 32x32, got {height}x{width}.")
    if background not in ("plain", "textured", "mixed"):
        raise ValueError(f"Unknown background {background!r}; expected 'plain', 'textured' or 'mixed'.")
    unknown = set(expression_attributes) - set(ATTRIBUTES)
    if not expression_attributes or unknown:
        raise ValueError(f"`expression_attributes` must be a non-empty subset of {ATTRIBUTES}, got {expression_attributes}.")
    attribute_names = tuple(name for name in ATTRIBUTES if name in expression_attributes)
    if expressions_per_object < 1:
        raise ValueError(f"`expressions_per_object` must be at least 1, got {expressions_per_object}.")
    root = Path(output_dir)
    split_dir, expressions_dir = root / split, root / "meta_expressions" / split
    for path in (split_dir, expressions_dir):
        if path.exists():
            raise FileExistsError(f"{path} already exists; generate into a new folder.")

    frame_names = [f"{frame_stride * t:05d}" for t in range(num_frames)]
    palette = voc_palette()
    metadata = {"split": split, "height": height, "width": width, "seed": seed, "videos": {}}
    video_rngs = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(num_videos)]
    for index, rng in enumerate(video_rngs):
        video_id = f"shapes{index:05d}"
        num_objects = int(rng.integers(min_objects, max_objects + 1))
        textured = background == "textured" or (background == "mixed" and bool(rng.integers(2)))
        video, frames, labels = render_referring_video(
            rng, num_frames, height, width, num_objects, textured, expressions_per_object, attribute_names
        )
        (split_dir / "JPEGImages" / video_id).mkdir(parents=True)
        (split_dir / "Annotations" / video_id).mkdir(parents=True)
        for name, frame, label in zip(frame_names, frames, labels, strict=True):
            Image.fromarray(frame).save(
                split_dir / "JPEGImages" / video_id / f"{name}.jpg", quality=jpeg_quality, subsampling=0
            )
            annotation = Image.fromarray(label)
            annotation.putpalette(palette)  # turns the "L" image into a palette image with the same indices
            annotation.save(split_dir / "Annotations" / video_id / f"{name}.png")
        metadata["videos"][video_id] = {"frames": frame_names, **video}

    meta = {
        "videos": {
            video_id: {
                "objects": {
                    obj_id: {"category": obj["shape"], "frames": frame_names}
                    for obj_id, obj in video["objects"].items()
                }
            }
            for video_id, video in metadata["videos"].items()
        }
    }
    meta_expressions = {
        "videos": {
            video_id: {
                "expressions": {
                    exp_id: {"exp": expression["exp"], "obj_id": expression["obj_id"]}
                    for exp_id, expression in video["expressions"].items()
                },
                "frames": frame_names,
            }
            for video_id, video in metadata["videos"].items()
        }
    }
    expressions_dir.mkdir(parents=True)
    (split_dir / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    (expressions_dir / "meta_expressions.json").write_text(json.dumps(meta_expressions, indent=1), encoding="utf-8")
    return metadata
