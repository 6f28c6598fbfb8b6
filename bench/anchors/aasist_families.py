#!/usr/bin/env python3
"""The AASIST anchor on the same per-family, per-channel table as train/lofo.py.

    bench/anchors/setup.sh                                   # exports .deps/anchors/aasist.onnx
    .deps/venv/bin/python bench/anchors/aasist_families.py   # ~15 min on 2 cores

AASIST (pretrained on ASVspoof 2019 LA, never trained here) scores every demo family's spoof
files (at most --per-family of them, a fixed sample) and the genuine speakers of the test split
(the same 213 files train/lofo.py tests against), through the same channels. File score: the
mean of AASIST's logit over up to three 4.04 s windows (its own input length; shorter files are
tiled, as AASIST's recipe does). All of its families are unseen to it. Writes
.deps/lofo/aasist-CHANNELS.json and prints a Markdown table. Never part of the product.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))
import train as T  # noqa: E402

N = 64600


def windows(x):
    if len(x) < N:
        return [np.resize(x, N)]
    return [x[s:s + N] for s in range(0, len(x) - N + 1, N)][:3]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=ROOT / ".deps" / "anchors" / "aasist.onnx")
    ap.add_argument("--out", type=Path, default=ROOT / ".deps" / "lofo")
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--channels", default="wideband,g711_mu,g711_a,gsm",
                    help="comma-separated, from train/lofo.py's (also amr_nb, opus)")
    args = ap.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(args.model), options)
    items = T.shared_items(args.data) + T.generated_items(ROOT / ".deps" / "train-cache", 72)
    rng = np.random.default_rng(T.SEED)
    bona = [it for it in items if it[1] == "bonafide" and it[5] == "test"]
    spoof = {}
    for it in items:
        if it[1] == "spoof":
            spoof.setdefault(it[3], []).append(it)
    chosen = bona[:]
    for fam, its in sorted(spoof.items()):
        pick = rng.permutation(len(its))[: args.per_family]
        chosen += [its[i] for i in sorted(pick)]
    scores = {ch: {"bonafide": [], "spoof": {}} for ch in args.channels.split(",")}
    for k, (path, label, system, family, *_rest) in enumerate(chosen):
        try:
            x = T.load(path)
        except Exception as e:
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        crng = np.random.default_rng(T.SEED + 1)
        for ch in scores:
            y = T.channel(x, ch, crng)
            s = float(np.mean(session.run(None, {"waveform": np.stack(windows(y))})[0]))
            if label == "bonafide":
                scores[ch]["bonafide"].append(s)
            else:
                scores[ch]["spoof"].setdefault(family, []).append(s)
        if (k + 1) % 100 == 0:
            print(f"{k + 1}/{len(chosen)} files", flush=True)
    report = {}
    for ch, sc in scores.items():
        for fam, s in sc["spoof"].items():
            e, _ = T.eer(sc["bonafide"], s)
            report.setdefault(fam, {})[ch] = {"n_spoof": len(s), "n_bonafide": len(sc["bonafide"]),
                                              "eer_file": round(e, 4)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"aasist-{'-'.join(scores)}.json").write_text(json.dumps(report, indent=1))
    print("| held-out family | " + " | ".join(f"AASIST {ch}" for ch in scores) + " |")
    print("|---|" + "---|" * len(scores))
    for fam, r in sorted(report.items()):
        n = next(iter(r.values()))["n_spoof"]
        print(f"| {fam} (n={n}) | " + " | ".join(f"{r[ch]['eer_file'] * 100:.1f}%" for ch in scores) + " |")


if __name__ == "__main__":
    main()
