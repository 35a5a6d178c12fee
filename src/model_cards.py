"""Model cards (README.md with Hub front matter) of converted official checkpoints and of models trained with
`scripts/run_rvos.py train`, both on the metadata of [`card_metadata`]: license, library, the Hub task and tags,
datasets, base model and a `model-index` with the scores the card states.

Converted checkpoints ([`model_card`]): the backbone is recognized from the (inferred) config; the training data comes
from the checkpoint's training arguments (`dataset_file`, `pretrained_weights`) or is given by name (one of
`TRAINING_SETTINGS`). Scores are those the authors report for the released models (README model zoo of
github.com/wjn922/ReferFormer; for OnlineRefer checkpoints, those of github.com/wudongming97/OnlineRefer), listed only
for a (backbone, training data) pair they report: nothing is listed for an unknown or unreleased setting. Trained models ([`trained_model_card`]): data, recipe and the scores measured after
training.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import EvalResult, ModelCardData

from .backbone_weights import RESNET_NAMES, TIMM_RESNETS
from .pipeline_referformer import TASK


ORIGINAL_REPOSITORY = "https://github.com/wjn922/ReferFormer"
PAPER_URL = "https://arxiv.org/abs/2201.00487"
CITATION = """@article{wu2022referformer,
  title={Language as Queries for Referring Video Object Segmentation},
  author={Jiannan Wu and Yi Jiang and Peize Sun and Zehuan Yuan and Ping Luo},
  journal={arXiv preprint arXiv:2201.00487},
  year={2022},
}"""
ONLINEREFER_REPOSITORY = "https://github.com/wudongming97/OnlineRefer"
ONLINEREFER_PAPER_URL = "https://arxiv.org/abs/2307.09356"
ONLINEREFER_CITATION = """@inproceedings{wu2023onlinerefer,
  title={OnlineRefer: A Simple Online Baseline for Referring Video Object Segmentation},
  author={Dongming Wu and Tiancai Wang and Yuang Zhang and Xiangyu Zhang and Jianbing Shen},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2023},
}"""
# The Hub task of the cards (`pipeline_tag`, one of the Hub's tasks: huggingface.js `packages/tasks/src/pipelines.ts`).
# The Hub has no video or referring segmentation task; "image-segmentation" is its segmentation task (a mask per
# object, text-prompted CLIPSeg is there), which a video model does frame by frame. Not "mask-generation": SAM's
# class-agnostic masks from point or box prompts (or a point grid), without text. The task the package's pipeline
# registers, "referring-video-object-segmentation", is in `TAGS`; `pipeline(model=folder, trust_remote_code=True)`
# reads it from config.json's `custom_pipelines`, not from the card.
HUB_PIPELINE_TAG = "image-segmentation"
TAGS = [TASK, "video-object-segmentation", "referformer"]
LICENSE = "apache-2.0"  # the license of the original code and weights


class TrainingSetting(NamedTuple):
    title: str
    description: str
    datasets: tuple[str, ...]  # ids of the card's `datasets` (`BENCHMARK_IDS` values)


# Benchmark names the cards use -> the ids of their `datasets` and `model-index` entries.
BENCHMARK_IDS = {
    "Ref-YouTube-VOS": "ref-youtube-vos",
    "Ref-DAVIS17": "ref-davis17",
    "A2D-Sentences": "a2d-sentences",
    "JHMDB-Sentences": "jhmdb-sentences",
    "RefCOCO": "refcoco",
    "RefCOCO+": "refcoco+",
    "RefCOCOg": "refcocog",
}
_REFCOCO_IDS = ("refcoco", "refcoco+", "refcocog")


# The settings of the released models (`--training_data` of the converter).
TRAINING_SETTINGS = {
    "ref-youtube-vos": TrainingSetting(
        "Ref-YouTube-VOS",
        "Ref-YouTube-VOS, fine-tuned from the RefCOCO/RefCOCO+/RefCOCOg pretraining weights",
        ("ref-youtube-vos", *_REFCOCO_IDS),
    ),
    "ref-youtube-vos-scratch": TrainingSetting(
        "Ref-YouTube-VOS from scratch",
        "Ref-YouTube-VOS only, from scratch (no RefCOCO/+/g pretraining)",
        ("ref-youtube-vos",),
    ),
    "joint": TrainingSetting(
        "joint training", "Ref-YouTube-VOS and RefCOCO/RefCOCO+/RefCOCOg jointly", ("ref-youtube-vos", *_REFCOCO_IDS)
    ),
    "refcoco-pretrain": TrainingSetting(
        "RefCOCO/+/g pretraining",
        "RefCOCO, RefCOCO+ and RefCOCOg (the image pretraining stage, one frame per clip)",
        _REFCOCO_IDS,
    ),
    "a2d-sentences": TrainingSetting(
        "A2D-Sentences",
        "A2D-Sentences, fine-tuned from the RefCOCO/RefCOCO+/RefCOCOg pretraining weights",
        ("a2d-sentences", *_REFCOCO_IDS),
    ),
    "a2d-sentences-scratch": TrainingSetting(
        "A2D-Sentences from scratch",
        "A2D-Sentences only, from scratch (no RefCOCO/+/g pretraining; 6 frames per clip)",
        ("a2d-sentences",),
    ),
}

# Scores (%) reported by the authors per (training setting, backbone): benchmark -> metric -> score.
_YTVOS, _DAVIS, _A2D, _JHMDB = "Ref-YouTube-VOS", "Ref-DAVIS17", "A2D-Sentences", "JHMDB-Sentences"


def _jf(jf: float, j: float, f: float) -> dict[str, float]:
    return {"J&F": jf, "J": j, "F": f}


def _iou_map(overall_iou: float, mean_iou: float, average_precision: float) -> dict[str, float]:
    return {"overall IoU": overall_iou, "mean IoU": mean_iou, "mAP": average_precision}


def _refcoco(precisions: tuple[float, float, float], overall_ious: tuple[float, float, float]) -> dict:
    return {
        dataset: {"P@0.5 (REC)": precision, "overall IoU (RIS)": overall_iou}
        for dataset, precision, overall_iou in zip(("RefCOCO", "RefCOCO+", "RefCOCOg"), precisions, overall_ious)
    }


PAPER_SCORES: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    # Ref-DAVIS17: the Ref-YouTube-VOS models evaluated without fine-tuning.
    ("ref-youtube-vos", "ResNet-50"): {_YTVOS: {"J&F": 55.6, "CFBI J&F": 59.4}, _DAVIS: _jf(58.5, 55.8, 61.3)},
    ("ref-youtube-vos", "ResNet-101"): {_YTVOS: {"J&F": 57.3, "CFBI J&F": 60.3}},
    ("ref-youtube-vos", "Swin-T"): {_YTVOS: {"J&F": 58.7, "CFBI J&F": 61.2}},
    ("ref-youtube-vos", "Swin-L"): {_YTVOS: {"J&F": 62.4, "CFBI J&F": 63.3}, _DAVIS: _jf(60.5, 57.6, 63.4)},
    ("ref-youtube-vos", "Video-Swin-T"): {_YTVOS: {"J&F": 59.4}},
    ("ref-youtube-vos", "Video-Swin-S"): {_YTVOS: {"J&F": 60.1}},
    ("ref-youtube-vos", "Video-Swin-B"): {_YTVOS: {"J&F": 62.9}, _DAVIS: _jf(61.1, 58.1, 64.1)},
    ("ref-youtube-vos-scratch", "Video-Swin-T"): {_YTVOS: {"J&F": 56.0}},
    ("joint", "ResNet-50"): {_YTVOS: _jf(58.7, 57.4, 60.1)},
    ("joint", "ResNet-101"): {_YTVOS: _jf(59.3, 58.1, 60.4)},
    ("joint", "Swin-L"): {_YTVOS: _jf(64.2, 62.3, 66.2)},
    ("joint", "Video-Swin-T"): {_YTVOS: _jf(62.6, 59.9, 63.3)},
    ("joint", "Video-Swin-S"): {_YTVOS: _jf(63.3, 61.4, 65.2)},
    ("joint", "Video-Swin-B"): {_YTVOS: _jf(64.9, 62.8, 67.0)},
    # JHMDB-Sentences: the A2D-Sentences models evaluated without fine-tuning.
    ("a2d-sentences-scratch", "Video-Swin-T"): {_A2D: _iou_map(72.3, 64.1, 48.6), _JHMDB: _iou_map(70.0, 69.3, 39.1)},
    ("a2d-sentences", "Video-Swin-T"): {_A2D: _iou_map(77.6, 69.6, 52.8), _JHMDB: _iou_map(71.9, 71.0, 42.2)},
    ("a2d-sentences", "Video-Swin-S"): {_A2D: _iou_map(77.7, 69.8, 53.9), _JHMDB: _iou_map(72.8, 71.5, 42.4)},
    ("a2d-sentences", "Video-Swin-B"): {_A2D: _iou_map(78.6, 70.3, 55.0), _JHMDB: _iou_map(73.0, 71.8, 43.7)},
    # The pretraining weights evaluated on the RefCOCO/+/g validation sets (one frame).
    ("refcoco-pretrain", "ResNet-50"): _refcoco((85.0, 79.2, 79.0), (71.1, 64.1, 64.1)),
    ("refcoco-pretrain", "ResNet-101"): _refcoco((85.4, 75.8, 79.9), (71.8, 61.1, 64.9)),
    ("refcoco-pretrain", "Swin-T"): _refcoco((86.7, 77.2, 80.6), (72.9, 62.4, 66.1)),
    ("refcoco-pretrain", "Swin-L"): _refcoco((89.8, 80.0, 83.9), (77.1, 65.8, 69.3)),
}

# OnlineRefer's released models (its README; Ref-DAVIS17: the Ref-YouTube-VOS models without fine-tuning).
ONLINEREFER_SCORES: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("ref-youtube-vos", "ResNet-50"): {_YTVOS: _jf(57.3, 55.6, 58.9), _DAVIS: _jf(59.3, 55.7, 62.9)},
    ("ref-youtube-vos", "Swin-L"): {_YTVOS: _jf(63.5, 61.6, 65.5), _DAVIS: _jf(64.8, 61.6, 67.7)},
}


class Method(NamedTuple):
    """The method a converted checkpoint implements: its name, a one-sentence description with the paper's link,
    the original repository, citation and the scores its authors report."""

    name: str
    description: str
    repository: str
    citation: str
    scores: dict[tuple[str, str], dict[str, dict[str, float]]]


REFERFORMER = Method(
    "ReferFormer",
    f"[ReferFormer]({PAPER_URL}) (\"Language as Queries for Referring Video Object Segmentation\", Wu et al., CVPR "
    "2022) segments and tracks the object that a sentence refers to in every frame of a video.",
    ORIGINAL_REPOSITORY,
    CITATION,
    PAPER_SCORES,
)
ONLINEREFER = Method(
    "OnlineRefer",
    f"[OnlineRefer]({ONLINEREFER_PAPER_URL}) (\"OnlineRefer: A Simple Online Baseline for Referring Video Object "
    "Segmentation\", Wu et al., ICCV 2023) segments the object that a sentence refers to frame by frame: ReferFormer's "
    "network, each frame decoded from the track of the referred object in the previous one.",
    ONLINEREFER_REPOSITORY,
    ONLINEREFER_CITATION,
    ONLINEREFER_SCORES,
)


def method_of(config) -> Method:
    """OnlineRefer for an online config (`config.online`), ReferFormer otherwise."""
    return ONLINEREFER if config.online else REFERFORMER


# (embed_dim, depths, num_heads) -> size of ReferFormer's swin_{t,s,b,l}_p4w7 and video_swin_{t,s,b}_p4w7.
SWIN_SIZES = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24)): "T",
    (96, (2, 2, 18, 2), (3, 6, 12, 24)): "S",
    (128, (2, 2, 18, 2), (4, 8, 16, 32)): "B",
    (192, (2, 2, 18, 2), (6, 12, 24, 48)): "L",
}
STANDARD_SWIN_LAYOUT = {"referformer_swin": (7, 4), "referformer_video_swin": ([8, 7, 7], [1, 4, 4])}


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint was trained on. `setting` is one of `TRAINING_SETTINGS`, or None for data without a released
    model (then no scores apply); `source` says how this was determined."""

    setting: str | None
    description: str
    source: str


