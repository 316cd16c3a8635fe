"""One checkpoint save of a packed digits member, part by part: the current writer beside the
h5py high-level writer it replaced, in the same run.

The checkpoint is the one a pack of the digits recipe saves for each member every epoch
(``gpunet.packed.members.member_checkpoint`` of a 64-256-128-10 net with batch norm and Adam:
8 datasets, about 620 KB: params, Adam's m and v, 4 batch-norm running statistics, the
metadata JSON). Parts (docs/architecture.md, "Checkpoint format"):

- ``contents``: ``store._contents`` (the metadata JSON, validated; the dataset dict);
- ``digest``: the SHA-256 digest over the attributes and datasets;
- ``hdf5 write``: the file written, digest excluded (the old writer: ``h5py.File`` /
  ``create_group`` / ``create_dataset`` / ``attrs`` / ``flush``, kept below as
  ``old_write_file``; the new one: ``store._write_file``, h5py's low-level API);
- ``save (staged)``: ``checkpoint.save`` inside a ``DurableBatch`` (what a pack's member save
  costs: the file written beside its target, no fsync; the pack's one sync per save point is
  not counted);
- ``save (atomic)``: ``checkpoint.save`` alone (temporary file, fsync, rename, folder fsync);
- ``atomic overhead``: ``save (atomic)`` less contents and the file write: the temporary
  file's creation, the fsyncs and the rename (disk-bound; the same for both writers).

Old and new take turns within each of ``--rounds`` rounds (alternating which goes first), so
a shared machine's noise hits both alike; the table shows each part's median over the rounds
in ms, and old / new. The files the two writers make are checked to be byte-identical first.

    python benchmarks/checkpoint_save.py [--rounds 15] [--n 40] [--json PATH]

Recorded on the 2-core development machine (shared, load average about 6; 15 rounds x 40):
the HDF5 write 1.94 ms old, 1.14 ms new (1.70x); a staged member save 2.97 -> 1.99 ms (1.49x);
an atomic save 3.22 -> 2.47 ms (1.30x); contents 0.11 ms and the digest 0.33 ms, unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def member_ckpt() -> Any:
    """A digits-sized packed member's checkpoint (what a pack saves per member per epoch)."""
    import gpunet
    from gpunet.packed import PackedOptimizer
    from gpunet.packed.members import member_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GPU: the CPU backend, as intended here
        pack = gpunet.PackedMLP(64, [256, 128], 10, seeds=[0])
    opt = PackedOptimizer.create(pack, "adam", lr=[1e-3])
    return member_checkpoint(pack, 0, opt, config={"lr": 1e-3, "epochs": 10},
                             data={"path": "digits"}, classes=[str(c) for c in range(10)],
                             progress={"epoch": 1, "batch": 0, "step": 23}, rng={})


def old_write_file(tmp: Path, *, contents: dict[str, np.ndarray], attrs: dict[str, Any],
                   dig: str | None = None) -> None:
    """The writer ``store._write_file`` replaced: h5py's high-level API (``dig``: a digest
    computed beforehand, to time the write alone)."""
    import h5py

    from gpunet.checkpoint.digest import digest
    from gpunet.checkpoint.store import GROUPS

    with h5py.File(tmp, "w", libver=("v108", "v108")) as f:
        for g in GROUPS:
            f.create_group(g)
        for name, a in contents.items():
            f.create_dataset(name, data=a)
        f.attrs["digest"] = np.bytes_((dig or digest(attrs, contents)).encode("ascii"))
        f.attrs["gpunet_version"] = np.bytes_(str(attrs["gpunet_version"]).encode("ascii"))
        f.attrs["format_version"] = np.int64(attrs["format_version"])
        f.attrs["gpunet_format"] = np.bytes_(str(attrs["gpunet_format"]).encode("ascii"))
        f.flush()


@contextlib.contextmanager
def writer(kind: str, dig: str | None = None) -> Iterator[None]:
    """``store._write_file`` as the ``old`` or ``new`` writer; with ``dig``, the digest is not
    computed (a fixed one is written)."""
    from gpunet.checkpoint import store

    real_write, real_digest = store._write_file, store.digest
    if kind == "old":
        store._write_file = lambda tmp, *, contents, attrs: old_write_file(  # type: ignore
            tmp, contents=contents, attrs=attrs, dig=dig)
    elif dig is not None:
        store.digest = lambda attrs, contents: dig  # type: ignore[assignment]
    try:
        yield
    finally:
        store._write_file, store.digest = real_write, real_digest  # type: ignore[assignment]


