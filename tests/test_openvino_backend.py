"""`backend="openvino"` of `referformer.inference`: the model's exported graph run by OpenVINO's CPU plugin gives
PyTorch's results through the same API (whole video, windows, streaming), in fp32 up to rounding and in bf16 within
the agreement the int8 and bf16 paths are held to."""

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT, assert_masks_equal_up_to_rounding, moving_square_clip, tiny_segmenter
from referformer.inference import ReferringVideoSegmenter


pytest.importorskip("onnxscript", reason="backend='openvino' needs the `export` extra (onnxscript)")
pytest.importorskip("openvino", reason="backend='openvino' needs the `export` extra (openvino)")

DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SENTENCES = ["the yellow square", "a dark background"]
# Same computation, other kernels and summation orders, through some 40 layers. Measured here: scores differ by up to
# 2e-7, boxes by 3e-5 px, mask logits (magnitude up to 14, where an fp32 ulp is 1.2e-6) by 1e-4: rounding gathered
# over the layers. The tolerances leave 10x that for other CPUs' kernels, and stay far below any real difference (a
# wrong query or frame changes scores by 1e-3 or more, logits by units).
SCORE_TOLERANCE = {"atol": 1e-5, "rtol": 0}
LOGIT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-4}
BOX_TOLERANCE = {"atol": 1e-3, "rtol": 0}  # absolute pixels on a 72x48 frame


@pytest.fixture(scope="module")
def segmenters():
    """The random-weight unit-test model (3 queries: a real choice to make) in PyTorch and in OpenVINO (fp32)."""
    pytorch = tiny_segmenter(shortest_edge=64)  # a 1-frame window at 40 px would have a 1x1 level: group norm refuses it
    return pytorch, ReferringVideoSegmenter(pytorch.model, pytorch.processor, device="cpu", backend="openvino")


@pytest.fixture(scope="module")
def clip():
    return moving_square_clip(7)


def assert_results_equal_up_to_rounding(actual, expected):
    assert actual.frame_indices == expected.frame_indices and actual.window_starts == expected.window_starts
    assert actual.query_indices == expected.query_indices  # score gaps between the queries: over 1e-3 here
    np.testing.assert_allclose(actual.scores, expected.scores, **SCORE_TOLERANCE)
    np.testing.assert_allclose(actual.boxes, expected.boxes, **BOX_TOLERANCE)
    torch.testing.assert_close(actual.mask_logits, expected.mask_logits, **LOGIT_TOLERANCE)
    probabilities = torch.from_numpy(expected.probabilities())
    assert_masks_equal_up_to_rounding(
        torch.from_numpy(actual.masks), torch.from_numpy(expected.masks), probabilities, margin=1e-3
    )


@pytest.mark.parametrize("window", [None, 3], ids=["whole_video", "windows_of_3"])
def test_openvino_equals_pytorch(segmenters, clip, window):
    pytorch, openvino = segmenters
    assert openvino.backend == "openvino" and openvino.dtype == torch.float32
    expected = pytorch(clip, SENTENCES, window=window)
    actual = openvino(clip, SENTENCES, window=window)
    assert len(actual) == len(SENTENCES)
    for got, want in zip(actual, expected):
        assert got.sentence == want.sentence
        assert_results_equal_up_to_rounding(got, want)
    if window == 3:  # windows of 3, 3 and 1 frames: two compiled shapes kept, the first one dropped
        assert len(actual[0].query_indices) == 3 and len(openvino.engine._compiled) == 2


def test_openvino_streams_like_pytorch(segmenters, clip):
    """Overlapping windows: every query's masks come out of the graph for the streaming rule's choice."""
    pytorch, openvino = segmenters
    expected = list(pytorch.stream(clip, SENTENCES, window=4, overlap=2))
    actual = list(openvino.stream(clip, SENTENCES, window=4, overlap=2))
    assert [frame.frame_index for frame in actual] == [frame.frame_index for frame in expected] == list(range(7))
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got.boxes, want.boxes, **BOX_TOLERANCE)
        np.testing.assert_allclose(got.scores, want.scores, **SCORE_TOLERANCE)
        differing = got.masks != want.masks
        assert differing.mean() < 1e-3, f"frame {got.frame_index}: {int(differing.sum())} pixels differ"


def test_openvino_bf16_keeps_the_demo_models_masks():
    """bf16 (OpenVINO's inference precision hint; fp32 where the CPU has no bf16 units) on the trained demo model:
    the same query and masks of IoU at least 0.98 against PyTorch fp32, the bar the int8 and bf16 paths meet."""
    video = np.full((5, 96, 144, 3), 128, np.uint8)
    for index in range(5):
        video[index, 30:60, 20 + 6 * index : 50 + 6 * index] = (240, 210, 20)  # a yellow square moving right
    video[:, 55:85, 95:125] = (200, 30, 30)  # a red square
    sentences = ["the yellow square", "the red square"]
    expected = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu")(video, sentences)
    bf16 = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu", dtype="bf16", backend="openvino")
    assert bf16.engine.dtype == torch.bfloat16
    for got, want in zip(bf16(video, sentences), expected):
        assert got.query_indices == want.query_indices
        assert want.masks.mean() > 0.03  # each square is found
        iou = (got.masks & want.masks).sum() / (got.masks | want.masks).sum()
        assert iou >= 0.98, (got.sentence, iou)
        assert abs(got.score - want.score) < 0.02


def test_openvino_refuses_what_it_cannot_run(segmenters):
    pytorch, _ = segmenters
    model, processor = pytorch.model, pytorch.processor
    with pytest.raises(ValueError, match=r"^Unknown backend 'onnx'; choose one of: pytorch, openvino\.$"):
        ReferringVideoSegmenter(model, processor, backend="onnx")
    with pytest.raises(ValueError, match=r"^backend='openvino' runs fp32 or bf16, not torch.qint8\.$"):
        ReferringVideoSegmenter(model, processor, device="cpu", dtype="int8", backend="openvino")
    with pytest.raises(ValueError, match=r"^backend='openvino' runs on the CPU, not on cuda\.$"):
        ReferringVideoSegmenter(model, processor, device="cuda", backend="openvino")
    online = tiny_segmenter(online=True)
    with pytest.raises(ValueError, match=r"does not run online \(OnlineRefer\) models"):
        ReferringVideoSegmenter(online.model, online.processor, device="cpu", backend="openvino")
    assert not any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules())
