"""Hostile and careless inputs (issue 17): no code runs from a checkpoint folder, no user file is deleted, bad inputs
get one clear error before any output, and results are never partial or mixed. Every hostile file is built here."""

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers import (
    REPO_ROOT,
    load_script,
    random_inputs,
    save_shapes_model,
    synthetic_training_clips,
    tiny_training_model,
    unit_test_config,
)
from referformer import ReferFormerForReferringVideoObjectSegmentation
from referformer import conversion
from referformer.output_folders import MANIFEST_NAME, OutputFolderError, staged_output
from referformer.video_io import load_video
from referformer.training import (
    AccelerateTrainingArguments,
    CheckpointError,
    NonFiniteTrainingError,
    load_training_checkpoint,
    save_training_checkpoint,
    train_with_accelerate,
)
from referformer.visualization import write_palette_masks, write_video


run_rvos = load_script("run_rvos")


class WritesMarker:
    """Unpickling this object creates the file `path`: proof that a loader executed code from a pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def cli_error(*argv) -> str:
    """The one-line message `run_rvos.py` exits with."""
    with pytest.raises(SystemExit) as raised:
        run_rvos.main([str(value) for value in argv])
    message = str(raised.value.code)
    assert message.startswith("run_rvos.py") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_shapes_model(tmp_path_factory.mktemp("model"))


def write_frames(folder: Path, sizes=((64, 96),) * 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def predict_args(model_dir, video, output_dir, *extra):
    options = ["predict", "--model", model_dir, "--videos", video, "--text", "the red circle", "--output_dir", output_dir]
    return [str(value) for value in [*options, *extra]]


# 1. Resume loads only what training wrote -------------------------------------------------------------------------



def prepared_training():
    """A fresh CPU Accelerator with the tiny training model, its AdamW and learning-rate schedule prepared."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    model = tiny_training_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3], gamma=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, scheduler

