"""Video and frame I/O: listing frame folders, reading frame images, decoding and counting video files, turning any
frame (PIL image, array, tensor) into an RGB uint8 array, and the one rule that tells one video from a list of videos
(`is_one_video`). Everything that reads a video goes through here."""

import numbers
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def natural_sort_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (`frame2` before `frame10`)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder) -> list[Path]:
    """The frame images of a folder (`IMAGE_EXTENSIONS`, any case) in natural order (`frame2` before `frame10`): the
    one rule every reader of frame folders (processor, inference, datasets, command line) follows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Frames folder not found: {folder} is not a directory.")
    files = sorted(
        (child for child in folder.iterdir() if child.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda child: natural_sort_key(child.name),
    )
    frame_file_names(files)
    return files


def frame_file_names(paths) -> list[str]:
    """The names of frame image files: the file name minus its last suffix only (`img.000.jpg` -> `img.000`),
    computed here once and used as given by every writer (`<name>.png` masks). Two frames of one video sharing a name
    (`00000.jpg` and `00000.png`) are refused: their outputs would overwrite each other."""
    names = [Path(path).stem for path in paths]
    first_with = {}
    for path, name in zip(paths, names):
        if name in first_with:
            raise ValueError(
                f"The frames {first_with[name]} and {path} share the name {name!r} (the file name without its "
                "extension): rename or remove one."
            )
        first_with[name] = path
    return names


def is_image_path(item) -> bool:
    """Whether `item` is the path of an image file (`IMAGE_EXTENSIONS`, any case; not a folder): one frame."""
    return isinstance(item, (str, Path)) and Path(item).suffix.lower() in IMAGE_EXTENSIONS and not Path(item).is_dir()


def _is_frame(item) -> bool:
    """Whether `item` is one frame: a PIL image, an image file path, or an array / tensor `[H, W(, C)]` /
    `[C, H, W]`."""
    return (
        isinstance(item, Image.Image)
        or is_image_path(item)
        or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim in (2, 3))
    )


def is_one_video(videos) -> bool:
    """Whether `videos` is one video rather than a list of videos, by the one rule for lists:

    * a list of frames (PIL images, arrays `[H, W, C]`, image file paths) is ONE video, those frames in order;
    * a list of anything else (video files, frame folders, 4-D arrays, lists of frames, iterators of frames) is
      SEVERAL videos;
    * anything that is not a list or tuple is one video: a video file or frame folder, an image (a PIL image or an
      image file path: a one-frame video), a 4-D array or an iterator of frames.

    A list mixing frames and videos, and an empty list, are refused. Several one-frame videos: a list of lists
    (`[[image_a], [image_b]]`)."""
    if not isinstance(videos, (list, tuple)):
        return True
    if not videos:
        raise ValueError(
            "No video given: pass a video (file, frame folder, image, list of frames or 4-D array) or a list of videos."
        )
    frames = [_is_frame(item) for item in videos]
    if all(frames):
        return True
    if any(frames):
        raise ValueError(
            "A list holds either the frames of one video (images, image paths, arrays [H, W, C]) or several videos "
            f"(video files, frame folders, 4-D arrays, lists of frames), not both: item {frames.index(True)} is a "
            f"frame, item {frames.index(False)} a video."
        )
    return False


def split_videos(videos) -> list:
    """`videos`, one video or a list of videos ([`is_one_video`] tells them apart), as a list of videos."""
    return [videos] if is_one_video(videos) else list(videos)


def video_frame_names(video, indices) -> list[str]:
    """Names of the frames `indices` of `video`: the [`frame_file_names`] of a frame folder, an image file or a list of
    image paths, `00000`-style indices for anything else (a video file, frames in memory)."""
    if isinstance(video, (str, Path)) and Path(video).is_dir():
        names = frame_file_names(list_frame_files(video))
    elif is_image_path(video):
        names = frame_file_names([video])
    elif isinstance(video, (list, tuple)) and video and all(is_image_path(item) for item in video):
        names = frame_file_names(video)
    else:
        return [f"{index:05d}" for index in indices]
    return [names[index] for index in indices]


# PIL modes whose pixels are wider than 8 bits: converted through their numpy values (`convert("RGB")` clips them).
_WIDE_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# File formats whose 32-bit integer ("I") images hold 16-bit samples: 16-bit grayscale PNGs (as older Pillow versions
# open them; current ones give "I;16") and PGM/PPM files with a maximum value above 255.
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")


def _pixels_to_uint8(frame: np.ndarray) -> np.ndarray:
    """The one place pixel values become uint8: uint8 as is, bool as 0/255, uint16 (16-bit images) scaled by 255/65535,
    floats must be finite and in [0, 1] (scaled by 255), other integers must already be in 0..255. Arrays of any byte
    order (e.g. big-endian `>u2`) convert as their native-order equivalents."""
    if not frame.dtype.isnative:
        frame = frame.astype(frame.dtype.newbyteorder("="))
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.bool_:
        return frame.astype(np.uint8) * 255
    if frame.dtype == np.uint16:
        return np.round(frame.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            raise ValueError("A float frame has NaN or infinite values.")
        if frame.size and (frame.min() < 0 or frame.max() > 1):
            raise ValueError(
                f"Float frames must be in [0, 1], got values in [{frame.min():g}, {frame.max():g}]; divide 0..255 "
                "values by 255 (or pass them as uint8)."
            )
        return np.round(frame * 255.0).astype(np.uint8)
    if np.issubdtype(frame.dtype, np.integer):
        if frame.size and (frame.min() < 0 or frame.max() > 255):
            raise ValueError(
                f"{frame.dtype} frames must hold 8-bit values (0..255), got [{frame.min()}, {frame.max()}]; pass "
                "16-bit images as uint16 (they are scaled) or convert them to uint8."
            )
        return frame.astype(np.uint8)
    raise TypeError(f"Unsupported pixel type {frame.dtype} (use uint8, uint16, bool or float in [0, 1]).")


def frame_to_rgb(frame) -> np.ndarray:
    """A PIL image, or a numpy array / torch tensor (HWC or CHW, gray, RGB or RGBA), as an RGB uint8 array [H, W, 3];
    pixel values are converted by [`_pixels_to_uint8`].

    16-bit PIL images are scaled to 8 bits: modes "I;16*", and 32-bit integer ("I") images read from a PNG or
    PGM/PPM file (formats whose "I" images hold 16-bit samples). Other "I" images (a 32-bit TIFF, an image made from
    an int32 array) must hold 8-bit values, kept as they are; "F" images are floats, which must be in [0, 1]."""
    if isinstance(frame, Image.Image):
        if frame.mode not in _WIDE_PIL_MODES:
            return np.asarray(frame.convert("RGB"))
        sixteen_bit = frame.mode.startswith("I;16") or (frame.mode == "I" and frame.format in _SIXTEEN_BIT_I_FORMATS)
        frame = np.asarray(frame)
        if sixteen_bit:
            frame = frame.astype(np.uint16)
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu()
        frame = (frame.float() if frame.dtype in (torch.bfloat16, torch.float16) else frame).numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"A frame must be a PIL image, a numpy array or a torch tensor, got {type(frame).__name__}.")
    if frame.ndim == 3 and frame.shape[-1] not in (1, 3, 4) and frame.shape[0] in (1, 3, 4):
        frame = frame.transpose(1, 2, 0)  # CHW -> HWC
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise ValueError(f"A frame must be [H, W], [H, W, C] or [C, H, W] with 1, 3 or 4 channels, got {frame.shape}.")
    frame = _pixels_to_uint8(frame)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[:, :, :3])


def file_name(source) -> str:
    """How messages name a file given as a path or as a binary file object (its `name`)."""
    return str(source.name) if hasattr(source, "read") else str(source)


def read_frame_image(source) -> np.ndarray:
    """One frame image file (a path, or a binary file object such as a named `io.BytesIO` of its bytes) as an RGB
    uint8 array `[H, W, 3]` (16-bit images scaled, see [`frame_to_rgb`])."""
    try:
        with Image.open(source) as image:
            return frame_to_rgb(image)
    except OSError as error:
        raise ValueError(f"Cannot read frame image {file_name(source)}: {error}") from error


def _open_container(av, source):
    """PyAV's container of a video file given as a path or as a binary file object (read from its start)."""
    if hasattr(source, "read"):
        source.seek(0)
        return av.open(source)
    return av.open(str(source))


