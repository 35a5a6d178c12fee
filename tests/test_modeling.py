"""Config validation, forward behaviour, gradients, initialization and save/load of the ReferFormer model."""

import math

import pytest
import torch
from huggingface_hub.dataclasses import StrictDataclassFieldValidationError
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel

from helpers import FP32_ROUNDING, all_predictions, random_inputs, randomize_weights, unit_test_config
from referformer import (
    ReferFormerConfig,
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerModel,
    ReferFormerTimmBackboneConfig,
)
from referformer.modeling_referformer import (
    ReferFormerMultiscaleDeformableAttention,
    dynamic_mask_logits,
    sine_position_embedding_1d,
    sine_position_embedding_2d,
)


def build_model(seed=0, randomize=True, **overrides):
    """A tiny model; by default with all weights redrawn so that every path carries signal."""
    torch.manual_seed(seed)
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**overrides)).eval()
    return randomize_weights(model, seed) if randomize else model


# ----------------------------------------------------------------------------- config


def test_default_config_is_the_released_architecture():
    config = ReferFormerConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (256, 4, 4)
    assert (config.encoder_attention_heads, config.encoder_n_points, config.num_feature_levels) == (8, 4, 4)
    assert (config.num_queries, config.mask_dim, config.encoder_ffn_dim) == (5, 256, 2048)
    assert config.num_dynamic_params == 2153  # (256 + 2) * 8 + 8 * 8 + 8 * 1 + 8 + 8 + 1
    assert config.with_box_refine and config.freeze_text_encoder and config.rel_coord and config.auxiliary_loss
    assert isinstance(config.backbone_config, ReferFormerTimmBackboneConfig)
    assert config.backbone_config.model_name == "resnet50" and config.backbone_config.out_indices == [1, 2, 3, 4]
    assert config.text_config.model_type == "roberta"
    assert (config.text_config.vocab_size, config.text_config.max_position_embeddings) == (50265, 514)
    assert (config.class_cost, config.bbox_cost, config.giou_cost, config.mask_cost, config.dice_cost) == (2, 5, 2, 2, 5)


def test_config_round_trip(tmp_path):
    config = unit_test_config(num_frames=7, focal_alpha=0.3)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, ReferFormerConfig)
    assert {**reloaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert reloaded.backbone_config.model_kwargs == {"layers": [1, 1, 1, 1]}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": 48}, "multiple of 32"),
        ({"encoder_attention_heads": 3}, "divisible by encoder_attention_heads"),
        ({"fusion_attention_heads": 5}, "divisible by fusion_attention_heads"),
        ({"num_feature_levels": 3}, "num_feature_levels=4"),
        ({"controller_layers": 1}, "controller_layers"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"pixel_decoder_sr_ratios": [8, 4, 2]}, "pixel_decoder_sr_ratios"),
        ({"activation_function": "nope"}, "activation_function"),
        ({"backbone_config": {"model_type": "referformer_timm_backbone", "out_indices": [2, 3, 4]}}, "four backbone stages"),
        ({"backbone_config": {"model_type": "roberta"}}, "backbone_config must be one of"),
    ],
)
def test_invalid_config_raises_clear_error(overrides, message):
    with pytest.raises(Exception, match=message):
        unit_test_config(**overrides)


def test_config_field_types_are_checked():
    with pytest.raises(StrictDataclassFieldValidationError):
        ReferFormerConfig(num_queries="five")


# ----------------------------------------------------------------------------- building blocks


def test_sine_position_embedding_2d_values():
    padding_mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    padding_mask[:, :, 2] = True  # last column is padding
    embedding = sine_position_embedding_2d(padding_mask, num_pos_feats=4)
    assert embedding.shape == (1, 8, 2, 3)
    # y of row 1 (second of two valid rows): (2 - 0.5) / 2 * 2pi; channel 0 is sin(y / 1), channel 1 cos(y / 1).
    y = (2 - 0.5) / (2 + 1e-6) * 2 * math.pi
    assert embedding[0, 0, 1, 0].item() == pytest.approx(math.sin(y), abs=1e-6)
    assert embedding[0, 1, 1, 0].item() == pytest.approx(math.cos(y), abs=1e-6)
    # x channels 2,3 use dim_t = 10000^(2*1/4) = 100; padding columns continue the count of the valid ones.
    x = (2 - 0.5) / (2 + 1e-6) * 2 * math.pi
    assert embedding[0, 4 + 2, 0, 1].item() == pytest.approx(math.sin(x / 100), abs=1e-6)


