"""ONNX export of ReferFormer: named inputs and outputs, any number of clips, frames and words.

    onnx_program = export_onnx(model, frame_size=(360, 640))
    onnx_program.save("referformer.onnx")

The graph takes `pixel_values` `[B, T, 3, H, W]`, `pixel_mask` `[B, T, H, W]`, `input_ids` and `attention_mask`
`[B, L]` (one sentence per clip) and returns the model's outputs under their names: `logits`, `pred_boxes`,
`pred_masks`, `reference_points`, `auxiliary_outputs.<layer>.logits` ... (`ReferFormerSegmentationOutput` flattened
in order). B, T and L are free; the frame size (H, W) is fixed at export, since the feature levels' sizes derive from
it. The deformable-attention operator becomes standard ONNX (`referformer.kernels.onnx_translation_table`).
"""

import torch
from torch.utils import _pytree as pytree

try:  # the compiled operator ships with the installed package only (a saved folder's remote code runs, and exports,
    # the PyTorch implementation)
    from referformer.kernels import onnx_translation_table
except ImportError:

    def onnx_translation_table() -> dict:
        return {}


__all__ = ["export_onnx", "export_to_onnx"]

# Example sizes the graph is traced with: torch.export specializes sizes 0 and 1, so batch and frames start at 2.
EXAMPLE_BATCH_SIZE, EXAMPLE_FRAMES, EXAMPLE_TEXT_LENGTH = 2, 2, 8


def _example_inputs(config, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs of the traced call: random frames, no padding, sentences of one non-padding token repeated."""
    text_config = config.text_config
    token = (text_config.pad_token_id + 1) % text_config.vocab_size
    video_shape, text_shape = (EXAMPLE_BATCH_SIZE, EXAMPLE_FRAMES), (EXAMPLE_BATCH_SIZE, EXAMPLE_TEXT_LENGTH)
    return {
        "pixel_values": torch.randn(*video_shape, 3, height, width, device=device),
        "pixel_mask": torch.ones(*video_shape, height, width, dtype=torch.long, device=device),
        "input_ids": torch.full(text_shape, token, dtype=torch.long, device=device),
        "attention_mask": torch.ones(text_shape, dtype=torch.long, device=device),
    }


def text_length_dim(config) -> torch.export.Dim:
    """The free text length: bounded by the text encoder's positions (RoBERTa's start after the padding index, hence
    - 2)."""
    return torch.export.Dim("text_length", min=2, max=config.text_config.max_position_embeddings - 2)


def _dynamic_shapes(config) -> dict[str, dict[int, torch.export.Dim]]:
    """Batch, frames and text length free."""
    batch = torch.export.Dim("batch_size", min=1)
    frames = torch.export.Dim("num_frames", min=1)
    text_length = text_length_dim(config)
    return {
        "pixel_values": {0: batch, 1: frames},
        "pixel_mask": {0: batch, 1: frames},
        "input_ids": {0: batch, 1: text_length},
        "attention_mask": {0: batch, 1: text_length},
    }


def _output_names(exported: torch.export.ExportedProgram) -> list[str]:
    """The names of the exported program's flattened outputs: their keys and list indices in the output, joined by
    dots (`logits`, `auxiliary_outputs.0.logits`)."""
    out_spec = exported.call_spec.out_spec
    paths, _ = pytree.tree_flatten_with_path(pytree.tree_unflatten(range(out_spec.num_leaves), out_spec))
    return [
        ".".join(str(key.key if isinstance(key, pytree.MappingKey) else key.idx) for key in path) for path, _ in paths
    ]


def export_onnx(model: torch.nn.Module, frame_size: tuple[int, int]) -> torch.onnx.ONNXProgram:
    """Exports `model` (a `ReferFormerForReferringVideoObjectSegmentation` in eval mode) for frames of `frame_size`
    (height, width, padding included). Needs the `export` extra (`onnxscript`)."""
    config = model.config
    if config.frame_chunk_size is not None:
        raise ValueError(
            f"ONNX export runs the frames in one chunk (the number of frames stays free): set "
            f"model.config.frame_chunk_size = None (it is {config.frame_chunk_size})."
        )
    if config.online:
        raise ValueError("ONNX export of online (OnlineRefer) models is not supported: the track is not a tensor.")
    height, width = frame_size
    return export_to_onnx(model, _example_inputs(config, height, width, model.device), _dynamic_shapes(config))


def export_to_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    dynamic_shapes: dict[str, dict[int, torch.export.Dim] | None],
    output_names: list[str] | None = None,
    optimize: bool = True,
) -> torch.onnx.ONNXProgram:
    """`module(**inputs)` (eval mode) exported by `torch.export` with `dynamic_shapes` and translated to ONNX, the
    deformable-attention operator as standard ONNX. Axes are named after their `Dim`; outputs `output_names`, or
    their keys and indices in the output (`logits`, `auxiliary_outputs.0.logits`). `optimize=False` skips the ONNX
    optimizer (half the time; engines that optimize the graph themselves lose nothing)."""
    exported = torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic_shapes)
    # Given an exported program, the ONNX exporter reads these names only, to name the graph's axes: each dimension
    # is named at its first input (naming it again at the others would only warn that the name is taken).
    axis_names, named = {}, set()
    for name, axes in dynamic_shapes.items():
        axes = axes or {}
        axis_names[name] = {axis: None if dim.__name__ in named else dim.__name__ for axis, dim in axes.items()}
        named.update(dim.__name__ for dim in axes.values())
    return torch.onnx.export(
        exported,
        (),
        dynamo=True,
        dynamic_shapes=axis_names,
        input_names=list(inputs),
        output_names=output_names or _output_names(exported),
        custom_translation_table=onnx_translation_table(),
        optimize=optimize,
        verbose=False,
    )
