"""The library inference API (`referformer.inference`): the same masks as the model + processor + post-processing
path, whole-video and windowed query selection, frames streamed, outputs written frame by frame."""

import json
import re
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FP32_ROUNDING, assert_masks_equal_up_to_rounding, moving_square_clip, tiny_segmenter
from referformer.inference import PREPROCESS_CHUNK, ReferringVideoSegmenter, write_predictions
from referformer.video_io import iter_video_frames


SENTENCES = ["the bright square", "the dark background"]


clip = moving_square_clip


@pytest.fixture(scope="module")
def segmenter():
    return tiny_segmenter()


@torch.no_grad()
def direct(segmenter, frames, sentences):
    """Today's path: the processor on all frames, one forward, post-processing."""
    inputs = segmenter.processor(videos=list(frames), text=sentences)
    outputs = segmenter.model(**inputs)
    return segmenter.processor.post_process_referring_video_segmentation(
        outputs, inputs["original_sizes"], inputs["resized_sizes"]
    )


def test_whole_video_equals_the_model_processor_path(segmenter):
    frames = clip(2 * PREPROCESS_CHUNK + 3)  # several preprocessing chunks
    results = segmenter(frames, SENTENCES)
    expected = direct(segmenter, frames, SENTENCES)
    assert [result.sentence for result in results] == SENTENCES
    for result, reference in zip(results, expected):
        assert result.query_indices == [reference["query_index"]] and result.window_starts == [0]
        assert result.frame_indices == list(range(len(frames))) and result.original_size == (48, 72)
        # One visual pass for both sentences and the selected query's mask head alone: equal up to fp32 rounding.
        assert_masks_equal_up_to_rounding(torch.from_numpy(result.masks), reference["masks"], torch.from_numpy(result.probabilities()))
        np.testing.assert_allclose(result.boxes, reference["boxes"].numpy(), **FP32_ROUNDING)
        np.testing.assert_allclose(result.scores, reference["scores"].numpy(), **FP32_ROUNDING)
        assert result.masks.any() and not result.masks.all()
    assert not np.array_equal(results[0].scores, results[1].scores)  # each sentence conditions its own pass


def test_one_forward_pass_per_video_serves_every_sentence(segmenter):
    frames = clip(5)
    backbone_frames = []
    hook = segmenter.model.model.backbone.register_forward_hook(
        lambda module, args, output: backbone_frames.append(args[0].shape[0])
    )
    try:
        results = segmenter(frames, SENTENCES + ["a third sentence"])
    finally:
        hook.remove()
    assert backbone_frames == [5]  # one backbone pass over the 5 frames, not one per sentence
    assert len({tuple(result.scores.round(4)) for result in results}) == 3


def test_whole_video_selects_one_query_per_sentence_over_120_frames_in_chunks(segmenter):
    frames = clip(120)
    segmenter.model.config.frame_chunk_size = 8
    try:
        chunked = segmenter(frames, SENTENCES)
    finally:
        segmenter.model.config.frame_chunk_size = None
    whole = segmenter(frames, SENTENCES)
    for result, reference in zip(chunked, whole):
        assert len(result.query_indices) == 1 and result.window_starts == [0] and result.num_frames == 120
        assert result.query_indices == reference.query_indices
        np.testing.assert_allclose(result.scores, reference.scores, **FP32_ROUNDING)
        torch.testing.assert_close(result.mask_logits, reference.mask_logits, **FP32_ROUNDING)


def test_windows_are_independent_passes_and_sampling_keeps_frame_indices(segmenter, tmp_path):
    frames = clip(14)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"frame{index}.png")
    results = segmenter(tmp_path, SENTENCES, window=3, frame_stride=2, max_frames=6)
    kept = frames[0:12:2]
    for window, start in enumerate((0, 3)):
        expected = direct(segmenter, kept[start : start + 3], SENTENCES)
        for result, reference in zip(results, expected):
            assert result.query_indices[window] == reference["query_index"]
            assert_masks_equal_up_to_rounding(
                torch.from_numpy(result.masks[start : start + 3]),
                reference["masks"],
                torch.from_numpy(result.probabilities(start, start + 3)),
            )
            np.testing.assert_allclose(result.scores[start : start + 3], reference["scores"].numpy(), **FP32_ROUNDING)
    assert results[0].frame_indices == [0, 2, 4, 6, 8, 10] and results[0].window_starts == [0, 3]
    probabilities = results[0].probabilities()
    assert probabilities.dtype == np.float32 and np.array_equal(probabilities > 0.5, results[0].masks)


class CountedFrames:
    """A video as a sequence of frames made on access; counts how many of the frames made are still alive."""

    def __init__(self, frames):
        self.frames, self.alive, self.most_alive = frames, [], 0

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        frame = self.frames[index].copy()
        self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(frame)]
        self.most_alive = max(self.most_alive, len(self.alive))
        return frame


