"""Named model configurations and offline tokenizers for training new ReferFormer models from scratch
(`scripts/run_rvos.py train --config_name ...`), and the one-line error messages of the command lines."""

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedTokenizerFast

from .configuration_referformer import ReferFormerConfig
from .data_synthetic import COLORS, SHAPES


# Every word of the synthetic referring-shapes expressions (`referformer.data_synthetic.describe_attributes`).
SHAPES_WORDS = (
    "the", "shape", "small", "big", "on", "in", "left", "middle", "right", "moving", "up", "down", "that", "is", "not",
    *SHAPES, *COLORS,
)
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, the RoBERTa ids of <s>, <pad> and </s>


def build_shapes_tokenizer(model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the synthetic referring-shapes vocabulary (`<s> words </s>`, other words map to
    `<unk>`), built locally: nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(sorted(set(SHAPES_WORDS))))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_config(vocab_size: int, max_text_length: int = 16) -> ReferFormerConfig:
    """A small ReferFormer for low-resolution synthetic clips, trainable from scratch on a CPU: a ResNet of four
    half-width basic blocks with trainable batch norms, a 2-layer RoBERTa of width 64 (trained), d_model 64, 2 + 2
    transformer layers, one query, no dropout and mask losses at the input resolution (2.1M parameters).

    One query, because it makes the mask and box losses teach the grounding: with several queries and a text
    encoder trained from scratch, the queries settle on one object each and only the class head is left to learn
    which one the sentence refers to, which it did not in a 37-minute CPU run (its loss stayed at the
    constant-prediction level). Mask losses at the input resolution, because the shapes are only 4 to 9 stride-4
    cells wide: even a perfect stride-4 mask of the synthetic clips, up-sampled, scores only J 0.80 at 96x144."""
    return ReferFormerConfig(
        backbone_config={
            "model_type": "referformer_timm_backbone",
            "model_name": "resnet18",
            "model_kwargs": {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32, "zero_init_last": False},
            "freeze_batch_norm": False,
            "freeze_stem_and_first_stage": False,
        },
        text_config={
            "model_type": "roberta",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": max_text_length + 4,
            "type_vocab_size": 1,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        fusion_attention_heads=4,
        pixel_decoder_attention_heads=4,
        pixel_decoder_ffn_dim=128,
        mask_dim=32,
        num_queries=1,
        mask_loss_at_input_resolution=True,
        num_frames=3,
        freeze_text_encoder=False,
        dropout=0.0,
        text_projection_dropout=0.0,
        pixel_decoder_dropout=0.0,
    )


CONFIG_PRESETS = {
    "tiny": "small model for synthetic data, word-level tokenizer built locally (CPU friendly)",
    "resnet50": "the released architecture (ResNet-50, RoBERTa-base, 4+4 layers); tokenizer FacebookAI/roberta-base",
}
DEFAULT_TOKENIZERS = {"resnet50": "FacebookAI/roberta-base"}


def error_line(error: BaseException) -> str:
    """One line saying what went wrong: the lines of the message joined (of its cause for a config validation error,
    whose own message first names the validator), or the exception's type name when it has no message."""
    if isinstance(error, StrictDataclassError) and error.__cause__ is not None:
        error = error.__cause__
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


__all__ = [
    "CONFIG_PRESETS", "DEFAULT_TOKENIZERS", "SHAPES_WORDS", "build_shapes_tokenizer", "error_line", "tiny_config"
]
