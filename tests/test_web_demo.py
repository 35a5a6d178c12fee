"""The Gradio web demo: the request handler on good and bad uploads, and the page itself driven in a real Chromium
through Playwright (marked `browser`; skipped only where no Chromium or Playwright is installed)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT, load_script, save_shapes_model
from referformer.inference import ReferringVideoSegmenter
from referformer.web_demo import MAX_SENTENCE_CHARACTERS, ResultFolders, WebDemo, example_clips, segment_upload


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SCRIPT = REPO_ROOT / "scripts" / "run_rvos.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """An example clip of the demo (an MP4 of synthetic shapes) and its sentences."""
    path, sentences = example_clips(tmp_path_factory.mktemp("examples"), num_clips=1)[0]
    return path, sentences


@pytest.fixture(scope="module")
def segmenter():
    return ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu")


def test_segment_upload_writes_overlay_masks_and_scores(example, segmenter, tmp_path):
    video, sentences = example
    reports = []
    result = segment_upload(
        segmenter, video, sentences + "\n\n", tmp_path, max_frames=10,
        progress=lambda fraction, desc: reports.append((fraction, desc)),
    )
    # Progress frame by frame, as each frame becomes final.
    assert [desc for _, desc in reports[1:]] == [f"frame {index} of 6" for index in range(1, 7)]
    assert [fraction for fraction, _ in reports] == [0.0] + [index / 6 for index in range(1, 7)]
    assert [row[0] for row in result.scores] == sentences.splitlines()
    assert all(0 <= row[2] <= 1 for row in result.scores)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["masks.zip", "overlay.mp4"]
    with zipfile.ZipFile(result.masks) as archive:
        names = set(archive.namelist())
        assert "predictions.json" in names and {f"0/{index:05d}.png" for index in range(6)} <= names
        with archive.open("0/00000.png") as mask:
            assert np.asarray(Image.open(mask)).any()  # the demo model finds the shape
    import av

    with av.open(result.overlay) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6

    with pytest.raises(ValueError, match="at least one sentence"):
        segment_upload(segmenter, video, "  \n ", tmp_path / "a", max_frames=10)
    with pytest.raises(ValueError, match="too long"):
        segment_upload(segmenter, video, "the red circle", tmp_path / "b", max_frames=5)
    with pytest.raises(ValueError, match="Upload a video"):
        segment_upload(segmenter, None, "the red circle", tmp_path / "c", max_frames=10)
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    with pytest.raises(ValueError, match="Cannot decode video file"):
        segment_upload(segmenter, str(not_a_video), "the red circle", tmp_path / "d", max_frames=10)
    with pytest.raises(ValueError, match=f"Sentence 2 has 201 characters; this demo takes at most {MAX_SENTENCE_CHARACTERS}"):
        segment_upload(segmenter, video, "the red circle\n" + "a" * 201, tmp_path / "e", max_frames=10)


def test_requests_use_served_models_only_and_keep_the_last_results(example, segmenter, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # every temporary folder the server makes lands here
    results = ResultFolders(keep=2)
    demo = WebDemo({"referformer-tiny-shapes": segmenter}, max_frames=10, results=results)
    video, sentences = example
    outputs = [demo.segment(video, sentences, "referformer-tiny-shapes") for _ in range(3)]
    # N + 1 = 3 requests: the folders of the last N = 2 remain, holding only what the page serves; nothing else.
    assert [path.name for path in tmp_path.iterdir()] == [results.root.name]
    assert sorted(path.name for path in results.root.iterdir()) == ["request-2", "request-3"]
    assert not outputs[0].masks.exists() and outputs[2].masks.is_file() and outputs[2].overlay.is_file()
    assert sorted(path.name for path in (results.root / "request-3").iterdir()) == ["masks.zip", "overlay.mp4"]

    # A web user names no path or Hub id: any other model name gets one and the same message (no file probing).
    messages = set()
    for name in ("/etc", "/etc/passwd", "/no/such/folder", "FacebookAI/roberta-base", "../referformer-tiny-shapes"):
        with pytest.raises(ValueError) as raised:
            demo.segment(video, sentences, name)
        messages.add(str(raised.value))
    assert messages == {"Choose one of the models of the list: referformer-tiny-shapes."}
    with pytest.raises(ValueError, match="at most 200"):  # a failed request leaves no folder of its own
        demo.segment(video, "x" * 100_000, "referformer-tiny-shapes")
    assert len(list(results.root.iterdir())) <= 2
    results.close()
    assert not any(tmp_path.iterdir())


def test_serve_checks_every_model_before_serving(tmp_path):
    from safetensors.torch import load_file, save_file

    run_rvos = load_script("run_rvos")

    def serve_error(*models):
        with pytest.raises(SystemExit) as raised:
            run_rvos.main(["serve", "--device", "cpu", *[item for model in models for item in ("--model", str(model))]])
        message = str(raised.value.code)
        assert "\n" not in message
        return message

    model = save_shapes_model(tmp_path / "a" / "shapes")
    assert "has no config.json" in serve_error(DEMO_MODEL, "/etc")
    assert "does not exist" in serve_error(DEMO_MODEL, tmp_path / "missing")
    assert "Two --model folders have the name 'shapes'" in serve_error(model, tmp_path / "b" / "shapes")
    weights = load_file(model / "model.safetensors")
    weights["class_embed.1.weight"][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert serve_error(DEMO_MODEL, model).startswith(
        f"run_rvos.py serve: error: The model {model} holds NaN or infinite weights (first: class_embed.1.weight)")


def chromium_executable() -> str:
    """Debian's Chromium (Playwright's own browser download cannot reach the internet here)."""
    for name in (os.environ.get("CHROMIUM_EXECUTABLE"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does it where it can)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp_path, port, env=None):
    """`run_rvos.py serve` on 127.0.0.1:`port` (the embedded demo model, CPU), waited for (5 minutes at most)."""
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **(env or {})),
    )
    deadline = time.monotonic() + 300
    while True:
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return server, log
        except OSError:
            assert time.monotonic() < deadline, "the web demo did not start in 5 minutes"
            time.sleep(1)


def test_server_offers_its_models_by_name_and_deletes_its_folder_when_terminated(tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    server, log = start_server(tmp_path, port, env={"TMPDIR": str(temporary)})
    try:
        (folder,) = temporary.glob("referformer-demo-*")  # the server's own folder: examples, request results
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
        (model,) = [c["props"] for c in config["components"] if c.get("props", {}).get("elem_id") == "model"]
        assert model["choices"] == [["referformer-tiny-shapes", "referformer-tiny-shapes"]]
        assert model["value"] == "referformer-tiny-shapes" and not model.get("allow_custom_value")
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert server.returncode == 0 and not folder.exists()


@pytest.mark.browser
def test_web_page_in_chromium(example, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
    executable = chromium_executable()
    port = free_port()
    server, log = start_server(tmp_path, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            # The model is a choice among the operator's models (here the default one), not a path field.
            sync_api.expect(page.locator("#model input[role=combobox]")).to_have_value("referformer-tiny-shapes")
            page.locator("#input-video input[type=file]").set_input_files(example[0])
            page.locator("#segment").click()  # no sentence yet: a clear message
            sync_api.expect(page.get_by_text("Type at least one sentence").first).to_be_visible(timeout=60_000)
            page.locator("#sentences textarea").fill(example[1].splitlines()[0])
            page.locator("#segment").click()
            overlay = page.locator("#overlay video")
            overlay.wait_for(timeout=240_000)
            source = overlay.get_attribute("src")
            assert source, "the overlay video has no source"
            response = page.request.get(source if source.startswith("http") else url.rstrip("/") + source)
            assert response.ok and len(response.body()) > 1000
            link = page.locator("#masks a[href*='masks.zip']")
            link.wait_for(timeout=60_000)
            archive = page.request.get(link.get_attribute("href"))
            assert archive.ok and archive.body()[:2] == b"PK"  # a zip file
            sync_api.expect(page.locator("#scores")).to_contain_text(example[1].splitlines()[0], timeout=60_000)
            page.screenshot(path=str(tmp_path / "web_demo.png"), full_page=True)
            browser.close()
        assert (tmp_path / "web_demo.png").stat().st_size > 0
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
