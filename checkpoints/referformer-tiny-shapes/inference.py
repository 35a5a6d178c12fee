"""Referring video object segmentation as one library call: a video and one or more sentences in; for each sentence
the referred object's masks at the original frame size, boxes, scores, the selected query and the frame indices out.

    segmenter = ReferringVideoSegmenter.from_pretrained("path/to/model", device="auto", dtype="bf16")
    for result in segmenter("dog.mp4", text=["a brown dog", "the ball"]):
        result.masks, result.boxes, result.scores, result.score, result.query_indices, result.frame_indices

The segmenter takes exactly one video (`video`: anything `referformer.video_io.iter_video_frames` reads) and `text`,
one sentence or a list of them (one result each), as the processor and the pipeline name them.

Two protocols select the referred query (the one with the highest frame-averaged score):

* whole video (`window=None`, the default): one forward pass over every kept frame and one query for the whole
  video, ReferFormer's Ref-YouTube-VOS rule;
* windows (`window=36`): consecutive windows of `window` frames, each an independent forward pass with its own
  query, the original's Ref-DAVIS17 inference.

Frames are decoded, resized and normalized a few at a time, so a long video never sits in memory as RGB frames; the
results keep the selected query's stride-4 mask logits and give full-size masks on demand (`iter_masks` frame by
frame, `masks` all at once).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


from .inference_session import (
    FrameSegmentation,
    ReferFormerInferenceSession,
    SessionFrame,
    WindowLink,
    select_linked_queries,
)
from .modeling_referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerSegmentationOutput
from .processing_referformer import (
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
    check_keywords,
    check_threshold,
    sentence_list,
)
from .openvino_backend import OpenVINOReferFormer, openvino_fastest_dtype
from .precision import fastest_dtype
from .quantization import quantize_int8
from .video_io import iter_video_frames
from .visualization import PaletteMaskWriter, VideoWriter, overlay_masks, voc_palette


__all__ = [
    "BACKENDS",
    "DTYPES",
    "PredictionWriter",
    "ReferringVideoSegmenter",
    "VideoSegmentation",
    "write_predictions",
]

# "int8" quantizes the model's per-pixel Linear layers (`referformer.quantization.quantize_int8`, CPU only).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.qint8}
# What runs the model: PyTorch (eager), or OpenVINO's CPU plugin on the exported graph (`referformer.openvino_backend`).
BACKENDS = ("pytorch", "openvino")
PREPROCESS_CHUNK = 16  # frames decoded and preprocessed together; also frames per step of `iter_masks`
# Frames per chunk of the model's per-frame stages (`ReferFormerConfig.frame_chunk_size`). Small chunks are faster on
# CPU, not only smaller: at 360x640 the stride-4 tensors of 2 frames (under 32 MB) reuse freed memory, while those of
# 8 frames get fresh pages from the system at every step (1.25 against 1.76 s per frame for 36 frames, 2 threads).
FRAME_CHUNK_SIZE = 2


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}.")


def resolve_device(device, backend: str = "pytorch") -> torch.device:
    """`"auto"` (CUDA when available; the CPU for OpenVINO), a device name or a `torch.device`."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() and backend == "pytorch" else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device=None, backend: str = "pytorch") -> torch.dtype:
    """`"fp32"`, `"bf16"`, `"fp16"`, `"int8"`, `"auto"` (the fastest of these on `device`, measured once per machine:
    `referformer.precision.fastest_dtype`; for OpenVINO, bf16 where its CPU plugin has bf16 units), `None` (fp32) or
    a `torch.dtype` among these (`torch.qint8`)."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = openvino_fastest_dtype() if backend == "openvino" else fastest_dtype(resolve_device(device))
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}, auto.")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"Unsupported dtype {dtype}; use torch.float32, torch.bfloat16, torch.float16 or torch.qint8.")
    return dtype


@dataclass
class VideoSegmentation:
    """The object one sentence refers to, in every kept frame of a video.

    `boxes` `[T, 4]` are absolute (x0, y0, x1, y1) on the original frames, `scores` `[T]` the selected query's
    per-frame probabilities (`score` their mean, the video-level score), `query_indices` the selected query of each
    window (one entry for the whole-video protocol) and `window_starts` the first frame (position in `frame_indices`)
    of each window. `mask_logits` `[T, h, w]` are the selected query's stride-4 mask logits; `masks`, `iter_masks` and
    `probabilities` bring them to the original size as `ReferFormerVideoProcessor.post_process_referring_video_segmentation`
    does.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((6, 96, 144, 3), 128, np.uint8)  # 6 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> [result] = segmenter(video, text="the yellow square", frame_stride=2, window=2)  # frames 0, 2, 4; windows of 2
    >>> result.sentence, result.frame_indices, result.window_starts, result.query_indices
    ('the yellow square', [0, 2, 4], [0, 2], [0, 0])
    >>> result.mask_logits.shape, result.masks.shape, result.boxes.shape  # stride-4 logits held; full-size masks
    (torch.Size([3, 24, 36]), (3, 96, 144), (3, 4))
    >>> [bool(mask[30:60, 20:50].mean() > 0.8) for mask in result.iter_masks()], bool(result.score > 0.5)
    ([True, True, True], True)

    ```
    """

    sentence: str
    frame_indices: list[int]
    original_size: tuple[int, int]
    query_indices: list[int]
    window_starts: list[int]
    scores: np.ndarray
    boxes: np.ndarray
    mask_logits: torch.Tensor
    threshold: float
    video_processor: ReferFormerVideoProcessor = field(repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def score(self) -> float:
        """The video-level score of the referred object: the mean of the per-frame `scores`, the frame-averaged score
        by which ReferFormer selects a query (for models with one class, as ReferFormer's)."""
        return float(self.scores.mean())

    def probabilities(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Mask probabilities `[n, H, W]` (float32) of the frames `start:stop` at the original size."""
        logits = self.mask_logits[start:stop]
        return self.video_processor.mask_probabilities(logits, *self.original_size).numpy()

    def iter_masks(self, chunk: int = PREPROCESS_CHUNK) -> Iterator[np.ndarray]:
        """Yields the boolean `[H, W]` mask of each frame, computing `chunk` frames at a time."""
        for start in range(0, self.num_frames, chunk):
            yield from self.probabilities(start, start + chunk) > self.threshold

    @property
    def masks(self) -> np.ndarray:
        """Boolean masks `[T, H, W]` at the original frame size (all frames at once; see `iter_masks`)."""
        height, width = self.original_size
        masks = np.empty((self.num_frames, height, width), dtype=bool)
        for index, mask in enumerate(self.iter_masks()):
            masks[index] = mask
        return masks


class ReferringVideoSegmenter:
    """A ReferFormer model and its processor on one device and in one precision, segmenting whole videos.

    Half precision (`dtype="bf16"` / `"fp16"`) runs the float32 weights under autocast; scores, boxes and mask logits
    come back in float32. `dtype="int8"` (CPU) quantizes the model's per-pixel `Linear` layers in place to dynamic
    int8 (`referformer.quantization.quantize_int8`); the rest runs in float32. `dtype="auto"` picks the precision
    this machine runs fastest (`referformer.precision`).

    `backend="openvino"` (CPU, fp32 or bf16, offline models) runs the model's exported graph in OpenVINO
    (`referformer.openvino_backend`): same protocols and results, exported once per frame size and compiled per
    window shape; a window's memory grows with its frames, so give long videos a `window`.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((4, 96, 144, 3), 128, np.uint8)  # 4 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> square, circle = segmenter(video, text=["the yellow square", "the red circle"])  # one result per sentence
    >>> square.masks.shape, bool(square.masks[:, 30:60, 20:50].mean() > 0.8)  # 80% of the square in the masks
    ((4, 96, 144), True)
    >>> bool(circle.masks.any())  # there is no red circle
    False

    ```
    """

    def __init__(self, model, processor: ReferFormerProcessor, device=None, dtype=None, backend: str = "pytorch"):
        check_backend(backend)
        self.device = resolve_device(device, backend) if device is not None else next(model.parameters()).device
        if backend == "openvino" and self.device.type != "cpu":
            raise ValueError(f"backend='openvino' runs on the CPU, not on {self.device}.")
        self.dtype = resolve_dtype(dtype, self.device, backend)
        self.model = model.to(self.device).eval()
        self.engine = None  # what runs the model when it is not PyTorch
        if backend == "openvino":
            self.engine = OpenVINOReferFormer(self.model, self.dtype)
        elif self.dtype == torch.qint8:
            quantize_int8(self.model)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, name, device="auto", dtype="fp32", backend="pytorch", **model_kwargs) -> ReferringVideoSegmenter:
        """Loads the model and processor saved in `name` (folder or Hub id); a folder whose weights miss any parameter
        is refused (its model would run on random values). Frames run in chunks of `FRAME_CHUNK_SIZE` (override with
        `frame_chunk_size=`), so that memory grows linearly with the video length."""
        check_backend(backend)
        dtype = resolve_dtype(dtype, device, backend)
        processor = ReferFormerProcessor.from_pretrained(name)
        model_kwargs.setdefault("frame_chunk_size", FRAME_CHUNK_SIZE)
        model, loading_info = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(
            name, output_loading_info=True, **model_kwargs
        )
        missing = sorted(loading_info["missing_keys"])
        if missing:
            raise ValueError(
                f"The model {name} lacks {len(missing)} weight(s) ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): it would run on random values. Use a complete saved model."
            )
        return cls(model, processor, device=device, dtype=dtype, backend=backend)

    @property
    def online(self) -> bool:
        """Whether the model is an online (OnlineRefer) model, decoding one frame at a time from a track."""
        return bool(self.model.config.online)

    @property
    def backend(self) -> str:
        return "pytorch" if self.engine is None else "openvino"

    def autocast(self):
        """The mixed-precision context of `dtype` (a no-op for float32, int8 and the OpenVINO backend)."""
        half = self.dtype in (torch.bfloat16, torch.float16) and self.engine is None
        return torch.autocast(self.device.type, dtype=self.dtype if half else torch.float32, enabled=half)

    @torch.no_grad()
    def __call__(
        self,
        video,
        text,
        window: int | None = None,
        frame_stride: int = 1,
        max_frames: int | None = None,
        threshold: float = 0.5,
        progress: bool = False,
    ) -> list[VideoSegmentation]:
        """Segments the object each sentence refers to in every kept frame of `video`.

        Args:
            video: one video: a video file, a folder of frame images, an image (PIL image or image file: one frame), a
                list of frames (PIL images, arrays, tensors, image file paths), a 4-D array `[T, H, W, C]` /
                `[T, C, H, W]` or an iterator of frames.
            text: one referring expression or a list of them (one result each, in order).
            window: `None` selects one query over the whole video (one forward pass, the Ref-YouTube-VOS protocol);
                `N` cuts the video into independent windows of `N` frames (the Ref-DAVIS17 protocol uses 36).
            frame_stride, max_frames: keep every `frame_stride`-th frame, at most `max_frames` of them.
            threshold: mask probability threshold.
            progress: show a progress bar over the windows.
        """
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 (or None for the whole video), got {window}.")
        if self.online and window is not None:
            raise ValueError("An online (OnlineRefer) model segments frame by frame: window does not apply.")
        check_threshold(threshold)
        session = self.init_video_session(text, video, frame_stride=frame_stride, max_frames=max_frames)
        results = [_Collected() for _ in session.sentences]
        with tqdm(desc="windows", disable=not progress, leave=False) as bar:
            while True:
                session.read_frames(1 if self.online else window)
                if not session.frames:
                    break
                frames, session.frames = session.frames, []
                window_results = self._segment_window(session, frames, None, threshold, keep_pixel_values=0)
                for result, collected in zip(window_results, results):
                    collected.add(result, [frame.frame_index for frame in frames])
                bar.update()
        return [
            collected.finish(sentence, session.original_size, threshold, self.processor.video_processor)
            for sentence, collected in zip(session.sentences, results)
        ]

    def init_video_session(
        self,
        text,
        video=None,
        frame_stride: int = 1,
        max_frames: int | None = None,
        video_storage_device=None,
        keep_frames: bool = False,
    ) -> ReferFormerInferenceSession:
        """A session for the sentences `text` (one or a list), reading frames lazily from `video` (anything
        `iter_video_frames` reads, generators included, every `frame_stride`-th frame, at most `max_frames`) or, with
        `video=None`, from `session.add_frame`. Frames are stored on `video_storage_device` (default: the CPU);
        `keep_frames` keeps the decoded frames for overlays (`FrameSegmentation.frame`)."""
        sentences = sentence_list(text)
        tokens = self.processor.tokenize(sentences)
        return ReferFormerInferenceSession(
            sentences=sentences,
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            video_storage_device=torch.device(video_storage_device or "cpu"),
            video_processor=self.processor.video_processor,
            frame_source=None if video is None else iter_video_frames(video, frame_stride, max_frames),
            keep_frames=keep_frames,
        )

    @torch.no_grad()
    def propagate_in_video_iterator(
        self,
        session: ReferFormerInferenceSession,
        window: int | None = None,
        overlap: int = 0,
        agreement_weight: float = 0.5,
        threshold: float = 0.5,
    ) -> Iterator[FrameSegmentation]:
        """Segments the session's frames and yields one [`FrameSegmentation`] per frame, in order, as soon as it is
        final: with `window=None` after one pass over all frames (the whole-video protocol), otherwise after the
        first window of `window` frames that contains it, consecutive windows sharing `overlap` frames and keeping
        the referred object by the streaming rule of `referformer.inference_session`. Memory stays bounded by the
        window, whatever the video's length. An online (OnlineRefer) model decodes frame by frame from the track the
        session carries (`window` and `overlap` do not apply): each frame is final as soon as it is decoded."""
        if self.online:
            window, overlap = 1, 0
        if window is not None and not 0 <= overlap < window:
            raise ValueError(f"overlap must be in [0, window) = [0, {window}), got {overlap}.")
        if window is None and overlap:
            raise ValueError("overlap needs a window (the whole-video protocol has a single window).")
        check_threshold(threshold)
        while True:
            session.read_frames(None if window is None else window - len(session.frames))
            if all(frame.final for frame in session.frames):
                return
            count = len(session.frames) if window is None else window
            frames, session.frames = session.frames[:count], session.frames[count:]
            link_weight = agreement_weight if session.link is not None else None
            results = self._segment_window(session, frames, link_weight, threshold, keep_pixel_values=overlap)
            session.num_windows += 1
            yield from self._final_frames(session, frames, results, threshold)
            more_to_come = session.frame_source is not None or bool(session.frames)
            if overlap and more_to_come:  # the next window starts with this one's last `overlap` frames
                logit_threshold = math.log(threshold / (1 - threshold))
                session.link = WindowLink(
                    query_indices=torch.stack([result["query_index"] for result in results]),
                    shared_masks=torch.stack([result["mask_logits"][-overlap:] > logit_threshold for result in results]),
                )
                for frame in frames[-overlap:]:
                    frame.final = True
                session.frames = frames[-overlap:] + session.frames
            del frames, results  # before the next window is read

    def stream(self, video, text, window: int = 36, overlap: int = 8, **options) -> Iterator[FrameSegmentation]:
        """Streams `video` (any frame source, of any length) in windows of `window` frames sharing `overlap`: yields
        one [`FrameSegmentation`] per kept frame, in order, at most one window after the frame was read. `options`:
        those of `init_video_session` (`frame_stride`, `max_frames`, `video_storage_device`, `keep_frames`) and of
        `propagate_in_video_iterator` (`agreement_weight`, `threshold`); a misspelt option is refused, naming the
        closest one."""
        accepted = [*SESSION_OPTIONS, *STREAM_OPTIONS, "video", "text", "window", "overlap"]
        check_keywords(f"{type(self).__name__}.stream()", options, accepted)
        session_options = {key: options.pop(key) for key in list(options) if key in SESSION_OPTIONS}
        session = self.init_video_session(text, video, **session_options)
        return self.propagate_in_video_iterator(session, window=window, overlap=overlap, **options)

    def _segment_window(
        self,
        session: ReferFormerInferenceSession,
        frames: list[SessionFrame],
        link_weight: float | None,
        threshold: float,
        keep_pixel_values: int,
    ) -> list[dict]:
        """One forward pass over `frames` of the session: per sentence the post-processed result of the window's query
        (`mask_logits` `[T, h, w]`, `boxes`, `scores`, `query_index`). Without a link (`link_weight=None`) the query
        is ReferFormer's and only its masks are computed; with one, every query's masks, for the streaming rule. The
        frames' pixel values are released once stacked, but for the last `keep_pixel_values` (the next window's)."""
        pixel_values = torch.stack([frame.pixel_values for frame in frames])[None].to(self.device)
        for frame in frames[: len(frames) - keep_pixel_values]:
            frame.pixel_values = None
        resized_sizes = torch.tensor([session.resized_size])
        inputs = {
            "pixel_values": pixel_values,
            "input_ids": session.input_ids.to(self.device),
            "attention_mask": session.attention_mask.to(self.device),
            "resized_sizes": resized_sizes.to(self.device),
            "output_all_queries": link_weight is not None,
        }
        with self.autocast():
            outputs = self.engine(**inputs) if self.engine is not None else self.model(**inputs, track=session.track)
            if self.online:  # the next frame is decoded from this frame's referred object
                session.track = self.model.update_track(outputs, session.track)
        del pixel_values
        logits, boxes, masks = (getattr(outputs, name).float().cpu() for name in ("logits", "pred_boxes", "pred_masks"))
        selected = outputs.selected_query_indices
        if link_weight is not None:
            height, width = (-(-size // 4) for size in session.resized_size)
            masks = masks[..., :height, :width]
            logit_threshold = math.log(threshold / (1 - threshold))
            selected = select_linked_queries(logits.sigmoid().max(-1).values, masks, session.link, link_weight, logit_threshold)
            masks = masks.gather(2, selected.view(-1, 1, 1, 1, 1).expand(-1, masks.shape[1], 1, *masks.shape[-2:]))
        window_outputs = ReferFormerSegmentationOutput(
            logits=logits, pred_boxes=boxes, pred_masks=masks, selected_query_indices=selected.cpu()
        )
        original_sizes = torch.tensor([session.original_size] * session.num_sentences)
        return self.processor.post_process_referring_video_segmentation(
            window_outputs, original_sizes, resized_sizes.expand(session.num_sentences, 2), threshold, return_mask_logits=True
        )

    def _final_frames(
        self, session: ReferFormerInferenceSession, frames: list[SessionFrame], results: list[dict], threshold: float
    ) -> Iterator[FrameSegmentation]:
        """Yields the window's `frames` that no earlier window yielded, one [`FrameSegmentation`] each."""
        video_processor = self.processor.video_processor
        for position, frame in enumerate(frames):
            if frame.final:
                continue
            masks = [
                video_processor.mask_probabilities(result["mask_logits"][position : position + 1], *session.original_size)[0]
                > threshold
                for result in results
            ]
            yield FrameSegmentation(
                frame_index=frame.frame_index,
                masks=torch.stack(masks).numpy(),
                boxes=torch.stack([result["boxes"][position] for result in results]).numpy(),
                scores=torch.stack([result["scores"][position] for result in results]).numpy(),
                query_indices=[int(result["query_index"]) for result in results],
                window=session.num_windows - 1,
                frame=frame.rgb,
            )


