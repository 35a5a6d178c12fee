"""Conversion of original ReferFormer checkpoints (github.com/wjn922/ReferFormer) into `from_pretrained` folders.

OnlineRefer checkpoints (github.com/wudongming97/OnlineRefer) convert too: they are ReferFormer's weights plus the
track-embedding MLP (`track_embed.*`, which makes the config `online`) and a loss buffer (`criterion.empty_weight`,
dropped).

The configuration is inferred from the weights ([`infer_config`]: backbone family and sizes, text encoder, hidden
size, layers, queries, classes, mask head); what the weights cannot tell (attention heads vs. sampling points,
dropout, loss weights, ...) comes from the original command-line arguments (original names) or the original defaults.
[`convert_state_dict`] maps every original key onto the model, strictly: an unknown key, or a model key left empty,
is a [`ConversionError`]. [`convert_checkpoint`] does it all and writes the model, its processor and its model card;
`scripts/convert_checkpoint.py` is its command line.
"""

import argparse
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer

from .backbone_weights import ORIGINAL_BACKBONE_PREFIX, RESNET_NAMES, load_checkpoint_file
from .configuration_referformer import (
    ReferFormerConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
from .model_cards import model_card, resolve_training_data
from .modeling_referformer import ReferFormerForReferringVideoObjectSegmentation
from .output_folders import push_folder_to_hub, staged_output
from .processing_referformer import ReferFormerProcessor, ReferFormerVideoProcessor


__all__ = [
    "ConversionError",
    "build_converted_model",
    "build_processor",
    "check_weights_fit",
    "convert_checkpoint",
    "convert_state_dict",
    "first_non_finite_weight",
    "infer_backbone_config",
    "infer_config",
    "infer_text_config",
    "load_original_checkpoint",
    "verify_converted_model",
]

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "FacebookAI/roberta-base"  # the tokenizer of every released model

# Keys that carry no weights of the converted model.
DROPPED_KEY_PATTERNS = [
    r"(^|\.)total_ops$",  # thop profiler leftovers
    r"(^|\.)total_params$",
    r"^text_encoder\.embeddings\.position_ids$",  # persistent buffer of older transformers versions
    r"\.relative_position_index$",  # recomputed by the Swin backbones
    r"\.num_batches_tracked$",
    r"^transformer\.decoder\.bbox_embed\.",  # duplicates of bbox_embed.* (checked equal before dropping)
    r"^criterion\.empty_weight$",  # OnlineRefer: a constant of the loss module the model holds
]

# Keys the configuration is read from.
REQUIRED_KEYS = ("query_embed.weight", "transformer.level_embed")

# Original key regex -> converted key (applied in order, first match wins). `{backbone}` is filled per family.
KEY_RENAMES = [
    (r"^transformer\.level_embed$", r"model.level_embed"),
    (r"^transformer\.reference_points\.", r"model.reference_points."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"model.encoder.layers.\1.self_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"model.encoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.", r"model.encoder.layers.\1.fc1."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.", r"model.encoder.layers.\1.fc2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"model.encoder.layers.\1.final_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"model.decoder.layers.\1.encoder_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.", r"model.decoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.", r"model.decoder.layers.\1.fc1."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.", r"model.decoder.layers.\1.fc2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"^class_embed\.(\d+)\.", r"class_embed.\1."),
    (r"^bbox_embed\.(\d+)\.", r"model.decoder.bbox_embed.\1."),
    (r"^query_embed\.weight$", r"model.query_position_embeddings.weight"),
    (r"^input_proj\.", r"model.input_projection."),
    (rf"^{re.escape(ORIGINAL_BACKBONE_PREFIX)}", r"{backbone}"),
    (r"^text_encoder\.", r"model.text_encoder."),
    (r"^resizer\.", r"model.text_projection."),
    (r"^fusion_module\.multihead_attn\.", r"model.vision_language_fusion.attention."),
    (r"^pixel_decoder\.adapter_(\d)\.norm\.", lambda m: f"model.pixel_decoder.adapters.{int(m[1]) - 1}.norm."),
    (r"^pixel_decoder\.adapter_(\d)\.weight$", lambda m: f"model.pixel_decoder.adapters.{int(m[1]) - 1}.conv.weight"),
    (r"^pixel_decoder\.layer_(\d)\.norm\.", lambda m: f"model.pixel_decoder.layers.{int(m[1]) - 1}.norm."),
    (r"^pixel_decoder\.layer_(\d)\.weight$", lambda m: f"model.pixel_decoder.layers.{int(m[1]) - 1}.conv.weight"),
    (r"^pixel_decoder\.mask_features\.", r"model.pixel_decoder.mask_features."),
    (r"^pixel_decoder\.cross_attn_(\d)\.self_attn\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.self_attn."),
    (r"^pixel_decoder\.cross_attn_(\d)\.multihead_attn\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.cross_attn."),
    (r"^pixel_decoder\.cross_attn_(\d)\.norm1\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.self_attn_layer_norm."),
    (r"^pixel_decoder\.cross_attn_(\d)\.norm2\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.cross_attn_layer_norm."),
    (r"^pixel_decoder\.cross_attn_(\d)\.norm3\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.final_layer_norm."),
    (r"^pixel_decoder\.cross_attn_(\d)\.linear(\d)\.", lambda m: f"model.pixel_decoder.blocks.{int(m[1]) - 1}.fc{m[2]}."),
    (r"^controller\.", r"controller."),
    (r"^track_embed\.linear(\d)\.", r"track_embed.fc\1."),
    (r"^track_embed\.norm\.", r"track_embed.layer_norm."),
]
# Where each backbone family's weights go in the converted model.
CONVERTED_BACKBONE_PREFIXES = {"timm": "model.backbone.body.", "swin": "model.backbone.", "video_swin": "model.backbone."}

# Original argument -> ReferFormerConfig field, for values the weights cannot tell.
ARGUMENT_FIELDS = {
    "dropout": "dropout",
    "num_frames": "num_frames",
    "aux_loss": "auxiliary_loss",
    "freeze_text_encoder": "freeze_text_encoder",
    "focal_alpha": "focal_alpha",
    "set_cost_class": "class_cost",
    "set_cost_bbox": "bbox_cost",
    "set_cost_giou": "giou_cost",
    "set_cost_mask": "mask_cost",
    "set_cost_dice": "dice_cost",
    "cls_loss_coef": "class_loss_coefficient",
    "bbox_loss_coef": "bbox_loss_coefficient",
    "giou_loss_coef": "giou_loss_coefficient",
    "mask_loss_coef": "mask_loss_coefficient",
    "dice_loss_coef": "dice_loss_coefficient",
}
# Defaults of the original `opts.py` for the arguments used to resolve shapes, and the flags of the released models.
ORIGINAL_DEFAULTS = {
    "nheads": 8,
    "enc_n_points": 4,
    "dec_n_points": 4,
    "controller_layers": 3,
    "dynamic_mask_channels": 8,
    "rel_coord": True,
    "dilation": False,
    "freeze_text_encoder": True,
}


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why."""


def first_non_finite_weight(weights: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of `weights` holding a NaN or an infinity, or None (entries that are
    not tensors, such as the packed parameters' dtypes of an int8 model's state dict, are skipped)."""
    for name, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def load_original_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads an original checkpoint safely and returns `(state_dict, args)`.

    Accepts a `.pth` dict with `model` (and possibly `args`, optimizer state, ...), a bare state dict in `.pth`, or
    a `.safetensors` file. Pickles are loaded with `weights_only=True`, allowing only the globals the official files
    contain (`argparse.Namespace` for `args`, `collections.Counter` in the LR-scheduler state).
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state_dict, args = load_file(str(path)), {}
        except SafetensorError as error:
            raise ConversionError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    else:
        state_dict, args = _read_pth_checkpoint(path)
    bad = first_non_finite_weight(state_dict)
    if bad is not None:
        raise ConversionError(f"{path}: the weight {bad} holds NaN or infinite values; nothing was converted.")
    return state_dict, args


def _read_pth_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        checkpoint = load_checkpoint_file(path)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, expected a dict of tensors.")
    args = checkpoint.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args or {}
    if not isinstance(args, dict):
        raise ConversionError(f"{path}: its `args` entry is a {type(args).__name__}, expected the training arguments.")
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ConversionError(f"{path}: the weights (the `model` entry or the file itself) are not a dict of tensors.")
    return state_dict, args


def _count_indices(state_dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match[1] for key in state_dict if (match := regex.match(key))})


