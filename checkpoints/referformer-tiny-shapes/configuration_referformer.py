"""Configuration classes of ReferFormer and of the backbones it can use."""

import os
import re
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec


# RoBERTa-base, the text encoder of every released ReferFormer checkpoint.
# Sets the default of `ReferFormerConfig.disable_custom_kernels`.
DISABLE_CUSTOM_KERNELS_ENV_VAR = "REFERFORMER_DISABLE_CUSTOM_KERNELS"

ROBERTA_BASE_KWARGS = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


# The `timm.create_model` arguments a timm backbone config may carry: ones that shape the architecture (ResNet family:
# depth, widths, stem, strides; ConvNeXt-style depths/dims). Anything else is refused, in particular the arguments that
# make timm read or download weights (`checkpoint_path`, `pretrained*`, `pretrained_cfg_overlay`).
TIMM_ARCHITECTURE_KWARGS = (
    "avg_down",
    "base_width",
    "block_reduce_first",
    "cardinality",
    "channels",
    "depths",
    "dims",
    "down_kernel_size",
    "drop_block_rate",
    "drop_path_rate",
    "drop_rate",
    "layers",
    "output_stride",
    "replace_stem_pool",
    "stem_type",
    "stem_width",
    "zero_init_last",
)
TIMM_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # an architecture name, without a `hf-hub:`/`local-dir:` source


def _is_plain_value(value) -> bool:
    """A number, string, boolean or a list of those (what architecture arguments are)."""
    if isinstance(value, list):
        return all(isinstance(item, (bool, int, float, str)) for item in value)
    return isinstance(value, (bool, int, float, str))


@strict
class ReferFormerTimmBackboneConfig(PreTrainedConfig):
    r"""
    A convolutional backbone built with `timm.create_model(model_name, features_only=True, out_indices=...)`.

    model_name (`str`, defaults to `"resnet50"`):
        timm architecture name.
    model_kwargs (`dict`, *optional*):
        Extra keyword arguments for `timm.create_model`, e.g. `{"layers": [3, 4, 23, 3]}` or `{"base_width": 16}`:
        only those of `TIMM_ARCHITECTURE_KWARGS`, with plain values (numbers, strings, booleans, lists of them).
    out_indices (`list[int]`, defaults to `(1, 2, 3, 4)`):
        The four feature stages used by ReferFormer, at strides 4, 8, 16 and 32 (res2..res5 for a ResNet).
    freeze_batch_norm (`bool`, defaults to `True`):
        Replace batch norms by frozen batch norms, as the original does.
    freeze_stem_and_first_stage (`bool`, defaults to `True`):
        Do not train the stem and the first output stage (the original freezes conv1 and layer1 of its ResNets).

    Example:

    ```python
    >>> from referformer import ReferFormerConfig, ReferFormerTimmBackboneConfig
    >>> resnet101 = ReferFormerTimmBackboneConfig(model_name="resnet50", model_kwargs={"layers": [3, 4, 23, 3]})
    >>> ReferFormerConfig(backbone_config=resnet101).to_dict()["backbone_config"]["model_kwargs"]  # in config.json
    {'layers': [3, 4, 23, 3]}
    >>> ReferFormerTimmBackboneConfig(model_kwargs={"pretrained": True})  # arguments that load weights are refused
    Traceback (most recent call last):
    ...
    huggingface_hub.errors.StrictDataclassClassValidationError: ...refusing 'pretrained'.

    ```
    """

    model_type = "referformer_timm_backbone"

    model_name: str = "resnet50"
    model_kwargs: dict | None = None
    out_indices: list[int] | tuple[int, ...] = (1, 2, 3, 4)
    freeze_batch_norm: bool = True
    freeze_stem_and_first_stage: bool = True

    def __post_init__(self, **kwargs):
        self.model_kwargs = dict(self.model_kwargs or {})
        self.out_indices = list(self.out_indices)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if not isinstance(self.model_name, str) or not TIMM_MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"backbone_config.model_name must be a timm architecture name, got {self.model_name!r}.")
        for key, value in self.model_kwargs.items():
            if key not in TIMM_ARCHITECTURE_KWARGS:
                raise ValueError(
                    f"backbone_config.model_kwargs may only hold timm arguments that shape the architecture "
                    f"({', '.join(TIMM_ARCHITECTURE_KWARGS)}); refusing {key!r}."
                )
            if not _is_plain_value(value):
                raise ValueError(f"backbone_config.model_kwargs[{key!r}] must be a number, string, boolean or list of them.")
        if len(self.out_indices) != 4:
            raise ValueError(
                f"ReferFormer needs exactly four backbone stages (strides 4, 8, 16, 32), got out_indices={self.out_indices}."
            )


