"""HDF5 datasets: reading, splitting, batching within a memory budget, standardizing; and the
``gpunet data`` jobs (make, import, inspect). The conventions are in docs/architecture.md,
"Data files"; in short:

- Data keys: X and y are detected in the order ``X/y``, ``x/y``, ``features/labels``,
  ``data/label``, ``data/labels``, ``train_set_x/train_set_y``, ``test_set_x/test_set_y``
  (``x_key`` / ``y_key`` override), at the root or inside groups ``train`` / ``val`` / ``test``.
- Dtypes: X is any numeric dtype, shape ``(n, ...)``; batches give it as float32 ``(b, d)``,
  raw (see :class:`Standardizer`). Labels (``(n,)``, ``(n, 1)``, ``(1, n)`` or one-hot) become
  int64 class ids ``0..C-1``.
- Memory budget: a split whose float32 X fits :data:`DEFAULT_MEMORY_BUDGET` (2 GiB, or the
  ``memory_budget`` given) is read into memory; a larger one is streamed from the file in
  contiguous slabs, everything the reader holds staying within the budget.
- Data outside the file: HDF5 soft / external links, virtual datasets and external raw
  storage are refused unless ``allow_external=True`` (``--allow-external``) or inside
  ``with allow_external_data():``; allowed, each is checked (sources present, whole, regular
  files) before any data is read.
- Labels are checked from the metadata (dtype, shape, size against the memory budget) before
  they are read, in slabs; without class names a class id must be below the number of samples.
- Every problem with the data raises :class:`gpunet.errors.DataError` with a one-line message.

One module a job:

- :mod:`~gpunet.data.files`: resolving a data argument (a path or the bundled ``digits``),
  opening HDF5 read-only; :func:`allow_external_data`.
- :mod:`~gpunet.data.storage`: where each dataset lives; links, virtual datasets and external
  raw storage refused, or checked when allowed (``allow_external``).
- :mod:`~gpunet.data.layout`: detecting keys and the train / val / test parts of a file.
- :mod:`~gpunet.data.labels`: label shapes, class ids, class names, the number of classes.
- :mod:`~gpunet.data.sources`: :class:`ArraySource`, :class:`InMemorySource`,
  :class:`StreamedSource`: batches within a memory budget.
- :mod:`~gpunet.data.holdout`: the rows ``val_split`` holds out.
- :mod:`~gpunet.data.splits`: :class:`Dataset`, :func:`open_dataset`, :func:`load_split`,
  :func:`validate`.
- :mod:`~gpunet.data.standardize`: :class:`Standardizer`.
- :mod:`~gpunet.data.writing`: checked arrays to an .h5, replaced atomically.
- :mod:`~gpunet.data.synthetic`, :mod:`~gpunet.data.importers`, :mod:`~gpunet.data.inspect`:
  ``gpunet data make``, ``import`` and ``inspect``.
"""

from __future__ import annotations

from ..errors import ConfigError as ConfigError
from ..errors import DataError as DataError
from .files import BUNDLED_DATASETS, allow_external_data, resolve_data_path
from .holdout import holdout_ranges as holdout_ranges
from .importers import import_csv, import_npz
from .inspect import inspect_file
from .labels import normalize_labels as normalize_labels
from .layout import KEY_PAIRS as KEY_PAIRS
from .layout import SPLITS as SPLITS
from .sources import DEFAULT_MEMORY_BUDGET, ArraySource, InMemorySource, StreamedSource
from .sources import Segment as Segment
from .splits import Dataset, load_split, open_dataset, validate
from .standardize import Standardizer
from .synthetic import make_synthetic

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "ArraySource", "Dataset", "Standardizer", "InMemorySource",
    "StreamedSource", "resolve_data_path", "open_dataset", "load_split", "validate",
    "make_synthetic", "import_npz", "import_csv", "inspect_file", "BUNDLED_DATASETS",
    "allow_external_data",
]
