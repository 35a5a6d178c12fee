"""Inference sessions: the named state of one video's referring segmentation, for the whole-video, windowed and
streaming protocols of [`~referformer.inference.ReferringVideoSegmenter`].

    session = segmenter.init_video_session(text=["a brown dog", "the ball"])     # or video=... (any frame source)
    session.add_frame(frame)                                                      # appended; or frame_index=i
    for output in segmenter.propagate_in_video_iterator(session, window=36, overlap=8):
        output.frame_index, output.masks, output.boxes, output.scores             # [N, H, W], [N, 4], [N]

A session holds the sentences (tokenized once), the preprocessed frames not yet final (on `video_storage_device`),
the frame size, and the link between consecutive windows: the queries chosen in the last window and their masks on
the frames the next window shares. Streaming keeps at most `window` frames, whatever the video's length.

**Streaming rule.** Windows of `window` frames overlap by `overlap` frames. In the first window (or with
`overlap=0`) each sentence's query is ReferFormer's: the highest frame-averaged score. In every later window the
query maximizes `(1 - agreement_weight) * score + agreement_weight * IoU`, where `score` is the query's
frame-averaged score in the window and `IoU` the mean, over the shared frames, of the intersection over union of its
thresholded stride-4 masks with those of the previous window's choice (two empty masks agree: IoU 1). A frame is
final, and yielded, by the first window that contains it, so that results trail the input by at most one window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .frame_chunking import OnlineTrack
from .processing_referformer import ReferFormerVideoProcessor
from .video_io import frame_to_rgb


@dataclass
class SessionFrame:
    """One preprocessed frame: its `frame_index` in the video, `pixel_values` `[3, h, w]` (normalized, on the session's
    `video_storage_device`; None once a forward pass no longer needs them), the decoded `rgb` frame `[H, W, 3]` when the session keeps frames (overlays), and whether
    an earlier window already yielded it (`final`: a frame the next window shares).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> session = segmenter.init_video_session("the yellow square", keep_frames=True)
    >>> session.add_frame(np.zeros((192, 288, 3), np.uint8), frame_index=10)  # frame 10 of a video
    >>> frame = session.frames[0]  # stored as the model takes it: resized to 96x144, normalized
    >>> frame.frame_index, frame.pixel_values.shape, frame.rgb.shape, frame.final
    (10, torch.Size([3, 96, 144]), (192, 288, 3), False)

    ```
    """

    frame_index: int
    pixel_values: torch.Tensor | None
    rgb: np.ndarray | None = None
    final: bool = False


@dataclass
class WindowLink:
    """What the next window's query selection reads from the last one: `query_indices` `[N]` (one per sentence) and
    `shared_masks` `[N, overlap, h, w]` bool, their thresholded stride-4 masks on the frames both windows contain.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((4, 96, 144, 3), 128, np.uint8)  # 4 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> session = segmenter.init_video_session("the yellow square", video)
    >>> outputs = list(segmenter.propagate_in_video_iterator(session, window=3, overlap=1))  # frames 0-2, then 2-3
    >>> session.link.query_indices, session.link.shared_masks.shape  # the first window's choice, on frame 2
    (tensor([0]), torch.Size([1, 1, 24, 36]))
    >>> bool(session.link.shared_masks[0, 0, 8:15, 5:12].float().mean() > 0.8)  # the square, at stride 4
    True

    ```
    """

    query_indices: torch.Tensor
    shared_masks: torch.Tensor


@dataclass
class FrameSegmentation:
    """The referred objects in one frame: `frame_index` in the video, per sentence (N) `masks` `[N, H, W]` bool at the
    original frame size, `boxes` `[N, 4]` absolute (x0, y0, x1, y1), `scores` `[N]`, the `query_indices` chosen in the
    `window` (its number, from 0) that made the frame final; `frame` the decoded RGB frame `[H, W, 3]` when the session
    keeps frames.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> video = np.full((4, 96, 144, 3), 128, np.uint8)  # 4 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> outputs = list(segmenter.stream(video, ["the yellow square", "the red circle"], window=3, overlap=1))
    >>> [output.frame_index for output in outputs], [output.window for output in outputs]
    ([0, 1, 2, 3], [0, 0, 0, 1])
    >>> last = outputs[-1]  # one row per sentence
    >>> last.masks.shape, last.boxes.shape, last.scores.shape, last.query_indices, last.frame is None
    ((2, 96, 144), (2, 4), (2,), [0, 0], True)
    >>> bool(last.masks[0, 30:60, 20:50].mean() > 0.8), bool(last.masks[1].any())  # the square; no red circle
    (True, False)

    ```
    """

    frame_index: int
    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    query_indices: list[int]
    window: int = 0
    frame: np.ndarray | None = None


@dataclass
class ReferFormerInferenceSession:
    """The state of one video's inference (see the module docstring).

    `sentences` and their tokens `input_ids` / `attention_mask` `[N, L]`; `frames` the frames not yet final, in video
    order, stored on `video_storage_device`; `frame_source` the frames still to read (`(index, RGB frame)` pairs of
    any iterable: a lazily decoded file, a frame folder, a generator), or None when frames are added with
    `add_frame`; `original_size` / `resized_size` the frames' `(height, width)` before and after preprocessing;
    `link` the last window's choice; `track` an online (OnlineRefer) model's track of the referred objects (one per
    sentence, None before the first frame); `keep_frames` keeps the decoded frames for overlays; `next_frame_index` the
    index an appended frame gets; `num_windows` the windows segmented so far.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer.inference import ReferringVideoSegmenter
    >>> segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes", device="cpu")
    >>> session = segmenter.init_video_session(["the yellow square", "the red circle"])  # frames pushed by the caller
    >>> frame = np.full((96, 144, 3), 128, np.uint8)  # a grey frame [H, W, RGB]
    >>> frame[30:60, 20:50] = (240, 210, 20)  # a yellow square
    >>> for _ in range(4):
    ...     session.add_frame(frame)
    >>> session.input_ids.shape, len(session.frames), session.original_size, session.resized_size
    (torch.Size([2, 5]), 4, (96, 144), (96, 144))
    >>> outputs = list(segmenter.propagate_in_video_iterator(session, window=2))  # 2 windows of 2 frames
    >>> len(outputs), session.num_windows, session.frames, session.next_frame_index
    (4, 2, [], 4)

    ```
    """

    sentences: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    video_storage_device: torch.device
    video_processor: ReferFormerVideoProcessor
    frame_source: Iterator[tuple[int, np.ndarray]] | None = None
    keep_frames: bool = False
    frames: list[SessionFrame] = field(default_factory=list)
    original_size: tuple[int, int] | None = None
    resized_size: tuple[int, int] | None = None
    link: WindowLink | None = None
    track: OnlineTrack | None = None
    next_frame_index: int = 0
    num_windows: int = 0

    @property
    def num_sentences(self) -> int:
        return len(self.sentences)

    def add_frame(self, frame, frame_index: int | None = None) -> None:
        """Preprocesses `frame` (PIL image, array or tensor) and stores it; `frame_index` defaults to the frame after
        the last one added. Frames come in increasing index order and share one size."""
        frame_index = self.next_frame_index if frame_index is None else frame_index
        if frame_index < self.next_frame_index:
            raise ValueError(
                f"Frames must be added in increasing index order: frame {frame_index} after frame "
                f"{self.next_frame_index - 1}."
            )
        rgb = frame_to_rgb(frame)
        if self.original_size is None:
            self.original_size = tuple(rgb.shape[:2])
        elif tuple(rgb.shape[:2]) != self.original_size:
            raise ValueError(
                f"The frames of a video must all have one size: frame {frame_index} is {rgb.shape[1]}x{rgb.shape[0]}, "
                f"the first one {self.original_size[1]}x{self.original_size[0]} (width x height)."
            )
        encoded = self.video_processor(videos=[rgb], return_tensors="pt")
        self.resized_size = tuple(encoded["resized_sizes"][0].tolist())
        pixel_values = encoded["pixel_values"][0, 0].to(self.video_storage_device)
        self.frames.append(SessionFrame(frame_index, pixel_values, rgb if self.keep_frames else None))
        self.next_frame_index = frame_index + 1

    def read_frames(self, count: int | None) -> None:
        """Adds up to `count` frames (all with None) from `frame_source`; at its end the source is dropped."""
        while self.frame_source is not None and (count is None or count > 0):
            pair = next(self.frame_source, None)
            if pair is None:
                self.frame_source = None
                break
            self.add_frame(pair[1], pair[0])
            count = None if count is None else count - 1


def select_linked_queries(
    scores: torch.Tensor,
    mask_logits: torch.Tensor,
    link: WindowLink | None,
    agreement_weight: float,
    logit_threshold: float,
) -> torch.Tensor:
    """The query of each sentence in a window, `[N]`, by the streaming rule (module docstring).

    `scores` `[N, T, Q]` per-frame query scores (best class probability), `mask_logits` `[N, T, Q, h, w]` the stride-4
    mask logits of every query, `link` the previous window's choice (None: the highest frame-averaged score), masks
    thresholded at `logit_threshold`.

    Example:

    ```python
    >>> import torch
    >>> from referformer.inference_session import WindowLink, select_linked_queries
    >>> scores = torch.tensor([[[0.6, 0.7], [0.6, 0.7]]])  # [N=1 sentence, T=2 frames, Q=2 queries]
    >>> mask_logits = torch.full((1, 2, 2, 4, 4), -5.0)  # [N, T, Q, h, w]
    >>> mask_logits[:, :, 0, :2, :2] = 5.0  # query 0: an object at the top left
    >>> mask_logits[:, :, 1, 2:, 2:] = 5.0  # query 1: another one at the bottom right
    >>> select_linked_queries(scores, mask_logits, None, agreement_weight=0.5, logit_threshold=0.0)  # best score
    tensor([1])
    >>> previous = WindowLink(query_indices=torch.tensor([0]), shared_masks=mask_logits[:, :1, 0] > 0)  # 1 shared frame
    >>> select_linked_queries(scores, mask_logits, previous, agreement_weight=0.5, logit_threshold=0.0)  # IoU 1 vs 0
    tensor([0])

    ```
    """
    mean_scores = scores.mean(1)
    if link is None:
        return mean_scores.argmax(-1)
    shared = link.shared_masks.shape[1]
    masks = mask_logits[:, :shared] > logit_threshold  # [N, o, Q, h, w]
    previous = link.shared_masks[:, :, None]  # [N, o, 1, h, w]
    intersection = (masks & previous).flatten(-2).sum(-1).float()
    union = (masks | previous).flatten(-2).sum(-1).float()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union)).mean(1)  # [N, Q]
    return ((1 - agreement_weight) * mean_scores + agreement_weight * iou).argmax(-1)


__all__ = ["FrameSegmentation", "ReferFormerInferenceSession", "SessionFrame", "WindowLink", "select_linked_queries"]