def test_resume_never_unpickles_and_refuses_foreign_files(tmp_path):

    marker = tmp_path / "code-was-executed"

    checkpoint = tmp_path / "run" / "checkpoint-2"
    accelerator, model, optimizer, scheduler = prepared_training()
    save_training_checkpoint(accelerator, checkpoint, model, optimizer, scheduler, 2, 0, 2)
    assert sorted(path.name for path in checkpoint.iterdir()) == [
        MANIFEST_NAME, "model.safetensors", "optimizer.pt", "training_state.json"
    ]
    def load():
        accelerator, model, optimizer, scheduler = prepared_training()
        return load_training_checkpoint(accelerator, checkpoint, model, optimizer, scheduler)

    assert load() == (2, 0, 2)

    # Accelerate's pickles planted next to the checkpoint's files: refused before anything is read.
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(CheckpointError, match="unexpected custom_checkpoint_0.pkl"):
        load()
    message = cli_error("train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", tmp_path,
                        "--output_dir", tmp_path / "run", "--resume_from_checkpoint", checkpoint)
    assert "never pickles" in message
    (checkpoint / "custom_checkpoint_0.pkl").unlink()

    # A code-carrying optimizer.pt: read with weights_only, refused.
    torch.save({"state": WritesMarker(marker)}, checkpoint / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt holds more than tensors"):
        load()
    assert not marker.exists()


# 2. Data loss: --overwrite never deletes inputs, foreign files or the old results of a failed run -----------------


def test_overwrite_never_deletes_inputs_user_files_or_old_results(tmp_path, model_dir):
    frames = write_frames(tmp_path / "clips" / "dog")
    before = snapshot(tmp_path / "clips")
    # The output folder holding the frames: the per-video folder would be the frames folder itself.
    message = cli_error(*predict_args(model_dir, frames, tmp_path / "clips", "--overwrite"))
    assert "is or contains the input" in message
    assert snapshot(tmp_path / "clips") == before

    # A user's folder where the results would go: --overwrite only replaces results of an earlier run.
    user_dir = tmp_path / "out" / "dog"
    user_dir.mkdir(parents=True)
    (user_dir / "notes.txt").write_text("mine")
    assert "did not write (e.g. notes.txt)" in cli_error(*predict_args(model_dir, frames, tmp_path / "out", "--overwrite"))
    assert (user_dir / "notes.txt").read_text() == "mine"
    (user_dir / "notes.txt").unlink()

    run_rvos.main(predict_args(model_dir, frames, tmp_path / "out", "--overwrite"))
    results = snapshot(user_dir)
    assert {"predictions.json", "0/00000.png", "overlay_0.gif", MANIFEST_NAME} <= set(results)
    # A failing --overwrite run (an unreadable frame, found after the model loaded) leaves the old results whole.
    (frames / "00003.png").write_bytes(b"not a png")
    assert "Cannot read frame image" in cli_error(*predict_args(model_dir, frames, tmp_path / "out", "--overwrite"))
    assert snapshot(user_dir) == results
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["dog"]  # no staging or lock left
    # A successful one replaces them completely.
    (frames / "00003.png").unlink()
    run_rvos.main(predict_args(model_dir, frames, tmp_path / "out", "--overwrite", "--overlay_format", "mp4"))
    assert (user_dir / "overlay_0.mp4").exists() and not (user_dir / "overlay_0.gif").exists()


# 3. Concurrent runs ----------------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_fails_clearly(tmp_path, model_dir):
    frames = write_frames(tmp_path / "dog")
    with staged_output(tmp_path / "out" / "dog") as staging:  # a first run, still writing
        (staging / "predictions.json").write_text("{}")
        assert "Another run is writing to" in cli_error(*predict_args(model_dir, frames, tmp_path / "out"))
        with pytest.raises(OutputFolderError, match="Another run is writing"):
            with staged_output(tmp_path / "out" / "dog"):
                pass
    assert snapshot(tmp_path / "out" / "dog") == {
        "predictions.json": b"{}", MANIFEST_NAME: json.dumps({"files": ["predictions.json"]}, indent=1).encode()
    }


# 4. Pixel values are converted by dtype, or refused --------------------------------------------------------------


def test_pixel_dtypes_are_converted_or_refused_and_mixed_sizes_write_nothing(tmp_path, model_dir):
    values = (np.arange(64 * 96).reshape(64, 96) * 10).astype(np.uint16)  # up to 61430 of 65535
    folder = tmp_path / "sixteen"
    folder.mkdir()
    Image.fromarray(values).save(folder / "00000.png")  # a 16-bit grayscale PNG
    frames, _ = load_video(folder)
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.array_equal(frames[0], np.repeat(expected[:, :, None], 3, axis=-1))
    assert np.array_equal(load_video(values[None, :, :, None])[0][0][:, :, 0], expected)  # uint16 array

    rgb = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3))
    assert np.array_equal(load_video(rgb.astype(np.int32))[0][0], rgb[0].astype(np.uint8))  # 8-bit values in int32
    assert np.array_equal(load_video(rgb / 255.0)[0][0], rgb[0].astype(np.uint8))  # floats in [0, 1]
    with pytest.raises(ValueError, match=r"Float frames must be in \[0, 1\], got values in \[0, 255\]"):
        load_video(rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"int32 frames must hold 8-bit values \(0..255\), got \[0, 300\]"):
        load_video(np.full((1, 64, 96, 3), 300, dtype=np.int32) * (rgb > 0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_video(np.full((1, 64, 96, 3), np.nan))

    mixed = write_frames(tmp_path / "mixed", sizes=[(64, 96), (64, 96), (72, 96)])
    message = cli_error(*predict_args(model_dir, mixed, tmp_path / "out"))
    assert "must all have one size: frame 0 is 96x64, frame 2 is 96x72" in message
    assert not (tmp_path / "out").exists()


# 5. Partial outputs: options checked first; the final save of train is all or nothing ----------------------------


def test_bad_options_fail_before_any_output_and_publishing_is_all_or_nothing(tmp_path, model_dir, monkeypatch):
    frames = write_frames(tmp_path / "dog")
    for option, value, text in [("--fps", "0", "--fps must be in (0, 1000)"),
                                ("--fps", "-3", "--fps must be in (0, 1000)"),
                                ("--threshold", "1.5", "--threshold must be in (0, 1)"),
                                ("--frame_stride", "0", "--frame_stride must be in [1, inf]")]:
        assert text in cli_error(*predict_args(model_dir, frames, tmp_path / "out", option, value))
    assert not (tmp_path / "out").exists()

    # Train's final save: the model folder's entries are moved in with config.json last, so an interrupted publish
    # never leaves a loadable-looking folder without its processor.
    target = tmp_path / "run"
    (target / "checkpoint-2").mkdir(parents=True)
    moves = []
    real_rename = os.rename

    def rename_then_die(source, destination):
        moves.append(Path(destination).name)
        if Path(destination).name == "preprocessor_config.json":
            raise OSError("killed")
        real_rename(source, destination)

    with pytest.raises(OSError, match="killed"):
        with staged_output(target, overwrite=True, units="all") as staging:
            for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
                (staging / name).write_text(name)
            monkeypatch.setattr("referformer.output_folders.os.rename", rename_then_die)
    monkeypatch.undo()
    assert moves[-1] == "preprocessor_config.json" and "config.json" not in moves
    assert not (target / "config.json").exists() and (target / "checkpoint-2").is_dir()


# 6. Silent nonsense ----------------------------------------------------------------------------------------------


def test_non_finite_training_stops_with_a_clear_error(tmp_path):
    assert "--learning_rate must be a finite number, got nan" in cli_error(
        "train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", tmp_path,
        "--output_dir", tmp_path / "run", "--learning_rate", "nan")
    assert "--learning_rate must be in [0, 1], got 1000000.0" in cli_error(
        "train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", tmp_path,
        "--output_dir", tmp_path / "run", "--learning_rate", "1e6")
    assert not (tmp_path / "run").exists()

    args = AccelerateTrainingArguments(output_dir=str(tmp_path / "lib"), max_steps=5, learning_rate=1e6,
                                       backbone_learning_rate=1e6, max_grad_norm=0, log_every=0)
    with pytest.raises(NonFiniteTrainingError, match=r"Step \d: the (loss|weights) became NaN or infinite"):
        train_with_accelerate(tiny_training_model(), synthetic_training_clips(2), args)


def test_label_masks_must_be_binary():
    torch.manual_seed(0)
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config())
    inputs = random_inputs(model.config, num_frames=2)
    masks = torch.zeros(1, 2, 64, 80)
    masks[:, :, 10:30, 10:30] = 255.0
    labels = [{"masks": masks[0], "boxes": torch.full((2, 4), 0.2), "valid": torch.ones(2, dtype=torch.long)}]
    with pytest.raises(ValueError, match=r"Label masks must be binary \(bool, or 0 and 1\), got values \[0.0, 255.0\]"):
        model(**inputs, labels=labels)
    labels[0]["masks"] = masks[0] / 255.0
    assert torch.isfinite(model(**inputs, labels=labels).loss)


def test_model_folders_with_missing_weights_are_refused(tmp_path, model_dir):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (incomplete / path.name).write_bytes(path.read_bytes())
    weights = load_file(model_dir / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("class_embed.")}, incomplete / "model.safetensors",
              metadata={"format": "pt"})
    frames = write_frames(tmp_path / "dog")
    message = cli_error(*predict_args(incomplete, frames, tmp_path / "out"))
    assert "lacks" in message and "class_embed." in message and "random values" in message
    assert "lacks" in cli_error("evaluate", "--model", incomplete, "--dataset", "synthetic", "--data_root", tmp_path,
                                "--output_dir", tmp_path / "eval")
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


