#!/usr/bin/env bash
# The GPU check: the GPU test cases, the kernel benchmarks and a GPU-vs-CPU training run, on a
# machine with a GPU whose python3 (or $PYTHON) already has cupy, numpy, h5py, typer, pytest
# (and probably torch); needs no internet. Run from anywhere:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Steps (each runs even when an earlier one failed, under its own time limit; the exit code is
# non-zero if any failed):
#   gpu       nvidia-smi: the GPU's name, driver and memory
#   install   pip install --no-deps --no-build-isolation -e . (or, when pip cannot, a
#             PYTHONPATH overlay that maps gpunet.kernels -> kernels/ and gpunet.cli -> cli/)
#   pytest    checks that pytest imports (installs it from .whl/ if that folder exists)
#   tests     pytest over GPU_TEST_FILES below: every test file with GPU cases (the `be`
#             fixture's gpu case, tests taking `gpu_backend`, tests/test_cupy_backend.py; see
#             tests/conftest.py), plus the optimizer and CPU fast-path tests (more cores
#             here); -rs lists each skip with its reason. GPUNET_TEST_SEED=N passes through (the seeds of
#             random inputs, printed with any failure)
#   kernels   python3 benchmarks/kernels.py: each fused kernel's time against its target
#   train     gpunet train digits on the GPU and on the CPU: the metrics side by side, which
#             must agree within float tolerance
#   packed    benchmarks/packed.py --device gpu: packed trials per minute at K = 1, 4, 16, 64,
#             PyTorch's torch.func stacked models beside it
#   extra     benchmarks/train_step.py when it exists, then every benchmarks/gpu_check.d/*.sh
#             (a GPU checkpoint evaluated with no GPU visible; 1M-sample training times)
# It prints each step's output between "=== <step> (limit Ns)" and "=== <step>: exit RC after
# Ns" lines, then a summary (one line per step) and "all steps passed" or "FAILED: <steps>".
# With $OUT set, each step's log is also written to $OUT/<step>.log, the kernel results to
# $OUT/kernels.json, the train_step results to $OUT/train_step.json, the packed-trials figures
# to $OUT/packed.json and the summary to $OUT/summary.txt.
# Selecting steps: GPU_CHECK_STEPS="tests train" runs only the steps named (gpu, install and
# pytest always run); GPU_CHECK_D=0 leaves the gpu_check.d scripts out of the extra step.
# The step limits below add up to 9 minutes (540 s), so the whole check fits one 10-minute
# device call with time to spare; on an H100 it took about 3 minutes before the packed step.

set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUTDIR=${OUT:-}
if [ -n "$OUTDIR" ]; then mkdir -p "$OUTDIR"; fi
PY=${PYTHON:-python3}
ENVFILE="${TMPDIR:-/tmp}/gpunet_env_$$"
rm -f "$ENVFILE"
export ROOT OUTDIR PY ENVFILE
T0=$(date +%s)
FAILED=()
SUMMARY=()

step() {  # step NAME TIMEOUT_S CMD...
    local name=$1 limit=$2
    shift 2
    case " gpu install pytest ${GPU_CHECK_STEPS:-$name} " in
        *" $name "*) ;;
        *) echo "=================== $name: skipped (GPU_CHECK_STEPS)"; return 0 ;;
    esac
    local start rc
    start=$(date +%s)
    echo
    echo "=================== $name (limit ${limit}s)"
    # bash -c so that steps may be shell functions (exported below)
    if [ -n "$OUTDIR" ]; then
        timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 \
            | tee "$OUTDIR/$name.log"
        rc=${PIPESTATUS[0]}
    else
        timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1
        rc=$?
    fi
    local took=$(( $(date +%s) - start ))
    echo "=================== $name: exit $rc after ${took}s"
    SUMMARY+=("$(printf '%-8s exit %-3s %4ss' "$name" "$rc" "$took")")
    if [ "$rc" -ne 0 ]; then FAILED+=("$name"); fi
    return 0
}

gpu_info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || return 1
    nvidia-smi -L || true
}

can_import() {  # the package imports as gpunet, gpunet.kernels (with its .cu files), gpunet.cli
    (cd /tmp && "$PY" - <<'EOF'
import importlib.resources as r
import gpunet, gpunet.kernels, gpunet.backend.cupy_backend
assert r.files("gpunet.kernels").joinpath("batchnorm.cu").is_file(), "kernel sources missing"
try:
    import gpunet.cli  # needs typer
except ImportError as exc:
    print("note: gpunet.cli does not import:", exc)
print("gpunet", gpunet.__version__, "from", gpunet.__file__)
print("kernels from", gpunet.kernels.__file__)
EOF
    )
}