def infer_backbone_config(state_dict: dict[str, torch.Tensor], args: dict):
    """Backbone family and sizes from the weights (a backbone name in `args` never overrides them)."""
    prefix = ORIGINAL_BACKBONE_PREFIX
    if prefix + "layer1.0.conv1.weight" in state_dict:
        block = "bottleneck" if prefix + "layer1.0.conv3.weight" in state_dict else "basic"
        layers = tuple(_count_indices(state_dict, rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.conv1\.weight$") for stage in range(1, 5))
        width = state_dict[prefix + "layer1.0.conv1.weight"].shape[0]
        cardinality = width // state_dict[prefix + "layer1.0.conv2.weight"].shape[1]
        model_kwargs = {}
        model_name = RESNET_NAMES.get((block, layers))
        if model_name is None:
            model_name = "resnet50" if block == "bottleneck" else "resnet18"
            model_kwargs["layers"] = list(layers)
        if cardinality != 1:
            model_kwargs["cardinality"] = cardinality
        if width // cardinality != 64:
            model_kwargs["base_width"] = width // cardinality
        if args.get("dilation", ORIGINAL_DEFAULTS["dilation"]):
            model_kwargs["output_stride"] = 16
        return "timm", ReferFormerTimmBackboneConfig(model_name=model_name, model_kwargs=model_kwargs)

    patch_weight = state_dict.get(prefix + "patch_embed.proj.weight")
    if patch_weight is None:
        raise ConversionError("Unknown backbone: no ResNet (layer1.0.conv1) or Swin (patch_embed.proj) weights found.")
    embed_dim = patch_weight.shape[0]
    depths = [_count_indices(state_dict, rf"^{re.escape(prefix)}layers\.{stage}\.blocks\.(\d+)\.") for stage in range(4)]
    num_heads = [state_dict[f"{prefix}layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[1] for stage in range(4)]
    table_size = state_dict[f"{prefix}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    mlp_ratio = state_dict[f"{prefix}layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    common = {"embed_dim": embed_dim, "depths": depths, "num_heads": num_heads, "mlp_ratio": mlp_ratio}
    if patch_weight.dim() == 4:
        window = (math.isqrt(table_size) + 1) // 2
        drop_path_rate = 0.3 if embed_dim >= 128 else 0.2  # the original's swin_{b,l} vs swin_{t,s} settings
        return "swin", ReferFormerSwinBackboneConfig(
            window_size=window, patch_size=patch_weight.shape[-1], drop_path_rate=drop_path_rate, **common
        )
    index = state_dict.get(f"{prefix}layers.0.blocks.0.attn.relative_position_index")
    spatial_window = 7
    if index is not None:  # tokens per window = t * s * s and table = (2t - 1) * (2s - 1)^2
        tokens = index.shape[0]
        spatial_window = next(
            s for s in range(1, 64) if tokens % (s * s) == 0 and (2 * (tokens // (s * s)) - 1) * (2 * s - 1) ** 2 == table_size
        )
    temporal_window = (table_size // (2 * spatial_window - 1) ** 2 + 1) // 2
    return "video_swin", ReferFormerVideoSwinBackboneConfig(
        window_size=[temporal_window, spatial_window, spatial_window], patch_size=list(patch_weight.shape[-3:]), **common
    )


def infer_text_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """RoBERTa architecture from the `text_encoder.*` weights."""
    prefix = "text_encoder."
    try:
        vocab_size, hidden_size = state_dict[prefix + "embeddings.word_embeddings.weight"].shape
    except KeyError as error:
        raise ConversionError("No text encoder weights (text_encoder.embeddings.word_embeddings.weight).") from error
    return {
        "model_type": "roberta",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": _count_indices(state_dict, rf"^{prefix}encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, hidden_size // 64),
        "intermediate_size": state_dict[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state_dict[prefix + "embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": state_dict[prefix + "embeddings.token_type_embeddings.weight"].shape[0],
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def infer_config(state_dict: dict[str, torch.Tensor], args: dict | None = None):
    """A `ReferFormerConfig` for these weights; `args` holds original command-line arguments (original names)."""
    args = {**ORIGINAL_DEFAULTS, **(args or {})}
    missing = [key for key in REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise ConversionError(f"Not a complete ReferFormer checkpoint: it has no {', '.join(missing)}.")
    if any(key.startswith("track_pos_embed.") for key in state_dict):
        raise ConversionError("OnlineRefer trained with --update_pos (track_pos_embed.* weights) is not supported.")
    num_queries, hidden_size = state_dict["query_embed.weight"].shape
    num_levels = state_dict["transformer.level_embed"].shape[0]
    decoder_layers = _count_indices(state_dict, r"^transformer\.decoder\.layers\.(\d+)\.")
    encoder_layers = _count_indices(state_dict, r"^transformer\.encoder\.layers\.(\d+)\.")
    if "hidden_dim" in args and args["hidden_dim"] != hidden_size:
        logger.warning("args say hidden_dim=%s but the weights have %s; using the weights.", args["hidden_dim"], hidden_size)

    def points(layer_key: str, heads: int) -> int:
        samples_per_query = state_dict[layer_key].shape[0]
        n_points, remainder = divmod(samples_per_query, heads * num_levels)
        if remainder or n_points < 1:
            raise ConversionError(f"{layer_key}: {samples_per_query} attention weights do not split into {heads} heads x {num_levels} levels.")
        return n_points

    heads = args["nheads"]
    encoder_points = points("transformer.encoder.layers.0.self_attn.attention_weights.weight", heads)
    decoder_points = points("transformer.decoder.layers.0.cross_attn.attention_weights.weight", heads)

    # Box refinement: the decoder owns the box heads, or the per-layer heads differ.
    with_box_refine = any(key.startswith("transformer.decoder.bbox_embed.") for key in state_dict) or any(
        not torch.equal(state_dict[f"class_embed.{layer}.weight"], state_dict["class_embed.0.weight"])
        for layer in range(1, decoder_layers)
    )
    backbone_family, backbone_config = infer_backbone_config(state_dict, args)
    config_kwargs = {
        "backbone_config": backbone_config,
        "text_config": infer_text_config(state_dict),
        "d_model": hidden_size,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
        "decoder_ffn_dim": state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0],
        "pixel_decoder_ffn_dim": state_dict["pixel_decoder.cross_attn_1.linear1.weight"].shape[0],
        "encoder_n_points": encoder_points,
        "decoder_n_points": decoder_points,
        "num_feature_levels": num_levels,
        "num_queries": num_queries,
        "num_classes": state_dict["class_embed.0.weight"].shape[0],
        "mask_dim": state_dict["pixel_decoder.mask_features.weight"].shape[0],
        "controller_layers": args["controller_layers"],
        "dynamic_mask_channels": args["dynamic_mask_channels"],
        "rel_coord": args["rel_coord"],
        "with_box_refine": with_box_refine,
        "online": any(key.startswith("track_embed.") for key in state_dict),
    }
    config_kwargs.update({field: args[name] for name, field in ARGUMENT_FIELDS.items() if name in args})
    config = ReferFormerConfig(**config_kwargs)
    last_controller_layer = _count_indices(state_dict, r"^controller\.layers\.(\d+)\.") - 1
    generated = state_dict[f"controller.layers.{last_controller_layer}.weight"].shape[0]
    if config.num_dynamic_params != generated:
        raise ConversionError(
            f"The controller generates {generated} parameters per query, but controller_layers="
            f"{config.controller_layers}, dynamic_mask_channels={config.dynamic_mask_channels}, rel_coord="
            f"{config.rel_coord} need {config.num_dynamic_params}: pass the right values with --original_args."
        )
    return backbone_family, config


def _split_packed_attention(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """`nn.MultiheadAttention` packs q, k, v projections along dim 0; the port keeps them separate."""
    match = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
    if match is None:
        return {key: tensor}
    query, key_, value = tensor.chunk(3, dim=0)
    return {f"{match[1]}.{name}_proj.{match[2]}": part for name, part in zip("qkv", (query, key_, value))}


def convert_state_dict(state_dict: dict[str, torch.Tensor], backbone_family: str, with_box_refine: bool):
    """Original keys -> keys of `ReferFormerForReferringVideoObjectSegmentation`. Raises on any unknown key."""
    for key, tensor in state_dict.items():
        if key.startswith("transformer.decoder.bbox_embed."):
            twin = key[len("transformer.decoder."):]
            twin_tensor = state_dict.get(twin)
            same = twin_tensor is not None and twin_tensor.shape == tensor.shape
            if same and not tensor.is_meta:  # key lists without values (meta tensors) are checked by shape only
                same = torch.equal(twin_tensor, tensor)
            if not same:
                raise ConversionError(f"{key} should duplicate {twin}, but they differ.")
    backbone_prefix = CONVERTED_BACKBONE_PREFIXES[backbone_family]
    dropped = [re.compile(pattern) for pattern in DROPPED_KEY_PATTERNS]
    renames = [(re.compile(pattern), replacement) for pattern, replacement in KEY_RENAMES]
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if any(pattern.search(key) for pattern in dropped):
            continue
        if not with_box_refine and re.match(r"^(class_embed|bbox_embed)\.(?!0\.)\d+\.", key):
            continue  # without box refinement every layer shares the head of index 0
        for pattern, replacement in renames:
            if pattern.match(key):
                if isinstance(replacement, str):
                    new_key = pattern.sub(replacement.replace("{backbone}", backbone_prefix), key, count=1)
                else:
                    new_key = pattern.sub(replacement, key, count=1)
                converted.update(_split_packed_attention(new_key, tensor))
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(f"{len(unmapped)} original keys have no counterpart: {', '.join(unmapped)}")
    return converted


def check_weights_fit(model_state: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> None:
    """Raises a `ConversionError` listing every missing, unexpected or mis-shaped key."""
    missing = sorted(set(model_state) - set(converted))
    unexpected = sorted(set(converted) - set(model_state))
    mismatched = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in sorted(set(model_state) & set(converted))
        if converted[key].shape != model_state[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing in the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise ConversionError("Converted weights do not fit the inferred model. " + " | ".join(problems))


def build_converted_model(state_dict: dict[str, torch.Tensor], args: dict | None = None):
    """Infers the config, builds the model and loads the converted weights strictly."""
    backbone_family, config = infer_config(state_dict, args)
    converted = convert_state_dict(state_dict, backbone_family, config.with_box_refine)
    model = ReferFormerForReferringVideoObjectSegmentation(config).eval()
    check_weights_fit(model.state_dict(), converted)
    model.load_state_dict(converted, strict=True)
    return model


def verify_converted_model(model) -> str:
    """Runs the converted model once on a random 2-frame clip (one frame for an online model); raises a
    `ConversionError` unless every output is finite and returns a one-line summary of the output shapes."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 1 if config.online else 2, 3, 128, 160, generator=generator)
    input_ids = torch.randint(3, config.text_config.vocab_size, (1, 8), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = config.text_config.bos_token_id, config.text_config.eos_token_id
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, input_ids=input_ids)
    for name in ("logits", "pred_boxes", "pred_masks"):
        if not torch.isfinite(outputs[name]).all():
            raise ConversionError(f"Verification failed: {name} has non-finite values.")
    return (
        f"verified: logits {tuple(outputs.logits.shape)}, boxes {tuple(outputs.pred_boxes.shape)}, "
        f"masks {tuple(outputs.pred_masks.shape)}, all finite"
    )


def build_processor(tokenizer_name_or_path: str, text_config):
    """The ReferFormer processor: the original's inference video preprocessing and the RoBERTa tokenizer, whose
    length limit is the text encoder's (position embeddings minus RoBERTa's padding offset)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"Cannot load the tokenizer {tokenizer_name_or_path!r} ({error}); pass --tokenizer with a local folder "
            "holding the RoBERTa tokenizer files."
        ) from error
    if len(tokenizer) > text_config.vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder only {text_config.vocab_size} embeddings."
        )
    tokenizer.model_max_length = text_config.max_position_embeddings - (text_config.pad_token_id + 1)
    return ReferFormerProcessor(ReferFormerVideoProcessor(), tokenizer)


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    original_args: dict | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
    run_verification: bool = False,
    push_to_hub: str | None = None,
    training_data: str | None = None,
):
    """Converts `checkpoint` into `output_dir` (model, processor and model card; written only if everything succeeds)
    and returns the model. `training_data` names the training data for the model card (one of
    `referformer.model_cards.TRAINING_SETTINGS`); without it, it is read from the checkpoint's training arguments.
    `run_verification` runs the model once before anything is written; `push_to_hub` uploads the folder to this Hub
    repository."""
    state_dict, checkpoint_args = load_original_checkpoint(checkpoint)
    args = {**checkpoint_args, **(original_args or {})}
    training = resolve_training_data(args, training_data)
    model = build_converted_model(state_dict, args)
    processor = build_processor(tokenizer, model.config.text_config)
    if run_verification:
        logger.info(verify_converted_model(model))
    output_dir = Path(output_dir)
    card = model_card(model.config, training, Path(checkpoint).name, push_to_hub or output_dir.name)
    with staged_output(output_dir, overwrite=False, inputs=(checkpoint, tokenizer), option=None) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")
    logger.info(f"saved {type(model).__name__}, its processor and model card to {output_dir}")
    logger.info(f"training data: {training.description if training else 'unknown (pass --training_data)'}")
    if push_to_hub:
        logger.info(f"pushed to {push_folder_to_hub(output_dir, push_to_hub, 'Convert original ReferFormer checkpoint')}")
    return model
