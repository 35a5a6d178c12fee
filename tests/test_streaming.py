"""Inference sessions and streaming (`referformer.inference_session`, `ReferringVideoSegmenter.stream`): one window
equals the whole-video protocol, a generator source is read lazily with bounded memory, windows keep the referred
object across query permutations, and a 1,000-frame stream stays bounded."""

import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import moving_square_clip, tiny_segmenter
from referformer import ReferFormerProcessor, ReferFormerVideoProcessor
from referformer.cli_presets import build_shapes_tokenizer
from referformer.inference import ReferringVideoSegmenter
from referformer.inference_session import WindowLink, select_linked_queries
from referformer.modeling_referformer import ReferFormerSegmentationOutput


SENTENCES = ["the bright square", "the dark background"]


clip = moving_square_clip


@pytest.fixture(scope="module")
def segmenter():
    return tiny_segmenter()


class TrackedFrame(np.ndarray):
    """A frame whose lifetime a `FrameCounter` follows (numpy arrays themselves cannot be weakly referenced)."""


class FrameCounter:
    """A generator of frames that counts the decoded frames alive at each frame it yields."""

    def __init__(self, frames):
        self.frames, self.alive, self.most_alive = frames, 0, 0

    def _released(self):
        self.alive -= 1

    def __iter__(self):
        for frame in self.frames:
            tracked = np.array(frame).view(TrackedFrame)
            self.alive += 1
            weakref.finalize(tracked, self._released)
            self.most_alive = max(self.most_alive, self.alive)
            yield tracked
            del tracked


def test_one_window_over_the_whole_clip_equals_the_whole_video_protocol(segmenter):
    frames = clip(11)
    whole = segmenter(frames, SENTENCES)
    streamed = list(segmenter.stream(iter(frames), SENTENCES, window=16, overlap=4))
    assert [output.frame_index for output in streamed] == list(range(11))
    for sentence, result in enumerate(whole):
        # The same forward pass and post-processing in one process: identical values.
        np.testing.assert_array_equal(np.stack([output.masks[sentence] for output in streamed]), result.masks)
        np.testing.assert_array_equal(np.stack([output.boxes[sentence] for output in streamed]), result.boxes)
        np.testing.assert_array_equal(np.stack([output.scores[sentence] for output in streamed]), result.scores)
        assert {output.query_indices[sentence] for output in streamed} == set(result.query_indices)


def test_windows_without_overlap_equal_the_windowed_protocol(segmenter):
    frames = clip(13)
    windowed = segmenter(frames, SENTENCES, window=5)
    streamed = list(segmenter.stream(iter(frames), SENTENCES, window=5, overlap=0))
    for sentence, result in enumerate(windowed):
        np.testing.assert_array_equal(np.stack([output.masks[sentence] for output in streamed]), result.masks)
        queries = [output.query_indices[sentence] for output in streamed]
        assert queries[::5] == result.query_indices


def test_a_generator_source_is_read_lazily_with_at_most_window_plus_overlap_frames_alive(segmenter):
    window, overlap = 6, 2
    source = FrameCounter(clip(40))
    outputs = segmenter.stream(iter(source), SENTENCES, window=window, overlap=overlap, keep_frames=True)
    first = next(outputs)
    # The first result comes after the first window: nothing beyond it has been decoded.
    assert first.frame_index == 0 and source.most_alive <= window
    indices = [first.frame_index] + [output.frame_index for output in outputs]
    assert indices == list(range(40))
    assert source.most_alive <= window + overlap
    assert first.frame is not None and first.frame.shape == (48, 72, 3)


def test_session_frames_added_by_hand_and_by_index(segmenter):
    frames = clip(9)
    session = segmenter.init_video_session(SENTENCES)
    for index, frame in enumerate(frames):
        session.add_frame(frame, frame_index=10 * index)
    with pytest.raises(ValueError, match="increasing index order"):
        session.add_frame(frames[0], frame_index=5)
    outputs = list(segmenter.propagate_in_video_iterator(session, window=4, overlap=1))
    assert [output.frame_index for output in outputs] == [10 * index for index in range(9)]
    assert outputs[0].masks.shape == (2, 48, 72) and outputs[0].boxes.shape == (2, 4) and outputs[0].scores.shape == (2,)
    with pytest.raises(ValueError, match="overlap must be in"):
        next(segmenter.stream(iter(frames), SENTENCES, window=4, overlap=4))