# The options of `ReferringVideoSegmenter.stream` that go to `init_video_session`, and to `propagate_in_video_iterator`.
SESSION_OPTIONS = ("frame_stride", "max_frames", "video_storage_device", "keep_frames")
STREAM_OPTIONS = ("agreement_weight", "threshold")


def prepare_inputs(processor: ReferFormerProcessor, frames, sentences: list[str]) -> tuple[dict, list[int]]:
    """Model inputs (CPU tensors: the video once, `pixel_values` of batch 1, and one `input_ids` row per sentence, so
    that the model computes the visual features once for all sentences) of the frames `(index, RGB frame)` that
    `frames` yields, and their indices. The frames are decoded and preprocessed `PREPROCESS_CHUNK` at a time: only the
    model-input tensors are held, never all decoded frames."""
    inputs, pixel_values, pixel_mask, frame_indices = None, [], [], []
    while chunk := list(itertools.islice(frames, PREPROCESS_CHUNK)):
        frame_indices += [index for index, _ in chunk]
        chunk = [frame for _, frame in chunk]
        if inputs is None:
            inputs = processor(videos=chunk, text=sentences)
            encoded = {key: inputs[key][:1] for key in ("pixel_values", "pixel_mask", "original_sizes")}
        else:
            encoded = processor.video_processor(videos=chunk, return_tensors="pt")
        if not torch.equal(encoded["original_sizes"], inputs["original_sizes"][:1]):
            raise ValueError(
                f"The frames of a video must all have one size, got {inputs['original_sizes'][0].tolist()} and "
                f"{encoded['original_sizes'][0].tolist()}."
            )
        pixel_values.append(encoded["pixel_values"])
        pixel_mask.append(encoded["pixel_mask"])
        del chunk  # before the next chunk is decoded
    model_inputs = {
        "pixel_values": torch.cat(pixel_values, 1),
        "pixel_mask": torch.cat(pixel_mask, 1),
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "resized_sizes": inputs["resized_sizes"],
        "original_sizes": inputs["original_sizes"],
    }
    return model_inputs, frame_indices


