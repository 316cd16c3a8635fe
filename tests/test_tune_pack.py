"""gpunet tune --pack: planned trials sharing an architecture train as one pack, each member its
own Optuna trial. Against a ``--pack 1`` study of the same planned trials (same values, same
per-epoch accuracies and losses within float32 rounding); two workers with ``--pack 4``
finishing exactly ``--trials`` with no pack spanning two rounds; a pruned member leaving the
others running; a process killed mid-pack whose members the rerun marks failed; ``--pack
auto``'s rule (CPU thresholds, GPU memory) and its choice for a small and a wide net; bad
``--pack`` values as one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpunet.cli import app
from typer.testing import CliRunner

from gpunet.errors import ConfigError

optuna = pytest.importorskip("optuna")
runner = CliRunner()

from test_tune import TINY_BASE, load_study, make_blobs, states, write_space  # noqa: E402

from gpunet.tune import SearchSpace, default_space, tune  # noqa: E402
from gpunet.tune.packs import (  # noqa: E402
    CPU_RULE,
    GPU_MAX,
    auto_pack_size,
    group_packs,
    largest_net,
    member_bytes,
    net_params,
    parse_pack,
)

#: one architecture, batch size 32: trials differ in lr, dropout and lr decay
SPACE = ('lr = [1e-3, 1e-1]\ndropout = [0.0, 0.3]\nlr_decay_rate = [0.01, 1.0]\n'
         'batch_size = {values = [32]}\nwidth = {values = [8]}\ndepth = {values = [1]}\n')


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("p") / "p.h5", n=600, d=10)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("sp") / "space.toml", SPACE)


def tune_cmd(data: Path, out: Path, space: Path, trials: int, epochs: int,
             *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpunet.cli", "tune", str(data), "--trials", str(trials),
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--study", "p",
            "--space", str(space), "--seed", "5", "--config", str(_base_toml(out)), *extra]


def _base_toml(out: Path) -> Path:
    """The base configuration (one hidden layer of 8, batch 32): the baseline shares a pack."""
    p = out.parent / "base.toml"
    p.write_text('hidden = [8]\nbatch_size = 32\nval_split = 0.25\n')
    return p


def trials_by_number(study) -> dict[int, object]:
    return {t.number: t for t in study.get_trials() if not t.user_attrs.get("gpunet_surplus")}


# ====================================================================== the rule
def test_auto_rule_on_the_cpu_and_the_gpu():
    cpu = SimpleNamespace(device_memory=False)
    small, mid, wide = [8], [512, 512], [1024, 1024]
    assert net_params(64, small, 10) == 64 * 8 + 8 + 8 * 10 + 10
    assert net_params(64, mid, 10) <= CPU_RULE[1][0] < net_params(64, wide, 10)
    assert auto_pack_size(cpu, 64, small, 10, 64) == 16
    assert auto_pack_size(cpu, 64, [256, 128], 10, 64) == 16     # digits' default net
    assert auto_pack_size(cpu, 64, mid, 10, 64) == 4
    assert auto_pack_size(cpu, 64, wide, 10, 64) == 1
    # a GPU: 64 members unless the free memory (half of it used) holds fewer
    per = member_bytes(784, [4096, 4096], 10, 256)

    def gpu(free: int) -> SimpleNamespace:
        rt = SimpleNamespace(memGetInfo=lambda: (free, 2 * free))
        return SimpleNamespace(device_memory=True, xp=SimpleNamespace(
            cuda=SimpleNamespace(runtime=rt)))

    assert auto_pack_size(gpu(80 << 30), 64, small, 10, 64) == GPU_MAX
    assert auto_pack_size(gpu(10 * per), 784, [4096, 4096], 10, 256) == 5
    assert auto_pack_size(gpu(per), 784, [4096, 4096], 10, 256) == 1


def test_largest_net_of_a_space_and_grouping():
    from gpunet.config import TrainConfig

    base = TrainConfig(hidden=[256, 128], batch_size=64)
    assert largest_net(base, default_space()) == ([512, 512, 512], 256)
    sp = SearchSpace.from_dict({"lr": [1e-3, 1e-1], "width": {"values": [16, 64, 32]}})
    assert largest_net(base, sp) == ([64, 64], 64)     # depth from the base, batch unsearched
    assert largest_net(base, SearchSpace.from_dict({"lr": [1e-3, 1e-1]})) == ([256, 128], 64)
    cfgs = [TrainConfig(hidden=h, batch_size=b) for h, b in
            [([8], 32), ([16], 32), ([8], 32), ([8], 64), ([8], 32), ([8], 32), ([16], 32)]]
    packs = group_packs(list(range(7)), lambda i: cfgs[i], 2)
    assert packs == [[0, 2], [1, 6], [3], [4, 5]]


@pytest.mark.parametrize("value", ["0", "-1", "x", "1025", str(2**63), "1.5", "", "auto4"])
def test_bad_pack_values_are_one_line(tmp_path, data, space, value):
    r = runner.invoke(app, ["tune", str(data), "--trials", "2", "--out", str(tmp_path / "o"),
                            "--space", str(space), "--pack", value])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: --pack must be auto or an integer from 1 to 1024")
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert parse_pack(" AUTO ") == "auto" and parse_pack(7) == 7
    with pytest.raises(ConfigError):
        parse_pack(True)


@pytest.mark.parametrize("args, message", [
    (["--trials", str(2**63)], "--trials must be at most 1,000,000"),
    (["--trials", "1000001"], "--trials must be at most 1,000,000"),
    (["--trials", "5000", "--rounds", "1001"], "--rounds must be between 1 and --trials"),
    (["--trials", "2", "--rounds", str(2**63)], "--rounds must be between 1 and --trials"),
    (["--trials", "2", "--top", "-1"], "--top must be between 0 and 1,000,000"),
    (["--trials", "2", "--top", str(2**63)], "--top must be between 0 and 1,000,000"),
])
def test_totals_are_bounded(tmp_path, data, space, args, message):
    r = runner.invoke(app, ["tune", str(data), "--out", str(tmp_path / "o"), "--space",
                            str(space), *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_auto_packs_a_small_net_and_not_a_wide_one(tmp_path, data):
    small = write_space(tmp_path / "small.toml", 'lr = [1e-3, 1e-2]\nwidth = {values = [8]}\n'
                                                 'depth = {values = [1]}\n')
    wide = write_space(tmp_path / "wide.toml", 'lr = [1e-3, 1e-2]\nwidth = {values = [1024]}\n'
                                               'depth = {values = [2]}\n')
    outs = {}
    for name, sp in (("small", small), ("wide", wide)):
        r = runner.invoke(app, ["tune", str(data), "--trials", "2", "--epochs", "1",
                                "--device", "cpu", "--out", str(tmp_path / name), "--space",
                                str(sp), "--no-baseline"])
        assert r.exit_code == 0, r.output
        outs[name] = load_study(tmp_path / name / "study.journal", "p")
        outs[name + "_text"] = r.output
    assert "packs: up to 16 trials sharing an architecture train as one (--pack auto)" \
        in outs["small_text"]
    assert [t.user_attrs.get("gpunet_pack") for t in outs["small"].get_trials()] == [[0, 1]] * 2
    assert "trial   0 (round 1/1, pack of 2)" in outs["small_text"]
    assert "packs:" not in outs["wide_text"]
    assert all("gpunet_pack" not in t.user_attrs for t in outs["wide"].get_trials())


# ====================================================================== against --pack 1
def test_pack_4_records_what_pack_1_records(tmp_path, data, space):
    """Same planned trials (baseline included): same values, per-epoch accuracies, losses."""
    studies = {}
    for k in ("1", "4"):
        out = tmp_path / f"k{k}"
        out.mkdir()
        r = subprocess.run(tune_cmd(data, out, space, 8, 3, "--pack", k, "--json"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        studies[k] = trials_by_number(load_study(out / "study.journal", "p"))
    one, four = studies["1"], studies["4"]
    assert sorted(one) == sorted(four) == list(range(8))
    assert [four[n].user_attrs["gpunet_pack"] for n in range(8)] == \
        [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4
    assert all("gpunet_pack" not in t.user_attrs for t in one.values())
    assert four[0].user_attrs["gpunet_baseline"] is True
    for n in range(8):
        a, b = one[n], four[n]
        assert a.state.name == b.state.name == "COMPLETE"
        assert a.params == b.params and a.user_attrs["gpunet_values"] == \
            b.user_attrs["gpunet_values"]
        assert sorted(a.intermediate_values) == sorted(b.intermediate_values) == [1, 2, 3]
        # accuracies over 120 validation rows: at most one prediction apart (a float32
        # rounding difference can tip an argmax on its edge); losses within float32 rounding
        for e in (1, 2, 3):
            assert b.intermediate_values[e] == pytest.approx(a.intermediate_values[e],
                                                             abs=1.01 / 120)
        assert b.value == pytest.approx(a.value, abs=1.01 / 120)
        assert b.user_attrs["gpunet_val_loss"] == pytest.approx(
            a.user_attrs["gpunet_val_loss"], rel=1e-4)
    # the trials differ (the comparison is not vacuous)
    assert len({round(four[n].user_attrs["gpunet_val_loss"], 6) for n in range(8)}) == 8


# ====================================================================== workers, rounds
def test_two_workers_with_pack_4_finish_exactly_the_total(tmp_path, data, space):
    out = tmp_path / "o"
    out.mkdir()
    r = subprocess.run(tune_cmd(data, out, space, 10, 2, "--workers", "2", "--pack", "4",
                                "--rounds", "2", "--json"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    st = load_study(out / "study.journal", "p")
    ts = trials_by_number(st)
    assert states(st).get("COMPLETE") == 10 and "RUNNING" not in states(st)
    assert sum(t.state.name == "COMPLETE" for t in ts.values()) == 10 == len(ts)
    assert sum(w["ran"] for w in s["workers"]) == s["ran_here"] == 10
    assert all(w["exit"] == 0 and w["ran"] > 0 for w in s["workers"])
    packs = {tuple(t.user_attrs.get("gpunet_pack", [n])) for n, t in ts.items()}
    assert sorted(n for p in packs for n in p) == sorted(ts)       # each trial in one pack
    for p in packs:
        assert len(p) <= 4
        assert len({ts[n].user_attrs["gpunet_round"] for n in p}) == 1   # never two rounds
        assert len({ts[n].user_attrs["gpunet_worker"]["pid"] for n in p}) == 1
    assert sorted(t.user_attrs["gpunet_round"] for t in ts.values()) == [0] * 5 + [1] * 5


# ====================================================================== pruning
def test_a_pruned_member_leaves_the_others_running(tmp_path, data):
    space = SearchSpace.from_dict({"lr": {"values": [0.05, 1e-7]}})
    res = tune(str(data), 12, epochs=6, space=space, config=TINY_BASE, out=tmp_path / "o",
               device="cpu", seed=0, pruner="median", baseline=False, pack=4)
    assert res.count("COMPLETE") + res.count("PRUNED") == 12 and res.count("FAIL") == 0
    st = load_study(tmp_path / "o" / "study.journal", "p")
    ts = trials_by_number(st)
    pruned = [t for t in ts.values() if t.state.name == "PRUNED"]
    assert pruned and all(t.user_attrs["gpunet_values"]["lr"] == 1e-7 for t in pruned)
    for t in pruned:
        assert max(t.intermediate_values) < 6            # stopped before the last epoch
        mates = [ts[n] for n in t.user_attrs["gpunet_pack"] if n != t.number]
        done = [m for m in mates if m.state.name == "COMPLETE"]
        assert done and all(sorted(m.intermediate_values) == [1, 2, 3, 4, 5, 6] for m in done)
    # ... and their numbers are those of the same packs trained without a pruner
    tune(str(data), 12, epochs=6, space=space, config=TINY_BASE, out=tmp_path / "n",
         device="cpu", seed=0, pruner="none", baseline=False, pack=4)
    free = trials_by_number(load_study(tmp_path / "n" / "study.journal", "p"))
    mates = {n for t in pruned for n in t.user_attrs["gpunet_pack"]} - {t.number for t in pruned}
    for n in mates:
        assert ts[n].intermediate_values == pytest.approx(free[n].intermediate_values, abs=1e-6)
        assert ts[n].user_attrs["gpunet_val_loss"] == pytest.approx(
            free[n].user_attrs["gpunet_val_loss"], rel=1e-5)


# ====================================================================== a kill mid-pack
def _running_pack(journal: Path, timeout: float = 90) -> list[int]:
    """The numbers of a pack seen RUNNING with an epoch reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            st = load_study(journal, "p")
        except (KeyError, ValueError):
            continue
        for t in st.get_trials(deepcopy=False):
            if t.state.name == "RUNNING" and t.user_attrs.get("gpunet_pack") \
                    and t.intermediate_values:
                return list(t.user_attrs["gpunet_pack"])
    raise AssertionError("no pack was seen running")


