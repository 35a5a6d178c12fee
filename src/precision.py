"""`dtype="auto"`: the precision that runs fastest on this machine, measured once and cached.

Which precision is fast depends on the processor, not on the model: on one 2-core Xeon (AVX-512 bf16, no AMX) a bf16
matmul ran at half the fp32 rate while int8 (VNNI) ran at 4x, on another machine of the same kind bf16 was 1.7x fp32.
The probe times the layer shape that dominates ReferFormer's per-pixel work (a feed-forward `Linear` 256 -> 1024 over
8,192 tokens, as at 360x640) in float32, under bf16 autocast and (CPU) in dynamic int8, and picks the fastest. The
choice is cached per machine (processor name, device, torch version, thread count) in
`~/.cache/referformer/precision.json` (`REFERFORMER_CACHE` moves it), so the probe (about a second) runs once.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn


__all__ = ["fastest_dtype"]

PROBE_TOKENS, PROBE_IN, PROBE_OUT, PROBE_REPEATS = 8192, 256, 1024, 5


def _cache_file() -> Path:
    return Path(os.environ.get("REFERFORMER_CACHE", Path.home() / ".cache" / "referformer")) / "precision.json"


def _machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
            processor = names[0] if names else processor
    return f"{processor} | {device.type} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _seconds(layer: nn.Module, inputs: torch.Tensor, autocast_dtype: torch.dtype | None) -> float:
    """Best time of `PROBE_REPEATS` calls (after one warm-up call)."""
    best = float("inf")
    with torch.no_grad(), torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for repeat in range(PROBE_REPEATS + 1):
            start = time.perf_counter()
            layer(inputs)
            if inputs.device.type == "cuda":
                torch.cuda.synchronize(inputs.device)
            if repeat:
                best = min(best, time.perf_counter() - start)
    return best


def probe_seconds(device: torch.device) -> dict[str, float]:
    """Seconds of the probe layer per precision that `device` runs: "fp32", "bf16" (where supported), "int8" (CPU)."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(PROBE_IN, PROBE_OUT).to(device).eval()
    inputs = torch.randn(PROBE_TOKENS, PROBE_IN, generator=generator).to(device)
    seconds = {"fp32": _seconds(layer, inputs, None)}
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        seconds["bf16"] = _seconds(layer, inputs, torch.bfloat16)
    if device.type == "cpu":
        from .quantization import quantize_dynamic_linears

        seconds["int8"] = _seconds(quantize_dynamic_linears(nn.Sequential(layer), {nn.Linear}), inputs, None)
    return seconds


def fastest_dtype(device: torch.device | str = "cpu") -> str:
    """The fastest precision on `device` ("fp32", "bf16" or "int8"), from the cached probe of this machine.

    Example:

    ```python
    >>> from referformer.precision import fastest_dtype
    >>> fastest_dtype("cpu") in ("fp32", "bf16", "int8")
    True

    ```
    """
    device = torch.device(device)
    cache_file = _cache_file()
    key = _machine_key(device)
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        seconds = probe_seconds(device)
        cache[key] = {"fastest": min(seconds, key=seconds.get), "seconds": seconds}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1))
        os.replace(temporary, cache_file)
    return cache[key]["fastest"]
