"""End-to-end CPU/CUDA benchmark of the released architecture: this project's fast path against its faithful
reference path, in fp32, bf16 and int8, for one and several sentences.

The model is the released ReferFormer (ResNet-50 + RoBERTa-base structure, `ReferFormerConfig()`) with random weights
(seeded, built from the config without downloads) on random 360x640 frames and random 12-token sentences.

* fast: compiled deformable-attention operator, `scaled_dot_product_attention`, one visual pass shared by the
  sentences, frame chunks of `--chunk` frames, the mask head for the selected query only;
* compiled (`--compile`): the fast path under `torch.compile(model)` (inductor); its warm-up compiles it on the timed
  clip's shapes, which takes minutes (the compile time is printed after the table);
* openvino (`--openvino`, CPU, fp32 and bf16): what `ReferringVideoSegmenter(backend="openvino")` runs
  (`referformer.openvino_backend`): every query's masks of the last layer, exported to ONNX once and compiled by
  OpenVINO for the clip's shapes in the warm-up (export and compile times printed after the table); the referred
  query is selected from its outputs;
* reference: everything as the original computes it: PyTorch deformable attention (`grid_sample`), eager attention,
  no chunking, all queries' masks for every decoder layer, and one forward pass per sentence;
* stream (`--stream`): `ReferringVideoSegmenter.stream` over a generator of `--stream_frames` frames (decoded-frame
  arrays, preprocessing and the full-size masks of every frame included), in windows of `--window` frames sharing
  `--overlap`, fp32, one sentence: the time per frame and peak memory must not grow with the length;
* OnlineRefer stream (`--online_frames`): the same stream through the released R50 OnlineRefer architecture, which
  decodes frame by frame from its track;
* engines (`--engines onnxruntime openvino`): the model exported to ONNX (`torch.onnx.export(dynamo=True)`) and run
  on the CPU by ONNX Runtime (CPUExecutionProvider, all graph optimizations) and OpenVINO (CPU plugin, compiled from
  the ONNX file for the clip's shapes), `--threads` threads. `--engine_graph fast` (default) is the fast path's
  computation with these differences: the whole clip is one frame chunk (`--chunk` does not apply), the feed-forward
  blocks run as one product instead of blocks of rows, the deformable-attention op is one ONNX `GridSample` per
  level, attention is MatMul/Softmax; its shapes are static (the selected query's mask head folds the FPN's final
  convolution into a convolution of sentences x frames groups, a static ONNX attribute), so it is exported once
  per (T, sentences). `--engine_graph full` computes every query's masks of the last layer (no fold), selects the
  referred query in the graph, and has dynamic T and sentences (one export for all rows). Precisions: fp32 in both;
  ONNX Runtime int8 is dynamic quantization of the MatMul weights (`quantize_dynamic`; convolutions stay fp32);
  OpenVINO bf16 is its `INFERENCE_PRECISION_HINT` where the CPU has bf16; a mode an engine lacks gets a "not run"
  row saying why. Agreement columns compare with the eager fast fp32 row; export and compile times follow the table.

bf16 runs the float32 weights under `torch.autocast`; int8 (`--dtypes int8`, CPU, fast path only) is the fast path with
`referformer.quantization.quantize_int8` (dynamic int8 of the per-pixel `Linear` layers). The first line prints the
processor, its AVX-512 / AMX features and its fp32, bf16 and int8 matmul peaks. Each configuration runs in its own subprocess (after a warm-up
forward on up to 5 frames) so that its peak memory (RSS on CPU, max allocated on CUDA) is its own. Masks agreement: IoU of the selected
query's thresholded stride-4 masks against the reference fp32 run of the same frames and sentences. The reference
path holds every frame's activations at once (about 0.3 GiB per frame): above `--reference_max_frames` it is not run
(the row says so) and the fast rows of that length have no reference columns.

    python benchmarks/bench_end_to_end.py --frames 5 36 100 300 --sentences 1 5 --threads 2
    python benchmarks/bench_end_to_end.py --frames 100 300 --sentences 1 --dtypes fp32 --reference_max_frames 0 \
        --threads 2 --stream --stream_frames 100 1000 --online_frames 100 500
    python benchmarks/bench_end_to_end.py --frames 5 36 --sentences 1 --threads 2 --engines onnxruntime openvino
    python benchmarks/bench_end_to_end.py --frames 5 36 --sentences 1 --threads 2 --dtypes fp32 bf16 int8 \
        --engines onnxruntime openvino --engine_graph full
"""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


