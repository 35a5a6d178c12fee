"""scripts/run_rvos.py end to end on tiny synthetic data (CPU): train with checkpoints, interrupt-and-resume, two
processes, evaluate, predict, the option file and the errors a user can make."""

import json
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from scipy.io import savemat

from helpers import REPO_ROOT, load_script, save_shapes_model
from referformer import ReferFormerProcessor
from referformer.data_synthetic import generate_referring_shapes
from referformer.visualization import write_video


SCRIPT = REPO_ROOT / "scripts" / "run_rvos.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
run_rvos = load_script("run_rvos")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_referring_shapes(root, num_videos=2, num_frames=3, height=64, width=96, seed=0, split="train", max_objects=2)
    generate_referring_shapes(root, num_videos=2, num_frames=3, height=64, width=96, seed=1, split="valid", max_objects=2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A randomly initialized tiny model and its processor, saved as a user's model folder."""
    return save_shapes_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def one_thread():
    """Same thread count as the subprocesses, so that in-process and subprocess runs compute identically."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_options(model_dir, data_root, output_dir, max_steps):
    return [
        "--init_from", str(model_dir), "--dataset", "synthetic", "--data_root", str(data_root),
        "--output_dir", str(output_dir), "--max_steps", str(max_steps), "--num_frames", "2",
        "--checkpoint_every", "2", "--lr_drop_steps", "3", "--learning_rate", "1e-3", "--log_every", "1",
    ]


def test_interrupted_training_resumes_exactly_and_the_model_is_published(tmp_path, model_dir, data_root, one_thread,
                                                                         monkeypatch):
    # The interrupted run is killed right after its checkpoint at step 2, then resumes from it up to step 4.
    from referformer import training

    save_checkpoint = training.save_training_checkpoint

    def save_then_die(accelerator, folder, *args):
        save_checkpoint(accelerator, folder, *args)
        raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(training, "save_training_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_rvos.main(["train", *train_options(model_dir, data_root, interrupted, 4)])
    monkeypatch.undo()
    assert json.loads((interrupted / "checkpoint-2" / "training_state.json").read_text())["step"] == 2
    assert not (interrupted / "config.json").exists()
    resume = ["--resume_from_checkpoint", str(interrupted / "checkpoint-2")]
    run_rvos.main(["train", *train_options(model_dir, data_root, interrupted, 4), *resume])

    # The uninterrupted run reads its options from a JSON file and is pushed to a (mocked) Hub.
    options = train_options(model_dir, data_root, tmp_path / "full", 4) + ["--push_to_hub", "user/tiny-shapes"]
    option_file = tmp_path / "options.json"
    keys, values = options[::2], options[1::2]
    parsed = {key[2:]: value for key, value in zip(keys, values)}
    parsed.update(max_steps=4, checkpoint_every=2, lr_drop_steps=[3], learning_rate=1e-3, log_every=1, num_frames=2)
    option_file.write_text(json.dumps(parsed))
    with mock.patch("huggingface_hub.HfApi") as api:
        run_rvos.main(["train", str(option_file)])
    api.return_value.create_repo.assert_called_once_with("user/tiny-shapes", private=False, exist_ok=True)
    assert api.return_value.upload_folder.call_args.kwargs["folder_path"] == str(tmp_path / "full")

    resumed, uninterrupted = load_file(interrupted / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0, msg=key)
    initial = load_file(model_dir / "model.safetensors")
    assert not torch.equal(uninterrupted["class_embed.1.weight"], initial["class_embed.1.weight"])
    for state in ("interrupted/checkpoint-4", "full/checkpoint-4"):
        assert json.loads((tmp_path / state / "training_state.json").read_text())["step"] == 4
    card = (tmp_path / "full" / "README.md").read_text()
    assert "## Training data" in card and "## Training recipe" in card and "| optimizer steps | 4 |" in card
    assert ReferFormerProcessor.from_pretrained(tmp_path / "full").tokenizer("the red circle")["input_ids"][0] == 0


def test_two_processes_train_and_save_once(tmp_path, model_dir, data_root):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    output_dir = tmp_path / "ddp"
    result = subprocess.run(
        launch + [str(SCRIPT), "train", *train_options(model_dir, data_root, output_dir, 2)],
        capture_output=True, text=True, env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "checkpoint-2" / "training_state.json").read_text())["step"] == 2
    weights = load_file(output_dir / "model.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    assert (output_dir / "README.md").is_file()


def test_train_new_tiny_model_in_mixed_precision_and_evaluate_after_training(tmp_path, data_root):
    output_dir = tmp_path / "new"
    run_rvos.main([
        "train", "--config_name", "tiny", "--dataset", "synthetic", "--data_root", str(data_root), "--output_dir",
        str(output_dir), "--max_steps", "1", "--num_frames", "2", "--eval_split", "valid", "--log_every", "0",
        "--mixed_precision", "bf16", "--gradient_checkpointing", "--gradient_accumulation_steps", "2",
    ])
    results = json.loads((output_dir / "eval-valid" / "results.json").read_text())
    assert 0 <= results["J&F"] <= 1
    assert "| J&F |" in (output_dir / "README.md").read_text()
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "referformer" and config["text_config"]["hidden_size"] == 64


def test_evaluate_synthetic_from_a_yaml_file_writes_scores_and_submission(tmp_path, model_dir, data_root, capsys):
    output_dir = tmp_path / "eval"
    options = tmp_path / "options.yaml"
    options.write_text(
        f"model: {model_dir}\ndataset: synthetic\ndata_root: {data_root}\noutput_dir: {output_dir}\nwindow: 2\n"
    )
    run_rvos.main(["evaluate", str(options)])
    results = json.loads((output_dir / "results.json").read_text())
    assert set(results) >= {"J&F", "J", "F", "num_expressions"}
    assert results["J&F"] == pytest.approx((results["J"] + results["F"]) / 2)
    assert results["submission"] == str(output_dir / "submission.zip") and (output_dir / "submission.zip").is_file()
    meta = json.loads((data_root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    assert results["num_expressions"] == sum(len(video["expressions"]) for video in meta["videos"].values())
    video, frames = next((name, video["frames"]) for name, video in meta["videos"].items())
    assert sorted(path.stem for path in (output_dir / "Annotations" / video / "0").iterdir()) == frames
    assert "J&F" in capsys.readouterr().out


def test_evaluate_ref_youtube_vos_without_masks_writes_only_the_submission(tmp_path, model_dir, data_root):
    root = tmp_path / "ref-youtube-vos"
    shutil.copytree(data_root / "valid" / "JPEGImages", root / "valid" / "JPEGImages")
    meta = json.loads((data_root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    for video in meta["videos"].values():  # the official valid expressions have no obj_id
        video["expressions"] = {exp_id: {"exp": expression["exp"]} for exp_id, expression in video["expressions"].items()}
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    (root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    results = run_rvos.main(["evaluate", "--model", str(model_dir), "--dataset", "ref-youtube-vos", "--data_root",
                             str(root), "--output_dir", str(tmp_path / "eval")])
    assert "J&F" not in results and (tmp_path / "eval" / "submission.zip").is_file()


def test_evaluate_ref_davis17_over_the_four_expression_sets(tmp_path, model_dir, data_root):
    # The synthetic clips as a converted Ref-DAVIS17 folder (four expressions per object) plus a DAVIS-2017 folder.
    layout, davis = tmp_path / "ref-davis", tmp_path / "DAVIS"
    shutil.copytree(data_root / "valid", layout / "valid")
    objects = json.loads((data_root / "valid" / "meta.json").read_text())["videos"]
    frames = json.loads((data_root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    videos = {
        video_id: {
            "frames": frames[video_id]["frames"],
            "expressions": {
                str(4 * (int(obj_id) - 1) + k): {"exp": f"the {obj['category']}", "obj_id": obj_id}
                for obj_id, obj in video["objects"].items() for k in range(4)
            },
        }
        for video_id, video in objects.items()
    }
    (layout / "meta_expressions" / "valid").mkdir(parents=True)
    (layout / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(videos))
    shutil.copytree(data_root / "valid" / "Annotations", davis / "Annotations_unsupervised" / "480p")

    run_rvos.main(["evaluate", "--model", str(model_dir), "--dataset", "ref-davis17", "--data_root", str(layout),
                   "--davis_root", str(davis), "--output_dir", str(tmp_path / "eval"), "--window", "2"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(results["per_run"]) == 4 and 0 <= results["J&F"] <= 1
    assert results["J&F"] == results["J&F-Mean"] and results["J"] == results["J-Mean"]


def test_evaluate_jhmdb_sentences(tmp_path, model_dir, data_root):
    root = tmp_path / "jhmdb"
    video_dir = root / "Rename_Images" / "shapes" / "clip"
    shutil.copytree(data_root / "valid" / "JPEGImages" / "shapes00000", video_dir)
    labels = []
    for index, path in enumerate(sorted(video_dir.iterdir())):
        Image.open(path).save(video_dir / f"{index + 1:05d}.png")
        path.unlink()
        labels.append(np.asarray(Image.open(data_root / "valid" / "Annotations" / "shapes00000" / f"{path.stem}.png")) == 1)
    mask_file = root / "puppet_mask" / "shapes" / "clip" / "puppet_mask.mat"
    mask_file.parent.mkdir(parents=True)
    savemat(mask_file, {"part_mask": np.stack(labels, axis=-1).astype(np.uint8)})
    metadata = [["clip", "jhmdb/Rename_Images/shapes/clip/00002.png", "jhmdb/puppet_mask/shapes/clip/puppet_mask.mat", 3, "the shape"]]
    (root / "jhmdb_sentences_samples_metadata.json").write_text(json.dumps(metadata))
    rle = mask_utils.encode(np.asfortranarray(labels[1].astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ground_truth = {
        "images": [{"id": "v_clip_f_2", "height": 64, "width": 96}],
        "annotations": [{"id": 1, "image_id": "v_clip_f_2", "category_id": 1, "segmentation": rle, "iscrowd": 0,
                         "area": float(labels[1].sum())}],
        "categories": [{"id": 1, "name": "dummy_class"}],
    }
    (root / "jhmdb_sentences_gt_annotations_in_coco_format.json").write_text(json.dumps(ground_truth))

    run_rvos.main(["evaluate", "--model", str(model_dir), "--dataset", "jhmdb-sentences", "--data_root", str(root),
                   "--output_dir", str(tmp_path / "eval"), "--num_frames", "3"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"P@0.5", "P@0.9", "overall_iou", "mean_iou", "mAP"} <= set(results)


def test_predict_on_an_mp4_in_windows(tmp_path, model_dir, data_root):
    frame_paths = sorted((data_root / "valid" / "JPEGImages" / "shapes00000").iterdir())
    frames = [np.asarray(Image.open(path)) for path in frame_paths] * 2  # 6 frames
    video = write_video(frames, tmp_path / "shapes.mp4", fps=5)
    output_dir = tmp_path / "pred"
    options = ["predict", "--model", str(model_dir), "--videos", str(video), "--text", "the red circle", "the big square",
               "--output_dir", str(output_dir), "--window", "4"]
    run_rvos.main(options)
    video_dir = output_dir / "shapes"
    predictions = json.loads((video_dir / "predictions.json").read_text())
    assert predictions["frames"] == [f"{index:05d}" for index in range(6)]
    for exp_id, expression in enumerate(predictions["expressions"]):
        assert len(expression["window_query_indices"]) == 2  # windows of 4 + 2 frames
        assert [frame["frame"] for frame in expression["frames"]] == predictions["frames"]
        assert all(len(frame["box"]) == 4 and 0 <= frame["score"] <= 1 for frame in expression["frames"])
        masks = sorted((video_dir / str(exp_id)).iterdir())
        assert [path.name for path in masks] == [f"{index:05d}.png" for index in range(6)]
        with Image.open(masks[0]) as mask:
            assert mask.mode == "P" and mask.size == (96, 64)
        with Image.open(video_dir / f"overlay_{exp_id}.gif") as overlay:
            assert overlay.n_frames == 6

    with pytest.raises(SystemExit, match="exists and is not empty"):
        run_rvos.main(options)
    run_rvos.main(options + ["--overwrite", "--dtype", "bf16", "--overlay_format", "mp4"])
    assert (video_dir / "overlay_1.mp4").is_file() and not (video_dir / "overlay_1.gif").exists()


def test_predict_selects_one_query_over_the_whole_video_by_default(tmp_path, model_dir, data_root):
    frame_paths = sorted((data_root / "valid" / "JPEGImages" / "shapes00000").iterdir())
    frames = [np.asarray(Image.open(path)) for path in frame_paths] * 40  # 120 frames
    video = write_video(frames, tmp_path / "long.mp4", fps=10)
    run_rvos.main(["predict", "--model", str(model_dir), "--videos", str(video), "--text", "the red circle",
                   "the big square", "--output_dir", str(tmp_path / "pred"), "--overlay_format", "mp4"])
    predictions = json.loads((tmp_path / "pred" / "long" / "predictions.json").read_text())
    assert len(predictions["frames"]) == 120
    for expression in predictions["expressions"]:
        assert len(expression["window_query_indices"]) == 1 and expression["window_starts"] == [0]
        assert [frame["index"] for frame in expression["frames"]] == list(range(120))


def test_predict_streams_a_frame_folder_writing_what_the_windows_give(tmp_path, model_dir, data_root):
    """`--stream --overlap 0` is the windowed protocol written as it goes: the same masks and predictions; with an
    overlap the frames and names are the same and each window keeps the previous one's object."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frame_paths = sorted((data_root / "valid" / "JPEGImages" / "shapes00000").iterdir())
    for index in range(7):
        Image.open(frame_paths[index % len(frame_paths)]).save(folder / f"frame_{index}.png")
    common = ["predict", "--model", str(model_dir), "--videos", str(folder), "--text", "the red circle", "the big square",
              "--window", "3"]
    run_rvos.main(common + ["--output_dir", str(tmp_path / "windows")])
    run_rvos.main(common + ["--output_dir", str(tmp_path / "stream"), "--stream", "--overlap", "0"])
    windows = json.loads((tmp_path / "windows" / "frames" / "predictions.json").read_text())
    streamed = json.loads((tmp_path / "stream" / "frames" / "predictions.json").read_text())
    assert streamed == windows
    assert streamed["frames"] == [f"frame_{index}" for index in range(7)]
    for exp_id in ("0", "1"):
        for name in streamed["frames"]:
            with Image.open(tmp_path / "windows" / "frames" / exp_id / f"{name}.png") as expected, Image.open(
                tmp_path / "stream" / "frames" / exp_id / f"{name}.png"
            ) as actual:
                assert np.array_equal(np.asarray(actual), np.asarray(expected))
    run_rvos.main(common + ["--output_dir", str(tmp_path / "overlap"), "--stream", "--overlap", "1"])
    overlapped = json.loads((tmp_path / "overlap" / "frames" / "predictions.json").read_text())
    assert overlapped["frames"] == streamed["frames"]
    assert [expression["window_starts"] for expression in overlapped["expressions"]] == [[0, 3, 5]] * 2
    with pytest.raises(SystemExit, match="--overlap .* must be smaller than --window"):
        run_rvos.main(common + ["--output_dir", str(tmp_path / "bad"), "--stream", "--overlap", "3"])


def test_predict_writes_a_mask_per_frame_name_and_refuses_frames_sharing_a_name(tmp_path, data_root):
    """Frames `img.000.jpg, ...` keep their whole name (one mask each, as predictions.json lists them); a folder
    holding `img.000.jpg` and `img.000.png` is refused before anything is written. The embedded demo model runs."""
    frames = tmp_path / "dotted"
    frames.mkdir()
    clip = sorted((data_root / "valid" / "JPEGImages" / "shapes00000").iterdir())
    for index, path in enumerate(clip):
        shutil.copy(path, frames / f"img.{index:03d}.jpg")

    def predict(output_dir):
        run_rvos.main(["predict", "--model", str(run_rvos.DEMO_MODEL), "--videos", str(frames), "--text",
                       "the red circle", "the big square", "--output_dir", str(output_dir), "--device", "cpu"])

    predict(tmp_path / "pred")
    video_dir = tmp_path / "pred" / "dotted"
    names = ["img.000", "img.001", "img.002"]
    assert json.loads((video_dir / "predictions.json").read_text())["frames"] == names
    for exp_id in ("0", "1"):
        assert sorted(path.name for path in (video_dir / exp_id).iterdir()) == [f"{name}.png" for name in names]

    shutil.copy(clip[0], frames / "img.000.png")
    clash = f"error: The frames {frames / 'img.000.jpg'} and {frames / 'img.000.png'} share the name 'img.000'"
    with pytest.raises(SystemExit, match=re.escape(clash)):
        predict(tmp_path / "clash")
    assert not (tmp_path / "clash").exists()


def test_predict_refuses_a_symlinked_result_folder_and_a_video_without_a_name(tmp_path, data_root):
    """Checked before the model runs: a result folder that is a link (publishing would replace the link) and a video
    whose name minus extension is `.` or `..` (its results would land in the output root)."""
    frames = data_root / "valid" / "JPEGImages" / "shapes00000"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "shapes00000").symlink_to(tmp_path / "elsewhere")

    def error(video):
        with pytest.raises(SystemExit) as raised:
            run_rvos.main(["predict", "--model", str(run_rvos.DEMO_MODEL), "--videos", str(video), "--text", "a square",
                           "--output_dir", str(tmp_path / "pred"), "--overwrite"])
        return str(raised.value.code)

    assert error(frames) == (
        f"run_rvos.py predict: error: The output folder {tmp_path / 'pred' / 'shapes00000'} is a symbolic link, which "
        "publishing would replace; give the folder it points to, or another."
    )
    assert (tmp_path / "pred" / "shapes00000").is_symlink() and not any((tmp_path / "elsewhere").iterdir())
    for name, stem in (("..mp4", "."), ("...mp4", "..")):
        video = write_video([np.asarray(Image.open(path)) for path in sorted(frames.iterdir())], tmp_path / name)
        assert error(video) == (
            f"run_rvos.py predict: error: The video {video} gives no usable name for its result folder ({stem!r}): "
            "rename it."
        )
    assert sorted(path.name for path in (tmp_path / "pred").iterdir()) == ["shapes00000"]


