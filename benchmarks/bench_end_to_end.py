"""End-to-end CPU/CUDA benchmark of the released architecture: this project's fast path against its faithful
reference path, in fp32 and bf16, for one and several sentences.

The model is the released ReferFormer (ResNet-50 + RoBERTa-base structure, `ReferFormerConfig()`) with random weights
(seeded, built from the config without downloads) on random 360x640 frames and random 12-token sentences.

* fast: compiled deformable-attention operator, `scaled_dot_product_attention`, one visual pass shared by the
  sentences, frame chunks of `--chunk` frames, the mask head for the selected query only;
* compiled (`--compile`): the fast path under `torch.compile(model)` (inductor); its warm-up compiles it on the timed
  clip's shapes, which takes minutes (the compile time is printed after the table);
* reference: everything as the original computes it: PyTorch deformable attention (`grid_sample`), eager attention,
  no chunking, all queries' masks for every decoder layer, and one forward pass per sentence;
* stream (`--stream`): `ReferringVideoSegmenter.stream` over a generator of `--stream_frames` frames (decoded-frame
  arrays, preprocessing and the full-size masks of every frame included), in windows of `--window` frames sharing
  `--overlap`, fp32, one sentence: the time per frame and peak memory must not grow with the length;
* OnlineRefer stream (`--online_frames`): the same stream through the released R50 OnlineRefer architecture, which
  decodes frame by frame from its track.

bf16 runs the float32 weights under `torch.autocast`. Each configuration runs in its own subprocess (after a warm-up
forward on up to 5 frames) so that its peak memory (RSS on CPU, max allocated on CUDA) is its own. Masks agreement: IoU of the selected
query's thresholded stride-4 masks against the reference fp32 run of the same frames and sentences. The reference
path holds every frame's activations at once (about 0.3 GiB per frame): above `--reference_max_frames` it is not run
(the row says so) and the fast rows of that length have no reference columns.

    python benchmarks/bench_end_to_end.py --frames 5 36 100 300 --sentences 1 5 --threads 2
    python benchmarks/bench_end_to_end.py --frames 100 300 --sentences 1 --dtypes fp32 --reference_max_frames 0 \
        --threads 2 --stream --stream_frames 100 1000 --online_frames 100 500
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


HEIGHT, WIDTH, TEXT_LENGTH = 360, 640, 12
WARM_UP_FRAMES = 5


def build_model(path: str, chunk: int, online: bool = False):
    from referformer import ReferFormerConfig, ReferFormerForReferringVideoObjectSegmentation

    torch.manual_seed(0)
    if path in ("fast", "compiled"):
        config = ReferFormerConfig(frame_chunk_size=chunk, online=online)
    else:
        config = ReferFormerConfig(disable_custom_kernels=True, attn_implementation="eager")
    return ReferFormerForReferringVideoObjectSegmentation(config).eval()


def make_inputs(num_frames: int, num_sentences: int, device):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 50000, (num_sentences, TEXT_LENGTH), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    pixel_values = torch.randn(1, num_frames, 3, HEIGHT, WIDTH, generator=generator)
    return pixel_values.to(device), input_ids.to(device)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used: unlike wall time, it barely moves when other processes load
    the machine, so a row's CPU seconds per frame compare across rows of a loaded run."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timing(seconds: float, num_frames: int, warm_up_seconds: float, device: str) -> dict:
    """A row's figures: time, time per frame, the process's peak memory (RSS on CPU, max allocated on CUDA)."""
    if device == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "seconds_per_frame": seconds / num_frames, "peak_gib": peak_gib,
            "warm_up_seconds": warm_up_seconds}


def run(path: str, dtype: str, num_frames: int, num_sentences: int, chunk: int, device: str, masks_file: str) -> dict:
    """One configuration: returns its timing and memory, and saves the selected masks and scores to `masks_file`."""
    from referformer.modeling_referformer import select_referred_query

    model = build_model(path, chunk).to(device)
    if path == "compiled":
        model = torch.compile(model)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def forward(pixel_values, input_ids):
        if path != "reference":
            outputs = model(pixel_values=pixel_values, input_ids=input_ids, output_all_queries=False)
            selected = outputs.selected_query_indices
            return outputs.logits, selected, outputs.pred_masks[:, :, 0]
        results = [model(pixel_values=pixel_values, input_ids=input_ids[index : index + 1]) for index in range(len(input_ids))]
        logits = torch.cat([outputs.logits for outputs in results])
        masks = torch.cat([outputs.pred_masks for outputs in results])
        selected = select_referred_query(logits)
        return logits, selected, masks[torch.arange(len(masks)), :, selected]

    with torch.no_grad(), autocast:
        # Warm-up on up to WARM_UP_FRAMES frames (kernel loading, allocator, oneDNN primitives of the chunk shapes), on
        # the whole clip when compiling (the compiled graph depends on the number of frames).
        warm_up_frames = num_frames if path == "compiled" else min(num_frames, WARM_UP_FRAMES)
        start = time.perf_counter()
        forward(*make_inputs(warm_up_frames, num_sentences, device))
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        warm_up_seconds = time.perf_counter() - start
        pixel_values, input_ids = make_inputs(num_frames, num_sentences, device)
        start = time.perf_counter()
        logits, selected, masks = forward(pixel_values, input_ids)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    scores = logits.float().sigmoid()[torch.arange(len(selected)), :, selected].max(-1).values  # [N, T]
    torch.save({"masks": masks.float().cpu() > 0, "scores": scores.cpu(), "selected": selected.cpu()}, masks_file)
    return timing(seconds, num_frames, warm_up_seconds, device)


def run_stream(num_frames: int, chunk: int, device: str, window: int, overlap: int, online: bool) -> dict:
    """Streams `num_frames` random 360x640 frames (a generator cycling over 8 of them) with one sentence, through
    ReferFormer or (`online`) OnlineRefer, which decodes frame by frame."""
    import numpy as np

    from referformer import ReferFormerProcessor, ReferFormerVideoProcessor
    from referformer.cli_presets import build_shapes_tokenizer
    from referformer.inference import ReferringVideoSegmenter

    processor = ReferFormerProcessor(ReferFormerVideoProcessor(), build_shapes_tokenizer())
    segmenter = ReferringVideoSegmenter(build_model("fast", chunk, online), processor, device=device)
    pool = np.random.default_rng(0).integers(0, 256, (8, HEIGHT, WIDTH, 3), dtype=np.uint8)

    def frames(count):
        return (pool[index % len(pool)] for index in range(count))

    start = time.perf_counter()
    sum(1 for _ in segmenter.stream(frames(WARM_UP_FRAMES), ["the red square"], window=window, overlap=overlap))
    warm_up_seconds = time.perf_counter() - start
    start, start_cpu = time.perf_counter(), cpu_seconds()
    count = sum(1 for _ in segmenter.stream(frames(num_frames), ["the red square"], window=window, overlap=overlap))
    seconds, used_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    assert count == num_frames, (count, num_frames)
    return timing(seconds, num_frames, warm_up_seconds, device) | {"cpu_seconds_per_frame": used_cpu / num_frames}


def count_gflop(num_frames: int, chunk: int, device: str) -> float:
    """Matmul and convolution GFLOP of one fast fp32 forward (the deformable sampling is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    # Frozen parameters instead of `no_grad`: the counter's module tracker needs grad mode on.
    model = build_model("fast", chunk).to(device).requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        pixel_values, input_ids = make_inputs(num_frames, 1, device)
        model(pixel_values=pixel_values, input_ids=input_ids, output_all_queries=False)
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(device: str, size: int = 2048, repeats: int = 10) -> float:
    """fp32 matmul throughput of this machine (best of `repeats` square products)."""
    first, second = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(first, second)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.task == "run":
        result = run(args.path, args.dtype, args.num_frames, args.num_sentences, args.chunk, args.device, args.masks_file)
    elif args.task == "stream":
        result = run_stream(args.num_frames, args.chunk, args.device, args.window, args.overlap, args.online)
    elif args.task == "flops":
        result = {"gflop": count_gflop(args.num_frames, args.chunk, args.device)}
    else:
        result = {"gflops": matmul_peak_gflops(args.device)}
    print(json.dumps(result))


def in_subprocess(args, *options) -> dict:
    command = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device, "--chunk",
               str(args.chunk), *options]
    environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mask_iou(first: torch.Tensor, second: torch.Tensor) -> float:
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


