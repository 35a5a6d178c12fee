"""`dtype="auto"`: the probe of this machine's precisions, its per-machine cache, and the segmenter resolving "auto"."""

import json

import torch

from helpers import REPO_ROOT
from referformer import precision
from referformer.inference import ReferringVideoSegmenter


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"


def test_probe_times_every_precision_the_cpu_runs():
    seconds = precision.probe_seconds(torch.device("cpu"))
    assert set(seconds) == {"fp32", "bf16", "int8"}
    assert all(0 < value < 10 for value in seconds.values())


def test_the_fastest_precision_is_probed_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REFERFORMER_CACHE", str(tmp_path))
    calls = []

    def probe(device):
        calls.append(device)
        return {"fp32": 2.0, "bf16": 1.0, "int8": 3.0}

    monkeypatch.setattr(precision, "probe_seconds", probe)
    assert precision.fastest_dtype("cpu") == "bf16"
    assert precision.fastest_dtype("cpu") == "bf16" and len(calls) == 1  # the cache answers
    cache = json.loads((tmp_path / "precision.json").read_text())
    [(key, entry)] = cache.items()
    assert f"{torch.get_num_threads()} threads" in key and entry["seconds"]["int8"] == 3.0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 977)  # another thread count is another machine key
    assert precision.fastest_dtype("cpu") == "bf16" and len(calls) == 2


def test_the_segmenter_resolves_auto_to_the_cached_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("REFERFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "probe_seconds", lambda device: {"fp32": 2.0, "bf16": 3.0, "int8": 1.0})
    segmenter = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu", dtype="auto")
    assert segmenter.dtype == torch.qint8
    assert any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in segmenter.model.modules())