def test_linked_selection_prefers_the_query_that_agrees_on_the_shared_frames():
    # Window 2 of one sentence, 3 frames (2 shared), 3 queries: query 2 scores best, query 1 is the previous object.
    scores = torch.tensor([[[0.5, 0.55, 0.6]] * 3])
    previous = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    previous[..., 2:5, 2:5] = True
    mask_logits = torch.full((1, 3, 3, 8, 8), -5.0)
    mask_logits[:, :, 1, 2:5, 2:5] = 5.0  # query 1: the previous object
    mask_logits[:, :, 2, 5:8, 5:8] = 5.0  # query 2: another object
    link = WindowLink(query_indices=torch.tensor([0]), shared_masks=previous)
    assert select_linked_queries(scores, mask_logits, None, 0.5, 0.0).tolist() == [2]  # no link: the best score
    assert select_linked_queries(scores, mask_logits, link, 0.5, 0.0).tolist() == [1]
    assert select_linked_queries(scores, mask_logits, link, 0.0, 0.0).tolist() == [2]  # agreement weight 0


class PermutingModel(torch.nn.Module):
    """Per-window outputs built by hand: two objects (left and right squares of a 32x48 frame) whose queries swap
    between windows, the distractor scoring slightly higher after the swap."""

    config = SimpleNamespace(online=False)

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a device to read
        self.windows = 0

    def forward(self, pixel_values, input_ids, attention_mask, resized_sizes, output_all_queries, track):
        num_frames = pixel_values.shape[1]
        target, distractor = (0, 1) if self.windows == 0 else (1, 0)
        self.windows += 1
        logits = torch.full((1, num_frames, 2, 1), 0.0)
        logits[..., target, 0], logits[..., distractor, 0] = 0.4, 0.6 if self.windows > 1 else -1.0
        masks = torch.full((1, num_frames, 2, 8, 12), -8.0)
        masks[:, :, target, 2:6, 1:5] = 8.0  # the referred object, on the left
        masks[:, :, distractor, 2:6, 7:11] = 8.0
        boxes = torch.full((1, num_frames, 2, 4), 0.25)
        selected = logits.sigmoid().mean(1)[..., 0].argmax(-1)
        if not output_all_queries:
            masks = masks[:, :, selected]
        return ReferFormerSegmentationOutput(
            logits=logits, pred_boxes=boxes, pred_masks=masks, selected_query_indices=None if output_all_queries else selected
        )


def test_streaming_keeps_the_referred_object_when_queries_permute_between_windows():
    processor = ReferFormerProcessor(ReferFormerVideoProcessor(size={"shortest_edge": 32}), build_shapes_tokenizer())
    frames = np.zeros((10, 32, 48, 3), dtype=np.uint8)
    for weight, expected_side in ((0.5, "left"), (0.0, "right")):
        segmenter = ReferringVideoSegmenter(PermutingModel(), processor, device="cpu")
        outputs = list(segmenter.stream(iter(frames), ["the left square"], window=4, overlap=2, agreement_weight=weight))
        assert len(outputs) == 10
        sides = ["left" if output.masks[0][:, :24].sum() > output.masks[0][:, 24:].sum() else "right" for output in outputs]
        # Window 1 (frames 0-3) picks the left object by score; later windows keep it only through agreement.
        assert sides[:4] == ["left"] * 4
        assert sides[4:] == [expected_side] * 6


def test_a_thousand_frame_stream_keeps_memory_bounded(segmenter):
    window, overlap, num_frames = 8, 2, 1000
    base = clip(16, height=32, width=48)
    source = FrameCounter(base[index % 16] for index in range(num_frames))
    session = segmenter.init_video_session(SENTENCES[:1], iter(source))
    most_frames_held, count = 0, 0
    for output in segmenter.propagate_in_video_iterator(session, window=window, overlap=overlap):
        most_frames_held = max(most_frames_held, len(session.frames))
        assert output.frame_index == count
        count += 1
    assert count == num_frames
    assert most_frames_held <= window  # the session never holds more than one window of preprocessed frames
    assert source.most_alive <= window + overlap  # nor the source more decoded frames


@pytest.fixture(scope="module")
def online_segmenter():
    """A random-weight OnlineRefer model (`online=True`); frames resized to 80 pixels, so that one frame's stride-64
    level has more than one value per GroupNorm group of the tiny config."""
    return tiny_segmenter(shortest_edge=80, online=True)


