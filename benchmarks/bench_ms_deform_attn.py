"""CPU benchmark of multi-scale deformable attention: the custom operator against the PyTorch reference.

Encoder-sized inputs: 5 frames of 360x640 give four levels at strides 8, 16, 32 and 64 (45x80, 23x40, 12x20, 6x10),
8 heads of 32 channels, 4 points per level, and every encoder token is a query. Each variant (implementation x
forward / forward+backward) runs in its own subprocess so that its peak resident memory (`ru_maxrss`) is its own.

    python benchmarks/bench_ms_deform_attn.py [--repeats 5]
"""

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from referformer import kernels
from referformer.ms_deform_attn import ms_deform_attn


SPATIAL_SHAPES = [(45, 80), (23, 40), (12, 20), (6, 10)]
BATCH_SIZE = 5
NUM_HEADS = 8
HEAD_DIM = 32
NUM_POINTS = 4
IMPLEMENTATIONS = ("reference", "op")
MODES = ("forward", "forward+backward")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(SPATIAL_SHAPES, dtype=torch.int64)
    level_sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([level_sizes.new_zeros(1), level_sizes.cumsum(0)[:-1]])
    num_values = int(level_sizes.sum())
    num_levels = len(SPATIAL_SHAPES)
    value = torch.randn(BATCH_SIZE, num_values, NUM_HEADS, HEAD_DIM, generator=generator)
    sampling_locations = torch.rand(
        BATCH_SIZE, num_values, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=generator
    )
    attention_weights = torch.rand(BATCH_SIZE, num_values, NUM_HEADS, num_levels * NUM_POINTS, generator=generator)
    attention_weights = attention_weights.softmax(-1).view(BATCH_SIZE, num_values, NUM_HEADS, num_levels, NUM_POINTS)
    grad_output = torch.randn(BATCH_SIZE, num_values, NUM_HEADS * HEAD_DIM, generator=generator)
    for tensor in (value, sampling_locations, attention_weights):
        tensor.requires_grad_(requires_grad)
    return (value, spatial_shapes, level_start_index, sampling_locations, attention_weights), grad_output


def run_worker(implementation: str, mode: str, repeats: int) -> dict:
    """Times one variant in this process and returns its figures."""
    torch.set_num_threads(os.cpu_count())
    if implementation == "op":
        if not kernels.is_available("cpu"):
            raise RuntimeError("the custom operator could not be built (see the warning above)")
        function = ms_deform_attn
    else:
        function = functools.partial(ms_deform_attn, use_custom_kernel=False)
    backward = mode == "forward+backward"
    inputs, grad_output = make_inputs(requires_grad=backward)
    baseline_mib = peak_rss_mib()

    def step():
        if backward:
            function(*inputs).backward(grad_output)
        else:
            with torch.no_grad():
                function(*inputs)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_mib": peak_rss_mib(),
        "extra_peak_mib": peak_rss_mib() - baseline_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (after one warm-up)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(*args.worker, repeats=args.repeats)))
        return

    num_values = sum(height * width for height, width in SPATIAL_SHAPES)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} threads; batch {BATCH_SIZE}, levels {SPATIAL_SHAPES}, "
        f"queries = values = {num_values}, heads {NUM_HEADS}, head_dim {HEAD_DIM}, points {NUM_POINTS}, float32; "
        f"median of {args.repeats} runs"
    )
    results = {}
    for mode in MODES:
        for implementation in IMPLEMENTATIONS:
            completed = subprocess.run(
                [sys.executable, __file__, "--worker", implementation, mode, "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
            )
            if completed.returncode != 0:
                sys.exit(f"{implementation} {mode} failed:\n{completed.stderr}")
            results[implementation, mode] = json.loads(completed.stdout.strip().splitlines()[-1])

    print(
        f"{'mode':<18}{'implementation':<16}{'median (ms)':>12}{'min (ms)':>10}{'peak RSS (MiB)':>16}"
        f"{'extra peak (MiB)':>18}"
    )
    for mode in MODES:
        for implementation in IMPLEMENTATIONS:
            figures = results[implementation, mode]
            print(
                f"{mode:<18}{implementation:<16}{figures['median_s'] * 1000:>12.1f}{figures['min_s'] * 1000:>10.1f}"
                f"{figures['peak_mib']:>16.0f}{figures['extra_peak_mib']:>18.0f}"
            )
    for mode in MODES:
        reference, op = results["reference", mode], results["op", mode]
        print(
            f"{mode}: op is {reference['median_s'] / op['median_s']:.2f}x faster (median; "
            f"{reference['min_s'] / op['min_s']:.2f}x on the best runs), extra peak memory "
            f"{op['extra_peak_mib']:.0f} MiB vs {reference['extra_peak_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
