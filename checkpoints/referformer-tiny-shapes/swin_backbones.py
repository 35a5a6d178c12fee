"""Swin and Video Swin backbones, computed exactly as the original ReferFormer computes them.

Both backbones take the frames of a batch of clips flattened into one batch, `pixel_values` of shape
`[batch_size * num_frames, 3, height, width]` (the frames of a clip consecutive), and return four per-frame feature
maps at strides 4, 8, 16 and 32. State-dict keys are those of the original modules without the `backbone.0.body.`
prefix.

Behaviour that differs from common Swin implementations (e.g. timm or HF transformers) and is reproduced on purpose:

* Features are zero-padded to multiples of the window *after* `norm1`, and the padded tokens are not masked as keys.
* The shifted-window mask (-100 between regions of the cyclic shift) is built on the padded grid.
* Image Swin never shrinks its window nor drops the shift on small maps, and normalises every stage output with its own
  LayerNorm (`norm0`..`norm3`).
* Video Swin shrinks the window of each axis that is not larger than the window (and drops that axis' shift), looks the
  relative position bias of a shrunken window up in the top-left corner of the full-window index (see
  [`SwinWindowAttention`]), takes stage outputs before patch merging and does not normalise them.
"""

import itertools
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init

from .configuration_referformer import ReferFormerSwinBackboneConfig, ReferFormerVideoSwinBackboneConfig


def relative_position_index(window_size: tuple[int, ...]) -> torch.Tensor:
    """Index into the relative position bias table for every (query, key) pair of tokens of a window.

    Tokens are numbered in row-major order over the window axes (time, height, width for 3-D windows). Returns an int64
    tensor of shape `[prod(window_size), prod(window_size)]`.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(size) for size in window_size], indexing="ij")).flatten(1)
    relative_coords = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative_coords = relative_coords + torch.tensor([size - 1 for size in window_size])
    axis_strides = [math.prod(2 * size - 1 for size in window_size[axis + 1 :]) for axis in range(len(window_size))]
    return (relative_coords * torch.tensor(axis_strides)).sum(-1)


def window_partition(hidden_states: torch.Tensor, window_size: tuple[int, ...]) -> torch.Tensor:
    """`[batch, *sizes, channels]` (sizes multiple of the window) -> `[batch * windows, window_tokens, channels]`."""
    batch_size, *sizes, channels = hidden_states.shape
    num_axes = len(window_size)
    grid_shape = [dim for size, window in zip(sizes, window_size) for dim in (size // window, window)]
    hidden_states = hidden_states.view(batch_size, *grid_shape, channels)
    order = [0, *range(1, 2 * num_axes, 2), *range(2, 2 * num_axes + 1, 2), 2 * num_axes + 1]
    return hidden_states.permute(order).reshape(-1, math.prod(window_size), channels)


def window_reverse(
    windows: torch.Tensor, window_size: tuple[int, ...], batch_size: int, sizes: tuple[int, ...]
) -> torch.Tensor:
    """Inverse of [`window_partition`]: `[batch * windows, window_tokens, channels]` -> `[batch, *sizes, channels]`."""
    num_axes = len(window_size)
    num_windows = [size // window for size, window in zip(sizes, window_size)]
    hidden_states = windows.view(batch_size, *num_windows, *window_size, -1)
    order = [0, *(dim for axis in range(num_axes) for dim in (1 + axis, 1 + num_axes + axis)), 2 * num_axes + 1]
    return hidden_states.permute(order).reshape(batch_size, *sizes, -1)


def shifted_window_attention_mask(
    padded_sizes: tuple[int, ...],
    window_size: tuple[int, ...],
    shift_size: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask `[num_windows, window_tokens, window_tokens]` of the cyclically shifted windows: -100 between
    tokens of different regions of the shift, 0 otherwise.

    Built on the padded grid with the original's slices: along an axis whose shift is 0 the last slice covers the whole
    axis, so that axis does not split regions.
    """
    region_labels = torch.zeros((1, *padded_sizes, 1), device=device, dtype=dtype)
    axis_slices = [
        (slice(-window), slice(-window, -shift), slice(-shift, None)) for window, shift in zip(window_size, shift_size)
    ]
    for label, region in enumerate(itertools.product(*axis_slices)):
        region_labels[(slice(None), *region, slice(None))] = label
    window_labels = window_partition(region_labels, window_size).squeeze(-1)
    label_difference = window_labels.unsqueeze(1) - window_labels.unsqueeze(2)
    return label_difference.masked_fill(label_difference != 0, -100.0).masked_fill(label_difference == 0, 0.0)


class SwinDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability `drop_prob` (training only)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep_mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
        return hidden_states * keep_mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SwinMlp(nn.Module):
    """Feed-forward block: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SwinWindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    The bias table has one row per relative offset of the full `window_size` (`prod(2 * w - 1)` rows) and
    `relative_position_index` (a non-persistent buffer, recomputed from `window_size`) is built for the full window.
    When the window holds fewer tokens `N` than the full window (Video Swin shrinks the window of an axis that is not
    larger than it), the bias is looked up with the top-left `N x N` block of the full index, as the original does.
    That block is geometrically correct when only the time axis shrinks (time is the slowest-varying axis) but assigns
    offsets of the wrong token pairs as soon as a spatial axis shrinks; this is kept for parity with the released
    Video Swin checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, ...], qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = tuple(window_size)
        self.scale = (dim // num_heads) ** -0.5
        num_offsets = math.prod(2 * size - 1 for size in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden_states` `[batch * windows, N, dim]`; `attention_mask` `[windows, N, N]` (additive) or None."""
        batch_windows, num_tokens, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_windows, num_tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_scores = (query * self.scale) @ key.transpose(-2, -1)

        bias_index = self.relative_position_index[:num_tokens, :num_tokens].reshape(-1)
        relative_position_bias = self.relative_position_bias_table[bias_index].reshape(num_tokens, num_tokens, -1)
        attention_scores = attention_scores + relative_position_bias.permute(2, 0, 1).unsqueeze(0)
        if attention_mask is not None:
            num_windows = attention_mask.shape[0]
            attention_scores = attention_scores.view(-1, num_windows, self.num_heads, num_tokens, num_tokens)
            attention_scores = attention_scores + attention_mask.unsqueeze(1).unsqueeze(0)
            attention_scores = attention_scores.view(-1, self.num_heads, num_tokens, num_tokens)
        attention_probs = attention_scores.softmax(dim=-1)

        context = (attention_probs @ value).transpose(1, 2).reshape(batch_windows, num_tokens, dim)
        return self.proj(context)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention and MLP, each with a residual connection and stochastic depth.

    Works on channels-last maps `[batch, *sizes, dim]` with 2-D (image) or 3-D (video) windows; the window and shift
    to use are given by the stage at every call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, ...],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SwinWindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = SwinDropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        hidden_states: torch.Tensor,
        window_size: tuple[int, ...],
        shift_size: tuple[int, ...],
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch_size, *sizes, _ = hidden_states.shape
        spatial_dims = tuple(range(1, len(sizes) + 1))
        shortcut = hidden_states

        hidden_states = self.norm1(hidden_states)
        # Zero padding after the norm, bottom/right (and end of time); the padded tokens are not masked as keys.
        paddings = [(window - size % window) % window for size, window in zip(sizes, window_size)]
        hidden_states = F.pad(hidden_states, [0, 0] + [amount for pad in reversed(paddings) for amount in (0, pad)])
        padded_sizes = tuple(hidden_states.shape[1:-1])

        shifted = any(shift > 0 for shift in shift_size)
        if shifted:
            hidden_states = torch.roll(hidden_states, shifts=[-shift for shift in shift_size], dims=spatial_dims)
        windows = self.attn(window_partition(hidden_states, window_size), attention_mask if shifted else None)
        hidden_states = window_reverse(windows, window_size, batch_size, padded_sizes)
        if shifted:
            hidden_states = torch.roll(hidden_states, shifts=list(shift_size), dims=spatial_dims)
        hidden_states = hidden_states[(slice(None), *(slice(0, size) for size in sizes))]

        hidden_states = shortcut + self.drop_path(hidden_states)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class SwinPatchMerging(nn.Module):
    """2x down-sampling of the spatial axes: concatenate the 2x2 neighbours (offsets (0,0), (1,0), (0,1), (1,1) as
    (row, column)), LayerNorm(4 * dim), Linear(4 * dim -> 2 * dim, no bias). Odd heights/widths are zero-padded."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`[..., height, width, dim]` -> `[..., ceil(height / 2), ceil(width / 2), 2 * dim]`."""
        height, width = hidden_states.shape[-3:-1]
        if height % 2 == 1 or width % 2 == 1:
            hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
        hidden_states = torch.cat(
            [
                hidden_states[..., 0::2, 0::2, :],
                hidden_states[..., 1::2, 0::2, :],
                hidden_states[..., 0::2, 1::2, :],
                hidden_states[..., 1::2, 1::2, :],
            ],
            dim=-1,
        )
        return self.reduction(self.norm(hidden_states))


