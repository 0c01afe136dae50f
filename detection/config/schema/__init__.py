"""The configuration schema: every key a YAML config may set, with its type and default.

``run`` holds the root ``Config`` and the data / optimizer / train / eval sections; ``model`` the detector
sections (one per ``model.type``); ``weighting`` the loss-weighting sections (one per ``weighting.type``).
"""
from detection.config.schema.model import (MODEL_TYPES, AnchorConfig, AssignerConfig, BackboneConfig, CoderConfig,
                                           DenseLossConfig, DenseTestConfig, FasterRCNNConfig, FPNConfig, HeadConfig,
                                           HeadLossConfig, MaskHeadConfig, MaskRCNNConfig, ModelConfig, ProposalsConfig,
                                           RetinaLossConfig, RetinaNetConfig, RoIHeadConfig, RPNConfig, SamplerConfig,
                                           TestConfig)
from detection.config.schema.run import (IMAGENET_MEAN, IMAGENET_STD, Config, DataConfig, EvalConfig, OptimizerConfig,
                                         ShapesConfig, TrainConfig)
from detection.config.schema.weighting import (WEIGHTING_TYPES, ALWAConfig, AVWConfig, DWAConfig, FixedConfig,
                                               RLOConfig, UncertaintyConfig, WeightingConfig, WindowedConfig)

__all__ = [
    "ALWAConfig",
    "AVWConfig",
    "AnchorConfig",
    "AssignerConfig",
    "BackboneConfig",
    "CoderConfig",
    "Config",
    "DWAConfig",
    "DataConfig",
    "DenseLossConfig",
    "DenseTestConfig",
    "EvalConfig",
    "FPNConfig",
    "FasterRCNNConfig",
    "FixedConfig",
    "HeadConfig",
    "HeadLossConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_TYPES",
    "MaskHeadConfig",
    "MaskRCNNConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ProposalsConfig",
    "RLOConfig",
    "RPNConfig",
    "RetinaLossConfig",
    "RetinaNetConfig",
    "RoIHeadConfig",
    "SamplerConfig",
    "ShapesConfig",
    "TestConfig",
    "TrainConfig",
    "UncertaintyConfig",
    "WEIGHTING_TYPES",
    "WeightingConfig",
    "WindowedConfig",
]
