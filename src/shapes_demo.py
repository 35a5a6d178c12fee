"""The demo's protocol (`scripts/run_rvos.py demo`): fresh synthetic referring-shapes clips, segmented and scored
against the generator's masks, and a language check: the same clips with the expressions of other clips must score
much lower, or the model ignores the sentence.

    segmenter = ReferringVideoSegmenter.from_pretrained("checkpoints/referformer-tiny-shapes")
    results = write_demo(segmenter, "demo-output", num_videos=8, seed=1000)
    results["J&F"], results["J&F, expressions of another clip"]
"""

import json
from pathlib import Path

from tqdm.auto import tqdm

from .data_synthetic import generate_referring_shapes
from .evaluation_protocols import evaluate_ytvos_folder
from .inference import write_predictions
from .video_io import iter_video_frames
from .visualization import write_palette_masks


__all__ = ["DEMO_CLIP_FRAMES", "DEMO_EXPRESSION_ATTRIBUTES", "segment_meta_expressions", "swap_expressions", "write_demo"]

# What the demo model was trained on: six-frame clips whose expressions name what one frame shows.
DEMO_CLIP_FRAMES = 6
DEMO_EXPRESSION_ATTRIBUTES = ("size", "color", "shape", "position")


def swap_expressions(meta_expressions: dict) -> dict:
    """Each clip gets the expression texts of the next clip (cyclically), keeping its own referred objects."""
    videos = meta_expressions["videos"]
    video_ids = list(videos)
    swapped = {}
    for index, video_id in enumerate(video_ids):
        texts = [expression["exp"] for expression in videos[video_ids[(index + 1) % len(video_ids)]]["expressions"].values()]
        expressions = {
            exp_id: {**expression, "exp": texts[position % len(texts)]}
            for position, (exp_id, expression) in enumerate(videos[video_id]["expressions"].items())
        }
        swapped[video_id] = {**videos[video_id], "expressions": expressions}
    return {"videos": swapped}


def segment_meta_expressions(segmenter, meta_expressions: dict, frames_root: Path, output_dir: Path, overlays: bool):
    """Masks (and with `overlays`, overlay GIFs and predictions.json) of every expression, in the Ref-YouTube-VOS
    prediction layout `<output_dir>/<video>/<exp_id>/<frame>.png`."""
    for video_id, video in tqdm(meta_expressions["videos"].items(), desc="clips"):
        frame_paths = [frames_root / video_id / f"{name}.jpg" for name in video["frames"]]
        exp_ids = list(video["expressions"])
        texts = [video["expressions"][exp_id]["exp"] for exp_id in exp_ids]
        results = segmenter(frame_paths, texts)
        if overlays:
            write_predictions(output_dir / video_id, iter_video_frames(frame_paths), results, video["frames"], "gif", 4.0, exp_ids)
        else:
            for exp_id, result in zip(exp_ids, results):
                write_palette_masks(result.masks, output_dir / video_id / exp_id, video["frames"], overwrite=True)


def write_demo(segmenter, output_dir, num_videos: int = 8, seed: int = 1000, model_name: str | None = None) -> dict:
    """Generates `num_videos` clips (seed `seed`) at the size of `segmenter`'s processor into `output_dir/clips`,
    segments every expression (masks and overlays in `output_dir/predictions`), then every clip with the expressions
    of the next one (`swap_expressions`, masks in `output_dir/swapped_predictions`), and scores both against the
    generator's masks. Returns (and writes to `output_dir/results.json`) the J&F of both, naming the model
    `model_name`."""
    output_dir = Path(output_dir)
    size = segmenter.processor.video_processor.size  # the demo model's processor keeps its training frames' size
    clips = output_dir / "clips"
    generate_referring_shapes(
        clips,
        num_videos=num_videos,
        num_frames=DEMO_CLIP_FRAMES,
        height=size["shortest_edge"],
        width=size.get("longest_edge") or size["shortest_edge"],
        seed=seed,
        split="valid",
        expression_attributes=DEMO_EXPRESSION_ATTRIBUTES,
    )
    meta_expressions = json.loads((clips / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    swapped = swap_expressions(meta_expressions)
    (clips / "meta_expressions" / "valid" / "meta_expressions_swapped.json").write_text(json.dumps(swapped, indent=1))
    frames_root, annotations = clips / "valid" / "JPEGImages", clips / "valid" / "Annotations"
    segment_meta_expressions(segmenter, meta_expressions, frames_root, output_dir / "predictions", overlays=True)
    segment_meta_expressions(segmenter, swapped, frames_root, output_dir / "swapped_predictions", overlays=False)
    scores = evaluate_ytvos_folder(output_dir / "predictions", annotations, meta_expressions)
    swapped_scores = evaluate_ytvos_folder(output_dir / "swapped_predictions", annotations, swapped)
    results = {
        "model": model_name,
        "clips": num_videos,
        "seed": seed,
        "expressions": sum(len(video["expressions"]) for video in meta_expressions["videos"].values()),
        **scores,
        "J&F, expressions of another clip": swapped_scores["J&F"],
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False), encoding="utf-8")
    return results
