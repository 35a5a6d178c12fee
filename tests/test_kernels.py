"""Tests of `referformer.kernels` and `referformer.ms_deform_attn`: the `referformer::ms_deform_attn` custom operator
against the PyTorch implementation, its autograd / torch.compile / torch.export integration, and the lazy loader with
its fallbacks."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from referformer import kernels
from referformer import ms_deform_attn as deformable_attention
from referformer.configuration_referformer import DISABLE_CUSTOM_KERNELS_ENV_VAR
from referformer.kernels import _loader
from referformer.ms_deform_attn import ms_deform_attn


LOADER_LOGGER = "referformer.kernels._loader"
# Several levels with odd sizes, a 1x1 level, and a power-of-two level on which exact pixel coordinates are
# representable for every location tested below.
SPATIAL_SHAPES = [(7, 9), (4, 8), (3, 5), (1, 1)]
TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}


def reference(*operands, **options):
    """The PyTorch implementation (`grid_sample` per level)."""
    return ms_deform_attn(*operands, use_custom_kernel=False, **options)


def level_tensors(spatial_shapes, device="cpu"):
    shapes = torch.tensor(spatial_shapes, dtype=torch.int64, device=device)
    sizes = shapes.prod(1)
    return shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def make_inputs(
    dtype=torch.float32,
    spatial_shapes=SPATIAL_SHAPES,
    batch_size=2,
    num_queries=11,
    num_heads=3,
    head_dim=6,
    num_points=4,
    seed=0,
    device="cpu",
):
    """Random operands; locations span [-0.25, 1.25] so that some samples are partly or fully outside the maps, and
    some values are zeroed like padded positions."""
    generator = torch.Generator().manual_seed(seed)
    shapes, starts = level_tensors(spatial_shapes)
    num_values = int(shapes.prod(1).sum())
    num_levels = len(spatial_shapes)
    value = torch.randn(batch_size, num_values, num_heads, head_dim, generator=generator, dtype=dtype)
    value[0, -7:] = 0
    value[-1, ::5] = 0
    locations = torch.rand(
        batch_size, num_queries, num_heads, num_levels, num_points, 2, generator=generator, dtype=dtype
    )
    locations = locations * 1.5 - 0.25
    weights = torch.rand(batch_size, num_queries, num_heads, num_levels, num_points, generator=generator, dtype=dtype)
    return [tensor.to(device) for tensor in (value, shapes, starts, locations, weights)]


def border_locations(dtype, num_queries=4, num_heads=2):
    """Locations on and around the borders of the maps, all giving exactly representable pixel coordinates:
    0 and 1 (pixel -0.5 and size - 0.5), 0.5 (an integer pixel on odd sizes) and, on the 4x8 level, every integer
    pixel from -1 (the last position whose right corner still receives gradient) to the size (fully outside)."""
    special = {level: [0.0, 1.0, 0.5] for level in range(len(SPATIAL_SHAPES))}
    height, width = SPATIAL_SHAPES[1]
    special[1] += [(pixel + 0.5) / width for pixel in range(-1, width + 1)]
    special[1] += [(pixel + 0.5) / height for pixel in range(-1, height + 1)]
    num_points = max(len(values) for values in special.values())
    locations = torch.empty(1, num_queries, num_heads, len(SPATIAL_SHAPES), num_points, 2, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    for level, values in special.items():
        values = torch.tensor(values, dtype=dtype)
        for coordinate in range(2):
            picks = torch.randint(len(values), (num_queries, num_heads, num_points), generator=generator)
            locations[0, :, :, level, :, coordinate] = values[picks]
    return locations


@pytest.fixture(scope="module")
def cpu_op():
    """The CPU operator, built on first use (cached across runs)."""
    assert kernels.is_available("cpu"), "the CPU operator failed to build, see the warning in the log"
    return torch.ops.referformer.ms_deform_attn


def assert_op_matches_reference(op, inputs, tolerances):
    value, shapes, starts, locations, weights = inputs
    leaves = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
    reference_leaves = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
    output = op(leaves[0], shapes, starts, leaves[1], leaves[2])
    expected = reference(
        reference_leaves[0], shapes, starts, reference_leaves[1], reference_leaves[2]
    )
    torch.testing.assert_close(output, expected, **tolerances)

    generator = torch.Generator().manual_seed(2)
    grad_output = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)
    grads = torch.autograd.grad(output, leaves, grad_output)
    expected_grads = torch.autograd.grad(expected, reference_leaves, grad_output)
    for name, grad, expected_grad in zip(("value", "sampling_locations", "attention_weights"), grads, expected_grads):
        torch.testing.assert_close(
            grad, expected_grad, **tolerances, msg=lambda message, name=name: f"grad of {name}: {message}"
        )


def test_cpu_op_is_registered(cpu_op):
    for op_name in ("referformer::ms_deform_attn", "referformer::_ms_deform_attn_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op_name, "CPU")
    assert kernels.is_available(torch.device("cpu"))
    assert not kernels.is_available("meta")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_op_matches_reference(cpu_op, dtype):
    assert_op_matches_reference(cpu_op, make_inputs(dtype), TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_op_matches_reference_on_borders(cpu_op, dtype):
    value, shapes, starts, _, _ = make_inputs(dtype, batch_size=1, num_heads=2)
    locations = border_locations(dtype)
    weights = torch.rand(locations.shape[:-1], generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert_op_matches_reference(cpu_op, (value, shapes, starts, locations, weights), TOLERANCES[dtype])


def test_cpu_op_border_semantics(cpu_op):
    # A 1x2 map [[1, 2]]: x = 0 is the pixel -0.5 (half of the first pixel), x = 1 is 1.5 (half of the last one),
    # x = 0.75 is exactly the last pixel, x = 1.25 is fully outside.
    value = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
    shapes, starts = level_tensors([(1, 2)])
    x = torch.tensor([0.0, 1.0, 0.75, 1.25], dtype=torch.float64)
    locations = torch.stack([x, torch.full_like(x, 0.5)], -1).view(1, 4, 1, 1, 1, 2)
    weights = torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)
    output = cpu_op(value, shapes, starts, locations, weights)
    torch.testing.assert_close(output.flatten(), torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64))


def test_cpu_op_handles_non_contiguous_inputs(cpu_op):
    value, shapes, starts, locations, weights = make_inputs(torch.float64)
    value = value.transpose(0, 1).contiguous().transpose(0, 1)
    locations = locations.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value.is_contiguous() and not locations.is_contiguous()
    assert_op_matches_reference(cpu_op, (value, shapes, starts, locations, weights), TOLERANCES[torch.float64])


def test_cpu_op_is_thread_count_invariant(cpu_op):
    """Large enough for the forward and backward loops to be split across threads: each output element is computed
    by one thread in a fixed order, so results are bitwise identical to a single-threaded run and match the
    reference."""
    inputs = make_inputs(torch.float32, num_queries=300, num_heads=4, head_dim=8)
    assert_op_matches_reference(cpu_op, inputs, TOLERANCES[torch.float32])

    def run():
        value, shapes, starts, locations, weights = [tensor.clone() for tensor in inputs]
        leaves = [tensor.requires_grad_() for tensor in (value, locations, weights)]
        output = cpu_op(leaves[0], shapes, starts, leaves[1], leaves[2])
        return (output, *torch.autograd.grad(output, leaves, torch.ones_like(output)))

    num_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(os.cpu_count(), 2))
        parallel = run()
        torch.set_num_threads(1)
        serial = run()
    finally:
        torch.set_num_threads(num_threads)
    for parallel_result, serial_result in zip(parallel, serial):
        assert torch.equal(parallel_result, serial_result)


def test_gradcheck(cpu_op):
    value, shapes, starts, locations, weights = make_inputs(
        torch.float64, spatial_shapes=[(3, 5), (2, 2)], batch_size=2, num_queries=3, num_heads=2, head_dim=3,
        num_points=2,
    )
    # Random locations are (almost surely) not on integer pixel coordinates, where interpolation is not differentiable.
    inputs = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(cpu_op, inputs, eps=1e-6, atol=1e-7)


def test_ms_deform_attn_uses_the_op(cpu_op, monkeypatch):
    inputs = make_inputs(torch.float32)
    monkeypatch.setattr(deformable_attention, "_grid_sample_attention", pytest.fail)
    assert torch.equal(ms_deform_attn(*inputs), cpu_op(*inputs))


def test_ms_deform_attn_falls_back_for_unsupported_dtypes(cpu_op):
    inputs = make_inputs(torch.float32)
    inputs = [tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor for tensor in inputs]
    torch.testing.assert_close(ms_deform_attn(*inputs), reference(*inputs))


def test_op_under_autocast_runs_in_float32_with_mixed_operands(cpu_op, monkeypatch):
    """The operator's autocast rule takes bf16 values with fp32 locations (what the model's projections give under
    autocast) and computes on float32 copies; its gradients flow back in the operands' dtypes."""
    value, shapes, starts, locations, weights = make_inputs(torch.float32)
    expected = cpu_op(value, shapes, starts, locations, weights)
    half_value = value.to(torch.bfloat16).requires_grad_()
    locations = locations.clone().requires_grad_()
    monkeypatch.setattr(deformable_attention, "_grid_sample_attention", pytest.fail)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = ms_deform_attn(half_value, shapes, starts, locations, weights.to(torch.bfloat16))
    assert output.dtype == torch.float32
    # Only the bf16 rounding of the values and weights separates the results.
    torch.testing.assert_close(output, expected, atol=0.05, rtol=0.02)
    assert not torch.equal(output, expected)
    output.sum().backward()
    assert half_value.grad.dtype == torch.bfloat16 and locations.grad.dtype == torch.float32
    assert half_value.grad.abs().sum() > 0 and locations.grad.abs().sum() > 0


