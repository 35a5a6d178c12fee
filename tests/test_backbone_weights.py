"""Loading ImageNet / Kinetics / original-format backbone weights into a ReferFormer backbone."""

import argparse

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from helpers import unit_test_config

from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerModel
from referformer.backbone_weights import BackboneWeightsReport, load_backbone_weights


SIZES = {"embed_dim": 16, "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4]}
SWIN = {"model_type": "referformer_swin", **SIZES}
VIDEO_SWIN = {"model_type": "referformer_video_swin", **SIZES}


def tiny_model(backbone_config=None, base_model=False):
    """A tiny ReferFormer (default: ResNet-18-like backbone with one block per stage), backbone weights zeroed so
    that every loaded value is visible."""
    config = unit_test_config(backbone_config=backbone_config) if backbone_config else unit_test_config()
    model = (ReferFormerModel if base_model else ReferFormerForReferringVideoObjectSegmentation)(config)
    backbone = model.backbone if base_model else model.model.backbone
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.zero_()
    return model, backbone


def random_state(module, seed=1):
    """A state dict of `module`'s shapes with random values (cloned, the module is left alone)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value.clone()
        for key, value in module.state_dict().items()
    }


def torchvision_resnet_state(seed=1):
    """An ImageNet-style torchvision ResNet state dict (BasicBlock, one block per stage, `fc` head, batch-norm
    counters), of the shapes of the tiny model's timm backbone."""
    resnet = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    return random_state(resnet, seed=seed)


@pytest.mark.parametrize(
    "suffix, wrap, base_model",
    [
        (".pth", lambda state: state, False),
        (".pt", lambda state: {"model": state, "epoch": 3}, True),
        (".pth", lambda state: {"state_dict": {f"module.{key}": value for key, value in state.items()}}, False),
        (".safetensors", lambda state: state, True),
    ],
    ids=["bare", "model-container", "state_dict-container-dataparallel", "safetensors"],
)
def test_torchvision_resnet(tmp_path, suffix, wrap, base_model):
    state = torchvision_resnet_state()
    path = tmp_path / f"resnet{suffix}"
    if suffix == ".safetensors":
        save_file(wrap(state), path)
    else:
        torch.save(wrap(state), path)
    model, backbone = tiny_model(base_model=base_model)

    report = load_backbone_weights(model, path)

    for key, value in backbone.state_dict().items():  # conv1.weight, layer4.0.downsample.1.running_var, ...
        assert torch.equal(value, state[key.removeprefix("body.")]), key
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(backbone.state_dict())
    counters = {key for key in state if key.endswith("num_batches_tracked")}
    assert counters and set(report.ignored) == {"fc.weight", "fc.bias"} | counters


def test_original_referformer_format_takes_only_the_backbone(tmp_path):
    model, backbone = tiny_model()
    source = random_state(backbone)
    checkpoint = {f"backbone.0.body.{key.removeprefix('body.')}": value for key, value in source.items()}
    checkpoint["transformer.level_embed"] = torch.ones(4, 32)
    checkpoint["text_encoder.pooler.dense.bias"] = torch.ones(32)
    path = tmp_path / "r50_pretrained.pth"
    torch.save({"model": checkpoint, "args": argparse.Namespace(backbone="resnet50")}, path)

    report = load_backbone_weights(model, path, strict=True)

    for key, value in source.items():
        assert torch.equal(backbone.state_dict()[key], value), key
    assert report.ignored == ["transformer.level_embed", "text_encoder.pooler.dense.bias"]
    assert report.missing == report.unexpected == []


def microsoft_swin_checkpoint(backbone):
    """The Microsoft ImageNet layout: bare keys, classifier `norm` and `head`, `attn_mask` and index buffers, and no
    per-stage output norms."""
    state = random_state(backbone)
    checkpoint = {key: value for key, value in state.items() if not key.startswith("norm")}
    last_channels = backbone.channels[-1]
    checkpoint.update(
        {
            "norm.weight": torch.full((last_channels,), 2.0),
            "norm.bias": torch.full((last_channels,), 3.0),
            "head.weight": torch.ones(10, last_channels),
            "head.bias": torch.ones(10),
            "layers.1.blocks.1.attn_mask": torch.zeros(4, 49, 49),
            "layers.0.blocks.0.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long),
        }
    )
    return state, checkpoint


def test_microsoft_swin_imagenet_checkpoint(tmp_path):
    model, backbone = tiny_model(SWIN)
    state, checkpoint = microsoft_swin_checkpoint(backbone)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": checkpoint}, path)

    report = load_backbone_weights(model, path)

    loaded = backbone.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "patch_embed.norm.bias",
        "layers.1.blocks.1.attn.relative_position_bias_table",
        "layers.2.blocks.0.attn.qkv.weight",
        "layers.0.downsample.reduction.weight",
        "layers.2.downsample.norm.weight",
        "layers.3.blocks.0.mlp.fc2.bias",
    ):
        assert torch.equal(loaded[key], state[key]), key
    assert report.missing == [f"norm{stage}.{name}" for stage in range(4) for name in ("weight", "bias")]
    assert torch.equal(loaded["norm3.weight"], torch.zeros(backbone.channels[-1]))  # not taken from the final `norm`
    assert report.unexpected == []
    assert set(report.ignored) == {
        "norm.weight", "norm.bias", "head.weight", "head.bias",
        "layers.1.blocks.1.attn_mask", "layers.0.blocks.0.attn.relative_position_index",
    }
    assert ", 8 missing, 0 unexpected and 6 ignored" in str(report)
    assert "missing: norm0.weight, norm0.bias" in str(report)


