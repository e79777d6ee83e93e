"""Ignite handlers the bundles attach to MONAI engines, one module per concern; every name is re-exported
here, so the configs' ``custom_losses.handlers.X`` resolve as before."""

from ..conventions import EVALUATED_MODEL_FILES
from .checkpoints import (
    BEST_METRIC_KEYS,
    OPTIONAL_RESUME_KEYS,
    RANDOM_STATE_KEY,
    RESUME_PREFIX,
    AtomicCheckpointSaver,
    EpochCheckpointSaver,
    RandomState,
    ResumeFromLatestCheckpoint,
    checkpoint_mismatch,
    existing_checkpoint,
    keep_best_metric,
    latest_checkpoint,
    load_network_weights,
    load_pretrained_weights,
    loadable_checkpoint,
    resume_checkpoints,
)
from .evaluation import (
    CSV_FIELDS,
    LesionMetricsWriter,
    VolumeMetricsWriter,
    voxel_volume_ml,
)
from .guards import (
    StopOnNonFiniteLoss,
)
from .tracking import (
    TrackingReadsBatchOutput,
)

__all__ = [
    "EVALUATED_MODEL_FILES",
    "AtomicCheckpointSaver",
    "BEST_METRIC_KEYS",
    "CSV_FIELDS",
    "EpochCheckpointSaver",
    "LesionMetricsWriter",
    "OPTIONAL_RESUME_KEYS",
    "RANDOM_STATE_KEY",
    "RESUME_PREFIX",
    "RandomState",
    "ResumeFromLatestCheckpoint",
    "StopOnNonFiniteLoss",
    "TrackingReadsBatchOutput",
    "VolumeMetricsWriter",
    "checkpoint_mismatch",
    "existing_checkpoint",
    "keep_best_metric",
    "latest_checkpoint",
    "load_network_weights",
    "load_pretrained_weights",
    "loadable_checkpoint",
    "resume_checkpoints",
    "voxel_volume_ml",
]
