"""Study storage faults and never touching what gpunet didn't write (gpunet tune):

- a torn last journal record (a crash mid-write) is repaired with a warning naming the file and
  line, every completed trial kept, and the search goes on; so is a torn piece another
  worker's record was appended to;
- any other damage (garbage, a foreign JSON line, a record that does not replay), a storage
  path that is not a journal (the data file, a text file, a special file), ``redis://``
  (refused: Optuna unpickles from Redis), a missing database driver, an unreachable
  database (a password in the URL):
  one ``error:`` line naming the file and line (or host and database, never the password),
  exit 2, and every existing file byte for byte unchanged;
- ``--study ../../victim`` keeps every trial folder inside ``<out>/trials``; ``--plot`` and
  ``best.toml`` never replace a file gpunet tune did not write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gpunet.cli import app
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")
runner = CliRunner()

from test_tune import load_study, make_blobs, states, write_space  # noqa: E402

SPACE = 'lr = [1e-3, 1e-2]\nbatch_size = {values = [32]}\nwidth = {values = [8]}\n' \
        'depth = {values = [1]}\n'


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("s") / "s.h5", n=300, d=6)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("sp") / "space.toml", SPACE)


def tune_args(data: Path, out: Path, space: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", str(data), "--trials", str(trials), "--epochs", "1", "--device", "cpu",
            "--out", str(out), "--study", "s", "--space", str(space), "--no-baseline",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def journal(tmp_path_factory, data, space) -> bytes:
    """The bytes of a journal holding 3 complete trials."""
    out = tmp_path_factory.mktemp("j")
    r = runner.invoke(app, tune_args(data, out, space, 3))
    assert r.exit_code == 0, r.output
    return (out / "study.journal").read_bytes()


def one_error(r, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ====================================================================== torn records
@pytest.mark.parametrize("how", ["torn-last", "torn-then-appended", "both"])
def test_a_torn_record_is_repaired_keeping_every_trial(tmp_path, data, space, journal, how):
    lines = journal.splitlines(keepends=True)
    piece = lines[-1][:25]
    if how == "torn-last":
        damaged, bad_line = journal + piece, len(lines) + 1
    else:
        # a worker died mid-write; another appended its next record to the piece
        damaged = b"".join(lines[:-1]) + piece + lines[-1]
        bad_line = len(lines)
        if how == "both":
            damaged += lines[3][:7]
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.journal").write_bytes(damaged)
    r = runner.invoke(app, tune_args(data, out, space, 5))
    assert r.exit_code == 0, r.output
    assert (f"warning: study journal {out / 'study.journal'}: removed a record cut short at "
            f"line {bad_line}") in r.output
    st = load_study(out / "study.journal", "s")
    assert states(st) == {"COMPLETE": 5}
    # the three trials from before are intact: same numbers, values and accuracies
    before = load_study_bytes(tmp_path / "before.journal", journal)
    for t in before.get_trials():
        assert st.trials[t.number].value == t.value
        assert st.trials[t.number].params == t.params
    assert (out / "study.journal").read_bytes().startswith(b"".join(lines[:-1]))


def load_study_bytes(path: Path, data: bytes):
    path.write_bytes(data)
    return load_study(path, "s")


@pytest.mark.parametrize("line, why", [
    (b"hello\n", "not a JSON record"),
    (b"[1, 2]\n", "not an Optuna journal record"),
    (b'{"op_code": 99, "worker_id": "w"}\n', "does not apply"),
    (b'{"op_code": 4, "worker_id": "w"}\n', "does not apply"),
    (b'{"op_code": 6, "worker_id": "w", "tria\xff\n', "not UTF-8"),
])
def test_other_damage_is_one_line_naming_file_and_line(tmp_path, data, space, journal, line,
                                                       why):
    lines = journal.splitlines(keepends=True)
    out = tmp_path / "o"
    out.mkdir()
    bad = b"".join(lines[:4]) + line + b"".join(lines[4:])
    (out / "study.journal").write_bytes(bad)
    r = runner.invoke(app, tune_args(data, out, space, 5))
    one_error(r, f"study journal {out / 'study.journal'} is damaged at line 5", why)
    assert (out / "study.journal").read_bytes() == bad
    assert not (out / "study.journal.lock").exists()


def test_a_storage_that_is_not_a_journal_is_refused_unchanged(tmp_path, data, space):
    text = tmp_path / "notes.txt"
    text.write_bytes(b"my notes\nno newline at the end")
    one_line = tmp_path / "brace.txt"
    one_line.write_bytes(b"{")
    before = {p: p.read_bytes() for p in (data, text, one_line)}
    for p in (data, text, one_line):
        r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", str(p)))
        one_error(r, f"storage {p} is not an Optuna study journal (line 1")
    assert {p: p.read_bytes() for p in before} == before
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", "/dev/null"))
    one_error(r, "storage /dev/null is not a regular file")
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage",
                                     str(tmp_path)))
    one_error(r, "is a folder")


@pytest.mark.parametrize("url", ["redis://:s3cret@localhost:6379/0",
                                 "rediss://:s3cret@localhost:6380/0"])
def test_redis_is_refused_as_one_line_saying_why(tmp_path, data, space, url):
    """Optuna's Redis journal unpickles its snapshots: refused before anything is opened."""
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", url))
    line = one_error(r, "Redis storage is refused because Optuna's Redis journal unpickles")
    assert "s3cret" not in line and ":***@localhost" in line
    assert not (tmp_path / "o").exists()


