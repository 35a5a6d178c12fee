"""Tests of the Swin / Video Swin backbones: parity with the original ReferFormer, shapes, checkpointing, key names."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import require_fixture

from referformer.configuration_referformer import ReferFormerSwinBackboneConfig, ReferFormerVideoSwinBackboneConfig
from referformer.swin_backbones import (
    ReferFormerSwinBackbone,
    ReferFormerVideoSwinBackbone,
    SwinWindowAttention,
    init_swin_weights,
    relative_position_index,
)


ORIGINAL_PREFIX = "backbone.0.body."
CONFIG_FIELDS = (
    "embed_dim", "depths", "num_heads", "window_size", "patch_size", "mlp_ratio", "qkv_bias", "drop_path_rate"
)

BACKBONES = {
    "swin": (ReferFormerSwinBackbone, ReferFormerSwinBackboneConfig),
    "video_swin": (ReferFormerVideoSwinBackbone, ReferFormerVideoSwinBackboneConfig),
}
FULL_SIZES = {
    "swin_t_p4w7": ("swin", 96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "swin_l_p4w7": ("swin", 192, [2, 2, 18, 2], [6, 12, 24, 48]),
    "video_swin_t_p4w7": ("video_swin", 96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "video_swin_b_p4w7": ("video_swin", 128, [2, 2, 18, 2], [4, 8, 16, 32]),
}


@pytest.fixture(autouse=True)
def _deterministic():
    num_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(num_threads)


def tiny_backbone(family: str, drop_path_rate: float = 0.0):
    backbone_class, config_class = BACKBONES[family]
    heads = [1, 2, 4, 8] if family == "swin" else [2, 2, 4, 4]
    config = config_class(embed_dim=16, depths=[2, 2, 2, 2], num_heads=heads, drop_path_rate=drop_path_rate)
    return backbone_class(config)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the original implementation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture_name, family", [("original_swin", "swin"), ("original_videoswin_public", "video_swin")]
)
def test_parity_with_original(fixture_name, family):
    fixture_dir = require_fixture(fixture_name)
    description = json.loads((fixture_dir / "config.json").read_text())["backbone"]
    backbone_class, config_class = BACKBONES[family]
    backbone = backbone_class(config_class(**{field: description[field] for field in CONFIG_FIELDS})).eval()

    original_state_dict = load_file(fixture_dir / "original_state_dict.safetensors")
    state_dict = {
        key[len(ORIGINAL_PREFIX) :]: value
        for key, value in original_state_dict.items()
        if key.startswith(ORIGINAL_PREFIX)
    }
    index_keys = [key for key in state_dict if key.endswith("relative_position_index")]
    assert len(index_keys) == sum(description["depths"])
    for key in index_keys:
        attention = backbone.get_submodule(key.rsplit(".", 1)[0])
        assert torch.equal(state_dict.pop(key), attention.relative_position_index), key
    assert "relative_position_index" not in "".join(backbone.state_dict())
    backbone.load_state_dict(state_dict, strict=True)

    pixel_values = load_file(fixture_dir / "inputs.safetensors")["pixel_values"]
    expected = load_file(fixture_dir / "outputs.safetensors")
    batch_size, num_frames = pixel_values.shape[:2]
    with torch.no_grad():
        features = backbone(pixel_values.flatten(0, 1), num_frames=num_frames)

    assert len(features) == 4
    for stage, feature in enumerate(features):
        reference = expected[f"debug.backbone.features.{stage}"]
        assert feature.shape == reference.shape
        assert feature.shape[1] == backbone.channels[stage] == description["out_channels"][stage]
        torch.testing.assert_close(feature, reference, atol=1e-4, rtol=1e-4, msg=f"stage {stage}")


# ---------------------------------------------------------------------------------------------------------------------
# Video Swin: clip lengths, odd sizes, frame interactions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 3, 9, 17])
def test_video_swin_clip_lengths_and_odd_sizes(num_frames):
    backbone = tiny_backbone("video_swin").eval()
    batch_size = 2 if num_frames < 9 else 1
    pixel_values = torch.randn(batch_size * num_frames, 3, 33, 45)
    with torch.no_grad():
        features = backbone(pixel_values, num_frames=num_frames)
    expected_sizes = [(9, 12), (5, 6), (3, 3), (2, 2)]
    for feature, channels, size in zip(features, backbone.channels, expected_sizes):
        assert feature.shape == (batch_size * num_frames, channels, *size)
        assert torch.isfinite(feature).all()


def test_video_swin_frames_interact_within_clip_only():
    backbone = tiny_backbone("video_swin").eval()
    num_frames = 9
    clips = torch.randn(2 * num_frames, 3, 32, 32)
    with torch.no_grad():
        features = backbone(clips, num_frames=num_frames)
        first_eight = backbone(clips[:8], num_frames=8)
        perturbed_clips = clips.clone()
        perturbed_clips[num_frames - 1] += 1.0  # last frame of clip 0, in another temporal window than frame 0
        perturbed_clips[-1] += 1.0  # last frame of clip 1
        perturbed = backbone(perturbed_clips, num_frames=num_frames)

    # Frame 0 sees more than its own 8-frame window: the temporal shift (active because T > 8) mixes the windows.
    assert not torch.allclose(features[3][0], first_eight[3][0], atol=1e-3)
    assert not torch.allclose(perturbed[3][0], features[3][0], atol=1e-3)
    # Clip 1 never influences clip 0 beyond the perturbation of clip 0 itself.
    with torch.no_grad():
        only_clip_0_perturbed = backbone(perturbed_clips[:num_frames], num_frames=num_frames)
    for stage in range(4):
        torch.testing.assert_close(perturbed[stage][:num_frames], only_clip_0_perturbed[stage], atol=1e-5, rtol=1e-5)


def test_video_swin_shrunken_window_uses_top_left_index_block():
    attention = SwinWindowAttention(dim=8, num_heads=2, window_size=(8, 7, 7), qkv_bias=True)
    full_index = relative_position_index((8, 7, 7))
    assert torch.equal(attention.relative_position_index, full_index)
    assert attention.relative_position_bias_table.shape == (15 * 13 * 13, 2)
    # Only time shrunk: the top-left block is the geometrically correct index of the (6, 7, 7) window.
    time_only = 6 * 7 * 7
    assert torch.equal(full_index[:time_only, :time_only], _reindexed((6, 7, 7), (8, 7, 7)))
    # A spatial axis shrunk: the top-left block (what the original uses) is not the geometric index.
    spatial = 6 * 5 * 7
    assert not torch.equal(full_index[:spatial, :spatial], _reindexed((6, 5, 7), (8, 7, 7)))


def _reindexed(window_size, full_window_size):
    """Geometrically correct index of a `window_size` window into the table of a `full_window_size` window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(size) for size in window_size], indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + torch.tensor(full_window_size) - 1
    table_sizes = [2 * size - 1 for size in full_window_size]
    strides = torch.tensor([table_sizes[1] * table_sizes[2], table_sizes[2], 1])
    return (relative * strides).sum(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Image Swin: frames are independent
# ---------------------------------------------------------------------------------------------------------------------


def test_swin_frames_are_independent():
    backbone = tiny_backbone("swin").eval()
    frames = torch.randn(2, 3, 50, 61)
    with torch.no_grad():
        together = backbone(frames, num_frames=2)
        alone = [backbone(frames[index : index + 1], num_frames=1) for index in range(2)]
    expected_sizes = [(13, 16), (7, 8), (4, 4), (2, 2)]
    for stage, size in enumerate(expected_sizes):
        assert together[stage].shape == (2, backbone.channels[stage], *size)
        for index in range(2):
            torch.testing.assert_close(together[stage][index], alone[index][stage][0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing, drop path, errors, init
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, num_frames", [("swin", 2), ("video_swin", 3)])
def test_gradient_checkpointing_matches(family, num_frames):
    backbone = tiny_backbone(family).train()
    pixel_values = torch.randn(num_frames, 3, 37, 41)

    def run():
        backbone.zero_grad()
        features = backbone(pixel_values, num_frames=num_frames)
        sum(feature.square().mean() for feature in features).backward()
        return [feature.detach() for feature in features], {
            name: parameter.grad.clone() for name, parameter in backbone.named_parameters()
        }

    reference_features, reference_grads = run()
    calls = []
    checkpoint_function = backbone._gradient_checkpointing_func
    backbone._gradient_checkpointing_func = lambda *args: calls.append(1) or checkpoint_function(*args)
    backbone.gradient_checkpointing = True
    features, grads = run()

    assert len(calls) == sum(backbone.config.depths)
    for feature, reference in zip(features, reference_features):
        torch.testing.assert_close(feature, reference, atol=1e-6, rtol=1e-6)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)

    backbone.eval()
    calls.clear()
    with torch.no_grad():
        backbone(pixel_values, num_frames=num_frames)
    assert not calls


@pytest.mark.parametrize("family", ["swin", "video_swin"])
def test_drop_path_only_in_training(family):
    backbone = tiny_backbone(family, drop_path_rate=0.5)
    pixel_values = torch.randn(2, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        first, second = backbone(pixel_values, 2), backbone(pixel_values, 2)
    torch.testing.assert_close(first[3], second[3], atol=0, rtol=0)
    backbone.train()
    torch.manual_seed(1)
    with torch.no_grad():
        trained = [backbone(pixel_values, 2)[3] for _ in range(3)]
    assert any(not torch.equal(trained[0], other) for other in trained[1:])


@pytest.mark.parametrize("family", ["swin", "video_swin"])
def test_bad_inputs_raise(family):
    backbone = tiny_backbone(family)
    with pytest.raises(ValueError, match="pixel_values must be"):
        backbone(torch.randn(2, 3, 3, 32, 32), num_frames=2)
    with pytest.raises(ValueError, match="channels"):
        backbone(torch.randn(2, 1, 32, 32), num_frames=2)
    with pytest.raises(ValueError, match="not a multiple of num_frames"):
        backbone(torch.randn(5, 3, 32, 32), num_frames=2)


def test_video_swin_rejects_temporal_patches():
    config = ReferFormerVideoSwinBackboneConfig(embed_dim=16, num_heads=[2, 2, 4, 4], patch_size=[2, 4, 4])
    with pytest.raises(ValueError, match="temporal patch size must be 1"):
        ReferFormerVideoSwinBackbone(config)


@pytest.mark.parametrize("family", ["swin", "video_swin"])
def test_init_swin_weights(family):
    backbone = tiny_backbone(family)
    attention = backbone.layers[0].blocks[0].attn
    loaded = backbone.layers[1].blocks[0].attn
    for module in (attention, loaded):
        module.relative_position_index.zero_()
        module.relative_position_bias_table.data.fill_(5.0)
    loaded.relative_position_bias_table._is_hf_initialized = True
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter is not loaded.relative_position_bias_table:
                parameter.fill_(3.0)
    backbone.apply(init_swin_weights)

    assert torch.equal(attention.relative_position_index, relative_position_index(attention.window_size))
    assert torch.equal(loaded.relative_position_index, relative_position_index(loaded.window_size))
    # Truncated normal with std 0.02 (truncated at +-2 absolute, like the original's timm `trunc_normal_`).
    assert 0.015 < attention.relative_position_bias_table.std() < 0.025
    assert (loaded.relative_position_bias_table == 5.0).all()
    for name, parameter in backbone.named_parameters():
        if parameter is loaded.relative_position_bias_table:
            continue
        assert not (parameter == 3.0).any(), f"{name} was not initialised"
        if "norm" in name:
            assert (parameter == (1.0 if name.endswith("weight") else 0.0)).all(), name
        elif name.endswith("bias") and "patch_embed" not in name:
            assert (parameter == 0).all(), name
        elif parameter.ndim == 2:
            assert 0.01 < parameter.std() < 0.03, name

    linear = torch.nn.Linear(4, 4)
    weight = linear.weight.detach().clone()
    init_swin_weights(linear)
    assert torch.equal(linear.weight, weight)


# ---------------------------------------------------------------------------------------------------------------------
# Key names and shapes of the full-size originals
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FULL_SIZES))
def test_full_size_state_dict_matches_original_keys(name):
    key_file = require_fixture("original_keys") / f"{name}.txt"
    family, embed_dim, depths, num_heads = FULL_SIZES[name]
    backbone_class, config_class = BACKBONES[family]
    with torch.device("meta"):
        backbone = backbone_class(config_class(embed_dim=embed_dim, depths=depths, num_heads=num_heads))
    ours = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}

    original = {}
    for line in key_file.read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith(ORIGINAL_PREFIX) and not key.endswith("relative_position_index"):
            dims = shape.strip("()").split(",")
            original[key[len(ORIGINAL_PREFIX) :]] = tuple(int(dim) for dim in dims if dim.strip())

    assert sorted(set(original) - set(ours)) == []
    assert sorted(set(ours) - set(original)) == []
    for key, shape in original.items():
        assert ours[key] == shape, key
    assert backbone.channels == [embed_dim * 2**stage for stage in range(4)]