def test_reference_under_autocast_matches_the_op(cpu_op):
    value, shapes, starts, locations, weights = make_inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        operands = (value.to(torch.bfloat16), shapes, starts, locations, weights.to(torch.bfloat16))
        torch.testing.assert_close(reference(*operands), cpu_op(*operands))


def test_opcheck(cpu_op):
    value, shapes, starts, locations, weights = make_inputs(torch.float64, num_queries=5)
    inputs = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_())
    torch.library.opcheck(cpu_op.default, inputs)


class DeformableSampling(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.output_proj = torch.nn.Linear(channels, channels)

    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        output = ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return self.output_proj(output)


def test_torch_compile_fullgraph(cpu_op):
    torch.manual_seed(0)
    module = DeformableSampling(channels=3 * 6)
    value, shapes, starts, locations, weights = make_inputs(torch.float32)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")

    leaves = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
    expected_leaves = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
    output = compiled(leaves[0], shapes, starts, leaves[1], leaves[2])
    expected = module(expected_leaves[0], shapes, starts, expected_leaves[1], expected_leaves[2])
    torch.testing.assert_close(output, expected, **TOLERANCES[torch.float32])
    output.sum().backward()
    expected.sum().backward()
    for leaf, expected_leaf in zip(leaves, expected_leaves):
        torch.testing.assert_close(leaf.grad, expected_leaf.grad, **TOLERANCES[torch.float32])


def test_torch_compile_inductor(cpu_op):
    inputs = make_inputs(torch.float32)
    compiled = torch.compile(ms_deform_attn, fullgraph=True, dynamic=False)
    expected = reference(*inputs)
    torch.testing.assert_close(compiled(*inputs), expected, **TOLERANCES[torch.float32])


def test_torch_export(cpu_op):
    module = DeformableSampling(channels=3 * 6).eval()
    inputs = tuple(make_inputs(torch.float32))
    exported = torch.export.export(module, inputs)
    targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.referformer.ms_deform_attn.default in targets
    torch.testing.assert_close(exported.module()(*inputs), module(*inputs))


def test_compiling_before_the_build_uses_the_reference(cpu_op, monkeypatch):
    monkeypatch.setattr(_loader, "_state", None)
    monkeypatch.setattr(_loader, "_build_and_load", lambda: pytest.fail("must not build while compiling"))
    inputs = make_inputs(torch.float32)
    torch._dynamo.reset()
    output = torch.compile(ms_deform_attn, backend="eager")(*inputs)
    torch._dynamo.reset()
    torch.testing.assert_close(output, reference(*inputs))
    assert _loader._state is None


def test_the_off_switch_forces_the_reference_and_the_env_var_sets_its_default(cpu_op, monkeypatch):
    from referformer import ReferFormerConfig
    from referformer.ms_deform_attn import MultiScaleDeformableAttention

    calls = []
    grid_sample_attention = deformable_attention._grid_sample_attention

    def spy(*args):
        calls.append(args)
        return grid_sample_attention(*args)

    monkeypatch.setattr(deformable_attention, "_grid_sample_attention", spy)
    value, shapes, starts, locations, weights = make_inputs(torch.float32)
    MultiScaleDeformableAttention(use_custom_kernel=False)(value, shapes, SPATIAL_SHAPES, starts, locations, weights, 64)
    assert len(calls) == 1
    MultiScaleDeformableAttention()(value, shapes, SPATIAL_SHAPES, starts, locations, weights, 64)
    assert len(calls) == 1  # the compiled operator
    monkeypatch.setenv(DISABLE_CUSTOM_KERNELS_ENV_VAR, "1")
    assert ReferFormerConfig().disable_custom_kernels is True
    assert ReferFormerConfig(disable_custom_kernels=False).disable_custom_kernels is False
    monkeypatch.delenv(DISABLE_CUSTOM_KERNELS_ENV_VAR)
    assert ReferFormerConfig().disable_custom_kernels is False


def test_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    attempts = []

    def broken_build(*args, **kwargs):
        attempts.append(args)
        raise RuntimeError("Error building extension: simulated compiler failure")

    monkeypatch.setattr(_loader, "_state", None)
    monkeypatch.setattr(_loader, "compile_extension", broken_build)
    inputs = make_inputs(torch.float32)
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        first = ms_deform_attn(*inputs)
        second = ms_deform_attn(*inputs)
        assert not kernels.is_available("cpu")
    warnings = [record for record in caplog.records if record.name == LOADER_LOGGER]
    assert len(attempts) == 1
    assert len(warnings) == 1 and "simulated compiler failure" in warnings[0].getMessage()
    assert _loader._state is False
    expected = reference(*inputs)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_missing_ninja_warns_and_falls_back(monkeypatch, caplog):
    from torch.utils import cpp_extension

    monkeypatch.setattr(_loader, "_state", None)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        assert not kernels.is_available("cpu")
        assert not kernels.is_available("cpu")
    warnings = [record.getMessage() for record in caplog.records if record.name == LOADER_LOGGER]
    assert len(warnings) == 1 and "ninja is not installed" in warnings[0]


def test_broken_sources_fall_back_in_a_fresh_process(tmp_path):
    """A real compiler error (sources replaced by invalid C++) gives one warning and the reference results."""
    csrc = tmp_path / "csrc"
    for source in _loader.CPU_SOURCES:
        (csrc / source).parent.mkdir(parents=True, exist_ok=True)
        (csrc / source).write_text("this is not C++\n")
    script = textwrap.dedent(
        f"""
        import logging, torch
        from pathlib import Path
        from referformer import kernels
        from referformer.kernels import _loader
        from referformer.ms_deform_attn import ms_deform_attn
        logging.basicConfig(level=logging.WARNING, format="WARNING-RECORD %(name)s %(message)s")
        _loader.CSRC_DIR = Path({str(csrc)!r})
        value = torch.randn(1, 6, 1, 2)
        shapes = torch.tensor([[2, 3]])
        starts = torch.tensor([0])
        locations = torch.rand(1, 4, 1, 1, 2, 2)
        weights = torch.rand(1, 4, 1, 1, 2)
        for _ in range(2):
            output = ms_deform_attn(value, shapes, starts, locations, weights)
        expected = ms_deform_attn(value, shapes, starts, locations, weights, use_custom_kernel=False)
        assert torch.equal(output, expected)
        print("available", kernels.is_available("cpu"))
        """
    )
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "build")}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "available False" in completed.stdout
    warnings = [line for line in completed.stderr.splitlines() if line.startswith("WARNING-RECORD referformer")]
    assert len(warnings) == 1 and "Falling back to the PyTorch implementation" in warnings[0], completed.stderr


