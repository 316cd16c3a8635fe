"""Hyperparameter search: random, on the right scale, coarse to fine, many workers on one study.

Modules: ``space`` (hyperparameters, the table of scales, the default space, space files),
``storage`` (Optuna storages: checked and repaired journal files, retrying databases with
Optuna's heartbeat, one-line errors without passwords), ``study`` (the study as one worker
sees it, stale trials), ``job`` (the checked options of one search, as JSON for workers),
``search`` (the search loop and ``tune``), ``packs`` (``--pack``: the pack size, grouping
planned trials into packs, reporting each member as its own trial), ``lock`` (the journal
file's lock), ``pool`` and ``worker`` (``--workers`` / ``--devices``: worker processes on one
study), ``report`` (result rows, ranking, ``best.toml``, the plot).

Conventions:

- **Scales** (one table, ``space.SCALE_TABLE``). Each hyperparameter is sampled uniformly in
  its *sampling scale* ``u`` and mapped to a value: ``log`` (``u = log10 v``: learning rate,
  weight decay, eps, decay rate), ``log1m`` (``u = log10(1 - v)``: momentum and Adam betas,
  so 0.9..0.999 gets as many samples per decade of averaging window ``1 / (1 - beta)``),
  ``linear`` (dropout), ``log2`` (integers, ``u = log2 v``: hidden width), ``int`` (uniform
  integers: depth), ``pow2`` (powers of two with a uniform exponent: batch size) and
  ``choice`` (one of ``values``).
  Bounds are in value terms (``low = 0.9, high = 0.999`` for a beta) and inclusive.
- **Default space** (``default_space``), in the course's order of importance: learning rate;
  momentum beta (``beta1`` with the momentum optimizer); batch size and hidden width; depth
  and learning-rate decay (the course's ``lr0 / (1 + decay_rate * epoch)``, the ``inverse``
  schedule). Adam's beta1, beta2 and eps keep 0.9, 0.999 and 1e-8 unless a space names them.
  ``width`` and ``depth`` set ``hidden = [width] * depth``.
- **Space files** (``--space FILE.toml``): one entry per hyperparameter, ``lr = {low = 1e-4,
  high = 1e-1, scale = "log"}`` (the scale defaults by name), ``lr = [1e-4, 1e-1]`` for short,
  ``optimizer = {values = ["adam", "momentum"]}`` for a choice; an optional ``[fixed]`` table of
  training settings every sampled trial uses (``optimizer = "momentum"``).
- **Randomness.** Trial ``k`` samples from ``default_rng(SeedSequence(seed, spawn_key=(3, k)))``
  (the model uses streams 0 and 1, shuffling 2): a trial's values depend on the seed, its
  number and its round's space only, whichever worker runs it. Every trial trains with the
  same ``seed``, so all see the same validation rows and a best configuration retrains to the
  same result with ``gpunet train --config best.toml``.
- **Study.** Trials live in an Optuna study (a ``JournalStorage`` file by default, or any
  Optuna storage URL); ``trials`` is the study's total of *finished* trials (COMPLETE, and
  PRUNED when a pruner stops one), counted across workers and resumes; FAIL trials (divergence,
  a killed worker) never count. A worker claims a trial with ``study.ask()`` (up to ``--pack``
  of them one after another, see ``packs``) and keeps it only if fewer than ``trials``
  finished or running trials precede it (a claim beyond the total is
  closed at once as FAIL with the user attribute ``gpunet_surplus``). A running trial records
  its worker (host, pid namespace, pid, process start time) and a heartbeat; a RUNNING trial
  whose heartbeat is older than ``stale_after`` seconds (or, on a journal file, whose process
  on the same host is gone) is marked FAIL by the next worker that looks; on a database the
  heartbeat is Optuna's, judged by the database server's clock (``study``'s docstring).
- **Rounds.** With ``rounds = K`` the total is cut into K rounds of (nearly) equal size. Round
  ``r > 0`` waits for round ``r - 1`` to finish, then samples from each numeric range shrunk,
  in its sampling scale, to the span of the best quarter (at least 2) of round ``r - 1``'s
  trials plus a margin (a quarter of that span, at least a tenth of the previous range), never
  beyond the previous range; integer ranges are rounded outwards; choices stay. The shrunk
  space is stored in the study (user attribute ``gpunet_space_<r>``) so that every worker
  uses it.
- **Data.** Each trial trains with ``gpunet.train.fit`` (or as a member of a pack with
  ``gpunet.packed.fit_packed``, giving the same numbers) on the training split for ``epochs``
  epochs; the objective is the best validation accuracy over those epochs (what ``best.h5``
  keeps), ties broken by the lower validation loss. The test split is never read.
- **Baseline.** By default the study's first trial trains the base configuration unchanged
  (the defaults, or ``--config``) for the same budget, marked ``baseline``.

No pickle anywhere: the journal file is JSON lines; our trial attributes are JSON values.
"""

from .report import TrialRow, TuneResult, best_config_toml, fmt_value, rank_key, write_plot
from .search import TOP_FRACTION, TUNE_STREAM, Callback, round_of, round_sizes, tune
from .space import (
    DEFAULT_SCALES,
    MARGIN,
    MIN_MARGIN,
    SCALE_TABLE,
    SCALES,
    TUNABLE,
    Param,
    Scale,
    SearchSpace,
    default_space,
)
from .storage import StorageError, make_storage

__all__ = [
    "Param", "SearchSpace", "TrialRow", "TuneResult", "default_space", "make_storage",
    "round_of", "round_sizes", "tune", "best_config_toml", "write_plot", "SCALES",
    "DEFAULT_SCALES", "TUNABLE", "SCALE_TABLE", "Scale", "fmt_value", "rank_key", "Callback",
    "TUNE_STREAM", "TOP_FRACTION", "MARGIN", "MIN_MARGIN", "StorageError",
]