def agreement(result: dict, reference: dict | None) -> tuple[str, str, str]:
    """Speed-up, worst per-sentence mask IoU and largest score difference against the reference fp32 run."""
    if reference is None:
        return "-", "-", "-"
    iou = min(mask_iou(a, b) for a, b in zip(result["masks"], reference["masks"]))
    score_diff = float((result["scores"] - reference["scores"]).abs().max())
    return f"{reference['seconds'] / result['seconds']:.2f}", f"{iou:.4f}", f"{score_diff:.1e}"


def main(args) -> None:
    peak = in_subprocess(args, "--task", "peak")["gflops"]
    print(f"device {args.device}, {args.threads} threads, {HEIGHT}x{WIDTH} frames; fp32 matmul peak {peak:.0f} GFLOP/s",
          flush=True)
    header = ("path", "dtype", "T", "sentences", "s/frame", "peak GiB", "x ref fp32", "IoU vs ref fp32", "max |score diff|")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    paths = ("reference", "fast", "compiled") if args.compile else ("reference", "fast")
    compile_times = []
    with tempfile.TemporaryDirectory() as folder:
        for num_frames in args.frames:
            for num_sentences in args.sentences:
                results = {}
                for path in paths:
                    if path == "reference" and num_frames > args.reference_max_frames:
                        reason = f"not run: T > --reference_max_frames {args.reference_max_frames}"
                        print(f"| reference | - | {num_frames} | {num_sentences} | {reason} |||||", flush=True)
                        continue
                    for dtype in args.dtypes:
                        masks_file = str(Path(folder) / f"{path}-{dtype}-{num_frames}-{num_sentences}.pt")
                        result = in_subprocess(
                            args, "--task", "run", "--path", path, "--dtype", dtype, "--num_frames", str(num_frames),
                            "--num_sentences", str(num_sentences), "--masks_file", masks_file,
                        )
                        result.update(torch.load(masks_file))
                        results[path, dtype] = result
                        row = (path, dtype, num_frames, num_sentences, f"{result['seconds_per_frame']:.2f}",
                               f"{result['peak_gib']:.2f}", *agreement(result, results.get(("reference", "fp32"))))
                        print("| " + " | ".join(str(value) for value in row) + " |", flush=True)
                        if path == "compiled":
                            compile_times.append(f"{dtype} T={num_frames} sentences={num_sentences}: "
                                                 f"{result['warm_up_seconds']:.0f} s")
    if args.stream or args.online_frames:
        print("\nstreamed rows, also in CPU seconds per frame (user + system of the row's process):\n", flush=True)
        print("| path | T | s/frame | CPU s/frame | peak GiB |\n|---|---|---|---|---|", flush=True)
    for online, lengths in ((True, args.online_frames), (False, args.stream_frames if args.stream else [])):
        for num_frames in lengths:
            options = ["--online"] if online else []
            result = in_subprocess(args, "--task", "stream", "--num_frames", str(num_frames), "--window",
                                   str(args.window), "--overlap", str(args.overlap), *options)
            name = "OnlineRefer stream (frame by frame)" if online else f"stream (window {args.window}, overlap {args.overlap})"
            row = (name, num_frames, f"{result['seconds_per_frame']:.2f}", f"{result['cpu_seconds_per_frame']:.2f}",
                   f"{result['peak_gib']:.2f}")
            print("| " + " | ".join(str(value) for value in row) + " |", flush=True)
    if compile_times:
        print("compile + first forward of the compiled rows: " + ", ".join(compile_times), flush=True)
    if args.count_flops:
        for num_frames in args.frames:
            gflop = in_subprocess(args, "--task", "flops", "--num_frames", str(num_frames))["gflop"]
            print(f"fast fp32 T={num_frames}: {gflop:.1f} GFLOP (matmuls and convolutions)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[5, 36, 100, 300], help="Clip lengths T (none: only the streamed rows).")
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 5], help="Sentences per video.")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Intra-op threads (default: all cores).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk", type=int, default=2, help="Frame chunk size of the fast path.")
    parser.add_argument(
        "--reference_max_frames", type=int, default=36, help="Longest clip the reference path runs on (memory, time)."
    )
    parser.add_argument(
        "--compile", action="store_true", help="Also run the fast path under torch.compile (inductor; minutes to compile)."
    )
    parser.add_argument("--count_flops", action="store_true", help="Also count the fast path's fp32 GFLOP per T.")
    parser.add_argument("--stream", action="store_true", help="Also stream --stream_frames frames (fp32, one sentence).")
    parser.add_argument("--stream_frames", type=int, nargs="+", default=[100, 1000], help="Streamed video lengths.")
    parser.add_argument("--window", type=int, default=36, help="Frames per streaming window.")
    parser.add_argument("--overlap", type=int, default=8, help="Frames shared by consecutive streaming windows.")
    parser.add_argument("--online_frames", type=int, nargs="*", default=[],
                        help="Also stream these lengths through OnlineRefer (the released R50 architecture, online).")
    parser.add_argument("--online", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["run", "flops", "peak", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["fast", "compiled", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--num_frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--num_sentences", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--masks_file", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.task:
        child(arguments)
    else:
        main(arguments)