@pytest.mark.parametrize("option, value", [("frame_stride", 2.5), ("max_frames", 3.0), ("window", True)])
def test_frame_counts_from_an_option_file_must_be_integers(tmp_path, option, value):
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"model": str(run_rvos.DEMO_MODEL), "videos": str(tmp_path), "text": ["a square"],
                                   "output_dir": str(tmp_path / "out"), option: value}))
    with pytest.raises(SystemExit, match=re.escape(f"predict: error: --{option} must be an integer, got {value!r}.")):
        run_rvos.main(["predict", str(options)])
    assert not (tmp_path / "out").exists()


def test_two_processes_evaluate_and_predict_exactly_as_one(tmp_path, model_dir):
    root = tmp_path / "shapes"
    generate_referring_shapes(root, num_videos=3, num_frames=3, height=64, width=96, seed=2, split="valid", max_objects=2)
    videos = tmp_path / "videos"  # a folder of videos: two MP4 files and a frame folder
    for index, clip in enumerate(sorted((root / "valid" / "JPEGImages").iterdir())):
        if index < 2:
            write_video([np.asarray(Image.open(path)) for path in sorted(clip.iterdir())], videos / f"{clip.name}.mp4", fps=5)
        else:
            shutil.copytree(clip, videos / clip.name)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for name, command in (("one", [sys.executable]), ("two", launch)):
        for options in (
            ["evaluate", "--model", str(model_dir), "--dataset", "synthetic", "--data_root", str(root), "--output_dir",
             str(tmp_path / name / "eval")],
            ["predict", "--model", str(model_dir), "--videos", str(videos), "--text", "the red circle", "the big square",
             "--output_dir", str(tmp_path / name / "pred")],
        ):
            result = subprocess.run(command + [str(SCRIPT), *options], capture_output=True, text=True, env=ENV)
            assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads((tmp_path / "one" / "eval" / "results.json").read_text()), json.loads(
        (tmp_path / "two" / "eval" / "results.json").read_text()
    )
    assert one["num_expressions"] > 3 and {key: value for key, value in one.items() if key != "submission"} == {
        key: value for key, value in two.items() if key != "submission"
    }
    for folder in ("eval/Annotations", "pred"):
        files = sorted(path.relative_to(tmp_path / "one" / folder) for path in (tmp_path / "one" / folder).rglob("*.*"))
        assert len(files) > 20 and files == sorted(
            path.relative_to(tmp_path / "two" / folder) for path in (tmp_path / "two" / folder).rglob("*.*")
        )
        for path in files:
            if path.suffix in (".png", ".json"):
                assert (tmp_path / "one" / folder / path).read_bytes() == (tmp_path / "two" / folder / path).read_bytes(), path
    assert sorted(path.name for path in (tmp_path / "two" / "pred").iterdir()) == ["shapes00000", "shapes00001", "shapes00002"]



