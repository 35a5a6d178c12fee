"""Model cards of converted checkpoints: backbone names, training data, the paper's scores, and the converter writing
and pushing them."""

import argparse
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import InferenceClient, ModelCard
from safetensors.torch import load_file
from transformers.pipelines import PIPELINE_REGISTRY

from helpers import REPO_ROOT, load_script, require_fixture

from referformer import (
    ReferFormerConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
from referformer.cli_presets import build_shapes_tokenizer
from referformer.conversion import convert_checkpoint
from referformer.model_cards import (
    HUB_PIPELINE_TAG,
    PAPER_SCORES,
    TRAINING_SETTINGS,
    backbone_name,
    describe_backbone,
    model_card,
    resolve_training_data,
    trained_model_card,
    training_data_from_args,
    training_data_from_setting,
)
from referformer.pipeline_referformer import TASK as PIPELINE_TASK
from referformer.training import AccelerateTrainingArguments


convert_script = load_script("convert_checkpoint")

SWIN_SIZES = {
    "T": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "S": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "B": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "L": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def swin(size, video=False, **overrides):
    embed_dim, depths, num_heads = SWIN_SIZES[size]
    config_class = ReferFormerVideoSwinBackboneConfig if video else ReferFormerSwinBackboneConfig
    return config_class(embed_dim=embed_dim, depths=depths, num_heads=num_heads, **overrides)


def resnet(model_name="resnet50", **model_kwargs):
    return ReferFormerTimmBackboneConfig(model_name=model_name, model_kwargs=model_kwargs)


def config_with(backbone_config):
    return ReferFormerConfig(backbone_config=backbone_config)


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize(
    "backbone_config, name",
    [
        (resnet("resnet50"), "ResNet-50"),
        (resnet("resnet101"), "ResNet-101"),
        (resnet("resnet50", layers=[3, 4, 23, 3]), "ResNet-101"),  # the layer counts decide
        (resnet("resnet50", layers=[1, 1, 1, 1], base_width=16), None),
        (resnet("resnet50", output_stride=16), None),  # dilated last stage: not a released architecture
        (resnet("convnext_tiny"), None),
        *[(swin(size), f"Swin-{size}") for size in "TSBL"],
        *[(swin(size, video=True), f"Video-Swin-{size}") for size in "TSB"],
        (swin("T", window_size=12), None),
        (swin("B", video=True, window_size=[16, 7, 7]), None),
        (ReferFormerSwinBackboneConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4]), None),
    ],
)
def test_backbone_names(backbone_config, name):
    assert backbone_name(backbone_config) == name


def test_backbone_descriptions():
    assert describe_backbone(resnet("resnet101")) == "ResNet-101 (timm `resnet101`)"
    assert describe_backbone(resnet("resnet50", layers=[1, 1, 1, 1], base_width=16)) == (
        "non-standard: timm `resnet50` with layers=[1, 1, 1, 1], base_width=16"
    )
    assert describe_backbone(swin("L")) == (
        "Swin-L (Swin Transformer, embedding dim 192, depths [2, 2, 18, 2], heads [6, 12, 24, 48], window 7, patch 4)"
    )
    tiny = ReferFormerVideoSwinBackboneConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4])
    assert describe_backbone(tiny) == (
        "non-standard Video Swin Transformer: embedding dim 16, depths [1, 2, 1, 1], heads [1, 2, 2, 4], "
        "window [8, 7, 7], patch [1, 4, 4], MLP ratio 4.0"
    )


# ----------------------------------------------------------------------------- training data


@pytest.mark.parametrize(
    "args, setting",
    [
        ({"dataset_file": "ytvos", "pretrained_weights": "pretrained_weights/r50_pretrained.pth"}, "ref-youtube-vos"),
        ({"dataset_file": "ytvos", "pretrained_weights": None}, "ref-youtube-vos-scratch"),
        ({"dataset_file": "joint"}, "joint"),
        ({"dataset_file": "all"}, "refcoco-pretrain"),
        ({"dataset_file": "a2d", "pretrained_weights": "video_swin_tiny_pretrained.pth"}, "a2d-sentences"),
        ({"dataset_file": "a2d", "pretrained_weights": None}, "a2d-sentences-scratch"),
    ],
)
def test_training_data_of_released_settings(args, setting):
    training_data = training_data_from_args(args)
    assert training_data.setting == setting
    assert training_data.description == TRAINING_SETTINGS[setting].description
    assert f"`dataset_file={args['dataset_file']}`" in training_data.source


