"""Benchmark J and F on a 100-frame 480x854 sequence of random smooth shapes (single thread).

Run with `python benchmarks/bench_metrics.py`; the target is under 2 s for J and F together.
"""

import argparse
import os


# Single-threaded BLAS/OpenMP, before numpy and scipy are imported.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from referformer.evaluation import contour_accuracy, region_similarity  # noqa: E402


def smooth_shapes(rng: np.random.Generator, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction: thresholded, smoothly varying random fields (a few blobs per frame)."""
    coarse_shape = (num_frames // 10 + 2, height // 40 + 2, width // 40 + 2)
    field = rng.standard_normal(coarse_shape)
    noise = rng.standard_normal(coarse_shape)
    zoom = (num_frames / coarse_shape[0], height / coarse_shape[1], width / coarse_shape[2])
    gt_field = ndimage.zoom(field, zoom, order=3)[:num_frames, :height, :width]
    pred_field = ndimage.zoom(field + 0.3 * noise, zoom, order=3)[:num_frames, :height, :width]
    return gt_field > 0.5, pred_field > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gt, pred = smooth_shapes(np.random.default_rng(0), args.frames, args.height, args.width)
    print(f"sequence: {args.frames} frames of {args.height}x{args.width}, gt coverage {gt.mean():.3f}")

    timings = {"J": [], "F": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        j = region_similarity(gt, pred)
        timings["J"].append(time.perf_counter() - start)
        start = time.perf_counter()
        f = contour_accuracy(gt, pred)
        timings["F"].append(time.perf_counter() - start)

    best_j, best_f = min(timings["J"]), min(timings["F"])
    print(f"J mean {j.mean():.4f}, F mean {f.mean():.4f}")
    print(f"J: {best_j:.3f} s  F: {best_f:.3f} s  J+F: {best_j + best_f:.3f} s (best of {args.repeats}, target < 2 s)")


if __name__ == "__main__":
    main()
