"""The `transformers` pipeline of the task "referring-video-object-segmentation".

    import referformer  # registers the task
    from transformers import pipeline

    segment = pipeline("referring-video-object-segmentation", model="path/to/model", device="cpu")
    segment("dog.mp4", text="a brown dog")                     # [{"label", "score", "masks", "scores", "boxes", ...}]
    segment("dog.mp4", text=["a brown dog", "the ball"])       # one dict per sentence
    segment(["a.mp4", "b.mp4"], text="a dog", batch_size=2)    # one list per video
    segment([{"video": "a.mp4", "text": "a dog"}, {"video": "b.mp4", "text": ["a cat", "the ball"]}])
    for frame_results in segment(camera_frames(), text="a dog"):   # a generator of frames: one list per frame
        frame_results[0]["mask"], frame_results[0]["box"]

A model folder written by `save_pretrained` (the segmentation model's or the pipeline's) carries this code, named in
config.json's `custom_pipelines`, so that `pipeline(model=folder, trust_remote_code=True)` infers the task and runs
where the package is not installed. With the package imported, name the task: its registered pipeline then serves it
and the folder's copy is not run.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.dynamic_module_utils import custom_object_save

from .data_transforms import collate_clips
from .inference import ReferringVideoSegmenter, VideoSegmentation, prepare_inputs, segmentation_from_output
from .inference_session import FrameSegmentation
from .modeling_referformer import ReferFormerSegmentationOutput
from .processing_referformer import check_keywords, check_threshold, sentence_list
from .quantization import is_int8_dtype, quantize_int8
from .video_io import is_one_video, iter_video_frames, split_videos


TASK = "referring-video-object-segmentation"
STREAM_OPTIONS = ("window", "overlap")  # options of a streamed call (a generator of frames) only
# Every keyword a call takes besides `videos` and `text`, for the error that names a misspelt one.
CALL_KEYWORDS = ("inputs", "frame_stride", "max_frames", "threshold", *STREAM_OPTIONS, "batch_size", "num_workers")
INPUT_KEYS = ("video", "text")  # the keys of a dict input
MODEL_INPUTS = ("pixel_values", "pixel_mask", "input_ids", "attention_mask")


@dataclass
class VideoRequest:
    """One video to segment and its sentences."""

    video: Any
    sentences: list[str]


@dataclass
class VideoInputs:
    """One preprocessed video: its sentences, the model inputs of [`prepare_inputs`] (`pixel_values` `[1, T, 3, h, w]`,
    `input_ids` `[S, L]`, ...) and the indices of its kept frames."""

    sentences: list[str]
    inputs: dict[str, torch.Tensor]
    frame_indices: list[int]


@dataclass
class VideoOutputs:
    """The model outputs of one video on the CPU in float32, one row per sentence, and what post-processing needs."""

    sentences: list[str]
    outputs: ReferFormerSegmentationOutput
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    frame_indices: list[int]


class ReferringVideoObjectSegmentationPipeline(Pipeline):
    """Segments the object each sentence refers to in every kept frame of a video, selecting one query over the whole
    video (ReferFormer's Ref-YouTube-VOS protocol; `referformer.inference.ReferringVideoSegmenter` also offers the
    windowed Ref-DAVIS17 protocol).

    **Inputs.** `videos` (positionally, as `videos=` or as `inputs=`, the keyword of every transformers pipeline) and
    `text`, one sentence or a list of sentences applied to every video (the processor's rule). `videos` is:

    * one video: a video file, a frame folder, an image (PIL image or image file path: a one-frame video, "image
      mode"), a list of frames (PIL images, arrays `[H, W, C]` or image file paths: all of them frames of ONE video) or
      a 4-D array `[T, H, W, C]`;
    * several videos: a list of videos (video files, frame folders, 4-D arrays, lists of frames); a list mixing frames
      and videos is refused (`referformer.video_io.is_one_video` is the rule);
    * `{"video": ..., "text": ...}`, one video with its own sentence(s), or a list of such dicts (several videos;
      `text=` is then not given);
    * a generator (any iterator) of frames: one video, **streamed** (see below).

    **Outputs** (numpy arrays and Python values; the processor's post-processing returns torch tensors). One video
    gives a list with one dict per sentence, several videos a list of such lists. Each dict: `label` (the sentence),
    `score` (float: the video-level score of the selected object, the mean of its per-frame scores), `query_index`
    (the selected query), `frame_indices` (the kept frames' indices in the video) and per kept frame `masks` `[T, H, W]`
    bool at the original frame size, `scores` (T floats) and `boxes` (T dicts `{"xmin", "ymin", "xmax", "ymax"}`, int
    pixels, as zero-shot-object-detection gives them).

    **Streaming.** A generator of frames returns an iterator that yields, per kept frame as soon as it is final, a list
    with one dict per sentence: `label`, `frame_index`, `score` (float, that frame's), `query_index`, `mask` `[H, W]`
    bool and `box` (a dict as above). Frames are segmented by `ReferringVideoSegmenter.stream`: windows of `window`
    frames (36) sharing `overlap` (8), the referred object kept across windows; a video of at most `window` frames is
    one window, the whole-video protocol.

    Options: `frame_stride`, `max_frames` (frame sampling), `threshold` (mask probability), `window` and `overlap`
    (streaming only). With `batch_size > 1`, the videos of a batch must have the same number of kept frames (frames of
    different sizes are padded, as the processor pads a batch). An online (OnlineRefer) model decodes each video frame
    by frame from its track (its `query_index` is then 0, the track's single query). A misspelt keyword is refused,
    naming the closest accepted one.

    **Precision.** `pipeline(..., dtype=torch.bfloat16)` loads the weights in bf16, as for every transformers model;
    `dtype="int8"` (CPU) quantizes the per-pixel `Linear` layers to dynamic int8 (a given model too, in place:
    `referformer.quantization.quantize_int8`).

    Example:

    ```python
    >>> import numpy as np
    >>> import referformer  # registers the task
    >>> from transformers import pipeline
    >>> segment = pipeline("referring-video-object-segmentation", model="checkpoints/referformer-tiny-shapes")
    >>> video = np.full((3, 96, 144, 3), 128, np.uint8)  # 3 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50], video[:, 40:70, 90:120] = (240, 210, 20), (220, 30, 30)  # yellow left, red right
    >>> yellow, red = segment(video, text=["the yellow square", "the red square"])  # one dict per sentence
    >>> yellow["label"], yellow["query_index"], yellow["frame_indices"], yellow["masks"].shape, len(yellow["boxes"])
    ('the yellow square', 0, [0, 1, 2], (3, 96, 144), 3)
    >>> for result in (yellow, red):  # is more than half of the yellow / the red square in the sentence's masks?
    ...     print(result["masks"][:, 30:60, 20:50].mean() > 0.5, result["masks"][:, 40:70, 90:120].mean() > 0.5)
    True False
    False True

    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        if is_int8_dtype(dtype):  # the factory loads a folder in int8 already; a given model is quantized here
            quantize_int8(self.model)

    def _sanitize_parameters(self, frame_stride=None, max_frames=None, threshold=None, **kwargs):
        check_keywords(f"{type(self).__name__}()", kwargs, ("frame_stride", "max_frames", "threshold"))
        preprocess = {key: value for key, value in (("frame_stride", frame_stride), ("max_frames", max_frames)) if value is not None}
        postprocess = {}
        if threshold is not None:
            check_threshold(threshold)
            postprocess["threshold"] = threshold
        return preprocess, {}, postprocess

    def __call__(self, videos=None, text=None, **kwargs):
        """Segments `text` in `videos` (see the class docstring)."""
        check_keywords(f"{type(self).__name__}.__call__()", kwargs, ("videos", "text", *CALL_KEYWORDS))
        if "inputs" in kwargs:
            if videos is not None:
                raise TypeError("Give the videos once: positionally, as videos= or as inputs=.")
            videos = kwargs.pop("inputs")
        if videos is None:
            raise ValueError(
                f"The {TASK} pipeline needs videos: a video, a list of videos or {{'video': ..., 'text': ...}} dicts."
            )
        if isinstance(videos, Iterator):
            return self._stream(videos, text, **kwargs)
        streamed_only = [option for option in STREAM_OPTIONS if option in kwargs]
        if streamed_only:
            raise ValueError(
                f"{' and '.join(streamed_only)} apply to a streamed video only (a generator of frames); a whole "
                "video has one query (referformer.inference.ReferringVideoSegmenter offers windows)."
            )
        requests, one_video = self._requests(videos, text)
        results = super().__call__(requests, **kwargs)
        return results[0] if one_video else results

    def _requests(self, videos, text) -> tuple[list[VideoRequest], bool]:
        """The videos of a call, each with its sentences, and whether the call named one video (one list of results)
        rather than several (a list of lists)."""
        if isinstance(videos, dict):
            return [self._dict_request(videos, text)], True
        if isinstance(videos, (list, tuple)) and any(isinstance(item, dict) for item in videos):
            if not all(isinstance(item, dict) for item in videos):
                raise ValueError("A list with a dict must hold only {'video': ..., 'text': ...} dicts (one per video).")
            return [self._dict_request(item, text) for item in videos], False
        if text is None:
            raise ValueError(f"The {TASK} pipeline needs `text`: the sentence(s) naming the object to segment.")
        sentences = sentence_list(text)
        return [VideoRequest(video, sentences) for video in split_videos(videos)], is_one_video(videos)

    @staticmethod
    def _dict_request(item: dict, text) -> VideoRequest:
        check_keywords("An input dict", item, INPUT_KEYS, kind="key")
        if text is not None:
            raise ValueError("Dict inputs carry their own text: give the sentences as each dict's 'text', not text=.")
        if set(item) != set(INPUT_KEYS):
            raise ValueError(f"An input dict needs the keys 'video' and 'text', got {sorted(item)}.")
        if not is_one_video(item["video"]):
            raise ValueError(f"The 'video' of an input dict is one video, got a list of {len(item['video'])} videos.")
        return VideoRequest(item["video"], sentence_list(item["text"]))

    def _stream(self, frames: Iterator, text, **kwargs) -> Iterator[list[dict]]:
        """The per-frame results of a generator of frames (see the class docstring), from the segmenter's streaming."""
        if text is None:
            raise ValueError(f"The {TASK} pipeline needs `text`: the sentence(s) naming the object to segment.")
        sentences = sentence_list(text)
        stream_options = {option: kwargs.pop(option) for option in STREAM_OPTIONS if option in kwargs}
        preprocess, _, postprocess = self._sanitize_parameters(**kwargs)  # refuses batch_size and num_workers
        options = {**self._preprocess_params, **preprocess, **self._postprocess_params, **postprocess, **stream_options}
        segmenter = ReferringVideoSegmenter(self.model, self.processor, device=self.device, dtype=self.dtype)
        return (frame_results(output, sentences) for output in segmenter.stream(frames, sentences, **options))

    def preprocess(self, request: VideoRequest, frame_stride=1, max_frames=None) -> dict:
        frames = iter_video_frames(request.video, frame_stride, max_frames)
        inputs, frame_indices = prepare_inputs(self.processor, frames, request.sentences)
        # Under a non-tensor value, the pipeline's batching (batch_size > 1) hands `_forward` a list of them.
        return {"video": VideoInputs(request.sentences, inputs, frame_indices)}

    def _forward(self, model_inputs: dict) -> dict:
        batched = isinstance(model_inputs["video"], list)
        videos = model_inputs["video"] if batched else [model_inputs["video"]]
        inputs = self._model_inputs(videos)
        if self.model.config.online:
            outputs = self._online_forward(inputs)
        else:
            outputs = self.model(**inputs, output_all_queries=False)
        results, start = [], 0
        for video in videos:
            rows = slice(start, start + len(video.sentences))
            start = rows.stop
            selected = outputs.selected_query_indices  # None for an online model's (one query) outputs
            video_outputs = ReferFormerSegmentationOutput(
                logits=outputs.logits[rows].float().cpu(),
                pred_boxes=outputs.pred_boxes[rows].float().cpu(),
                pred_masks=outputs.pred_masks[rows].float().cpu(),
                selected_query_indices=None if selected is None else selected[rows].cpu(),
            )
            results.append(
                VideoOutputs(
                    sentences=video.sentences,
                    outputs=video_outputs,
                    original_size=tuple(video.inputs["original_sizes"][0].tolist()),
                    resized_size=tuple(video.inputs["resized_sizes"][0].tolist()),
                    frame_indices=video.frame_indices,
                )
            )
        # The pipeline's batching splits a list back into one item per video for `postprocess`.
        return {"video": results if batched else results[0]}

    def _model_inputs(self, videos: list[VideoInputs]) -> dict[str, torch.Tensor]:
        """The model inputs of a batch of videos, one row per (video, sentence): one video as it is (its frames once
        for all its sentences), several padded by [`collate_clips`] as the processor pads a batch (frames zero-padded
        to the largest size, with their pixel masks; sentences to the longest). Several videos must have the same
        number of kept frames."""
        if len(videos) == 1:
            inputs = {key: videos[0].inputs[key] for key in MODEL_INPUTS}
        else:
            num_frames = {video.inputs["pixel_values"].shape[1] for video in videos}
            if len(num_frames) > 1:
                raise ValueError(
                    f"The videos of a batch must have the same number of kept frames, got {sorted(num_frames)}; use "
                    "batch_size=1 or max_frames."
                )
            samples = [  # each video unpadded (its resized size), padded again together by the training collator
                {
                    "pixel_values": video.inputs["pixel_values"][0, :, :, :height, :width],
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                }
                for video in videos
                for height, width in [video.inputs["resized_sizes"][0].tolist()]
                for input_ids, attention_mask in zip(video.inputs["input_ids"], video.inputs["attention_mask"])
            ]
            inputs = collate_clips(
                samples,
                pad_to_multiple_of=self.processor.video_processor.size_divisor,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return {key: value.to(self.device) for key, value in inputs.items()}

    def _online_forward(self, inputs: dict) -> ReferFormerSegmentationOutput:
        """An online (OnlineRefer) model's clips, decoded frame by frame from their tracks: per frame the referred
        query's logits, box and masks (`[B, T, 1, ...]`, one query, which post-processing then selects)."""
        track, frames = None, []
        for frame in range(inputs["pixel_values"].shape[1]):
            outputs = self.model(
                pixel_values=inputs["pixel_values"][:, frame : frame + 1],
                pixel_mask=inputs["pixel_mask"][:, frame : frame + 1],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                track=track,
                output_all_queries=False,
            )
            track = self.model.update_track(outputs, track)
            query = outputs.selected_query_indices.view(-1, 1, 1, 1)
            frames.append(
                (
                    outputs.logits.gather(2, query.expand(-1, 1, 1, outputs.logits.shape[-1])),
                    outputs.pred_boxes.gather(2, query.expand(-1, 1, 1, 4)),
                    outputs.pred_masks,
                )
            )
        logits, boxes, masks = (torch.cat(values, 1) for values in zip(*frames))
        return ReferFormerSegmentationOutput(logits=logits, pred_boxes=boxes, pred_masks=masks)

    def postprocess(self, model_outputs: dict, threshold=0.5) -> list[dict]:
        video: VideoOutputs = model_outputs["video"]
        count = len(video.sentences)
        results = self.processor.post_process_referring_video_segmentation(
            video.outputs, [video.original_size] * count, [video.resized_size] * count, threshold,
            return_mask_logits=True,
        )
        segmentations = (
            segmentation_from_output(
                result, sentence, video.frame_indices, video.original_size, threshold, self.processor.video_processor
            )
            for sentence, result in zip(video.sentences, results)
        )
        return [video_result(segmentation) for segmentation in segmentations]

    @classmethod
    def save_code(cls, save_directory, config) -> None:
        """Copies this pipeline's code (its module and the modules it imports) into `save_directory` and names it in
        `config.custom_pipelines` as `Pipeline.save_pretrained` does: the task it is registered for, with the task Auto
        class that loads its model. `pipeline(model=folder, trust_remote_code=True)` then infers the task and runs this
        code, also where the package is not installed. Called by the segmentation model's `save_pretrained`."""
        config.custom_pipelines = {
            task: {
                **info,
                "impl": f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}",
                "pt": tuple(model_class.__name__ for model_class in info["pt"]),
            }
            for task, info in cls._registered_impl.items()
        }
        os.makedirs(save_directory, exist_ok=True)
        custom_object_save(cls, save_directory)

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the model (with this pipeline's code, see `save_code`) and the processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


def box_dict(box: np.ndarray) -> dict[str, int]:
    """An absolute (x0, y0, x1, y1) box as zero-shot-object-detection gives boxes: `{"xmin", "ymin", "xmax", "ymax"}`,
    int pixels (truncated, as its `box.int()`)."""
    xmin, ymin, xmax, ymax = (int(value) for value in box)
    return {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}


def video_result(segmentation: VideoSegmentation) -> dict:
    """The pipeline's result of one sentence in a whole video (a [`~referformer.inference.VideoSegmentation`])."""
    return {
        "label": segmentation.sentence,
        "score": segmentation.score,
        "query_index": segmentation.query_indices[0],
        "frame_indices": segmentation.frame_indices,
        "masks": segmentation.masks,
        "scores": segmentation.scores.tolist(),
        "boxes": [box_dict(box) for box in segmentation.boxes],
    }


def frame_results(output: FrameSegmentation, sentences: list[str]) -> list[dict]:
    """The pipeline's streamed results of one frame: one dict per sentence."""
    return [
        {
            "label": sentence,
            "frame_index": output.frame_index,
            "score": float(output.scores[index]),
            "query_index": output.query_indices[index],
            "mask": output.masks[index],
            "box": box_dict(output.boxes[index]),
        }
        for index, sentence in enumerate(sentences)
    ]