@pytest.mark.parametrize(
    "dataset_file, described_as",
    [
        ("refcoco+", "RefCOCO+ alone"),
        ("ytvos", "Ref-YouTube-VOS; whether it started from the RefCOCO/+/g pretraining weights is not recorded"),
        ("a2d", "A2D-Sentences; whether it started from the RefCOCO/+/g pretraining weights is not recorded"),
        ("davis", "Ref-DAVIS17 (no released model is trained on it"),
        ("jhmdb", "JHMDB-Sentences, which the original only evaluates on"),
        ("kinetics", "`dataset_file=kinetics`, not a dataset of the original"),
    ],
)
def test_training_data_without_released_model(dataset_file, described_as):
    training_data = training_data_from_args({"dataset_file": dataset_file})
    assert training_data.setting is None and training_data.description.startswith(described_as)
    assert training_data.source == f"read from the training arguments (`dataset_file={dataset_file}`)"


def test_training_data_by_name_overrides_the_arguments():
    assert training_data_from_args({"nheads": 8}) is None
    assert resolve_training_data({"nheads": 8}) is None
    ytvos_scratch = {"dataset_file": "ytvos", "pretrained_weights": None}
    assert resolve_training_data(ytvos_scratch, "joint").setting == "joint"
    assert resolve_training_data(ytvos_scratch).setting == "ref-youtube-vos-scratch"
    training_data = training_data_from_setting("joint")
    assert training_data.setting == "joint" and training_data.source == "given with `--training_data joint`"
    with pytest.raises(ValueError, match="Unknown training data 'ytvos'"):
        training_data_from_setting("ytvos")


# ----------------------------------------------------------------------------- cards


def score_rows(card_text):
    """The rows of the card's score table, without its header."""
    return [line for line in card_text.splitlines() if line.startswith("| ")][2:]


def test_card_front_matter_and_ref_youtube_vos_scores():
    training_data = training_data_from_args({"dataset_file": "ytvos", "pretrained_weights": "w.pth"})
    card_text = model_card(config_with(swin("B", video=True)), training_data, "ytvos_video_swin_b.pth", "org/model")
    card = ModelCard(card_text)
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    # The Hub task (the pipeline's task is no Hub task) and, in the tags, the task the package's pipeline registers.
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.tags == ["referring-video-object-segmentation", "video-object-segmentation", "referformer"]
    assert card.data.tags[0] == PIPELINE_TASK and PIPELINE_TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert card.data.datasets == ["ref-youtube-vos", "refcoco", "refcoco+", "refcocog"] and card.data.base_model is None
    assert card.data.model_name == "ReferFormer (Video-Swin-B, Ref-YouTube-VOS)"
    assert [(r.task_type, r.dataset_type, r.dataset_name, r.metric_type, r.metric_name, r.metric_value)
            for r in card.data.eval_results] == [
        (PIPELINE_TASK, "ref-youtube-vos", "Ref-YouTube-VOS", "j_f", "J&F", 62.9),
        (PIPELINE_TASK, "ref-davis17", "Ref-DAVIS17", "j_f", "J&F", 61.1),
        (PIPELINE_TASK, "ref-davis17", "Ref-DAVIS17", "j", "J", 58.1),
        (PIPELINE_TASK, "ref-davis17", "Ref-DAVIS17", "f", "F", 64.1),
    ]
    assert "# ReferFormer (Video-Swin-B, Ref-YouTube-VOS)" in card_text
    assert "- Visual backbone: Video-Swin-B (Video Swin Transformer, embedding dim 128" in card_text
    assert "- Text encoder: RoBERTa-base" in card_text
    assert "4 encoder layers, 4 decoder layers, hidden size 256, 5 queries per frame, with box refinement" in card_text
    assert "`ytvos_video_swin_b.pth`" in card_text and 'from_pretrained("org/model")' in card_text
    assert "read from the training arguments (`dataset_file=ytvos`, `pretrained_weights` set)" in card_text
    assert score_rows(card_text) == [
        "| Ref-YouTube-VOS | J&F | 62.9 |",
        "| Ref-DAVIS17 | J&F | 61.1 |",
        "| Ref-DAVIS17 | J | 58.1 |",
        "| Ref-DAVIS17 | F | 64.1 |",
    ]


def test_hub_pipeline_tag_is_a_hub_task_and_the_demo_card_uses_it():
    """The cards' `pipeline_tag` is a task of the Hub's inference API (`InferenceClient` has a method per task; the
    pipeline's own task has none), and the committed demo model's hand-written card has the same front matter."""
    assert callable(getattr(InferenceClient, HUB_PIPELINE_TAG.replace("-", "_")))
    assert not hasattr(InferenceClient, PIPELINE_TASK.replace("-", "_"))
    demo_card = ModelCard.load(REPO_ROOT / "checkpoints" / "referformer-tiny-shapes" / "README.md").data
    assert (demo_card.library_name, demo_card.pipeline_tag) == ("transformers", HUB_PIPELINE_TAG)
    assert PIPELINE_TASK in demo_card.tags