def count_video_file_frames(path) -> int:
    """Number of frames of a video file (a path or a binary file object): its container header's count, or the
    decoded frames when the header has none."""
    av = _import_av(path)
    try:
        with _open_container(av, path) as container:
            if not container.streams.video:
                raise ValueError(f"The file {file_name(path)} has no video stream.")
            count = container.streams.video[0].frames
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot decode video file {file_name(path)}: {error}") from error
    return count if count > 0 else sum(1 for _ in decode_video_file(path, lambda index: False))


def _import_av(path):
    """PyAV, imported only when a video file is decoded, so that array inputs (and remote code loaded with
    `trust_remote_code=True`) never need it."""
    try:
        import av
    except ImportError as error:
        raise ImportError(f"Decoding the video file {file_name(path)} needs PyAV: `pip install av`.") from error
    return av


def decode_video_file(path, keep):
    """Yields `(index, frame)` for the frames of a video file (a path or a binary file object) whose index satisfies
    `keep(index)`; decoding stops at the first index for which `keep` returns None (past the last frame wanted)."""
    av = _import_av(path)
    try:
        with _open_container(av, path) as container:
            if not container.streams.video:
                raise ValueError(f"The file {file_name(path)} has no video stream.")
            for index, frame in enumerate(container.decode(video=0)):
                decision = keep(index)
                if decision is None:
                    break
                if decision:
                    yield index, frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, UnicodeDecodeError, IndexError) as error:
        raise ValueError(f"Cannot decode video file {file_name(path)}: {error}") from error