def test_sine_position_embedding_1d_ignores_padding_count():
    padding_mask = torch.tensor([[False, False, True, True]])
    embedding = sine_position_embedding_1d(padding_mask, num_pos_feats=2)
    position = 2 / (2 + 1e-6) * 2 * math.pi  # second real token of two
    assert embedding[0, 1, 0].item() == pytest.approx(math.sin(position), abs=1e-6)
    assert embedding[0, 1, 1].item() == pytest.approx(math.cos(position), abs=1e-6)


def test_dynamic_mask_head_matches_grouped_convolution():
    """The batched-matmul mask head equals the original formulation (concatenated coordinates, grouped 1x1 convs)."""
    config = unit_test_config()
    generator = torch.Generator().manual_seed(0)
    batch_size, num_frames, num_queries, height, width = 2, 3, config.num_queries, 5, 7
    mask_features = torch.randn(batch_size, num_frames, config.mask_dim, height, width, generator=generator)
    params = torch.randn(batch_size, num_frames, num_queries, config.num_dynamic_params, generator=generator)
    references = torch.rand(batch_size, num_frames, num_queries, 2, generator=generator)
    frame_sizes = torch.tensor([[20, 28], [16, 24]])
    masks = dynamic_mask_logits(mask_features, params, references, frame_sizes, config)

    locations_y, locations_x = torch.meshgrid(torch.arange(height) * 4.0 + 2, torch.arange(width) * 4.0 + 2, indexing="ij")
    scale = frame_sizes.flip(-1).float()[:, None, None, :]
    pixels = references * scale
    relative = torch.stack(
        [pixels[..., 0, None, None] - locations_x, pixels[..., 1, None, None] - locations_y], dim=3
    )  # [B, T, Q, 2, h, w]
    features = mask_features[:, :, None].expand(-1, -1, num_queries, -1, -1, -1)
    inputs = torch.cat([features, relative], dim=3).reshape(1, -1, height, width)
    num_instances = batch_size * num_frames * num_queries
    flat_params = params.reshape(num_instances, -1)
    splits = flat_params.split(config.dynamic_weight_sizes + config.dynamic_bias_sizes, dim=1)
    hidden = inputs
    for layer in range(config.controller_layers):
        out_channels = config.dynamic_bias_sizes[layer]
        weight = splits[layer].reshape(num_instances * out_channels, -1, 1, 1)
        bias = splits[config.controller_layers + layer].reshape(-1)
        hidden = F.conv2d(hidden, weight, bias, groups=num_instances)
        if layer < config.controller_layers - 1:
            hidden = F.relu(hidden)
    expected = hidden.reshape(batch_size, num_frames, num_queries, height, width)
    torch.testing.assert_close(masks, expected, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- forward


def test_forward_outputs_and_tuple_mode():
    model = build_model()
    config = model.config
    inputs = random_inputs(config, batch_size=2, num_frames=3, height=64, width=96)
    with torch.no_grad():
        outputs = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert outputs.logits.shape == (2, 3, config.num_queries, 1)
    assert outputs.pred_boxes.shape == (2, 3, config.num_queries, 4)
    assert outputs.pred_masks.shape == (2, 3, config.num_queries, 16, 24)
    assert outputs.reference_points.shape == (2, 3, config.num_queries, 2)
    assert len(outputs.auxiliary_outputs) == config.decoder_layers - 1
    assert ((outputs.pred_boxes > 0) & (outputs.pred_boxes < 1)).all()
    assert torch.isfinite(outputs.pred_masks).all() and outputs.pred_masks.std() > 0
    torch.testing.assert_close(as_tuple[0], outputs.logits, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[2], outputs.pred_masks, rtol=0, atol=0)
    # The reference fed to the last layer is the centre of the boxes of the layer before it (box refinement).
    torch.testing.assert_close(outputs.reference_points, outputs.auxiliary_outputs[-1]["pred_boxes"][..., :2])


def test_single_frame_image_mode_and_frame_independence_of_boxes():
    model = build_model()
    inputs = random_inputs(model.config, num_frames=3)
    with torch.no_grad():
        clip = model(**inputs)
        single = model(
            pixel_values=inputs["pixel_values"][:, 1:2],
            pixel_mask=inputs["pixel_mask"][:, 1:2],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
    assert single.pred_masks.shape[1] == 1
    # With a 2-D backbone, frames only interact in the pixel decoder: logits and boxes of a frame do not depend on
    # the other frames, while masks do.
    torch.testing.assert_close(single.logits[:, 0], clip.logits[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single.pred_boxes[:, 0], clip.pred_boxes[:, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single.pred_masks[:, 0], clip.pred_masks[:, 1], atol=1e-4)


def test_valid_frame_indices_keep_only_the_annotated_frame():
    model = build_model()
    inputs = random_inputs(model.config, batch_size=2, num_frames=3)
    with torch.no_grad():
        selected = model(**inputs, valid_frame_indices=torch.tensor([2, 0]))
        for clip, frame in ((0, 2), (1, 0)):
            alone = model(
                pixel_values=inputs["pixel_values"][clip : clip + 1, frame : frame + 1],
                input_ids=inputs["input_ids"][clip : clip + 1],
            )
            for selected_layer, alone_layer in zip(all_predictions(selected), all_predictions(alone)):
                for selected_tensor, alone_tensor in zip(selected_layer, alone_layer):
                    assert selected_tensor.shape[1] == 1
                    torch.testing.assert_close(selected_tensor[clip : clip + 1], alone_tensor, atol=1e-4, rtol=1e-4)


def test_batching_with_padding_equals_per_clip_results():
    model = build_model()
    config = model.config
    large = random_inputs(config, num_frames=2, height=64, width=96, text_length=5, seed=1)
    small = random_inputs(config, num_frames=2, height=48, width=64, text_length=8, seed=2)
    pixel_values = torch.zeros(2, 2, 3, 64, 96)
    pixel_mask = torch.zeros(2, 2, 64, 96, dtype=torch.long)
    pixel_values[0], pixel_mask[0] = large["pixel_values"][0], 1
    pixel_values[1, :, :, :48, :64], pixel_mask[1, :, :48, :64] = small["pixel_values"][0], 1
    input_ids = torch.ones(2, 8, dtype=torch.long)  # pad id 1
    attention_mask = torch.zeros(2, 8, dtype=torch.long)
    input_ids[0, :5], attention_mask[0, :5] = large["input_ids"][0], 1
    input_ids[1], attention_mask[1] = small["input_ids"][0], 1
    batch = {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        batched = model(**batch)
        alone = model(**large)
        other_content = dict(batch, pixel_values=batch["pixel_values"].clone(), input_ids=batch["input_ids"].clone())
        other_content["pixel_values"][0] = torch.randn(2, 3, 64, 96)
        other_content["input_ids"][0, 1:4] = torch.tensor([10, 11, 12])
        changed = model(**other_content)
    for batched_layer, alone_layer in zip(all_predictions(batched), all_predictions(alone)):
        for batched_tensor, alone_tensor in zip(batched_layer, alone_layer):
            torch.testing.assert_close(batched_tensor[:1], alone_tensor, atol=1e-4, rtol=1e-4)
    # The padded clip does not see the other clip of the batch.
    for changed_layer, batched_layer in zip(all_predictions(changed), all_predictions(batched)):
        for changed_tensor, batched_tensor in zip(changed_layer, batched_layer):
            torch.testing.assert_close(changed_tensor[1], batched_tensor[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed.logits[0], batched.logits[0])


def test_relative_coordinates_use_the_unpadded_frame_size():
    model = build_model()
    inputs = random_inputs(model.config, height=64, width=96)
    inputs["pixel_mask"][..., 48:] = 0  # declare the right third as padding
    with torch.no_grad():
        outputs = model.model(**inputs)
    assert outputs.frame_sizes.tolist() == [[64, 48]]


def test_any_timm_feature_backbone_works():
    config = unit_test_config(
        backbone_config={"model_type": "referformer_timm_backbone", "model_name": "mobilenetv3_small_050"}
    )
    model = ReferFormerForReferringVideoObjectSegmentation(config).eval()
    assert model.model.backbone.channels == model.model.backbone.body.feature_info.channels()
    with torch.no_grad():
        outputs = model(**random_inputs(config, height=64, width=64))
    assert outputs.pred_masks.shape[-2:] == (16, 16)
    assert torch.isfinite(outputs.pred_masks).all()


def test_any_auto_model_text_encoder_works():
    bert = {"model_type": "bert", "vocab_size": 99, "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 30, "max_position_embeddings": 32, "pad_token_id": 1}
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config(text_config=bert)).eval()
    assert type(model.model.text_encoder).__name__ == "BertModel"
    assert model.model.text_projection.fc.in_features == 24
    with torch.no_grad():
        outputs = model(**random_inputs(model.config))
    assert torch.isfinite(outputs.pred_masks).all()


def test_bfloat16_model_runs():
    model = build_model()
    inputs = random_inputs(model.config)
    with torch.no_grad():
        reference = model(**inputs)
        half = model.to(torch.bfloat16)(**dict(inputs, pixel_values=inputs["pixel_values"].bfloat16()))
    assert half.pred_masks.dtype == torch.bfloat16 and torch.isfinite(half.pred_masks.float()).all()
    torch.testing.assert_close(half.pred_boxes.float(), reference.pred_boxes, atol=0.05, rtol=0)


def test_bad_inputs_raise_clear_errors():
    model = build_model()
    inputs = random_inputs(model.config)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][0]))
    two_clips = random_inputs(model.config, batch_size=2)
    with pytest.raises(ValueError, match="one expression per clip"):
        model(**dict(two_clips, input_ids=inputs["input_ids"].repeat(3, 1), attention_mask=None))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(**random_inputs(model.config, height=24, width=64))
    for value in (0.5, 2):
        pixel_mask = inputs["pixel_mask"].float()
        pixel_mask[0, 0, 0, 0] = value
        with pytest.raises(ValueError, match="pixel_mask must hold 0 .* and 1"):
            model(**dict(inputs, pixel_mask=pixel_mask))
    for value in (float("nan"), float("inf")):
        pixel_values = inputs["pixel_values"].clone()
        pixel_values[0, -1, 1, 5, 7] = value
        with pytest.raises(ValueError, match="pixel_values has NaN or infinite values"):
            model(**dict(inputs, pixel_values=pixel_values))


def test_without_box_refinement_heads_are_shared():
    model = build_model(with_box_refine=False)
    assert len(model.class_embed) == 1 and len(model.model.decoder.bbox_embed) == 1
    with torch.no_grad():
        outputs = model(**random_inputs(model.config))
    # Without refinement every decoder layer keeps the initial reference points.
    initial = outputs.reference_points
    assert torch.isfinite(outputs.pred_masks).all()
    torch.testing.assert_close(
        initial, model.model.reference_points(model.model.query_position_embeddings.weight).sigmoid()[None, None].expand_as(initial)
    )


def test_deformable_attention_compiles_without_graph_break():
    """`torch.compile(fullgraph=True)` traces the attention module through the custom op (or its fallback)."""
    import referformer.kernels

    torch.manual_seed(0)
    config = unit_test_config()
    attention = randomize_weights(ReferFormerMultiscaleDeformableAttention(config, 2, 2)).eval()
    shapes = [(6, 8), (3, 4), (2, 2), (1, 1)]
    spatial_shapes = torch.tensor(shapes)
    start_index = torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]])
    sequence = int(spatial_shapes.prod(1).sum())
    queries, values = torch.randn(2, 7, config.d_model), torch.randn(2, sequence, config.d_model)
    references = torch.rand(2, 7, 4, 2)
    arguments = (queries, references, values, spatial_shapes, shapes, start_index)
    with torch.no_grad():
        eager = attention(*arguments)
        assert referformer.kernels.is_available("cpu")
        compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")(*arguments)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients


def _loss(outputs):
    return sum(logits.sum() + boxes.sum() + masks.mean() for logits, boxes, masks in all_predictions(outputs))


def test_frozen_text_encoder_gets_no_gradient_and_everything_else_does():
    model = build_model().train()
    _loss(model(**random_inputs(model.config))).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("model.text_encoder."):
            assert not parameter.requires_grad and parameter.grad is None, name
        elif parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad and "text_encoder" not in name]
    assert frozen and all(name.startswith(("model.backbone.body.conv1", "model.backbone.body.layer1")) for name in frozen)


def test_trainable_text_encoder_gets_gradient():
    model = build_model(freeze_text_encoder=False).train()
    _loss(model(**random_inputs(model.config))).backward()
    assert model.model.text_encoder.embeddings.word_embeddings.weight.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    no_dropout = {"dropout": 0.0, "text_projection_dropout": 0.0, "pixel_decoder_dropout": 0.0}
    inputs = random_inputs(unit_test_config(), num_frames=2)
    gradients = []
    for checkpointing in (False, True):
        model = build_model(**no_dropout).train()
        model.model.text_encoder.eval()  # RoBERTa's own dropout
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.encoder.layers[0].gradient_checkpointing
        _loss(model(**inputs)).backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- initialization and serialization


def test_special_initializations():
    model = build_model(randomize=False)
    config = model.config
    attention = model.model.encoder.layers[0].self_attn
    offsets = attention.sampling_offsets.bias.view(attention.n_heads, attention.n_levels, attention.n_points, 2)
    # Head 0 points along +x at distance 1..n_points, head 1 (of 2) along -x.
    torch.testing.assert_close(offsets[0, 0, :, 0], torch.arange(1.0, attention.n_points + 1))
    torch.testing.assert_close(offsets[1, 0, :, 0], -torch.arange(1.0, attention.n_points + 1))
    assert (attention.sampling_offsets.weight == 0).all() and (attention.attention_weights.weight == 0).all()
    torch.testing.assert_close(model.model.decoder.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert (model.model.decoder.bbox_embed[1].layers[-1].bias == 0).all()
    assert (model.model.decoder.bbox_embed[1].layers[-1].weight == 0).all()
    for head in model.class_embed:
        assert head.bias.item() == pytest.approx(-math.log(99), abs=1e-6)
    assert config.num_dynamic_params == model.controller.layers[-1].out_features


def test_save_and_reload_round_trip_keeps_weights_and_outputs(tmp_path):
    model = build_model()
    inputs = random_inputs(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(tmp_path).eval()
    original_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    for key in original_state:
        assert torch.equal(original_state[key], reloaded_state[key]), key
    # The weights are bit-identical; the outputs only to fp32 rounding: reloaded tensors may be memory-mapped at
    # addresses that are not SIMD-aligned, and the CPU's vectorised kernels then sum in another order.
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).pred_masks, model(**inputs).pred_masks, **FP32_ROUNDING)


