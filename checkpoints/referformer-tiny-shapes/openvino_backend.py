"""OpenVINO backend of `referformer.inference.ReferringVideoSegmenter` (`backend="openvino"`): the model exported to
ONNX and run by OpenVINO's CPU plugin, the fastest way to run ReferFormer on CPUs with bf16 units (see the
performance docs), behind the same API and with the same results.

    segmenter = ReferringVideoSegmenter.from_pretrained("path/to/model", backend="openvino", dtype="bf16")

The graph is the model's forward with every query's masks of the last decoder layer (`AllQueriesGraph`); the referred
query is selected from its logits by the model's own rule, so one graph serves the whole-video, window and streaming
protocols. It is exported once per frame size, with the number of frames, sentences and tokens free, and compiled
for each window's shapes (OpenVINO's CPU transformations need static frame counts): a video's windows have at most
two shapes (full and last). Export, compilation and the first forward take about 50 s for the released model at
360x640 and 5 frames (84-110 s at 36 frames), seconds for small models. A window is one graph run over all its
frames, so memory grows with the window (8 GiB at 36 frames of 360x640 in bf16, 11 in fp32): give long videos a
`window`. Needs the `export` extra (onnxscript, openvino).
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .modeling_referformer import ReferFormerSegmentationOutput, select_referred_query
from .onnx_export import export_to_onnx, text_length_dim


__all__ = ["AllQueriesGraph", "OpenVINOReferFormer", "openvino_fastest_dtype"]

OUTPUT_NAMES = ("logits", "pred_boxes", "pred_masks")
# OpenVINO's INFERENCE_PRECISION_HINT of each dtype the CPU plugin runs.
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}
COMPILED_SHAPES_KEPT = 2  # a video's full windows and its last one


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError("backend='openvino' needs the `export` extra: pip install -e '.[export]'.") from error
    return openvino


def openvino_fastest_dtype() -> torch.dtype:
    """bf16 where OpenVINO's CPU plugin has bf16 units (`OPTIMIZATION_CAPABILITIES`), otherwise fp32."""
    capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return torch.bfloat16 if "BF16" in capabilities else torch.float32


class AllQueriesGraph(nn.Module):
    """The exported computation: `forward(pixel_values [1, T, 3, H, W], input_ids [S, L], attention_mask [S, L],
    resized_sizes [1, 2])` returns class logits `[S, T, Q, K]`, boxes `[S, T, Q, 4]` and every query's stride-4 mask
    logits `[S, T, Q, H/4, W/4]` of the last decoder layer (`OUTPUT_NAMES`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask, resized_sizes):
        outputs = self.model(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            resized_sizes=resized_sizes,
            output_all_queries=True,
        )
        return outputs.logits, outputs.pred_boxes, outputs.pred_masks


@contextmanager
def _one_frame_chunk(model: nn.Module):
    """The model with all frames in one chunk (a frame-chunk loop has a data-dependent trip count: not exportable)."""
    chunk = model.config.frame_chunk_size
    model.config.frame_chunk_size = None
    try:
        yield model
    finally:
        model.config.frame_chunk_size = chunk


class OpenVINOReferFormer:
    """A ReferFormer model run by OpenVINO's CPU plugin in `dtype` (fp32 or bf16) on `threads` threads, called like
    the model: `engine(pixel_values=..., input_ids=..., attention_mask=..., resized_sizes=...,
    output_all_queries=...)` returns a `ReferFormerSegmentationOutput` (float32 tensors) with the referred query of
    each sentence in `selected_query_indices` and, unless `output_all_queries`, only its masks (`[S, T, 1, h, w]`).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, threads: int | None = None):
        if model.config.online:
            raise ValueError("backend='openvino' does not run online (OnlineRefer) models: their track is not a tensor.")
        if dtype not in PRECISION_HINTS:
            raise ValueError(f"backend='openvino' runs fp32 or bf16, not {dtype}.")
        self.core = _openvino().Core()
        self.model = model.eval()
        self.dtype = dtype
        self.threads = threads or torch.get_num_threads()
        self._folder = tempfile.TemporaryDirectory(prefix="referformer-openvino-")
        self._graphs: dict[tuple[int, int], Path] = {}  # frame size -> exported ONNX file
        self._compiled: OrderedDict[tuple, object] = OrderedDict()  # input shapes -> compiled model

    def graph_file(self, height: int, width: int) -> Path:
        """The ONNX graph for frames of `height` x `width`, exported on first use."""
        if (height, width) not in self._graphs:
            path = Path(self._folder.name) / f"referformer-{height}x{width}.onnx"
            frames = torch.export.Dim("num_frames", min=1, max=4096)
            sentences = torch.export.Dim("num_sentences", min=1, max=4096)
            text_shape = {0: sentences, 1: text_length_dim(self.model.config)}
            example = {  # 2 frames and sentences: torch.export specializes sizes 0 and 1
                "pixel_values": torch.zeros(1, 2, 3, height, width),
                "input_ids": torch.full((2, 8), self.model.config.text_config.pad_token_id + 1),
                "attention_mask": torch.ones(2, 8, dtype=torch.long),
                "resized_sizes": torch.tensor([[height, width]]),
            }
            dynamic_shapes = {
                "pixel_values": {1: frames}, "input_ids": text_shape, "attention_mask": text_shape, "resized_sizes": None
            }
            with torch.no_grad(), _one_frame_chunk(self.model):
                # Without the ONNX optimizer: OpenVINO optimizes the graph itself, and the export takes half the time.
                program = export_to_onnx(
                    AllQueriesGraph(self.model).eval(), example, dynamic_shapes, list(OUTPUT_NAMES), optimize=False
                )
            program.save(str(path))
            self._graphs[(height, width)] = path
        return self._graphs[(height, width)]

    def compiled_model(self, shapes: dict[str, tuple[int, ...]]):
        """The graph compiled for these input shapes (the last `COMPILED_SHAPES_KEPT` kept)."""
        key = tuple(shapes.values())
        if key not in self._compiled:
            graph = self.core.read_model(str(self.graph_file(*shapes["pixel_values"][-2:])))
            graph.reshape(shapes)
            self._compiled[key] = self.core.compile_model(
                graph,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.dtype],
                    "INFERENCE_NUM_THREADS": self.threads,
                    "PERFORMANCE_HINT": "LATENCY",
                },
            )
            while len(self._compiled) > COMPILED_SHAPES_KEPT:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return self._compiled[key]

    def __call__(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        resized_sizes: torch.Tensor,
        output_all_queries: bool = False,
    ) -> ReferFormerSegmentationOutput:
        if pixel_values.shape[0] != 1:
            raise ValueError(f"backend='openvino' runs one video at a time, got {pixel_values.shape[0]}.")
        feeds = {
            "pixel_values": pixel_values.float().cpu().numpy(),
            "input_ids": input_ids.cpu().numpy(),
            "attention_mask": attention_mask.cpu().numpy(),
            "resized_sizes": torch.as_tensor(resized_sizes).view(1, 2).cpu().numpy(),
        }
        compiled = self.compiled_model({name: feed.shape for name, feed in feeds.items()})
        results = compiled(feeds)
        logits, boxes, masks = (torch.from_numpy(np.array(results[compiled.output(name)])) for name in OUTPUT_NAMES)
        selected = select_referred_query(logits)
        if not output_all_queries:
            masks = masks.gather(2, selected.view(-1, 1, 1, 1, 1).expand(-1, masks.shape[1], 1, *masks.shape[-2:]))
        return ReferFormerSegmentationOutput(
            logits=logits, pred_boxes=boxes, pred_masks=masks, selected_query_indices=selected
        )