TEXT_LENGTH = 12
WARM_UP_FRAMES = 5
ENGINE_INPUT_NAMES = ("pixel_values", "input_ids")
ENGINE_OUTPUT_NAMES = ("logits", "selected_query_indices", "selected_masks")
ENGINE_GRAPHS = {
    "fast": "fast (1 chunk, static T, N)",
    "full": "full (all queries, dynamic T, N)",
}
OPENVINO_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
PATH_LABELS = {"openvino": "openvino backend"}  # the eager table's name of a path, where it differs from `--path`
# The CPU features (from /proc/cpuinfo) that decide which precision runs fast: AVX-512 fp32, its bf16 and int8 (VNNI)
# dot products, and the AMX tile units.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Architecture:
    """The benchmarked model and the size of its random inputs."""

    name: str
    height: int
    width: int
    vocab_size: int
    tiny: bool

    def config(self, **overrides):
        from referformer import ReferFormerConfig
        from referformer.cli_presets import tiny_config

        base = tiny_config(self.vocab_size) if self.tiny else ReferFormerConfig()
        return ReferFormerConfig.from_dict(base.to_dict(), **overrides)


RELEASED = Architecture("released R50 architecture", 360, 640, 50000, tiny=False)
# The hidden `--tiny` option: the `tiny` preset on 64x96 frames, so that tests run every code path in seconds.
TINY = Architecture("tiny preset (tests)", 64, 96, 100, tiny=True)


@dataclass
class Timing:
    """A row's figures: time, time per frame, the process's peak memory (RSS on CPU, max allocated on CUDA) and the
    warm-up forward's time."""

    seconds: float
    seconds_per_frame: float
    peak_gib: float
    warm_up_seconds: float


@dataclass
class StreamTiming(Timing):
    """A streamed row's figures, with the CPU seconds (user + system) per frame."""

    cpu_seconds_per_frame: float


@dataclass
class EngineTiming(Timing):
    """An engine row's figures, with the time to create the engine's session or compiled model."""

    compile_seconds: float


@dataclass
class PreparedGraph:
    """The ONNX export's time and, for ONNX Runtime's int8 rows, the dynamic quantization's (None when not done)."""

    export_seconds: float
    quantize_seconds: float | None


@dataclass
class Selection:
    """The referred object of each of N sentences: `masks` `[N, T, h, w]` (stride-4 mask logits > 0), `scores`
    `[N, T]` (its best class probability per frame) and `selected` `[N]` (its query)."""

    masks: torch.Tensor
    scores: torch.Tensor
    selected: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, selected: torch.Tensor, masks: torch.Tensor) -> "Selection":
        """From class logits `[N, T, Q, K]`, the selected queries `[N]` and their mask logits `[N, T, h, w]`."""
        scores = logits.float().sigmoid()[torch.arange(len(selected)), :, selected].max(-1).values
        return cls(masks=masks.float().cpu() > 0, scores=scores.cpu(), selected=selected.cpu())

    def save(self, path: str) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: str) -> "Selection":
        return cls(**torch.load(path))


@dataclass
class Row:
    """A timed configuration and the referred objects it selected."""

    timing: Timing
    selection: Selection


class SelectedQueryGraph(torch.nn.Module):
    """The referred object of each sentence as a module of tensors (what `torch.onnx.export` takes): `forward`
    returns class logits `[N, T, Q, K]`, the selected queries `[N]` and their mask logits `[N, T, h, w]`
    (`ENGINE_OUTPUT_NAMES`). `output_all_queries=False` is the fast path's selected-query mask head; `True`
    computes every query's masks and selects from them."""

    def __init__(self, model: torch.nn.Module, output_all_queries: bool):
        super().__init__()
        self.model, self.output_all_queries = model, output_all_queries

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        from referformer.modeling_referformer import select_referred_query

        outputs = self.model(pixel_values=pixel_values, input_ids=input_ids, output_all_queries=self.output_all_queries)
        if not self.output_all_queries:
            return outputs.logits, outputs.selected_query_indices, outputs.pred_masks[:, :, 0]
        selected = select_referred_query(outputs.logits)
        return outputs.logits, selected, outputs.pred_masks[torch.arange(selected.shape[0]), :, selected]


