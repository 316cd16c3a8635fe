"""gpunet tune on a real PostgreSQL server (a throwaway cluster, ``tests/pgserver.py``):

- processes opening an empty database at the same instant all succeed (Optuna's tables are
  created under an advisory lock; without it most of them die with ``UniqueViolation``);
- four worker processes started together finish exactly ``--trials`` between them, and the
  best configuration retrains to the same accuracy with ``gpunet train --config``;
- a worker killed with SIGKILL mid-trial has its trial failed by Optuna's heartbeat (no
  process-id check on a database) and a rerun still reaches the total;
- the server stopped for a moment: the search retries and completes; stopped for longer than
  ``--storage-retry``: one-line errors naming host and database (never the password), exit 2,
  and after a restart the same command completes the study.

Skipped, with the reason, only where the PostgreSQL binaries or psycopg are missing; ``.ci/run``
installs both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpunet.cli import app
from pgserver import SKIP_REASON, PgServer
from typer.testing import CliRunner

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
optuna = pytest.importorskip("optuna")
runner = CliRunner()

from test_tune import make_blobs, write_space  # noqa: E402

SPACE = 'lr = [1e-3, 1e-2]\nbatch_size = {values = [32]}\nwidth = {values = [8]}\n' \
        'depth = {values = [1]}\n'
PASSWORD = "pg-s3cret"


@pytest.fixture(scope="module")
def server():
    s = PgServer()
    s.start()
    yield s
    s.close()


@pytest.fixture
def db(server, request) -> str:
    """A fresh empty database for each test; its URL carries a password (trust accepts
    any), which must never be shown."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    return server.create_db(name).replace(f"{PgServer.USER}@", f"{PgServer.USER}:{PASSWORD}@")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("pg") / "pg.h5", n=1500, d=12)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("sp") / "space.toml", SPACE)


def load(url: str, name: str = "pg"):
    return optuna.load_study(study_name=name, storage=url)


def states(st) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in st.get_trials(deepcopy=False):
        if not t.user_attrs.get("gpunet_surplus"):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def cmd(data: Path, url: str, out: Path, space: Path, trials: int, epochs: int,
        *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpunet.cli", "tune", str(data), "--trials", str(trials),
            "--epochs", str(epochs), "--device", "cpu", "--storage", url, "--study", "pg",
            "--out", str(out), "--space", str(space), "--no-baseline", "--seed", "3",
            "--heartbeat", "1", "--stale-after", "4", *extra]


ENV1 = {**os.environ, "GPUNET_THREADS": "1", "OMP_NUM_THREADS": "1"}

RACE = """
import sys, time
from gpunet.tune.storage import make_storage
t0 = float(sys.argv[2])
while time.time() < t0:
    pass
make_storage(sys.argv[1], heartbeat=1, stale_after=4)
print("ok")
"""


def test_workers_opening_an_empty_database_together_all_succeed(db):
    t0 = time.time() + 4   # every process has imported optuna by then
    ps = [subprocess.Popen([sys.executable, "-c", RACE, db, str(t0)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV1) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in ps]
    assert [p.returncode for p in ps] == [0] * 6, [e for _, e in outs]
    assert all(o.strip() == "ok" for o, _ in outs)


def test_four_workers_finish_exactly_the_trials_and_the_best_retrains(tmp_path, db, data,
                                                                     space):
    # --pack 1: a trial trained alone retrains to the same bits (a packed member agrees only
    # within float32 rounding, see tests/test_tune_pack.py)
    ps = [subprocess.Popen(cmd(data, db, tmp_path / f"m{k}", space, 9, 2, "--json", "--pack",
                               "1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV1)
          for k in range(4)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0] * 4, [e for _, e in outs]
    st = load(db)
    assert states(st) == {"COMPLETE": 9}
    done = [t for t in st.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.number for t in done) == sorted({t.number for t in done})
    summaries = [json.loads(o) for o, _ in outs]
    assert sum(s["ran_here"] for s in summaries) == 9
    assert all(PASSWORD not in o and "***" in s["storage"] for (o, _), s in
               zip(outs, summaries, strict=True))
    # the best configuration retrains to the same validation accuracy; a worker's summary
    # shows the best it saw when it finished, and the last to finish saw them all
    s = next(s for s in summaries if s["best"] and s["best"]["value"] == st.best_value)
    r = runner.invoke(app, ["train", "--config", s["best_config"], "--out",
                            str(tmp_path / "run"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["best_value"] == st.best_value == s["best"]["value"]


def _running(url: str, timeout: float = 90) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            st = load(url)
        except KeyError:
            continue
        for t in st.get_trials(deepcopy=False):
            if t.state.name == "RUNNING" and "gpunet_values" in t.user_attrs:
                return t.number, t.user_attrs["gpunet_worker"]["pid"]
    raise AssertionError("no trial started")


def test_a_killed_worker_is_failed_by_heartbeat_and_a_rerun_reaches_the_total(
        tmp_path, db, data, space):
    out = tmp_path / "o"
    p = subprocess.Popen(cmd(data, db, out, space, 2, 80), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV1)
    number, pid = _running(db)
    assert pid == p.pid
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert load(db).trials[number].state.name == "RUNNING"   # nobody has looked yet
    time.sleep(5)   # past --stale-after 4 s without a heartbeat
    r = subprocess.run(cmd(data, db, out, space, 2, 80, "--json"), capture_output=True,
                       text=True, env=ENV1, timeout=300)
    assert r.returncode == 0, r.stderr
    st = load(db)
    victim = st.trials[number]
    assert victim.state.name == "FAIL"
    assert "gpunet_error" not in victim.user_attrs   # failed by heartbeat, not by a worker
    assert states(st)["COMPLETE"] == 2 and "RUNNING" not in states(st)
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())


def test_server_stopped_mid_search(tmp_path, server, db, data, space):
    out = tmp_path / "o"
    # a short outage: retried, the search completes
    p = subprocess.Popen(cmd(data, db, out, space, 4, 30, "--workers", "2",
                             "--storage-retry", "30"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _running(db)
    server.stop()
    time.sleep(1.5)
    server.start()
    o, e = p.communicate(timeout=300)
    assert p.returncode == 0, e
    # (a trial whose heartbeat stopped longer than --stale-after may have been failed)
    assert states(load(db))["COMPLETE"] == 4 and "RUNNING" not in states(load(db))
    # a long one: one line, naming host and database, never the password; exit 2
    p = subprocess.Popen(cmd(data, db, out, space, 8, 30, "--storage-retry", "2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV1)
    _running(db)
    server.stop()
    try:
        o, e = p.communicate(timeout=120)
    finally:
        server.start()
    assert p.returncode == 2, e
    lines = e.strip().splitlines()
    from sqlalchemy.engine import make_url

    assert len(lines) == 1 and lines[0].startswith("error: lost the connection to database "
                                                   f"'{make_url(db).database}'")
    assert f"on host '{server.root}'" in lines[0] and PASSWORD not in e + o
    assert "Traceback" not in e
    # restarted: the same command completes the study
    time.sleep(4.5)   # the interrupted trial's heartbeat goes stale
    r = subprocess.run(cmd(data, db, out, space, 8, 30, "--json"), capture_output=True,
                       text=True, env=ENV1, timeout=300)
    assert r.returncode == 0, r.stderr
    assert states(load(db))["COMPLETE"] == 8 and "RUNNING" not in states(load(db))