def test_meta_device_build_initializes_the_frozen_batch_norms():
    """A model built on the meta device (as `from_pretrained` does) gets identity frozen batch norms from
    `init_weights`, and its outputs equal those of a model built directly with the same weights."""
    from referformer.modeling_referformer import FROZEN_BATCH_NORMS

    config = unit_test_config()
    with torch.device("meta"):
        model = ReferFormerForReferringVideoObjectSegmentation(config)
    model.to_empty(device="cpu")
    for module in model.modules():  # what the meta device left: not the identity
        if isinstance(module, FROZEN_BATCH_NORMS):
            for buffer in module.buffers():
                buffer.fill_(float("nan"))
    model.init_weights()
    frozen = [module for module in model.modules() if isinstance(module, FROZEN_BATCH_NORMS)]
    assert len(frozen) == 12  # stem, two per block of a [1, 1, 1, 1] ResNet-18 and three downsamplings
    for module in frozen:
        assert (module.weight == 1).all() and (module.bias == 0).all()
        assert (module.running_mean == 0).all() and (module.running_var == 1).all()
    direct = build_model(randomize=False)
    for name, buffer in direct.named_buffers():
        if name.startswith("model.backbone."):
            assert torch.equal(buffer, model.get_buffer(name)), name


def test_output_attentions_and_hidden_states_do_not_depend_on_frame_chunks():
    """Attention weights and hidden states of a clip computed in frame chunks equal those of one pass; asking for them
    changes no prediction."""
    model = build_model()
    model.set_attn_implementation("eager")
    inputs = random_inputs(model.config, batch_size=2, num_frames=3)
    with torch.no_grad():
        plain = model(**inputs)
        whole = model(**inputs, output_attentions=True, output_hidden_states=True)
        model.config.frame_chunk_size = 2
        chunked = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert torch.equal(whole.pred_masks, plain.pred_masks)
    recorded = [
        "encoder_hidden_states", "decoder_hidden_states", "backbone_hidden_states", "text_encoder_hidden_states",
        "encoder_attentions", "decoder_attentions", "cross_attentions", "text_encoder_attentions",
    ]
    for name in recorded:
        assert len(whole[name]) > 0, name
        torch.testing.assert_close(chunked[name], whole[name], **FP32_ROUNDING)
    assert whole.encoder_attentions[0].shape[:1] == whole.decoder_attentions[0].shape[:1] == (2 * 3,)
    # Tuple outputs keep the order of the fields: the recorded tuples come last.
    as_tuple = model(**inputs, output_attentions=True, return_dict=False)
    assert len(as_tuple[-1]) == model.config.text_config.num_hidden_layers