def training_data_from_setting(setting: str) -> TrainingData:
    """The training data of a released setting given by name (the converter's `--training_data`)."""
    if setting not in TRAINING_SETTINGS:
        raise ValueError(f"Unknown training data {setting!r}; choose one of {', '.join(TRAINING_SETTINGS)}.")
    return TrainingData(setting, TRAINING_SETTINGS[setting].description, f"given with `--training_data {setting}`")


def training_data_from_args(args: dict) -> TrainingData | None:
    """The training data named by original training arguments (`dataset_file`, and `pretrained_weights` for the
    fine-tuned vs. from-scratch models), or None when they do not say."""
    dataset = args.get("dataset_file")
    if dataset is None:
        return None
    source = f"read from the training arguments (`dataset_file={dataset}`"
    fine_tuned_or_scratch = {"ytvos": "ref-youtube-vos", "a2d": "a2d-sentences"}
    if dataset in fine_tuned_or_scratch and "pretrained_weights" in args:
        pretrained = bool(args["pretrained_weights"])
        setting = fine_tuned_or_scratch[dataset] + ("" if pretrained else "-scratch")
        source += f", `pretrained_weights` {'set' if pretrained else 'unset'})"
        return TrainingData(setting, TRAINING_SETTINGS[setting].description, source)
    source += ")"
    if dataset in ("joint", "all"):
        setting = "joint" if dataset == "joint" else "refcoco-pretrain"
        return TrainingData(setting, TRAINING_SETTINGS[setting].description, source)
    image_datasets = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
    if dataset in fine_tuned_or_scratch:
        description = (
            f"{TRAINING_SETTINGS[fine_tuned_or_scratch[dataset]].title}; whether it started from the RefCOCO/+/g "
            "pretraining weights is not recorded (`pretrained_weights` missing), pass `--training_data` to say"
        )
    elif dataset in image_datasets:
        description = (
            f"{image_datasets[dataset]} alone (image pretraining; the released pretraining weights use RefCOCO, "
            "RefCOCO+ and RefCOCOg together)"
        )
    elif dataset == "davis":
        description = (
            "Ref-DAVIS17 (no released model is trained on it: the Ref-DAVIS17 scores are those of the Ref-YouTube-VOS "
            "models)"
        )
    elif dataset == "jhmdb":
        description = (
            "JHMDB-Sentences, which the original only evaluates on (its scores are those of the A2D-Sentences models: "
            "convert with `--training_data a2d-sentences` or `a2d-sentences-scratch` if this is one of them)"
        )
    else:
        description = f"`dataset_file={dataset}`, not a dataset of the original"
    return TrainingData(None, description, source)


