"""`benchmarks/bench_end_to_end.py` end to end on the tiny preset (its hidden `--tiny` option): the eager rows and the
exported graph in ONNX Runtime and OpenVINO, and the API's OpenVINO backend, each in its own subprocess as in a real run."""

import subprocess
import sys

import pytest

from helpers import REPO_ROOT


def table_rows(output: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown table rows of `output` whose first cell is `first_cell`."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in output.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] == first_cell]


@pytest.mark.slow
def test_engine_rows_of_the_full_graph_on_the_tiny_preset():
    pytest.importorskip("onnxruntime", reason="the engine rows need the `export` extra")
    openvino = pytest.importorskip("openvino", reason="the engine rows need the `export` extra")
    openvino_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "bench_end_to_end.py"), "--tiny", "--frames", "2", "3",
        "--sentences", "1", "--dtypes", "fp32", "int8", "--threads", "1", "--reference_max_frames", "2",
        "--engines", "onnxruntime", "openvino", "--engine_graph", "full", "--openvino",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    first_line = output.splitlines()[0]
    assert "matmul peaks: fp32 " in first_line and " GFLOP/s, bf16 " in first_line and " GOP/s" in first_line, first_line
    # int8 is a mode of the fast path: one row per clip length, none for the reference path.
    assert [row[1:3] for row in table_rows(output, "reference")] == [["fp32", "2"], ["-", "3"]], output
    int8_rows = [row for row in table_rows(output, "fast") if row[1] == "int8"]
    assert [row[2] for row in int8_rows] == ["2", "3"], output
    assert float(int8_rows[0][7]) >= 0 and float(int8_rows[0][7]) <= 1, int8_rows  # IoU against the reference fp32 row
    # The API's OpenVINO backend: fp32 only (int8 is a mode of the fast path), the masks of the fast fp32 path.
    backend_rows = table_rows(output, "openvino backend")
    assert [row[1:3] for row in backend_rows] == [["fp32", "2"], ["fp32", "3"]], output
    for row in backend_rows:
        assert float(row[7]) >= 0.99 and float(row[8]) <= 1e-4 if row[2] == "2" else row[7] == "-", row
    assert "openvino fp32 T=3 sentences=1: " in output, output
    # One dynamic export (traced on 2 frames and 2 sentences) serves both clip lengths and one sentence.
    assert output.count("full graph, dynamic T and sentences") == 1, output
    rows = {engine: table_rows(output, engine) for engine in ("onnxruntime", "openvino")}
    for engine, engine_rows in rows.items():
        ran = {(row[2], row[3]): row for row in engine_rows if not row[5].startswith("not run")}
        precisions = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16") if openvino_bf16 else ("fp32",)}
        assert set(ran) == {(precision, frames) for precision in precisions[engine] for frames in ("2", "3")}, output
        for (precision, frames), row in ran.items():
            assert row[1] == "full (all queries, dynamic T, N)" and row[4] == "1", row
            assert float(row[5]) >= 0 and float(row[6]) > 0, row  # s/frame (may round to 0.00), peak GiB
            # The speed-up column against the reference fp32 row, run at T=2 only.
            assert (row[7] != "-") == (frames == "2"), row
            iou, score_diff = float(row[8]), float(row[9])
            assert 0 <= iou <= 1 and score_diff >= 0, row
            if precision == "fp32":
                # Same computation as the eager fast fp32 row up to summation order: mask logits within fp32
                # rounding (1e-4, see helpers.FP32_ROUNDING), so only pixels whose logit is that close to 0 may flip,
                # and scores (sigmoids, slope <= 1/4) move by less than 1e-4.
                assert iou >= 0.99 and score_diff <= 1e-4, row
    not_run = {(row[0], row[2]): row[5] for rows_of_engine in rows.values() for row in rows_of_engine if row[5].startswith("not run")}
    assert set(not_run) == {("onnxruntime", "bf16"), ("openvino", "int8")} | (set() if openvino_bf16 else {("openvino", "bf16")})
    assert "no bf16 mode" in not_run["onnxruntime", "bf16"] and "NNCF" in not_run["openvino", "int8"]
    assert "onnxruntime session creation: int8 quantization" in output and "openvino model compilation: fp32" in output
