"""internalize: context distillation for Hugging Face causal LMs.

    from internalize import load_config, distill
    metrics = distill(load_config("examples/over.yaml"))
"""

from .config import Config, InternalizeError, load_config
from .pipeline import distill, evaluate_artifact, synthesize_inputs

__all__ = ["Config", "InternalizeError", "distill", "evaluate_artifact", "load_config", "synthesize_inputs"]
__version__ = "0.1.0"
