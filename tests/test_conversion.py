"""Conversion of original ReferFormer checkpoints and numerical parity with the original code's fixtures."""

import argparse
import collections
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import REPO_ROOT, read_key_file, require_fixture
from referformer.cli_presets import build_shapes_tokenizer
from transformers import AutoModel, AutoProcessor

from referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerModel,
    ReferFormerProcessor,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
from referformer import conversion
from referformer.model_cards import backbone_name, model_card, training_data_from_setting


FIXTURES = ["original_resnet", "original_swin", "original_videoswin_public"]


def run_converter(*args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_checkpoint.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


def assert_outputs_match(outputs, reference, tolerances, clip=slice(None)):
    """Compares final and auxiliary outputs with the fixture, each within the fixture README's tolerance."""
    pairs = {
        "pred_logits": outputs.logits,
        "pred_boxes": outputs.pred_boxes,
        "pred_masks": outputs.pred_masks,
        "reference_points": outputs.reference_points,
    }
    for index, aux in enumerate(outputs.auxiliary_outputs):
        pairs.update(
            {
                f"aux_outputs.{index}.pred_logits": aux["logits"],
                f"aux_outputs.{index}.pred_boxes": aux["pred_boxes"],
                f"aux_outputs.{index}.pred_masks": aux["pred_masks"],
            }
        )
    assert pairs.keys() == {key for key in reference if not key.startswith("debug.")}
    for name, actual in pairs.items():
        tolerance = tolerances[name.rsplit(".", 1)[-1]]
        torch.testing.assert_close(
            actual, reference[name][clip], atol=tolerance["atol"], rtol=tolerance["rtol"], msg=lambda m: f"{name}: {m}"
        )


@pytest.fixture(scope="module", params=FIXTURES)
def converted_fixture(request, tmp_path_factory):
    """Converts a fixture with the command-line script (inferring the config from the weights) and reloads it."""
    fixture = require_fixture(request.param)
    fixture_config = json.loads((fixture / "config.json").read_text())
    output_dir = tmp_path_factory.mktemp(request.param)
    args_file = output_dir.parent / f"{request.param}_args.json"
    args_file.write_text(json.dumps(fixture_config["model_args"]))
    tokenizer_dir = output_dir.parent / f"{request.param}_tokenizer"
    build_shapes_tokenizer().save_pretrained(tokenizer_dir)
    result = run_converter(
        "--checkpoint", fixture / "original_state_dict.safetensors", "--output_dir", output_dir,
        "--original_args", args_file, "--tokenizer", tokenizer_dir, "--verify",
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(output_dir).eval()
    return model, fixture, fixture_config, output_dir


def test_converted_fixture_reproduces_original_outputs(converted_fixture):
    model, fixture, fixture_config, _ = converted_fixture
    inputs = load_file(fixture / "inputs.safetensors")
    reference = load_file(fixture / "outputs.safetensors")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"],
            pixel_mask=inputs["pixel_mask"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
    assert_outputs_match(outputs, reference, fixture_config["recommended_tolerances"] | _aux_tolerances(fixture_config))


def test_converted_fixture_reproduces_clip_zero_alone(converted_fixture):
    model, fixture, fixture_config, _ = converted_fixture
    inputs = load_file(fixture / "inputs.safetensors")
    reference = load_file(fixture / "outputs.safetensors")
    num_tokens = int(inputs["attention_mask"][0].sum())
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"][:1],
            input_ids=inputs["input_ids"][:1, :num_tokens],
        )
    tolerances = fixture_config["recommended_tolerances"] | _aux_tolerances(fixture_config)
    assert_outputs_match(outputs, reference, tolerances, clip=slice(0, 1))


def test_converted_fixture_intermediates(converted_fixture):
    """Encoder memory, mask features and the decoder states match the original's debug intermediates."""
    model, fixture, fixture_config, _ = converted_fixture
    inputs = load_file(fixture / "inputs.safetensors")
    reference = load_file(fixture / "outputs.safetensors")
    with torch.no_grad():
        outputs = model.model(
            pixel_values=inputs["pixel_values"],
            pixel_mask=inputs["pixel_mask"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
    tolerance = fixture_config["recommended_tolerances"]["debug.*"]
    expected = {
        "debug.encoder.memory": outputs.encoder_last_hidden_state.flatten(0, 1),
        "debug.pixel_decoder.mask_features": outputs.mask_features.flatten(0, 1),
        "debug.transformer.hs": outputs.intermediate_hidden_states.transpose(0, 1).flatten(1, 2),
        "debug.transformer.inter_references": outputs.intermediate_pred_boxes.transpose(0, 1).flatten(1, 2),
        "debug.transformer.init_reference": outputs.intermediate_reference_points[:, 0].flatten(0, 1),
    }
    for name, actual in expected.items():
        torch.testing.assert_close(actual, reference[name], msg=lambda m: f"{name}: {m}", **tolerance)


def test_compiled_kernel_and_pytorch_attention_agree_on_the_fixture(converted_fixture):
    """The converted model gives the same outputs with the compiled deformable-attention op as without it."""
    import referformer.kernels

    model, fixture, fixture_config, folder = converted_fixture
    assert referformer.kernels.is_available("cpu"), "the CPU kernel must build here (g++ and ninja are installed)"
    pytorch_model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(folder, disable_custom_kernels=True).eval()
    inputs = load_file(fixture / "inputs.safetensors")
    with torch.no_grad():
        with_kernel = model(**inputs_without_sizes(inputs))
        without_kernel = pytorch_model(**inputs_without_sizes(inputs))
    assert_outputs_match(with_kernel, load_file(fixture / "outputs.safetensors"), fixture_config["recommended_tolerances"] | _aux_tolerances(fixture_config))
    tolerances = fixture_config["recommended_tolerances"] | _aux_tolerances(fixture_config)
    for name in ("logits", "pred_boxes", "pred_masks"):
        tolerance = tolerances["pred_" + name.removeprefix("pred_")]
        torch.testing.assert_close(with_kernel[name], without_kernel[name], **tolerance)


def inputs_without_sizes(inputs):
    return {key: inputs[key] for key in ("pixel_values", "pixel_mask", "input_ids", "attention_mask")}


def test_converted_folder_loads_with_auto_classes(converted_fixture):
    model, fixture, fixture_config, folder = converted_fixture
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, ReferFormerProcessor)
    text_config = fixture_config["text_encoder"]["config"]
    assert processor.tokenizer.model_max_length == text_config["max_position_embeddings"] - 2
    base = AutoModel.from_pretrained(folder)
    assert isinstance(base, ReferFormerModel)
    assert torch.equal(base.query_position_embeddings.weight, model.model.query_position_embeddings.weight)


def _aux_tolerances(fixture_config):
    tolerances = fixture_config["recommended_tolerances"]
    return {key: tolerances[key] for key in ("pred_logits", "pred_boxes", "pred_masks")}


# ----------------------------------------------------------------------------- full-size key coverage


@pytest.mark.parametrize(
    "name, backbone_class, expected_backbone",
    [
        ("resnet50", ReferFormerTimmBackboneConfig, {"model_name": "resnet50", "model_kwargs": {}}),
        ("resnet101", ReferFormerTimmBackboneConfig, {"model_name": "resnet101", "model_kwargs": {}}),
        ("swin_t_p4w7", ReferFormerSwinBackboneConfig, {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}),
        ("swin_l_p4w7", ReferFormerSwinBackboneConfig, {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]}),
        ("video_swin_t_p4w7", ReferFormerVideoSwinBackboneConfig, {"embed_dim": 96, "depths": [2, 2, 6, 2], "window_size": [8, 7, 7]}),
        ("video_swin_b_p4w7", ReferFormerVideoSwinBackboneConfig, {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]}),
    ],
)
def test_full_size_keys_map_completely(name, backbone_class, expected_backbone):
    state_dict = read_key_file(require_fixture("original_keys") / f"{name}.txt")
    family, config = conversion.infer_config(state_dict)
    assert isinstance(config.backbone_config, backbone_class)
    for field, value in expected_backbone.items():
        assert getattr(config.backbone_config, field) == value, field
    assert (config.d_model, config.num_queries, config.num_classes, config.decoder_layers) == (256, 5, 1, 4)
    assert config.with_box_refine and config.num_dynamic_params == 2153
    assert config.text_config.vocab_size == 50265 and config.text_config.num_hidden_layers == 12
    converted = conversion.convert_state_dict(state_dict, family, config.with_box_refine)
    with torch.device("meta"):
        model = ReferFormerForReferringVideoObjectSegmentation(config)
    conversion.check_weights_fit(model.state_dict(), converted)


@pytest.mark.parametrize(
    "name, backbone",
    [
        ("resnet50", "ResNet-50"),
        ("resnet101", "ResNet-101"),
        ("swin_t_p4w7", "Swin-T"),
        ("swin_l_p4w7", "Swin-L"),
        ("video_swin_t_p4w7", "Video-Swin-T"),
        ("video_swin_b_p4w7", "Video-Swin-B"),
    ],
)
def test_full_size_backbones_are_named_in_the_model_card(name, backbone):
    _, config = conversion.infer_config(read_key_file(require_fixture("original_keys") / f"{name}.txt"))
    assert backbone_name(config.backbone_config) == backbone
    card = model_card(config, training_data_from_setting("joint"), f"{name}.pth", "referformer")
    assert f"# ReferFormer ({backbone}, joint training)" in card and "- Text encoder: RoBERTa-base" in card


# ----------------------------------------------------------------------------- loading and strictness


@pytest.fixture(scope="module")
def resnet_fixture():
    fixture = require_fixture("original_resnet")
    return load_file(fixture / "original_state_dict.safetensors"), json.loads((fixture / "config.json").read_text())


def test_pth_training_checkpoint_with_args_and_leftovers(tmp_path, resnet_fixture):
    state_dict, fixture_config = resnet_fixture
    model_args = fixture_config["model_args"]
    polluted = dict(state_dict)
    polluted["text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    polluted["input_proj.0.0.total_ops"] = torch.zeros(1, dtype=torch.float64)
    polluted["input_proj.0.0.total_params"] = torch.zeros(1, dtype=torch.float64)
    checkpoint = {
        "model": polluted,
        "args": argparse.Namespace(**model_args, lr=1e-4, backbone="resnet50"),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "lr_scheduler": {"milestones": collections.Counter({6: 1, 8: 1}), "last_epoch": 3},
        "epoch": 3,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    loaded, args = conversion.load_original_checkpoint(path)
    assert args["dec_layers"] == 3 and args["backbone"] == "resnet50"
    model = conversion.build_converted_model(loaded, args)
    reference = conversion.build_converted_model(state_dict, model_args)
    assert model.config.backbone_config.model_kwargs == {"layers": [1, 1, 1, 1], "base_width": 16}
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


class NotAllowed:
    pass


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": NotAllowed()}, path)
    with pytest.raises(conversion.ConversionError, match="Refusing to load .*weights_only"):
        conversion.load_original_checkpoint(path)


def test_unknown_and_missing_keys_are_listed(resnet_fixture):
    state_dict, fixture_config = resnet_fixture
    extra = dict(state_dict, **{"some_new_head.weight": torch.zeros(2)})
    with pytest.raises(conversion.ConversionError, match="some_new_head.weight"):
        conversion.build_converted_model(extra, fixture_config["model_args"])
    missing = {key: value for key, value in state_dict.items() if key != "pixel_decoder.mask_features.bias"}
    with pytest.raises(conversion.ConversionError, match="missing in the checkpoint: model.pixel_decoder.mask_features.bias"):
        conversion.build_converted_model(missing, fixture_config["model_args"])


def test_inconsistent_arguments_are_reported(resnet_fixture):
    state_dict, fixture_config = resnet_fixture
    with pytest.raises(conversion.ConversionError, match="controller generates 617 parameters"):
        conversion.infer_config(state_dict, dict(fixture_config["model_args"], dynamic_mask_channels=4))


def test_cli_errors_write_nothing(tmp_path, resnet_fixture):
    state_dict, _ = resnet_fixture
    broken = dict(state_dict, **{"unexpected.weight": torch.zeros(1)})
    checkpoint = tmp_path / "broken.safetensors"
    save_file(broken, checkpoint)
    output_dir = tmp_path / "out"
    result = run_converter("--checkpoint", checkpoint, "--output_dir", output_dir)
    assert result.returncode == 1 and "unexpected.weight" in result.stderr
    assert not output_dir.exists()
    output_dir.mkdir()
    (output_dir / "keep.txt").write_text("user data")
    result = run_converter("--checkpoint", checkpoint, "--output_dir", output_dir)
    assert result.returncode != 0 and "not empty" in result.stderr
    assert (output_dir / "keep.txt").read_text() == "user data"
    result = run_converter("--checkpoint", tmp_path / "missing.pth", "--output_dir", tmp_path / "other")
    assert result.returncode == 1 and "not found" in result.stderr


def test_non_finite_weights_are_never_converted(tmp_path):
    weights = {"query_embed.weight": torch.zeros(5, 8), "transformer.level_embed": torch.zeros(4, 8)}
    weights["transformer.level_embed"][2, 3] = float("nan")
    for path in (tmp_path / "nan.safetensors", tmp_path / "nan.pth"):
        if path.suffix == ".pth":
            torch.save({"model": weights}, path)
        else:
            save_file(weights, path)
        with pytest.raises(conversion.ConversionError, match=rf"^{path}: the weight transformer.level_embed holds NaN "
                                                             r"or infinite values; nothing was converted\.$"):
            conversion.load_original_checkpoint(path)
    weights["transformer.level_embed"][2, 3] = float("inf")
    save_file(weights, tmp_path / "inf.safetensors")
    result = run_converter("--checkpoint", tmp_path / "inf.safetensors", "--output_dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'inf.safetensors'}: the weight transformer.level_embed holds NaN or infinite values; "
        "nothing was converted."
    )
    assert not (tmp_path / "out").exists()


def test_offline_conversion_without_a_local_tokenizer_fails_clearly(tmp_path):
    fixture = require_fixture("original_resnet")
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(json.loads((fixture / "config.json").read_text())["model_args"]))
    offline = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    output_dir = tmp_path / "out"
    result = run_converter(
        "--checkpoint", fixture / "original_state_dict.safetensors", "--output_dir", output_dir,
        "--original_args", args_file, env=offline,
    )
    assert result.returncode == 1
    assert "Cannot load the tokenizer 'FacebookAI/roberta-base'" in result.stderr
    assert "pass --tokenizer with a local folder" in result.stderr
    assert "Traceback" not in result.stderr and not output_dir.exists()


def test_backbone_name_in_the_arguments_does_not_override_the_weights():
    fixture = require_fixture("original_swin")
    state_dict = load_file(fixture / "original_state_dict.safetensors")
    model_args = json.loads((fixture / "config.json").read_text())["model_args"]
    family, config = conversion.infer_config(state_dict, dict(model_args, backbone="swin_l_p4w7"))
    assert family == "swin"
    assert (config.backbone_config.embed_dim, config.backbone_config.num_heads) == (32, [1, 2, 4, 8])
