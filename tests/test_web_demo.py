"""The Gradio web demo: the request handler on good and bad uploads, and the page itself driven in a real Chromium
through Playwright (marked `browser`; skipped only where no Chromium or Playwright is installed)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT
from referformer.inference import ReferringVideoSegmenter
from referformer.web_demo import example_clips, segment_upload


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SCRIPT = REPO_ROOT / "scripts" / "run_rvos.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """An example clip of the demo (an MP4 of synthetic shapes) and its sentences."""
    path, sentences = example_clips(tmp_path_factory.mktemp("examples"), num_clips=1)[0]
    return path, sentences


def test_segment_upload_writes_overlay_masks_and_scores(example, tmp_path):
    segmenter = ReferringVideoSegmenter.from_pretrained(DEMO_MODEL, device="cpu")
    video, sentences = example
    result = segment_upload(segmenter, video, sentences + "\n\n", tmp_path, max_frames=10)
    assert [row["sentence"] for row in result["scores"]] == sentences.splitlines()
    assert all(0 <= row["mean score"] <= 1 for row in result["scores"])
    with zipfile.ZipFile(result["masks"]) as archive:
        names = set(archive.namelist())
        assert "predictions.json" in names and {f"0/{index:05d}.png" for index in range(6)} <= names
        with archive.open("0/00000.png") as mask:
            assert np.asarray(Image.open(mask)).any()  # the demo model finds the shape
    import av

    with av.open(result["overlay"]) as container:
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


@pytest.mark.browser
def test_web_page_in_chromium(example, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
    executable = chromium_executable()
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the web demo did not start in 5 minutes"
                time.sleep(1)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
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
