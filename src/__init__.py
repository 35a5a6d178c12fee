"""ReferFormer for the Hugging Face ecosystem.

Importing the package registers the config and models with the transformers Auto classes (`AutoModel`: the base
`ReferFormerModel`; `AutoModelForZeroShotObjectDetection`: the segmentation model) and the pipeline task
"referring-video-object-segmentation" with `transformers.pipeline`, and marks them so that a saved model folder
carries its code: `auto_map` for both Auto classes, and the pipeline named in `custom_pipelines`, so that the folder
loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotObjectDetection, AutoProcessor, AutoVideoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_referformer import (
    ReferFormerConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
from .modeling_referformer import (
    ReferFormerForReferringVideoObjectSegmentation,
    ReferFormerModel,
    ReferFormerModelOutput,
    ReferFormerPreTrainedModel,
    ReferFormerSegmentationOutput,
)
from .pipeline_referformer import TASK as PIPELINE_TASK
from .pipeline_referformer import ReferringVideoObjectSegmentationPipeline
from .processing_referformer import ReferFormerProcessor, ReferFormerVideoProcessor


# The task Auto class of the segmentation model. transformers has no referring (video) segmentation class; the
# closest is the one of text-prompted detection: GroundingDINO, like ReferFormer a Deformable DETR whose queries are
# conditioned on a sentence, takes the same inputs (`pixel_values`, `pixel_mask`, `input_ids`, `attention_mask`) and
# returns the same per-query `logits` and `pred_boxes` (ReferFormer adds `pred_masks`); OWL-ViT/OWLv2 are there too.
# Not `AutoModelForMaskGeneration` (SAM, SAM2 and SAM3 trackers): geometric prompts (points, boxes) and IoU scores.
# The segmentation classes are not prompted by text (universal, instance, semantic segmentation) or deprecated
# (`AutoModelForImageSegmentation`); CLIPSeg's and SAM3's text-prompted segmentation models have no task Auto class.
SEGMENTATION_AUTO_CLASS = AutoModelForZeroShotObjectDetection

AutoConfig.register(ReferFormerConfig.model_type, ReferFormerConfig, exist_ok=True)
AutoModel.register(ReferFormerConfig, ReferFormerModel, exist_ok=True)
SEGMENTATION_AUTO_CLASS.register(ReferFormerConfig, ReferFormerForReferringVideoObjectSegmentation, exist_ok=True)
AutoVideoProcessor.register(ReferFormerConfig, ReferFormerVideoProcessor, exist_ok=True)
AutoProcessor.register(ReferFormerConfig, ReferFormerProcessor, exist_ok=True)
ReferFormerConfig.register_for_auto_class()
ReferFormerModel.register_for_auto_class("AutoModel")
ReferFormerForReferringVideoObjectSegmentation.register_for_auto_class(SEGMENTATION_AUTO_CLASS.__name__)
ReferFormerVideoProcessor.register_for_auto_class("AutoVideoProcessor")
ReferFormerProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=ReferringVideoObjectSegmentationPipeline,
    pt_model=SEGMENTATION_AUTO_CLASS,
    type="multimodal",
)
# A saved segmentation model carries the pipeline; with this package imported, its registered pipeline serves the task.
ReferFormerForReferringVideoObjectSegmentation.pipeline_class = ReferringVideoObjectSegmentationPipeline
ReferFormerConfig.package_pipeline_tasks = frozenset({PIPELINE_TASK})

__all__ = [
    "ReferFormerConfig",
    "ReferFormerForReferringVideoObjectSegmentation",
    "ReferFormerModel",
    "ReferFormerModelOutput",
    "ReferFormerPreTrainedModel",
    "ReferFormerProcessor",
    "ReferFormerSegmentationOutput",
    "ReferFormerSwinBackboneConfig",
    "ReferFormerTimmBackboneConfig",
    "ReferFormerVideoProcessor",
    "ReferFormerVideoSwinBackboneConfig",
    "ReferringVideoObjectSegmentationPipeline",
]
