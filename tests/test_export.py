"""Whole-model `torch.compile(fullgraph=True)`, `torch.export` and ONNX export (run in onnxruntime and OpenVINO) of a tiny
ReferFormer."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from helpers import FP32_ROUNDING, REPO_ROOT, random_inputs, randomize_weights, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, kernels
from referformer.ms_deform_attn import ms_deform_attn
from referformer.onnx_export import export_onnx


# Eager and compiled graphs run the same kernels; only fusion and summation order may differ.
COMPILE_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def cpu_op():
    """The compiled CPU operator, built on first use (cached across runs)."""
    assert kernels.is_available("cpu"), "the CPU operator failed to build, see the warning in the log"
    return torch.ops.referformer.ms_deform_attn


@pytest.fixture(scope="module")
def model(cpu_op):
    torch.manual_seed(0)
    return randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval())


def dynamic_video_and_text_shapes():
    """Number of frames and text length free; batch size and frame size static."""
    num_frames = torch.export.Dim("num_frames", min=1, max=64)
    text_length = torch.export.Dim("text_length", min=2, max=32)
    return {
        "pixel_values": {1: num_frames},
        "pixel_mask": {1: num_frames},
        "input_ids": {1: text_length},
        "attention_mask": {1: text_length},
    }


def assert_predictions_close(outputs, expected, tolerances):
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(outputs, name), getattr(expected, name), **tolerances, msg=name)


@pytest.mark.parametrize("custom_kernels", [True, False], ids=["custom_op", "pytorch_fallback"])
def test_compile_fullgraph_matches_eager(model, custom_kernels):
    if not custom_kernels:
        torch.manual_seed(0)
        config = unit_test_config(disable_custom_kernels=True)
        model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(config).eval())
    inputs = random_inputs(model.config)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = model(**inputs)
        outputs = compiled(**inputs)
    torch._dynamo.reset()
    assert_predictions_close(outputs, expected, COMPILE_TOLERANCE)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager(model):
    inputs = random_inputs(model.config)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(**inputs)
        outputs = compiled(**inputs)
    torch._dynamo.reset()
    assert_predictions_close(outputs, expected, FP32_ROUNDING)


def test_torch_export_static_equals_eager(model):
    inputs = random_inputs(model.config)
    exported = torch.export.export(model, (), kwargs=inputs)
    targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.referformer.ms_deform_attn.default in targets
    with torch.no_grad():
        expected = model(**inputs)
        outputs = exported.module()(**inputs)
    assert_predictions_close(outputs, expected, COMPILE_TOLERANCE)


def test_torch_export_dynamic_frames_and_text_length(model):
    exported = torch.export.export(
        model, (), kwargs=random_inputs(model.config), dynamic_shapes=dynamic_video_and_text_shapes()
    )
    for num_frames, text_length in ((1, 4), (3, 9)):
        inputs = random_inputs(model.config, num_frames=num_frames, text_length=text_length, seed=1)
        with torch.no_grad():
            expected = model(**inputs)
            outputs = exported.module()(**inputs)
        assert outputs.pred_masks.shape == (1, num_frames, model.config.num_queries, 16, 20)
        assert_predictions_close(outputs, expected, FP32_ROUNDING)


def run_onnx(onnx_program, path, inputs):
    import onnxruntime

    onnx_program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {argument.name: inputs[argument.name].numpy() for argument in session.get_inputs()})


# The flattened `ReferFormerSegmentationOutput` of the unit-test config (two decoder layers, auxiliary outputs).
ONNX_OUTPUT_NAMES = [
    "logits",
    "pred_boxes",
    "pred_masks",
    "reference_points",
    "auxiliary_outputs.0.logits",
    "auxiliary_outputs.0.pred_boxes",
    "auxiliary_outputs.0.pred_masks",
    "last_hidden_state",
    "encoder_last_hidden_state",
]


def mask_logits_rounding(mask_logits: torch.Tensor) -> dict:
    """Mask logits are long chains of fp32 sums (FPN, convolutions, dynamic head) over terms as large as the largest
    logit, and onnxruntime sums them in another order: the differences scale with that largest value, not with each
    logit (measured: up to 60 float32 epsilons of it, 1.2e-4 for logits up to 15-18). Allowed: 4 times as much."""
    largest = mask_logits.abs().max().item()
    return {"atol": 256 * torch.finfo(torch.float32).eps * largest, "rtol": FP32_ROUNDING["rtol"]}


def test_onnx_export_runs_in_onnxruntime(model, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the `export` extra (onnxscript)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="running the ONNX graph needs the `export` extra")
    onnx_program = export_onnx(model, frame_size=(64, 80))
    node_types = {(node.domain, node.op_type) for node in onnx_program.model.graph.all_nodes()}
    assert ("", "GridSample") in node_types
    assert not any(domain == "referformer" for domain, _ in node_types)
    onnx_program.save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ONNX_OUTPUT_NAMES
    assert session.get_outputs()[0].shape == ["batch_size", "num_frames", model.config.num_queries, 1]
    # Other batch sizes, frame counts and text lengths than the traced ones (2 clips, 2 frames, 8 tokens).
    for batch_size, num_frames, text_length in ((1, 2, 6), (3, 3, 9)):
        inputs = random_inputs(model.config, batch_size, num_frames, text_length=text_length, seed=1)
        with torch.no_grad():
            expected = model(**inputs)
        onnx_outputs = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
        outputs = dict(zip(ONNX_OUTPUT_NAMES, onnx_outputs))
        assert outputs["pred_masks"].shape == (batch_size, num_frames, model.config.num_queries, 16, 20)
        for name in ("logits", "pred_boxes"):
            np.testing.assert_allclose(outputs[name], getattr(expected, name).numpy(), **FP32_ROUNDING, err_msg=name)
        auxiliary_masks = expected.auxiliary_outputs[0]["pred_masks"]
        for name, masks in (("pred_masks", expected.pred_masks), ("auxiliary_outputs.0.pred_masks", auxiliary_masks)):
            np.testing.assert_allclose(outputs[name], masks.numpy(), **mask_logits_rounding(masks), err_msg=name)


def test_onnx_export_refuses_frame_chunks():
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config(frame_chunk_size=2)).eval()
    with pytest.raises(ValueError, match="frame_chunk_size = None"):
        export_onnx(model, frame_size=(64, 80))


class DeformableSampling(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def test_ms_deform_attn_onnx_translation_matches_reference(cpu_op, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the `export` extra (onnxscript)")
    pytest.importorskip("onnxruntime", reason="running the ONNX graph needs the `export` extra (onnxruntime)")
    generator = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor([[6, 5], [3, 4], [1, 2]])
    level_start_index = torch.tensor([0, 30, 42])
    inputs = {
        "value": torch.randn(2, 44, 3, 4, generator=generator),
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        # Some locations fall outside [0, 1] to exercise the zero padding.
        "sampling_locations": torch.rand(2, 7, 3, 3, 2, 2, generator=generator) * 1.4 - 0.2,
        "attention_weights": torch.rand(2, 7, 3, 3, 2, generator=generator),
    }
    onnx_program = torch.onnx.export(
        DeformableSampling().eval(), (), kwargs=inputs, dynamo=True, custom_translation_table=kernels.onnx_translation_table()
    )
    (output,) = run_onnx(onnx_program, tmp_path / "ms_deform_attn.onnx", inputs)
    expected = ms_deform_attn(*inputs.values(), use_custom_kernel=False)
    np.testing.assert_allclose(output, expected.numpy(), atol=1e-5, rtol=1e-5)


class SelectedQueryOutputs(torch.nn.Module):
    """The inference fast path's outputs as a tuple of tensors: logits, the selected query, its masks."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, pixel_mask, input_ids, attention_mask):
        outputs = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_all_queries=False,
        )
        return outputs.logits, outputs.selected_query_indices, outputs.pred_masks


