#!/usr/bin/env bash
# Wall time of `gpunet train` for one epoch over 1M samples: device-resident data
# with the CUDA-graph step, the same without the graph, and data streamed through pinned
# buffers (memory budget below the data's size).
set -u
PY=${PY:-python3}
dir=$(mktemp -d)
"$PY" - "$dir/big.h5" <<'PYEOF'
import sys, h5py, numpy as np
rng = np.random.default_rng(0)
n, d = 1_000_000, 784
X = rng.integers(0, 256, (n, d), dtype=np.uint8)
y = (X[:, :16].sum(axis=1) % 10).astype(np.int64)  # a learnable rule
with h5py.File(sys.argv[1], "w") as f:
    f["X"] = X
    f["y"] = y
print(f"wrote {n:,} x {d} uint8 samples")
PYEOF
run() {  # run NAME ARGS...
    local name=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    "$PY" -m gpunet.cli train "$dir/big.h5" --epochs 1 --hidden 1024,1024 --batch-size 512 \
        --lr-schedule none --device gpu --quiet --json --out "$dir/$name" "$@" \
        > "$dir/$name.json" || { echo "$name: failed"; cat "$dir/$name.json"; return 1; }
    t1=$(date +%s.%N)
    "$PY" - "$name" "$t0" "$t1" "$dir/$name/metrics.jsonl" <<'PYEOF'
import json, sys
name, t0, t1, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rec = [json.loads(line) for line in open(path) if '"event"' not in line][-1]
print(f"{name:24s} command {t1 - t0:6.1f} s   epoch train {rec['seconds']:6.2f} s   "
      f"{rec['samples_per_s']:>12,.0f} samples/s   train acc {rec['train_acc']:.4f}")
PYEOF
}
rc=0
run resident-graph --memory-budget 8GB || rc=1
run resident-eager --memory-budget 8GB --no-cuda-graph || rc=1
run streamed-graph --memory-budget 1GB || rc=1
exit $rc
