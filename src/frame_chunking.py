"""Frame-chunk scheduling of ReferFormer's forward pass and the whole-clip state it fills.

Every stage of ReferFormer but the cross-modal FPN's spatio-temporal self-attention works frame by frame, so
[`ReferFormerModel.forward`] runs two passes over chunks of `config.frame_chunk_size` frames:

1. the encoding pass (backbone, fusion, deformable encoder and decoder) writes each chunk's results, with the FPN
   self-attention's projected keys and values, into a [`ClipEncoding`]: whole-clip buffers allocated at the first
   chunk, so that no chunk outlives its own step and no whole-clip value exists twice;
2. the mask pass runs the FPN on each chunk, attending to the keys and values of every frame, and hands the chunk's
   stride-4 maps to a [`MaskHead`] (the task model's dynamic mask head) or keeps the clip's mask features.

The stride-4 backbone maps of the encoding pass are held for the mask pass while the clip's take at most
`config.stride4_features_hold_bytes`; beyond that budget the mask pass recomputes them chunk by chunk (the
backbone's first stage only).

The decoder's inputs of a chunk are [`DecoderQueries`]: ReferFormer's conditional queries, or OnlineRefer's
[`OnlineTrack`], the referred object's state carried from one frame to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


def frame_chunks(num_frames: int, chunk_size: int | None) -> list[slice]:
    """The frames of each chunk of `chunk_size` frames; one chunk when it is None, which keeps a symbolic frame count
    symbolic (torch.export with a dynamic number of frames)."""
    if chunk_size is None:
        return [slice(0, num_frames)]
    return [slice(start, min(start + chunk_size, num_frames)) for start in range(0, num_frames, chunk_size)]


def per_clip(values: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-frame values `[B*t, ...]` -> `[B, t, ...]`."""
    return values.view(batch_size, -1, *values.shape[1:])


@dataclass
class TextFeatures:
    """The referring expressions, encoded once for every frame chunk.

    `word_features` `[B, L, C]` and `sentence_features` `[B, C]` (projected to the model width), the words' sine
    `position_embeddings` `[B, L, C]`, `padding_mask` `[B, L]` (True on padding) and the text encoder's recorded
    `hidden_states` / `attentions` (None unless asked for).
    """

    word_features: torch.Tensor
    sentence_features: torch.Tensor
    position_embeddings: torch.Tensor
    padding_mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DecoderQueries:
    """The deformable decoder's inputs for N frames (one per sentence and frame): content `target` `[N, Q, C]`,
    `position_embeddings` `[N, Q, C]` and the initial `reference_points` `[N, Q, 2 or 4]` (normalized (x, y) points
    or (cx, cy, w, h) boxes, after the sigmoid)."""

    target: torch.Tensor
    position_embeddings: torch.Tensor
    reference_points: torch.Tensor


@dataclass
class OnlineTrack:
    """OnlineRefer's state of the referred object of each of B sentences, from which the next frame is decoded (the
    original's track): `reference_points` before the sigmoid, `[B, Q, 2]` points for the empty track (Q =
    `num_queries`) and `[B, 1, 4]` the previous frame's box afterwards; `track_embedding` `[B, Q, C]` the decoder
    target (zeros, then the track-embedding MLP of the referred query's last hidden state); `position_embedding`
    `[B, Q, C]` the query positions (of the referred first-frame query, kept for the whole video)."""

    reference_points: torch.Tensor
    track_embedding: torch.Tensor
    position_embedding: torch.Tensor

    def decoder_queries(self) -> DecoderQueries:
        """The decoder's inputs of the one frame this track is carried into (N = B)."""
        return DecoderQueries(self.track_embedding, self.position_embedding, self.reference_points.sigmoid())


@dataclass
class PixelDecoderKeyValues:
    """One FPN stage's self-attention keys and values for the frames they cover: projected `key_states` and
    `value_states` `[B, heads, t*n, head_dim]` and `padding_mask` `[B, t*n]` (True on padding), `n` tokens a frame."""

    key_states: torch.Tensor
    value_states: torch.Tensor
    padding_mask: torch.Tensor


@dataclass
class RecordedChunk:
    """The hidden states and attentions one frame chunk recorded (None unless asked for), frames flattened into the
    batch: the backbone's maps, the encoder's and the decoder's layers."""

    backbone_hidden_states: tuple[torch.Tensor, ...] | None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None
    encoder_attentions: tuple[torch.Tensor, ...] | None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None
    decoder_attentions: tuple[torch.Tensor, ...] | None
    cross_attentions: tuple[torch.Tensor, ...] | None