@strict
class ReferFormerSwinBackboneConfig(PreTrainedConfig):
    r"""
    The image Swin Transformer exactly as the original ReferFormer uses it (mmdet style: per-stage output norms, window
    never shrunk on small maps). Sizes of the released models: T (96, [2,2,6,2], [3,6,12,24]), S (96, [2,2,18,2],
    [3,6,12,24]), B (128, [2,2,18,2], [4,8,16,32]), L (192, [2,2,18,2], [6,12,24,48]).

    Example:

    ```python
    >>> from referformer import ReferFormerConfig, ReferFormerSwinBackboneConfig
    >>> swin_b = ReferFormerSwinBackboneConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])
    >>> config = ReferFormerConfig.from_dict(ReferFormerConfig(backbone_config=swin_b).to_dict())  # a config.json trip
    >>> type(config.backbone_config).__name__, config.backbone_config.num_heads
    ('ReferFormerSwinBackboneConfig', [4, 8, 16, 32])
    >>> ReferFormerSwinBackboneConfig(embed_dim=100)  # each stage's width must split evenly into its heads
    Traceback (most recent call last):
    ...
    huggingface_hub.errors.StrictDataclassClassValidationError: ...Swin stage 0: width 100 is not divisible by 3 heads.

    ```
    """

    model_type = "referformer_swin"

    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.2

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _validate_swin_sizes(self.embed_dim, self.depths, self.num_heads)


@strict
class ReferFormerVideoSwinBackboneConfig(PreTrainedConfig):
    r"""
    The Video Swin Transformer (3-D windows) as the original ReferFormer uses it: per-frame features taken before patch
    merging, no output norms. Sizes of the released models: T (96, [2,2,6,2], [3,6,12,24]), S (96, [2,2,18,2],
    [3,6,12,24]), B (128, [2,2,18,2], [4,8,16,32]).

    Example:

    ```python
    >>> from referformer import ReferFormerConfig, ReferFormerVideoSwinBackboneConfig
    >>> video_swin_s = ReferFormerVideoSwinBackboneConfig(depths=[2, 2, 18, 2])
    >>> video_swin_s.window_size, video_swin_s.patch_size  # (time, height, width): time is never patched
    ([8, 7, 7], [1, 4, 4])
    >>> ReferFormerConfig(backbone_config=video_swin_s).backbone_config.model_type
    'referformer_video_swin'

    ```
    """

    model_type = "referformer_video_swin"

    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: list[int] | tuple[int, ...] = (8, 7, 7)
    patch_size: list[int] | tuple[int, ...] = (1, 4, 4)
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.2

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self.window_size = list(self.window_size)
        self.patch_size = list(self.patch_size)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _validate_swin_sizes(self.embed_dim, self.depths, self.num_heads)
        if len(self.window_size) != 3 or len(self.patch_size) != 3:
            raise ValueError("Video Swin window_size and patch_size are (time, height, width) triples.")


