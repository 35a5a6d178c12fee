"""The `transformers` pipeline of the task "referring-video-object-segmentation".

    import referformer  # registers the task
    from transformers import pipeline

    segmenter = pipeline("referring-video-object-segmentation", model="path/to/model", device="cpu")
    segmenter("dog.mp4", text="a brown dog")                       # one dict
    segmenter("dog.mp4", text=["a brown dog", "the ball"])         # one dict per sentence
    segmenter(["a.mp4", "b.mp4"], text="a dog", batch_size=2)      # one dict per video

A model folder written by `save_pretrained` (the segmentation model's or the pipeline's) carries this code, named in
config.json's `custom_pipelines`, so that `pipeline(model=folder, trust_remote_code=True)` infers the task and runs
where the package is not installed. With the package imported, name the task: its registered pipeline then serves it
and the folder's copy is not run.
"""

import os
from collections.abc import Iterator

import torch
from transformers import Pipeline
from transformers.dynamic_module_utils import custom_object_save

from .data_transforms import collate_clips
from .inference import prepare_inputs, segmentation_from_output
from .modeling_referformer import ReferFormerSegmentationOutput
from .processing_referformer import _as_list_of_videos, _is_single_video, check_threshold, sentence_list
from .video_io import iter_video_frames


TASK = "referring-video-object-segmentation"


class ReferringVideoObjectSegmentationPipeline(Pipeline):
    """Segments the object a sentence refers to in every kept frame of a video, selecting one query over the whole
    video (ReferFormer's Ref-YouTube-VOS protocol; `referformer.inference.ReferringVideoSegmenter` also offers the
    windowed Ref-DAVIS17 protocol).

    Inputs: a video (file, folder of frames, list of frames, 4-D array or a generator of frames) or a list of videos,
    and `text`: one sentence, or a list of sentences (for one video: one result per sentence; for a list of videos:
    one sentence each). Options: `frame_stride`, `max_frames` (frame sampling) and `threshold` (mask probability).

    Each result is a dict: `sentence`, `masks` `[T, H, W]` bool at the original frame size, `boxes` `[T, 4]`
    absolute (x0, y0, x1, y1), `scores` `[T]`, `query_index` and `frame_indices` (the kept frames' indices in the
    video). With `batch_size > 1`, the videos of a batch must have the same number of kept frames (frames of different
    sizes are padded, as the processor pads a batch). An online (OnlineRefer) model decodes each video frame by frame
    from its track (its `query_index` is then 0, the track's single query).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, frame_stride=None, max_frames=None, threshold=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unknown arguments of the {TASK} pipeline: {', '.join(sorted(kwargs))}.")
        preprocess = {key: value for key, value in (("frame_stride", frame_stride), ("max_frames", max_frames)) if value is not None}
        postprocess = {}
        if threshold is not None:
            check_threshold(threshold)
            postprocess["threshold"] = threshold
        return preprocess, {}, postprocess

    def __call__(self, videos, text=None, **kwargs):
        """Segments `text` in `videos` (see the class docstring)."""
        if text is None:
            raise ValueError(f"The {TASK} pipeline needs `text`: the sentence(s) naming the object to segment.")
        sentences = sentence_list(text)
        if not _is_single_video(videos):
            videos = _as_list_of_videos(videos)  # refuses an empty list
            sentences = sentences * len(videos) if isinstance(text, str) else sentences
            if len(sentences) != len(videos):
                raise ValueError(f"Got {len(videos)} videos and {len(sentences)} sentences: give one sentence per video.")
            return super().__call__([{"video": video, "text": sentence} for video, sentence in zip(videos, sentences)], **kwargs)
        if isinstance(videos, Iterator) and len(sentences) > 1:  # a generator is read once, for every sentence
            videos = [frame for _, frame in iter_video_frames(videos)]
        results = super().__call__([{"video": videos, "text": sentence} for sentence in sentences], **kwargs)
        return results[0] if isinstance(text, str) else results

    def preprocess(self, item, frame_stride=1, max_frames=None):
        frames = iter_video_frames(item["video"], frame_stride, max_frames)
        inputs, frame_indices = prepare_inputs(self.processor, frames, [item["text"]])
        inputs["frame_indices"] = torch.tensor([frame_indices])
        # Under a non-tensor key, the pipeline's batching hands the items to `_forward` as a list, which batches them.
        return {"video_inputs": inputs, "sentence": item["text"]}

    def _forward(self, batch):
        items = batch["video_inputs"] if isinstance(batch["video_inputs"], list) else [batch["video_inputs"]]
        sentences = batch["sentence"] if isinstance(batch["sentence"], list) else [batch["sentence"]]
        inputs = self._collate(items)
        model_inputs = {key: inputs[key] for key in ("pixel_values", "pixel_mask", "input_ids", "attention_mask")}
        outputs = self._online_forward(model_inputs) if self.model.config.online else self.model(**model_inputs)
        return {
            "logits": outputs.logits.float(),
            "pred_boxes": outputs.pred_boxes.float(),
            "pred_masks": outputs.pred_masks.float(),
            "original_sizes": inputs["original_sizes"],
            "resized_sizes": inputs["resized_sizes"],
            "frame_indices": inputs["frame_indices"],
            "sentence": sentences,
        }

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

    def _collate(self, items: list[dict]) -> dict:
        """One batch of videos with the same number of kept frames, padded by [`collate_clips`] as the processor pads
        a batch: frames zero-padded to the largest size (with their pixel masks), sentences to the longest."""
        num_frames = {item["pixel_values"].shape[1] for item in items}
        if len(num_frames) > 1:
            raise ValueError(
                f"The videos of a batch must have the same number of kept frames, got {sorted(num_frames)}; use "
                "batch_size=1 or max_frames."
            )
        samples = [  # each video unpadded (its resized size), padded again together by the training collator
            {
                "pixel_values": item["pixel_values"][0, :, :, :height, :width],
                "input_ids": item["input_ids"][0],
                "attention_mask": item["attention_mask"][0],
            }
            for item in items
            for height, width in [item["resized_sizes"][0].tolist()]
        ]
        batch = collate_clips(
            samples,
            pad_to_multiple_of=self.processor.video_processor.size_divisor,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        for key in ("resized_sizes", "original_sizes", "frame_indices"):
            batch[key] = torch.cat([item[key] for item in items])
        return {key: value.to(self.device) for key, value in batch.items()}

    def postprocess(self, outputs, threshold=0.5):
        outputs = {key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in outputs.items()}
        sentence = outputs["sentence"] if isinstance(outputs["sentence"], str) else outputs["sentence"][0]
        result = self.processor.post_process_referring_video_segmentation(
            _Outputs(outputs), outputs["original_sizes"], outputs["resized_sizes"], threshold, return_mask_logits=True
        )[0]
        segmentation = segmentation_from_output(
            result,
            sentence,
            outputs["frame_indices"][0].tolist(),
            outputs["original_sizes"][0].tolist(),
            threshold,
            self.processor.video_processor,
        )
        return {
            "sentence": segmentation.sentence,
            "masks": segmentation.masks,
            "boxes": segmentation.boxes,
            "scores": segmentation.scores,
            "query_index": segmentation.query_indices[0],
            "frame_indices": segmentation.frame_indices,
        }

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


class _Outputs:
    """The model outputs as post-processing reads them (attributes)."""

    def __init__(self, outputs: dict):
        self.logits, self.pred_boxes, self.pred_masks = outputs["logits"], outputs["pred_boxes"], outputs["pred_masks"]
