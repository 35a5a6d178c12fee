"""Referring video object segmentation as one library call: a video and one or more sentences in; for each sentence
the referred object's masks at the original frame size, boxes, scores, the selected query and the frame indices out.

    segmenter = ReferringVideoSegmenter.from_pretrained("path/to/model", device="auto", dtype="bf16")
    for result in segmenter("dog.mp4", ["a brown dog", "the ball"]):
        result.masks, result.boxes, result.scores, result.query_indices, result.frame_indices

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

import itertools
import json
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


from .modeling_referformer import ReferFormerForReferringVideoObjectSegmentation
from .processing_referformer import (
    ReferFormerProcessor,
    ReferFormerVideoProcessor,
    iter_video_frames,
)
from .visualization import PaletteMaskWriter, VideoWriter, overlay_masks, voc_palette


__all__ = [
    "CompressedArray",
    "DTYPES",
    "ReferringVideoSegmenter",
    "VideoSegmentation",
    "iter_frames",
    "prepare_inputs",
    "process_state",
    "resolve_device",
    "resolve_dtype",
    "run_sharded",
    "segmentation_from_output",
    "write_predictions",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PREPROCESS_CHUNK = 16  # frames decoded and preprocessed together; also frames per step of `iter_masks`
# Frames per chunk of the model's per-frame stages (`ReferFormerConfig.frame_chunk_size`). Small chunks are faster on
# CPU, not only smaller: at 360x640 the stride-4 tensors of 2 frames (under 32 MB) reuse freed memory, while those of
# 8 frames get fresh pages from the system at every step (1.25 against 1.76 s per frame for 36 frames, 2 threads).
FRAME_CHUNK_SIZE = 2


def resolve_device(device) -> torch.device:
    """`"auto"` (CUDA when available), a device name or a `torch.device`."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype) -> torch.dtype:
    """`"fp32"`, `"bf16"`, `"fp16"`, `None` (fp32) or a `torch.dtype` among these."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"Unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16.")
    return dtype


# The frame reader of `referformer.processing_referformer`, under the name inference code has always imported.
iter_frames = iter_video_frames


@dataclass
class VideoSegmentation:
    """The object one sentence refers to, in every kept frame of a video.

    `boxes` `[T, 4]` are absolute (x0, y0, x1, y1) on the original frames, `scores` `[T]` the selected query's
    per-frame probabilities, `query_indices` the selected query of each window (one entry for the whole-video
    protocol) and `window_starts` the first frame (position in `frame_indices`) of each window. `mask_logits`
    `[T, h, w]` are the selected query's stride-4 mask logits; `masks`, `iter_masks` and `probabilities` bring them
    to the original size as `ReferFormerVideoProcessor.post_process_referring_video_segmentation` does.
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
    come back in float32.
    """

    def __init__(self, model, processor: ReferFormerProcessor, device=None, dtype=None):
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.dtype = resolve_dtype(dtype)
        self.model = model.to(self.device).eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, name, device="auto", dtype="fp32", **model_kwargs) -> ReferringVideoSegmenter:
        """Loads the model and processor saved in `name` (folder or Hub id); a folder whose weights miss any parameter
        is refused (its model would run on random values). Frames run in chunks of `FRAME_CHUNK_SIZE` (override with
        `frame_chunk_size=`), so that memory grows linearly with the video length."""
        dtype = resolve_dtype(dtype)
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
        return cls(model, processor, device=device, dtype=dtype)

    def autocast(self):
        """The mixed-precision context of `dtype` (a no-op for float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def __call__(
        self,
        video,
        sentences,
        window: int | None = None,
        frame_stride: int = 1,
        max_frames: int | None = None,
        threshold: float = 0.5,
        progress: bool = False,
    ) -> list[VideoSegmentation]:
        """Segments the object each sentence refers to in every kept frame of `video`.

        Args:
            video: a video file, a folder of frame images, a list of frame image paths, a list of frames (PIL images,
                arrays, tensors) or a 4-D array `[T, H, W, C]` / `[T, C, H, W]`.
            sentences: one referring expression or a list of them (one result each, in order).
            window: `None` selects one query over the whole video (one forward pass, the Ref-YouTube-VOS protocol);
                `N` cuts the video into independent windows of `N` frames (the Ref-DAVIS17 protocol uses 36).
            frame_stride, max_frames: keep every `frame_stride`-th frame, at most `max_frames` of them.
            threshold: mask probability threshold.
            progress: show a progress bar over the windows.
        """
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 (or None for the whole video), got {window}.")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        results = [_Collected() for _ in sentences]
        original_size = None
        windows = _windows(iter_frames(video, frame_stride, max_frames), window)
        for window_frames in tqdm(windows, desc="windows", disable=not progress, leave=False):
            inputs, frame_indices = prepare_inputs(self.processor, window_frames, sentences)
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            size = tuple(inputs["original_sizes"][0].tolist())
            if original_size is not None and size != original_size:
                raise ValueError(f"The frames of a video must all have one size, got {original_size} and {size}.")
            original_size = size
            with self.autocast():
                outputs = self.model(**inputs, output_all_queries=False)
            outputs.logits, outputs.pred_boxes, outputs.pred_masks = (
                getattr(outputs, name).float().cpu() for name in ("logits", "pred_boxes", "pred_masks")
            )
            outputs.selected_query_indices = outputs.selected_query_indices.cpu()
            window_results = self.processor.post_process_referring_video_segmentation(
                outputs,
                inputs["original_sizes"].cpu(),
                inputs["resized_sizes"].cpu(),
                threshold=threshold,
                return_mask_logits=True,
            )
            for result, collected in zip(window_results, results):
                collected.add(result, frame_indices)
        return [
            collected.finish(sentence, original_size, threshold, self.processor.video_processor)
            for sentence, collected in zip(sentences, results)
        ]

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


def _windows(frames: Iterator, window: int | None) -> Iterator[Iterator]:
    """The whole frame iterator (`window=None`), or consecutive iterators of `window` frames (each must be consumed
    before the next is taken)."""
    if window is None:
        yield frames
        return
    while (first := next(frames, None)) is not None:
        yield itertools.chain([first], itertools.islice(frames, window - 1))


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
    """Writes the results of one video under `video_dir`: palette PNG masks `<exp_id>/<frame_name>.png` (expression
    ids default to 0, 1, ...), an overlay video `overlay_<exp_id>.<overlay_format>` per sentence (mask, box and
    sentence over the frame) and `predictions.json` (boxes, scores and selected queries; it names the video
    `video_name`, by default the folder's name).

    `frames` yields `(index, RGB frame)` for the segmented frames again (e.g. a fresh `iter_frames`), so that masks
    and overlays are written frame by frame and the video is never held in memory. Each mask folder and overlay
    appears complete or not at all.
    """
    video_dir = Path(video_dir)
    exp_ids = list(exp_ids or [str(index) for index in range(len(results))])
    frame_names = list(frame_names)
    if not len(exp_ids) == len(results) or any(result.num_frames != len(frame_names) for result in results):
        raise ValueError(f"Got {len(results)} results, {len(exp_ids)} expression ids and {len(frame_names)} frame names.")
    colors = [tuple(voc_palette()[3 * (index + 1) : 3 * (index + 2)]) for index in range(len(results))]
    written = 0
    with ExitStack() as stack:
        mask_writers = [stack.enter_context(PaletteMaskWriter(video_dir / exp_id, overwrite=True)) for exp_id in exp_ids]
        overlay_writers = [
            stack.enter_context(VideoWriter(video_dir / f"overlay_{exp_id}.{overlay_format}", fps)) for exp_id in exp_ids
        ]
        masks = [result.iter_masks() for result in results]
        for (_, frame), name in zip(frames, frame_names):
            for result, mask_iterator, mask_writer, overlay_writer, color in zip(
                results, masks, mask_writers, overlay_writers, colors
            ):
                mask = next(mask_iterator)
                mask_writer.write(name, mask)
                box = result.boxes[written : written + 1]
                overlay_writer.write(overlay_masks([frame], mask[None], box, text=result.sentence, color=color)[0])
            written += 1
        if written != len(frame_names):
            raise ValueError(f"Got {written} frames for {len(frame_names)} segmented frames.")
    expressions = [
        {
            "exp_id": exp_id,
            "text": result.sentence,
            "window_query_indices": result.query_indices,
            "window_starts": result.window_starts,
            "frames": [
                {"frame": name, "index": index, "box": [round(float(v), 2) for v in box], "score": round(float(score), 4)}
                for name, index, box, score in zip(frame_names, result.frame_indices, result.boxes, result.scores)
            ],
        }
        for exp_id, result in zip(exp_ids, results)
    ]
    predictions = {"video": video_name or video_dir.name, "frames": frame_names, "expressions": expressions}
    (video_dir / "predictions.json").write_text(json.dumps(predictions, indent=1, allow_nan=False), encoding="utf-8")
    return video_dir


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