def test_database_errors_name_host_and_database_never_the_password(tmp_path, data, space,
                                                                   monkeypatch):
    url = "postgresql://tuner:s3cret@127.0.0.1:1/searchdb"
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", url))
    line = one_error(r, "'searchdb'", "'127.0.0.1'", "port 1")
    assert "s3cret" not in line
    url = "postgresql://tuner@/searchdb?host=/nonexistent&password=s3cret"
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", url))
    assert "s3cret" not in one_error(r, "'searchdb'", "'/nonexistent'")
    # no driver: say which extra installs it
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage",
                                     "postgresql://tuner:s3cret@db.example/searchdb"))
    line = one_error(r, "needs a database driver: pip install 'gpunet[postgres]'")
    assert "s3cret" not in line
    r = runner.invoke(app, tune_args(data, tmp_path / "o", space, 2, "--storage", "nosuch://x"))
    one_error(r, "unknown kind of database 'nosuch'")


# ====================================================================== not ours
def test_study_names_never_reach_outside_the_trials_folder(tmp_path, data, space,
                                                           monkeypatch):
    victim = tmp_path / "victim-0"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    for n in range(3):   # what the old trial folder names would have been
        (tmp_path / f"victim-{n}").mkdir(exist_ok=True)
        (tmp_path / f"victim-{n}" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    out = tmp_path / "a" / "b"
    r = runner.invoke(app, ["tune", str(data), "--trials", "2", "--epochs", "1", "--device",
                            "cpu", "--out", str(out), "--study", "../../victim", "--space",
                            str(space), "--quiet"])
    assert r.exit_code == 0, r.output
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith("a/b/") for k in set(after) - set(before)), set(after) - set(before)
    assert list((out / "trials").iterdir()) == []
    # the default --out stays inside runs/ as well
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["tune", str(data), "--trials", "1", "--epochs", "1", "--device",
                            "cpu", "--study", "../x", "--space", str(space), "--quiet"])
    assert r.exit_code == 0, r.output
    made = [p for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1 and made[0].name.startswith("tune-_x-")
    assert not (tmp_path / "x").exists()


def test_plot_and_best_toml_never_replace_a_file_gpunet_did_not_write(tmp_path, data, space):
    pytest.importorskip("matplotlib")
    out = tmp_path / "o"
    r = runner.invoke(app, tune_args(data, out, space, 2))
    assert r.exit_code == 0, r.output
    journal = out / "study.journal"
    other_png = tmp_path / "photo.png"
    other_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    link = tmp_path / "link.png"
    link.symlink_to(data)
    before = snapshot(tmp_path)
    for target in (data, journal, out / "best.toml", other_png, link, tmp_path):
        r = runner.invoke(app, tune_args(data, out, space, 3, "--plot", str(target)))
        one_error(r, f"--plot {target}")
    assert snapshot(tmp_path) == before
    assert states(load_study(journal, "s")) == {"COMPLETE": 2}   # nothing ran
    # a plot gpunet wrote is replaced on the next run
    png = tmp_path / "tune.png"
    assert runner.invoke(app, tune_args(data, out, space, 2, "--plot", str(png))).exit_code == 0
    first = png.read_bytes()
    assert runner.invoke(app, tune_args(data, out, space, 3, "--plot", str(png))).exit_code == 0
    assert png.read_bytes() != first
    # best.toml: a user's own file in --out is refused before any trial
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.toml").write_text("lr = 0.1\n")
    r = runner.invoke(app, tune_args(data, mine, space, 2))
    one_error(r, f"{mine / 'best.toml'} exists and is not a file gpunet tune wrote")
    assert (mine / "best.toml").read_text() == "lr = 0.1\n"
    assert not (mine / "study.journal").exists()


def test_a_lost_connection_deep_in_an_optuna_error_is_retried_with_a_fresh_session():
    """Optuna wraps a session that a lost connection left needing a rollback in
    StorageInternalError: the retry sees through the chain, drops the session and retries;
    Optuna's cache calls private storage methods, which are retried as well."""
    import optuna
    from optuna.exceptions import StorageInternalError
    from sqlalchemy import exc

    from gpunet.tune import storage as st

    def wrapped() -> StorageInternalError:
        try:
            try:
                raise exc.PendingRollbackError("Can't reconnect until invalid transaction is "
                                               "rolled back")
            except exc.PendingRollbackError as e:
                raise StorageInternalError("An exception is raised during the commit.") from e
        except StorageInternalError as e:
            return e

    assert st._transient(wrapped())
    assert not st._transient(StorageInternalError("bad data"))

    class Store:
        removed = 0
        calls = 0

        def remove_session(self):
            Store.removed += 1

        def op(self):
            Store.calls += 1
            if Store.calls < 3:
                raise wrapped()
            return "ok"

    retry = st._Retry("postgresql://u:pw@h/db", retry_for=10)
    st.MAX_BACKOFF, saved = 0.01, st.MAX_BACKOFF
    try:
        assert retry.call("op", Store.op, Store()) == "ok"
    finally:
        st.MAX_BACKOFF = saved
    assert Store.calls == 3 and Store.removed == 2
    cls = st._retrying_rdb(optuna)
    for name in ("_get_trials", "_create_new_trial", "get_all_trials"):
        if hasattr(optuna.storages.RDBStorage, name):
            assert getattr(cls, name) is not getattr(optuna.storages.RDBStorage, name), name
