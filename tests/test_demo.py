"""The embedded demo model (`checkpoints/referformer-tiny-shapes`) and the `demo` and `generate` commands of
scripts/run_rvos.py: the README's main-job command run exactly as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT, load_script
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor
from referformer.data import load_ref_youtube_vos
from referformer.shapes_demo import swap_expressions


DEMO_MODEL = REPO_ROOT / "checkpoints" / "referformer-tiny-shapes"
SCRIPT = REPO_ROOT / "scripts" / "run_rvos.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
run_rvos = load_script("run_rvos")


def test_embedded_model_folder_is_small_safetensors_with_card_and_recipe():
    files = {path.name for path in DEMO_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= files
    assert "training_args.json" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sum(path.stat().st_size for path in DEMO_MODEL.rglob("*") if path.is_file()) <= 20 * 2**20
    model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(DEMO_MODEL)
    processor = ReferFormerProcessor.from_pretrained(DEMO_MODEL)
    assert model.config.model_type == "referformer" and processor.tokenizer("the red circle")["input_ids"][0] == 0
    card = (DEMO_MODEL / "README.md").read_text()
    assert "run_rvos.py demo" in card and "J&F" in card


def test_demo_with_no_arguments_segments_fresh_clips_and_uses_the_language(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "demo"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output_dir = tmp_path / "referformer-demo"
    results = json.loads((output_dir / "results.json").read_text())
    assert results["clips"] == 8 and results["expressions"] > 16
    assert results["J&F"] >= 0.7, results
    assert results["J&F, expressions of another clip"] <= results["J&F"] - 0.3, results
    assert f"{results['J&F']:.4f}" in completed.stdout

    meta = json.loads((output_dir / "clips" / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    for video_id, video in meta["videos"].items():
        predictions = json.loads((output_dir / "predictions" / video_id / "predictions.json").read_text())
        assert [expression["text"] for expression in predictions["expressions"]] == [
            expression["exp"] for expression in video["expressions"].values()
        ]
        for exp_id in video["expressions"]:
            with Image.open(output_dir / "predictions" / video_id / exp_id / f"{video['frames'][0]}.png") as mask:
                assert mask.mode == "P" and mask.size == (144, 96) and np.asarray(mask).any()
            with Image.open(output_dir / "predictions" / video_id / f"overlay_{exp_id}.gif") as overlay:
                assert overlay.n_frames == len(video["frames"])

    again = subprocess.run(
        [sys.executable, str(SCRIPT), "demo"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert again.returncode != 0 and "exists and is not empty; pass --overwrite" in again.stderr


def test_swapped_expressions_keep_the_referred_objects():
    meta = {
        "videos": {
            "a": {"frames": ["0"], "expressions": {"0": {"exp": "the red circle", "obj_id": "1"},
                                                   "1": {"exp": "the blue square", "obj_id": "2"}}},
            "b": {"frames": ["0"], "expressions": {"0": {"exp": "the big shape", "obj_id": "2"}}},
        }
    }
    swapped = swap_expressions(meta)["videos"]
    assert swapped["a"]["expressions"] == {"0": {"exp": "the big shape", "obj_id": "1"},
                                           "1": {"exp": "the big shape", "obj_id": "2"}}
    assert swapped["b"]["expressions"] == {"0": {"exp": "the red circle", "obj_id": "2"}}


def test_generate_command_writes_a_loadable_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    options = ["generate", "--output_dir", str(tmp_path), "--num_videos", "3", "--num_frames", "3", "--height", "64",
               "--width", "96", "--split", "valid"]
    metadata = run_rvos.main(options)
    assert "3 clips" in capsys.readouterr().out
    rows = load_ref_youtube_vos(tmp_path, "valid")
    assert len(rows) == sum(len(video["expressions"]) for video in metadata["videos"].values())
    assert not any("moving" in expression for expression in rows["expression"])  # default: what one frame shows
    with pytest.raises(SystemExit, match="already exists"):
        run_rvos.main(options)
    with pytest.raises(SystemExit, match="Unknown --expression_attributes 'speed'"):
        run_rvos.main(["generate", "--output_dir", str(tmp_path / "x"), "--expression_attributes", "color", "speed"])
    with pytest.raises(SystemExit, match="at least 2"):
        run_rvos.main(["demo", "--num_videos", "1", "--output_dir", str(tmp_path / "d")])