def test_find_cuda_home_skips_roots_without_cudart(tmp_path, monkeypatch):
    # `bin/nvcc` on PATH is a symlink into the toolkit; its parent has no lib64/libcudart (like /usr/local).
    toolkit = tmp_path / "cuda-99.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "lib64").mkdir()
    (toolkit / "bin" / "nvcc").write_text("")
    (toolkit / "lib64" / "libcudart.so").write_text("")
    wrapper_root = tmp_path / "local"
    (wrapper_root / "bin").mkdir(parents=True)
    (wrapper_root / "bin" / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    os.chmod(toolkit / "bin" / "nvcc", 0o755)
    monkeypatch.setenv("PATH", str(wrapper_root / "bin"))
    monkeypatch.setenv("CUDA_HOME", str(wrapper_root))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert _loader.find_cuda_home() == str(toolkit)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda inputs: {0: inputs[0][0]}, ValueError, "value must be"),
        (lambda inputs: {1: inputs[1][:, :1]}, ValueError, "spatial_shapes must be"),
        (lambda inputs: {2: inputs[2][:2]}, ValueError, "levels of sampling_locations"),
        (lambda inputs: {3: inputs[3][..., :1]}, ValueError, "sampling_locations must be"),
        (lambda inputs: {3: inputs[3][:1]}, ValueError, "does not match the batch size"),
        (lambda inputs: {4: inputs[4][:, :2]}, ValueError, "attention_weights must be"),
        (lambda inputs: {3: inputs[3].double()}, TypeError, "same dtype"),
        (lambda inputs: {0: inputs[0].long(), 3: inputs[3].long(), 4: inputs[4].long()}, TypeError, "floating-point"),
        (lambda inputs: {1: inputs[1].int()}, TypeError, "must be int64"),
        (lambda inputs: {4: inputs[4].to("meta")}, ValueError, "attention_weights is on meta"),
        (lambda inputs: {0: inputs[0].numpy()}, TypeError, "value must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    inputs = make_inputs(torch.float32)
    for index, replacement in change(inputs).items():
        inputs[index] = replacement
    with pytest.raises(error, match=match):
        ms_deform_attn(*inputs)


def test_op_rejects_levels_outside_value(cpu_op):
    value, shapes, starts, locations, weights = make_inputs(torch.float32)
    with pytest.raises(RuntimeError, match="does not fit"):
        cpu_op(value[:, :-1], shapes, starts, locations, weights)
    with pytest.raises(ValueError, match="do not tile"):
        reference(value[:, :-1], shapes, starts, locations, weights)


@pytest.mark.slow
def test_cuda_sources_compile_for_hopper(tmp_path):
    """Builds the extension with the CUDA sources for sm_90 (no GPU needed) in a fresh process, and checks that the
    CUDA kernels are registered."""
    cuda_home = _loader.find_cuda_home()
    if cuda_home is None:
        pytest.skip("no CUDA toolkit with nvcc found")
    script = textwrap.dedent(
        f"""
        import torch
        from referformer.kernels import _loader
        _loader.compile_extension({str(tmp_path / "build")!r}, with_cuda=True, cuda_home={cuda_home!r})
        for name in ("referformer::ms_deform_attn", "referformer::_ms_deform_attn_backward"):
            for key in ("CPU", "CUDA"):
                print(name, key, torch._C._dispatch_has_kernel_for_dispatch_key(name, key))
        """
    )
    environment = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0"}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=1200
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    for name in ("referformer::ms_deform_attn", "referformer::_ms_deform_attn_backward"):
        for key in ("CPU", "CUDA"):
            assert f"{name} {key} True" in completed.stdout


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_op_matches_reference(dtype):
    assert kernels.is_available("cuda"), "the CUDA operator failed to build, see the warning in the log"
    inputs = make_inputs(dtype, device="cuda")
    assert_op_matches_reference(torch.ops.referformer.ms_deform_attn, inputs, TOLERANCES[dtype])
    border_inputs = make_inputs(dtype, batch_size=1, num_heads=2, device="cuda")
    border_inputs[3] = border_locations(dtype).cuda()
    generator = torch.Generator().manual_seed(3)
    border_inputs[4] = torch.rand(border_inputs[3].shape[:-1], generator=generator, dtype=dtype).cuda()
    assert_op_matches_reference(torch.ops.referformer.ms_deform_attn, border_inputs, TOLERANCES[dtype])


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_op_low_precision(dtype):
    assert kernels.is_available("cuda")
    inputs = make_inputs(torch.float32, device="cuda")
    expected = reference(*inputs)
    low_precision = [tensor.to(dtype) if tensor.is_floating_point() else tensor for tensor in inputs]
    output = ms_deform_attn(*low_precision)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=2e-2, atol=5e-2)