def segmentation_from_output(
    result: dict, sentence: str, frame_indices, original_size, threshold: float, video_processor
) -> VideoSegmentation:
    """The `VideoSegmentation` of one whole-video result of `post_process_referring_video_segmentation` (called with
    `return_mask_logits=True`)."""
    collected = _Collected()
    collected.add(result, list(frame_indices))
    return collected.finish(sentence, tuple(original_size), threshold, video_processor)


class _Collected:
    """The per-window results of one sentence, concatenated."""

    def __init__(self):
        self.frame_indices, self.query_indices, self.window_starts = [], [], []
        self.scores, self.boxes, self.mask_logits = [], [], []

    def add(self, result: dict, frame_indices: list[int]) -> None:
        self.window_starts.append(len(self.frame_indices))
        self.frame_indices += frame_indices
        self.query_indices.append(int(result["query_index"]))
        self.scores.append(result["scores"].numpy())
        self.boxes.append(result["boxes"].numpy())
        self.mask_logits.append(result["mask_logits"])

    def finish(self, sentence, original_size, threshold, video_processor) -> VideoSegmentation:
        return VideoSegmentation(
            sentence=sentence,
            frame_indices=self.frame_indices,
            original_size=original_size,
            query_indices=self.query_indices,
            window_starts=self.window_starts,
            scores=np.concatenate(self.scores),
            boxes=np.concatenate(self.boxes),
            mask_logits=torch.cat(self.mask_logits),
            threshold=threshold,
            video_processor=video_processor,
        )


