"""Export helpers for segmentation results: mask overlays written as GIF or MP4, and per-frame palette PNG masks in
the Ref-YouTube-VOS layout. Every writer is atomic: it writes to a temporary sibling and renames it into place, so an
export either completes or leaves nothing behind."""

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .output_folders import make_sibling_dir, temporary_sibling_file


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC / DAVIS colour palette (index 0 black, 1 dark red, 2 dark green, ...) as a flat RGB list."""
    palette = []
    for index in range(num_colors):
        red = green = blue = 0
        label = index
        for bit in range(8):
            red |= ((label >> 0) & 1) << (7 - bit)
            green |= ((label >> 1) & 1) << (7 - bit)
            blue |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette.extend((red, green, blue))
    return palette


def _to_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def overlay_masks(frames, masks, boxes=None, text: str | None = None, color=(255, 40, 40), alpha: float = 0.5):
    """Blends `masks` `[T, H, W]` over RGB `frames` (list or array of `[H, W, 3]` uint8), optionally drawing the
    `boxes` `[T, 4]` (absolute x0, y0, x1, y1) and a caption. Returns a list of `[H, W, 3]` uint8 frames."""
    masks = _to_numpy(masks).astype(bool)
    if len(frames) != len(masks):
        raise ValueError(f"Got {len(frames)} frames but {len(masks)} masks.")
    boxes = None if boxes is None else _to_numpy(boxes)
    tint = np.asarray(color, dtype=np.float32)
    overlays = []
    for index, (frame, mask) in enumerate(zip(frames, masks)):
        frame = np.asarray(frame, dtype=np.uint8)
        if frame.shape[:2] != mask.shape:
            raise ValueError(f"Frame {index} is {frame.shape[:2]} but its mask is {mask.shape}.")
        blended = frame.astype(np.float32)
        blended[mask] = (1 - alpha) * blended[mask] + alpha * tint
        image = Image.fromarray(blended.round().astype(np.uint8))
        draw = ImageDraw.Draw(image)
        if boxes is not None:
            draw.rectangle([float(value) for value in boxes[index]], outline=tuple(color), width=2)
        if text:
            draw.text((4, 4), text, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        overlays.append(np.asarray(image))
    return overlays


def write_video(frames, path, fps: float = 10.0) -> Path:
    """Writes RGB frames to a `.gif` (Pillow) or `.mp4` (PyAV, H.264 when available, else MPEG-4) file, atomically."""
    path = Path(path)
    if not len(frames):
        raise ValueError("No frames to write.")
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"Unsupported video format {path.suffix!r}: use .gif or .mp4.")
    frames = [np.asarray(frame, dtype=np.uint8) for frame in frames]
    temporary = temporary_sibling_file(path)
    try:
        if path.suffix.lower() == ".gif":
            images = [Image.fromarray(frame) for frame in frames]
            images[0].save(temporary, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        else:
            _write_mp4(frames, temporary, fps)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import av
    from fractions import Fraction

    height, width = frames[0].shape[:2]
    height, width = height - height % 2, width - width % 2  # yuv420p needs even sizes
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_palette_masks(masks, output_dir, frame_names, object_id: int = 1, overwrite: bool = False) -> Path:
    """Writes one palette PNG per frame (`<output_dir>/<frame_name>.png`, pixel value `object_id` on the mask, 0
    elsewhere, DAVIS palette) as Ref-YouTube-VOS annotations are stored. The folder appears complete or not at all;
    an existing folder is replaced only with `overwrite=True`."""
    masks = _to_numpy(masks).astype(bool)
    output_dir = Path(output_dir)
    if len(frame_names) != len(masks):
        raise ValueError(f"Got {len(frame_names)} frame names for {len(masks)} masks.")
    if not 0 < object_id < 256:
        raise ValueError(f"object_id must be in 1..255, got {object_id}.")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_sibling_dir(output_dir, "staging")
    try:
        palette = voc_palette()
        for name, mask in zip(frame_names, masks):
            image = Image.fromarray(mask.astype(np.uint8) * object_id)
            image.putpalette(palette)  # turns the 8-bit image into a palette image
            image.save(staging / f"{Path(name).stem}.png")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output_dir


__all__ = ["overlay_masks", "voc_palette", "write_palette_masks", "write_video"]