@pytest.mark.parametrize(
    "backbone_config, setting, expected_rows",
    [
        (resnet(), "ref-youtube-vos", ["| Ref-YouTube-VOS | J&F | 55.6 |", "| Ref-YouTube-VOS | CFBI J&F | 59.4 |"]),
        (swin("T", video=True), "ref-youtube-vos-scratch", ["| Ref-YouTube-VOS | J&F | 56.0 |"]),
        (resnet("resnet101"), "joint", ["| Ref-YouTube-VOS | J&F | 59.3 |", "| Ref-YouTube-VOS | J | 58.1 |"]),
        (
            swin("S", video=True),
            "a2d-sentences",
            ["| A2D-Sentences | overall IoU | 77.7 |", "| JHMDB-Sentences | mAP | 42.4 |"],
        ),
        (
            swin("T", video=True),
            "a2d-sentences-scratch",
            ["| A2D-Sentences | mean IoU | 64.1 |", "| JHMDB-Sentences | mAP | 39.1 |"],
        ),
        (
            swin("L"),
            "refcoco-pretrain",
            ["| RefCOCO | P@0.5 (REC) | 89.8 |", "| RefCOCOg | overall IoU (RIS) | 69.3 |"],
        ),
    ],
)
def test_card_scores_per_setting(backbone_config, setting, expected_rows):
    card_text = model_card(config_with(backbone_config), training_data_from_setting(setting), "model.pth", "m")
    rows = score_rows(card_text)
    assert set(expected_rows) <= set(rows)
    assert f"given with `--training_data {setting}`" in card_text


def test_card_without_scores():
    unknown = model_card(config_with(resnet("resnet50")), None, "model.pth", "m")
    metadata = ModelCard(unknown).data
    assert metadata.eval_results is None and metadata.datasets is None and metadata.pipeline_tag == HUB_PIPELINE_TAG
    assert "## Training data\n\nUnknown" in unknown and score_rows(unknown) == []
    assert "# ReferFormer (ResNet-50)\n" in unknown
    unreported = model_card(config_with(swin("T")), training_data_from_setting("joint"), "model.pth", "m")
    assert "The authors report no scores for this backbone and training data." in unreported
    assert score_rows(unreported) == []
    davis_data = training_data_from_args({"dataset_file": "davis"})
    davis = model_card(config_with(resnet("resnet50")), davis_data, "model.pth", "m")
    assert score_rows(davis) == [] and "# ReferFormer (ResNet-50)\n" in davis
    tiny = ReferFormerSwinBackboneConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4])
    custom = model_card(config_with(tiny), training_data_from_setting("ref-youtube-vos"), "model.pth", "m")
    assert "# ReferFormer (custom backbone, Ref-YouTube-VOS)" in custom and score_rows(custom) == []


def test_score_table_covers_the_released_models():
    """Every score belongs to a training setting and a backbone the cards recognize; counts follow the model zoo."""
    names = {backbone_name(resnet(f"resnet{depth}")) for depth in (50, 101)}
    names |= {backbone_name(swin(size)) for size in "TSBL"} | {backbone_name(swin(size, video=True)) for size in "TSB"}
    assert {setting for setting, _ in PAPER_SCORES} == set(TRAINING_SETTINGS)
    assert {name for _, name in PAPER_SCORES} <= names
    per_setting = {setting: sum(1 for key in PAPER_SCORES if key[0] == setting) for setting in TRAINING_SETTINGS}
    assert per_setting == {
        "ref-youtube-vos": 7, "ref-youtube-vos-scratch": 1, "joint": 6,
        "refcoco-pretrain": 4, "a2d-sentences": 3, "a2d-sentences-scratch": 1,
    }


