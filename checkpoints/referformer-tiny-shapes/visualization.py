"""Export helpers for segmentation results: mask overlays written as GIF or MP4, and per-frame palette PNG masks in
the Ref-YouTube-VOS layout. Every writer is atomic: it writes to a temporary sibling and renames it into place, so an
export either completes or leaves nothing behind."""

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .output_folders import disown_sibling_dir, make_sibling_dir, temporary_sibling_file


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


class VideoWriter:
    """Writes RGB frames one at a time to a `.gif` or `.mp4` file with PyAV, atomically: use it as a context manager;
    the file appears when the block completes, nothing on an error.

    Every frame is encoded as it arrives (MP4: H.264 when available, else MPEG-4; GIF: the frame's own adaptive
    256-colour palette), so memory does not grow with the number of frames."""

    def __init__(self, path, fps: float = 10.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".gif", ".mp4"):
            raise ValueError(f"Unsupported video format {self.path.suffix!r}: use .gif or .mp4.")
        self.fps = fps
        self.num_frames = 0

    def __enter__(self):
        self._temporary = temporary_sibling_file(self.path)  # same suffix: PyAV picks the container by it
        self._container = None
        return self

    def write(self, frame) -> None:
        frame = np.asarray(frame, dtype=np.uint8)
        if self._container is None:
            self._open(*frame.shape[:2])
        for packet in self._stream.encode(self._video_frame(frame)):
            self._container.mux(packet)
        self.num_frames += 1

    def _open(self, height: int, width: int) -> None:
        import av
        from fractions import Fraction

        self._container = av.open(str(self._temporary), mode="w")
        if self.path.suffix.lower() == ".gif":
            codec, pixel_format = "gif", "pal8"
        else:
            codec, pixel_format = "libx264" if "libx264" in av.codecs_available else "mpeg4", "yuv420p"
            height, width = height - height % 2, width - width % 2  # yuv420p needs even sizes
        self._stream = self._container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1000))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pixel_format

    def _video_frame(self, frame: np.ndarray):
        """The PyAV frame of an RGB frame: RGB for MP4, palette indices and their ARGB palette for GIF."""
        import av

        frame = np.ascontiguousarray(frame[: self._stream.height, : self._stream.width])
        if self._stream.pix_fmt != "pal8":
            return av.VideoFrame.from_ndarray(frame, format="rgb24")
        image = Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE)
        colors = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
        palette = np.zeros((256, 4), dtype=np.uint8)
        palette[:, 0] = 255  # opaque
        palette[: len(colors), 1:] = colors
        return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")

    def __exit__(self, error_type, error, traceback):
        try:
            if error_type is None:
                if not self.num_frames:
                    raise ValueError("No frames to write.")
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                os.replace(self._temporary, self.path)
        finally:
            if self._container is not None:
                self._container.close()
            self._temporary.unlink(missing_ok=True)
        return False


def write_video(frames, path, fps: float = 10.0) -> Path:
    """Writes RGB frames to a `.gif` or `.mp4` file, atomically (see [`VideoWriter`])."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


class PaletteMaskWriter:
    """Writes palette PNG masks one frame at a time into a folder that appears complete or not at all (see
    [`write_palette_masks`]); use it as a context manager."""

    def __init__(self, output_dir, object_id: int = 1, overwrite: bool = False):
        if not 0 < object_id < 256:
            raise ValueError(f"object_id must be in 1..255, got {object_id}.")
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.output_dir} exists; pass overwrite=True to replace it.")
        self.object_id = object_id
        self._palette = voc_palette()

    def __enter__(self):
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self._staging = make_sibling_dir(self.output_dir, "staging")
        self._written = set()
        return self

    def write(self, frame_name: str, mask) -> None:
        """Writes `<frame_name>.png` (the name as given: `video_io.frame_file_names` computes it); a name written
        before is refused."""
        if frame_name in self._written:
            raise ValueError(f"The frame name {frame_name!r} is written twice into {self.output_dir}.")
        self._written.add(frame_name)
        image = Image.fromarray(_to_numpy(mask).astype(bool).astype(np.uint8) * self.object_id)
        image.putpalette(self._palette)  # turns the 8-bit image into a palette image
        image.save(self._staging / f"{frame_name}.png")

    def __exit__(self, error_type, error, traceback):
        try:
            if error_type is None:
                if self.output_dir.exists():
                    shutil.rmtree(self.output_dir)
                disown_sibling_dir(self._staging)
                self._staging.rename(self.output_dir)
        finally:
            if self._staging.exists():
                shutil.rmtree(self._staging)
        return False


def write_palette_masks(masks, output_dir, frame_names, object_id: int = 1, overwrite: bool = False) -> Path:
    """Writes one palette PNG per frame (`<output_dir>/<frame_name>.png`, pixel value `object_id` on the mask, 0
    elsewhere, DAVIS palette) as Ref-YouTube-VOS annotations are stored. The folder appears complete or not at all;
    an existing folder is replaced only with `overwrite=True`."""
    if len(frame_names) != len(masks):
        raise ValueError(f"Got {len(frame_names)} frame names for {len(masks)} masks.")
    with PaletteMaskWriter(output_dir, object_id, overwrite) as writer:
        for name, mask in zip(frame_names, masks):
            writer.write(name, mask)
    return writer.output_dir


__all__ = ["PaletteMaskWriter", "VideoWriter", "overlay_masks", "voc_palette", "write_palette_masks", "write_video"]