def test_a_command_that_succeeds_ends_the_process_group(tmp_path, model_dir, data_root):
    """A process of `accelerate launch` leaving with its process group alive can abort at interpreter exit (SIGABRT in
    the communication library's threads) after complete results: a command that succeeded destroys the group; one that
    failed leaves it (the other processes may be inside a collective)."""
    frames = data_root / "valid" / "JPEGImages" / "shapes00000"
    options = ["predict", "--model", str(model_dir), "--videos", str(frames), "--text", "the red circle"]
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit, match="missing does not exist"):
            run_rvos.main([*options[:3], "--videos", str(tmp_path / "missing"), *options[5:], "--output_dir", str(tmp_path / "x")])
        assert torch.distributed.is_initialized()
        run_rvos.main([*options, "--output_dir", str(tmp_path / "pred")])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert len(list((tmp_path / "pred" / "shapes00000" / "0").iterdir())) == 3

def test_clear_errors(tmp_path, model_dir, data_root, capsys):
    def error(*argv):
        with pytest.raises(SystemExit) as raised:
            run_rvos.main(list(argv))
        return str(raised.value.code)

    predict = ["predict", "--model", str(model_dir), "--text", "the red circle", "--output_dir", str(tmp_path / "p")]
    assert "does not exist" in error(*predict, "--videos", str(tmp_path / "missing.mp4"))
    assert "does not exist" in error(*predict[:2], str(tmp_path / "no-model"), *predict[3:], "--videos", str(data_root))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "'bert' model, not a ReferFormer" in error(*predict[:2], str(bert), *predict[3:], "--videos", str(data_root))

    evaluate = ["evaluate", "--model", str(model_dir), "--output_dir", str(tmp_path / "e")]
    assert "Unknown --dataset 'ref-coco'" in error(*evaluate, "--dataset", "ref-coco", "--data_root", str(data_root))
    assert "does not exist" in error(*evaluate, "--dataset", "synthetic", "--data_root", str(tmp_path / "nothing"))
    assert "needs --davis_root" in error(*evaluate, "--dataset", "ref-davis17", "--data_root", str(data_root))

    train = ["train", "--dataset", "synthetic", "--data_root", str(data_root), "--max_steps", "1"]
    assert "'bert' model, not a ReferFormer" in error(*train, "--init_from", str(bert), "--output_dir", str(tmp_path / "t"))
    assert "exactly one of --init_from" in error(*train, "--output_dir", str(tmp_path / "t"))
    assert "exists and is not empty" in error(*train, "--config_name", "tiny", "--output_dir", str(model_dir))
    assert "Unknown --config_name 'huge'" in error(*train, "--config_name", "huge", "--output_dir", str(tmp_path / "t"))
    assert "missing optimizer.pt, training_state.json" in error(
        *train, "--config_name", "tiny", "--output_dir", str(tmp_path / "t"), "--resume_from_checkpoint", str(model_dir)
    )
    assert "unknown command 'fit'" in error("fit")
    with pytest.raises(SystemExit):
        run_rvos.main(["train", "--help"])
    assert "--config_name" in capsys.readouterr().out
    run_rvos.main(["--help"])
    overview = capsys.readouterr().out
    assert all(command in overview for command in ("predict", "evaluate", "train"))