@torch.no_grad()
def test_online_model_streams_frame_by_frame_from_its_track(online_segmenter):
    """The session carries the track: streaming equals the model's own loop (one frame a call, `update_track`, the
    processor's post-processing), whatever the window; whole-video calls give the same frame-by-frame result."""
    frames = clip(6, height=96, width=144)
    model, processor = online_segmenter.model, online_segmenter.processor
    track, expected = None, []
    for frame in frames:
        inputs = processor(videos=[frame], text=SENTENCES)
        # The video once for both sentences, as the session passes it: the same computation, value for value.
        outputs = model(
            pixel_values=inputs["pixel_values"][:1], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            resized_sizes=inputs["resized_sizes"][:1], track=track, output_all_queries=False,
        )
        track = model.update_track(outputs, track)
        expected.append(processor.post_process_referring_video_segmentation(outputs, inputs["original_sizes"], inputs["resized_sizes"]))
    streamed = list(online_segmenter.stream(iter(frames), SENTENCES, window=4, overlap=2))
    assert [output.frame_index for output in streamed] == list(range(6))
    for output, reference in zip(streamed, expected):
        for sentence in range(2):
            np.testing.assert_array_equal(output.masks[sentence], reference[sentence]["masks"][0].numpy())
            np.testing.assert_array_equal(output.scores[sentence], reference[sentence]["scores"][0].numpy())
    # The track changes what later frames see: a fresh track every frame gives other scores.
    fresh = [
        processor.post_process_referring_video_segmentation(
            model(**processor(videos=[frame], text=SENTENCES), output_all_queries=False), [(96, 144)] * 2, [(80, 120)] * 2
        )
        for frame in frames
    ]
    assert any(not np.array_equal(output.scores, np.stack([result["scores"][0].numpy() for result in again]))
               for output, again in zip(streamed[1:], fresh[1:]))
    whole = online_segmenter(frames, SENTENCES)
    for sentence, result in enumerate(whole):
        np.testing.assert_array_equal(result.masks, np.stack([output.masks[sentence] for output in streamed]))
    with pytest.raises(ValueError, match="frame by frame: window does not apply"):
        online_segmenter(frames, SENTENCES, window=3)


def test_pipeline_and_predict_run_an_online_folder_frame_by_frame(online_segmenter, tmp_path):
    """The pipeline decodes an online model's video frame by frame, whole or streamed from a generator (the
    segmenter's masks up to fp32 rounding: another model instance, frames in one chunk), and `run_rvos.py predict`
    streams it by default."""
    import json

    from transformers import pipeline

    from helpers import load_script

    folder = tmp_path / "online"
    online_segmenter.model.save_pretrained(folder)
    online_segmenter.processor.save_pretrained(folder)
    frames = clip(4, height=96, width=144)
    expected = online_segmenter(frames, SENTENCES)
    segment = pipeline("referring-video-object-segmentation", model=str(folder), device="cpu")
    for output, reference in zip(segment(frames, text=SENTENCES), expected):
        assert output["masks"].shape == reference.masks.shape
        assert (output["masks"] != reference.masks).mean() < 1e-3
        np.testing.assert_allclose(output["scores"], reference.scores, atol=1e-5, rtol=0)
    streamed = list(segment((frame for frame in frames), text=SENTENCES))
    assert [results[0]["frame_index"] for results in streamed] == list(range(4))
    for index, reference in enumerate(expected):
        assert (np.stack([results[index]["mask"] for results in streamed]) != reference.masks).mean() < 1e-3
        np.testing.assert_allclose([results[index]["score"] for results in streamed], reference.scores, atol=1e-5, rtol=0)
    video_dir = tmp_path / "frames"
    video_dir.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(video_dir / f"{index:03d}.png")
    run_rvos = load_script("run_rvos")
    run_rvos.main(["predict", "--model", str(folder), "--videos", str(video_dir), "--text", *SENTENCES,
                   "--output_dir", str(tmp_path / "pred")])
    predictions = json.loads((tmp_path / "pred" / "frames" / "predictions.json").read_text())
    assert predictions["frames"] == ["000", "001", "002", "003"]
    assert [expression["window_starts"] for expression in predictions["expressions"]] == [[0, 1, 2, 3]] * 2