def iter_video_frames(video, frame_stride: int = 1, max_frames: int | None = None):
    """Yields `(index, frame)` for one video, one RGB uint8 frame at a time, keeping every `frame_stride`-th frame (at
    most `max_frames`); `index` is the frame's index in the original video. Takes one video as [`load_video`] does,
    also an iterator of frames (a generator: read lazily, never past the last kept frame); frames are decoded only when
    asked for, so a long video never has to fit in memory."""
    for name, value in (("frame_stride", frame_stride), ("max_frames", 1 if max_frames is None else max_frames)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    def keep(index: int):
        if max_frames is not None and index >= max_frames * frame_stride:
            return None
        return index % frame_stride == 0

    first = None

    def checked(index: int, frame: np.ndarray):
        nonlocal first
        if first is None:
            first = (index, frame.shape)
        elif frame.shape != first[1]:
            raise ValueError(
                f"The frames of a video must all have one size: frame {first[0]} is {first[1][1]}x{first[1][0]}, "
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} (width x height)."
            )
        return index, frame

    if isinstance(video, (str, Path)):
        path = Path(video)
        if not path.exists():
            raise FileNotFoundError(f"Video not found: {path}")
        if not (path.is_file() or path.is_dir()):
            raise ValueError(f"The video {path} is neither a regular file nor a folder (a pipe or device is not read).")
        if path.is_dir():
            files = list_frame_files(path)
            if not files:
                raise ValueError(f"No frame images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}.")
            for index in (index for index in range(len(files)) if keep(index)):
                yield checked(index, read_frame_image(files[index]))
        elif is_image_path(path):  # image mode: a one-frame video
            yield checked(0, read_frame_image(path))
        else:
            for index, frame in decode_video_file(path, keep):
                yield checked(index, frame)
    elif isinstance(video, Image.Image):  # image mode: a one-frame video
        yield checked(0, frame_to_rgb(video))
    elif isinstance(video, Iterator):  # a generator of frames: read lazily, never beyond the last kept frame
        for index, frame in enumerate(video):
            decision = keep(index)
            if decision is None:
                break
            if decision:
                yield checked(index, frame_to_rgb(frame))
    elif isinstance(video, (np.ndarray, torch.Tensor)):
        if video.ndim != 4:
            raise ValueError(f"A video array must be 4-D ([T, H, W, C] or [T, C, H, W]), got shape {tuple(video.shape)}.")
        for index in (index for index in range(len(video)) if keep(index)):
            yield checked(index, frame_to_rgb(video[index]))
    elif isinstance(video, Mapping) or not (hasattr(video, "__len__") and hasattr(video, "__getitem__")):
        raise TypeError(
            "A video is a video file, a frame folder, an image, a list of frames, a 4-D array or an iterator of frames, "
            f"got {type(video).__name__}."
        )
    else:  # a list of frames, or any sequence of them
        if not is_one_video(video):
            raise ValueError(f"Expected one video, got a list of {len(video)} videos (the list rule: `is_one_video`).")
        for index in (index for index in range(len(video)) if keep(index)):
            frame = video[index]
            yield checked(index, read_frame_image(frame) if is_image_path(frame) else frame_to_rgb(frame))
    if first is None:
        raise ValueError(f"The video has no frames: {video if isinstance(video, (str, Path)) else 'empty input'}.")


def load_video(video, frame_stride: int = 1, max_frames: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Loads one video as RGB uint8 frames, keeping every `frame_stride`-th frame (at most `max_frames`).

    `video` is a video file (decoded with PyAV), a folder of frame images (sorted naturally), an image (PIL image or
    image file: one frame), a list of frames (PIL images, numpy arrays, tensors or image file paths) or a 4-D array /
    tensor `[T, H, W, C]` or `[T, C, H, W]`. Returns the frames and their indices in the original video.
    """
    pairs = list(iter_video_frames(video, frame_stride, max_frames))
    return [frame for _, frame in pairs], [index for index, _ in pairs]


__all__ = [
    "IMAGE_EXTENSIONS",
    "count_video_file_frames",
    "decode_video_file",
    "file_name",
    "frame_file_names",
    "frame_to_rgb",
    "is_image_path",
    "is_one_video",
    "iter_video_frames",
    "list_frame_files",
    "load_video",
    "natural_sort_key",
    "read_frame_image",
    "split_videos",
    "video_frame_names",
]