class PredictionWriter:
    """Writes one video's predictions under `video_dir` frame by frame, as they come: palette PNG masks
    `<exp_id>/<frame_name>.png` (expression ids default to 0, 1, ...), an overlay video `overlay_<exp_id>.<overlay_format>`
    per sentence (mask, box and sentence over the frame) and, on a clean exit, `predictions.json` (per expression the
    windows' queries and per frame the box and score; it names the video `video_name`, by default the folder's name).
    Each mask folder and overlay appears complete or not at all.

    Example:

    ```python
    >>> import os, tempfile
    >>> import numpy as np
    >>> from referformer.inference import PredictionWriter, ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((3, 96, 144, 3), 128, np.uint8)  # 3 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with PredictionWriter(folder, ["the yellow square"]) as writer:  # expression id "0"
    ...         for output in segmenter.stream(video, "the yellow square", window=2, overlap=1, keep_frames=True):
    ...             writer.write(f"{output.frame_index:05d}", output)  # as soon as the frame is final
    ...     print(sorted(os.listdir(folder)), sorted(os.listdir(os.path.join(folder, "0"))))
    ['0', 'overlay_0.gif', 'predictions.json'] ['00000.png', '00001.png', '00002.png']

    ```
    """

    def __init__(self, video_dir, sentences, exp_ids=None, overlay_format="gif", fps=10.0, video_name=None):
        self.video_dir, self.sentences = Path(video_dir), list(sentences)
        self.exp_ids = list(exp_ids or [str(index) for index in range(len(self.sentences))])
        if len(self.exp_ids) != len(self.sentences):
            raise ValueError(f"Got {len(self.sentences)} sentences and {len(self.exp_ids)} expression ids.")
        self.overlay_format, self.fps, self.video_name = overlay_format, fps, video_name or self.video_dir.name
        self.colors = [tuple(voc_palette()[3 * (index + 1) : 3 * (index + 2)]) for index in range(len(self.sentences))]
        self.frame_names, self.frames = [], []

    def __enter__(self) -> PredictionWriter:
        self._stack = ExitStack().__enter__()
        self._mask_writers = [
            self._stack.enter_context(PaletteMaskWriter(self.video_dir / exp_id, overwrite=True)) for exp_id in self.exp_ids
        ]
        self._overlay_writers = [
            self._stack.enter_context(VideoWriter(self.video_dir / f"overlay_{exp_id}.{self.overlay_format}", self.fps))
            for exp_id in self.exp_ids
        ]
        return self

    def write(self, frame_name: str, output: FrameSegmentation, frame: np.ndarray | None = None) -> None:
        """Writes the masks and overlays of one frame (`frame`, by default `output.frame`, the RGB frame)."""
        frame = output.frame if frame is None else frame
        if frame is None:
            raise ValueError("Overlays need the frame: pass it, or stream with keep_frames=True.")
        for index, (mask_writer, overlay_writer) in enumerate(zip(self._mask_writers, self._overlay_writers)):
            mask_writer.write(frame_name, output.masks[index])
            overlay = overlay_masks(
                [frame], output.masks[index][None], output.boxes[index : index + 1], text=self.sentences[index],
                color=self.colors[index],
            )
            overlay_writer.write(overlay[0])
        self.frame_names.append(frame_name)
        self.frames.append(output)

    def __exit__(self, *exc_info) -> None:
        self._stack.__exit__(*exc_info)
        if exc_info[0] is None:
            self._write_predictions_json()

    def _write_predictions_json(self) -> None:
        window_starts = [
            position for position, output in enumerate(self.frames)
            if position == 0 or output.window != self.frames[position - 1].window
        ]
        expressions = [
            {
                "exp_id": exp_id,
                "text": sentence,
                "window_query_indices": [self.frames[start].query_indices[index] for start in window_starts],
                "window_starts": window_starts,
                "frames": [
                    {
                        "frame": name,
                        "index": output.frame_index,
                        "box": [round(float(value), 2) for value in output.boxes[index]],
                        "score": round(float(output.scores[index]), 4),
                    }
                    for name, output in zip(self.frame_names, self.frames)
                ],
            }
            for index, (exp_id, sentence) in enumerate(zip(self.exp_ids, self.sentences))
        ]
        predictions = {"video": self.video_name, "frames": self.frame_names, "expressions": expressions}
        (self.video_dir / "predictions.json").write_text(json.dumps(predictions, indent=1, allow_nan=False), encoding="utf-8")


