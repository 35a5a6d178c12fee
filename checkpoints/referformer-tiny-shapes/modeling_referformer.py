"""PyTorch ReferFormer: "Language as Queries for Referring Video Object Segmentation" (Wu et al., CVPR 2022).

Layout of the computation (shapes for B clips of T frames, Q queries, hidden size C):

1. backbone: every frame -> four feature maps at strides 4, 8, 16, 32 (frames flattened into the batch, N = B*T);
2. text encoder -> word features [B, L, C] and a sentence feature [B, C] (one shared projection);
3. input projections of strides 8/16/32 plus an extra stride-64 level, each multiplied by a cross-attention from the
   visual tokens to the words (early fusion);
4. deformable encoder per frame; deformable decoder per frame whose queries are the sentence feature (content) plus a
   learned position shared by all frames, with iterative box refinement;
5. cross-modal FPN (pixel decoder) -> stride-4 mask features for the whole clip;
6. per decoder layer: class logits, boxes, and masks from a dynamic 1x1-convolution head generated per query.

OnlineRefer (`config.online`) runs the same network one frame at a time: the decoder's target, query positions and
initial reference come from the track of the referred object in the previous frame (`frame_chunking.OnlineTrack`),
which the task model's `update_track` carries on through a track-embedding MLP.

Everything but the FPN's spatio-temporal self-attention is per frame and runs over chunks of
`config.frame_chunk_size` frames (`frame_chunking`: the schedule and the whole-clip state); that attention gets the
keys and values of every frame in the encoding pass, then the FPN and the mask head run chunk by chunk. A single video
with several sentences has its visual features computed once.
"""

import math
from dataclasses import dataclass

import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_referformer import (
    ReferFormerConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
from .frame_chunking import (
    ClipEncoding,
    DecoderQueries,
    FrameChunkEncoding,
    MaskHead,
    OnlineTrack,
    PixelDecoderKeyValues,
    RecordedChunk,
    TextFeatures,
    frame_chunks,
    per_clip,
)
from .loss_referformer import ReferFormerLoss
from .ms_deform_attn import MultiScaleDeformableAttention
from .swin_backbones import ReferFormerSwinBackbone, ReferFormerVideoSwinBackbone, init_swin_weights

logger = logging.get_logger(__name__)


@dataclass
class ReferFormerModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, hidden_size)`):
        Output of the last decoder layer.
    intermediate_hidden_states (`torch.FloatTensor` of shape `(batch_size, decoder_layers, num_frames, num_queries, hidden_size)`):
        Output of every decoder layer.
    intermediate_pred_boxes (`torch.FloatTensor` of shape `(batch_size, decoder_layers, num_frames, num_queries, 4)`):
        Boxes (normalized cx, cy, w, h of the unpadded frame) predicted by the box head of every decoder layer.
    intermediate_reference_points (`torch.FloatTensor` of shape `(batch_size, decoder_layers, num_frames, num_queries, 2)`):
        Reference point (x, y) fed to every decoder layer; index 0 is the initial reference.
    mask_features (`torch.FloatTensor` of shape `(batch_size, num_frames, mask_dim, height / 4, width / 4)`):
        Stride-4 features of the cross-modal FPN, input of the dynamic mask head.
    frame_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
        Unpadded (height, width) of each clip, derived from `pixel_mask`.
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_frames, sequence_length, hidden_size)`):
        Output of the deformable encoder (all feature levels flattened and concatenated).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Input of the encoder and output of every encoder layer, each `(batch_size * num_frames, sequence_length, hidden_size)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Input of the decoder and output of every decoder layer, each `(batch_size * num_frames, num_queries, hidden_size)`.
    backbone_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        The four backbone feature maps (strides 4, 8, 16, 32), each `(video_batch_size * num_frames, channels, height, width)`.
    text_encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Hidden states of the text encoder (embeddings and every layer), each `(batch_size, sequence_length, text_hidden_size)`.
    encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Deformable self-attention weights of every encoder layer, each
        `(batch_size * num_frames, sequence_length, encoder_attention_heads, num_feature_levels, encoder_n_points)`.
    decoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Query self-attention weights of every decoder layer, each
        `(batch_size * num_frames, decoder_attention_heads, num_queries, num_queries)` (eager attention only).
    cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Deformable cross-attention weights of every decoder layer, each
        `(batch_size * num_frames, num_queries, decoder_attention_heads, num_feature_levels, decoder_n_points)`.
    text_encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Self-attention weights of every text-encoder layer (eager attention only).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer import ReferFormerModel, ReferFormerProcessor
    >>> processor = ReferFormerProcessor.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> model = ReferFormerModel.from_pretrained("checkpoints/referformer-tiny-shapes")  # 1 query, 2 decoder layers
    >>> inputs = processor(videos=np.full((3, 96, 144, 3), 128, np.uint8), text="the yellow square")  # 3 grey frames
    >>> outputs = model(**inputs)
    >>> {name: tuple(value.shape) for name, value in outputs.items()}  # what a forward returns by default
    {'last_hidden_state': (1, 3, 1, 64), 'intermediate_hidden_states': (1, 2, 3, 1, 64),
     'intermediate_pred_boxes': (1, 2, 3, 1, 4), 'intermediate_reference_points': (1, 2, 3, 1, 2),
     'mask_features': (1, 3, 32, 24, 36), 'frame_sizes': (1, 2), 'encoder_last_hidden_state': (1, 3, 291, 64)}
    >>> outputs.frame_sizes.tolist(), len(model(**inputs, output_hidden_states=True).backbone_hidden_states)
    ([[96, 144]], 4)

    ```
    """

    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    intermediate_pred_boxes: torch.FloatTensor | None = None
    intermediate_reference_points: torch.FloatTensor | None = None
    mask_features: torch.FloatTensor | None = None
    frame_sizes: torch.LongTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ReferFormerSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Weighted sum of the class, box, GIoU, mask-focal and DICE losses of every decoder layer.
    loss_dict (`dict`, *optional*, returned when `labels` are given):
        The unweighted loss terms under the original's names (`loss_ce`, `loss_bbox`, `loss_giou`, `loss_mask`,
        `loss_dice`, suffixed `_0`, `_1`, ... for the auxiliary layers).
    matched_query_indices (`torch.LongTensor` of shape `(decoder_layers, batch_size)`, *optional*):
        Query matched to the referred object of each clip, per decoder layer (final layer last).
    logits (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, num_classes)`):
        Class logits of the last decoder layer (sigmoid gives the probability that a query is the referred object).
    pred_boxes (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, 4)`):
        Boxes of the last decoder layer: normalized (cx, cy, w, h) relative to the unpadded frame.
    pred_masks (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, height / 4, width / 4)`):
        Mask logits of the last decoder layer at stride 4 of the padded input.
    selected_query_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        With `output_all_queries=False`: the query whose masks `pred_masks` holds (the referred object).
    reference_points (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, 2)`):
        Reference point (x, y) fed to the last decoder layer.
    auxiliary_outputs (`list[dict]`, *optional*):
        `logits`, `pred_boxes` and `pred_masks` of every earlier decoder layer (when `config.auxiliary_loss`).
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_frames, num_queries, hidden_size)`):
        Output of the last decoder layer.
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_frames, sequence_length, hidden_size)`):
        Output of the deformable encoder.
    encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        See [`ReferFormerModelOutput`].
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        See [`ReferFormerModelOutput`], as the other hidden states and attentions below.
    backbone_hidden_states, text_encoder_hidden_states, encoder_attentions, decoder_attentions, cross_attentions,
    text_encoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
        See [`ReferFormerModelOutput`].

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor
    >>> processor = ReferFormerProcessor.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> inputs = processor(videos=np.full((3, 96, 144, 3), 128, np.uint8), text=["the yellow square", "the red circle"])
    >>> outputs = model(**inputs)  # one video, two sentences: a batch of 2
    >>> {name: tuple(value.shape) for name, value in outputs.items() if name != "auxiliary_outputs"}
    {'logits': (2, 3, 1, 1), 'pred_boxes': (2, 3, 1, 4), 'pred_masks': (2, 3, 1, 24, 36),
     'reference_points': (2, 3, 1, 2), 'last_hidden_state': (2, 3, 1, 64), 'encoder_last_hidden_state': (2, 3, 291, 64)}
    >>> [sorted(layer) for layer in outputs.auxiliary_outputs]  # the earlier decoder layer (of 2)
    [['logits', 'pred_boxes', 'pred_masks']]
    >>> model(**inputs, output_all_queries=False).selected_query_indices  # the referred query's masks only
    tensor([0, 0])

    ```
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    matched_query_indices: torch.LongTensor | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    selected_query_indices: torch.LongTensor | None = None
    reference_points: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Inverse of the sigmoid, clamped like the original (`x` clamped to [0, 1], both terms to at least `eps`)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_position_embedding_2d(padding_mask: torch.Tensor, num_pos_feats: int, temperature: int = 10000) -> torch.Tensor:
    """Normalized 2-D sine position encoding of DETR (with its -0.5 offset): `[N, H, W]` mask -> `[N, 2*feats, H, W]`.

    `padding_mask` is True on padding. Channels are the y-block then the x-block, each interleaving sin and cos.
    """
    not_mask = ~padding_mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=padding_mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_position_embedding_1d(padding_mask: torch.Tensor, num_pos_feats: int, temperature: int = 10000) -> torch.Tensor:
    """Normalized 1-D sine position encoding of the words (no offset): `[B, L]` mask -> `[B, L, feats]`."""
    x_embed = (~padding_mask).cumsum(1, dtype=torch.float32)
    x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=padding_mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, None] / dim_t
    return torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)


def resize_padding_mask(padding_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a `[N, H, W]` boolean mask, as the original does for every feature level."""
    return F.interpolate(padding_mask[None].float(), size=size).to(torch.bool)[0]