def _validate_swin_sizes(embed_dim, depths, num_heads):
    if len(depths) != 4 or len(num_heads) != 4:
        raise ValueError(f"Swin backbones need four stages, got depths={depths}, num_heads={num_heads}.")
    for stage, heads in enumerate(num_heads):
        if (embed_dim * 2**stage) % heads != 0:
            raise ValueError(f"Swin stage {stage}: width {embed_dim * 2**stage} is not divisible by {heads} heads.")


BACKBONE_CONFIG_CLASSES = (
    ReferFormerTimmBackboneConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
for _backbone_config_class in BACKBONE_CONFIG_CLASSES:
    # Registered at import so that a `backbone_config` dict in config.json resolves by its `model_type`, also when
    # this file is loaded as remote code.
    AutoConfig.register(_backbone_config_class.model_type, _backbone_config_class, exist_ok=True)


@strict
class ReferFormerConfig(PreTrainedConfig):
    r"""
    Configuration of a ReferFormer model. Defaults reproduce the released checkpoints (ResNet-50, RoBERTa-base,
    `--with_box_refine --binary --freeze_text_encoder`).

    backbone_config (`dict` or `PreTrainedConfig`, *optional*):
        Visual backbone: a [`ReferFormerTimmBackboneConfig`] (default: timm ResNet-50, stages res2..res5), a
        [`ReferFormerSwinBackboneConfig`] or a [`ReferFormerVideoSwinBackboneConfig`].
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        Text encoder, any `AutoModel` text encoder config (default: RoBERTa-base architecture).
    d_model (`int`, defaults to 256):
        Hidden size of the transformer, the fusion modules and the pixel decoder (`hidden_dim` in the original).
    encoder_layers / decoder_layers (`int`, defaults to 4):
        Number of deformable encoder / decoder layers.
    encoder_attention_heads / decoder_attention_heads (`int`, defaults to 8):
        Heads of the deformable attentions (`nheads`).
    encoder_ffn_dim / decoder_ffn_dim (`int`, defaults to 2048):
        Feed-forward sizes of the deformable transformer (`dim_feedforward`).
    encoder_n_points / decoder_n_points (`int`, defaults to 4):
        Sampling points per head and level of the deformable attentions.
    num_feature_levels (`int`, defaults to 4):
        Feature levels of the deformable transformer (strides 8, 16, 32 and an extra stride-64 level). Must be 4.
    num_queries (`int`, defaults to 5):
        Conditional queries per frame.
    num_frames (`int`, defaults to 5):
        Training clip length. The forward pass accepts any number of frames.
    dropout (`float`, defaults to 0.1):
        Dropout of the deformable transformer.
    activation_function (`str`, defaults to `"relu"`):
        Activation of the feed-forward layers.
    fusion_attention_heads (`int`, defaults to 8):
        Heads of the early vision-language fusion attention.
    text_projection_dropout (`float`, defaults to 0.1):
        Dropout of the text feature resizer.
    pixel_decoder_attention_heads (`int`, defaults to 8):
        Heads of the cross-modal FPN attentions.
    pixel_decoder_ffn_dim (`int`, defaults to 2048):
        Feed-forward size of the cross-modal FPN blocks (the original reuses `dim_feedforward`).
    pixel_decoder_dropout (`float`, defaults to 0.1):
        Dropout of the cross-modal FPN blocks.
    pixel_decoder_sr_ratios (`list[int]`, defaults to `(8, 4, 2, 1)`):
        Spatial reduction of the FPN self-attention at strides 4, 8, 16 and 32.
    mask_dim (`int`, defaults to 256):
        Channels of the stride-4 mask features fed to the dynamic mask head.
    controller_layers (`int`, defaults to 3):
        Number of dynamic 1x1 convolutions in the mask head.
    dynamic_mask_channels (`int`, defaults to 8):
        Width of the dynamic convolutions.
    rel_coord (`bool`, defaults to `True`):
        Append relative coordinates (reference point minus pixel location, in input pixels) to the mask features.
    with_box_refine (`bool`, defaults to `True`):
        Iterative box refinement: one class/box head per decoder layer, references refined layer by layer.
    auxiliary_loss (`bool`, defaults to `True`):
        Return the predictions of every decoder layer (and use them for auxiliary losses).
    freeze_text_encoder (`bool`, defaults to `True`):
        Do not train the text encoder (all released fine-tuned models).
    num_classes (`int`, defaults to 1):
        Number of object classes (1 for every released model, trained with `--binary`).
    focal_alpha (`float`, defaults to 0.25):
        Alpha of the sigmoid focal losses.
    class_cost / bbox_cost / giou_cost / mask_cost / dice_cost (`float`, defaults to 2 / 5 / 2 / 2 / 5):
        Weights of the matching costs.
    class_loss_coefficient / bbox_loss_coefficient / giou_loss_coefficient / mask_loss_coefficient /
    dice_loss_coefficient (`float`, defaults to 2 / 5 / 2 / 2 / 5):
        Weights of the losses.
    mask_loss_at_input_resolution (`bool`, defaults to `False`):
        Compute the mask matching costs and losses on the predicted mask logits up-sampled bilinearly to the input
        resolution (as post-processing does) against the full-resolution label masks, instead of the original's
        labels sub-sampled to the stride-4 grid. This teaches edges between grid cells, which matters for objects
        only a few cells wide (small inputs); the released models use `False`.
    init_std (`float`, defaults to 0.02):
        Standard deviation of the generic weight initialisation.
    online (`bool`, defaults to `False`):
        OnlineRefer (Wu et al., ICCV 2023): the same network run one frame at a time, plus a track-embedding MLP.
        The decoder reads its target, query positions and initial reference from the track of the previous frame
        (an [`~referformer.frame_chunking.OnlineTrack`]) instead of the sentence feature and the learned queries.
    disable_custom_kernels (`bool`, *optional*):
        Always use the PyTorch multi-scale deformable attention, never the compiled operator: the one off-switch of
        the compiled kernel. Defaults to the environment variable `REFERFORMER_DISABLE_CUSTOM_KERNELS` (`1`, `true`,
        `yes` or `on`), `False` without it. A Hub kernel is chosen separately (`from_pretrained(..., use_kernels=True)`).

    Speed and memory knobs (they change how the forward pass is scheduled, never its results beyond float rounding):

    frame_chunk_size (`int`, *optional*):
        Run the per-frame stages (backbone, fusion, deformable encoder and decoder, FPN convolutions, mask head) over
        chunks of this many frames, so that peak memory grows linearly with the clip length; the cross-frame
        attention of the FPN still sees every frame, and results equal an unchunked pass up to fp32 rounding. `None`
        processes all frames at once.
    stride4_features_hold_bytes (`int`, defaults to `2**28`):
        With several frame chunks, the stride-4 backbone maps of the clip (14.7 MB per 360x640 ResNet frame) are held
        from the encoding pass for the FPN pass while they take at most this many bytes (256 MiB: up to 17 such
        frames); beyond it the FPN pass recomputes them chunk by chunk (the backbone's first stage only: about 4% of
        a frame's FLOPs, against 0.5 GiB held for a 36-frame streaming window).
    chunk_size_feed_forward (`int`, defaults to 1024):
        Rows (tokens) per chunk of the feed-forward blocks of the encoder, decoder and FPN (transformers' name), so
        that the wide hidden layer never exists for all tokens at once; `0` runs each block as one product.

    Example:

    ```python
    >>> from referformer import ReferFormerConfig
    >>> config = ReferFormerConfig()  # the released checkpoints: ResNet-50, RoBERTa-base
    >>> config.backbone_config.model_name, config.text_config.model_type, config.hidden_size
    ('resnet50', 'roberta', 256)
    >>> config.dynamic_weight_sizes, config.num_dynamic_params  # what the controller generates per query
    ([2064, 64, 8], 2153)
    >>> ReferFormerConfig(mask_dim=8, rel_coord=False).num_dynamic_params  # a tiny mask head: 8*8+8 + 8*8+8 + 8*1+1
    153

    ```
    """

    model_type = "referformer"
    # Pipeline tasks served by the package that imports this class (`referformer` sets its task). A config.json's
    # `custom_pipelines` entry for such a task names the folder's copy of the pipeline, for where the package is not
    # installed: it is dropped on load, so that `pipeline(task, model=folder)` runs the package's pipeline, never the
    # folder's code, without `trust_remote_code`. The folder's copy of this class (remote code) keeps it.
    package_pipeline_tasks: ClassVar[frozenset[str]] = frozenset()
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type=ReferFormerTimmBackboneConfig.model_type),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="roberta", init_kwargs=ROBERTA_BASE_KWARGS),
    }
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }
    keys_to_ignore_at_inference = [
        "loss_dict",
        "matched_query_indices",
        "auxiliary_outputs",
        "last_hidden_state",
        "encoder_last_hidden_state",
        "encoder_hidden_states",
        "decoder_hidden_states",
    ]

    backbone_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    num_feature_levels: int = 4
    num_queries: int = 5
    num_frames: int = 5
    dropout: float | int = 0.1
    activation_function: str = "relu"
    fusion_attention_heads: int = 8
    text_projection_dropout: float | int = 0.1
    pixel_decoder_attention_heads: int = 8
    pixel_decoder_ffn_dim: int = 2048
    pixel_decoder_dropout: float | int = 0.1
    pixel_decoder_sr_ratios: list[int] | tuple[int, ...] = (8, 4, 2, 1)
    mask_dim: int = 256
    controller_layers: int = 3
    dynamic_mask_channels: int = 8
    rel_coord: bool = True
    with_box_refine: bool = True
    auxiliary_loss: bool = True
    freeze_text_encoder: bool = True
    num_classes: int = 1
    focal_alpha: float | int = 0.25
    class_cost: float | int = 2.0
    bbox_cost: float | int = 5.0
    giou_cost: float | int = 2.0
    mask_cost: float | int = 2.0
    dice_cost: float | int = 5.0
    class_loss_coefficient: float | int = 2.0
    bbox_loss_coefficient: float | int = 5.0
    giou_loss_coefficient: float | int = 2.0
    mask_loss_coefficient: float | int = 2.0
    dice_loss_coefficient: float | int = 5.0
    mask_loss_at_input_resolution: bool = False
    init_std: float = 0.02
    online: bool = False
    disable_custom_kernels: bool | None = None
    frame_chunk_size: int | None = None
    stride4_features_hold_bytes: int = 2**28
    chunk_size_feed_forward: int = 1024

    def __post_init__(self, **kwargs):
        self.pixel_decoder_sr_ratios = list(self.pixel_decoder_sr_ratios)
        if self.disable_custom_kernels is None:
            environment = os.environ.get(DISABLE_CUSTOM_KERNELS_ENV_VAR, "").strip().lower()
            self.disable_custom_kernels = environment in ("1", "true", "yes", "on")
        # A deformable encoder and a query decoder, as Deformable DETR's config says.
        kwargs.setdefault("is_encoder_decoder", True)
        # `num_labels`, the generic name of the number of classes, sets `num_classes`.
        num_classes = kwargs.get("num_labels", self.num_classes)
        custom_pipelines = {
            task: pipeline
            for task, pipeline in (kwargs.pop("custom_pipelines", None) or {}).items()
            if task not in self.package_pipeline_tasks
        }
        if custom_pipelines:
            kwargs["custom_pipelines"] = custom_pipelines
        super().__post_init__(**kwargs)
        self.num_classes = num_classes
        # `id2label` follows `num_classes`; generated names ("LABEL_i") of another length are replaced.
        if self.id2label is None or len(self.id2label) != self.num_classes:
            labels = (self.id2label or {}).values()
            if any(label != f"LABEL_{index}" for index, label in enumerate(labels)):
                raise ValueError(f"id2label has {len(self.id2label)} labels but num_classes is {self.num_classes}.")
            self.num_labels = self.num_classes

    @property
    def num_labels(self) -> int | None:
        """The number of classes; setting it sets `num_classes` and `id2label`."""
        return len(self.id2label) if self.id2label is not None else None

    @num_labels.setter
    def num_labels(self, num_labels: int):
        PreTrainedConfig.num_labels.fset(self, num_labels)
        self.num_classes = num_labels

    @property
    def dynamic_weight_sizes(self) -> list[int]:
        """Number of generated weights of each dynamic convolution of the mask head."""
        in_channels = self.mask_dim + (2 if self.rel_coord else 0)
        widths = [in_channels] + [self.dynamic_mask_channels] * (self.controller_layers - 1) + [1]
        return [widths[i] * widths[i + 1] for i in range(self.controller_layers)]

    @property
    def dynamic_bias_sizes(self) -> list[int]:
        """Number of generated biases of each dynamic convolution of the mask head."""
        return [self.dynamic_mask_channels] * (self.controller_layers - 1) + [1]

    @property
    def num_dynamic_params(self) -> int:
        """Size of the parameter vector the controller generates per query (2153 for the defaults)."""
        return sum(self.dynamic_weight_sizes) + sum(self.dynamic_bias_sizes)

    def validate_architecture(self):
        """Cross-field checks, run at construction and before saving."""
        # Checked by model type: with remote code the config classes may come from another copy of this module.
        if getattr(self.backbone_config, "model_type", None) not in {cls.model_type for cls in BACKBONE_CONFIG_CLASSES}:
            names = ", ".join(cls.__name__ for cls in BACKBONE_CONFIG_CLASSES)
            raise ValueError(f"backbone_config must be one of {names}, got {type(self.backbone_config).__name__}.")
        if self.d_model % 32 != 0:
            raise ValueError(f"d_model must be a multiple of 32 (GroupNorm with 32 groups), got {self.d_model}.")
        for name in (
            "encoder_attention_heads",
            "decoder_attention_heads",
            "fusion_attention_heads",
            "pixel_decoder_attention_heads",
        ):
            if self.d_model % getattr(self, name) != 0:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)}).")
        if self.mask_dim % 8 != 0:
            raise ValueError(f"mask_dim must be a multiple of 8 (GroupNorm with 8 groups), got {self.mask_dim}.")
        if self.num_feature_levels != 4:
            raise ValueError(
                "ReferFormer pairs its feature levels with the pixel decoder stages; only num_feature_levels=4 is "
                f"supported, got {self.num_feature_levels}."
            )
        if len(self.pixel_decoder_sr_ratios) != 4 or min(self.pixel_decoder_sr_ratios) < 1:
            raise ValueError(f"pixel_decoder_sr_ratios needs four ratios >= 1, got {self.pixel_decoder_sr_ratios}.")
        if self.controller_layers < 2:
            raise ValueError(f"controller_layers must be at least 2, got {self.controller_layers}.")
        for name in ("encoder_layers", "decoder_layers", "num_queries", "num_classes", "dynamic_mask_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.frame_chunk_size is not None and self.frame_chunk_size < 1:
            raise ValueError(f"frame_chunk_size must be at least 1 (or None), got {self.frame_chunk_size}.")
        if self.stride4_features_hold_bytes < 0 or self.chunk_size_feed_forward < 0:
            raise ValueError(
                "stride4_features_hold_bytes and chunk_size_feed_forward must be >= 0, got "
                f"{self.stride4_features_hold_bytes} and {self.chunk_size_feed_forward}."
            )
        if self.activation_function not in ACT2FN:
            raise ValueError(f"Unknown activation_function {self.activation_function!r}.")


__all__ = [
    "ReferFormerConfig",
    "ReferFormerSwinBackboneConfig",
    "ReferFormerTimmBackboneConfig",
    "ReferFormerVideoSwinBackboneConfig",
]