def test_resize_token_embeddings_resizes_the_text_encoder(tmp_path):
    model = build_model()
    old_embeddings = model.get_input_embeddings().weight.clone()
    embeddings = model.resize_token_embeddings(120)
    assert embeddings is model.model.text_encoder.get_input_embeddings()
    assert embeddings.weight.shape == (120, model.config.d_model) and torch.equal(embeddings.weight[:99], old_embeddings)
    assert model.config.text_config.vocab_size == 120
    model.save_pretrained(tmp_path)
    reloaded = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(tmp_path)
    assert torch.equal(reloaded.get_input_embeddings().weight, embeddings.weight)


def test_auto_model_loads_the_base_model_from_a_saved_segmentation_model(tmp_path):
    model = build_model()
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is ReferFormerModel
    inputs = random_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs).mask_features, model.model(**inputs).mask_features, **FP32_ROUNDING)


def test_loading_keeps_loaded_weights_when_a_key_is_missing(tmp_path):
    model = build_model()  # random weights: a sampling-offset bias that no initialization would produce
    state = model.state_dict()
    loaded_bias = state["model.encoder.layers.0.self_attn.sampling_offsets.bias"].clone()
    del state["model.encoder.layers.0.self_attn.sampling_offsets.weight"]
    model.save_pretrained(tmp_path, state_dict=state)
    reloaded = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(tmp_path)
    attention = reloaded.model.encoder.layers[0].self_attn
    torch.testing.assert_close(attention.sampling_offsets.bias, loaded_bias, rtol=0, atol=0)
    assert (attention.sampling_offsets.weight == 0).all()  # re-initialized by the special init


def test_config_labels_layers_and_encoder_decoder_follow_the_architecture():
    config = unit_test_config(num_classes=3, encoder_layers=2)
    assert config.num_labels == 3 and config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.num_hidden_layers == 2 and config.is_encoder_decoder
    assert unit_test_config(num_classes=2, id2label={0: "dog", 1: "cat"}).id2label == {0: "dog", 1: "cat"}
    with pytest.raises(ValueError, match="id2label has 2 labels but num_classes is 1"):
        unit_test_config(id2label={0: "dog", 1: "cat"})
    model = ReferFormerForReferringVideoObjectSegmentation(config)
    assert model.class_embed[0].out_features == config.num_labels


def test_input_embeddings_are_the_text_encoder_word_embeddings():
    torch.manual_seed(0)
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval()
    word_embeddings = model.model.text_encoder.embeddings.word_embeddings
    assert model.get_input_embeddings() is word_embeddings and model.model.get_input_embeddings() is word_embeddings
    replacement = torch.nn.Embedding(word_embeddings.num_embeddings, word_embeddings.embedding_dim, padding_idx=1)
    model.set_input_embeddings(replacement)
    assert model.model.text_encoder.embeddings.word_embeddings is replacement
