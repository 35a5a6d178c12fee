"""Lazy build and load of the C++/CUDA operators `torch.ops.referformer.*`.

Nothing is compiled at import. The first call that can use the operators builds them once with
`torch.utils.cpp_extension.load` into a stable cache directory (reused by later processes; torch's builder holds a
file lock there, so concurrent processes build one at a time) and loads the library. CUDA sources are compiled only
when a GPU is visible, a CUDA toolkit is found and ninja is installed. Any failure is reported by one warning and the
callers fall back to the PyTorch implementation.
"""

import contextlib
import glob
import hashlib
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import torch
from transformers.utils import logging

from ._registrations import register_python_implementations


logger = logging.get_logger(__name__)

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("ops/ms_deform_attn.cpp", "ops/cpu/ms_deform_attn_kernel.cpp")
CUDA_SOURCES = ("ops/cuda/ms_deform_attn_kernel.cu",)
EXTENSION_NAME = "referformer_ms_deform_attn"

# Tri-state cache: None = not tried, False = failed or disabled, frozenset = loaded, with the device types
# ("cpu", "cuda") the operators have kernels for.
_state: frozenset[str] | bool | None = None
_lock = threading.Lock()


def find_cuda_home() -> str | None:
    """Root of a usable CUDA toolkit: the first candidate holding `bin/nvcc` and `lib64/libcudart*`.

    torch guesses the parent of the `nvcc` found on PATH, which is wrong when that `nvcc` is a wrapper or a symlink
    outside the toolkit, so the resolved `nvcc` location and the conventional install paths are probed too.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        for path in (nvcc, os.path.realpath(nvcc)):
            candidates.append(os.path.dirname(os.path.dirname(path)))
    versioned = glob.glob("/usr/local/cuda-*")
    newest_first = sorted(versioned, key=lambda path: [int(part) for part in re.findall(r"\d+", path)], reverse=True)
    candidates += ["/usr/local/cuda", *newest_first]
    for candidate in candidates:
        if (
            candidate
            and os.path.isfile(os.path.join(candidate, "bin", "nvcc"))
            and glob.glob(os.path.join(candidate, "lib64", "libcudart*"))
        ):
            return candidate
    return None


def default_build_directory(with_cuda: bool) -> Path:
    """Cache directory of the build: `$TORCH_EXTENSIONS_DIR/referformer` or `~/.cache/referformer/kernels`, then one
    folder per torch version, Python version, CPU-only/CUDA variant and installed copy of the sources (a hash of
    `CSRC_DIR`'s path). Two installations sharing a folder would rebuild the library over each other's (their build files
    name different sources), so that one process could load a half-written library while another builds it."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "referformer"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "referformer" / "kernels"
    variant = f"cuda{torch.version.cuda}" if with_cuda else "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    installation = hashlib.sha256(str(CSRC_DIR.resolve()).encode()).hexdigest()[:10]
    return root.expanduser() / f"torch{torch.__version__}-{python}-{variant}-{installation}"


@contextlib.contextmanager
def _cuda_home(root: str):
    """Points torch's extension builder at the toolkit `root` for the duration of a build."""
    from torch.utils import cpp_extension

    previous_module_value, previous_env_value = cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME")
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = root
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = previous_module_value
        if previous_env_value is None:
            del os.environ["CUDA_HOME"]
        else:
            os.environ["CUDA_HOME"] = previous_env_value


def compile_extension(build_directory: str | os.PathLike, with_cuda: bool, cuda_home: str | None = None) -> str:
    """Builds (or reuses) the operator library in `build_directory` and loads it into `torch.ops.referformer`.

    Returns the path of the shared library. `cuda_home` is required when `with_cuda` is set.
    """
    from torch.utils import cpp_extension

    sources = [str(CSRC_DIR / source) for source in CPU_SOURCES]
    if with_cuda:
        if cuda_home is None:
            raise ValueError("compiling the CUDA sources requires the root of a CUDA toolkit")
        sources += [str(CSRC_DIR / source) for source in CUDA_SOURCES]
    os.makedirs(build_directory, exist_ok=True)
    with _cuda_home(cuda_home) if with_cuda else contextlib.nullcontext():
        return cpp_extension.load(
            name=EXTENSION_NAME + ("_cuda" if with_cuda else ""),
            sources=sources,
            extra_cflags=["-O3", "-fopenmp"],
            extra_cuda_cflags=["-O3"],
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(CSRC_DIR)],
            build_directory=str(build_directory),
            with_cuda=with_cuda,
            is_python_module=False,
        )


def _summarize(error: Exception) -> str:
    """The first compiler error of a failed build (torch's message starts with the whole command line), else the
    first line of the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    compiler_errors = [line for line in lines if "error:" in line.lower()]
    summary = (compiler_errors or lines or [""])[0]
    return summary if len(summary) <= 300 else summary[:297] + "..."


def _put_installed_ninja_on_path() -> None:
    """Makes the `ninja` of the `ninja` pip package findable when the environment's scripts folder is not on PATH
    (e.g. a virtual environment used without activating it)."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build_and_load() -> frozenset[str] | bool:
    """One attempt at building and loading; returns the new cache state and emits at most one warning."""
    from torch.utils import cpp_extension

    _put_installed_ninja_on_path()
    if not cpp_extension.is_ninja_available():
        logger.warning(
            "Could not build the custom multi-scale deformable attention kernel: ninja is not installed "
            "(`pip install ninja`). Falling back to the PyTorch implementation."
        )
        return False

    cuda_home = find_cuda_home() if torch.cuda.is_available() else None
    with_cuda = cuda_home is not None
    build_directory = default_build_directory(with_cuda)
    logger.info("Loading the multi-scale deformable attention kernel (built once, cached in %s)", build_directory)
    try:
        compile_extension(build_directory, with_cuda=with_cuda, cuda_home=cuda_home)
        register_python_implementations()
    except Exception as error:  # any build or load problem means "use the PyTorch path"
        logger.warning(
            "Could not build the custom multi-scale deformable attention kernel (%s: %s; build directory %s). "
            "Falling back to the PyTorch implementation.",
            type(error).__name__,
            _summarize(error),
            build_directory,
        )
        logger.debug("Full build error of the multi-scale deformable attention kernel", exc_info=True)
        return False

    if torch.cuda.is_available() and not with_cuda:
        logger.warning(
            "No CUDA toolkit (a directory with bin/nvcc and lib64/libcudart) was found, so the multi-scale deformable "
            "attention kernel was built for CPU only; CUDA inputs use the PyTorch implementation. Set CUDA_HOME to "
            "the toolkit root to build the CUDA kernel."
        )
    return frozenset(("cpu", "cuda") if with_cuda else ("cpu",))


def load_ms_deform_attn() -> frozenset[str]:
    """Builds and loads the operators on first use; returns the device types they have kernels for.

    Returns an empty set when the operators failed to build, or have not been built yet while Dynamo traces
    (`torch.compile`: building is never started from inside a compiled region). `torch.export` (non-strict, also under
    `torch.onnx.export(dynamo=True)`) runs the Python code, so it builds them like an eager call.
    """
    global _state
    if _state is None and not torch.compiler.is_dynamo_compiling():
        with _lock:
            if _state is None:
                _state = _build_and_load()
    return _state or frozenset()


def loaded_device_types() -> frozenset[str]:
    """Device types of the already loaded operators, without building anything."""
    return _state or frozenset()


def build_attempted() -> bool:
    """Whether this process has tried to build and load the operators (successfully or not)."""
    return _state is not None
