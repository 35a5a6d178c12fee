"""OnlineRefer: conversion of its checkpoints and numerical parity of the frame-by-frame procedure with the original
code's fixture (`../shared/fixtures/original_onlinerefer`). Every input, weight, size, name and tolerance comes from
the fixture's files."""

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from helpers import FP32_ROUNDING, REPO_ROOT, randomize_weights, read_key_file, require_fixture, unit_test_config
from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerVideoProcessor, conversion
from referformer.cli_presets import build_shapes_tokenizer
from referformer.frame_chunking import OnlineTrack
from referformer.modeling_referformer import select_referred_query
from test_remote_code import PACKAGE_ONLY_MODULES


FIXTURE = "original_onlinerefer"


# ----------------------------------------------------------------------------- the fixture


@dataclass
class Fixture:
    """The fixture's files: `config` (config.json), the complete original `state_dict`, `inputs` and `reference`."""

    config: dict
    state_dict: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    reference: dict[str, torch.Tensor]

    @property
    def num_expressions(self) -> int:
        return self.config["inputs"]["num_expressions"]

    @property
    def num_frames(self) -> int:
        return self.config["inputs"]["num_frames"]

    def tolerance(self, name: str) -> dict:
        """The README's recommended tolerance of an output `name` (e.g. `aux_outputs.1.pred_masks`, `state_after.ref_pts`,
        `debug.e0.f0.transformer.hs`): the entries name comma-separated patterns; auxiliary logits and boxes are "as
        the final ones"."""
        tolerances = self.config["recommended_tolerances"]
        for patterns, tolerance in tolerances.items():
            if isinstance(tolerance, dict) and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns.split(", ")):
                return tolerance
        auxiliary = next(value for key, value in tolerances.items() if key.startswith("aux_outputs.* ("))
        assert auxiliary == "as the final ones" and name.startswith("aux_outputs."), name
        return self.tolerance(name.rsplit(".", 1)[-1])

    def logit_margin(self, rule: str) -> float:
        """The `|final_mask_logits| < margin` of a rule (`final_masks` or `davis_merge.label_map`)."""
        return float(re.search(r"\|final_mask_logits\| < ([0-9.e+-]+)", self.config["recommended_tolerances"][rule])[1])


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    folder = require_fixture(FIXTURE)
    config = json.loads((folder / "config.json").read_text())
    base = folder / config["state_dict"]["base_file"]
    assert hashlib.sha256(base.read_bytes()).hexdigest() == config["state_dict"]["base_file_sha256"]
    only = load_file(folder / "onlinerefer_only_state_dict.safetensors")
    assert set(only) == set(config["state_dict"]["onlinerefer_only_keys"])
    state_dict = {**load_file(base), **only}
    return Fixture(config, state_dict, load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors"))


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    """The original state dict converted with the command-line script (the config inferred from the weights), reloaded
    with `from_pretrained`; returns the model and the folder."""
    work = tmp_path_factory.mktemp("onlinerefer")
    checkpoint, args_file, tokenizer_dir = work / "onlinerefer.safetensors", work / "args.json", work / "tokenizer"
    save_file(fixture.state_dict, checkpoint)
    args_file.write_text(json.dumps(fixture.config["model_args"]))
    build_shapes_tokenizer().save_pretrained(tokenizer_dir)
    folder = work / "converted"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_checkpoint.py"), "--checkpoint", str(checkpoint),
         "--output_dir", str(folder), "--original_args", str(args_file), "--tokenizer", str(tokenizer_dir), "--verify"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained(folder).eval()
    return model, folder


# ----------------------------------------------------------------------------- running the online procedure


@dataclass
class Frame:
    """One frame of the online procedure: the track it was decoded from, the outputs, the next frame's track."""

    track: OnlineTrack
    outputs: object
    next_track: OnlineTrack


def frame_inputs(fixture: Fixture, frame: int, expressions: list[int]) -> dict:
    """Frame `frame` as a one-frame video and the token ids of `expressions` (padded with the text encoder's pad id)."""
    ids = [fixture.inputs[f"e{index}.input_ids"][0] for index in expressions]
    masks = [fixture.inputs[f"e{index}.attention_mask"][0] for index in expressions]
    length = max(len(tokens) for tokens in ids)
    pad_id = fixture.config["text_encoder"]["config"]["pad_token_id"]
    return {
        "pixel_values": fixture.inputs["pixel_values"][frame][None, None],
        "pixel_mask": fixture.inputs["pixel_mask"][frame][None, None].long(),
        "input_ids": torch.stack([F.pad(tokens, (0, length - len(tokens)), value=pad_id) for tokens in ids]),
        "attention_mask": torch.stack([F.pad(mask, (0, length - len(mask))) for mask in masks]),
    }


@torch.no_grad()
def run_online(model, fixture: Fixture, expressions: list[int], **kwargs) -> list[Frame]:
    """The online procedure through the public API: the empty track, then per frame the model and `update_track`."""
    track = model.model.empty_track(len(expressions))
    frames = []
    for frame in range(fixture.num_frames):
        outputs = model(**frame_inputs(fixture, frame, expressions), track=track, **kwargs)
        next_track = model.update_track(outputs, track)
        frames.append(Frame(track, outputs, next_track))
        track = next_track
    return frames


@pytest.fixture(scope="module")
def online_runs(fixture, converted):
    """Each expression run alone, as the original does, with the hidden states recorded."""
    model, _ = converted
    return [run_online(model, fixture, [index], output_hidden_states=True) for index in range(fixture.num_expressions)]


def frame_outputs(frame: Frame, sentence: int = 0) -> dict[str, torch.Tensor]:
    """A frame's outputs under the fixture's names (`e{i}.f{t}.` stripped), for `sentence` of the batch."""
    outputs, pick = frame.outputs, slice(sentence, sentence + 1)
    values = {
        "pred_logits": outputs.logits[pick],
        "pred_boxes": outputs.pred_boxes[pick],
        "pred_masks": outputs.pred_masks[pick],
        "reference_points": outputs.reference_points[pick],
        "reference_inits": frame.track.reference_points[pick, None].sigmoid(),
        "hs": outputs.last_hidden_state[pick, 0],
        "query_scores": outputs.logits[sentence].sigmoid().mean(0).max(-1).values,
        "max_ind": select_referred_query(outputs.logits[pick]),
    }
    for layer, auxiliary in enumerate(outputs.auxiliary_outputs or []):
        values |= {
            f"aux_outputs.{layer}.pred_logits": auxiliary["logits"][pick],
            f"aux_outputs.{layer}.pred_boxes": auxiliary["pred_boxes"][pick],
            f"aux_outputs.{layer}.pred_masks": auxiliary["pred_masks"][pick],
        }
    for stage, track in (("state_before", frame.track), ("state_after", frame.next_track)):
        values |= {
            f"{stage}.ref_pts": track.reference_points[sentence],
            f"{stage}.track_embedding": track.track_embedding[sentence],
            f"{stage}.pos_embedding": track.position_embedding[sentence],
        }
    return values


def final_mask_logits(fixture: Fixture, frames: list[Frame], sentence: int = 0) -> torch.Tensor:
    """The selected query's mask logits of every frame resized to the original size (bilinear), `[T, H0, W0]`."""
    size = fixture.inputs["original_size"].tolist()
    logits = []
    for frame in frames:
        outputs = frame.outputs
        query = 0 if outputs.selected_query_indices is not None else select_referred_query(outputs.logits)[sentence]
        masks = outputs.pred_masks[sentence, :, query][None]  # [1, 1, h, w]
        logits.append(F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(logits)


def final_masks(fixture: Fixture, frames: list[Frame], sentence: int = 0) -> torch.Tensor:
    """The thresholded masks `[T, H0, W0]` of the processor's post-processing, frame by frame."""
    processor, batch_size = ReferFormerVideoProcessor(), frames[0].outputs.logits.shape[0]
    sizes = {name: fixture.inputs[name][None].repeat(batch_size, 1) for name in ("original_size", "image_size")}
    return torch.cat(
        [
            processor.post_process_referring_video_segmentation(
                frame.outputs, target_sizes=sizes["original_size"], resized_sizes=sizes["image_size"]
            )[sentence]["masks"]
            for frame in frames
        ]
    )


def assert_frames_match(fixture: Fixture, runs: list[list[Frame]], sentences: list[int] | None = None) -> dict:
    """Every output and state of every frame within the fixture's tolerance, the query choice exactly; `runs[i]` is
    expression i's, `sentences[i]` its index in that run's batch. Returns the largest error per output name."""
    largest = {}
    for expression, frames in enumerate(runs):
        for index, frame in enumerate(frames):
            prefix = f"e{expression}.f{index}."
            expected = {key[len(prefix) :]: value for key, value in fixture.reference.items() if key.startswith(prefix)}
            actual = frame_outputs(frame, sentences[expression] if sentences else 0)
            assert set(expected) <= set(actual), set(expected) - set(actual)
            for name, value in expected.items():
                if name == "max_ind":
                    assert torch.equal(actual[name], value), f"{prefix}max_ind: {actual[name]} vs {value}"
                    continue
                torch.testing.assert_close(actual[name], value, **fixture.tolerance(name), msg=lambda m: f"{prefix}{name}: {m}")
                group = re.sub(r"aux_outputs\.\d+\.", "aux_outputs.*.", name)
                largest[group] = max(largest.get(group, 0.0), (actual[name] - value).abs().max().item())
    return largest


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("name", ["onlinerefer_resnet50", "onlinerefer_swin_l_p4w7"])
def test_full_size_onlinerefer_keys_map_completely(name):
    state_dict = read_key_file(require_fixture(FIXTURE) / "keys" / f"{name}.txt")
    family, config = conversion.infer_config(state_dict)
    assert config.online and config.with_box_refine and (config.d_model, config.num_queries) == (256, 5)
    converted = conversion.convert_state_dict(state_dict, family, config.with_box_refine)
    assert "criterion.empty_weight" not in converted and "track_embed.fc1.weight" in converted
    with torch.device("meta"):
        model = ReferFormerForReferringVideoObjectSegmentation(config)
    conversion.check_weights_fit(model.state_dict(), converted)


def test_referformer_keys_stay_offline_and_update_pos_is_refused():
    keys = require_fixture(FIXTURE) / "keys" / "onlinerefer_resnet50.txt"
    state_dict = read_key_file(keys)
    offline = {key: value for key, value in state_dict.items() if not key.startswith(("track_embed.", "criterion."))}
    assert not conversion.infer_config(offline)[1].online
    update_pos = dict(state_dict, **{"track_pos_embed.linear1.weight": state_dict["track_embed.linear1.weight"]})
    with pytest.raises(conversion.ConversionError, match="update_pos"):
        conversion.infer_config(update_pos)


def test_converted_folder_is_an_online_model_with_its_card(converted):
    model, folder = converted
    assert model.config.online and isinstance(model.track_embed, torch.nn.Module)
    assert json.loads((folder / "config.json").read_text())["online"] is True
    card = (folder / "README.md").read_text()
    assert "# OnlineRefer (" in card and "model.update_track(outputs, track)" in card


# ----------------------------------------------------------------------------- parity


def test_online_procedure_reproduces_every_frame(fixture, online_runs):
    largest = assert_frames_match(fixture, online_runs)
    print("max abs errors:", json.dumps({name: f"{error:.2e}" for name, error in sorted(largest.items())}))


def test_final_masks_and_davis_merge(fixture, online_runs):
    margin = fixture.logit_margin("final_masks")
    probabilities = []
    for expression, frames in enumerate(online_runs):
        expected_logits = fixture.reference[f"e{expression}.final_mask_logits"]
        logits = final_mask_logits(fixture, frames)
        torch.testing.assert_close(logits, expected_logits, **fixture.tolerance("final_mask_logits"))
        masks, expected = final_masks(fixture, frames), fixture.reference[f"e{expression}.final_masks"]
        assert bool((masks == expected)[expected_logits.abs() >= margin].all()), f"e{expression}: final masks differ"
        probabilities.append(logits.sigmoid())
        error, differing = (logits - expected_logits).abs().max().item(), int((masks != expected).sum())
        print(f"e{expression}: final_mask_logits max abs error {error:.2e}, {differing} final-mask pixels differ")
    # inference_davis_online.py: the expressions as objects; scores below 0.5 dropped, background 0.1, argmax.
    scores = torch.stack([probability * (probability >= 0.5) for probability in probabilities])
    label_map = torch.cat([torch.full_like(scores[:1], 0.1), scores]).argmax(0).to(torch.uint8)
    rule = fixture.config["recommended_tolerances"]["davis_merge.label_map"]
    tie = float(re.search(r"within ([0-9.e+-]+) of each other", rule)[1])
    margin = fixture.logit_margin("davis_merge.label_map")
    expected_logits = torch.stack([fixture.reference[f"e{index}.final_mask_logits"] for index in range(len(scores))])
    expected_probabilities = expected_logits.sigmoid()
    undecided = (expected_logits.abs() < margin).any(0) | (
        (expected_probabilities >= 0.5).all(0) & ((expected_probabilities[0] - expected_probabilities[1]).abs() < tie)
    )
    expected = fixture.reference["davis_merge.label_map"]
    assert bool((label_map == expected)[~undecided].all())
    print(f"davis merge: {int((label_map != expected).sum())} label-map pixels differ")


def test_intermediates_match_the_debug_tensors(fixture, converted, online_runs):
    """Encoder inputs and memory, decoder target, positions, references and states, text features, mask features."""
    model, _ = converted
    checked = set()

    def check(name, actual):
        torch.testing.assert_close(actual, fixture.reference[name], **fixture.tolerance(name), msg=lambda m: f"{name}: {m}")
        checked.add(name)

    for expression, frames in enumerate(online_runs):
        for index, frame in enumerate(frames):
            prefix, outputs = f"debug.e{expression}.f{index}.", frame.outputs
            start = 0
            for level in range(model.config.num_feature_levels):
                source = fixture.reference[f"{prefix}transformer.srcs.{level}"]
                tokens = source.shape[-2] * source.shape[-1]
                level_tokens = outputs.encoder_hidden_states[0][:, start : start + tokens]
                check(f"{prefix}transformer.srcs.{level}", level_tokens.transpose(1, 2).reshape(source.shape))
                start += tokens
            check(f"{prefix}encoder.memory", outputs.encoder_last_hidden_state[:, 0])
            check(f"{prefix}transformer.tgt", outputs.decoder_hidden_states[0][None])
            check(f"{prefix}transformer.query_pos", frame.track.position_embedding[0])
            check(f"{prefix}transformer.init_reference", frame.track.reference_points.sigmoid())
            check(f"{prefix}transformer.hs", torch.stack(outputs.decoder_hidden_states[1:]))
            layer_boxes = [auxiliary["pred_boxes"] for auxiliary in outputs.auxiliary_outputs] + [outputs.pred_boxes]
            check(f"{prefix}transformer.inter_references", torch.stack(layer_boxes)[:, :, 0])
            if f"{prefix}text_encoder.last_hidden_state" in fixture.reference:
                check(f"{prefix}text_encoder.last_hidden_state", outputs.text_encoder_hidden_states[-1])
                inputs = frame_inputs(fixture, index, [expression])
                with torch.no_grad():
                    text = model.model.encode_text(inputs["input_ids"], inputs["attention_mask"])
                check(f"{prefix}resizer.word_features", text.word_features)
                check(f"{prefix}resizer.sentence_feature_unused", text.sentence_features)
            if f"{prefix}pixel_decoder.mask_features" in fixture.reference:
                with torch.no_grad():
                    base = model.model(**frame_inputs(fixture, index, [expression]), track=frame.track)
                check(f"{prefix}pixel_decoder.mask_features", base.mask_features[:, 0])
    assert checked == {key for key in fixture.reference if key.startswith("debug.")}


def test_a_batch_of_sentences_follows_each_its_own_track(fixture, converted):
    """Both expressions in one call per frame (padded), each with its own track; with `output_all_queries=False`
    only the referred query's mask is computed. Same outputs, states, choices and final masks."""
    model, _ = converted
    expressions = list(range(fixture.num_expressions))
    frames = run_online(model, fixture, expressions, output_all_queries=False)
    assert frames[0].outputs.pred_masks.shape[2] == 1
    assert frames[0].track.reference_points.shape[:2] == (len(expressions), model.config.num_queries)
    assert frames[1].track.reference_points.shape == (len(expressions), 1, 4)
    for frame in frames:  # the mask head ran for the query the track follows
        assert torch.equal(frame.outputs.selected_query_indices, select_referred_query(frame.outputs.logits))
    reference_without_masks = {
        key: value for key, value in fixture.reference.items() if "pred_masks" not in key and "aux_outputs" not in key
    }
    assert_frames_match(
        Fixture(fixture.config, fixture.state_dict, fixture.inputs, reference_without_masks),
        [frames] * len(expressions),
        sentences=expressions,
    )
    for expression in expressions:
        logits = final_mask_logits(fixture, frames, expression)
        expected = fixture.reference[f"e{expression}.final_mask_logits"]
        torch.testing.assert_close(logits, expected, **fixture.tolerance("final_mask_logits"))
        masks = final_masks(fixture, frames, expression)
        decided = expected.abs() >= fixture.logit_margin("final_masks")
        assert bool((masks == fixture.reference[f"e{expression}.final_masks"])[decided].all())


# ----------------------------------------------------------------------------- errors


def test_online_misuse_raises_clear_errors():
    torch.manual_seed(0)
    online = ReferFormerForReferringVideoObjectSegmentation(unit_test_config(online=True)).eval()
    offline = ReferFormerForReferringVideoObjectSegmentation(unit_test_config()).eval()
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 2, 3, 64, 64, generator=generator)
    input_ids = torch.tensor([[0, 5, 6, 2]])
    with pytest.raises(ValueError, match="one frame at a time"):
        online(pixel_values=frames, input_ids=input_ids)
    labels = [{"masks": torch.zeros(1, 64, 64, dtype=torch.bool), "boxes": torch.zeros(1, 4), "valid": torch.ones(1)}]
    with pytest.raises(ValueError, match="Training an online"):
        online(pixel_values=frames[:, :1], input_ids=input_ids, labels=labels)
    with pytest.raises(ValueError, match="track follows 2 sentences"):
        online(pixel_values=frames[:, :1], input_ids=input_ids, track=online.model.empty_track(2))
    with pytest.raises(ValueError, match="config.online=False"):
        offline(pixel_values=frames, input_ids=input_ids, track=online.model.empty_track())
    with torch.no_grad():
        outputs = offline(pixel_values=frames, input_ids=input_ids)
    with pytest.raises(ValueError, match="online"):
        offline.update_track(outputs, None)


# ----------------------------------------------------------------------------- remote code


REMOTE_ONLINE = (
    "import sys\n"
    f"for name in {PACKAGE_ONLY_MODULES!r}:\n"
    "    sys.modules[name] = None  # not importable: everything must come from the folder\n"
) + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForZeroShotObjectDetection

    folder, data = sys.argv[1], sys.argv[2]
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert model.config.online
    inputs = load_file(data + "/inputs.safetensors")
    track, results = None, {}
    with torch.no_grad():
        for frame in range(inputs["pixel_values"].shape[1]):
            outputs = model(pixel_values=inputs["pixel_values"][:, frame : frame + 1], input_ids=inputs["input_ids"], track=track)
            track = model.update_track(outputs, track)
            results[f"f{frame}.logits"], results[f"f{frame}.pred_masks"] = outputs.logits, outputs.pred_masks
            results[f"f{frame}.track_embedding"] = track.track_embedding
    save_file(results, data + "/remote_outputs.safetensors")
    print("remote load ok")
    """
)


def test_converted_folder_runs_online_as_remote_code(fixture, converted, tmp_path):
    model, folder = converted
    inputs = {"pixel_values": fixture.inputs["pixel_values"][None], "input_ids": fixture.inputs["e0.input_ids"]}
    save_file(inputs, tmp_path / "inputs.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_ONLINE, str(folder), str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote load ok" in result.stdout
    remote = load_file(tmp_path / "remote_outputs.safetensors")
    track = None
    with torch.no_grad():
        for frame in range(fixture.num_frames):
            outputs = model(pixel_values=inputs["pixel_values"][:, frame : frame + 1], input_ids=inputs["input_ids"], track=track)
            track = model.update_track(outputs, track)
            torch.testing.assert_close(remote[f"f{frame}.logits"], outputs.logits, **FP32_ROUNDING)
            torch.testing.assert_close(remote[f"f{frame}.pred_masks"], outputs.pred_masks, **FP32_ROUNDING)
            torch.testing.assert_close(remote[f"f{frame}.track_embedding"], track.track_embedding, **FP32_ROUNDING)


def test_track_embedding_gets_gradient_through_the_next_frame():
    """The track carries the referred query's state into the next frame: the MLP is trained through it (the box is
    detached, as in the original)."""
    torch.manual_seed(0)
    model = randomize_weights(ReferFormerForReferringVideoObjectSegmentation(unit_test_config(online=True)))
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 2, 3, 128, 128, generator=generator)  # training-mode group norms need 2x2 maps at stride 64
    input_ids = torch.tensor([[0, 5, 6, 2]])
    outputs = model(pixel_values=frames[:, :1], input_ids=input_ids)
    track = model.update_track(outputs, None)
    assert not track.reference_points.requires_grad
    model(pixel_values=frames[:, 1:], input_ids=input_ids, track=track).pred_masks.sum().backward()
    assert all(parameter.grad is not None for parameter in model.track_embed.parameters())