def resolve_training_data(args: dict, setting: str | None = None) -> TrainingData | None:
    """The training data of a checkpoint: the released `setting` if given (it overrides the arguments), else what the
    training arguments `args` say, else None (unknown)."""
    return training_data_from_setting(setting) if setting is not None else training_data_from_args(args)


def backbone_name(backbone_config) -> str | None:
    """"ResNet-50", "Swin-T", "Video-Swin-B", ... for a standard architecture, None for any other size."""
    if backbone_config.model_type == "referformer_timm_backbone":
        architecture = TIMM_RESNETS.get(backbone_config.model_name)
        kwargs = dict(backbone_config.model_kwargs)
        if architecture is None or set(kwargs) - {"layers"}:
            return None
        name = RESNET_NAMES.get((architecture[0], tuple(kwargs.get("layers", architecture[1]))))
        return f"ResNet-{name.removeprefix('resnet')}" if name else None
    size = SWIN_SIZES.get((backbone_config.embed_dim, tuple(backbone_config.depths), tuple(backbone_config.num_heads)))
    layout = (backbone_config.window_size, backbone_config.patch_size)
    if size is None or backbone_config.mlp_ratio != 4 or layout != STANDARD_SWIN_LAYOUT[backbone_config.model_type]:
        return None
    return f"{'Video-Swin' if backbone_config.model_type == 'referformer_video_swin' else 'Swin'}-{size}"


