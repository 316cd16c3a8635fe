"""gpunet tune --workers / --devices: the plan (devices, pinning, threads), the environment each
worker process really gets, ``--workers 2`` against two hand-started workers (the same planned
trials), a worker killed with SIGKILL (reported, its trial failed, the total still reached) and
SIGTERM to the command (every worker stops, nothing left RUNNING, a rerun completes)."""

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
from typer.testing import CliRunner

from gpunet.errors import ConfigError

optuna = pytest.importorskip("optuna")
runner = CliRunner()

from test_tune import load_study, make_blobs, states, write_space  # noqa: E402

from gpunet.tune.pool import THREAD_VARS, Pool, parse_devices, plan_workers  # noqa: E402

#: fixed architecture, one lr range: trials differ only in lr (fast and comparable)
SPACE = 'lr = [1e-3, 1e-2]\nbatch_size = {values = [32]}\nwidth = {values = [8]}\n' \
        'depth = {values = [1]}\n'


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("w") / "w.h5", n=1500, d=12)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("sp") / "space.toml", SPACE)


def tune_cmd(data: Path, out: Path, space: Path, trials: int, epochs: int,
             *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpunet.cli", "tune", str(data), "--trials", str(trials),
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--study", "w",
            "--space", str(space), "--no-baseline", "--seed", "5", *extra]


def env1() -> dict[str, str]:
    return {**os.environ, "GPUNET_THREADS": "1", "OMP_NUM_THREADS": "1"}


# ====================================================================== the plan
def test_plan_pins_one_worker_per_gpu_and_splits_the_cores():
    plans = plan_workers(2, "0,1", None, environ={}, cores=8, count=lambda: 2)
    assert [(p.device, p.gpu, p.env["CUDA_VISIBLE_DEVICES"]) for p in plans] == [
        ("gpu", "0", "0"), ("gpu", "0", "0"), ("gpu", "1", "1"), ("gpu", "1", "1")]
    assert all(p.env[v] == "2" for p in plans for v in THREAD_VARS)   # 8 cores / 4 workers
    # numbers are CUDA's numbers in this process: read through its CUDA_VISIBLE_DEVICES
    plans = plan_workers(1, "1,0", None, environ={"CUDA_VISIBLE_DEVICES": "4,6"}, cores=2,
                         count=lambda: 2)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["6", "4"]
    # all: every GPU the count finds; CPU workers: no pinning, threads from the cores
    assert [p.gpu for p in plan_workers(1, "all", "gpu", environ={}, cores=3,
                                        count=lambda: 3)] == ["0", "1", "2"]
    cpu = plan_workers(3, None, "cpu", environ={"GPUNET_THREADS": "5"}, cores=2)
    assert [p.device for p in cpu] == ["cpu"] * 3
    assert all("CUDA_VISIBLE_DEVICES" not in p.env for p in cpu)
    assert all("GPUNET_THREADS" not in p.env and p.env["OMP_NUM_THREADS"] == "1" for p in cpu)


@pytest.mark.parametrize("devices, device, count, message", [
    ("all", None, 0, "no GPU is visible"),
    ("0,0", None, 2, "name each GPU once"),
    ("x", None, 2, "GPU numbers such as 0,1"),
    ("", None, 2, "GPU numbers such as 0,1"),
    ("-1", None, 2, "GPU numbers such as 0,1"),
    ("0,2", None, 2, "2 GPU(s) visible here"),
    ("0", None, 0, "0 GPU(s) visible here"),
    ("0", "cpu", 2, "leave out --device cpu"),
    ("0", "gpu:1", 2, "leave out --device gpu:1"),
])
def test_bad_device_lists(devices, device, count, message):
    with pytest.raises(ConfigError) as e:
        plan_workers(1, devices, device, environ={}, cores=2, count=lambda: count)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="leaves 1 GPU"):
        plan_workers(1, "1", None, environ={"CUDA_VISIBLE_DEVICES": "3"}, cores=2,
                     count=lambda: 2)
    assert parse_devices(" 2, 0 ", lambda: 3) == [2, 0]


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be between 1 and 1024"),
    (["--devices", "0,x"], "--devices takes GPU numbers"),
    (["--heartbeat", "5", "--stale-after", "5"], "--stale-after must exceed --heartbeat"),
    (["--storage-retry", "-1"], "--storage-retry must be >= 0"),
])
def test_bad_worker_options_are_one_line(tmp_path, data, space, args, message):
    r = runner.invoke(app, ["tune", str(data), "--trials", "2", "--out", str(tmp_path / "o"),
                            "--space", str(space), *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_each_worker_process_gets_its_environment(tmp_path, data, space):
    """Through the real Popen: a stand-in worker reports its environment as an event."""
    from gpunet.tune.job import make_job

    show = "import json,os,sys; spec=json.load(sys.stdin); print(json.dumps({'event': 'env', " \
           "'device': spec['device'], 'env': {k: os.environ.get(k) for k in " \
           f"{list(THREAD_VARS) + ['CUDA_VISIBLE_DEVICES', 'GPUNET_TUNE_PARENT']}}}}}))"

    class EnvPool(Pool):
        command = (sys.executable, "-c", show)

    job = make_job(str(data), 4, rounds=1, epochs=1, space=space, config=None, storage=None,
                   study="env", out=tmp_path / "o", seed=0, device=None, pruner="none",
                   baseline=False, heartbeat=10, stale_after=120, retry_for=30,
                   max_failures=20)
    (tmp_path / "o").mkdir()
    st = job.open_study(lambda e, i: None)
    heard: list[dict] = []
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARS,
                                                             "CUDA_VISIBLE_DEVICES")}
    plans = plan_workers(2, "3,5", None, environ=env, cores=4, count=lambda: 6)
    pool = EnvPool(job, plans, st, lambda e, i: heard.append(i) if e == "env" else None)
    old = dict(os.environ)
    try:
        for k in (*THREAD_VARS, "CUDA_VISIBLE_DEVICES"):
            os.environ.pop(k, None)
        pool.run()
    finally:
        os.environ.clear()
        os.environ.update(old)
    got = sorted((h["worker"], h["device"], h["env"]["CUDA_VISIBLE_DEVICES"],
                  h["env"]["GPUNET_THREADS"], h["env"]["OMP_NUM_THREADS"],
                  h["env"]["GPUNET_TUNE_PARENT"]) for h in heard)
    me = str(os.getpid())
    assert got == [(1, "gpu", "3", "1", "1", me), (2, "gpu", "3", "1", "1", me),
                   (3, "gpu", "5", "1", "1", me), (4, "gpu", "5", "1", "1", me)]
    assert [w["exit"] for w in pool.summary()] == [0, 0, 0, 0]