# 7. Model input checks -------------------------------------------------------------------------------------------


def test_forward_names_inputs_whose_shapes_do_not_fit():
    torch.manual_seed(0)
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval()
    inputs = random_inputs(model.config, batch_size=2, num_frames=2, height=64, width=96)
    mask = torch.ones(2, 2, 64, 96, dtype=torch.long)
    cases = {
        "wrong size": mask[..., :80],
        "transposed": mask.transpose(-1, -2),
        "without frames": mask[:, 0],
        "other batch size": mask[:1],
    }
    for case, pixel_mask in cases.items():
        with pytest.raises(ValueError, match=r"pixel_mask must be \[batch, frames, height, width\] = \(2, 2, 64, 96\)"):
            model(**{**inputs, "pixel_mask": pixel_mask})
    long_ids = torch.full((2, 39), 5)  # 40 positions, RoBERTa's first two reserved: 38 tokens at most
    with pytest.raises(ValueError, match="input_ids has 39 tokens, more than the text encoder's 38 positions"):
        model(pixel_values=inputs["pixel_values"], input_ids=long_ids)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 3\) must have the shape of input_ids"):
        model(**{**inputs, "attention_mask": torch.ones(2, 3, dtype=torch.long)})


# 8. One-line errors ----------------------------------------------------------------------------------------------


