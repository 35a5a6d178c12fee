"""ReferFormer for the Hugging Face ecosystem.

Importing the package registers the config and models with the transformers Auto classes, and marks them so that
`save_pretrained` writes the code needed by `AutoModel.from_pretrained(folder, trust_remote_code=True)`; registers the
pipeline task "referring-video-object-segmentation" with `transformers.pipeline`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor, AutoVideoProcessor
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


AutoConfig.register(ReferFormerConfig.model_type, ReferFormerConfig, exist_ok=True)
AutoModel.register(ReferFormerConfig, ReferFormerModel, exist_ok=True)
AutoVideoProcessor.register(ReferFormerConfig, ReferFormerVideoProcessor, exist_ok=True)
AutoProcessor.register(ReferFormerConfig, ReferFormerProcessor, exist_ok=True)
ReferFormerConfig.register_for_auto_class()
ReferFormerModel.register_for_auto_class("AutoModel")
# A saved segmentation model maps "AutoModel" to itself, so remote code loads the complete model in one line.
ReferFormerForReferringVideoObjectSegmentation.register_for_auto_class("AutoModel")
ReferFormerVideoProcessor.register_for_auto_class("AutoVideoProcessor")
ReferFormerProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=ReferringVideoObjectSegmentationPipeline,
    pt_model=ReferFormerForReferringVideoObjectSegmentation,
    type="multimodal",
)

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