@dataclass
class FrameChunkEncoding:
    """The encoding pass's results for one chunk of `t` frames of each clip (B sentences, B_video videos).

    `memory` `[B*t, S, C]` the encoder output (`spatial_shapes_list` its levels); `hidden_states`, `boxes`,
    `references` `[decoder_layers, B*t, Q, ...]` the decoder's per-layer outputs; `key_values` per FPN stage (stage 0 of
    the video batch, the others per sentence); `stride4_features` `[B_video*t, C, h, w]` the backbone's finest maps.
    """

    memory: torch.Tensor
    spatial_shapes_list: list[tuple[int, int]]
    hidden_states: torch.Tensor
    boxes: torch.Tensor
    references: torch.Tensor
    key_values: list[PixelDecoderKeyValues]
    stride4_features: torch.Tensor
    recorded: RecordedChunk


def _write_frames(buffer: torch.Tensor | None, values: torch.Tensor, frames: slice, num_frames: int, frame_dim: int):
    """Writes `values` (frames `frames` along `frame_dim`) into the whole-clip `buffer`, allocated at the first chunk;
    a chunk that spans the whole clip is kept as it is. Returns the buffer."""
    if values.shape[frame_dim] == num_frames:
        return values
    if buffer is None:
        shape = list(values.shape)
        shape[frame_dim] = num_frames
        buffer = values.new_empty(shape)
    buffer.narrow(frame_dim, frames.start, values.shape[frame_dim]).copy_(values)
    return buffer


def _per_frame(chunks: list[tuple[torch.Tensor, ...] | None], batch_size: int) -> tuple[torch.Tensor, ...] | None:
    """Chunks' tuples of `[batch * t, ...]` -> one tuple of `[batch * T, ...]` (a single chunk's tensors as computed)."""
    if chunks[0] is None or len(chunks) == 1:
        return chunks[0]
    return tuple(torch.cat([per_clip(value, batch_size) for value in values], 1).flatten(0, 1) for values in zip(*chunks))