def test_int8_dtype_loads_the_model_quantized(model_dir):
    """`--dtype int8` (predict, evaluate, serve) loads the model with its per-pixel `Linear` layers in dynamic int8."""
    segmenter = run_rvos.load_model(run_rvos.ModelArguments(model=str(model_dir), device="cpu", dtype="int8"))
    assert segmenter.dtype == torch.qint8
    assert any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in segmenter.model.modules())
    with pytest.raises(ValueError, match="--dtype"):
        run_rvos.ModelArguments(model=str(model_dir), device="cpu", dtype="int4")


def test_openvino_backend_predicts_what_pytorch_predicts(tmp_path, model_dir, data_root):
    """`--backend openvino` (the exported graph in OpenVINO, CPU) writes PyTorch's predictions up to fp32 rounding."""
    pytest.importorskip("openvino", reason="--backend openvino needs the `export` extra")
    frames = data_root / "valid" / "JPEGImages" / "shapes00000"
    for backend in ("pytorch", "openvino"):
        run_rvos.main(["predict", "--model", str(model_dir), "--videos", str(frames), "--text", "the red circle",
                       "the big square", "--output_dir", str(tmp_path / backend), "--backend", backend, "--window", "2"])
    pytorch, openvino = (json.loads((tmp_path / backend / "shapes00000" / "predictions.json").read_text())
                         for backend in ("pytorch", "openvino"))
    for expected, actual in zip(pytorch["expressions"], openvino["expressions"]):
        assert actual["window_query_indices"] == expected["window_query_indices"]
        for want, got in zip(expected["frames"], actual["frames"]):
            # fp32 rounding of the same computation (1e-3 px, 1e-5: tests/test_openvino_backend.py), then the file's
            # rounding to 0.01 px and 4 decimals, which may land a value on either side: one step, plus margin.
            np.testing.assert_allclose(got["box"], want["box"], atol=1.5e-2)
            np.testing.assert_allclose(got["score"], want["score"], atol=1.5e-4)
    for mask in sorted((tmp_path / "pytorch" / "shapes00000").rglob("*.png")):
        other = tmp_path / "openvino" / mask.relative_to(tmp_path / "pytorch")
        differing = np.asarray(Image.open(mask)) != np.asarray(Image.open(other))
        assert differing.mean() < 1e-3, (mask, int(differing.sum()))
    with pytest.raises(ValueError, match=r"^Unknown --backend 'onnx'; choose one of: pytorch, openvino\.$"):
        run_rvos.ModelArguments(model=str(model_dir), backend="onnx")