# ====================================================================== a real pool
def planned(study) -> dict[int, dict]:
    return {t.number: t.user_attrs["gpunet_values"] for t in study.get_trials()
            if t.state.name == "COMPLETE"}


def test_workers_2_runs_the_trials_two_hand_started_workers_run(tmp_path, data, space):
    t0 = time.perf_counter()
    r = subprocess.run(tune_cmd(data, tmp_path / "pool", space, 8, 2, "--workers", "2",
                                "--json"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    pool_s = time.perf_counter() - t0
    hands = [subprocess.Popen(tune_cmd(data, tmp_path / "hand", space, 8, 2, "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env1()) for _ in range(2)]
    outs = [h.communicate(timeout=300) for h in hands]
    assert all(h.returncode == 0 for h in hands), outs
    a = load_study(tmp_path / "pool" / "study.journal", "w")
    b = load_study(tmp_path / "hand" / "study.journal", "w")
    assert states(a).get("COMPLETE") == states(b).get("COMPLETE") == 8
    assert planned(a) == planned(b) and sorted(planned(a)) == list(range(8))
    # one summary: every worker listed, the trials they ran add up, both ran some
    assert [w["worker"] for w in s["workers"]] == [1, 2]
    assert sum(w["ran"] for w in s["workers"]) == s["ran_here"] == 8
    assert all(w["exit"] == 0 and w["ran"] > 0 for w in s["workers"])
    pids = {t.user_attrs["gpunet_worker"]["pid"] for t in a.get_trials()}
    assert pids == {w["pid"] for w in s["workers"]}
    assert s["best_config"] and Path(s["best_config"]).read_text().startswith(
        "# gpunet tune: best trial #")
    print(f"--workers 2: {pool_s:.1f}s for 8 trials")


def _wait_running(journal: Path, not_pid: int, timeout: float = 90) -> tuple[int, int]:
    """(trial number, worker pid) of a RUNNING trial of a worker process other than
    ``not_pid`` (the pool itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            st = load_study(journal, "w")
        except (KeyError, ValueError):
            continue
        for t in st.get_trials(deepcopy=False):
            w = t.user_attrs.get("gpunet_worker") or {}
            if t.state.name == "RUNNING" and w.get("pid") not in (None, not_pid) \
                    and "gpunet_values" in t.user_attrs:
                return t.number, w["pid"]
    raise AssertionError("no worker started a trial")


def test_a_worker_killed_mid_trial_is_reported_and_its_trial_failed(tmp_path, data, space):
    out = tmp_path / "o"
    p = subprocess.Popen(tune_cmd(data, out, space, 4, 40, "--workers", "2", "--pack", "1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    number, pid = _wait_running(out / "study.journal", p.pid)
    os.kill(pid, signal.SIGKILL)
    o, e = p.communicate(timeout=300)
    assert p.returncode == 0, e
    assert f"(pid {pid}) died: killed by SIGKILL; trial {number} marked failed" in e
    st = load_study(out / "study.journal", "w")
    victim = st.trials[number]
    assert victim.state.name == "FAIL"
    assert victim.user_attrs["gpunet_error"] == "its worker died (killed by SIGKILL)"
    assert states(st)["COMPLETE"] == 4 and "RUNNING" not in states(st)
    print(e)
    assert "note: worker" in o and "the other workers finished the study" in o
    assert not any((out / "trials").iterdir())


def test_sigterm_stops_every_worker_and_leaves_the_study_consistent(tmp_path, data, space):
    out = tmp_path / "o"
    p = subprocess.Popen(tune_cmd(data, out, space, 4, 100, "--workers", "2", "--pack", "1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    number, _ = _wait_running(out / "study.journal", p.pid)
    p.send_signal(signal.SIGTERM)
    o, e = p.communicate(timeout=120)
    print(e)
    assert p.returncode == 130, e
    assert e.strip().splitlines()[-1] == "interrupted"
    st = load_study(out / "study.journal", "w")
    ts = st.get_trials()
    assert "RUNNING" not in states(st)
    # the trial seen running was stopped, unless it finished before the signal arrived (a
    # loaded machine); every trial that failed failed because of the interrupt
    seen = st.trials[number]
    assert seen.state.name == "COMPLETE" or seen.user_attrs.get("gpunet_error") == "interrupted"
    assert all(t.user_attrs.get("gpunet_error") == "interrupted" for t in ts
               if t.state.name == "FAIL")
    for t in ts:   # every worker process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(t.user_attrs["gpunet_worker"]["pid"], 0)
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())
    r = subprocess.run(tune_cmd(data, out, space, 4, 100, "--workers", "2", "--json"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["complete"] == 4
