"""Pure-PyTorch sleep-staging architectures: CoRe-Sleep, MC²SleepNet, CIMSleepNet.

This package imports only torch and numpy, so a model can be used without the platform. More
architectures come from plugin modules outside it (``docs/extending.md``).
"""

from .base import (
                   EPOCH_SAMPLES,
                   IGNORE_INDEX,
                   MISSING_POLICIES,
                   N_CLASSES,
                   SAMPLING_RATE_HZ,
                   MissingPolicy,
                   ModelOutput,
                   SleepBatch,
                   SleepStagingModel,
                   masked_cross_entropy,
)
from .registry import create_model, is_model, list_models, register_model

__all__ = [
    "EPOCH_SAMPLES", "IGNORE_INDEX", "MISSING_POLICIES", "N_CLASSES", "SAMPLING_RATE_HZ", "MissingPolicy",
    "ModelOutput", "SleepBatch", "SleepStagingModel", "create_model", "is_model", "list_models",
    "masked_cross_entropy", "register_model",
]
