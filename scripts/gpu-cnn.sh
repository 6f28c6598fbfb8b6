#!/usr/bin/env bash
# The CNN fine-tuning of issue 18, prepared for a GPU machine that has none of the data: trains
# train/cnn.py's CNN on the compact copy of its training crops that `cnn.py pack` writes, longer
# and with bigger batches than the 2-core machine affords, and sends back checkpoints to score here.
#
#   here:     .deps/venv/bin/python train/cnn.py pack          # .deps/cnn-pack, 44 MiB (prints its size)
#   there:    scripts/gpu-cnn.sh                               # run tool, carry [".deps/cnn-pack"]
#   here:     models/README.md, "GPU fine-tuning (prepared)": unpack, `cnn.py score`, report
#   CPU test: scripts/gpu-cnn.sh --tiny                        # the tiny pack, --device cpu, seconds
#
# Steps, each under `timeout` so that what is done comes back: the `zero-shot` fold (both zero-shot
# families held out) for SEEDS, then `--all` (the candidate) for seed 0. Checkpoints and the pack's
# logits go into OUT/gpu-cnn-runs.tar (written on exit, also after a timeout), the log into
# OUT/gpu-cnn.log, with a window-level EER per run on the pack's few evaluation windows (a quick
# look only: the report scores the checkpoints on every window here).
# Settings (environment): OUT (required), PACK, DEVICE (cuda), EPOCHS (40), BATCH (128), LR,
# SEEDS (0,1,2), BUDGET_S (660: both steps together), PY (python3; it needs torch and numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=()
if [[ "${1:-}" == "--tiny" ]]; then
  tiny=(--tiny)
  : "${PACK:=.deps/cnn-tiny-pack}" "${DEVICE:=cpu}" "${OUT:=$(mktemp -d)}"
fi
: "${OUT:?set OUT to the folder that comes back}" "${PACK:=.deps/cnn-pack}" "${DEVICE:=cuda}"
: "${EPOCHS:=40}" "${BATCH:=128}" "${LR:=3e-3}" "${SEEDS:=0,1,2}" "${BUDGET_S:=660}" "${PY:=python3}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-cnn.log") 2>&1
t0=$SECONDS
runs=$(mktemp -d)
trap 'tar -C "$runs" -cf "$OUT/gpu-cnn-runs.tar" . && echo "gpu-cnn: $(ls "$runs" | wc -l) files in $OUT/gpu-cnn-runs.tar after $((SECONDS - t0)) s"' EXIT
DEVICE=$DEVICE "$PY" - <<'PY'
import os, sys
try:
    import numpy, torch
except ImportError as e:
    sys.exit(f"gpu-cnn: this python has no {e.name}: the GPU machine needs python3 with torch (CUDA) and numpy")
dev = os.environ["DEVICE"]
if dev.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu-cnn: torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
print(f"gpu-cnn: torch {torch.__version__}, numpy {numpy.__version__}, device {dev}"
      + (f" ({torch.cuda.get_device_name(0)})" if dev.startswith("cuda") else ""))
PY
[[ -f "$PACK/files.json" ]] || { echo "gpu-cnn: no pack at $PACK (cnn.py pack, then carry it)"; exit 1; }
fold=zero-shot
[[ ${#tiny[@]} -gt 0 ]] && fold=tts-a
common=(--cache "$PACK" --runs "$runs" --device "$DEVICE" --epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" --threads 8 "${tiny[@]}")
left() { echo $((BUDGET_S - (SECONDS - t0))); }
# The fold gets up to two thirds of the budget, the candidate what is left.
timeout "$((BUDGET_S * 2 / 3))" "$PY" train/cnn.py fit "${common[@]}" --folds "$fold" --seeds "$SEEDS" \
  || echo "gpu-cnn: fit $fold stopped (rc $?); its checkpoints come back as they are"
if [[ $(left) -gt 30 ]]; then
  timeout "$(left)" "$PY" train/cnn.py fit "${common[@]}" --all --seeds 0 \
    || echo "gpu-cnn: fit --all stopped (rc $?); its checkpoint comes back as it is"
fi
# A quick look: window-level EER (genuine test files vs held-out clones) on the pack's windows.
"$PY" - "$PACK" "$runs" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
pack, runs = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((pack / "files.json").read_text())
files, held = meta["files"], set(meta["pack"]["eval_fold"])
index = np.load(pack / "eval_index.npy")
for run in sorted(runs.glob("*_s*.npy")):
    x = np.load(run)
    g = np.concatenate([x[s:s + n] for k, _, s, n in index if files[k]["split"] == "test" and files[k]["label"] == "bonafide"])
    c = np.concatenate([x[s:s + n] for k, _, s, n in index if files[k]["label"] == "spoof" and files[k]["family"] in held])
    g, c = g[~np.isnan(g)], c[~np.isnan(c)]
    if len(g) and len(c):
        t = np.sort(np.concatenate([g, c]))
        frr = np.array([np.mean(c < v) for v in t]); far = np.array([np.mean(g >= v) for v in t])
        i = int(np.argmin(np.abs(frr - far)))
        print(f"gpu-cnn: {run.stem}: window EER {(frr[i] + far[i]) / 2 * 100:.1f}% on the pack "
              f"({len(g)} genuine, {len(c)} clone windows{', families it trained on' if run.stem.startswith('all_') else ''})")
PY