def frame_segmentations(results: list[VideoSegmentation]) -> Iterator[FrameSegmentation]:
    """The per-frame view of whole-video results (one per sentence, the same frames): one [`FrameSegmentation`] per
    frame, computing full-size masks frame by frame."""
    masks = [result.iter_masks() for result in results]
    first = results[0]
    for position, frame_index in enumerate(first.frame_indices):
        window = bisect.bisect_right(first.window_starts, position) - 1
        yield FrameSegmentation(
            frame_index=frame_index,
            masks=np.stack([next(iterator) for iterator in masks]),
            boxes=np.stack([result.boxes[position] for result in results]),
            scores=np.stack([result.scores[position] for result in results]),
            query_indices=[result.query_indices[window] for result in results],
            window=window,
        )


def write_predictions(
    video_dir,
    frames,
    results: list[VideoSegmentation],
    frame_names,
    overlay_format="gif",
    fps=10.0,
    exp_ids=None,
    video_name: str | None = None,
) -> Path:
    """Writes the results of one video with a [`PredictionWriter`]. `frames` yields `(index, RGB frame)` for the
    segmented frames again (e.g. a fresh `iter_video_frames`), so that the video is never held in memory.

    Example:

    ```python
    >>> import json, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from referformer.inference import ReferringVideoSegmenter, write_predictions
    >>> from referformer.video_io import iter_video_frames
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((3, 96, 144, 3), 128, np.uint8)  # 3 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> results = segmenter(video, text=["the yellow square", "the red circle"])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     written = write_predictions(folder, iter_video_frames(video), results, frame_names=["a", "b", "c"])
    ...     predictions = json.loads((written / "predictions.json").read_text())
    ...     mask = np.array(Image.open(written / "0" / "a.png"))  # expression 0, frame "a": 1 on the object
    >>> predictions["frames"], [expression["text"] for expression in predictions["expressions"]]
    (['a', 'b', 'c'], ['the yellow square', 'the red circle'])
    >>> bool(mask[30:60, 20:50].mean() > 0.8), int(mask.max())
    (True, 1)

    ```
    """
    frame_names = list(frame_names)
    if any(result.num_frames != len(frame_names) for result in results):
        raise ValueError(f"Got results of {[result.num_frames for result in results]} frames for {len(frame_names)} frame names.")
    with PredictionWriter(video_dir, [result.sentence for result in results], exp_ids, overlay_format, fps, video_name) as writer:
        for (_, frame), name, output in zip(frames, frame_names, frame_segmentations(results)):
            writer.write(name, output, frame)
        if len(writer.frame_names) != len(frame_names):
            raise ValueError(f"Got {len(writer.frame_names)} frames for {len(frame_names)} segmented frames.")
    return Path(video_dir)