def test_obscure_failures_become_one_line_errors(tmp_path, model_dir):
    frames = write_frames(tmp_path / "dog")
    assert "Unknown --device 'tpu9'" in cli_error(*predict_args(model_dir, frames, tmp_path / "o"), "--device", "tpu9")
    if not torch.cuda.is_available():
        assert "needs a cuda device and none is available" in cli_error(
            *predict_args(model_dir, frames, tmp_path / "o"), "--device", "cuda")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert "neither a regular file nor a folder" in cli_error(*predict_args(model_dir, fifo, tmp_path / "o"))
    with pytest.raises(ValueError, match="neither a regular file nor a folder"):
        load_video(fifo)

    import av

    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    assert "has no video stream" in cli_error(*predict_args(model_dir, audio_only, tmp_path / "o"))
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    assert "Cannot decode video file" in cli_error(*predict_args(model_dir, not_a_video, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_converter_errors_are_one_line_and_write_nothing(tmp_path):
    def run(*args):
        result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_checkpoint.py"), *map(str, args)],
                                capture_output=True, text=True)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stderr.strip().splitlines()[-1]

    empty, truncated = tmp_path / "empty.safetensors", tmp_path / "truncated.safetensors"
    empty.write_bytes(b"")
    save_file({"query_embed.weight": torch.zeros(5, 8)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    for checkpoint in (empty, truncated):
        code, line = run("--checkpoint", checkpoint, "--output_dir", tmp_path / "out")
        assert code == 1 and "is not a readable safetensors file" in line
    with pytest.raises(conversion.ConversionError, match="it has no query_embed.weight"):
        conversion.infer_config({"transformer.level_embed": torch.zeros(4, 8)})
    no_queries = tmp_path / "no_queries.safetensors"
    save_file({"transformer.level_embed": torch.zeros(4, 8)}, no_queries)
    code, line = run("--checkpoint", no_queries, "--output_dir", tmp_path / "out")
    assert code == 1 and "it has no query_embed.weight" in line
    bad_json = tmp_path / "args.json"
    bad_json.write_text("{nheads: 8")
    code, line = run("--checkpoint", no_queries, "--output_dir", tmp_path / "out", "--original_args", bad_json)
    assert code == 2 and "--original_args" in line and "is not a readable JSON file" in line
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    code, line = run("--checkpoint", no_queries, "--output_dir", a_file)
    assert code == 2 and "exists and is not a folder" in line and a_file.read_text() == "mine"
    assert not (tmp_path / "out").exists()


# 9. Permissions follow the umask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with staged_output(tmp_path / "model") as staging:  # the converter's and every command's output folder
            (staging / "config.json").write_text("{}")
            save_file({"weight": torch.zeros(2)}, staging / "model.safetensors")  # safetensors writes 0600
        masks_dir = write_palette_masks(np.zeros((2, 8, 8), bool), tmp_path / "masks", ["0", "1"])
        overlay = write_video([np.zeros((8, 8, 3), np.uint8)] * 2, tmp_path / "overlay.gif")
    finally:
        os.umask(previous)
    folder_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    for folder in (tmp_path / "model", masks_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder
    for path in (overlay, masks_dir / "0.png", tmp_path / "model" / "config.json", tmp_path / "model" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path


# 10. Issue 29: ground truth that would silently score or train on nothing ----------------------------------------


def test_grayscale_masks_and_absent_object_ids_are_refused_by_train_and_evaluate(tmp_path, model_dir):
    from referformer.data_synthetic import generate_referring_shapes

    for split in ("train", "valid"):
        generate_referring_shapes(tmp_path / "data", num_videos=2, num_frames=2, height=64, width=96, seed=0,
                                  split=split, max_objects=2)
    evaluate = ["evaluate", "--model", model_dir, "--dataset", "synthetic", "--data_root", tmp_path / "data",
                "--output_dir", tmp_path / "eval"]
    train = ["train", "--init_from", model_dir, "--dataset", "synthetic", "--data_root", tmp_path / "data",
             "--output_dir", tmp_path / "run", "--max_steps", "1", "--num_frames", "2", "--log_every", "0"]
    # The same masks saved as 0/255 grayscale PNGs (what many tools write): refused, not scored J&F 0.
    originals = {}
    for path in sorted((tmp_path / "data" / "valid" / "Annotations").rglob("*.png")):
        originals[path] = path.read_bytes()
        Image.fromarray(np.where(np.asarray(Image.open(path)) > 0, 255, 0).astype(np.uint8)).save(path)
    message = cli_error(*evaluate)
    assert "is a mode 'L' image, not a palette (mode 'P') PNG of object ids: save the masks as palette PNGs" in message
    for path, content in originals.items():
        path.write_bytes(content)
    # An obj_id that is in no mask: refused by evaluate and by train, naming the video, the expression and the id.
    for split in ("train", "valid"):
        meta_path = tmp_path / "data" / "meta_expressions" / split / "meta_expressions.json"
        meta = json.loads(meta_path.read_text())
        video_id = next(iter(meta["videos"]))
        for video in meta["videos"].values():
            for expression in video["expressions"].values():
                expression["obj_id"] = "9"
        meta_path.write_text(json.dumps(meta))
    expected = f"Video '{video_id}', expression '0': object id 9 occurs in none of the video's 2 annotated frames"
    assert expected in cli_error(*evaluate)
    assert "object id 9 occurs in none of the video's 2 annotated frames" in cli_error(*train)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run" / "config.json").exists()


def nan_model(model_dir, folder, key):
    """A copy of `model_dir` whose weight `key` holds one NaN (every other file unchanged)."""
    folder.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    weights = load_file(model_dir / "model.safetensors")
    weights[key][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_models_with_non_finite_weights_are_refused_and_nan_is_never_written(tmp_path, model_dir, monkeypatch):
    key = "class_embed.1.weight"  # the last decoder layer's class head: every score becomes NaN
    broken = nan_model(model_dir, tmp_path / "nan-model", key)
    frames = write_frames(tmp_path / "dog")
    expected = f"The model {broken} holds NaN or infinite weights (first: {key}); use a model with finite weights."
    assert cli_error(*predict_args(broken, frames, tmp_path / "out")) == f"run_rvos.py predict: error: {expected}"
    assert expected in cli_error("evaluate", "--model", broken, "--dataset", "synthetic", "--data_root", tmp_path,
                                 "--output_dir", tmp_path / "eval")
    assert f"The --init_from model {broken} holds NaN or infinite weights" in cli_error(
        "train", "--init_from", broken, "--dataset", "synthetic", "--data_root", tmp_path, "--output_dir",
        tmp_path / "run", "--max_steps", "1")
    # Were such a model run anyway, its NaN scores would not be written as invalid JSON: the run fails, nothing is
    # published.
    monkeypatch.setattr(run_rvos, "first_non_finite_weight", lambda weights: None)
    assert "Out of range float values are not JSON compliant" in cli_error(*predict_args(broken, frames, tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists() and not (tmp_path / "run").exists()


# 11. Issue 29: clean-up deletes only this project's folders; set-aside results are restored -----------------------


def test_cleanup_spares_user_folders_and_restores_results_a_killed_overwrite_set_aside(tmp_path, model_dir,
                                                                                        monkeypatch):
    from referformer.output_folders import OWNER_MARKER

    frames = write_frames(tmp_path / "dog")
    out = tmp_path / "out"
    # A user's own folders named like our leftovers, one of them a renamed copy of a folder of ours (marker and all).
    for name in (".dog.old-mine", ".dog.staging-mine", ".dog.old-copy"):
        (out / name).mkdir(parents=True)
        (out / name / "notes.txt").write_text(name)
    (out / ".dog.old-copy" / OWNER_MARKER).write_text(".dog.old-1234abcd")
    user_folders = {name: snapshot(out / name) for name in (".dog.old-mine", ".dog.staging-mine", ".dog.old-copy")}
    run_rvos.main(predict_args(model_dir, frames, out))
    results = snapshot(out / "dog")
    assert OWNER_MARKER not in results and MANIFEST_NAME in results
    assert {name: snapshot(out / name) for name in user_folders} == user_folders

    # predict --overwrite killed between its two renames: the earlier results exist only in the aside folder.
    real_rename = os.rename

    def killed_on_second_rename(source, destination):
        if Path(destination) == out / "dog":
            raise KeyboardInterrupt  # the run dies here (its finally blocks still run, as on Ctrl-C)
        real_rename(source, destination)

    monkeypatch.setattr("referformer.output_folders.os.rename", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        run_rvos.main(predict_args(model_dir, frames, out, "--overwrite"))
    monkeypatch.undo()
    assert not (out / "dog").exists()
    (aside,) = [path for path in out.iterdir() if path.name.startswith(".dog.old-") and path.name not in user_folders]
    assert snapshot(aside / "target") == results

    # The next run, a failing one (an unreadable frame), first moves the earlier results back into place.
    (frames / "00003.png").write_bytes(b"not a png")
    assert "Cannot read frame image" in cli_error(*predict_args(model_dir, frames, out, "--overwrite"))
    assert snapshot(out / "dog") == results and not aside.exists()
    assert sorted(path.name for path in out.iterdir()) == sorted(["dog", *user_folders])
    assert {name: snapshot(out / name) for name in user_folders} == user_folders
    # generate cleans up next to its output folder the same way.
    (tmp_path / ".shapes.old-backup").mkdir()
    (tmp_path / ".shapes.old-backup" / "meta.json").write_text("my backup")
    run_rvos.main(["generate", "--output_dir", str(tmp_path / "shapes"), "--num_videos", "1", "--num_frames", "2",
                   "--height", "64", "--width", "96"])
    assert (tmp_path / ".shapes.old-backup" / "meta.json").read_text() == "my backup"


def test_replaced_entries_an_interrupted_publish_set_aside_are_kept(tmp_path, monkeypatch):
    from referformer.output_folders import ASIDE_ENTRIES

    target = tmp_path / "run"
    with staged_output(target, units="all") as staging:
        (staging / "config.json").write_text("old config")
        (staging / "model.safetensors").write_text("old weights")
    real_rename = os.rename

    def killed_while_moving_in(source, destination):
        if Path(destination) == target / "model.safetensors" and ".staging-" in str(source):
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr("referformer.output_folders.os.rename", killed_while_moving_in)
    with pytest.raises(KeyboardInterrupt):
        with staged_output(target, overwrite=True, units="all") as staging:
            (staging / "config.json").write_text("new config")
            (staging / "model.safetensors").write_text("new weights")
    monkeypatch.undo()
    (aside,) = tmp_path.glob(".run.old-*")
    assert (aside / ASIDE_ENTRIES / "config.json").read_text() == "old config"
    # The next publish into the folder keeps that aside folder: it holds the only copy of the old config.json.
    with staged_output(target, overwrite=True, units=["README.md"]) as staging:
        (staging / "README.md").write_text("card")
    assert (aside / ASIDE_ENTRIES / "config.json").read_text() == "old config"
    assert (aside / ASIDE_ENTRIES / "model.safetensors").read_text() == "old weights"


# 12. Issue 29: a config.json cannot make timm read a file ---------------------------------------------------------


def test_timm_arguments_that_load_files_are_refused_at_config_load(tmp_path, model_dir):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from referformer import ReferFormerConfig

    marker = tmp_path / "code-was-executed"
    payload = tmp_path / "payload.pth"
    torch.save({"state_dict": WritesMarker(marker)}, payload)
    backbone = {"model_type": "referformer_timm_backbone", "model_name": "resnet18",
                "model_kwargs": {"layers": [1, 1, 1, 1], "checkpoint_path": str(payload)}}
    refused = "backbone_config.model_kwargs may only hold timm arguments that shape the architecture"
    with pytest.raises(StrictDataclassClassValidationError, match=f"{refused} .*; refusing 'checkpoint_path'"):
        ReferFormerConfig(backbone_config=backbone)
    for key, value in [("pretrained", True), ("pretrained_cfg_overlay", {"file": str(payload)}), ("in_chans", 4)]:
        with pytest.raises(StrictDataclassClassValidationError, match=f"refusing '{key}'"):
            ReferFormerConfig(backbone_config={**backbone, "model_kwargs": {key: value}})
    with pytest.raises(StrictDataclassClassValidationError, match="must be a timm architecture name, got 'hf-hub:a/b'"):
        ReferFormerConfig(backbone_config={**backbone, "model_name": "hf-hub:a/b", "model_kwargs": {}})

    # A saved model whose config.json names the file: refused by from_pretrained and by the CLI, nothing unpickled.
    folder = tmp_path / "hostile-model"
    folder.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"]["model_kwargs"]["checkpoint_path"] = str(payload)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StrictDataclassClassValidationError, match="refusing 'checkpoint_path'"):
        ReferFormerForReferringVideoObjectSegmentation.from_pretrained(folder)
    frames = write_frames(tmp_path / "dog")
    assert cli_error(*predict_args(folder, frames, tmp_path / "out")).startswith(
        f"run_rvos.py predict: error: {refused} (")
    assert not marker.exists() and not (tmp_path / "out").exists()


# 13. Issue 29: a resumed run keeps its options and replaces only its own files ------------------------------------


def test_resume_refuses_changed_options_and_foreign_files(tmp_path, model_dir):
    from referformer.data_synthetic import generate_referring_shapes

    generate_referring_shapes(tmp_path / "data", num_videos=2, num_frames=2, height=64, width=96, seed=0,
                              split="train", max_objects=2)
    run = tmp_path / "run"
    options = ["train", "--init_from", model_dir, "--dataset", "synthetic", "--data_root", tmp_path / "data",
               "--output_dir", run, "--max_steps", "1", "--num_frames", "2", "--checkpoint_every", "1",
               "--log_every", "0", "--learning_rate", "1e-3", "--lr_drop_steps", "5"]
    run_rvos.main([str(value) for value in options])
    recorded = (run / "training_args.json").read_text()
    assert json.loads(recorded)["learning_rate"] == 1e-3 and json.loads(recorded)["lr_drop_steps"] == [5]
    resume = [*options, "--resume_from_checkpoint", run / "checkpoint-1"]
    # Alone, --resume_from_checkpoint replaces the run's own files (its final model) ...
    run_rvos.main([str(value) for value in resume])
    assert (run / "config.json").is_file()

    # ... but not with other options: each difference is named, old -> new, and nothing is written.
    before = snapshot(run)
    changed = [*resume, "--learning_rate", "1e-2", "--lr_drop_steps", "3", "4"]
    assert cli_error(*changed) == (
        f"run_rvos.py train: error: The resumed run must have the options of the run in {run}; these differ: "
        "--lr_drop_steps [5] -> [3, 4]; --learning_rate 0.001 -> 0.01. Give the recorded values, or start a new run "
        "in another --output_dir."
    )
    # ... nor into a folder holding a user's file, nor from another run's checkpoint.
    (run / "notes.txt").write_text("mine")
    assert "holds files this project did not write (e.g. notes.txt); --resume_from_checkpoint only replaces" in (
        cli_error(*resume))
    (run / "notes.txt").unlink()
    other = tmp_path / "other"
    other.mkdir()
    message = cli_error(*[value if value != run else other for value in resume[:-1]], run / "checkpoint-1")
    assert "is not a checkpoint-<step> folder of --output_dir" in message and "resumes into its own folder" in message
    assert snapshot(run) == before and not any(other.iterdir())
    (run / "training_args.json").unlink()
    assert "Cannot read the options of the run to resume from" in cli_error(*resume)


# 14. Issue 29: the one-line errors promised ----------------------------------------------------------------------


def test_empty_and_damaged_files_and_overflowing_options_are_one_line_errors(tmp_path, model_dir):
    from referformer.cli_presets import error_line

    assert error_line(EOFError()) == "EOFError" and error_line(ValueError("first\n  second\n")) == "first second"
    # A model folder whose weights file is empty (0 bytes), as --model and as --init_from.
    empty = tmp_path / "empty-model"
    empty.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (empty / path.name).write_bytes(b"" if path.name == "model.safetensors" else path.read_bytes())
    frames = write_frames(tmp_path / "dog")
    assert f"Cannot load the model {empty}: a weights file is empty or damaged (" in cli_error(
        *predict_args(empty, frames, tmp_path / "out"))
    (empty / "model.safetensors").unlink()
    (empty / "pytorch_model.bin").write_bytes(b"")
    assert cli_error("train", "--init_from", empty, "--dataset", "synthetic", "--data_root", tmp_path, "--output_dir",
                     tmp_path / "run") == (f"run_rvos.py train: error: Cannot load the --init_from model {empty}: a "
                                           "weights file is empty or damaged (EOFError).")
    # Original checkpoints: an empty .pth, a .pth whose "model" is a list.
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"model": [torch.zeros(2)]}, tmp_path / "list.pth")
    for name, expected in [("empty.pth", "it is empty, truncated or not a torch.save file (EOFError)."),
                           ("list.pth", "the weights (the `model` entry or the file itself) are not a dict of tensors.")]:
        result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_checkpoint.py"), "--checkpoint",
                                 str(tmp_path / name), "--output_dir", str(tmp_path / "converted")],
                                capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(expected)
    # Overflowing numbers.
    train = ["train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", tmp_path, "--output_dir",
             tmp_path / "run"]
    assert cli_error(*train, "--max_steps", "1e400") == (
        "run_rvos.py train: error: argument --max_steps/--max-steps: invalid int value: '1e400'")
    assert cli_error(*train, "--num_frames", "99999999999999999999") == (
        "run_rvos.py train: error: --num_frames must be between -2147483647 and 2147483647, got 99999999999999999999.")
    assert "--lr_drop_steps must be between" in cli_error(*train, "--lr_drop_steps", "3", "-99999999999999999999")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists() and not (tmp_path / "converted").exists()


def test_damaged_checkpoint_files_and_a_failed_checkpoint_save_are_one_line_errors(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    checkpoint = tmp_path / "run" / "checkpoint-2"
    accelerator, model, optimizer, scheduler = prepared_training()
    save_training_checkpoint(accelerator, checkpoint, model, optimizer, scheduler, 2, 0, 2)
    state_file, optimizer_file = checkpoint / "training_state.json", checkpoint / "optimizer.pt"
    good_state, good_optimizer = state_file.read_text(), optimizer_file.read_bytes()

    def load_error() -> str:
        with pytest.raises(CheckpointError) as raised:
            accelerator, model, optimizer, scheduler = prepared_training()
            load_training_checkpoint(accelerator, checkpoint, model, optimizer, scheduler)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    state = json.loads(good_state)
    damaged = {
        "truncated": good_state[: len(good_state) // 2],
        "no step": json.dumps({key: value for key, value in state.items() if key != "step"}),
        "step as text": json.dumps({**state, "step": "two"}),
        "scheduler edited": json.dumps({**state, "scheduler": {**state["scheduler"], "last_epoch": "x"}}),
        "random state cut": json.dumps({**state, "rng": [{**state["rng"][0], "python": [3]}]}),
    }
    expected = {
        "truncated": "is not a valid training state (",
        "no step": "missing 1 required positional argument: 'step'",
        "step as text": "is not a valid training state (a field has the wrong type).",
        "scheduler edited": "invalid literal for int() with base 10: 'x'",
        "random state cut": "is not a valid training state (",
    }
    for case, text in damaged.items():
        state_file.write_text(text)
        assert expected[case] in load_error(), case
    state_file.write_text(good_state)
    optimizer_file.write_bytes(b"")
    assert load_error().endswith("(or is damaged); refusing to load it: EOFError")
    torch.save({"state": {}, "param_groups": "not groups"}, optimizer_file)
    assert "does not hold this optimizer's state" in load_error()
    optimizer_file.write_bytes(good_optimizer)

    # A full disk while a checkpoint is written: one line, and no checkpoint folder, complete-looking or not.
    def disk_full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr("safetensors.torch.save_model", disk_full)
    from referformer.data_synthetic import generate_referring_shapes

    generate_referring_shapes(tmp_path / "data", num_videos=2, num_frames=2, height=64, width=96, seed=0,
                              split="train", max_objects=2)
    message = cli_error("train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", tmp_path / "data",
                        "--output_dir", tmp_path / "full", "--max_steps", "1", "--num_frames", "2",
                        "--checkpoint_every", "1", "--log_every", "0")
    assert message == (f"run_rvos.py train: error: Cannot write the checkpoint {tmp_path / 'full' / 'checkpoint-1'}: "
                       'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                       'device" })')
    assert sorted(path.name for path in (tmp_path / "full").iterdir()) == [MANIFEST_NAME, "training_args.json"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".full")] == []


def test_a_video_without_expressions_is_named(tmp_path, model_dir):
    from referformer.data_synthetic import generate_referring_shapes

    generate_referring_shapes(tmp_path / "data", num_videos=2, num_frames=2, height=64, width=96, seed=0,
                              split="valid", max_objects=2)
    meta_path = tmp_path / "data" / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video_id = sorted(meta["videos"])[1]
    del meta["videos"][video_id]["expressions"]
    meta_path.write_text(json.dumps(meta))
    message = cli_error("evaluate", "--model", model_dir, "--dataset", "synthetic", "--data_root", tmp_path / "data",
                        "--output_dir", tmp_path / "eval")
    assert message == (f"run_rvos.py evaluate: error: {meta_path}: video '{video_id}' has no \"expressions\" object "
                       '(expected e.g. {"0": {"exp": "the red circle", "obj_id": "1"}}); remove the video or give it '
                       "its expressions.")
    assert not (tmp_path / "eval").exists()