def test_reference_with_spatial_shapes_list_reads_no_tensor(monkeypatch):
    inputs = make_inputs(torch.float32)
    expected = reference(*inputs)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("read a tensor on the host"))
    output = reference(*inputs, spatial_shapes_list=SPATIAL_SHAPES)
    assert torch.equal(output, expected)


@pytest.mark.parametrize(
    "spatial_shapes_list, match",
    [
        (SPATIAL_SHAPES[:-1], "the 4 levels"),
        ([(7, 9), (4, 8), (3, 5), (1, 2)], "do not tile"),
        (torch.tensor(SPATIAL_SHAPES), "must be a list"),
    ],
)
def test_bad_spatial_shapes_list_raises_clear_errors(spatial_shapes_list, match):
    with pytest.raises(ValueError, match=match):
        ms_deform_attn(*make_inputs(torch.float32), spatial_shapes_list=spatial_shapes_list)


def test_fallback_with_spatial_shapes_list_compiles_without_graph_breaks():
    inputs = make_inputs(torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda *operands: reference(*operands, spatial_shapes_list=SPATIAL_SHAPES),
        fullgraph=True,
        backend="eager",
    )
    output = compiled(*inputs)
    torch._dynamo.reset()
    torch.testing.assert_close(output, reference(*inputs), **TOLERANCES[torch.float32])


def test_each_installation_builds_in_its_own_folder(tmp_path, monkeypatch):
    """Two checkouts (or environments) on one machine must not rebuild the library over each other's: the build folder
    names the sources' location; the same sources keep their folder (the cache survives across processes)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = _loader.default_build_directory(with_cuda=False)
    assert here == _loader.default_build_directory(with_cuda=False) and here.parent == tmp_path / "referformer"
    assert here.name.startswith(f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-cpu-")
    monkeypatch.setattr(_loader, "CSRC_DIR", tmp_path / "another-checkout" / "csrc")
    elsewhere = _loader.default_build_directory(with_cuda=False)
    assert elsewhere.parent == here.parent and elsewhere != here