make_overlay() {  # a site dir whose gpunet/ maps kernels/ and cli/ into the package
    local site=${TMPDIR:-/tmp}/gpunet_overlay_$$
    rm -rf "$site"
    mkdir -p "$site/gpunet"
    local f
    for f in "$ROOT"/gpunet/* "$ROOT"/gpunet/.[!.]*; do
        [ -e "$f" ] || continue
        ln -s "$f" "$site/gpunet/$(basename "$f")"
    done
    ln -s "$ROOT/kernels" "$site/gpunet/kernels"
    ln -s "$ROOT/cli" "$site/gpunet/cli"
    echo "$site"
}

install() {
    echo "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PY" -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" \
        || echo "WARNING: cupy does not import"
    local pipargs=(-m pip install --no-deps --no-build-isolation --no-input -q -e "$ROOT")
    if "$PY" "${pipargs[@]}" || "$PY" "${pipargs[@]}" --break-system-packages; then
        if can_import; then return 0; fi
        echo "pip install succeeded but the package does not import; trying an overlay"
    else
        echo "pip install -e . failed; trying a PYTHONPATH overlay"
    fi
    local site
    site=$(make_overlay)
    # PYTHONSAFEPATH keeps the repo root (which has gpunet/ without kernels/) off sys.path
    echo "PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}" > "$ENVFILE"
    PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" can_import
}

train_e2e() {  # the train command on GPU and CPU: same metrics within float tolerance
    local dir
    dir=$(mktemp -d)
    cd "$dir" || return 1  # keep the repo root (gpunet/ without kernels/) off sys.path
    local args=(train digits --epochs 4 --seed 0 --batch-size 64 --json --quiet)
    "$PY" -m gpunet.cli "${args[@]}" --device gpu --out "$dir/gpu" > "$dir/gpu.json" \
        || { echo "gpu training failed"; cat "$dir/gpu.json"; return 1; }
    "$PY" -m gpunet.cli "${args[@]}" --device cpu --out "$dir/cpu" > "$dir/cpu.json" \
        || { echo "cpu training failed"; cat "$dir/cpu.json"; return 1; }
    "$PY" - "$dir/gpu.json" "$dir/cpu.json" <<'EOF'
import json, math, sys

def last_json(path):
    text = open(path).read().strip()
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}

def metrics(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and ("loss" in k or "acc" in k):
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and k in ("test", "final", "metrics", "best", "val", "last"):
            out.update(metrics(v, prefix + k + "."))
        elif k == "history" and isinstance(v, list) and v and isinstance(v[-1], dict):
            out.update(metrics(v[-1], "history[-1]."))
    return out

g, c = metrics(last_json(sys.argv[1])), metrics(last_json(sys.argv[2]))
keys = sorted(set(g) & set(c))
if not keys:
    print("no common loss/accuracy metrics found; gpu:", sorted(g), "cpu:", sorted(c))
    sys.exit(1)
bad = []
print(f"{'metric':<32} {'gpu':>12} {'cpu':>12}")
for k in keys:
    print(f"{k:<32} {g[k]:12.6f} {c[k]:12.6f}")
    tol = 2e-2 * max(abs(c[k]), 1e-3) if "loss" in k else 0.02
    if not (math.isfinite(g[k]) and abs(g[k] - c[k]) <= tol):
        bad.append(k)
if bad:
    print("differ beyond tolerance:", ", ".join(bad))
    sys.exit(1)
print("gpu and cpu training agree")
EOF
}

extra() {
    local rc=0
    if [ -f benchmarks/train_step.py ]; then
        echo "--- benchmarks/train_step.py"
        GPUNET_DEVICE=gpu BENCH_JSON="${OUTDIR:+$OUTDIR/train_step.json}" \
            "$PY" benchmarks/train_step.py || rc=1
    fi
    if [ -d benchmarks/gpu_check.d ] && [ "${GPU_CHECK_D:-1}" != 0 ]; then
        local f
        for f in benchmarks/gpu_check.d/*.sh; do
            [ -e "$f" ] || continue
            echo "--- $f"
            OUT="$OUTDIR" bash "$f" || rc=1
        done
    fi
    return $rc
}

echo "gpunet GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
pytest_run() {  # pytest without the current directory on sys.path
    "$PY" -c 'import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]
import pytest; sys.exit(pytest.main(sys.argv[1:]))' "$@"
}

ensure_pytest() {
    "$PY" -c "import pytest" 2>/dev/null && return 0
    if [ -d "$ROOT/.whl" ]; then
        echo "pytest is missing: installing it from $ROOT/.whl"
        "$PY" -m pip install --no-index --find-links "$ROOT/.whl" -q pytest \
            || "$PY" -m pip install --no-index --find-links "$ROOT/.whl" -q pytest \
                --break-system-packages
    fi
    "$PY" -c "import pytest" || { echo "pytest is not installed (bring wheels in .whl/)"; return 1; }
}

export -f gpu_info can_import make_overlay install train_e2e extra pytest_run ensure_pytest

step gpu 20 gpu_info
step install 60 install
if [ -f "$ENVFILE" ]; then
    # shellcheck disable=SC1090
    . "$ENVFILE"
    export PYTHONPATH
    echo "using the PYTHONPATH overlay: $PYTHONPATH"
fi
step pytest 30 ensure_pytest
# every test file with GPU cases (tests/test_gpu_check.py checks that none is missing), then
# the optimizer tests and the NumPy backend's threaded fast paths (more cores here)
GPU_TEST_FILES=(
    tests/test_cupy_backend.py tests/test_backend.py tests/test_layers.py tests/test_model.py
    tests/test_torch_parity.py tests/test_step.py tests/test_checkpoint.py tests/test_packed_ops.py
    tests/test_optim.py tests/test_numpy_fastpath.py
)
step tests 150 pytest_run "${GPU_TEST_FILES[@]}" -q -rs -p no:cacheprovider --maxfail=10
KJSON=()
if [ -n "$OUTDIR" ]; then KJSON=(--json "$OUTDIR/kernels.json"); fi
step kernels 60 "$PY" benchmarks/kernels.py "${KJSON[@]}"
step train 40 train_e2e
step packed 90 env BENCH_JSON="${OUTDIR:+$OUTDIR/packed.json}" "$PY" benchmarks/packed.py \
    --device gpu
if [ -f benchmarks/train_step.py ] || [ -d benchmarks/gpu_check.d ]; then
    step extra 90 extra
fi

echo
echo "=================== summary ($(( $(date +%s) - T0 ))s in all)"
printf '%s\n' "${SUMMARY[@]}"
if [ -n "$OUTDIR" ]; then printf '%s\n' "${SUMMARY[@]}" > "$OUTDIR/summary.txt"; fi
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
exit 0