def test_trained_model_card_front_matter_recipe_and_results(tmp_path):
    args = AccelerateTrainingArguments("run", max_steps=4, lr_drop_steps=[3], per_device_batch_size=2)
    results = {"dataset": "ref-youtube-vos", "J&F": 0.5, "J": 0.375, "F": 0.625, "num_expressions": 7}
    card_text = trained_model_card(
        "user/tiny", "ref-youtube-vos", "ytvos", "train", args, {"num_frames": 2}, init_from="someone/referformer-r50",
        results=results, eval_split="valid",
    )
    metadata = ModelCard(card_text).data
    assert (metadata.license, metadata.library_name, metadata.pipeline_tag) == ("apache-2.0", "transformers", HUB_PIPELINE_TAG)
    assert PIPELINE_TASK in metadata.tags
    assert metadata.datasets == ["ref-youtube-vos"] and metadata.base_model == "someone/referformer-r50"
    assert [(r.dataset_type, r.dataset_split, r.metric_name, r.metric_value) for r in metadata.eval_results] == [
        ("ref-youtube-vos", "valid", "J&F", 0.5), ("ref-youtube-vos", "valid", "J", 0.375), ("ref-youtube-vos", "valid", "F", 0.625),
    ]
    assert "| start | fine-tuned from `someone/referformer-r50` |" in card_text
    assert "| optimizer steps | 4 |" in card_text and "| clips per step and process | 2 |" in card_text
    assert "| J&F | 0.5000 |" in card_text and "On split `valid` of `ytvos`." in card_text
    assert "| num frames | 2 |" in card_text and "num_expressions" not in card_text

    local = trained_model_card("run", "joint", "ytvos", "train", args, {}, init_from=str(tmp_path), refcoco_datasets=["refcocog"])
    metadata = ModelCard(local).data
    assert metadata.base_model is None and metadata.eval_results is None
    assert metadata.datasets == ["ref-youtube-vos", "refcocog"]
    assert "Not evaluated after training" in local and "Ref-YouTube-VOS + refcocog (each image" in local


# ----------------------------------------------------------------------------- converter


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """The ResNet fixture as an original training checkpoint of the A2D fine-tuning stage, and a tokenizer folder."""
    fixture = require_fixture("original_resnet")
    model_args = json.loads((fixture / "config.json").read_text())["model_args"]
    folder = tmp_path_factory.mktemp("card_inputs")
    path = folder / "a2d_checkpoint.pth"
    args = argparse.Namespace(**model_args, dataset_file="a2d", pretrained_weights="pretrained_weights/r50.pth")
    torch.save({"model": load_file(fixture / "original_state_dict.safetensors"), "args": args}, path)
    build_shapes_tokenizer().save_pretrained(folder / "tokenizer")
    return path, folder / "tokenizer"


def test_converter_writes_the_card_from_the_checkpoint_args(tmp_path, resnet_checkpoint):
    checkpoint, tokenizer = resnet_checkpoint
    convert_checkpoint(checkpoint, tmp_path / "out", tokenizer=str(tokenizer))
    card_text = (tmp_path / "out" / "README.md").read_text()
    assert ModelCard(card_text).data.license == "apache-2.0"
    assert (
        "A2D-Sentences, fine-tuned from the RefCOCO/RefCOCO+/RefCOCOg pretraining weights; read from the training "
        "arguments (`dataset_file=a2d`, `pretrained_weights` set)."
    ) in card_text
    assert "non-standard: timm `resnet50` with layers=[1, 1, 1, 1], base_width=16" in card_text
    assert "The authors report no scores for this backbone and training data." in card_text
    assert "`a2d_checkpoint.pth`" in card_text


def test_cli_training_data_option_and_push(tmp_path, resnet_checkpoint, monkeypatch):
    checkpoint, tokenizer = resnet_checkpoint
    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        calls.append(("create_repo", repo_id, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
        folder_path = Path(folder_path)
        uploaded = [path.name for path in folder_path.iterdir() if path.name not in ignore_patterns]
        calls.append(("upload_folder", repo_id, sorted(uploaded)))
        calls.append(("card", (folder_path / "README.md").read_text()))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    output_dir = tmp_path / "out"
    exit_code = convert_script.main(
        [
            "--checkpoint", str(checkpoint), "--output_dir", str(output_dir), "--tokenizer", str(tokenizer),
            "--training_data", "joint", "--push_to_hub", "someone/referformer-test",
        ]
    )
    assert exit_code == 0
    assert calls[0] == ("create_repo", "someone/referformer-test", True)
    assert calls[1][:2] == ("upload_folder", "someone/referformer-test")
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(calls[1][2])
    assert not any(name.startswith(".") for name in calls[1][2])  # the output manifest stays local
    assert calls[2][1] == (output_dir / "README.md").read_text()
    assert "Ref-YouTube-VOS and RefCOCO/RefCOCO+/RefCOCOg jointly; given with `--training_data joint`" in calls[2][1]
    assert 'from_pretrained("someone/referformer-test")' in calls[2][1]

    with pytest.raises(SystemExit):
        convert_script.main(
            ["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "other"), "--training_data", "ytvos"]
        )
    assert not (tmp_path / "other").exists()
