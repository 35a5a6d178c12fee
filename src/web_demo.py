"""A Gradio web demo: drop a video (or pick an example clip), type one or more sentences, and get the overlay video,
the per-frame masks as a zip and the scores. Started by `python scripts/run_rvos.py serve` (needs the `demo` extra:
`pip install -e ".[demo]"`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .data_synthetic import generate_referring_shapes
from .inference import ReferringVideoSegmenter, write_predictions
from .video_io import iter_video_frames
from .visualization import VideoWriter, overlay_masks, voc_palette


__all__ = ["build_demo", "example_clips", "segment_upload"]

MAX_SENTENCES = 5
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
    return sentences


def segment_upload(segmenter: ReferringVideoSegmenter, video, text, output_dir, max_frames: int, progress=None) -> dict:
    """Segments the sentences (one per line of `text`) in the uploaded `video` and writes, in `output_dir`, the overlay
    video of all sentences (`overlay.mp4`), the masks zip (`masks.zip`: `<sentence index>/<frame>.png` palette masks
    and `predictions.json`) and returns their paths and the per-sentence scores. Raises `ValueError` with a message
    for the user on bad input: no video, not a decodable video, more than `max_frames` frames, no sentence."""
    progress = progress or (lambda *args, **kwargs: None)
    if not video:
        raise ValueError("Upload a video (or pick an example clip) first.")
    sentences = _sentences(text)
    progress(0.05, desc="reading the video")
    num_frames = sum(1 for _ in iter_video_frames(video, max_frames=max_frames + 1))  # decodes, one frame at a time
    if num_frames > max_frames:
        raise ValueError(f"The video is too long: this demo takes at most {max_frames} frames.")
    progress(0.2, desc="segmenting")
    results = segmenter(video, sentences)
    progress(0.7, desc="writing masks and overlays")
    output_dir = Path(output_dir)
    names = [f"{index:05d}" for index in results[0].frame_indices]
    write_predictions(output_dir / "predictions", iter_video_frames(video), results, names, overlay_format="mp4", fps=8)
    colors = [tuple(voc_palette()[3 * (index + 1) : 3 * (index + 2)]) for index in range(len(results))]
    masks = [result.iter_masks() for result in results]
    with VideoWriter(output_dir / "overlay.mp4", fps=8) as writer:
        for position, (_, frame) in enumerate(iter_video_frames(video)):
            for result, mask_iterator, color in zip(results, masks, colors):
                frame = overlay_masks([frame], next(mask_iterator)[None], result.boxes[position : position + 1], color=color)[0]
            writer.write(frame)
    with zipfile.ZipFile(output_dir / "masks.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((output_dir / "predictions").rglob("*")):
            if path.suffix in (".png", ".json"):
                archive.write(path, path.relative_to(output_dir / "predictions").as_posix())
    scores = [
        {"sentence": result.sentence, "query": result.query_indices[0], "mean score": round(float(np.mean(result.scores)), 4)}
        for result in results
    ]
    progress(1.0, desc="done")
    return {"overlay": str(output_dir / "overlay.mp4"), "masks": str(output_dir / "masks.zip"), "scores": scores}


def build_demo(default_model: str, device="auto", dtype="fp32", max_frames: int = 300, examples_dir=None):
    """The Gradio app: a video, sentences and a model folder in; overlay video, masks zip and scores out. Models are
    loaded once per folder and kept."""
    import gradio as gr

    segmenters = {}
    examples_dir = Path(examples_dir or tempfile.mkdtemp(prefix="referformer-examples-"))
    examples = example_clips(examples_dir)

    def run(video, text, model, progress=gr.Progress()):
        model = (model or default_model).strip()
        try:
            if model not in segmenters:
                progress(0, desc="loading the model")
                segmenters[model] = ReferringVideoSegmenter.from_pretrained(model, device=device, dtype=dtype)
            output_dir = tempfile.mkdtemp(prefix="referformer-demo-")
            result = segment_upload(segmenters[model], video, text, output_dir, max_frames, progress)
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from error
        rows = [[row["sentence"], row["query"], row["mean score"]] for row in result["scores"]]
        return result["overlay"], result["masks"], rows

    with gr.Blocks(title="ReferFormer: referring video object segmentation") as demo:
        gr.Markdown(
            "# ReferFormer\nUpload a video or pick an example, type one sentence per line naming the object(s) to "
            "segment, and press **Segment**. The default model is the small demo model trained on synthetic shapes "
            "(sizes, colours, shapes, left/middle/right)."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                text = gr.Textbox(label="Sentences (one per line)", lines=3, elem_id="sentences")
                model = gr.Textbox(label="Model folder", value=default_model, elem_id="model")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay")
                masks = gr.File(label="Masks (zip)", elem_id="masks")
                scores = gr.Dataframe(headers=["sentence", "query", "mean score"], label="Scores", elem_id="scores")
        gr.Examples(examples=examples, inputs=[video, text])
        button.click(run, inputs=[video, text, model], outputs=[overlay, masks, scores])
    return demo