def test_mmcv_swin_checkpoint_with_output_norms_loads_strictly(tmp_path):
    model, backbone = tiny_model(SWIN)
    state = random_state(backbone)
    path = tmp_path / "swin_mmdet.safetensors"
    save_file({f"backbone.{key}": value for key, value in state.items()} | {"neck.conv.weight": torch.ones(2)}, path)

    report = load_backbone_weights(model, path, strict=True)

    for key, value in state.items():
        assert torch.equal(backbone.state_dict()[key], value), key
    assert report.missing == report.unexpected == [] and report.ignored == ["neck.conv.weight"]


def test_strict_loading_reports_missing_weights_and_loads_nothing(tmp_path):
    model, backbone = tiny_model(SWIN)
    _, checkpoint = microsoft_swin_checkpoint(backbone)
    path = tmp_path / "swin.pth"
    torch.save({"model": checkpoint}, path)
    with pytest.raises(ValueError, match=r"(?s)Strict loading .*missing: norm0\.weight, norm0\.bias"):
        load_backbone_weights(model, path, strict=True)
    assert not backbone.state_dict()["patch_embed.proj.weight"].any()


def test_kinetics_video_swin_checkpoint(tmp_path):
    model, backbone = tiny_model(VIDEO_SWIN)
    state = random_state(backbone)
    generator = torch.Generator().manual_seed(2)
    kinetics_kernel = torch.randn(16, 3, 2, 4, 4, generator=generator)
    checkpoint = {}
    for key, value in state.items():
        if key.startswith("downsamples."):
            _, stage, rest = key.split(".", 2)
            key = f"layers.{stage}.downsample.{rest}"
        checkpoint[f"backbone.{key}"] = value
    checkpoint["backbone.patch_embed.proj.weight"] = kinetics_kernel
    checkpoint["backbone.norm.weight"] = torch.ones(backbone.channels[-1])
    checkpoint["backbone.norm.bias"] = torch.zeros(backbone.channels[-1])
    checkpoint["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(392, 392, dtype=torch.long)
    checkpoint["cls_head.fc_cls.weight"] = torch.ones(400, backbone.channels[-1])
    checkpoint["cls_head.fc_cls.bias"] = torch.ones(400)
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    meta = {"mmcv_version": "1.3.1", "CLASSES": ("abseiling", "air drumming")}
    torch.save({"meta": meta, "state_dict": checkpoint}, path)

    report = load_backbone_weights(model, path, strict=True)

    loaded = backbone.state_dict()
    patch_weight = loaded["patch_embed.proj.weight"]
    assert patch_weight.shape == (16, 3, 1, 4, 4)
    summed = kinetics_kernel[:, :, 0] + kinetics_kernel[:, :, 1]
    torch.testing.assert_close(patch_weight[:, :, 0], summed, rtol=0, atol=1e-6)
    for stage in range(3):
        for name in ("reduction.weight", "norm.weight", "norm.bias"):
            assert torch.equal(loaded[f"downsamples.{stage}.{name}"], state[f"downsamples.{stage}.{name}"])
    for key in ("layers.1.blocks.1.attn.relative_position_bias_table", "layers.3.blocks.0.mlp.fc1.weight"):
        assert torch.equal(loaded[key], state[key]), key
    assert report.missing == report.unexpected == []
    assert sorted(report.ignored) == sorted(
        ["backbone.norm.weight", "backbone.norm.bias", "backbone.layers.0.blocks.0.attn.relative_position_index",
         "cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    )
    assert len(report.loaded) == len(loaded)


def test_shape_mismatch_names_the_key(tmp_path):
    model, backbone = tiny_model()
    state = torchvision_resnet_state()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    message = r"layer2\.0\.conv1\.weight \(128, 64, 1, 1\) vs backbone body\.layer2\.0\.conv1\.weight \(128, 64, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        load_backbone_weights(model, path)
    assert not backbone.state_dict()["body.conv1.weight"].any()


def test_unexpected_keys_are_reported_and_fail_strict_loading(tmp_path):
    model, backbone = tiny_model()
    state = torchvision_resnet_state()
    state["layer5.0.conv1.weight"] = torch.ones(3)
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    report = load_backbone_weights(model, path)
    assert isinstance(report, BackboneWeightsReport)
    assert report.unexpected == ["layer5.0.conv1.weight"] and report.missing == []
    assert torch.equal(backbone.state_dict()["body.conv1.weight"], state["conv1.weight"])
    with pytest.raises(ValueError, match="unexpected: layer5.0.conv1.weight"):
        load_backbone_weights(model, path, strict=True)


class NotAllowed:
    pass


def test_files_that_hold_no_backbone_are_refused(tmp_path):
    model, _ = tiny_model()
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="No weight of .* matches the ReferFormerTimmBackbone"):
        load_backbone_weights(model, path)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "hook": NotAllowed()}, unsafe)
    with pytest.raises(ValueError, match="Refusing to load .*weights_only"):
        load_backbone_weights(model, unsafe)
    with pytest.raises(TypeError, match="ReferFormerModel"):
        load_backbone_weights(torch.nn.Linear(2, 2), path)
