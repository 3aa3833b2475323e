"""Pydantic models of an experiment: the one place where defaults live."""

from fedmtl.config.experiment import EvaluationConfig, ExperimentConfig, OutputConfig
from fedmtl.config.loading import ConfigError, config_from_dict, dump_config, load_config

__all__ = [
    "ConfigError",
    "EvaluationConfig",
    "ExperimentConfig",
    "OutputConfig",
    "config_from_dict",
    "dump_config",
    "load_config",
]