def build_model(architecture: Architecture, path: str, chunk: int | None, online: bool = False):
    from referformer import ReferFormerForReferringVideoObjectSegmentation

    if path == "reference":
        config = architecture.config(disable_custom_kernels=True, attn_implementation="eager")
    else:
        config = architecture.config(frame_chunk_size=chunk, online=online)
    torch.manual_seed(0)
    return ReferFormerForReferringVideoObjectSegmentation(config).eval()


def make_inputs(architecture: Architecture, num_frames: int, num_sentences: int, device):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, architecture.vocab_size, (num_sentences, TEXT_LENGTH), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    pixel_values = torch.randn(1, num_frames, 3, architecture.height, architecture.width, generator=generator)
    return pixel_values.to(device), input_ids.to(device)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used: unlike wall time, it barely moves when other processes load
    the machine, so a row's CPU seconds per frame compare across rows of a loaded run."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timing(seconds: float, num_frames: int, warm_up_seconds: float, device: str) -> Timing:
    if device == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return Timing(seconds, seconds / num_frames, peak_gib, warm_up_seconds)


def run(architecture: Architecture, path: str, dtype: str, num_frames: int, num_sentences: int, chunk: int,
        device: str, selection_file: str) -> Timing:
    """One configuration: returns its timing and memory, and saves its `Selection` to `selection_file`."""
    model = build_model(architecture, "fast" if path == "openvino" else path, chunk).to(device)
    if dtype == "int8":
        from referformer.quantization import quantize_int8

        quantize_int8(model)
    if path == "compiled":
        model = torch.compile(model)
    graph = SelectedQueryGraph(model, output_all_queries=path == "reference")
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bf16" and path != "openvino")
    if path == "openvino":
        from referformer.inference import DTYPES
        from referformer.openvino_backend import OpenVINOReferFormer

        engine = OpenVINOReferFormer(model, DTYPES[dtype])

    def forward(pixel_values, input_ids) -> Selection:
        if path == "openvino":
            size = torch.tensor([pixel_values.shape[-2:]])
            outputs = engine(pixel_values, input_ids, torch.ones_like(input_ids), size)
            return Selection.of(outputs.logits, outputs.selected_query_indices, outputs.pred_masks[:, :, 0])
        if path != "reference":
            return Selection.of(*graph(pixel_values, input_ids))
        per_sentence = [graph(pixel_values, input_ids[index : index + 1]) for index in range(len(input_ids))]
        return Selection.of(*(torch.cat(values) for values in zip(*per_sentence)))

    with torch.no_grad(), autocast:
        # Warm-up on up to WARM_UP_FRAMES frames (kernel loading, allocator, oneDNN primitives of the chunk shapes), on
        # the whole clip when compiling (the compiled graph depends on the number of frames).
        warm_up_frames = num_frames if path in ("compiled", "openvino") else min(num_frames, WARM_UP_FRAMES)
        start = time.perf_counter()
        forward(*make_inputs(architecture, warm_up_frames, num_sentences, device))
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        warm_up_seconds = time.perf_counter() - start
        pixel_values, input_ids = make_inputs(architecture, num_frames, num_sentences, device)
        start = time.perf_counter()
        selection = forward(pixel_values, input_ids)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    selection.save(selection_file)
    return timing(seconds, num_frames, warm_up_seconds, device)