def test_frames_are_streamed_and_outputs_written_frame_by_frame(segmenter, tmp_path):
    frames = clip(3 * PREPROCESS_CHUNK)
    video = CountedFrames(frames)
    results = segmenter(video, SENTENCES)
    assert video.most_alive <= PREPROCESS_CHUNK + 1  # never the whole video at once
    video = CountedFrames(frames)
    names = [f"{index:05d}" for index in range(len(frames))]
    write_predictions(tmp_path / "clip", iter_video_frames(video), results, names, overlay_format="mp4", fps=5)
    assert video.most_alive <= 2
    predictions = json.loads((tmp_path / "clip" / "predictions.json").read_text())
    assert [expression["text"] for expression in predictions["expressions"]] == SENTENCES
    for exp_id, result in enumerate(results):
        written = np.stack([np.asarray(Image.open(tmp_path / "clip" / str(exp_id) / f"{name}.png")) for name in names])
        np.testing.assert_array_equal(written == 1, result.masks)
        assert predictions["expressions"][exp_id]["window_query_indices"] == result.query_indices
        assert (tmp_path / "clip" / f"overlay_{exp_id}.mp4").stat().st_size > 0


def test_bad_inputs_fail_before_anything_is_written(segmenter, tmp_path):
    frames = list(clip(PREPROCESS_CHUNK + 2))
    frames[PREPROCESS_CHUNK] = np.zeros((50, 72, 3), dtype=np.uint8)  # the first frame of the second chunk
    with pytest.raises(ValueError, match="must all have one size"):
        segmenter(frames, SENTENCES)
    with pytest.raises(ValueError, match="window must be at least 1"):
        segmenter(frames[:2], SENTENCES, window=0)
    with pytest.raises(ValueError, match="no frames"):
        segmenter(np.zeros((0, 48, 72, 3), dtype=np.uint8), SENTENCES)
    with pytest.raises(ValueError, match="non-empty list of sentences"):
        segmenter(frames[:2], [])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got -1"):
        segmenter(frames[:2], SENTENCES, threshold=-1)
    with pytest.raises(ValueError, match="frame_stride must be a positive integer, got 2.5"):
        segmenter(frames[:2], SENTENCES, frame_stride=2.5)
    results = segmenter(frames[:3], SENTENCES)
    with pytest.raises(ValueError, match="Got 2 frames for 3"):
        write_predictions(tmp_path / "clip", iter_video_frames(frames[:2]), results, ["a", "b", "c"])
    assert not (tmp_path / "clip").exists() or not any((tmp_path / "clip").iterdir())


def test_one_vocabulary_video_and_text_and_misspelt_keywords_named(segmenter):
    """The segmenter takes exactly one `video` and `text` (one sentence or a list), as the processor and the pipeline
    name them; `score` is the mean of the per-frame scores; a misspelt keyword is named."""
    frames = clip(4)
    results = segmenter(video=frames, text=SENTENCES)
    for result, positional in zip(results, segmenter(frames, SENTENCES)):  # the same computation: equal exactly
        np.testing.assert_array_equal(result.masks, positional.masks)
        np.testing.assert_array_equal(result.scores, positional.scores)
        # A float32 mean of T values in [0, 1]: within T float32 ulps (2^-24 each) of the float64 mean.
        assert result.score == pytest.approx(np.mean(result.scores, dtype=np.float64), abs=len(frames) * 2**-24)
    single = segmenter(frames, text=SENTENCES[0])
    assert [result.sentence for result in single] == SENTENCES[:1]
    session = segmenter.init_video_session(video=frames, text=SENTENCES)
    assert session.sentences == SENTENCES
    with pytest.raises(TypeError, match="unexpected keyword argument 'sentences'"):
        segmenter(frames, sentences=SENTENCES)
    message = "ReferringVideoSegmenter.stream() got an unexpected keyword argument 'windw' (did you mean 'window'?)."
    with pytest.raises(TypeError, match=re.escape(message)):
        segmenter.stream(frames, SENTENCES, windw=3)
    with pytest.raises(ValueError, match=re.escape("Expected one video, got a list of 2 videos")):
        segmenter([frames, frames], SENTENCES)


def test_half_precision_runs_under_autocast(segmenter):
    bf16 = ReferringVideoSegmenter(segmenter.model, segmenter.processor, dtype="bf16")
    results = bf16(clip(4), SENTENCES[:1])
    reference = segmenter(clip(4), SENTENCES[:1])
    assert results[0].scores.dtype == np.float32 and results[0].mask_logits.dtype == torch.float32
    assert np.abs(results[0].scores - reference[0].scores).max() < 0.05
    with pytest.raises(ValueError, match="Unknown dtype"):
        ReferringVideoSegmenter(segmenter.model, segmenter.processor, dtype="int4")