def describe_backbone(backbone_config) -> str:
    """The backbone in words: its standard name and sizes, or the numbers of a non-standard size."""
    name = backbone_name(backbone_config)
    if backbone_config.model_type == "referformer_timm_backbone":
        kwargs = ", ".join(f"{key}={value}" for key, value in backbone_config.model_kwargs.items())
        timm_name = f"timm `{backbone_config.model_name}`" + (f" with {kwargs}" if kwargs else "")
        return f"{name} ({timm_name})" if name else f"non-standard: {timm_name}"
    family = "Video Swin Transformer" if backbone_config.model_type == "referformer_video_swin" else "Swin Transformer"
    sizes = (
        f"embedding dim {backbone_config.embed_dim}, depths {list(backbone_config.depths)}, heads "
        f"{list(backbone_config.num_heads)}, window {backbone_config.window_size}, patch {backbone_config.patch_size}"
    )
    if name is None:
        return f"non-standard {family}: {sizes}, MLP ratio {backbone_config.mlp_ratio}"
    return f"{name} ({family}, {sizes})"


def paper_scores(config, training_data: TrainingData | None) -> dict[str, dict[str, float]]:
    """The scores the authors report for this backbone and training data (empty when they report none)."""
    if training_data is None or training_data.setting is None:
        return {}
    return method_of(config).scores.get((training_data.setting, backbone_name(config.backbone_config)), {})