def export_graph(architecture: Architecture, graph: str, num_frames: int, num_sentences: int, model_file: str,
                 int8_file: str | None) -> PreparedGraph:
    """Exports `SelectedQueryGraph` of the fast-path model in one frame chunk to `model_file` (ONNX, inputs and
    outputs named `ENGINE_INPUT_NAMES` / `ENGINE_OUTPUT_NAMES`): the selected-query head with static shapes
    (`graph="fast"`), or all queries' masks with dynamic frames and sentences (`"full"`, exported on 2 frames and 2
    sentences). With `int8_file`, also writes ONNX Runtime's dynamic int8 quantization of the MatMul weights."""
    from referformer.kernels import onnx_translation_table

    module = SelectedQueryGraph(build_model(architecture, "fast", chunk=None), output_all_queries=graph == "full")
    dynamic_shapes = None
    if graph == "full":
        num_frames, num_sentences = 2, 2
        frames = torch.export.Dim("num_frames", min=1, max=4096)
        sentences = torch.export.Dim("num_sentences", min=1, max=256)
        dynamic_shapes = {"pixel_values": {1: frames}, "input_ids": {0: sentences}}
    start = time.perf_counter()
    program = torch.onnx.export(
        module,
        make_inputs(architecture, num_frames, num_sentences, "cpu"),
        dynamo=True,
        input_names=list(ENGINE_INPUT_NAMES),
        output_names=list(ENGINE_OUTPUT_NAMES),
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=onnx_translation_table(),
    )
    program.save(model_file)
    export_seconds = time.perf_counter() - start
    quantize_seconds = None
    if int8_file is not None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        start = time.perf_counter()
        quantize_dynamic(model_file, int8_file, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        quantize_seconds = time.perf_counter() - start
    return PreparedGraph(export_seconds, quantize_seconds)


Inference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def onnxruntime_session(model_file: str, precision: str, threads: int, input_shapes: dict[str, tuple[int, ...]]) -> Inference:
    """ONNX Runtime's CPU provider with all graph optimizations on `threads` intra-op threads. The precision is the
    file's (int8: the quantized graph); the session takes any shapes the graph accepts."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(list(ENGINE_OUTPUT_NAMES), feeds)


def openvino_session(model_file: str, precision: str, threads: int, input_shapes: dict[str, tuple[int, ...]]) -> Inference:
    """OpenVINO's CPU plugin compiled from the ONNX file for `input_shapes` (its CPU transformations fail on the
    full graph's dynamic frame dimension), one latency-bound stream of `threads` threads, in `precision` (fp32 or
    bf16, the plugin's `INFERENCE_PRECISION_HINT`)."""
    import openvino

    core = openvino.Core()
    model = core.read_model(model_file)
    model.reshape(input_shapes)
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()

    def infer(feeds):
        results = request.infer(feeds)
        return [np.array(results[compiled.output(name)]) for name in ENGINE_OUTPUT_NAMES]

    return infer


ENGINE_SESSIONS = {"onnxruntime": onnxruntime_session, "openvino": openvino_session}


def engine_not_run_reason(engine: str, precision: str) -> str | None:
    """Why `engine` has no `precision` mode on this machine (None: it runs)."""
    if engine == "onnxruntime" and precision == "bf16":
        return "the CPU execution provider has no bf16 mode"
    if engine == "openvino" and precision == "bf16":
        import openvino

        if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "this CPU has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES)"
    if engine == "openvino" and precision == "int8":
        return ("needs NNCF post-training quantization (not in the export extra) calibrated on real clips: random "
                "frames would calibrate the activations on noise")
    return None


def run_engine(architecture: Architecture, engine: str, precision: str, model_file: str, num_frames: int,
               num_sentences: int, threads: int, selection_file: str) -> EngineTiming:
    """One engine row: creates the engine's session (timed apart), runs the clip once to warm up and once timed, and
    saves its `Selection` to `selection_file`."""
    pixel_values, input_ids = make_inputs(architecture, num_frames, num_sentences, "cpu")
    feeds = {"pixel_values": pixel_values.numpy(), "input_ids": input_ids.numpy()}
    start = time.perf_counter()
    infer = ENGINE_SESSIONS[engine](model_file, precision, threads, {name: feed.shape for name, feed in feeds.items()})
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    infer(feeds)
    warm_up_seconds = time.perf_counter() - start
    start = time.perf_counter()
    outputs = infer(feeds)
    seconds = time.perf_counter() - start
    Selection.of(*(torch.from_numpy(output) for output in outputs)).save(selection_file)
    return EngineTiming(**asdict(timing(seconds, num_frames, warm_up_seconds, "cpu")), compile_seconds=compile_seconds)


def run_stream(architecture: Architecture, num_frames: int, chunk: int, device: str, window: int, overlap: int,
               online: bool) -> StreamTiming:
    """Streams `num_frames` random frames (a generator cycling over 8 of them) with one sentence, through ReferFormer
    or (`online`) OnlineRefer, which decodes frame by frame."""
    from referformer import ReferFormerProcessor, ReferFormerVideoProcessor
    from referformer.cli_presets import build_shapes_tokenizer
    from referformer.inference import ReferringVideoSegmenter

    processor = ReferFormerProcessor(ReferFormerVideoProcessor(), build_shapes_tokenizer())
    segmenter = ReferringVideoSegmenter(build_model(architecture, "fast", chunk, online), processor, device=device)
    frame_shape = (8, architecture.height, architecture.width, 3)
    pool = np.random.default_rng(0).integers(0, 256, frame_shape, dtype=np.uint8)

    def frames(count):
        return (pool[index % len(pool)] for index in range(count))

    start = time.perf_counter()
    sum(1 for _ in segmenter.stream(frames(WARM_UP_FRAMES), ["the red square"], window=window, overlap=overlap))
    warm_up_seconds = time.perf_counter() - start
    start, start_cpu = time.perf_counter(), cpu_seconds()
    count = sum(1 for _ in segmenter.stream(frames(num_frames), ["the red square"], window=window, overlap=overlap))
    seconds, used_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    assert count == num_frames, (count, num_frames)
    return StreamTiming(**asdict(timing(seconds, num_frames, warm_up_seconds, device)),
                        cpu_seconds_per_frame=used_cpu / num_frames)


def count_gflop(architecture: Architecture, num_frames: int, chunk: int, device: str) -> float:
    """Matmul and convolution GFLOP of one fast fp32 forward (the deformable sampling is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    # Frozen parameters instead of `no_grad`: the counter's module tracker needs grad mode on.
    model = build_model(architecture, "fast", chunk).to(device).requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        pixel_values, input_ids = make_inputs(architecture, num_frames, 1, device)
        model(pixel_values=pixel_values, input_ids=input_ids, output_all_queries=False)
    return counter.get_total_flops() / 1e9


def matmul_peaks(device: str, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Matmul throughput of this machine in GFLOP/s (GOP/s for int8), best of `repeats` square products: "fp32",
    "bf16" and, on the CPU, "int8" (`torch._int_mm`, int8 inputs, int32 sums: what dynamic int8 layers run)."""
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    operands = {"fp32": (torch.mm, first, second), "bf16": (torch.mm, first.bfloat16(), second.bfloat16())}
    if device == "cpu":
        operands["int8"] = (torch._int_mm, first.clamp(-127, 127).to(torch.int8), second.clamp(-127, 127).to(torch.int8))
    peaks = {}
    for name, (product, left, right) in operands.items():
        left, right = left.to(device), right.to(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product(left, right)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def processor_description(device: str) -> str:
    """The processor's name and the instruction-set features that decide which precision is fast."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    relevant = [flag for flag in CPU_FEATURES if flag in flags]
    return f"{fields.get('model name', platform.processor() or platform.machine())} ({' '.join(relevant) or 'no AVX-512 / AMX features'})"


def child(args) -> None:
    torch.set_num_threads(args.threads)
    architecture = TINY if args.tiny else RELEASED
    if args.task == "run":
        result = run(architecture, args.path, args.dtype, args.num_frames, args.num_sentences, args.chunk, args.device,
                     args.selection_file)
    elif args.task == "export":
        result = export_graph(architecture, args.engine_graph, args.num_frames, args.num_sentences, args.model_file,
                              args.int8_file)
    elif args.task == "engine":
        result = run_engine(architecture, args.engine, args.dtype, args.model_file, args.num_frames,
                            args.num_sentences, args.threads, args.selection_file)
    elif args.task == "stream":
        result = run_stream(architecture, args.num_frames, args.chunk, args.device, args.window, args.overlap,
                            args.online)
    elif args.task == "flops":
        result = {"gflop": count_gflop(architecture, args.num_frames, args.chunk, args.device)}
    else:
        result = matmul_peaks(args.device)
    print(json.dumps(result if isinstance(result, dict) else asdict(result)))


class RowKilled(RuntimeError):
    """A row's subprocess was killed (SIGKILL: on Linux, the out-of-memory killer when a row needs more memory than
    the machine has)."""


def in_subprocess(args, *options) -> dict:
    command = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device, "--chunk",
               str(args.chunk), *(["--tiny"] if args.tiny else []), *options]
    environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode == -signal.SIGKILL:
        raise RowKilled(f"killed (SIGKILL; out of memory?): {' '.join(options)}")
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mask_iou(first: torch.Tensor, second: torch.Tensor) -> float:
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


def comparison_cells(row: Row, speed_reference: Timing | None, mask_reference: Selection | None) -> list[str]:
    """Table cells: the speed-up over `speed_reference`, and the worst per-sentence mask IoU and the largest score
    difference against `mask_reference` ("-" without a reference)."""
    speed_up = "-" if speed_reference is None else f"{speed_reference.seconds / row.timing.seconds:.2f}"
    if mask_reference is None:
        return [speed_up, "-", "-"]
    iou = min(mask_iou(a, b) for a, b in zip(row.selection.masks, mask_reference.masks))
    score_diff = float((row.selection.scores - mask_reference.scores).abs().max())
    return [speed_up, f"{iou:.4f}", f"{score_diff:.1e}"]


def print_row(*cells) -> None:
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


@dataclass
class EngineReferences:
    """What the engine rows of one clip length and sentence count compare with: the reference fp32 row's timing and
    the eager fast fp32 row's selection (None where not run)."""

    num_frames: int
    num_sentences: int
    reference: Timing | None
    fast: Selection | None


def engine_rows(args, folder: Path, clips: list[EngineReferences]) -> None:
    """Exports the graph (once per clip for the fast graph, once for the full one) and runs every engine and
    precision of `args` on each clip, each in its own subprocess; prints their table and export/compile times."""
    header = ("engine", "graph", "precision", "T", "sentences", "s/frame", "peak GiB", "x ref fp32",
              "IoU vs fast fp32", "max |score diff| vs fast fp32")
    print(f"\nexported graph in ONNX Runtime / OpenVINO (CPU, {args.threads} threads), agreement against the eager fast "
          "fp32 row:\n", flush=True)
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    modes = [(engine, precision) for engine in args.engines for precision in args.engine_precisions]
    quantize = ("onnxruntime", "int8") in modes
    graph_name = ENGINE_GRAPHS[args.engine_graph]
    export_times, compile_times = [], {engine: [] for engine in args.engines}
    model_file = None
    for clip in clips:
        if model_file is None or args.engine_graph == "fast":
            model_file = folder / f"{args.engine_graph}-{clip.num_frames}-{clip.num_sentences}.onnx"
            prepared = PreparedGraph(**in_subprocess(
                args, "--task", "export", "--engine_graph", args.engine_graph, "--num_frames", str(clip.num_frames),
                "--num_sentences", str(clip.num_sentences), "--model_file", str(model_file),
                *(["--int8_file", str(model_file.with_suffix(".int8.onnx"))] if quantize else []),
            ))
            shapes = "dynamic T and sentences" if args.engine_graph == "full" else (
                f"T={clip.num_frames} sentences={clip.num_sentences}")
            export_times.append(f"{args.engine_graph} graph, {shapes}: {prepared.export_seconds:.0f} s")
            if prepared.quantize_seconds is not None:
                compile_times["onnxruntime"].append(f"int8 quantization ({shapes}) {prepared.quantize_seconds:.0f} s")
        for engine, precision in modes:
            reason = engine_not_run_reason(engine, precision)
            if reason is not None:
                print_row(engine, "-", precision, clip.num_frames, clip.num_sentences, f"not run: {reason}", "", "", "",
                          "")
                continue
            engine_file = model_file.with_suffix(".int8.onnx") if precision == "int8" else model_file
            selection_file = str(folder / f"{engine}-{precision}-{clip.num_frames}-{clip.num_sentences}.pt")
            try:
                result = EngineTiming(**in_subprocess(
                    args, "--task", "engine", "--engine", engine, "--dtype", precision, "--model_file",
                    str(engine_file), "--num_frames", str(clip.num_frames), "--num_sentences", str(clip.num_sentences),
                    "--selection_file", selection_file,
                ))
            except RowKilled:  # the engine's whole-clip graph did not fit this machine's memory: say so, go on
                print_row(engine, graph_name, precision, clip.num_frames, clip.num_sentences,
                          "killed (SIGKILL: out of memory on this machine)", "", "", "", "")
                continue
            row = Row(result, Selection.load(selection_file))
            print_row(engine, graph_name, precision, clip.num_frames, clip.num_sentences,
                      f"{result.seconds_per_frame:.2f}", f"{result.peak_gib:.2f}",
                      *comparison_cells(row, clip.reference, clip.fast))
            compile_times[engine].append(f"{precision} T={clip.num_frames} sentences={clip.num_sentences} "
                                         f"{result.compile_seconds:.1f} s")
    print("ONNX export (torch.onnx.export, dynamo): " + ", ".join(export_times), flush=True)
    for engine, times in compile_times.items():
        if times:
            what = "session creation" if engine == "onnxruntime" else "model compilation"
            print(f"{engine} {what}: " + ", ".join(times), flush=True)


def main(args) -> None:
    architecture = TINY if args.tiny else RELEASED
    peaks = in_subprocess(args, "--task", "peak")
    print(f"device {args.device}: {processor_description(args.device)}, {args.threads} threads, {architecture.name} "
          f"on {architecture.height}x{architecture.width} frames; 2048x2048 matmul peaks: "
          + ", ".join(f"{name} {value:.0f} {'GOP/s' if name == 'int8' else 'GFLOP/s'}" for name, value in peaks.items()),
          flush=True)
    header = ("path", "dtype", "T", "sentences", "s/frame", "peak GiB", "x ref fp32", "IoU vs ref fp32", "max |score diff|")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    paths = ("reference", "fast") + ("compiled",) * args.compile + ("openvino",) * args.openvino
    compile_times, engine_clips = [], []
    with tempfile.TemporaryDirectory() as folder:
        for num_frames in args.frames:
            for num_sentences in args.sentences:
                results: dict[tuple[str, str], Row] = {}
                for path in paths:
                    if path == "reference" and num_frames > args.reference_max_frames:
                        reason = f"not run: T > --reference_max_frames {args.reference_max_frames}"
                        print(f"| reference | - | {num_frames} | {num_sentences} | {reason} |||||", flush=True)
                        continue
                    for dtype in args.dtypes:
                        if dtype == "int8" and path != "fast":
                            continue  # int8 is a mode of the fast path (the reference path is the original's fp32)
                        selection_file = str(Path(folder) / f"{path}-{dtype}-{num_frames}-{num_sentences}.pt")
                        result = Timing(**in_subprocess(
                            args, "--task", "run", "--path", path, "--dtype", dtype, "--num_frames", str(num_frames),
                            "--num_sentences", str(num_sentences), "--selection_file", selection_file,
                        ))
                        row = results[path, dtype] = Row(result, Selection.load(selection_file))
                        reference = results.get(("reference", "fp32"))
                        print_row(PATH_LABELS.get(path, path), dtype, num_frames, num_sentences, f"{result.seconds_per_frame:.2f}",
                                  f"{result.peak_gib:.2f}", *comparison_cells(
                                      row, reference and reference.timing, reference and reference.selection))
                        if path in ("compiled", "openvino"):
                            compile_times.append(f"{path} {dtype} T={num_frames} sentences={num_sentences}: "
                                                 f"{result.warm_up_seconds:.0f} s")
                reference, fast = results.get(("reference", "fp32")), results.get(("fast", "fp32"))
                engine_clips.append(EngineReferences(num_frames, num_sentences, reference and reference.timing,
                                                     fast and fast.selection))
        if compile_times:
            print("export / compile + first forward of the compiled and openvino rows: " + ", ".join(compile_times),
                  flush=True)
        if args.engines and engine_clips:
            engine_rows(args, Path(folder), engine_clips)
    if args.stream or args.online_frames:
        print("\nstreamed rows, also in CPU seconds per frame (user + system of the row's process):\n", flush=True)
        print("| path | T | s/frame | CPU s/frame | peak GiB |\n|---|---|---|---|---|", flush=True)
    for online, lengths in ((True, args.online_frames), (False, args.stream_frames if args.stream else [])):
        for num_frames in lengths:
            options = ["--online"] if online else []
            result = StreamTiming(**in_subprocess(args, "--task", "stream", "--num_frames", str(num_frames), "--window",
                                                  str(args.window), "--overlap", str(args.overlap), *options))
            name = "OnlineRefer stream (frame by frame)" if online else f"stream (window {args.window}, overlap {args.overlap})"
            print_row(name, num_frames, f"{result.seconds_per_frame:.2f}", f"{result.cpu_seconds_per_frame:.2f}",
                      f"{result.peak_gib:.2f}")
    if args.count_flops:
        for num_frames in args.frames:
            gflop = in_subprocess(args, "--task", "flops", "--num_frames", str(num_frames))["gflop"]
            print(f"fast fp32 T={num_frames}: {gflop:.1f} GFLOP (matmuls and convolutions)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[5, 36, 100, 300], help="Clip lengths T (none: only the streamed rows).")
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 5], help="Sentences per video.")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "int8"],
                        help="Precisions of the eager rows (int8: the fast path with referformer.quantization's "
                        "dynamic int8, CPU).")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Intra-op threads (default: all cores).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk", type=int, default=2, help="Frame chunk size of the fast path.")
    parser.add_argument(
        "--reference_max_frames", type=int, default=36, help="Longest clip the reference path runs on (memory, time)."
    )
    parser.add_argument(
        "--compile", action="store_true", help="Also run the fast path under torch.compile (inductor; minutes to compile)."
    )
    parser.add_argument("--openvino", action="store_true",
                        help="Also run the API's OpenVINO backend (backend='openvino', CPU) in the fp32 and bf16 of --dtypes.")
    parser.add_argument("--count_flops", action="store_true", help="Also count the fast path's fp32 GFLOP per T.")
    parser.add_argument("--stream", action="store_true", help="Also stream --stream_frames frames (fp32, one sentence).")
    parser.add_argument("--stream_frames", type=int, nargs="+", default=[100, 1000], help="Streamed video lengths.")
    parser.add_argument("--window", type=int, default=36, help="Frames per streaming window.")
    parser.add_argument("--overlap", type=int, default=8, help="Frames shared by consecutive streaming windows.")
    parser.add_argument("--online_frames", type=int, nargs="*", default=[],
                        help="Also stream these lengths through OnlineRefer (the released R50 architecture, online).")
    parser.add_argument("--engines", nargs="*", default=[], choices=sorted(ENGINE_SESSIONS),
                        help="Also run the exported ONNX graph in these engines (CPU), for every T and sentences.")
    parser.add_argument("--engine_graph", choices=sorted(ENGINE_GRAPHS), default="fast",
                        help="Graph the engines run: fast (exported per T and sentences) or full (one dynamic export).")
    parser.add_argument("--engine_precisions", nargs="+", default=["fp32", "bf16", "int8"],
                        choices=["fp32", "bf16", "int8"], help="Engine precisions (those an engine lacks say why).")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--online", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["run", "export", "engine", "flops", "peak", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["fast", "compiled", "reference", "openvino"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=sorted(ENGINE_SESSIONS), help=argparse.SUPPRESS)
    parser.add_argument("--num_frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--num_sentences", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--selection_file", help=argparse.SUPPRESS)
    parser.add_argument("--model_file", help=argparse.SUPPRESS)
    parser.add_argument("--int8_file", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if (arguments.engines or arguments.openvino) and arguments.device != "cpu":
        parser.error("--engines and --openvino run on the CPU: compare them with --device cpu rows")
    if arguments.task:
        child(arguments)
    else:
        main(arguments)
