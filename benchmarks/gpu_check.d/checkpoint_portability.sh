#!/usr/bin/env bash
# A checkpoint written on the GPU loads and evaluates with no GPU visible, and the
# inference-mode results agree with the GPU's evaluation of the same file.
set -eu
PY=${PY:-python3}
dir=$(mktemp -d)
cd "$dir"
"$PY" -m gpunet.cli train digits --epochs 3 --seed 1 --device gpu --out "$dir/run" --quiet --json \
    > "$dir/train.json"
"$PY" -m gpunet.cli eval "$dir/run/best.h5" --device gpu --json > "$dir/eval_gpu.json"
CUDA_VISIBLE_DEVICES="" "$PY" -m gpunet.cli eval "$dir/run/best.h5" --device cpu --json \
    > "$dir/eval_cpu.json"
"$PY" - "$dir/eval_gpu.json" "$dir/eval_cpu.json" <<'PYEOF'
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
print(f"checkpoint from the GPU: eval on gpu acc={g['accuracy']:.4f} loss={g['loss']:.6f}; "
      f"on cpu (no GPU visible) acc={c['accuracy']:.4f} loss={c['loss']:.6f}, n={c['n']}")
assert g["n"] == c["n"] and abs(g["accuracy"] - c["accuracy"]) <= 1.0 / c["n"] + 1e-12
assert abs(g["loss"] - c["loss"]) <= 1e-4 * max(1.0, abs(c["loss"]))
print("checkpoint portability: ok")
PYEOF