@dataclass
class ClipEncoding:
    """Whole-clip state of one forward pass: the inputs every chunk reads and the encoding pass's results.

    Inputs: `pixel_values` `[B_video, T, 3, H, W]`, `padding_mask` `[B_video, T, H, W]` (True on padding),
    `frame_sizes` `[B, 2]` unpadded (height, width), `text`, and `batch_size` (sentences B). Written chunk by chunk:
    `memory` `[B, T, S, C]`; `hidden_states`, `boxes`, `references` `[B, decoder_layers, T, Q, ...]`; per FPN stage the
    projected `key_states` / `value_states` `[B_stage, heads, T, n, head_dim]` and `key_padding_masks`
    `[B_stage, T, n]`; `stride4_features` `[B_video, T, C, h, w]` while held (see `holds_stride4_features`); the mask
    pass writes `mask_features` `[B, T, mask_dim, h, w]` when no mask head takes the maps.
    """

    pixel_values: torch.Tensor
    padding_mask: torch.Tensor
    frame_sizes: torch.Tensor
    text: TextFeatures
    batch_size: int
    stride4_features_hold_bytes: int
    memory: torch.Tensor | None = None
    spatial_shapes_list: list[tuple[int, int]] | None = None
    hidden_states: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    references: torch.Tensor | None = None
    key_states: list[torch.Tensor] = field(default_factory=list)
    value_states: list[torch.Tensor] = field(default_factory=list)
    key_padding_masks: list[torch.Tensor] = field(default_factory=list)
    stride4_features: torch.Tensor | None = None
    holds_stride4_features: bool | None = None
    recorded: list[RecordedChunk] = field(default_factory=list)
    mask_features: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.padding_mask.shape[1]

    @property
    def video_batch_size(self) -> int:
        return self.padding_mask.shape[0]

    def write(self, frames: slice, chunk: FrameChunkEncoding) -> None:
        """Stores the encoding pass's results for `frames`."""
        num_frames, chunk_frames = self.num_frames, frames.stop - frames.start

        def written(buffer, values, frame_dim=1):
            return _write_frames(buffer, values, frames, num_frames, frame_dim)

        def per_layer(values):  # [L, B * t, ...] -> [B, L, t, ...]
            return per_clip(values.transpose(0, 1), self.batch_size).transpose(1, 2)

        if self.holds_stride4_features is None:  # decided at the first chunk, from the size of the clip's maps
            # (a single chunk holds them without asking their size, which may be symbolic under torch.export)
            self.holds_stride4_features = (
                chunk_frames == num_frames
                or chunk.stride4_features.nbytes * num_frames // chunk_frames <= self.stride4_features_hold_bytes
            )
        if self.holds_stride4_features:
            self.stride4_features = written(self.stride4_features, per_clip(chunk.stride4_features, self.video_batch_size))
        self.memory = written(self.memory, per_clip(chunk.memory, self.batch_size))
        self.spatial_shapes_list = chunk.spatial_shapes_list
        self.hidden_states = written(self.hidden_states, per_layer(chunk.hidden_states), 2)
        self.boxes = written(self.boxes, per_layer(chunk.boxes), 2)
        self.references = written(self.references, per_layer(chunk.references), 2)
        if not self.key_states:  # the first chunk: one buffer per FPN stage
            stages = len(chunk.key_values)
            self.key_states, self.value_states, self.key_padding_masks = [None] * stages, [None] * stages, [None] * stages
        for stage, key_values in enumerate(chunk.key_values):
            stage_batch, num_heads, _, head_dim = key_values.key_states.shape
            frames_apart = (stage_batch, num_heads, chunk_frames, -1, head_dim)
            self.key_states[stage] = written(self.key_states[stage], key_values.key_states.reshape(frames_apart), 2)
            self.value_states[stage] = written(self.value_states[stage], key_values.value_states.reshape(frames_apart), 2)
            masks = key_values.padding_mask.view(stage_batch, chunk_frames, -1)
            self.key_padding_masks[stage] = written(self.key_padding_masks[stage], masks)
        self.recorded.append(chunk.recorded)

    def pixel_decoder_key_values(self) -> list[PixelDecoderKeyValues]:
        """Every FPN stage's keys and values over all frames of the clip."""
        return [
            PixelDecoderKeyValues(keys.flatten(2, 3), values.flatten(2, 3), masks.flatten(1))
            for keys, values, masks in zip(self.key_states, self.value_states, self.key_padding_masks)
        ]

    def stride4_features_of(self, frames: slice, backbone) -> torch.Tensor:
        """The stride-4 backbone maps `[B_video * t, C, h, w]` of `frames`: held from the encoding pass, or recomputed
        (the `backbone`'s first stage alone)."""
        if self.holds_stride4_features:
            return self.stride4_features[:, frames].flatten(0, 1)
        pixel_values = self.pixel_values[:, frames].flatten(0, 1)
        return backbone(pixel_values, num_frames=frames.stop - frames.start, num_stages=1)[0]

    def write_mask_features(self, frames: slice, mask_features: torch.Tensor) -> None:
        """Stores the mask pass's mask features `[B, t, mask_dim, h, w]` of `frames`."""
        self.mask_features = _write_frames(self.mask_features, mask_features, frames, self.num_frames, 1)

    def recorded_over_clip(self) -> RecordedChunk:
        """The recorded hidden states and attentions over all frames (`[batch * T, ...]` tensors)."""
        chunks, batch_size = self.recorded, self.batch_size
        return RecordedChunk(
            backbone_hidden_states=_per_frame([chunk.backbone_hidden_states for chunk in chunks], self.video_batch_size),
            encoder_hidden_states=_per_frame([chunk.encoder_hidden_states for chunk in chunks], batch_size),
            encoder_attentions=_per_frame([chunk.encoder_attentions for chunk in chunks], batch_size),
            decoder_hidden_states=_per_frame([chunk.decoder_hidden_states for chunk in chunks], batch_size),
            decoder_attentions=_per_frame([chunk.decoder_attentions for chunk in chunks], batch_size),
            cross_attentions=_per_frame([chunk.cross_attentions for chunk in chunks], batch_size),
        )


class MaskHead(Protocol):
    """What takes the FPN's stride-4 maps in the mask pass (the task model's dynamic mask head)."""

    def prepare(self, clip: ClipEncoding) -> None:
        """Called once after the encoding pass, with the decoder's outputs of every frame (e.g. to select queries)."""

    def __call__(self, frames: slice, stride4_maps: torch.Tensor) -> None:
        """Takes the maps `[B, t, d_model, h/4, w/4]` of `frames`, before the FPN's final convolution."""


__all__ = [
    "ClipEncoding",
    "DecoderQueries",
    "FrameChunkEncoding",
    "MaskHead",
    "OnlineTrack",
    "PixelDecoderKeyValues",
    "RecordedChunk",
    "TextFeatures",
    "frame_chunks",
    "per_clip",
]
