"""Quality of streaming against the whole-video and independent-window protocols on long synthetic clips.

The embedded demo model (`checkpoints/referformer-tiny-shapes`) segments long referring-shapes clips (objects moving
across the frame, paths crossing) generated from seeds it never saw, with every expression of each clip, in three
protocols: the whole video with one query (ReferFormer's Ref-YouTube-VOS rule), independent windows of `--window`
frames (the Ref-DAVIS17 rule) and streaming (windows sharing `--overlap` frames, the object kept across windows). It
prints J&F, J and F of each protocol over all expressions, and the seconds each took.

    python benchmarks/bench_streaming_quality.py --num_videos 3 --num_frames 600 --window 36 --overlap 8
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from referformer.data_synthetic import generate_referring_shapes
from referformer.evaluation import contour_accuracy, region_similarity
from referformer.inference import ReferringVideoSegmenter


DEMO_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "referformer-tiny-shapes"
ATTRIBUTES = ("size", "color", "shape")  # what one frame shows; positions change along long clips


def protocol_masks(segmenter, frames, sentences, protocol: str, window: int, overlap: int) -> np.ndarray:
    """Masks `[N, T, H, W]` of every sentence by one protocol."""
    if protocol == "whole video":
        return np.stack([result.masks for result in segmenter(frames, sentences)])
    if protocol == "windows":
        return np.stack([result.masks for result in segmenter(frames, sentences, window=window)])
    outputs = list(segmenter.stream(iter(frames), sentences, window=window, overlap=overlap))
    return np.stack([output.masks for output in outputs], 1)


def main(args) -> None:
    torch.set_num_threads(args.threads)
    segmenter = ReferringVideoSegmenter.from_pretrained(args.model, device="cpu")
    protocols = ("whole video", "windows", "streaming")
    scores = {protocol: {"J": [], "F": []} for protocol in protocols}
    seconds = dict.fromkeys(protocols, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        meta = generate_referring_shapes(
            folder, num_videos=args.num_videos, num_frames=args.num_frames, height=96, width=144, seed=args.seed,
            split="valid", expression_attributes=ATTRIBUTES, frame_stride=1, max_objects=3, expressions_per_object=1,
        )
        for video_id, video in meta["videos"].items():
            frame_dir = Path(folder) / "valid" / "JPEGImages" / video_id
            mask_dir = Path(folder) / "valid" / "Annotations" / video_id
            frames = np.stack([np.asarray(Image.open(frame_dir / f"{name}.jpg")) for name in video["frames"]])
            labels = np.stack([np.asarray(Image.open(mask_dir / f"{name}.png")) for name in video["frames"]])
            expressions = list(video["expressions"].values())
            sentences = [expression["exp"] for expression in expressions]
            for protocol in protocols:
                start = time.perf_counter()
                masks = protocol_masks(segmenter, frames, sentences, protocol, args.window, args.overlap)
                seconds[protocol] += time.perf_counter() - start
                for expression, expression_masks in zip(expressions, masks):
                    truth = labels == int(expression["obj_id"])
                    scores[protocol]["J"].append(float(np.mean(region_similarity(truth, expression_masks))))
                    scores[protocol]["F"].append(float(np.mean(contour_accuracy(truth, expression_masks))))
            print(f"{video_id}: {len(sentences)} expressions, {len(frames)} frames", flush=True)
    print(f"\n{args.num_videos} clips of {args.num_frames} frames (seed {args.seed}), window {args.window}, "
          f"overlap {args.overlap}, {args.threads} threads\n")
    print("| protocol | J&F | J | F | seconds |\n|---|---|---|---|---|")
    summary = {}
    for protocol in protocols:
        region, contour = np.mean(scores[protocol]["J"]), np.mean(scores[protocol]["F"])
        summary[protocol] = {"J&F": (region + contour) / 2, "J": region, "F": contour}
        print(f"| {protocol} | {(region + contour) / 2:.4f} | {region:.4f} | {contour:.4f} | {seconds[protocol]:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--num_videos", type=int, default=3)
    parser.add_argument("--num_frames", type=int, default=600)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--window", type=int, default=36)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="Also write the summary to this JSON file.")
    main(parser.parse_args())