def test_selected_query_onnx_graph_runs_in_onnxruntime_and_openvino(model, tmp_path):
    """The fast path's graph (selected-query mask head) in ONNX Runtime and in OpenVINO, whose shape inference
    rejects a GatherElements with narrower indices than its data in non-gathered dimensions (which ONNX allows)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the `export` extra (onnxscript)")
    pytest.importorskip("onnxruntime", reason="running the ONNX graph needs the `export` extra (onnxruntime)")
    openvino = pytest.importorskip("openvino", reason="running the ONNX graph in OpenVINO needs the `export` extra")
    # Two sentences of one video: the shared visual pass and a selected query per sentence.
    inputs = random_inputs(model.config, num_frames=3)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], inputs["input_ids"].flip(-1)])
    inputs["attention_mask"] = inputs["attention_mask"].repeat(2, 1)
    graph = SelectedQueryOutputs(model).eval()
    onnx_program = torch.onnx.export(
        graph, (), kwargs=inputs, dynamo=True, custom_translation_table=kernels.onnx_translation_table(),
        output_names=["logits", "selected_query_indices", "pred_masks"],
    )
    path = tmp_path / "selected_query.onnx"
    onnx_program.save(str(path))
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in graph(**inputs)]
    assert expected[2].shape == (2, 3, 1, 16, 20)
    onnxruntime_outputs = run_onnx(onnx_program, path, inputs)
    # f32 explicitly: on CPUs with bf16 units OpenVINO may default to bf16 inference.
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled({name: tensor.numpy() for name, tensor in inputs.items()})
    openvino_outputs = [results[compiled.output(name)] for name in ("logits", "selected_query_indices", "pred_masks")]
    for engine, outputs in (("onnxruntime", onnxruntime_outputs), ("openvino", openvino_outputs)):
        np.testing.assert_array_equal(outputs[1], expected[1], err_msg=f"{engine} selected_query_indices")
        for name, output, reference in zip(("logits", "pred_masks"), outputs[::2], expected[::2]):
            # Same computation, other kernels (GridSample per level, MatMul/Softmax attention): fp32 rounding.
            np.testing.assert_allclose(output, reference, **FP32_ROUNDING, err_msg=f"{engine} {name}")


FRESH_PROCESS_EXPORT = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from helpers import random_inputs, unit_test_config
    from referformer import ReferFormerForReferringVideoObjectSegmentation, kernels

    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval()
    inputs = random_inputs(model.config)
    try:
        torch.export.export(model, (), kwargs=inputs, strict=True)
    except Exception as error:
        assert "cannot build the compiled deformable-attention operator" in str(error), error
    else:
        raise AssertionError("a strict export before any build exported the PyTorch implementation")
    assert not kernels.build_attempted()
    exported = torch.export.export(model, (), kwargs=inputs)
    targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.referformer.ms_deform_attn.default in targets, "the fresh export ran the PyTorch implementation"
    assert torch.ops.aten.grid_sampler_2d.default not in targets
    print("fresh export ok")
    """
)


def test_export_in_a_fresh_process_builds_the_compiled_op(cpu_op):
    """Non-strict `torch.export` (also under `torch.onnx.export`) builds the op on first use like an eager call; a
    strict export, which cannot build, fails instead of exporting the `grid_sample` fallback. `cpu_op` has built the
    library into the cache that the fresh process loads it from."""
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_EXPORT, str(REPO_ROOT / "tests")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh export ok" in result.stdout