class SwinStage(nn.Module):
    """Blocks of one stage, alternating regular (even blocks) and cyclically shifted (odd blocks) windows.

    With `shrink_window_to_input` (Video Swin), every axis whose extent is not larger than the window uses the extent
    as window and is never shifted; otherwise (image Swin) the configured window and shift are always used, even on
    maps smaller than one window. The optional `downsample` patch merging is not applied by `forward`: the backbones
    take the stage output before merging it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: tuple[int, ...],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
        shrink_window_to_input: bool,
        downsample: bool,
    ):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(size // 2 for size in self.window_size)
        self.shrink_window_to_input = shrink_window_to_input
        self.blocks = nn.ModuleList(
            [
                SwinBlock(dim, num_heads, self.window_size, mlp_ratio, qkv_bias, drop_path[index])
                for index in range(depth)
            ]
        )
        self.downsample = SwinPatchMerging(dim) if downsample else None

    def effective_window_and_shift(self, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Window and shift (of the shifted blocks) used for a map of the given extents."""
        if not self.shrink_window_to_input:
            return self.window_size, self.shift_size
        window_size = tuple(min(size, window) for size, window in zip(sizes, self.window_size))
        shift_size = tuple(
            0 if size <= window else shift for size, window, shift in zip(sizes, self.window_size, self.shift_size)
        )
        return window_size, shift_size

    def forward(self, hidden_states: torch.Tensor, checkpoint_function=None) -> torch.Tensor:
        """`hidden_states` `[batch, *sizes, dim]`; blocks are run through `checkpoint_function` when it is given."""
        sizes = tuple(hidden_states.shape[1:-1])
        window_size, shift_size = self.effective_window_and_shift(sizes)
        attention_mask = None
        if any(shift > 0 for shift in shift_size):
            padded_sizes = tuple(-(-size // window) * window for size, window in zip(sizes, window_size))
            attention_mask = shifted_window_attention_mask(
                padded_sizes, window_size, shift_size, hidden_states.device, hidden_states.dtype
            )
        no_shift = (0,) * len(window_size)
        for index, block in enumerate(self.blocks):
            block_shift = shift_size if index % 2 == 1 else no_shift
            if checkpoint_function is not None:
                hidden_states = checkpoint_function(block, hidden_states, window_size, block_shift, attention_mask)
            else:
                hidden_states = block(hidden_states, window_size, block_shift, attention_mask)
        return hidden_states


def _stochastic_depth_rates(depths: list[int], drop_path_rate: float) -> list[list[float]]:
    """Drop-path rate of every block, rising linearly from 0 to `drop_path_rate` over all blocks, split by stage."""
    rates = [rate.item() for rate in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
    starts = [sum(depths[:stage]) for stage in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


def _check_pixel_values(pixel_values: torch.Tensor, num_frames: int, in_channels: int) -> None:
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must be [batch_size * num_frames, {in_channels}, height, width], got shape "
            f"{tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[1] != in_channels:
        raise ValueError(f"pixel_values must have {in_channels} channels, got {pixel_values.shape[1]}.")
    if num_frames < 1 or pixel_values.shape[0] % num_frames != 0:
        raise ValueError(
            f"The number of frames in pixel_values ({pixel_values.shape[0]}) is not a multiple of num_frames "
            f"({num_frames})."
        )


class _SwinBackboneBase(nn.Module):
    """Gradient checkpointing switch shared by both backbones.

    `gradient_checkpointing` (False by default) is the flag `PreTrainedModel.gradient_checkpointing_enable` toggles on
    every sub-module that has it (it also replaces `_gradient_checkpointing_func`). When set and in training mode every
    Swin block is run through `_gradient_checkpointing_func`.
    """

    in_channels = 3

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def _checkpoint_function(self):
        return self._gradient_checkpointing_func if self.gradient_checkpointing and self.training else None


class SwinPatchEmbed(nn.Module):
    """Image to patches: zero-pad right/bottom to multiples of the patch, Conv2d(kernel = stride = patch),
    LayerNorm."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[frames, channels, height, width]` -> channels-last `[frames, height / patch, width / patch, dim]`."""
        height, width = pixel_values.shape[-2:]
        pad_height = (self.patch_size - height % self.patch_size) % self.patch_size
        pad_width = (self.patch_size - width % self.patch_size) % self.patch_size
        if pad_height or pad_width:
            pixel_values = F.pad(pixel_values, (0, pad_width, 0, pad_height))
        return self.norm(self.proj(pixel_values).permute(0, 2, 3, 1))


class ReferFormerSwinBackbone(_SwinBackboneBase):
    """Image Swin Transformer (mmdet style) applied to every frame independently.

    Returns the four stage outputs, each normalised by its own LayerNorm `norm{i}`, as `[frames, C_i, h_i, w_i]` at
    strides 4, 8, 16 and 32 with `C_i = embed_dim * 2**i`. The window is never shrunk and odd blocks always shift, also
    on maps smaller than one window.
    """

    def __init__(self, config: ReferFormerSwinBackboneConfig):
        super().__init__()
        self.config = config
        depths = list(config.depths)
        self.channels = [config.embed_dim * 2**stage for stage in range(len(depths))]
        self.patch_embed = SwinPatchEmbed(config.patch_size, self.in_channels, config.embed_dim)
        drop_path_rates = _stochastic_depth_rates(depths, config.drop_path_rate)
        window_size = (config.window_size, config.window_size)
        self.layers = nn.ModuleList(
            [
                SwinStage(
                    dim=channels,
                    depth=depths[stage],
                    num_heads=config.num_heads[stage],
                    window_size=window_size,
                    mlp_ratio=config.mlp_ratio,
                    qkv_bias=config.qkv_bias,
                    drop_path=drop_path_rates[stage],
                    shrink_window_to_input=False,
                    downsample=stage < len(depths) - 1,
                )
                for stage, channels in enumerate(self.channels)
            ]
        )
        for stage, channels in enumerate(self.channels):
            self.add_module(f"norm{stage}", nn.LayerNorm(channels))

    def forward(self, pixel_values: torch.Tensor, num_frames: int, num_stages: int = 4) -> list[torch.Tensor]:
        """`pixel_values` `[batch_size * num_frames, 3, height, width]` -> the maps `[batch_size * num_frames, C_i,
        h_i, w_i]` of the first `num_stages` stages (the later ones are not computed). Frames do not interact;
        `num_frames` is only checked against the batch."""
        _check_pixel_values(pixel_values, num_frames, self.in_channels)
        checkpoint_function = self._checkpoint_function()
        hidden_states = self.patch_embed(pixel_values)
        features = []
        for stage, layer in enumerate(self.layers[:num_stages]):
            stage_output = layer(hidden_states, checkpoint_function)
            features.append(self._stage_map(stage, stage_output))
            if layer.downsample is not None and stage + 1 < num_stages:
                hidden_states = layer.downsample(stage_output)
        return features

    def _stage_map(self, stage: int, stage_output: torch.Tensor) -> torch.Tensor:
        """Stage output `[frames, h, w, C]` -> its normalised map `[frames, C, h, w]`."""
        return getattr(self, f"norm{stage}")(stage_output).permute(0, 3, 1, 2).contiguous()


class VideoSwinPatchEmbed(nn.Module):
    """Video to patches: zero-pad width/height (and time) to multiples of the patch, Conv3d(kernel = stride = patch),
    LayerNorm."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """`[batch, channels, time, height, width]` -> channels-last `[batch, time', height', width', embed_dim]`."""
        paddings = [(patch - size % patch) % patch for size, patch in zip(videos.shape[-3:], self.patch_size)]
        if any(paddings):
            videos = F.pad(videos, [amount for pad in reversed(paddings) for amount in (0, pad)])
        return self.norm(self.proj(videos).permute(0, 2, 3, 4, 1))


class ReferFormerVideoSwinBackbone(_SwinBackboneBase):
    """Video Swin Transformer (3-D shifted windows over time, height and width) as wrapped by the original ReferFormer.

    Frames are regrouped into clips of `num_frames`; returns the four stage outputs taken before patch merging (which
    lives in `downsamples[i]`), not normalised, per frame as `[batch_size * num_frames, C_i, h_i, w_i]` at strides 4,
    8, 16 and 32. See [`SwinStage`] and [`SwinWindowAttention`] for the window-shrinking rule and its relative position
    lookup.
    """

    def __init__(self, config: ReferFormerVideoSwinBackboneConfig):
        super().__init__()
        if config.patch_size[0] != 1:
            raise ValueError(
                f"ReferFormer needs per-frame features: the temporal patch size must be 1, got {config.patch_size}."
            )
        self.config = config
        depths = list(config.depths)
        self.channels = [config.embed_dim * 2**stage for stage in range(len(depths))]
        self.patch_embed = VideoSwinPatchEmbed(config.patch_size, self.in_channels, config.embed_dim)
        drop_path_rates = _stochastic_depth_rates(depths, config.drop_path_rate)
        self.layers = nn.ModuleList(
            [
                SwinStage(
                    dim=channels,
                    depth=depths[stage],
                    num_heads=config.num_heads[stage],
                    window_size=tuple(config.window_size),
                    mlp_ratio=config.mlp_ratio,
                    qkv_bias=config.qkv_bias,
                    drop_path=drop_path_rates[stage],
                    shrink_window_to_input=True,
                    downsample=False,
                )
                for stage, channels in enumerate(self.channels)
            ]
        )
        self.downsamples = nn.ModuleList([SwinPatchMerging(channels) for channels in self.channels[:-1]])

    def forward(self, pixel_values: torch.Tensor, num_frames: int, num_stages: int = 4) -> list[torch.Tensor]:
        """`pixel_values` `[batch_size * num_frames, 3, height, width]` (frames of a clip consecutive) -> the maps
        `[batch_size * num_frames, C_i, h_i, w_i]` of the first `num_stages` stages."""
        _check_pixel_values(pixel_values, num_frames, self.in_channels)
        checkpoint_function = self._checkpoint_function()
        num_images, channels, height, width = pixel_values.shape
        batch_size = num_images // num_frames
        videos = pixel_values.reshape(batch_size, num_frames, channels, height, width).transpose(1, 2)
        hidden_states = self.patch_embed(videos)
        features = []
        for stage, layer in enumerate(self.layers[:num_stages]):
            hidden_states = layer(hidden_states, checkpoint_function)
            features.append(hidden_states.permute(0, 1, 4, 2, 3).flatten(0, 1).contiguous())
            if stage + 1 < num_stages:
                hidden_states = self.downsamples[stage](hidden_states)
        return features


def _init_linear(linear: nn.Linear) -> None:
    init.trunc_normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        init.zeros_(linear.bias)


def _init_layer_norm(layer_norm: nn.LayerNorm) -> None:
    init.ones_(layer_norm.weight)
    init.zeros_(layer_norm.bias)


def init_swin_weights(module: nn.Module) -> None:
    """Initialise the parameters a Swin module of this file owns (directly or through plain child layers) for training
    from scratch, as the original does, and restore the non-persistent `relative_position_index`.

    Linear weights truncated normal (std 0.02) with zero biases, LayerNorms ones/zeros, relative position bias tables
    truncated normal (std 0.02), patch-embedding convolutions PyTorch's default initialisation. Does nothing for other
    modules, so a model's `_init_weights(module)` can call it for every module (after its generic initialisation:
    modules are visited children first, so the Swin parents override the generic init of their plain layers). Uses
    `transformers.initialization`, so tensors loaded from a checkpoint are left alone.
    """
    if isinstance(module, SwinWindowAttention):
        init.trunc_normal_(module.relative_position_bias_table, std=0.02)
        init.copy_(module.relative_position_index, relative_position_index(module.window_size))
        _init_linear(module.qkv)
        _init_linear(module.proj)
    elif isinstance(module, SwinMlp):
        _init_linear(module.fc1)
        _init_linear(module.fc2)
    elif isinstance(module, SwinBlock):
        _init_layer_norm(module.norm1)
        _init_layer_norm(module.norm2)
    elif isinstance(module, SwinPatchMerging):
        _init_linear(module.reduction)
        _init_layer_norm(module.norm)
    elif isinstance(module, (SwinPatchEmbed, VideoSwinPatchEmbed)):
        init.kaiming_uniform_(module.proj.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(module.proj.weight[0].numel())
        init.uniform_(module.proj.bias, -bound, bound)
        _init_layer_norm(module.norm)
    elif isinstance(module, ReferFormerSwinBackbone):
        for stage in range(len(module.channels)):
            _init_layer_norm(getattr(module, f"norm{stage}"))