def _title(config, training_data: TrainingData | None) -> str:
    name, method = backbone_name(config.backbone_config) or "custom backbone", method_of(config).name
    if training_data is None or training_data.setting is None:
        return f"{method} ({name})"
    return f"{method} ({name}, {TRAINING_SETTINGS[training_data.setting].title})"


def _describe_text_encoder(text_config) -> str:
    sizes = (text_config.model_type, text_config.num_hidden_layers, text_config.hidden_size)
    if sizes == ("roberta", 12, 768):
        return "RoBERTa-base"
    return f"`{text_config.model_type}`, {_count(sizes[1], 'layer')} of hidden size {sizes[2]}"


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def card_metadata(model_name: str, datasets=(), results=None, base_model: str | None = None, split=None) -> ModelCardData:
    """The front matter of every ReferFormer card: license, library, Hub task, tags, the training `datasets`
    (ids), the `base_model` (a Hub id) when known, and a `model-index` of `results`, `{benchmark: {metric: value}}`
    with benchmark names of `BENCHMARK_IDS` (others get an id from their name), scored on `split` when known."""
    eval_results = [
        EvalResult(
            task_type=TASK,
            dataset_type=BENCHMARK_IDS.get(benchmark) or _identifier(benchmark),
            dataset_name=benchmark,
            dataset_split=split,
            metric_type=_identifier(metric),
            metric_name=metric,
            metric_value=value,
        )
        for benchmark, metrics in (results or {}).items()
        for metric, value in metrics.items()
    ]
    return ModelCardData(
        model_name=model_name,
        license=LICENSE,
        library_name="transformers",
        pipeline_tag=HUB_PIPELINE_TAG,
        tags=TAGS,
        datasets=list(datasets) or None,
        base_model=base_model,
        eval_results=eval_results or None,
    )


def front_matter(card_data: ModelCardData) -> list[str]:
    """The card's first lines: the YAML of `card_data` between `---` lines, and a blank line."""
    return ["---", card_data.to_yaml(), "---", ""]


def _identifier(name: str) -> str:
    """"J&F" -> "j_f", "Ref-YouTube-VOS" -> "ref_youtube_vos": a lower-case id of a metric or dataset name."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _usage_opening(model_id: str, sentence: str) -> list[str]:
    """The first lines of a card's "Usage" section: loading the processor and the model, preprocessing a video."""
    return [
        "## Usage",
        "",
        "```python",
        "from referformer import ReferFormerForReferringVideoObjectSegmentation, ReferFormerProcessor",
        "",
        f'processor = ReferFormerProcessor.from_pretrained("{model_id}")',
        f'model = ReferFormerForReferringVideoObjectSegmentation.from_pretrained("{model_id}").eval()',
        f'inputs = processor(videos="video.mp4", text="{sentence}")',
    ]


def usage_section(model_id: str, sentence: str) -> list[str]:
    """Markdown lines of a model card's "Usage" section: segmenting a video file with the processor and the model."""
    return _usage_opening(model_id, sentence) + [
        "outputs = model(**inputs)",
        "results = processor.post_process_referring_video_segmentation(",
        '    outputs, target_sizes=inputs["original_sizes"], resized_sizes=inputs["resized_sizes"]',
        ")",
        "```",
        "",
    ]


