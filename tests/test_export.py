"""``gpunet export``: ONNX Runtime and PyTorch give gpunet's own ``predict --proba``
probabilities (max absolute difference <= 1e-5) for every activation, with and without batch
norm, for softmax regression, on digits and on fresh random inputs; the ONNX graph passes
``onnx.checker`` and records a dynamic batch, its opset and the class names; the
safetensors file loads with ``load_state_dict`` into a hand-built ``torch.nn.Sequential``;
bad input and a missing extra are one-line errors."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from gpunet.cli import app
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from gpunet import checkpoint as ckpt_mod
from gpunet import export
from gpunet.data import load_split
from gpunet.train import fit

runner = CliRunner()
TOL = 1e-5
#: (activation, batch norm, hidden, dropout): every activation with and without batch norm,
#: and softmax regression (--hidden none)
NETS = [("relu", True, [32, 16], 0.0), ("relu", False, [32, 16], 0.0),
        ("tanh", True, [24], 0.2), ("tanh", False, [24, 12], 0.0),
        ("sigmoid", True, [24, 12], 0.0), ("sigmoid", False, [24], 0.1),
        ("relu", True, [], 0.0)]
IDS = [f"{a}-{'bn' if b else 'nobn'}-{'x'.join(map(str, h)) or 'none'}" for a, b, h, _ in NETS]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short digits run per network: {id: best.h5}."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for (act, bn, hidden, p), name in zip(NETS, IDS, strict=True):
        res = fit({"data": "digits", "hidden": hidden, "batchnorm": bn, "activation": act,
                   "dropout": p, "epochs": 3, "batch_size": 64, "device": "cpu",
                   "out": str(root / name)})
        out[name] = res.best_path
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, runs):
    """Raw inputs: the digits test split, and fresh random rows drawn around the training
    distribution (``mean + std * N(0, 1)`` per feature), each also as an HDF5 file."""
    root = tmp_path_factory.mktemp("inputs")
    std = ckpt_mod.load(runs[IDS[0]]).standardizer
    seed = np.random.SeedSequence().entropy
    print(f"random inputs seed: {seed}")
    rng = np.random.default_rng(seed)
    Xr = (std["mean"] + std["std"] * rng.standard_normal((1000, 64))).astype(np.float32)
    Xd = load_split("digits", "test").X
    files = {}
    for name, X in (("digits", Xd), ("random", Xr)):
        with h5py.File(root / f"{name}.h5", "w") as f:
            f["X"] = X
        files[name] = (root / f"{name}.h5", X)
    return files


def gpunet_proba(ckpt, data_file, tmp_path):
    out = tmp_path / "p.npy"
    r = invoke("predict", ckpt, "--data", data_file, "--out", out, "--proba", "--device", "cpu")
    assert r.exit_code == 0, r.output
    return np.load(out)


#: every network with BatchNormalization nodes; those with batch norm also folded
ONNX_CASES = [(n, False) for n in IDS] + [(n, True) for n in IDS if "-bn-" in n and
                                         not n.endswith("none")]


@pytest.mark.parametrize("name,fold", ONNX_CASES,
                         ids=[f"{n}-{'folded' if f else 'node'}" for n, f in ONNX_CASES])
def test_onnx_runtime_matches_gpunet_predict(runs, inputs, tmp_path, name, fold):
    path = tmp_path / "m.onnx"
    args = ["export", runs[name], "--format", "onnx", "--out", path]
    r = invoke(*args, *(["--fold-batchnorm"] if fold else []))
    assert r.exit_code == 0, r.output
    assert "opset 17" in r.output and "dynamic batch" in r.output
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for what, (h5, X) in inputs.items():
        want = gpunet_proba(runs[name], h5, tmp_path)
        got = sess.run(["probabilities"], {"input": X})[0]
        diff = float(np.abs(got - want).max())
        print(f"{name} {'folded' if fold else 'node'} {what}: max |ORT - gpunet| = {diff:.2e}")
        assert got.shape == want.shape and diff <= TOL, (what, diff)
        top2 = np.sort(want, axis=1)[:, -2:]
        close = top2[:, 1] - top2[:, 0] <= 2 * TOL  # a near-tie may go either way
        assert np.all((got.argmax(1) == want.argmax(1)) | close)
    # a batch of one and a batch of 7 run through the same graph (dynamic batch)
    X = inputs["digits"][1]
    one = sess.run(None, {"input": X[:1]})[0]
    seven = sess.run(None, {"input": X[:7]})[0]
    assert one.shape == (1, 10) and seven.shape == (7, 10)
    np.testing.assert_allclose(seven[:1], one, atol=1e-6)


def test_onnx_graph_metadata_and_checker(runs, tmp_path):
    name = IDS[0]
    path = tmp_path / "m.onnx"
    model = export.to_onnx(runs[name], path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", 17)]
    inp = loaded.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param == "batch" and dims[1].dim_value == 64
    assert [o.name for o in loaded.graph.output] == ["probabilities"]
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert meta["batchnorm"] == "node" and meta["standardizer"] == "in-graph"
    assert json.loads(meta["model"])["hidden"] == [32, 16]
    ops = [n.op_type for n in loaded.graph.node]
    assert ops == ["Sub", "Div", "Gemm", "BatchNormalization", "Relu", "Gemm",
                   "BatchNormalization", "Relu", "Gemm", "Softmax"]
    assert loaded.SerializeToString() == model.SerializeToString()
    folded = export.to_onnx(runs[name], fold_batchnorm=True, opset=13)
    assert [n.op_type for n in folded.graph.node] == ["Sub", "Div", "Gemm", "Relu", "Gemm",
                                                      "Relu", "Gemm", "Softmax"]
    assert folded.opset_import[0].version == 13
    # dropout is the identity at inference: no node for it
    drop = export.to_onnx(runs["tanh-bn-24"])
    assert "Dropout" not in [n.op_type for n in drop.graph.node]


def test_fold_batchnorm_formula():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    bn = {"gamma": rng.uniform(0.5, 2, 3), "beta": rng.standard_normal(3),
          "mean": rng.standard_normal(3), "var": rng.uniform(0.1, 3, 3), "eps": 1e-5}
    x = rng.standard_normal((4, 5))
    want = (x @ W - bn["mean"]) / np.sqrt(bn["var"] + 1e-5) * bn["gamma"] + bn["beta"]
    W2, b2 = export.fold_batchnorm(W, None, bn)
    np.testing.assert_allclose(x @ W2 + b2, want, rtol=1e-5, atol=1e-5)


def build_sequential(cfg):
    """The module the README documents, built by hand (not with gpunet's helper)."""
    nn = torch.nn
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[cfg["activation"]]
    mods, width = [], cfg["in_features"]
    for h in cfg["hidden"]:
        mods.append(nn.Linear(width, h, bias=not cfg["batchnorm"]))
        if cfg["batchnorm"]:
            mods.append(nn.BatchNorm1d(h, eps=cfg["bn_eps"], momentum=cfg["bn_momentum"]))
        mods.append(act())
        if cfg["dropout"] > 0:
            mods.append(nn.Dropout(cfg["dropout"]))
        width = h
    mods.append(nn.Linear(width, cfg["classes"]))
    return nn.Sequential(*mods)


@pytest.mark.parametrize("name", IDS)
def test_safetensors_loads_into_torch_sequential(runs, inputs, tmp_path, name):
    path = tmp_path / "m.safetensors"
    r = invoke("export", runs[name], "--format", "safetensors", "--out", path)
    assert r.exit_code == 0, r.output
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    cfg = json.loads(meta["model"])
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    net = build_sequential(cfg)
    net.load_state_dict(load_file(str(path)), strict=True)
    net.eval()
    helper = export.torch_sequential(cfg)
    assert str(helper) == str(net)
    mean = np.array(json.loads(meta["standardizer_mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["standardizer_std"]), dtype=np.float32)
    for what, (h5, X) in inputs.items():
        want = gpunet_proba(runs[name], h5, tmp_path)
        with torch.no_grad():
            got = torch.softmax(net(torch.from_numpy((X - mean) / std)), dim=1).numpy()
        diff = float(np.abs(got - want).max())
        print(f"{name} {what}: max |torch - gpunet| = {diff:.2e}")
        assert diff <= TOL, (what, diff)


def test_export_bad_input_is_one_line(runs, tmp_path):
    ck = runs[IDS[0]]
    for args, msg in (
        (["export", tmp_path / "missing.h5"], "checkpoint not found"),
        (["export", ck, "--format", "pt"], "unknown --format 'pt'"),
        (["export", ck, "--opset", "5"], "--opset must be in 13.."),
        (["export", ck, "--format", "safetensors", "--opset", "13"], "only applies"),
        (["export", ck, "--out", ck], "refusing to overwrite"),
    ):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and msg in lines[-1], r.output
    not_h5 = tmp_path / "x.h5"
    not_h5.write_bytes(b"nope")
    r = invoke("export", not_h5)
    assert r.exit_code == 2 and "not a gpunet checkpoint" in r.output


def test_export_default_out_and_json(runs, tmp_path):
    src = runs[IDS[-1]]
    ck = tmp_path / "run.h5"
    ck.write_bytes(src.read_bytes())
    r = invoke("export", ck, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["out"] == str(tmp_path / "run.onnx") and res["format"] == "onnx"
    assert res["opset"] == 17 and (tmp_path / "run.onnx").stat().st_size == res["bytes"]
    r = invoke("export", ck, "--out", tmp_path / "w.safetensors")  # format from the suffix
    assert r.exit_code == 0 and "safetensors" in r.output


@pytest.mark.parametrize("module,fmt,extra", [("onnx", "onnx", "onnx"),
                                              ("safetensors", "safetensors", "safetensors")])
def test_missing_extra_names_it(runs, tmp_path, monkeypatch, module, fmt, extra):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    r = invoke("export", runs[IDS[0]], "--format", fmt, "--out", tmp_path / f"m.{fmt}")
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"pip install 'gpunet[{extra}]'" in line, line
    assert not (tmp_path / f"m.{fmt}").exists()