def per_call_ms(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def one_round(ck: Any, folder: Path, n: int, order: tuple[str, str]) -> dict[str, float]:
    """Every part once (``n`` calls each) for both writers, in ``order``."""
    from gpunet import __version__
    from gpunet.checkpoint import store
    from gpunet.checkpoint.digest import digest

    attrs = store.root_attrs(__version__)
    contents = store._contents(ck)
    out = {"contents": per_call_ms(lambda: store._contents(ck), n),
           "digest": per_call_ms(lambda: digest(attrs, contents), n)}
    for kind in order:
        parts = writer_parts(kind, ck, folder / kind, n)
        parts["atomic overhead"] = parts["save (atomic)"] - out["contents"] - out["digest"] \
            - parts["hdf5 write"]
        out.update({f"{part}/{kind}": ms for part, ms in parts.items()})
    return out


def writer_parts(kind: str, ck: Any, folder: Path, n: int) -> dict[str, float]:
    """The file write (digest excluded) and the two saves with the ``kind`` writer."""
    from gpunet import __version__
    from gpunet import checkpoint as C
    from gpunet.checkpoint import store
    from gpunet.checkpoint.digest import digest
    from gpunet.fileio import DurableBatch

    folder.mkdir(exist_ok=True)
    attrs = store.root_attrs(__version__)
    contents = store._contents(ck)
    out = {}
    with writer(kind, digest(attrs, contents)):
        out["hdf5 write"] = per_call_ms(lambda: store._write_file(
            folder / "w.h5", contents=contents, attrs=attrs), n)

    def staged() -> None:
        batch = DurableBatch()
        with batch.deferring():
            C.save(folder / "s.h5", ck)
        for tmp, _ in batch.pending:
            tmp.unlink()

    with writer(kind):
        out["save (staged)"] = per_call_ms(staged, n)
        out["save (atomic)"] = per_call_ms(lambda: C.save(folder / "a.h5", ck), max(n // 4, 1))
    return out


def check_identical(ck: Any, folder: Path) -> bool:
    """Whether the two writers make the same bytes from the same contents."""
    from gpunet import __version__
    from gpunet.checkpoint import store

    attrs, contents = store.root_attrs(__version__), store._contents(ck)
    old_write_file(folder / "old.h5", contents=contents, attrs=attrs)
    store._write_file(folder / "new.h5", contents=contents, attrs=attrs)
    return (folder / "old.h5").read_bytes() == (folder / "new.h5").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--n", type=int, default=40, help="calls per part per round")
    ap.add_argument("--json", help="write every round's numbers here")
    args = ap.parse_args()
    ck = member_ckpt()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        same = check_identical(ck, folder)
        rounds = [one_round(ck, folder, args.n, ("old", "new") if r % 2 else ("new", "old"))
                  for r in range(args.rounds)]
    nbytes = sum(a.nbytes for a in _contents(ck).values())
    print(f"checkpoint save, digits member ({nbytes / 1e3:.0f} KB in 8 datasets); "
          f"{args.rounds} rounds x {args.n} calls; median ms per call")
    print(f"old and new files byte-identical: {same}")
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    print(f"{'part':<18}{'old ms':>9}{'new ms':>9}{'old/new':>9}")
    for part in ("contents", "digest"):
        print(f"{part:<18}{med[part]:>9.3f}{med[part]:>9.3f}{1.0:>9.2f}")
    for part in ("hdf5 write", "save (staged)", "save (atomic)", "atomic overhead"):
        old, new = med[f"{part}/old"], med[f"{part}/new"]
        print(f"{part:<18}{old:>9.3f}{new:>9.3f}{old / new:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "median": med,
                                               "identical": same}, indent=1))


def _contents(ck: Any) -> dict[str, np.ndarray]:
    from gpunet.checkpoint import store

    return store._contents(ck)


if __name__ == "__main__":
    main()
