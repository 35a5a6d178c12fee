"""ReferFormer for the Hugging Face ecosystem."""

from .configuration_referformer import (
    ReferFormerConfig,
    ReferFormerSwinBackboneConfig,
    ReferFormerTimmBackboneConfig,
    ReferFormerVideoSwinBackboneConfig,
)
