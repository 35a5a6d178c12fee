"""Inference work-savers that must not change results: one visual pass for several sentences, frame chunking, the
selected query's mask head alone."""

import pytest
import torch

from helpers import FP32_ROUNDING, random_inputs, randomize_weights, unit_test_config


def build_model(seed=0, **overrides):
    from referformer import ReferFormerForReferringVideoObjectSegmentation

    torch.manual_seed(seed)
    model = ReferFormerForReferringVideoObjectSegmentation(unit_test_config(**overrides))
    return randomize_weights(model, seed).eval()


def sentences_for_one_video(config, num_sentences, num_frames=3, seed=0):
    """One video (batch 1) and `num_sentences` expressions of different lengths (padded)."""
    inputs = random_inputs(config, num_frames=num_frames, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(3, config.text_config.vocab_size, (num_sentences, 7), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    for index in range(num_sentences):
        length = 7 - index % 3
        input_ids[index, length - 1] = 2
        input_ids[index, length:] = 1
        attention_mask[index, length:] = 0
    return dict(inputs, input_ids=input_ids, attention_mask=attention_mask)


def count_backbone_frames(model):
    """A list that receives the number of frames of every full backbone call (all four stages; the FPN pass of long
    clips recomputes the first stage alone)."""
    frames = []

    def count(module, args, output):
        if len(output) == len(module.channels):
            frames.append(args[0].shape[0])

    model.model.backbone.register_forward_hook(count)
    return frames


def test_several_sentences_share_one_visual_pass_and_equal_separate_calls():
    model = build_model()
    inputs = sentences_for_one_video(model.config, num_sentences=3)
    backbone_frames = count_backbone_frames(model)
    with torch.no_grad():
        shared = model(**inputs)
        assert backbone_frames == [3]  # one backbone pass over the 3 frames for the 3 sentences
        for index in range(3):
            length = int(inputs["attention_mask"][index].sum())
            alone = model(
                pixel_values=inputs["pixel_values"],
                pixel_mask=inputs["pixel_mask"],
                input_ids=inputs["input_ids"][index : index + 1, :length],
            )
            for name in ("logits", "pred_boxes", "pred_masks"):
                torch.testing.assert_close(shared[name][index : index + 1], alone[name], **FP32_ROUNDING)
            for shared_aux, alone_aux in zip(shared.auxiliary_outputs, alone.auxiliary_outputs):
                torch.testing.assert_close(shared_aux["pred_masks"][index : index + 1], alone_aux["pred_masks"], **FP32_ROUNDING)
    # The sentences are different, so are their results.
    assert not torch.allclose(shared.logits[0], shared.logits[1], **FP32_ROUNDING)


@pytest.mark.parametrize("stride4_maps", ["held", "recomputed"])
def test_chunked_frames_equal_one_pass_at_64_frames(stride4_maps):
    # "recomputed": no budget to hold the stride-4 maps, as for long clips
    model = build_model(stride4_features_hold_bytes=0 if stride4_maps == "recomputed" else 2**30)
    inputs = random_inputs(model.config, num_frames=64)
    with torch.no_grad():
        whole = model(**inputs, output_hidden_states=True)
        model.config.frame_chunk_size = 9  # 7 chunks, the last one shorter
        backbone_frames = count_backbone_frames(model)
        chunked = model(**inputs, output_hidden_states=True)
    assert backbone_frames == [9] * 7 + [1]
    for name in ("logits", "pred_boxes", "pred_masks", "encoder_last_hidden_state", "last_hidden_state"):
        torch.testing.assert_close(chunked[name], whole[name], **FP32_ROUNDING)
    for whole_state, chunked_state in zip(whole.encoder_hidden_states + whole.decoder_hidden_states,
                                          chunked.encoder_hidden_states + chunked.decoder_hidden_states):
        torch.testing.assert_close(chunked_state, whole_state, **FP32_ROUNDING)
    # The FPN's attention spans the clip: changing the last frame changes the first frame's masks, also chunked.
    changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    changed["pixel_values"][:, -1] = -changed["pixel_values"][:, -1]
    with torch.no_grad():
        after = model(**changed)
    assert not torch.allclose(after.pred_masks[:, 0], chunked.pred_masks[:, 0], **FP32_ROUNDING)
    torch.testing.assert_close(after.logits[:, 0], chunked.logits[:, 0], **FP32_ROUNDING)


def test_chunked_shared_video_equals_one_pass():
    model = build_model(frame_chunk_size=2)
    inputs = sentences_for_one_video(model.config, num_sentences=2, num_frames=5)
    with torch.no_grad():
        chunked = model(**inputs)
        model.config.frame_chunk_size = None
        whole = model(**inputs)
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(chunked[name], whole[name], **FP32_ROUNDING)


class ClipEncodingRecorder:
    """A mask head that keeps the clip's encoding-pass state (`MaskHead.prepare`) and ignores the FPN's maps."""

    def prepare(self, clip):
        self.clip = clip

    def __call__(self, frames, stride4_maps):
        pass


def encode(model, inputs):
    recorder = ClipEncodingRecorder()
    model.model(inputs["pixel_values"], inputs["input_ids"], mask_head=recorder)
    return recorder.clip


def test_chunked_fpn_pass_recomputes_the_stride4_maps_of_long_clips_instead_of_holding_them():
    model = build_model()
    inputs = random_inputs(model.config, num_frames=5)
    with torch.no_grad():
        whole = encode(model, inputs)
        assert whole.stride4_features.shape[:2] == (1, 5)  # one chunk: the encoder pass's maps are kept
        model.config.frame_chunk_size = 2
        held = encode(model, inputs)
        torch.testing.assert_close(held.stride4_features, whole.stride4_features, **FP32_ROUNDING)  # under the budget
        model.config.stride4_features_hold_bytes = whole.stride4_features.nbytes - 1
        chunked = encode(model, inputs)
        assert chunked.stride4_features is None
        torch.testing.assert_close(chunked.memory, whole.memory, **FP32_ROUNDING)
        for whole_stage, chunked_stage in zip(whole.pixel_decoder_key_values(), chunked.pixel_decoder_key_values()):
            for name in ("key_states", "value_states", "padding_mask"):
                torch.testing.assert_close(getattr(chunked_stage, name), getattr(whole_stage, name), **FP32_ROUNDING)


@pytest.mark.parametrize("backbone", ["timm", "swin"])
def test_first_backbone_stage_alone_equals_the_backbones_first_map(backbone):
    from referformer import ReferFormerSwinBackboneConfig

    overrides = {}
    if backbone == "swin":
        overrides["backbone_config"] = ReferFormerSwinBackboneConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4])
    model = build_model(**overrides)
    pixel_values = random_inputs(model.config, num_frames=3)["pixel_values"].flatten(0, 1)
    with torch.no_grad():
        expected = model.model.backbone(pixel_values, num_frames=3)[0]
        first_stage = model.model.backbone(pixel_values, num_frames=3, num_stages=1)
        assert len(first_stage) == 1 and torch.equal(first_stage[0], expected)


