"""The documentation's examples run: the README's own-video snippet as written on a real MP4, every `>>>` example
of README.md and docs/*.md, and the `Example:` section every public class and function of the package carries
(doctests on the embedded tiny model, from the repository root)."""

import doctest
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, real_video


DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Doctest output is compared as text: ELLIPSIS lets an example elide what varies (object addresses, long arrays).
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# The pages whose main examples run on the embedded model: the model page, inference (streaming, sessions), evaluation.
RUNNABLE_DOCS = {"model_doc.md", "inference.md", "evaluation.md"}


def python_block_after(text: str, heading: str) -> str:
    """The first ```python block of `text` after the line `heading`."""
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_readme_own_video_snippet_runs_as_written_on_a_real_mp4(tmp_path):
    """The snippet a user copies first: run verbatim (a fresh process, in a folder holding `my_video.mp4` and the
    embedded model's folder) on a real MP4, 640x272 with 250 frames."""
    snippet = python_block_after((REPO_ROOT / "README.md").read_text(), "## Your own video")
    shutil.copy(real_video("bikes.mp4"), tmp_path / "my_video.mp4")
    (tmp_path / "checkpoints").symlink_to(REPO_ROOT / "checkpoints", target_is_directory=True)
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    shape_line = result.stdout.strip().splitlines()[-1]
    assert shape_line.startswith("(250, 272, 640)"), shape_line


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_doc_file_examples(path, monkeypatch):
    """Every `>>>` example of the file passes (paths in them are relative to the repository root)."""
    monkeypatch.chdir(REPO_ROOT)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(path.read_text(), {}, path.name, str(path), 0)
    if not test.examples:
        assert path.name not in RUNNABLE_DOCS, f"{path.name} lost its runnable examples"
        pytest.skip(f"{path.name} has no >>> examples (its snippets need a converted checkpoint or dataset)")
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} of {len(test.examples)} examples of {path.name} failed (output above)"


def public_objects():
    """(qualified name, object) of the package's public classes and functions: `referformer.__all__` and the `__all__`
    of the modules users import from directly."""
    objects = {}
    for module_name in ("referformer", "referformer.inference", "referformer.inference_session", "referformer.evaluation",
                        "referformer.quantization", "referformer.precision"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                objects.setdefault(f"{value.__module__}.{value.__qualname__}", value)
    return sorted(objects.items())


@pytest.mark.parametrize("name, value", public_objects(), ids=lambda item: item if isinstance(item, str) else "")
def test_public_api_example(name, value, monkeypatch):
    """Each public class and function documents an `Example:` that runs."""
    docstring = inspect.getdoc(value) or ""
    assert "Example:" in docstring, f"{name} has no Example: section"
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    finder = doctest.DocTestFinder(recurse=False)
    tests = [test for test in finder.find(value, name, globs={}) if test.examples]
    assert tests, f"{name}'s Example: has no >>> lines"
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{name}'s example failed (output above)"


def test_docs_link_to_existing_files():
    """Relative links between README.md and docs/ point at files that exist."""
    for path in DOC_FILES:
        for target in re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) < 250
    assert os.path.isdir(REPO_ROOT / "docs")