def frames_to_clip_tokens(features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`[B*T, C, h, w]` -> `[B, T*h*w, C]`: the tokens of a whole clip, frame-major."""
    batch_frames, channels, height, width = features.shape
    features = features.view(batch_frames // num_frames, num_frames, channels, height, width)
    return features.permute(0, 1, 3, 4, 2).reshape(batch_frames // num_frames, num_frames * height * width, channels)


def clip_tokens_to_frames(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """Inverse of [`frames_to_clip_tokens`]."""
    batch_size, _, channels = tokens.shape
    tokens = tokens.view(batch_size, num_frames, height, width, channels)
    return tokens.permute(0, 1, 4, 2, 3).reshape(batch_size * num_frames, channels, height, width)


def autocast_disabled(tensor: torch.Tensor):
    """Disables autocast on `tensor`'s device: under mixed precision the heads (scores, box refinement, mask logits)
    run on inputs cast to the dtype of the decoder's reference points. Computed with autocast disabled from the float
    query embeddings, these carry the model's float dtype (float32 under autocast); a head's weights would not do,
    since a `Linear` quantized by `torch.ao.quantization.quantize_dynamic` has no weight tensor."""
    return torch.autocast(tensor.device.type, enabled=False)


# The frozen batch norms `timm.layers.freeze_batch_norm_2d` creates (statistics and affine transform in buffers).
FROZEN_BATCH_NORMS = (FrozenBatchNorm2d, timm.layers.FrozenBatchNormAct2d)


class ReferFormerTimmBackbone(nn.Module):
    """A timm feature extractor (ResNet by default) with frozen batch norms, as the original's ResNet backbone."""

    def __init__(self, config: ReferFormerTimmBackboneConfig):
        super().__init__()
        body = timm.create_model(
            config.model_name,
            pretrained=False,
            features_only=True,
            out_indices=config.out_indices,
            **config.model_kwargs,
        )
        self.body = timm.layers.freeze_batch_norm_2d(body) if config.freeze_batch_norm else body
        if config.freeze_batch_norm:
            # Frozen norms start as the identity, whatever the batch norms they replace held (transformers' no-init
            # contexts leave those uninitialized); `_init_weights` restores the same values on the meta device.
            with torch.no_grad():
                for module in self.body.modules():
                    if isinstance(module, FROZEN_BATCH_NORMS):
                        module.weight.fill_(1.0)
                        module.bias.zero_()
        self.channels = self.body.feature_info.channels()
        if config.freeze_stem_and_first_stage:
            # Everything that runs before the second output stage: stem and first stage (conv1 + layer1 of a ResNet).
            second_stage = self.body.feature_info.module_name()[1]
            for name, parameter in self.body.named_parameters():
                if name.startswith(second_stage + "."):
                    break
                parameter.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, num_frames: int, num_stages: int = 4) -> list[torch.Tensor]:
        """Frames `[N, 3, H, W]` -> the maps of the first `num_stages` output stages; the later stages are not
        computed when the feature extractor runs its modules in sequence (timm's `FeatureDictNet`/`FeatureListNet`,
        e.g. ResNets)."""
        if num_stages == len(self.channels) or not isinstance(self.body, timm.models.FeatureDictNet):
            return self.body(pixel_values)[:num_stages]
        features = []
        for name, module in self.body.items():
            pixel_values = module(pixel_values)
            if name in self.body.return_layers:
                features.append(pixel_values)
                if len(features) == num_stages:
                    return features


def build_backbone(config: ReferFormerConfig) -> nn.Module:
    """The backbone module selected by `config.backbone_config`; it exposes `channels` of its four output stages and
    `forward(pixel_values, num_frames, num_stages=4)`."""
    # Dispatch on `model_type`: with remote code the config classes may come from another copy of the config module.
    backbone_classes = {
        ReferFormerTimmBackboneConfig.model_type: ReferFormerTimmBackbone,
        ReferFormerSwinBackboneConfig.model_type: ReferFormerSwinBackbone,
        ReferFormerVideoSwinBackboneConfig.model_type: ReferFormerVideoSwinBackbone,
    }
    return backbone_classes[config.backbone_config.model_type](config.backbone_config)


class ReferFormerMLP(nn.Module):
    """Simple multi-layer perceptron with ReLU between the layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if index < len(self.layers) - 1:
                hidden_states = F.relu(hidden_states)
        return hidden_states


class ReferFormerDecoderLayerHeads(nn.Module):
    """The heads of the decoder layers (class or box heads): one per layer, or one shared by all layers.

    `heads(hidden_states, layer)` runs decoder layer `layer`'s head. The heads are registered as `0`, `1`, ... like
    the items of an `nn.ModuleList` (checkpoint keys `class_embed.1.weight`), and can be indexed and iterated like
    them; unlike a `ModuleList` this is a module with a forward, so that PEFT's `modules_to_save=["class_embed"]` can
    wrap it (PEFT refuses containers: its wrapper is called, never indexed).
    """

    def __init__(self, heads):
        super().__init__()
        for index, head in enumerate(heads):
            self.add_module(str(index), head)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> nn.Module:
        return list(self._modules.values())[index]

    def forward(self, hidden_states: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s head (the shared head when there is one) on `hidden_states` `[..., d_model]`."""
        return self[layer if len(self) > 1 else 0](hidden_states)