def test_base_model_chunked_mask_features_equal_one_pass():
    from referformer import ReferFormerModel

    torch.manual_seed(0)
    model = randomize_weights(ReferFormerModel(unit_test_config()), 0).eval()
    inputs = random_inputs(model.config, batch_size=2, num_frames=5)
    with torch.no_grad():
        whole = model(**inputs)
        model.config.frame_chunk_size = 3
        chunked = model(**inputs)
    torch.testing.assert_close(chunked.mask_features, whole.mask_features, **FP32_ROUNDING)


def test_selected_query_mask_head_equals_the_full_heads_selected_query():
    from referformer.modeling_referformer import select_referred_query

    model = build_model()
    inputs = sentences_for_one_video(model.config, num_sentences=3)
    with torch.no_grad():
        full = model(**inputs)
        selected = model(**inputs, output_all_queries=False)
    expected_queries = select_referred_query(full.logits)
    assert selected.selected_query_indices.tolist() == expected_queries.tolist()
    assert selected.pred_masks.shape == (3, 3, 1) + full.pred_masks.shape[-2:]
    assert selected.auxiliary_outputs is None
    batch = torch.arange(3)
    torch.testing.assert_close(selected.pred_masks[:, :, 0], full.pred_masks[batch, :, expected_queries], **FP32_ROUNDING)
    torch.testing.assert_close(selected.logits, full.logits)


def test_selected_query_rule_is_the_highest_frame_averaged_score():
    from referformer.modeling_referformer import select_referred_query

    # Query 1 wins one frame by far but query 2 has the best average.
    probabilities = torch.tensor([[[0.1, 0.99, 0.6], [0.1, 0.1, 0.6]]])[..., None]
    assert select_referred_query(torch.logit(probabilities)).tolist() == [2]


def test_selected_query_only_is_refused_for_training():
    model = build_model().train()
    with pytest.raises(ValueError, match="output_all_queries=False is for inference"):
        model(**random_inputs(model.config), output_all_queries=False)


def test_feed_forward_in_row_blocks_equals_one_product():
    from torch import nn

    from referformer.modeling_referformer import feed_forward

    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
    chunk_size = 1024
    tokens = torch.randn(2, chunk_size + 300, 16)  # three blocks, the last one partial
    expected = fc2(torch.relu(fc1(tokens))).detach()
    with torch.no_grad():
        blocked = feed_forward(tokens, fc1, fc2, nn.ReLU(inplace=True), dropout=0.1, training=False, chunk_size=chunk_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            blocked_bf16 = feed_forward(tokens, fc1, fc2, nn.ReLU(), dropout=0.1, training=False, chunk_size=chunk_size)
    torch.testing.assert_close(blocked, expected, **FP32_ROUNDING)
    assert blocked.shape == tokens.shape
    assert blocked_bf16.dtype == torch.bfloat16  # the products' dtype, as without blocks
    torch.testing.assert_close(blocked_bf16.float(), expected, atol=0.1, rtol=0.05)


def test_model_with_feed_forward_row_blocks_equals_one_product():
    model = build_model(chunk_size_feed_forward=0)
    blocked_model = build_model(chunk_size_feed_forward=7)  # every layer's tokens in blocks; the same weights
    inputs = random_inputs(model.config, num_frames=3)
    with torch.no_grad():
        expected = model(**inputs)
        blocked = blocked_model(**inputs)
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(blocked, name), getattr(expected, name), **FP32_ROUNDING)
