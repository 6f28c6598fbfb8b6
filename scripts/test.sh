#!/usr/bin/env bash
# Every test: set up, then the Rust tests (unit, behaviour, live capture through a virtual sound
# card) and a seconds-long end-to-end run of the training code.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
else
  cargo test --all-targets --no-fail-fast
fi
cargo test --doc --quiet
# Training code stays alive: a tiny run on generated clips, into a throw-away folder.
tiny=$(mktemp -d)
.deps/venv/bin/python train/train.py --tiny --out "$tiny" >/dev/null
.deps/venv/bin/python - "$tiny" <<'PY'
import json, sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
card = json.load(open(f"{d}/detector.json"))
s = ort.InferenceSession(f"{d}/detector.onnx")
x = np.zeros((2, card["input"]["window_samples"]), np.float32)
y = s.run([card["output"]["name"]], {card["input"]["name"]: x})[0]
assert y.shape == (2,), y.shape
print(f"train smoke: tiny model exported, output {y.shape}, threshold {card['threshold']['p_spoof']}")
PY
rm -rf "$tiny"