def test_a_process_killed_mid_pack_has_its_members_failed_on_the_rerun(tmp_path, space):
    big = make_blobs(tmp_path / "big.h5", n=12_000, d=10)
    out = tmp_path / "o"
    out.mkdir()
    cmd = tune_cmd(big, out, space, 6, 8, "--pack", "4", "--no-baseline")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victims = _running_pack(out / "study.journal")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert len(victims) == 4
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for n in victims:
        assert f"trial {n}: its worker is gone; marked failed" in r.stdout
    st = load_study(out / "study.journal", "p")
    ts = trials_by_number(st)
    assert states(st).get("COMPLETE") == 6 and "RUNNING" not in states(st)
    assert sorted(n for n, t in ts.items() if t.state.name == "FAIL") == sorted(victims)
    assert not any((out / "trials").iterdir())


def test_a_pool_worker_killed_mid_pack_has_its_members_failed(tmp_path, space):
    """``--workers 2 --pack 3``: the pool (or the other worker's stale check) fails every
    member of the killed worker's pack at once; a new worker takes its place; the total is
    reached in the same command."""
    big = make_blobs(tmp_path / "big.h5", n=12_000, d=10)
    out = tmp_path / "o"
    out.mkdir()
    p = subprocess.Popen(tune_cmd(big, out, space, 6, 8, "--pack", "3", "--workers", "2",
                                  "--no-baseline"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victims = _running_pack(out / "study.journal")
    st = load_study(out / "study.journal", "p")
    pid = st.trials[victims[0]].user_attrs["gpunet_worker"]["pid"]
    assert pid != p.pid
    os.kill(pid, signal.SIGKILL)
    o, e = p.communicate(timeout=300)
    assert p.returncode == 0, e
    assert f"(pid {pid}) died: killed by SIGKILL" in e
    st = load_study(out / "study.journal", "p")
    ts = trials_by_number(st)
    assert states(st).get("COMPLETE") == 6 and "RUNNING" not in states(st)
    assert sorted(n for n, t in ts.items() if t.state.name == "FAIL") == sorted(victims)
    left = sorted(x.name for x in (out / "trials").iterdir())
    assert not left, (left, o, e)


def test_a_dead_packs_commit_marker_is_removed_and_nothing_else(tmp_path, data, space):
    """A worker killed while committing a pack's saves leaves ``.pack-<key>.commit`` (and
    its temporary file) in ``<out>/trials``; the next stale-trial check removes them once no
    member runs, and leaves everything else."""
    from gpunet.packed import PackCommit
    from gpunet.tune.job import make_job

    tune(str(data), 4, epochs=1, space=space, config=TINY_BASE, out=tmp_path / "o",
         device="cpu", seed=0, baseline=False, pack=4)
    job = make_job(str(data), 4, rounds=1, epochs=1, space=space, config=TINY_BASE,
                   storage=None, study=None, out=tmp_path / "o", seed=0, device="cpu",
                   pruner="none", baseline=False, heartbeat=10, stale_after=120,
                   retry_for=30, max_failures=20)
    st = job.open_study(lambda e, i: None)
    trials = tmp_path / "o" / "trials"
    marker = PackCommit([st.run_dir(n) for n in range(4)]).marker
    assert marker.parent == trials
    other = PackCommit([st.run_dir(n) for n in (4, 5)]).marker   # no such pack in the study
    keep = [other, trials / "mine.txt", trials / f".{other.name}.0a1b2c.gpunet-tmp"]
    gone = [marker, trials / f".{marker.name}.0a1b2c.gpunet-tmp"]
    for f in keep + gone:
        f.write_text("[]")
    st.fail_stale()
    assert [f.exists() for f in keep + gone] == [True] * 3 + [False] * 2
