"""The typed run configuration.

One pydantic model per component, a docstring per field, frozen after parsing (`sections.py`). A run is one YAML or
TOML file plus `--set a.b=c` overrides (`files.py`); an unknown key or a bad value is an error naming the dotted
key and what is allowed. pydantic does the validation (why not hand-written: its messages already name the field
and the accepted values). `rollout.engine_kwargs` is checked against vLLM's own engine arguments
(`engine_args.py`). Settings prolora refuses (a quantized base with full-rank or DoRA training, vLLM sleep level
2, sleep mode on the CPU) are checked with their reasons in `refusals.py`.
"""

from shared.config.files import ConfigError, apply_override, config_to_yaml, load_config, read_config_file
from shared.config.sections import (
    AlgoConfig,
    Baseline,
    BertScoreConfig,
    Config,
    DpoLoss,
    EvalConfig,
    HackingConfig,
    KLEstimator,
    LogConfig,
    LoraConfig,
    LossAgg,
    ModelConfig,
    PairFormat,
    Quantization,
    ReferenceConfig,
    RewardModelConfig,
    RewardsConfig,
    RewardSpec,
    RolloutConfig,
    RougeConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "AlgoConfig",
    "Baseline",
    "BertScoreConfig",
    "Config",
    "ConfigError",
    "DpoLoss",
    "EvalConfig",
    "HackingConfig",
    "KLEstimator",
    "LogConfig",
    "LoraConfig",
    "LossAgg",
    "ModelConfig",
    "PairFormat",
    "Quantization",
    "ReferenceConfig",
    "RewardModelConfig",
    "RewardSpec",
    "RewardsConfig",
    "RolloutConfig",
    "RougeConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_override",
    "config_to_yaml",
    "load_config",
    "read_config_file",
]