class ReferFormerTextProjection(nn.Module):
    """Projects text-encoder features to the model width (the original's `FeatureResizer`)."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.fc(features)))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention on `[batch, heads, length, head_dim]` tensors (additive `attention_mask`)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


class ReferFormerAttention(nn.Module):
    """Multi-head attention (batch first) with a key padding mask, dispatched through the attention interface."""

    is_causal = False

    def __init__(self, config: ReferFormerConfig, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`query` `[B, Lq, C]`, `key`/`value` `[B, Lk, C]`, `key_padding_mask` `[B, Lk]` (True = ignore).

        A `query` of batch 1 is shared by every batch entry of `key` and `value`. Returns the output `[B, Lq, C]` and
        the attention weights `[B, heads, Lq, Lk]` (`None` unless the attention implementation is "eager").
        """
        return self.attend(query, *self.project_keys_values(key, value), key_padding_mask=key_padding_mask)

    def project_keys_values(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value states `[B, heads, Lk, head_dim]`, to attend to them from several query chunks."""
        batch_size = key.shape[0]
        key_states = self.k_proj(key).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(value).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        return key_states, value_states

    def attend(
        self,
        query: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of `query` `[B or 1, Lq, C]` to projected states (see `project_keys_values`): output and weights
        as `forward`."""
        query_length, hidden_size = query.shape[1:]
        batch_size = key_states.shape[0]
        query_states = self.q_proj(query).view(-1, query_length, self.num_heads, self.head_dim).transpose(1, 2)
        query_states = query_states.expand(batch_size, -1, -1, -1)
        attention_mask = None
        if key_padding_mask is not None:
            attention_mask = torch.zeros(key_padding_mask.shape, dtype=query_states.dtype, device=query.device)
            attention_mask = attention_mask.masked_fill(key_padding_mask, torch.finfo(query_states.dtype).min)
            attention_mask = attention_mask[:, None, None, :]
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(attn_output.reshape(batch_size, query_length, hidden_size)), attn_weights


class ReferFormerMultiscaleDeformableAttention(nn.Module):
    """Deformable attention over the multi-scale feature maps (the original's `MSDeformAttn`)."""

    def __init__(self, config: ReferFormerConfig, num_heads: int, n_points: int):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(use_custom_kernel=not config.disable_custom_kernels)
        self.d_model = config.d_model
        self.n_levels = config.num_feature_levels
        self.n_heads = num_heads
        self.n_points = n_points
        self.im2col_step = 64
        self.sampling_offsets = nn.Linear(config.d_model, num_heads * self.n_levels * n_points * 2)
        self.attention_weights = nn.Linear(config.d_model, num_heads * self.n_levels * n_points)
        self.value_proj = nn.Linear(config.d_model, config.d_model)
        self.output_proj = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        reference_points: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_states` `[N, Lq, C]` (queries, position included), `reference_points` `[N, Lq, levels, 2 or 4]`,
        `encoder_hidden_states` `[N, S, C]` (values), `padding_mask` `[N, S]` (True = padding).

        Returns the output `[N, Lq, C]` and the attention weights `[N, Lq, heads, levels, points]`."""
        batch_size, num_queries, _ = hidden_states.shape
        value = self.value_proj(encoder_hidden_states)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch_size, -1, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        attention_weights = self.attention_weights(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        attention_weights = F.softmax(attention_weights, -1).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            sampling_locations = (
                reference_points[:, :, None, :, None, :]
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
            )
        else:
            sampling_locations = (
                reference_points[:, :, None, :, None, :2]
                + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = self.attn(
            value,
            spatial_shapes,
            spatial_shapes_list,
            level_start_index,
            sampling_locations,
            attention_weights,
            self.im2col_step,
        )
        return self.output_proj(output), attention_weights


def feed_forward(
    hidden_states: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, activation, dropout: float, training: bool, chunk_size: int
) -> torch.Tensor:
    """The post-norm layers' feed-forward block `dropout(fc2(dropout(activation(fc1(x)))))` (without the residual).

    With `chunk_size` > 0 (`config.chunk_size_feed_forward`), the tokens go through in chunks of `chunk_size` rows, so
    that the wide hidden layer never exists for all tokens at once (the FPN's stride-4 stage has 14,400 tokens per
    360x640 frame): faster on CPU and much smaller at inference, with every row computed by the same two products.
    Compiled graphs (`torch.compile`, `torch.export`) run one product: the compiler plans their memory.
    """
    rows = hidden_states.reshape(-1, hidden_states.shape[-1])
    if chunk_size <= 0 or torch.compiler.is_compiling() or rows.shape[0] <= chunk_size:
        hidden = F.dropout(activation(fc1(hidden_states)), p=dropout, training=training)
        return F.dropout(fc2(hidden), p=dropout, training=training)
    output = None
    for start in range(0, rows.shape[0], chunk_size):
        block = F.dropout(activation(fc1(rows[start : start + chunk_size])), p=dropout, training=training)
        block = F.dropout(fc2(block), p=dropout, training=training)
        if output is None:  # the dtype of the products (bf16 under autocast)
            output = block.new_empty(rows.shape[0], block.shape[-1])
        output[start : start + chunk_size] = block
    return output.view(*hidden_states.shape[:-1], -1)


class ReferFormerEncoderLayer(GradientCheckpointingLayer):
    """Deformable self-attention over all levels of one frame, then a feed-forward block (post-norm)."""

    def __init__(self, config: ReferFormerConfig):
        super().__init__()
        self.self_attn = ReferFormerMultiscaleDeformableAttention(
            config, config.encoder_attention_heads, config.encoder_n_points
        )
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.activation_fn = ACT2FN[config.activation_function]
        self.dropout = config.dropout
        self.chunk_size_feed_forward = config.chunk_size_feed_forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            hidden_states + position_embeddings,
            reference_points,
            hidden_states,
            spatial_shapes,
            spatial_shapes_list,
            level_start_index,
            padding_mask,
        )
        hidden_states = self.self_attn_layer_norm(
            hidden_states + F.dropout(attn_output, p=self.dropout, training=self.training)
        )
        ffn_output = feed_forward(
            hidden_states, self.fc1, self.fc2, self.activation_fn, self.dropout, self.training, self.chunk_size_feed_forward
        )
        return self.final_layer_norm(hidden_states + ffn_output)


class ReferFormerDecoderLayer(GradientCheckpointingLayer):
    """Query self-attention, deformable cross-attention to the encoder output, feed-forward block (post-norm)."""

    def __init__(self, config: ReferFormerConfig):
        super().__init__()
        self.self_attn = ReferFormerAttention(config, config.d_model, config.decoder_attention_heads, config.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = ReferFormerMultiscaleDeformableAttention(
            config, config.decoder_attention_heads, config.decoder_n_points
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.activation_fn = ACT2FN[config.activation_function]
        self.dropout = config.dropout
        self.chunk_size_feed_forward = config.chunk_size_feed_forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position_embeddings: torch.Tensor,
        reference_points: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        encoder_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        queries = hidden_states + query_position_embeddings
        attn_output, _ = self.self_attn(queries, queries, hidden_states)
        hidden_states = self.self_attn_layer_norm(
            hidden_states + F.dropout(attn_output, p=self.dropout, training=self.training)
        )
        attn_output, _ = self.encoder_attn(
            hidden_states + query_position_embeddings,
            reference_points,
            encoder_hidden_states,
            spatial_shapes,
            spatial_shapes_list,
            level_start_index,
            encoder_padding_mask,
        )
        hidden_states = self.encoder_attn_layer_norm(
            hidden_states + F.dropout(attn_output, p=self.dropout, training=self.training)
        )
        ffn_output = feed_forward(
            hidden_states, self.fc1, self.fc2, self.activation_fn, self.dropout, self.training, self.chunk_size_feed_forward
        )
        return self.final_layer_norm(hidden_states + ffn_output)


class ReferFormerPreTrainedModel(PreTrainedModel):
    """The base class of the ReferFormer models: config class, weight initialization and a `save_pretrained` that
    makes the saved folder carry its code (`auto_map` for both Auto classes, the pipeline in `custom_pipelines`).

    Example:

    ```python
    >>> import json, os, tempfile
    >>> from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerPreTrainedModel
    >>> model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> isinstance(model, ReferFormerPreTrainedModel), isinstance(model.model, ReferFormerPreTrainedModel)
    (True, True)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model.save_pretrained(folder)
    ...     config = json.load(open(os.path.join(folder, "config.json")))
    ...     print(sorted(config["auto_map"]), list(config["custom_pipelines"]))
    ['AutoConfig', 'AutoModel', 'AutoModelForZeroShotObjectDetection'] ['referring-video-object-segmentation']

    ```
    """

    config: ReferFormerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = [r"ReferFormerEncoderLayer", r"ReferFormerDecoderLayer", r"ReferFormerPixelDecoderBlock"]
    accepts_loss_kwargs = False
    # The pipeline whose code `save_pretrained` writes with the model (`referformer` sets the segmentation model's when
    # it registers its pipeline; None in remote code, loaded from a folder that already carries it).
    pipeline_class = None

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`, with config.json's `auto_map` naming every model class registered for an
        Auto class (`AutoModel`: the base model, the task Auto class: the segmentation model), not only the saved one,
        and, with a `pipeline_class`, that pipeline's code, named in `custom_pipelines`."""
        registered = (cls for cls in (ReferFormerModel, ReferFormerForReferringVideoObjectSegmentation) if cls._auto_class)
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            **{cls._auto_class: f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}" for cls in registered},
        }
        if self.pipeline_class is None or not self.should_save_on_this_rank(is_main_process):
            return super().save_pretrained(save_directory, is_main_process, **kwargs)
        self.pipeline_class.save_code(save_directory, self.config)
        try:
            return super().save_pretrained(save_directory, is_main_process, **kwargs)
        finally:  # only the saved config names the pipeline: `pipeline(task, model=self)` runs the package's
            del self.config.custom_pipelines

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus `dtype="int8"` (or `torch.int8`, as `pipeline(..., dtype="int8")`
        passes it): the float32 model with its per-pixel `Linear` layers quantized to dynamic int8 for CPU inference
        ([`referformer.quantization.quantize_int8`])."""
        from .quantization import is_int8_dtype, quantize_int8  # quantization imports this module

        if not is_int8_dtype(kwargs.get("dtype")):
            return super().from_pretrained(*args, **kwargs)
        loaded = super().from_pretrained(*args, **{**kwargs, "dtype": torch.float32})
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        quantize_int8(model.eval())
        return loaded

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # The special initializations live on container modules without parameters of their own (e.g. the deformable
        # attention), which the remote-code shortcut of transformers would skip. `_init_weights` writes only through
        # `transformers.initialization`, which never overwrites loaded tensors, so the shortcut is not needed.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """Generic init plus the original's special initializations."""
        super()._init_weights(module)
        init_swin_weights(module)
        if isinstance(module, FROZEN_BATCH_NORMS):
            # The frozen batch norms of timm backbones hold their statistics and affine transform in buffers: identity.
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, ReferFormerMultiscaleDeformableAttention):
            # Sampling offsets start on a grid of directions (one per head), at distance 1..n_points.
            init.zeros_(module.sampling_offsets.weight)
            thetas = torch.arange(module.n_heads, dtype=torch.float32) * (2.0 * math.pi / module.n_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(module.n_heads, 1, 1, 2)
            grid = grid.repeat(1, module.n_levels, module.n_points, 1)
            grid = grid * torch.arange(1, module.n_points + 1, dtype=grid.dtype)[None, None, :, None]
            init.copy_(module.sampling_offsets.bias, grid.flatten())
            init.zeros_(module.attention_weights.weight)
            init.zeros_(module.attention_weights.bias)
            for projection in (module.value_proj, module.output_proj):
                init.xavier_uniform_(projection.weight)
                init.zeros_(projection.bias)
        elif isinstance(module, ReferFormerAttention):
            for projection in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(projection.weight)
                init.zeros_(projection.bias)
        elif isinstance(module, (ReferFormerEncoderLayer, ReferFormerDecoderLayer, ReferFormerPixelDecoderBlock)):
            init.xavier_uniform_(module.fc1.weight)
            init.xavier_uniform_(module.fc2.weight)
        elif isinstance(module, ReferFormerConvNorm):
            init.kaiming_uniform_(module.conv.weight, a=1)
        elif isinstance(module, ReferFormerPixelDecoder):
            init.kaiming_uniform_(module.mask_features.weight, a=1)
            init.zeros_(module.mask_features.bias)
        elif isinstance(module, ReferFormerDecoder):
            for box_head in module.bbox_embed:
                init.zeros_(box_head.layers[-1].weight)
                init.zeros_(box_head.layers[-1].bias)
            # The first box head starts with small boxes (sigmoid(-2) of the width and height).
            init.copy_(module.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
        elif isinstance(module, ReferFormerModel):
            init.normal_(module.level_embed)
            init.normal_(module.query_position_embeddings.weight)
            init.xavier_uniform_(module.reference_points.weight)
            init.zeros_(module.reference_points.bias)
            for projection in module.input_projection:
                init.xavier_uniform_(projection[0].weight)
                init.zeros_(projection[0].bias)
        elif isinstance(module, ReferFormerForReferringVideoObjectSegmentation):
            prior_bias = -math.log((1 - 0.01) / 0.01)
            for class_head in module.class_embed:
                init.constant_(class_head.bias, prior_bias)
            for layer in module.controller.layers:
                init.xavier_uniform_(layer.weight)
                init.zeros_(layer.bias)


class ReferFormerEncoder(ReferFormerPreTrainedModel):
    """Stack of deformable encoder layers; every frame is encoded independently."""

    _can_record_outputs = {
        "hidden_states": ReferFormerEncoderLayer,
        "attentions": OutputRecorder(ReferFormerMultiscaleDeformableAttention, layer_name="self_attn", index=1),
    }

    def __init__(self, config: ReferFormerConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(ReferFormerEncoderLayer(config) for _ in range(config.encoder_layers))
        self.post_init()

    @staticmethod
    def get_reference_points(spatial_shapes_list, valid_ratios, device) -> torch.Tensor:
        """Centre of every cell of every level, in [0, 1] of the valid area, replicated per level: `[N, S, L, 2]`."""
        reference_points = []
        for level, (height, width) in enumerate(spatial_shapes_list):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=valid_ratios.dtype, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=valid_ratios.dtype, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            reference_points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(reference_points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        padding_mask: torch.Tensor,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """Flattened levels `[N, S, C]` of N frames -> encoded `last_hidden_state`; `hidden_states` (input and output of
        every layer) and `attentions` (deformable attention weights `[N, S, heads, levels, points]` of every layer)
        with `output_hidden_states` / `output_attentions`."""
        reference_points = self.get_reference_points(spatial_shapes_list, valid_ratios, hidden_states.device)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings,
                reference_points,
                spatial_shapes,
                spatial_shapes_list,
                level_start_index,
                padding_mask,
            )
        return BaseModelOutput(last_hidden_state=hidden_states)


@dataclass
class ReferFormerDecoderOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size * num_frames, num_queries, hidden_size)`):
        Output of the last decoder layer.
    intermediate_hidden_states (`torch.FloatTensor` of shape `(decoder_layers, batch_size * num_frames, num_queries, hidden_size)`):
        Output of every decoder layer.
    intermediate_pred_boxes (`torch.FloatTensor` of shape `(decoder_layers, batch_size * num_frames, num_queries, 4)`):
        Boxes predicted after every decoder layer.
    intermediate_reference_points (`torch.FloatTensor` of shape `(decoder_layers, batch_size * num_frames, num_queries, 2)`):
        Reference point fed to every decoder layer.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Input of the decoder and output of every decoder layer.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Query self-attention weights `(batch_size * num_frames, heads, num_queries, num_queries)` of every layer.
    cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Deformable cross-attention weights `(batch_size * num_frames, num_queries, heads, levels, points)` of every
        layer.
    """

    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    intermediate_pred_boxes: torch.FloatTensor | None = None
    intermediate_reference_points: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class ReferFormerDecoder(ReferFormerPreTrainedModel):
    """Stack of deformable decoder layers with the box head (and, with box refinement, the reference update)."""

    _can_record_outputs = {
        "hidden_states": ReferFormerDecoderLayer,
        "attentions": OutputRecorder(ReferFormerAttention, layer_name="self_attn", index=1),
        "cross_attentions": OutputRecorder(ReferFormerMultiscaleDeformableAttention, layer_name="encoder_attn", index=1),
    }

    def __init__(self, config: ReferFormerConfig):
        super().__init__(config)
        self.with_box_refine = config.with_box_refine
        self.layers = nn.ModuleList(ReferFormerDecoderLayer(config) for _ in range(config.decoder_layers))
        # One box head per layer with box refinement, a single shared head otherwise.
        num_box_heads = config.decoder_layers if config.with_box_refine else 1
        self.bbox_embed = ReferFormerDecoderLayerHeads(
            ReferFormerMLP(config.d_model, config.d_model, 4, 3) for _ in range(num_box_heads)
        )
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position_embeddings: torch.Tensor,
        reference_points: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        encoder_padding_mask: torch.Tensor,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ReferFormerDecoderOutput:
        """Queries `[N, Q, C]` of N frames -> per-layer hidden states, boxes and input references (see
        [`ReferFormerDecoderOutput`])."""
        intermediate, intermediate_boxes, intermediate_references = [], [], []
        for index, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_points_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                reference_points_input = reference_points[:, :, None] * valid_ratios[:, None]
            intermediate_references.append(reference_points[..., :2])
            hidden_states = layer(
                hidden_states,
                query_position_embeddings,
                reference_points_input,
                encoder_hidden_states,
                spatial_shapes,
                spatial_shapes_list,
                level_start_index,
                encoder_padding_mask,
            )
            # Box prediction relative to the layer's input reference (all 4 coordinates for a box reference, the
            # centre for a point reference); with box refinement it becomes the next layer's reference.
            # Under mixed precision the refinement stays in the references' precision (float32).
            with autocast_disabled(hidden_states):
                box_delta = self.bbox_embed(hidden_states.to(reference_points.dtype), index)
                if reference_points.shape[-1] == 4:
                    boxes = (box_delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    boxes = torch.cat([box_delta[..., :2] + inverse_sigmoid(reference_points), box_delta[..., 2:]], -1)
                    boxes = boxes.sigmoid()
            if self.with_box_refine:
                reference_points = boxes.detach()
            intermediate.append(hidden_states)
            intermediate_boxes.append(boxes)
        return ReferFormerDecoderOutput(
            last_hidden_state=hidden_states,
            intermediate_hidden_states=torch.stack(intermediate),
            intermediate_pred_boxes=torch.stack(intermediate_boxes),
            intermediate_reference_points=torch.stack(intermediate_references),
        )


class ReferFormerVisionLanguageFusion(nn.Module):
    """Early fusion: visual tokens are multiplied by their cross-attention to the words (no residual, no norm)."""

    def __init__(self, config: ReferFormerConfig):
        super().__init__()
        self.attention = ReferFormerAttention(config, config.d_model, config.fusion_attention_heads, dropout=0.0)

    def forward(self, maps: torch.Tensor, num_frames: int, text: TextFeatures) -> torch.Tensor:
        """Maps `[B_video * t, C, h, w]` of `num_frames` frames of each clip -> fused maps `[B * t, C, h, w]` (a single
        video is shared by the B sentences)."""
        vision_tokens = frames_to_clip_tokens(maps, num_frames)
        attended, _ = self.attention(
            vision_tokens,
            text.word_features + text.position_embeddings,
            text.word_features,
            key_padding_mask=text.padding_mask,
        )
        return clip_tokens_to_frames(vision_tokens * attended, num_frames, *maps.shape[-2:])


class ReferFormerConvNorm(nn.Module):
    """Convolution without bias followed by GroupNorm(8) and an optional ReLU (the FPN's adapters and layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(8, out_channels)
        self.activation = activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.conv(features))
        return F.relu(features, inplace=True) if self.activation else features


class ReferFormerPixelDecoderBlock(GradientCheckpointingLayer):
    """Vision-language block of the cross-modal FPN (the original's `VisionLanguageBlock`, post-norm).

    Spatio-temporal self-attention over all frames of a clip, on maps nearest-downsampled by `sr_ratio` (output
    upsampled back bilinearly), then cross-attention to the words, then a feed-forward block. The keys and values of
    the whole clip come from `frame_key_value_tokens` (computed frame chunk by frame chunk), so that the block itself
    can run on any chunk of the clip's frames.
    """

    def __init__(self, config: ReferFormerConfig, sr_ratio: int):
        super().__init__()
        hidden_size, heads, dropout = config.d_model, config.pixel_decoder_attention_heads, config.pixel_decoder_dropout
        self.sr_ratio = sr_ratio
        self.dropout = dropout
        self.self_attn = ReferFormerAttention(config, hidden_size, heads, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = ReferFormerAttention(config, hidden_size, heads, dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, config.pixel_decoder_ffn_dim)
        self.fc2 = nn.Linear(config.pixel_decoder_ffn_dim, hidden_size)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        # In place: during training the stride-4 stage's hidden activations are the largest tensor of the FPN.
        self.activation_fn = nn.ReLU(inplace=True)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward

    def _reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """Nearest down-sampling of `[N, C, h, w]` maps by `sr_ratio` (sizes rounded down, as the original)."""
        if self.sr_ratio == 1:
            return maps
        height, width = maps.shape[-2:]
        return F.interpolate(maps, size=(int(height / self.sr_ratio), int(width / self.sr_ratio)), mode="nearest")

    def frame_key_value_tokens(
        self, vision_features: torch.Tensor, vision_position_embeddings: torch.Tensor, vision_padding_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention key inputs (features plus positions) and values of each frame, reduced: `[N, h'*w', C]`,
        with their padding mask `[N, h'*w']`."""
        keys = self._reduce(vision_features + vision_position_embeddings)
        values = self._reduce(vision_features)
        if self.sr_ratio > 1:
            vision_padding_mask = resize_padding_mask(vision_padding_mask, keys.shape[-2:])
        return keys.flatten(2).transpose(1, 2), values.flatten(2).transpose(1, 2), vision_padding_mask.flatten(1)

    def forward(
        self,
        vision_features: torch.Tensor,
        vision_position_embeddings: torch.Tensor,
        num_frames: int,
        clip_key_states: torch.Tensor,
        clip_value_states: torch.Tensor,
        clip_key_padding_mask: torch.Tensor,
        text_features: torch.Tensor,
        text_position_embeddings: torch.Tensor,
        text_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Vision inputs are the maps `[B*t, C, h, w]` of `num_frames` consecutive frames of each clip (a single video
        `B = 1` may serve every sentence of the text batch); the clip states come from
        `ReferFormerAttention.project_keys_values` on the tokens of all frames. Returns `[B_text*t, C, h, w]`."""
        height, width = vision_features.shape[-2:]
        queries = self._reduce(vision_features + vision_position_embeddings)
        attn_output, _ = self.self_attn.attend(
            frames_to_clip_tokens(queries, num_frames), clip_key_states, clip_value_states, clip_key_padding_mask
        )
        if self.sr_ratio > 1:
            attn_output = clip_tokens_to_frames(attn_output, num_frames, *queries.shape[-2:])
            attn_output = F.interpolate(attn_output, size=(height, width), mode="bilinear", align_corners=False)
            attn_output = frames_to_clip_tokens(attn_output, num_frames)
        hidden_states = frames_to_clip_tokens(vision_features, num_frames)
        hidden_states = self.self_attn_layer_norm(
            hidden_states + F.dropout(attn_output, p=self.dropout, training=self.training)
        )
        attn_output, _ = self.cross_attn(
            hidden_states + frames_to_clip_tokens(vision_position_embeddings, num_frames),
            text_features + text_position_embeddings,
            text_features,
            key_padding_mask=text_padding_mask,
        )
        hidden_states = self.cross_attn_layer_norm(
            hidden_states + F.dropout(attn_output, p=self.dropout, training=self.training)
        )
        ffn_output = feed_forward(
            hidden_states, self.fc1, self.fc2, self.activation_fn, self.dropout, self.training, self.chunk_size_feed_forward
        )
        hidden_states = self.final_layer_norm(hidden_states + ffn_output)
        return clip_tokens_to_frames(hidden_states, num_frames, height, width)


@dataclass
class DeformableLevels:
    """The four feature levels of a frame chunk as the deformable transformer reads them, N frames (one per sentence
    and frame): `sources` `[N, S, C]` (levels flattened and concatenated, fused with the words), `position_embeddings`
    `[N, S, C]` (sine plus level embedding), `padding_mask` `[N, S]`, `spatial_shapes` `[levels, 2]` (and as
    `spatial_shapes_list`), `level_start_index` `[levels]`, `valid_ratios` `[N, levels, 2]`; and per level, of the
    video batch, the padding masks `[B_video * t, h, w]` and sine positions `[B_video * t, C, h, w]` (the FPN's too).
    """

    sources: torch.Tensor
    position_embeddings: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    spatial_shapes_list: list[tuple[int, int]]
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    level_padding_masks: list[torch.Tensor]
    level_position_embeddings: list[torch.Tensor]

    @classmethod
    def flattened(
        cls,
        sources: list[torch.Tensor],
        level_masks: list[torch.Tensor],
        level_positions: list[torch.Tensor],
        level_embed: torch.Tensor,
        batch_size: int,
        num_frames: int,
    ) -> "DeformableLevels":
        """The levels from their maps: fused `sources` `[B * t, C, h, w]`, the video batch's `level_masks`
        `[B_video * t, h, w]` and sine `level_positions` `[B_video * t, C, h, w]`, plus the `level_embed` `[levels, C]`."""
        spatial_shapes_list = [tuple(source.shape[-2:]) for source in sources]
        spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=sources[0].device)
        valid_ratios = torch.stack([valid_ratio(mask) for mask in level_masks], 1).to(sources[0].dtype)
        flat_positions = torch.cat(
            [
                position.flatten(2).transpose(1, 2) + level_embed[level].view(1, 1, -1)
                for level, position in enumerate(level_positions)
            ],
            1,
        )
        flat_masks = torch.cat([mask.flatten(1) for mask in level_masks], 1)
        return cls(
            sources=torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1),
            position_embeddings=per_sentence(flat_positions, batch_size, num_frames),
            padding_mask=per_sentence(flat_masks, batch_size, num_frames),
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])),
            valid_ratios=per_sentence(valid_ratios, batch_size, num_frames),
            level_padding_masks=level_masks,
            level_position_embeddings=level_positions,
        )


def valid_ratio(padding_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of valid columns and rows of each frame: `[N, 2]` as (width, height)."""
    _, height, width = padding_mask.shape
    valid_height = torch.sum(~padding_mask[:, :, 0], 1)
    valid_width = torch.sum(~padding_mask[:, 0, :], 1)
    return torch.stack([valid_width.float() / width, valid_height.float() / height], -1)


def per_sentence(tensor: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
    """Per-frame values `[B_video * t, ...]` of a video shared by `batch_size` sentences -> `[batch_size * t, ...]`."""
    if tensor.shape[0] == batch_size * num_frames:
        return tensor
    return tensor.repeat(batch_size, *[1] * (tensor.dim() - 1))


def memory_maps(memory: torch.Tensor, spatial_shapes_list, hidden_size: int) -> list[torch.Tensor]:
    """The encoder output `[N, S, C]` of strides 8/16/32 as maps `[N, C, h, w]`."""
    maps, start = [], 0
    for level_height, level_width in spatial_shapes_list[:3]:
        level_memory = memory[:, start : start + level_height * level_width]
        maps.append(level_memory.transpose(1, 2).reshape(-1, hidden_size, level_height, level_width))
        start += level_height * level_width
    return maps


class ReferFormerPixelDecoder(nn.Module):
    """Cross-modal FPN: top-down from the stride-32 encoder map to the stride-4 backbone map, each level fused with
    the words by a [`ReferFormerPixelDecoderBlock`]; its final convolution `mask_features` makes the stride-4 mask
    features.

    Stage `i` works at stride `4 * 2**i`: stage 0 reads the stride-4 backbone features, stages 1-3 the encoder output.
    The blocks' self-attention spans all frames of a clip: `key_values` prepares its keys and values frame chunk by
    frame chunk, then `forward` runs on any chunk of frames.
    """

    def __init__(self, config: ReferFormerConfig, finest_backbone_channels: int):
        super().__init__()
        hidden_size = self.hidden_size = config.d_model
        input_channels = [finest_backbone_channels, hidden_size, hidden_size, hidden_size]
        self.adapters = nn.ModuleList(
            ReferFormerConvNorm(channels, hidden_size, kernel_size=1, activation=False) for channels in input_channels
        )
        self.layers = nn.ModuleList(
            ReferFormerConvNorm(hidden_size, hidden_size, kernel_size=3, activation=True) for _ in input_channels
        )
        self.blocks = nn.ModuleList(ReferFormerPixelDecoderBlock(config, ratio) for ratio in config.pixel_decoder_sr_ratios)
        self.mask_features = nn.Conv2d(hidden_size, config.mask_dim, kernel_size=3, padding=1)

    def key_values(
        self,
        stride4_features: torch.Tensor,
        padding_mask: torch.Tensor,
        memory: torch.Tensor,
        levels: DeformableLevels,
        num_frames: int,
    ) -> list[PixelDecoderKeyValues]:
        """Per stage, the projected self-attention keys and values of `num_frames` frames of each clip: stage 0 from
        the stride-4 backbone maps `[B_video * t, C, h, w]` (video batch, frames' `padding_mask` `[B_video * t, H,
        W]`), stages 1-3 from the encoder output `memory` `[B * t, S, C]` with the levels' padding masks and positions
        (see [`ReferFormerPixelDecoderBlock.frame_key_value_tokens`])."""
        batch_size = memory.shape[0] // num_frames
        finest_mask = resize_padding_mask(padding_mask, stride4_features.shape[-2:])
        stage_masks = [finest_mask] + [per_sentence(mask, batch_size, num_frames) for mask in levels.level_padding_masks[:3]]
        stage_positions = [sine_position_embedding_2d(finest_mask, self.hidden_size // 2).to(stride4_features.dtype)]
        stage_positions += [
            per_sentence(position, batch_size, num_frames) for position in levels.level_position_embeddings[:3]
        ]
        stage_maps = [stride4_features] + memory_maps(memory, levels.spatial_shapes_list, self.hidden_size)
        key_values = []
        for block, adapter, features, masks, positions in zip(
            self.blocks, self.adapters, stage_maps, stage_masks, stage_positions
        ):
            keys, values, masks = block.frame_key_value_tokens(adapter(features), positions, masks)
            clip_batch = keys.shape[0] // num_frames  # [B*t, n, C] -> [B, t*n, C], frame-major
            key_states, value_states = block.self_attn.project_keys_values(
                keys.reshape(clip_batch, -1, keys.shape[-1]), values.reshape(clip_batch, -1, values.shape[-1])
            )
            key_values.append(PixelDecoderKeyValues(key_states, value_states, masks.reshape(clip_batch, -1)))
        return key_values

    def forward(
        self,
        stride4_features: torch.Tensor,
        padding_mask: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        num_frames: int,
        clip_key_values: list[PixelDecoderKeyValues],
        text: TextFeatures,
    ) -> torch.Tensor:
        """The FPN on `num_frames` frames of each clip: the stride-4 backbone maps `[B_video * t, C, h, w]` (frames'
        `padding_mask` `[B_video * t, H, W]`) and the encoder output `memory` `[B * t, S, C]` (levels
        `spatial_shapes_list`) fused top-down, the self-attention over `clip_key_values` (every frame of the clips).
        Returns the stride-4 maps `[B * t, C, h, w]` before the final convolution `mask_features`."""
        batch_size = memory.shape[0] // num_frames
        stage_features = [stride4_features] + memory_maps(memory, spatial_shapes_list, self.hidden_size)
        stage_position_embeddings = [
            sine_position_embedding_2d(resize_padding_mask(padding_mask, maps.shape[-2:]), self.hidden_size // 2)
            .to(stride4_features.dtype)
            for maps in stage_features
        ]
        stage_position_embeddings[1:] = [
            per_sentence(position, batch_size, num_frames) for position in stage_position_embeddings[1:]
        ]
        output = None
        for stage in reversed(range(len(self.adapters))):
            key_values = clip_key_values[stage]
            # Positional tensors: a checkpointed layer (reentrant gradient checkpointing) sees only those as inputs.
            fused = self.blocks[stage](
                self.adapters[stage](stage_features[stage]),
                stage_position_embeddings[stage],
                num_frames,
                key_values.key_states,
                key_values.value_states,
                key_values.padding_mask,
                text.word_features,
                text.position_embeddings,
                text.padding_mask,
            )
            if output is not None:
                fused = fused + F.interpolate(output, size=fused.shape[-2:], mode="nearest")
            output = self.layers[stage](fused)
        return output


def check_model_inputs(model, pixel_values, input_ids, pixel_mask, attention_mask, valid_frame_indices, track) -> None:
    """Named errors for inputs whose shapes or values do not fit together, before anything is computed."""
    if pixel_values.dim() != 5:
        raise ValueError(f"pixel_values must be [batch, frames, 3, height, width], got shape {tuple(pixel_values.shape)}.")
    batch_size, num_frames, _, height, width = pixel_values.shape
    if model.config.online and num_frames != 1:
        raise ValueError(
            "An online (OnlineRefer) model decodes one frame at a time from the track of the previous frame: pass "
            f"pixel_values of one frame, [batch, 1, 3, height, width], got {num_frames} frames."
        )
    if track is not None and not model.config.online:
        raise ValueError("track is the state of an online (OnlineRefer) model; this model has config.online=False.")
    if track is not None and track.track_embedding.shape[0] != input_ids.shape[0]:
        raise ValueError(f"The track follows {track.track_embedding.shape[0]} sentences, input_ids has {input_ids.shape[0]}.")
    if input_ids.dim() != 2 or (input_ids.shape[0] != batch_size and batch_size != 1):
        raise ValueError(
            f"input_ids must be [batch, length] with one expression per clip ({batch_size}), or any number of "
            f"expressions for a single video, got {tuple(input_ids.shape)}."
        )
    if valid_frame_indices is not None and input_ids.shape[0] != batch_size:
        raise ValueError("valid_frame_indices needs one clip per expression (pixel_values of the input_ids batch).")
    if min(height, width) < 32:
        raise ValueError(f"Frames must be at least 32x32 pixels, got {height}x{width}.")
    if pixel_mask is not None and tuple(pixel_mask.shape) != (batch_size, num_frames, height, width):
        raise ValueError(
            f"pixel_mask must be [batch, frames, height, width] = {(batch_size, num_frames, height, width)} like "
            f"pixel_values, got {tuple(pixel_mask.shape)}."
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}."
        )
    if not torch.compiler.is_compiling():  # value checks (a compiled graph cannot branch on values)
        if pixel_mask is not None and ((pixel_mask != 0) & (pixel_mask != 1)).any():
            raise ValueError(f"pixel_mask must hold 0 (padding) and 1 (pixels) only, got {pixel_mask.unique()[:5].tolist()}.")
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values has NaN or infinite values.")
    positions = getattr(getattr(model.text_encoder, "embeddings", None), "position_embeddings", None)
    if isinstance(positions, nn.Embedding):  # RoBERTa-style position ids start after the padding index
        limit = positions.num_embeddings - (positions.padding_idx + 1 if positions.padding_idx is not None else 0)
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens, more than the text encoder's {limit} positions; "
                "truncate the expressions (the processor does)."
            )


class ReferFormerModel(ReferFormerPreTrainedModel):
    """ReferFormer without the class and mask heads: backbone, text encoder, fusion, deformable transformer (with the
    box head) and cross-modal FPN.

    Inputs:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, 3, height, width)`):
            ImageNet-normalized frames, zero-padded at the bottom/right to the largest clip of the batch.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, num_frames, height, width)`, *optional*):
            1 on real pixels, 0 on padding. The unpadded frame size of each clip is derived from it.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids of the referring expression of each clip. With a single video (`pixel_values` of batch 1),
            any number of expressions: the video's visual features are computed once and shared by all of them.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 on real tokens, 0 on padding.
        resized_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            Unpadded (height, width) of each clip, as the processor returns it; derived from `pixel_mask` if omitted.
        valid_frame_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            A2D/JHMDB evaluation: the annotated frame of each clip. Right after the backbone only that frame is kept,
            so every output has a single frame (with a Video Swin backbone the other frames still shape it).
        original_sizes, frame_indices (*optional*):
            Returned by the processor for post-processing; accepted so that `model(**inputs)` works, not used.
        mask_head ([`~referformer.frame_chunking.MaskHead`], *optional*):
            Takes the FPN's stride-4 maps chunk by chunk instead of the output's `mask_features` (the task model's
            dynamic mask head, which may fold the FPN's final convolution into its first layer).
        track ([`~referformer.frame_chunking.OnlineTrack`], *optional*):
            Online models (`config.online`, one frame a call): the track the frame is decoded from, one per sentence;
            None on the first frame (`empty_track`). The task model's `update_track` gives the next frame's.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import AutoModel
    >>> from referformer import ReferFormerProcessor
    >>> processor = ReferFormerProcessor.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> model = AutoModel.from_pretrained("checkpoints/referformer-tiny-shapes")  # the heads' weights are left unused
    >>> type(model).__name__
    'ReferFormerModel'
    >>> inputs = processor(videos=np.full((3, 96, 144, 3), 128, np.uint8), text=["the yellow square", "the red circle"])
    >>> outputs = model(pixel_values=inputs["pixel_values"][:1], input_ids=inputs["input_ids"])  # 1 video, 2 sentences
    >>> outputs.last_hidden_state.shape  # [sentences, frames, queries, d_model]
    torch.Size([2, 3, 1, 64])

    ```
    """

    def __init__(self, config: ReferFormerConfig):
        super().__init__(config)
        hidden_size = config.d_model
        self.backbone = build_backbone(config)
        if len(self.backbone.channels) != 4:
            raise ValueError(f"The backbone must return 4 feature stages, it returns {len(self.backbone.channels)}.")
        self.text_encoder = AutoModel.from_config(config.text_config)
        if config.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.text_projection = ReferFormerTextProjection(
            config.text_config.hidden_size, hidden_size, config.text_projection_dropout
        )
        last_channels = self.backbone.channels[-1]
        self.input_projection = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels, hidden_size, kernel_size=1), nn.GroupNorm(32, hidden_size))
                for channels in self.backbone.channels[1:]
            ]
            + [
                nn.Sequential(
                    nn.Conv2d(last_channels, hidden_size, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(32, hidden_size),
                )
            ]
        )
        self.vision_language_fusion = ReferFormerVisionLanguageFusion(config)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, hidden_size))
        self.query_position_embeddings = nn.Embedding(config.num_queries, hidden_size)
        self.reference_points = nn.Linear(hidden_size, 2)
        self.encoder = ReferFormerEncoder(config)
        self.decoder = ReferFormerDecoder(config)
        self.pixel_decoder = ReferFormerPixelDecoder(config, self.backbone.channels[0])
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The word embeddings of the text encoder."""
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_encoder.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        pixel_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        resized_sizes: torch.LongTensor | None = None,
        valid_frame_indices: torch.LongTensor | None = None,
        original_sizes: torch.LongTensor | None = None,
        frame_indices: torch.LongTensor | None = None,
        mask_head: MaskHead | None = None,
        track: OnlineTrack | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ReferFormerModelOutput | tuple:
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        check_model_inputs(self, pixel_values, input_ids, pixel_mask, attention_mask, valid_frame_indices, track)
        video_batch_size, num_frames, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = pixel_values.new_ones((video_batch_size, num_frames, height, width), dtype=torch.long)
        if resized_sizes is None:
            resized_sizes = torch.stack([pixel_mask[:, 0].any(-1).sum(-1), pixel_mask[:, 0].any(-2).sum(-1)], -1)
        padding_mask = ~pixel_mask.bool()
        batch_size = input_ids.shape[0]

        recorded = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        # Text: word and sentence features, once for every frame chunk.
        text = self.encode_text(input_ids, attention_mask, **recorded)
        # Backbones that mix frames (Video Swin) and the annotated-frame selection see the whole clip at once.
        clip_features = None
        if valid_frame_indices is not None or isinstance(self.backbone, ReferFormerVideoSwinBackbone):
            clip_features = self.backbone(pixel_values.flatten(0, 1), num_frames=num_frames)
            if valid_frame_indices is not None:
                keep = torch.arange(video_batch_size, device=pixel_values.device) * num_frames
                keep = keep + valid_frame_indices.to(pixel_values.device)
                clip_features = [feature[keep] for feature in clip_features]
                padding_mask = padding_mask.flatten(0, 1)[keep][:, None]
        clip = ClipEncoding(
            pixel_values=pixel_values,
            padding_mask=padding_mask,
            frame_sizes=torch.as_tensor(resized_sizes, device=pixel_values.device).view(-1, 2).expand(batch_size, 2),
            text=text,
            batch_size=batch_size,
            stride4_features_hold_bytes=self.config.stride4_features_hold_bytes,
            holds_stride4_features=True if clip_features is not None else None,
        )

        # Encoding pass, frame chunk by frame chunk: backbone, then fusion, deformable encoder and decoder.
        for frames in frame_chunks(clip.num_frames, self.config.frame_chunk_size):
            chunk_frames = frames.stop - frames.start
            if clip_features is None:
                stage_features = self.backbone(pixel_values[:, frames].flatten(0, 1), num_frames=chunk_frames)
            else:
                stage_features = [per_clip(feature, video_batch_size)[:, frames].flatten(0, 1) for feature in clip_features]
            chunk_padding_mask = clip.padding_mask[:, frames].flatten(0, 1)
            queries = self.decoder_queries(text, chunk_frames, track)
            clip.write(frames, self.encode_frames(stage_features, chunk_padding_mask, chunk_frames, text, queries, **recorded))
            del stage_features

        # Mask pass: the cross-modal FPN frame chunk by frame chunk, its self-attention over every frame of the clip.
        if mask_head is not None:
            mask_head.prepare(clip)
        key_values = clip.pixel_decoder_key_values()
        for frames in frame_chunks(clip.num_frames, self.config.frame_chunk_size):
            maps = self.pixel_decoder(
                stride4_features=clip.stride4_features_of(frames, self.backbone),
                padding_mask=clip.padding_mask[:, frames].flatten(0, 1),
                memory=clip.memory[:, frames].flatten(0, 1),
                spatial_shapes_list=clip.spatial_shapes_list,
                num_frames=frames.stop - frames.start,
                clip_key_values=key_values,
                text=text,
            )
            if mask_head is not None:
                mask_head(frames, per_clip(maps, batch_size))
            else:
                clip.write_mask_features(frames, per_clip(self.pixel_decoder.mask_features(maps), batch_size))
            del maps

        recorded_outputs = clip.recorded_over_clip()
        return ReferFormerModelOutput(
            last_hidden_state=clip.hidden_states[:, -1],
            intermediate_hidden_states=clip.hidden_states,
            intermediate_pred_boxes=clip.boxes,
            intermediate_reference_points=clip.references,
            mask_features=clip.mask_features,
            frame_sizes=clip.frame_sizes,
            encoder_last_hidden_state=clip.memory,
            encoder_hidden_states=recorded_outputs.encoder_hidden_states,
            decoder_hidden_states=recorded_outputs.decoder_hidden_states,
            backbone_hidden_states=recorded_outputs.backbone_hidden_states,
            text_encoder_hidden_states=text.hidden_states,
            encoder_attentions=recorded_outputs.encoder_attentions,
            decoder_attentions=recorded_outputs.decoder_attentions,
            cross_attentions=recorded_outputs.cross_attentions,
            text_encoder_attentions=text.attentions,
        )

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
    ) -> TextFeatures:
        """The expressions' word and sentence features, positions and padding mask (see [`TextFeatures`]), with the
        text encoder's hidden states and attentions when `kwargs` ask for them."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            text_outputs = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        word_features = self.text_projection(text_outputs.last_hidden_state)
        # The sentence feature is the pooler output (tanh dense on the first token); encoders without a pooler use
        # their first token's hidden state.
        pooled = getattr(text_outputs, "pooler_output", None)
        sentence_features = pooled if pooled is not None else text_outputs.last_hidden_state[:, 0]
        padding_mask = attention_mask.ne(1)
        return TextFeatures(
            word_features=word_features,
            sentence_features=self.text_projection(sentence_features),
            position_embeddings=sine_position_embedding_1d(padding_mask, self.config.d_model).to(word_features.dtype),
            padding_mask=padding_mask,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    def decoder_queries(self, text: TextFeatures, num_frames: int, track: OnlineTrack | None) -> DecoderQueries:
        """The decoder's inputs for `num_frames` frames of each sentence: an online model's `track` (the empty track
        when None), or ReferFormer's conditional queries (the sentence feature as content, learned positions and
        reference points shared by all frames)."""
        batch_size = text.sentence_features.shape[0]
        if self.config.online:
            return (track if track is not None else self.empty_track(batch_size)).decoder_queries()
        positions = self.query_position_embeddings.weight[None].expand(batch_size * num_frames, -1, -1)
        with autocast_disabled(positions):
            reference_points = self.reference_points(positions).sigmoid()
        target = text.sentence_features[:, None, None].expand(-1, num_frames, self.config.num_queries, -1)
        return DecoderQueries(target.flatten(0, 1), positions, reference_points)

    def empty_track(self, batch_size: int = 1) -> OnlineTrack:
        """An online model's track before the first frame, for `batch_size` sentences (the original's
        `generate_empty_tracks`): every query, with zero content, its learned position and reference point."""
        positions = self.query_position_embeddings.weight
        with autocast_disabled(positions):
            reference_points = self.reference_points(positions)  # before the sigmoid
        return OnlineTrack(
            reference_points=reference_points.expand(batch_size, -1, -1),
            track_embedding=positions.new_zeros(batch_size, *positions.shape),
            position_embedding=positions.expand(batch_size, -1, -1),
        )

    def encode_frames(
        self,
        stage_features: list[torch.Tensor],
        padding_mask: torch.Tensor,
        num_frames: int,
        text: TextFeatures,
        queries: DecoderQueries,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FrameChunkEncoding:
        """Fusion, deformable encoder, decoder with box refinement and the FPN's self-attention keys and values of
        `num_frames` consecutive frames of each clip: `stage_features` (four backbone maps) and `padding_mask`
        `[B_video * t, H, W]` of the video batch, `text` of the B sentences, the decoder's `queries` (B * t frames)."""
        levels = self.fused_levels(stage_features, padding_mask, num_frames, text)
        encoder_outputs = self.encoder(
            hidden_states=levels.sources,
            position_embeddings=levels.position_embeddings,
            spatial_shapes=levels.spatial_shapes,
            spatial_shapes_list=levels.spatial_shapes_list,
            level_start_index=levels.level_start_index,
            valid_ratios=levels.valid_ratios,
            padding_mask=levels.padding_mask,
            return_dict=True,
            **kwargs,
        )
        memory = encoder_outputs.last_hidden_state
        decoder_outputs = self.decoder(
            hidden_states=queries.target,
            query_position_embeddings=queries.position_embeddings,
            reference_points=queries.reference_points,
            encoder_hidden_states=memory,
            spatial_shapes=levels.spatial_shapes,
            spatial_shapes_list=levels.spatial_shapes_list,
            level_start_index=levels.level_start_index,
            valid_ratios=levels.valid_ratios,
            encoder_padding_mask=levels.padding_mask,
            return_dict=True,
            **kwargs,
        )
        return FrameChunkEncoding(
            memory=memory,
            spatial_shapes_list=levels.spatial_shapes_list,
            hidden_states=decoder_outputs.intermediate_hidden_states,
            boxes=decoder_outputs.intermediate_pred_boxes,
            references=decoder_outputs.intermediate_reference_points,
            key_values=self.pixel_decoder.key_values(stage_features[0], padding_mask, memory, levels, num_frames),
            stride4_features=stage_features[0],
            recorded=RecordedChunk(
                backbone_hidden_states=tuple(stage_features) if kwargs.get("output_hidden_states") else None,
                encoder_hidden_states=encoder_outputs.hidden_states,
                encoder_attentions=encoder_outputs.attentions,
                decoder_hidden_states=decoder_outputs.hidden_states,
                decoder_attentions=decoder_outputs.attentions,
                cross_attentions=decoder_outputs.cross_attentions,
            ),
        )

    def fused_levels(
        self, stage_features: list[torch.Tensor], padding_mask: torch.Tensor, num_frames: int, text: TextFeatures
    ) -> DeformableLevels:
        """The deformable transformer's levels of `num_frames` frames of each clip (`stage_features` and
        `padding_mask` `[B_video * t, H, W]`): input projections of strides 8/16/32 and an extra stride-64 level (from
        the raw last stage), each multiplied by its cross-attention to the words, flattened per sentence."""
        hidden_size, batch_size = self.config.d_model, text.word_features.shape[0]
        sources = [projection(feature) for projection, feature in zip(self.input_projection, stage_features[1:])]
        sources.append(self.input_projection[-1](stage_features[-1]))
        level_masks = [resize_padding_mask(padding_mask, source.shape[-2:]) for source in sources]
        level_positions = [  # in the dtype of the backbone maps, and of the projection for the extra level
            sine_position_embedding_2d(mask, hidden_size // 2).to(features.dtype)
            for mask, features in zip(level_masks, stage_features[1:] + sources[-1:])
        ]
        sources = [self.vision_language_fusion(source, num_frames, text) for source in sources]
        return DeformableLevels.flattened(sources, level_masks, level_positions, self.level_embed, batch_size, num_frames)


class ReferFormerTrackEmbedding(nn.Module):
    """OnlineRefer's track-embedding MLP (the original's `TrackEmbedding`): `layer_norm(x + fc2(relu(fc1(x))))`, with
    dropout after the ReLU and on the residual branch. The referred query's last hidden state `[..., C]` -> the next
    frame's decoder target `[..., C]`."""

    def __init__(self, config: ReferFormerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_model)
        self.fc2 = nn.Linear(config.d_model, config.d_model)
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = F.dropout(F.relu(self.fc1(hidden_states)), p=self.dropout, training=self.training)
        residual = F.dropout(self.fc2(residual), p=self.dropout, training=self.training)
        return self.layer_norm(hidden_states + residual)


class ReferFormerDynamicMaskHead:
    """The task model's [`~referformer.frame_chunking.MaskHead`]: per decoder layer, class logits and boxes of every
    query; then, chunk by chunk of the FPN's maps, the masks of the dynamic 1x1-convolution head generated per query:
    of every query and layer (`output_all_queries=True`, training), or of the referred query of the last layer alone,
    whose first dynamic layer then absorbs the FPN's final convolution (`select_referred_query`)."""

    def __init__(self, model: "ReferFormerForReferringVideoObjectSegmentation", output_all_queries: bool):
        self.model, self.config, self.output_all_queries = model, model.config, output_all_queries
        num_layers = self.config.decoder_layers
        self.layers = list(range(num_layers)) if self.config.auxiliary_loss else [num_layers - 1]
        self.logits, self.boxes, self.mask_chunks = [], [], []
        self.selected_query_indices, self.frame_sizes, self.mask_heads = None, None, []

    def prepare(self, clip: ClipEncoding) -> None:
        for layer in self.layers:
            with autocast_disabled(clip.hidden_states):  # scores in float32 under autocast
                self.logits.append(self.model.class_embed(clip.hidden_states[:, layer].to(clip.references.dtype), layer))
            self.boxes.append(clip.boxes[:, layer])
        if self.output_all_queries:
            self.mask_heads = [self.dynamic_parameters(clip, layer) for layer in self.layers]
        else:
            self.selected_query_indices = select_referred_query(self.logits[-1])
            self.mask_heads = [self.dynamic_parameters(clip, self.layers[-1], self.selected_query_indices)]
        self.mask_chunks = [[] for _ in self.mask_heads]
        self.frame_sizes = clip.frame_sizes

    def dynamic_parameters(self, clip: ClipEncoding, layer: int, query_indices: torch.Tensor | None = None):
        """Dynamic parameters `[B, T, Q, P]` and reference points `[B, T, Q, 2]` of the mask head of decoder layer
        `layer`, for all queries or (`query_indices` `[B]`) one query per clip (then `Q = 1`)."""
        hidden_states = clip.hidden_states[:, layer]
        # The mask of layer l is positioned at the box centre after layer l's refinement (the initial reference
        # without refinement), as the original does.
        mask_reference = clip.boxes[:, layer].detach() if self.config.with_box_refine else clip.references[:, 0]
        if query_indices is not None:
            hidden_states, mask_reference = (
                tensor.gather(2, query_indices.view(-1, 1, 1, 1).expand(-1, tensor.shape[1], 1, tensor.shape[-1]))
                for tensor in (hidden_states, mask_reference)
            )
        # The centre is taken after the query's gather: gathering from the centres' slice exports (ONNX) as a
        # GatherElements on the whole boxes with narrower indices, which ONNX allows and OpenVINO rejects.
        mask_reference = mask_reference[..., :2]
        controller = self.model.controller
        with autocast_disabled(hidden_states):
            return controller(hidden_states.to(mask_reference.dtype)), mask_reference

    def __call__(self, frames: slice, stride4_maps: torch.Tensor) -> None:
        projection = self.model.model.pixel_decoder.mask_features
        if self.output_all_queries:
            maps = projection(stride4_maps.flatten(0, 1))
            stride4_maps, projection = maps.view(*stride4_maps.shape[:2], *maps.shape[1:]), None
        for chunks, (dynamic_params, mask_reference) in zip(self.mask_chunks, self.mask_heads):
            with autocast_disabled(stride4_maps):  # mask logits in float32 under autocast
                chunks.append(
                    dynamic_mask_logits(
                        stride4_maps.to(dynamic_params.dtype),
                        dynamic_params[:, frames],
                        mask_reference[:, frames].to(dynamic_params.dtype),
                        self.frame_sizes,
                        self.config,
                        mask_projection=projection,
                    )
                )

    def masks(self) -> list[torch.Tensor]:
        """Mask logits `[B, T, Q, h, w]` per mask head (per layer, or the selected query's)."""
        return [torch.cat(chunks, 1) for chunks in self.mask_chunks]


# Hidden states and attentions the segmentation output takes over from the model output.
RECORDED_OUTPUTS = (
    "encoder_hidden_states",
    "decoder_hidden_states",
    "backbone_hidden_states",
    "text_encoder_hidden_states",
    "encoder_attentions",
    "decoder_attentions",
    "cross_attentions",
    "text_encoder_attentions",
)


class ReferFormerForReferringVideoObjectSegmentation(ReferFormerPreTrainedModel):
    """ReferFormer with its prediction heads: per decoder layer and query, a class logit, a box and a mask.

    The same query index is the same object in every frame; at inference the query with the highest
    frame-averaged score is the referred object (see the processor's post-processing).

    An online model (`config.online`: OnlineRefer) runs one frame a call and follows the referred object with a track:
    `outputs = model(pixel_values_of_one_frame, input_ids, track=track)`, then `track = model.update_track(outputs,
    track)` for the next frame (`track=None` on the first frame).

    Example:

    ```python
    >>> import numpy as np
    >>> from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor
    >>> processor = ReferFormerProcessor.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained("checkpoints/referformer-tiny-shapes")
    >>> video = np.full((3, 96, 144, 3), 128, np.uint8)  # 3 grey frames [T, H, W, RGB]
    >>> video[:, 30:60, 20:50], video[:, 40:70, 90:120] = (240, 210, 20), (220, 30, 30)  # yellow left, red right
    >>> inputs = processor(videos=video, text=["the yellow square", "the red square"])
    >>> outputs = model(**inputs)
    >>> results = processor.post_process_referring_video_segmentation(
    ...     outputs, inputs["original_sizes"], inputs["resized_sizes"]
    ... )
    >>> for result in results:  # is more than half of the yellow / the red square in the sentence's masks?
    ...     masks = result["masks"].float()  # [T, H, W] at the original frame size
    ...     print(masks[:, 30:60, 20:50].mean() > 0.5, masks[:, 40:70, 90:120].mean() > 0.5)
    tensor(True) tensor(False)
    tensor(False) tensor(True)

    ```
    """

    def __init__(self, config: ReferFormerConfig):
        super().__init__(config)
        self.model = ReferFormerModel(config)
        num_class_heads = config.decoder_layers if config.with_box_refine else 1
        self.class_embed = ReferFormerDecoderLayerHeads(
            nn.Linear(config.d_model, config.num_classes) for _ in range(num_class_heads)
        )
        self.controller = ReferFormerMLP(config.d_model, config.d_model, config.num_dynamic_params, 3)
        self.track_embed = ReferFormerTrackEmbedding(config) if config.online else None
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        pixel_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        resized_sizes: torch.LongTensor | None = None,
        valid_frame_indices: torch.LongTensor | None = None,
        original_sizes: torch.LongTensor | None = None,
        frame_indices: torch.LongTensor | None = None,
        labels: list[dict] | None = None,
        output_all_queries: bool = True,
        track: OnlineTrack | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ReferFormerSegmentationOutput | tuple:
        r"""
        Inputs as [`ReferFormerModel`]. Returns class logits, boxes and stride-4 mask logits of every query in every
        frame, for the last decoder layer and (in `auxiliary_outputs`) the earlier ones.

        labels (`list[dict]`, *optional*):
            One dict per clip describing the referred object, to compute the training loss:
            - `masks`: `[T, H, W]` bool at the padded input resolution (the size of `pixel_values`);
            - `boxes`: `[T, 4]` (cx, cy, w, h) normalized by the unpadded frame size, zeros where the object is absent;
            - `valid`: `[T]` 1 where the object is visible;
            - `class_labels`: `[T]` category ids (only used when `config.num_classes > 1`).
        output_all_queries (`bool`, *optional*, defaults to `True`):
            Which queries get masks, as `logits_to_keep` says which positions get logits in transformers' language
            models: `True` computes every query's masks for every decoder layer; `False` (inference only) runs the
            dynamic mask head for the referred query of each clip alone (`select_referred_query`), which is what
            post-processing keeps: `pred_masks` is then `[B, T, 1, h, w]`, `selected_query_indices` says which query
            it is, and `auxiliary_outputs` are left out.
        track ([`~referformer.frame_chunking.OnlineTrack`], *optional*):
            Online models: the track this frame is decoded from (None on the first frame), see `update_track`.
        """
        if not output_all_queries and (labels is not None or self.training):
            raise ValueError("Training needs the masks of all queries: output_all_queries=False is for inference.")
        if labels is not None and self.config.online:
            raise ValueError("Training an online (OnlineRefer) model is not supported: labels cannot be given.")
        heads = ReferFormerDynamicMaskHead(self, output_all_queries)
        outputs = self.model(
            pixel_values,
            input_ids,
            pixel_mask=pixel_mask,
            attention_mask=attention_mask,
            resized_sizes=resized_sizes,
            valid_frame_indices=valid_frame_indices,
            mask_head=heads,
            track=track,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits, boxes, masks = heads.logits, heads.boxes, heads.masks()
        auxiliary_outputs = None
        if self.config.auxiliary_loss and output_all_queries:
            auxiliary_outputs = [
                {"logits": layer_logits, "pred_boxes": layer_boxes, "pred_masks": layer_masks}
                for layer_logits, layer_boxes, layer_masks in zip(logits[:-1], boxes[:-1], masks[:-1])
            ]
        loss = loss_dict = matched_query_indices = None
        if labels is not None:
            loss, loss_dict, matched_query_indices = ReferFormerLoss(self.config)(
                logits[-1], boxes[-1], masks[-1], labels, auxiliary_outputs
            )
        recorded = {name: getattr(outputs, name) for name in RECORDED_OUTPUTS}
        return ReferFormerSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            matched_query_indices=matched_query_indices,
            logits=logits[-1],
            pred_boxes=boxes[-1],
            pred_masks=masks[-1],
            selected_query_indices=heads.selected_query_indices,
            reference_points=outputs.intermediate_reference_points[:, -1],
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            **recorded,
        )

    def update_track(self, outputs: ReferFormerSegmentationOutput, track: OnlineTrack | None) -> OnlineTrack:
        """The track of the next frame (the original's `post_process_single_image`) from an online model's `outputs`
        of the frame decoded from `track` (None: the first frame). Per sentence, the referred query `k`
        (`select_referred_query`): its box as the reference (`[B, 1, 4]` before the sigmoid, no gradient), the
        track-embedding MLP of its last hidden state as the content, its query position kept (`[B, 1, C]`)."""
        if not self.config.online:
            raise ValueError("update_track is for online (OnlineRefer) models (config.online=True).")
        if track is None:
            track = self.model.empty_track(outputs.logits.shape[0])
        query = select_referred_query(outputs.logits)[:, None, None]

        def referred(values: torch.Tensor) -> torch.Tensor:  # [B, Q, D] -> the referred query's [B, 1, D]
            return values.gather(1, query.expand(-1, 1, values.shape[-1]))

        return OnlineTrack(
            reference_points=inverse_sigmoid(referred(outputs.pred_boxes[:, 0]).detach()),
            track_embedding=self.track_embed(referred(outputs.last_hidden_state[:, 0])),
            position_embedding=referred(track.position_embedding),
        )


def select_referred_query(logits: torch.Tensor) -> torch.Tensor:
    """The referred object's query of each clip, `[B]`: the highest frame-averaged score (the paper's rule), from
    class logits `[B, T, Q, K]` (the best class of each query)."""
    return logits.sigmoid().mean(1).max(-1).values.argmax(-1)


def dynamic_mask_logits(
    mask_features: torch.Tensor,
    dynamic_params: torch.Tensor,
    reference_points: torch.Tensor,
    frame_sizes: torch.Tensor,
    config: ReferFormerConfig,
    mask_projection: nn.Conv2d | None = None,
) -> torch.Tensor:
    """Runs the per-query dynamic 1x1 convolutions on the mask features of the query's frame.

    Args:
        mask_features: `[B, T, mask_dim, h, w]` stride-4 features, or with `mask_projection` the maps
            `[B, T, C, h, w]` that this convolution turns into the mask features.
        dynamic_params: `[B, T, Q, P]` generated parameters: all weights (layer by layer, out x in row-major), then
            all biases.
        reference_points: `[B, T, Q, 2]` normalized (x, y) of each query, scaled by the unpadded frame size to give
            relative coordinates in input pixels (reference minus pixel location `4 * index + 2`, not normalized).
        frame_sizes: `[B, 2]` unpadded (height, width) of each clip.
        mask_projection: the FPN's final convolution, folded into each query's first dynamic layer (both are linear,
            so this is exact up to float rounding): `Q * dynamic_mask_channels` output maps instead of `mask_dim`,
            fewer operations when there are few queries.

    Returns:
        Mask logits `[B, T, Q, h, w]`.
    """
    batch_size, num_frames, _, height, width = mask_features.shape
    mask_dim = config.mask_dim
    num_queries = dynamic_params.shape[2]
    weight_sizes, bias_sizes = config.dynamic_weight_sizes, config.dynamic_bias_sizes
    splits = dynamic_params.split(weight_sizes + bias_sizes, dim=-1)
    weights, biases = splits[: len(weight_sizes)], splits[len(weight_sizes) :]
    channels = config.dynamic_mask_channels

    # First layer: the feature part is shared by the queries of a frame, so it is one batched matmul per frame
    # instead of materializing [B, T, Q, mask_dim + 2, h, w] as a grouped convolution would.
    first_out = bias_sizes[0]
    first_weight = weights[0].view(batch_size, num_frames, num_queries, first_out, -1)
    if mask_projection is None:
        # The queries' rows stacked into one product per frame: [B, T, 1, Q*out, mask_dim] @ [B, T, 1, mask_dim, h*w]
        # (a broadcast over Q would copy the features once per query).
        feature_weight = first_weight[..., :mask_dim].reshape(batch_size, num_frames, 1, num_queries * first_out, mask_dim)
        hidden = torch.matmul(feature_weight, mask_features.flatten(3)[:, :, None])
        hidden = hidden.view(batch_size, num_frames, num_queries, first_out, height * width)
    else:
        hidden = _projected_feature_term(mask_features, first_weight[..., :mask_dim], mask_projection)
    if config.rel_coord:
        locations = _mask_locations(height, width, mask_features.device, mask_features.dtype)  # [2, h*w]
        scale = frame_sizes.flip(-1).to(reference_points.dtype)[:, None, None, :]  # (w, h)
        relative_coords = (reference_points * scale)[..., None] - locations  # [B, T, Q, 2, h*w]
        hidden = hidden + torch.matmul(first_weight[..., mask_dim:], relative_coords)
    hidden = F.relu(hidden + biases[0][..., None])
    for layer in range(1, len(weight_sizes)):
        out_channels = bias_sizes[layer]
        weight = weights[layer].view(batch_size, num_frames, num_queries, out_channels, channels)
        hidden = torch.matmul(weight, hidden) + biases[layer][..., None]
        if layer < len(weight_sizes) - 1:
            hidden = F.relu(hidden)
    return hidden.view(batch_size, num_frames, num_queries, height, width)


def _projected_feature_term(
    maps: torch.Tensor, feature_weight: torch.Tensor, projection: nn.Conv2d
) -> torch.Tensor:
    """`feature_weight @ projection(maps)` per query, `[B, T, Q, out, h*w]`, as one grouped convolution of each
    frame's maps `[B, T, C, h, w]` with the kernels `feature_weight` `[B, T, Q, out, mask_dim]` makes of the
    projection's."""
    batch_size, num_frames, channels, height, width = maps.shape
    kernel = torch.einsum("btqom,mckl->btqockl", feature_weight, projection.weight.to(feature_weight.dtype))
    bias = torch.matmul(feature_weight, projection.bias.to(feature_weight.dtype))
    hidden = F.conv2d(
        maps.reshape(1, batch_size * num_frames * channels, height, width),
        kernel.flatten(0, 3),
        bias.flatten(),
        projection.stride,
        projection.padding,
        projection.dilation,
        groups=batch_size * num_frames,
    )
    return hidden.view(*feature_weight.shape[:4], height * width)


def _mask_locations(height: int, width: int, device, dtype) -> torch.Tensor:
    """Input-pixel (x, y) of the centre of every stride-4 cell: `[2, h*w]`."""
    stride = 4
    shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    locations = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=0) + stride // 2
    return locations.to(dtype)


__all__ = [
    "ReferFormerForReferringVideoObjectSegmentation",
    "select_referred_query",
    "ReferFormerModel",
    "ReferFormerPreTrainedModel",
]
