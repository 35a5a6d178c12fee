"""A Gradio web demo: drop a video (or pick an example clip), type one or more sentences, choose one of the models the
operator named, and get the overlay video, the per-frame masks as a zip and the scores. Started by
`python scripts/run_rvos.py serve` (needs the `demo` extra: `pip install -e ".[demo]"`).

What a web user controls is bounded: the models are the operator's, loaded once at start-up; a video has at most
`max_frames` frames, a request at most `MAX_SENTENCES` sentences of at most `MAX_SENTENCE_CHARACTERS` characters; the
result files of only the last `KEPT_REQUESTS` requests stay on disk, in one temporary folder the server deletes when
it stops (Gradio serves its own copies, deleted after `GRADIO_CACHE_LIFETIME`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data_synthetic import generate_referring_shapes
from .inference import PredictionWriter, ReferringVideoSegmenter
from .video_io import iter_video_frames
from .visualization import VideoWriter, overlay_masks, voc_palette


__all__ = ["DemoResult", "ResultFolders", "WebDemo", "build_demo", "example_clips", "segment_upload"]

MAX_SENTENCES = 5
MAX_SENTENCE_CHARACTERS = 200
KEPT_REQUESTS = 4  # requests whose result files stay on disk (Gradio has copied them into its cache by then)
GRADIO_CACHE_LIFETIME = (600, 3600)  # every 10 minutes, Gradio deletes its cached files older than an hour
STREAM_WINDOW, STREAM_OVERLAP = 36, 8  # windows of the streamed segmentation (progress frame by frame)
EXAMPLE_ATTRIBUTES = ("size", "color", "shape", "position")  # what the demo model's expressions name (no motion)


def example_clips(folder, num_clips: int = 2, seed: int = 1000, height: int = 96, width: int = 144) -> list[list[str]]:
    """Synthetic referring-shapes clips (what the embedded demo model was trained on, from seeds it never saw) as MP4
    files in `folder`, each with one of its expressions: `[[video path, sentence], ...]` for `gr.Examples`."""
    folder = Path(folder)
    generate_referring_shapes(
        folder / "data",
        num_videos=num_clips,
        num_frames=6,
        height=height,
        width=width,
        seed=seed,
        split="valid",
        expression_attributes=EXAMPLE_ATTRIBUTES,
    )
    meta = json.loads((folder / "data" / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    examples = []
    for video_id, video in meta["videos"].items():
        frames = [folder / "data" / "valid" / "JPEGImages" / video_id / f"{name}.jpg" for name in video["frames"]]
        path = folder / f"{video_id}.mp4"
        with VideoWriter(path, fps=4) as writer:
            for _, frame in iter_video_frames(frames):
                writer.write(frame)
        sentences = [expression["exp"] for expression in video["expressions"].values()][:2]
        examples.append([str(path), "\n".join(sentences)])
    shutil.rmtree(folder / "data")
    return examples


def _sentences(text: str | None) -> list[str]:
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not sentences:
        raise ValueError("Type at least one sentence naming the object to segment (one sentence per line).")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"At most {MAX_SENTENCES} sentences at a time, got {len(sentences)}.")
    for index, sentence in enumerate(sentences, 1):
        if len(sentence) > MAX_SENTENCE_CHARACTERS:
            raise ValueError(
                f"Sentence {index} has {len(sentence)} characters; this demo takes at most {MAX_SENTENCE_CHARACTERS}."
            )
    return sentences


@dataclass
class DemoResult:
    """What one request returns: the overlay video, the masks zip and one `[sentence, query, mean score]` row per
    sentence (the query of the first window)."""

    overlay: Path
    masks: Path
    scores: list[list]


def segment_upload(
    segmenter: ReferringVideoSegmenter, video, text, output_dir, max_frames: int, progress=None
) -> DemoResult:
    """Segments the sentences (one per line of `text`) in the uploaded `video`, streamed in windows of `STREAM_WINDOW`
    frames sharing `STREAM_OVERLAP` (one window, the whole-video protocol, for a video up to `STREAM_WINDOW` frames;
    an online model frame by frame), reporting progress frame by frame as each frame becomes final. Writes, in
    `output_dir`, the overlay video of all sentences (`overlay.mp4`) and the masks zip (`masks.zip`:
    `<sentence index>/<frame>.png` palette masks and `predictions.json`). Raises `ValueError` with a message for the
    user on bad input: no video, not a decodable video, more than `max_frames` frames, no sentence, too many or too
    long sentences."""
    progress = progress or (lambda *args, **kwargs: None)
    if not video:
        raise ValueError("Upload a video (or pick an example clip) first.")
    sentences = _sentences(text)
    progress(0.0, desc="reading the video")
    num_frames = sum(1 for _ in iter_video_frames(video, max_frames=max_frames + 1))  # decodes, one frame at a time
    if num_frames > max_frames:
        raise ValueError(f"The video is too long: this demo takes at most {max_frames} frames.")
    output_dir = Path(output_dir)
    colors = [tuple(voc_palette()[3 * (index + 1) : 3 * (index + 2)]) for index in range(len(sentences))]
    outputs = segmenter.stream(video, sentences, window=STREAM_WINDOW, overlap=STREAM_OVERLAP, keep_frames=True)
    scores, first_queries = [], None
    with PredictionWriter(output_dir / "predictions", sentences, overlay_format="mp4", fps=8) as writer, VideoWriter(
        output_dir / "overlay.mp4", fps=8
    ) as overlay:
        for position, output in enumerate(outputs):
            writer.write(f"{output.frame_index:05d}", output)
            frame = output.frame
            for index, color in enumerate(colors):
                frame = overlay_masks([frame], output.masks[index][None], output.boxes[index : index + 1], color=color)[0]
            overlay.write(frame)
            scores.append(output.scores)
            first_queries = first_queries or output.query_indices
            progress((position + 1) / num_frames, desc=f"frame {position + 1} of {num_frames}")
    with zipfile.ZipFile(output_dir / "masks.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((output_dir / "predictions").rglob("*")):
            if path.suffix in (".png", ".json"):
                archive.write(path, path.relative_to(output_dir / "predictions").as_posix())
    shutil.rmtree(output_dir / "predictions")  # in the zip now
    mean_scores = np.mean(scores, axis=0)
    rows = [[sentence, query, round(float(score), 4)] for sentence, query, score in zip(sentences, first_queries, mean_scores)]
    return DemoResult(output_dir / "overlay.mp4", output_dir / "masks.zip", rows)


class ResultFolders:
    """One temporary folder owned by the server, holding a folder per request; only the last `keep` requests' folders
    are kept. `close()` deletes it all (at shutdown)."""

    def __init__(self, keep: int = KEPT_REQUESTS):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}.")
        self.root = Path(tempfile.mkdtemp(prefix="referformer-demo-"))
        self.keep = keep
        self._folders: deque[Path] = deque()
        self._count = 0
        self._lock = threading.Lock()

    def new(self) -> Path:
        """A new empty folder for a request's results; the oldest beyond `keep` is deleted."""
        with self._lock:
            self._count += 1
            folder = self.root / f"request-{self._count}"
            folder.mkdir()
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class WebDemo:
    """What the web demo serves: the operator's models by name (loaded once), the longest video accepted and the
    folders of the requests' results."""

    segmenters: dict[str, ReferringVideoSegmenter]
    max_frames: int
    results: ResultFolders

    def segment(self, video, text, model_name, progress=None) -> DemoResult:
        """One request: `model_name` must be one of the served models (a web user names no path)."""
        if model_name not in self.segmenters:
            raise ValueError(f"Choose one of the models of the list: {', '.join(self.segmenters)}.")
        folder = self.results.new()
        try:
            return segment_upload(self.segmenters[model_name], video, text, folder, self.max_frames, progress)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise


def build_demo(web_demo: WebDemo):
    """The Gradio app: a video, sentences and a choice among the served models in; overlay video, masks zip and scores
    out."""
    import gradio as gr

    examples_dir = web_demo.results.root / "examples"
    examples = example_clips(examples_dir)
    names = list(web_demo.segmenters)

    def run(video, text, model_name, progress=gr.Progress()):
        try:
            result = web_demo.segment(video, text, model_name, progress)
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from error
        return str(result.overlay), str(result.masks), result.scores

    with gr.Blocks(title="ReferFormer: referring video object segmentation", delete_cache=GRADIO_CACHE_LIFETIME) as demo:
        gr.Markdown(
            "# ReferFormer\nUpload a video or pick an example, type one sentence per line naming the object(s) to "
            f"segment (at most {MAX_SENTENCES}, {MAX_SENTENCE_CHARACTERS} characters each), choose a model and press "
            "**Segment**. The demo model is a small model trained on synthetic shapes (sizes, colours, shapes, "
            "left/middle/right)."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                text = gr.Textbox(label="Sentences (one per line)", lines=3, elem_id="sentences")
                model = gr.Dropdown(choices=names, value=names[0], label="Model", elem_id="model")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay")
                masks = gr.File(label="Masks (zip)", elem_id="masks")
                scores = gr.Dataframe(headers=["sentence", "query", "mean score"], label="Scores", elem_id="scores")
        gr.Examples(examples=examples, inputs=[video, text])
        button.click(run, inputs=[video, text, model], outputs=[overlay, masks, scores])
    return demo
