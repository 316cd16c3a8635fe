"""Checkpoints: one HDF5 file of host NumPy arrays and canonical JSON, no pickle, verified by
one SHA-256 digest over its whole content (docs/architecture.md, "Checkpoint format").

Modules, one idea each: ``core`` (the in-memory ``Checkpoint``, capture and rebuild),
``store`` (the file format: ``save``, ``load``), ``schema`` (the metadata's expected
structure, and the arrays a model description implies), ``digest`` (the digest's
definition), ``h5safe`` (bounded reads of an untrusted HDF5 file) and ``upgrade`` (format 1
to 2, for a file its owner trusts).
"""

from __future__ import annotations

from .core import Checkpoint, build_model, from_training_state, set_rng_state, summary
from .digest import canonical_json, digest
from .schema import expected_layout
from .store import FORMAT_NAME, FORMAT_VERSION, MAX_METADATA, load, save

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_METADATA", "Checkpoint", "build_model",
           "canonical_json", "digest", "expected_layout", "from_training_state", "load", "save",
           "set_rng_state", "summary"]
