"""Processors of ReferFormer: video preprocessing, tokenization of the referring expressions, and post-processing of
the model outputs into per-frame masks, boxes and scores. Reading videos and frames is `video_io`'s job."""

import difflib

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ProcessorMixin, TextKwargs, VideosKwargs
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER
from transformers.utils import logging
from transformers.video_processing_utils import BaseVideoProcessor

from .modeling_referformer import select_referred_query
from .video_io import load_video, split_videos


logger = logging.get_logger(__name__)

MIN_FRAME_SIZE = 32  # the pixel decoder reduces the stride-4 map by 8 in its self-attention


def get_resize_output_size(height: int, width: int, shortest_edge: int, longest_edge: int | None = None) -> tuple[int, int]:
    """(height, width) after the original resize: the shorter side becomes `shortest_edge` (the longer one is
    truncated, as torchvision's `Resize`); with `longest_edge`, the shorter side is first reduced so that the longer
    one does not exceed it (the original's `RandomResize(sizes, max_size)`)."""
    size = shortest_edge
    if longest_edge is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > longest_edge:
            size = int(round(longest_edge * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def uniform_frame_picks(total: int, num_frames: int) -> list[int]:
    """Positions of `num_frames` frames spread uniformly over `total` (the first one included), as transformers'
    default video sampling picks them."""
    if num_frames > total:
        raise ValueError(f"Cannot sample num_frames={num_frames} frames from a video of {total} (kept) frames.")
    return [int(position) for position in np.arange(0, total, total / num_frames)[:num_frames]]


def normalize_frames(
    frames: np.ndarray,
    rescale_factor: float | None = 1 / 255,
    image_mean=IMAGENET_DEFAULT_MEAN,
    image_std=IMAGENET_DEFAULT_STD,
) -> torch.Tensor:
    """RGB frames `[T, H, W, 3]` (uint8) -> float32 pixel values `[T, 3, H, W]`: multiplied by `rescale_factor`,
    then ImageNet-normalized (`(x - mean) / std`); `None` skips a step. The one pixel rule of inference and training."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if rescale_factor is not None:
        clip = clip * rescale_factor
    if image_mean is not None:
        mean = torch.tensor(image_mean).view(1, 3, 1, 1)
        std = torch.tensor(image_std).view(1, 3, 1, 1)
        clip = (clip - mean) / std
    return clip


def _prediction_tensors(outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(logits, pred_boxes, pred_masks)` of a model output, or of its `return_dict=False` tuple (which starts with
    them when no labels were given)."""
    if hasattr(outputs, "logits"):
        return outputs.logits, outputs.pred_boxes, outputs.pred_masks
    if isinstance(outputs, (tuple, list)) and len(outputs) >= 3 and all(
        isinstance(tensor, torch.Tensor) and tensor.dim() == rank for tensor, rank in zip(outputs[:3], (4, 4, 5))
    ):
        return tuple(outputs[:3])
    raise ValueError(
        "Post-processing needs the model's output, or its return_dict=False tuple computed without labels "
        "(logits, pred_boxes, pred_masks, ...)."
    )


def sentence_list(text) -> list[str]:
    """`text`, one referring expression or a list of them, as a list of non-empty strings (an empty list is
    refused)."""
    sentences = [text] if isinstance(text, str) else text
    if not isinstance(sentences, (list, tuple)) or not sentences:
        raise ValueError("text must be a sentence or a non-empty list of sentences.")
    for sentence in sentences:
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f"Every referring expression must be a non-empty string, got {sentence!r}.")
    return list(sentences)


def check_threshold(threshold: float) -> None:
    """Mask probability thresholds must lie in (0, 1): 0 or below marks every pixel, 1 or above none."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")


def check_keywords(caller: str, given, accepted, kind: str = "keyword argument") -> None:
    """Refuses the names of `given` not in `accepted` with one line naming each, and the closest accepted name
    (`difflib`): "ReferFormerProcessor() got an unexpected keyword argument 'video' (did you mean 'videos'?)"."""
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(accepted), n=1)
        named.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise TypeError(f"{caller} got an unexpected {kind}{'s' if len(unknown) > 1 else ''} {', '.join(named)}.")


class ReferFormerVideoProcessorKwargs(VideosKwargs, total=False):
    """Video-processor options on top of the standard ones.

    frame_stride (`int`): keep every `frame_stride`-th frame. max_frames (`int`): keep at most this many frames.
    num_frames (`int`, standard): then sample this many of the kept frames uniformly (`do_sample_frames` may be
    left unset or True). device (standard): device of the returned tensors. `fps`, `video_metadata` and
    `return_metadata` are refused (frames are selected by index).
    size_divisor (`int`): pad the batch to a multiple of this (32 for training as the original; none at inference).
    mask_interpolation (`str`): how post-processing brings the stride-4 masks to frame size: `"logits"` (the
    original: bilinear on the logits, then sigmoid) or `"probabilities"` (sigmoid, then bilinear), which puts a
    saturated mask's edge halfway between grid cells even when its inside and outside logits differ a lot in
    magnitude (small models trained on small objects).
    """

    frame_stride: int
    max_frames: int | None
    size_divisor: int | None
    mask_interpolation: str


class ReferFormerVideoProcessor(BaseVideoProcessor):
    r"""
    Prepares videos for ReferFormer as the original does at inference: every frame is resized so that its shorter
    side is 360 (`size["shortest_edge"]`, PIL bilinear; with `size["longest_edge"]` the longer side is capped as the
    original's training/A2D transforms do), converted to [0, 1], ImageNet-normalized, and the clips of a batch are
    zero-padded at the bottom/right to the largest one (to a multiple of `size_divisor` if set).

    Returns `pixel_values` `[B, T, 3, H, W]`, `pixel_mask` `[B, T, H, W]` (1 on real pixels), `resized_sizes`
    `[B, 2]` (unpadded model-input height and width), `original_sizes` `[B, 2]` and `frame_indices` `[B, T]` (indices of
    the kept frames in the source video). All frames of a video must have one size.

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer import ReferFormerVideoProcessor
    >>> video_processor = ReferFormerVideoProcessor(size={"shortest_edge": 96, "longest_edge": 144})
    >>> videos = [np.zeros((10, 192, 288, 3), np.uint8), np.zeros((10, 96, 120, 3), np.uint8)]  # 2 black videos
    >>> inputs = video_processor(videos, frame_stride=2, max_frames=3)  # every other frame, 3 of them
    >>> inputs["frame_indices"].tolist(), inputs["original_sizes"].tolist(), inputs["resized_sizes"].tolist()
    ([[0, 2, 4], [0, 2, 4]], [[192, 288], [96, 120]], [[96, 144], [96, 120]])
    >>> inputs["pixel_values"].shape, inputs["pixel_mask"][1, 0, 0].sum()  # the second video padded at the right
    (torch.Size([2, 3, 3, 96, 144]), tensor(120))
    >>> inputs["pixel_values"][0, 0, :, 0, 0]  # a black pixel, ImageNet-normalized: -mean / std
    tensor([-2.1179, -2.0357, -1.8044])

    ```
    """

    valid_kwargs = ReferFormerVideoProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    size = {"shortest_edge": 360}
    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_convert_rgb = True
    frame_stride = 1
    max_frames = None
    size_divisor = None
    mask_interpolation = "logits"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.mask_interpolation not in ("logits", "probabilities"):
            raise ValueError(f"`mask_interpolation` must be 'logits' or 'probabilities', got {self.mask_interpolation!r}.")

    def preprocess(self, videos, return_tensors="pt", **kwargs) -> BatchFeature:
        """Loads, resizes, normalizes and pads one video or a list of videos (`is_one_video` tells them apart; see the
        class docstring)."""
        accepted = ["videos", "return_tensors", *self.valid_kwargs.__annotations__]
        check_keywords(f"{type(self).__name__}.preprocess()", kwargs, accepted)
        options = {name: kwargs.get(name, getattr(self, name, None)) for name in self.valid_kwargs.__annotations__}
        num_frames = self._frames_to_sample(options)
        size = self._standardize_kwargs(size=options["size"])["size"]
        clips, original_sizes, frame_indices = [], [], []
        for video in split_videos(videos):
            frames, indices = load_video(video, options["frame_stride"], options["max_frames"])
            if num_frames is not None:
                picks = uniform_frame_picks(len(frames), num_frames)
                frames, indices = [frames[pick] for pick in picks], [indices[pick] for pick in picks]
            original_sizes.append(frames[0].shape[:2])
            frame_indices.append(indices)
            clips.append(self._prepare_clip(frames, size, options))
        if len({clip.shape[0] for clip in clips}) > 1:
            raise ValueError(
                f"The videos of a batch must have the same number of frames, got {[clip.shape[0] for clip in clips]}; "
                "process them separately or use max_frames."
            )
        pixel_values, pixel_mask = self.pad(clips, options["size_divisor"])
        data = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "resized_sizes": torch.tensor([list(clip.shape[-2:]) for clip in clips]),
            "original_sizes": torch.tensor([list(hw) for hw in original_sizes]),
            "frame_indices": torch.tensor(frame_indices),
        }
        batch = BatchFeature(data=data, tensor_type=return_tensors)
        return batch.to(options["device"]) if options["device"] is not None else batch

    @staticmethod
    def _frames_to_sample(options) -> int | None:
        """The `num_frames` to sample uniformly (None: keep the frames `frame_stride` / `max_frames` select); refuses
        the standard sampling options this processor cannot honour."""
        if options["fps"] is not None:
            raise ValueError(
                "`fps` sampling is not supported: ReferFormer selects frames by index. Use `frame_stride` (every n-th "
                "frame), `max_frames` (the first n kept frames) or `num_frames` (n frames spread uniformly)."
            )
        if options["video_metadata"] is not None or options["return_metadata"]:
            raise ValueError(
                "`video_metadata` / `return_metadata` are not supported: the outputs' `frame_indices` give the "
                "indices of the kept frames."
            )
        num_frames, do_sample_frames = options["num_frames"], options["do_sample_frames"]
        if do_sample_frames and num_frames is None:
            raise ValueError("`do_sample_frames=True` needs `num_frames`, the number of frames to sample uniformly.")
        if do_sample_frames is False and num_frames is not None:
            raise ValueError(f"`num_frames={num_frames}` asks to sample frames but `do_sample_frames=False`.")
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
            raise ValueError(f"`num_frames` must be a positive integer, got {num_frames!r}.")
        return num_frames

    def _prepare_clip(self, frames: list[np.ndarray], size, options) -> torch.Tensor:
        """Resizes and normalizes one video's frames; frames must have `MIN_FRAME_SIZE` pixels on each side, as given
        and after the resize."""
        original_height, original_width = height, width = frames[0].shape[:2]
        if options["do_resize"]:
            height, width = get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)
        if min(original_height, original_width, height, width) < MIN_FRAME_SIZE:
            raise ValueError(
                f"The frames are {original_width}x{original_height} pixels (width x height), resized to "
                f"{width}x{height}: too small or too thin for ReferFormer, which needs at least {MIN_FRAME_SIZE} "
                "pixels on each side, as given and after the resize."
            )
        if options["do_resize"]:
            resample = PILImageResampling(options["resample"])
            frames = [
                frame if frame.shape[:2] == (height, width)
                else np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))
                for frame in frames
            ]
        return normalize_frames(
            np.stack(frames),
            options["rescale_factor"] if options["do_rescale"] else None,
            options["image_mean"] if options["do_normalize"] else None,
            options["image_std"] if options["do_normalize"] else None,
        )

    @staticmethod
    def pad(clips: list[torch.Tensor], size_divisor: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pads clips `[T, 3, h, w]` at the bottom/right to a common size: `[B, T, 3, H, W]` and the mask."""
        height = max(clip.shape[-2] for clip in clips)
        width = max(clip.shape[-1] for clip in clips)
        if size_divisor:
            height, width = -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor
        num_frames = clips[0].shape[0]
        pixel_values = clips[0].new_zeros((len(clips), num_frames, 3, height, width))
        pixel_mask = torch.zeros((len(clips), num_frames, height, width), dtype=torch.long)
        for index, clip in enumerate(clips):
            pixel_values[index, :, :, : clip.shape[-2], : clip.shape[-1]] = clip
            pixel_mask[index, :, : clip.shape[-2], : clip.shape[-1]] = 1
        return pixel_values, pixel_mask

    def post_process_referring_video_segmentation(
        self,
        outputs,
        target_sizes,
        resized_sizes=None,
        threshold: float = 0.5,
        return_all_queries: bool = False,
        return_mask_logits: bool = False,
    ) -> list[dict]:
        """Per-frame mask, box and score of the referred object in each video of the batch.

        The referred object is the query with the highest frame-averaged score (the paper's rule). Its stride-4 mask
        logits are cropped to the unpadded area (`resized_sizes`, the model-input size of each video; without it no
        padding is assumed), interpolated bilinearly straight to the original frame size (`target_sizes`, `(h, w)` per
        video) and thresholded after a sigmoid, exactly the original's Ref-YouTube-VOS rule for unpadded clips (with
        `mask_interpolation="probabilities"`, the sigmoid comes before the interpolation).

        Returns one dict of torch tensors per video: `masks` `[T, H0, W0]` bool, `boxes` `[T, 4]` absolute (x0, y0,
        x1, y1) on the original frames, `scores` `[T]`, `query_index` `[]` and `query_scores` `[Q]` (frame-averaged
        score of every query);
        with `return_all_queries`, also `all_masks` `[Q, T, H0, W0]` and `all_boxes` `[Q, T, 4]`. With
        `return_mask_logits`, `mask_logits` `[T, h, w]` (the selected query's unpadded stride-4 logits) replaces
        `masks`, which `mask_probabilities(mask_logits, H0, W0) > threshold` gives frame by frame (for long videos).
        """
        check_threshold(threshold)
        logits, pred_boxes, pred_masks = _prediction_tensors(outputs)
        selected = getattr(outputs, "selected_query_indices", None)
        # A model run with `output_all_queries=False` returns the masks of the selected query alone.
        selected_masks_only = selected is not None
        if selected_masks_only and return_all_queries:
            raise ValueError("return_all_queries needs the masks of all queries (a model run with output_all_queries=True).")
        if selected is None:
            selected = select_referred_query(logits)
        batch_size = logits.shape[0]
        target_sizes = torch.as_tensor(target_sizes).view(-1, 2).tolist()
        if len(target_sizes) != batch_size:
            raise ValueError(f"Got {len(target_sizes)} target sizes for {batch_size} videos.")
        if resized_sizes is not None:
            resized_sizes = torch.as_tensor(resized_sizes).view(-1, 2).tolist()
            if len(resized_sizes) != batch_size:
                raise ValueError(f"Got {len(resized_sizes)} resized sizes for {batch_size} videos.")
        results = []
        for index in range(batch_size):
            probabilities = logits[index].sigmoid()  # [T, Q, K]
            query_scores = probabilities.mean(0).max(-1).values  # what `select_referred_query` ranks
            best = int(selected[index])
            grid_height, grid_width = pred_masks.shape[-2:]
            if resized_sizes is not None:
                height, width = resized_sizes[index]
                grid_height, grid_width = min(grid_height, -(-height // 4)), min(grid_width, -(-width // 4))
            target_height, target_width = target_sizes[index]
            queries = range(pred_masks.shape[2]) if return_all_queries else [best]
            query_masks = {
                query: pred_masks[index, :, 0 if selected_masks_only else query, :grid_height, :grid_width]
                for query in queries
            }
            boxes = [self._boxes_to_frame(pred_boxes[index, :, query], target_height, target_width) for query in queries]
            result = {
                "boxes": boxes[queries.index(best)],
                "scores": probabilities[:, best].max(-1).values,
                "query_index": torch.tensor(best),
                "query_scores": query_scores,
            }
            if return_mask_logits:
                result["mask_logits"] = query_masks[best]
            if return_all_queries or not return_mask_logits:
                masks = [
                    self.mask_probabilities(query_masks[query], target_height, target_width) > threshold
                    for query in queries
                ]
                result["masks"] = masks[queries.index(best)]
            if return_all_queries:
                result["all_masks"] = torch.stack(masks)
                result["all_boxes"] = torch.stack(boxes)
            results.append(result)
        return results

    def mask_probabilities(self, mask_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Mask logits `[T, h, w]` of the unpadded stride-4 grid -> probabilities `[T, height, width]` (bilinear, as
        `mask_interpolation` says)."""
        values = mask_logits[:, None].float()
        if self.mask_interpolation == "probabilities":
            values = values.sigmoid()
        resized = F.interpolate(values, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return resized if self.mask_interpolation == "probabilities" else resized.sigmoid()

    @staticmethod
    def _boxes_to_frame(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        center_x, center_y, box_width, box_height = boxes.float().unbind(-1)
        corners = [center_x - 0.5 * box_width, center_y - 0.5 * box_height, center_x + 0.5 * box_width, center_y + 0.5 * box_height]
        return torch.stack(corners, -1) * torch.tensor([width, height, width, height], device=boxes.device)

    def post_process_referring_image_segmentation(self, outputs, target_sizes, resized_sizes=None, threshold=0.5):
        """[`post_process_referring_video_segmentation`] for single images (T = 1): `masks` `[H0, W0]`, `boxes` `[4]`,
        `scores` `[]`."""
        num_frames = _prediction_tensors(outputs)[0].shape[1]
        if num_frames != 1:
            raise ValueError(f"Image post-processing needs single-frame outputs, got {num_frames} frames.")
        results = self.post_process_referring_video_segmentation(outputs, target_sizes, resized_sizes, threshold)
        return [
            {**result, "masks": result["masks"][0], "boxes": result["boxes"][0], "scores": result["scores"][0]}
            for result in results
        ]


class ReferFormerProcessor(ProcessorMixin):
    r"""
    Video processor + RoBERTa tokenizer of ReferFormer.

    `processor(videos=..., text=...)`: `videos` is one video or a list of videos (`referformer.video_io.is_one_video`:
    a list of frames or image paths is one video, a list of video files, folders, arrays or lists of frames is several)
    and `text` one sentence or a list of sentences, **applied to every video**: B videos and S sentences give B * S
    batch entries, video-major (entry `b * S + s` is video `b` with sentence `s`; one video is processed once and its
    tensors repeated as a view). Post-processing returns one result per entry, in that order. Sentences are lower-cased
    with collapsed white space as the original does, and truncated (with a warning) to the tokenizer's
    `model_max_length`. Post-processing returns torch tensors, as transformers' processors do (the pipeline returns
    numpy arrays and Python values).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer import ReferFormerProcessor
    >>> processor = ReferFormerProcessor.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> videos = [np.zeros((2, 192, 288, 3), np.uint8), np.zeros((2, 96, 120, 3), np.uint8)]  # 2 videos of 2 frames
    >>> inputs = processor(videos=videos, text=["The  Yellow square", "the red circle"])  # 2 x 2 entries
    >>> inputs["pixel_values"].shape, inputs["resized_sizes"].tolist()  # video-major; resized to the model's size
    (torch.Size([4, 2, 3, 96, 144]), [[96, 144], [96, 144], [96, 120], [96, 120]])
    >>> processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)  # cleaned sentences
    ['the yellow square', 'the red circle', 'the yellow square', 'the red circle']

    ```
    """

    def __init__(self, video_processor, tokenizer):
        super().__init__(video_processor, tokenizer)

    def __call__(self, videos=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """Video kwargs go to the video processor, tokenizer kwargs (`padding`, `max_length`, `truncation`, ...) to
        the tokenizer; a misspelt keyword is refused, naming the closest accepted one."""
        video_options = self.video_processor.valid_kwargs.__annotations__
        accepted = ["videos", "text", "return_tensors", *TextKwargs.__annotations__, *video_options]
        check_keywords(f"{type(self).__name__}()", kwargs, accepted)
        text_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in TextKwargs.__annotations__}
        if videos is None or text is None:
            raise ValueError("ReferFormerProcessor needs both videos and text (the referring expressions).")
        sentences = sentence_list(text)
        videos = split_videos(videos)
        inputs = self.video_processor(videos, return_tensors="pt", **kwargs)
        # Every video with every sentence, video-major: [B, ...] -> [B * S, ...] (a view for one video).
        inputs = {
            key: value[:, None].expand(value.shape[0], len(sentences), *value.shape[1:]).flatten(0, 1)
            for key, value in inputs.items()
        }
        inputs.update(self.tokenize(sentences * len(videos), **text_kwargs))
        return BatchFeature(data=inputs, tensor_type=return_tensors)

    def tokenize(self, text, **text_kwargs) -> BatchFeature:
        """The tokens (`input_ids`, `attention_mask` `[N, L]`) of one referring expression or a list of them, as the
        original cleans them (lower-cased, white space collapsed): padded to the longest sentence and truncated (with
        a warning) to `max_length`, by default the tokenizer's `model_max_length`, which `max_length` may not exceed
        (the text encoder has no positions beyond it). An inference session tokenizes its sentences once with it."""
        sentences = [" ".join(sentence.lower().split()) for sentence in sentence_list(text)]
        limit = self.tokenizer.model_max_length if self.tokenizer.model_max_length < VERY_LARGE_INTEGER else None
        max_length = text_kwargs.pop("max_length", None) or limit
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the text encoder's limit of {limit} tokens.")
        options = {"padding": "longest", **text_kwargs, "return_tensors": "pt"}
        if max_length is None:
            return self.tokenizer(sentences, **options)
        options = {"truncation": True, **options}
        lengths = [len(ids) for ids in self.tokenizer(sentences)["input_ids"]]
        if max(lengths) > max_length and options["truncation"]:
            logger.warning(
                f"A referring expression has {max(lengths)} tokens, more than max_length={max_length}; it is truncated."
            )
        return self.tokenizer(sentences, max_length=max_length, **options)

    def post_process_referring_video_segmentation(
        self, outputs, target_sizes, resized_sizes=None, threshold=0.5, return_all_queries=False, return_mask_logits=False
    ):
        """See [`ReferFormerVideoProcessor.post_process_referring_video_segmentation`]."""
        return self.video_processor.post_process_referring_video_segmentation(
            outputs, target_sizes, resized_sizes, threshold, return_all_queries, return_mask_logits
        )

    def post_process_referring_image_segmentation(self, outputs, target_sizes, resized_sizes=None, threshold=0.5):
        """See [`ReferFormerVideoProcessor.post_process_referring_image_segmentation`]."""
        return self.video_processor.post_process_referring_image_segmentation(outputs, target_sizes, resized_sizes, threshold)


__all__ = [
    "ReferFormerProcessor",
    "ReferFormerVideoProcessor",
    "check_keywords",
    "check_threshold",
    "get_resize_output_size",
    "normalize_frames",
    "sentence_list",
]