def online_usage_section(model_id: str, sentence: str) -> list[str]:
    """Markdown lines of an OnlineRefer card's "Usage" section: the model run frame by frame, carrying the track."""
    return _usage_opening(model_id, sentence) + [
        "track, masks = None, []",
        'for frame in range(inputs["pixel_values"].shape[1]):',
        "    outputs = model(",
        '        pixel_values=inputs["pixel_values"][:, frame : frame + 1], input_ids=inputs["input_ids"],',
        '        attention_mask=inputs["attention_mask"], track=track, output_all_queries=False,',
        "    )",
        "    track = model.update_track(outputs, track)",
        "    result = processor.post_process_referring_video_segmentation(",
        '        outputs, target_sizes=inputs["original_sizes"], resized_sizes=inputs["resized_sizes"]',
        "    )",
        '    masks.append(result[0]["masks"][0])',
        "```",
        "",
    ]


def model_card(config, training_data: TrainingData | None, checkpoint_name: str, model_id: str) -> str:
    """The README.md (front matter and text) of a converted checkpoint.

    Args:
        config: the `ReferFormerConfig` of the converted model.
        training_data: what the checkpoint was trained on, None if unknown.
        checkpoint_name: file name of the original checkpoint.
        model_id: Hub id or folder of the converted model, for the usage example.
    """
    box_refinement = "with" if config.with_box_refine else "without"
    method = method_of(config)
    title = _title(config, training_data)
    scores = paper_scores(config, training_data)
    datasets = TRAINING_SETTINGS[training_data.setting].datasets if training_data and training_data.setting else ()
    lines = [
        *front_matter(card_metadata(title, datasets, scores)),
        f"# {title}",
        "",
        f"{method.description} The weights were converted from the checkpoint `{checkpoint_name}` of [the original "
        f"implementation]({method.repository}) with `scripts/convert_checkpoint.py` of the `referformer` package "
        "(every original weight mapped).",
        "",
        "## Model",
        "",
        f"- Visual backbone: {describe_backbone(config.backbone_config)}",
        f"- Text encoder: {_describe_text_encoder(config.text_config)}",
        f"- Deformable transformer: {_count(config.encoder_layers, 'encoder layer')}, "
        f"{_count(config.decoder_layers, 'decoder layer')}, hidden size {config.d_model}, "
        f"{_count(config.num_queries, 'query', 'queries')} per frame, {box_refinement} box refinement",
        f"- Dynamic mask head: {_count(config.controller_layers, 'layer')} of {config.dynamic_mask_channels} channels "
        f"on {config.mask_dim}-channel stride-4 features",
        "",
        "## Training data",
        "",
    ]
    if training_data is None:
        lines.append(
            "Unknown: neither the checkpoint's training arguments (`dataset_file`) nor `--training_data` of the "
            "converter name it, so no scores are listed."
        )
    else:
        lines.append(f"{training_data.description}; {training_data.source}.")
    if scores:
        lines += [
            "",
            "## Results reported by the authors",
            "",
            "Scores (%) of the original model as reported in the paper and the original repository (not re-measured "
            "after the conversion):",
            "",
            "| Benchmark | Metric | Score |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {benchmark} | {metric} | {score:.1f} |"
            for benchmark, metrics in scores.items()
            for metric, score in metrics.items()
        ]
    elif training_data is not None:
        lines += ["", "The authors report no scores for this backbone and training data."]
    usage = online_usage_section if config.online else usage_section
    lines += ["", *usage(model_id, "a brown dog running on the grass"), "## License and citation",
        "",
        f"Apache-2.0, as the [original code and weights]({method.repository}).",
        "",
        "```bibtex",
        method.citation,
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Models trained with `scripts/run_rvos.py train`
# ---------------------------------------------------------------------------------------------------

SYNTHETIC_DATA = "synthetic referring shapes"


def describe_training_dataset(dataset: str, refcoco_datasets=_REFCOCO_IDS) -> tuple[str, list[str]]:
    """A `run_rvos.py train --dataset` value (with the RefCOCO datasets it uses) in words, and its dataset ids."""
    refcoco = "+".join(refcoco_datasets)
    descriptions = {
        "synthetic": (f"{SYNTHETIC_DATA} (`referformer.data_synthetic.generate_referring_shapes`)", []),
        "ref-youtube-vos": ("Ref-YouTube-VOS", ["ref-youtube-vos"]),
        "a2d-sentences": ("A2D-Sentences", ["a2d-sentences"]),
        "refcoco": (f"{refcoco} (images as one-frame clips)", list(refcoco_datasets)),
        "joint": (
            f"Ref-YouTube-VOS + {refcoco} (each image repeated as a static clip; the original's random-affine "
            "pseudo-clips are not reproduced)",
            ["ref-youtube-vos", *refcoco_datasets],
        ),
    }
    if dataset not in descriptions:
        raise ValueError(f"Unknown training dataset {dataset!r}; choose one of: {', '.join(descriptions)}.")
    return descriptions[dataset]


def _is_hub_id(name: str) -> bool:
    return not Path(name).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def trained_model_card(
    model_id: str,
    dataset: str,
    data_root: str,
    split: str,
    training_args,
    settings: dict,
    init_from: str | None = None,
    config_name: str | None = None,
    refcoco_datasets=_REFCOCO_IDS,
    results: dict | None = None,
    eval_split: str | None = None,
) -> str:
    """The README.md of a model trained with `scripts/run_rvos.py train`: data, recipe and evaluation results.

    Args:
        model_id: Hub id or folder of the model, for the title and the usage example.
        dataset, data_root, split, refcoco_datasets: the training data (`--dataset`, `--data_root`, `--split`,
            `--refcoco_datasets`).
        training_args: the `AccelerateTrainingArguments` the loop ran with (steps resolved).
        settings: the data settings actually used (`referformer.training_recipe.build_train_dataset`).
        init_from: the fine-tuned model (its card's `base_model` when it is a Hub id); or
        config_name: the preset or config file of a new model.
        results: scores of the evaluation after training (its float values are listed), on `eval_split`.
    """
    description, dataset_ids = describe_training_dataset(dataset, refcoco_datasets)
    start = f"fine-tuned from `{init_from}`" if init_from else f"new model (`--config_name {config_name}`)"
    args = training_args
    recipe = {
        "start": start,
        "clips per step and process": args.per_device_batch_size * args.gradient_accumulation_steps,
        "optimizer steps": args.max_steps,
        "learning rates (default / backbone / text encoder)": (
            f"{args.learning_rate} / {args.backbone_learning_rate} / {args.text_encoder_learning_rate}"
        ),
        "learning-rate drops (x0.1) after steps": args.lr_drop_steps or "none",
        "weight decay / gradient clipping": f"{args.weight_decay} / {args.max_grad_norm}",
        "mixed precision": args.mixed_precision,
        **{key.replace("_", " "): value for key, value in settings.items()},
    }
    scores = {key: value for key, value in (results or {}).items() if isinstance(value, float)}
    benchmark = next((name for name, id_ in BENCHMARK_IDS.items() if id_ == dataset), SYNTHETIC_DATA)
    base_model = init_from if init_from and _is_hub_id(init_from) else None
    metadata = card_metadata(model_id, dataset_ids, {benchmark: scores} if scores else None, base_model, eval_split)
    lines = [
        *front_matter(metadata),
        f"# {model_id}",
        "",
        f"A [ReferFormer]({PAPER_URL}) referring video object segmentation model trained with",
        "`scripts/run_rvos.py train`.",
        "",
        "## Training data",
        "",
        f"{description}, split `{split}` of `{data_root}`.",
        "",
        "## Training recipe",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in recipe.items()],
        "",
        "The complete options are in `training_args.json` (`python scripts/run_rvos.py train training_args.json`).",
        "",
        "## Evaluation results",
        "",
    ]
    if scores:
        lines += ["| metric | value |", "| --- | --- |", *[f"| {key} | {value:.4f} |" for key, value in scores.items()]]
        lines += ["", f"On split `{eval_split}` of `{data_root}`."]
    else:
        lines.append("Not evaluated after training (see `run_rvos.py evaluate`).")
    lines += ["", *usage_section(model_id, "the red circle")]
    return "\n".join(lines)
