"""Training, evaluation and prediction as plain importable functions.

The package is split by job:

- ``state``: ``TrainState``, everything a run needs to continue (model, optimizer,
  standardizer, shuffle generator, counters), to and from a checkpoint;
- ``loop``: ``train_epochs``, the epoch loop, which yields progress records and does no I/O;
- ``fitting``: ``fit``, the driver: builds a run, runs the loop, writes checkpoints and metrics;
- ``feeds``: where each epoch's batches come from (host, pinned host, device);
- ``evaluation``: ``evaluate``, ``predict`` and their checkpoint versions, prediction files;
- ``runfolder``: the run folder, the metrics log and resuming (``resolve_resume``,
  ``config_for_resume``).

Conventions: samples on axis 0; inputs are standardized with the training set's per-feature
mean and std (``data.Standardizer``), stored in every checkpoint and applied by ``evaluate``
and ``predict``; evaluation runs batch norm in inference mode (docs/architecture.md,
"Conventions").
"""

from __future__ import annotations

from .evaluation import (
    EVAL_BATCH_SIZE,
    evaluate,
    evaluate_checkpoint,
    heldout_source,
    load_for_inference,
    predict,
    predict_checkpoint,
    standardizer_from_checkpoint,
    write_predictions,
)
from .feeds import DeviceFeed, HostFeed, PinnedFeed, make_feed
from .fitting import Callback, _class_weights, fit
from .loop import LoopOptions, train_epochs
from .result import FitResult
from .runfolder import (
    MetricsLog,
    RunFolder,
    config_for_resume,
    default_out_dir,
    resolve_resume,
)
from .state import SHUFFLE_STREAM, TrainState, batches_per_epoch, drops_last

__all__ = [
    "EVAL_BATCH_SIZE", "SHUFFLE_STREAM", "Callback", "DeviceFeed", "FitResult", "HostFeed",
    "LoopOptions", "MetricsLog", "PinnedFeed", "RunFolder", "TrainState", "batches_per_epoch",
    "config_for_resume", "default_out_dir", "drops_last", "evaluate", "evaluate_checkpoint",
    "fit", "heldout_source", "load_for_inference", "make_feed", "predict",
    "predict_checkpoint", "resolve_resume", "standardizer_from_checkpoint", "train_epochs",
    "write_predictions", "_class_weights",
]
