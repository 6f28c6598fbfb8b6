#!/usr/bin/env python3
"""Per-channel-class thresholds for an exported detector, set under the daemon's alert rule.

    python train/class_thresholds.py models/ [--write]   # ../shared/data (~15 min on 2 cores)
    python train/class_thresholds.py DIR --tiny          # seconds, generated clips (CI)

The daemon screens a call as one of three channel classes (src/verdict: `wideband`,
`narrowband_g711`, `narrowband_lossy`) and takes each class's enter threshold from the sidecar's
`threshold.by_class`. This script sets them: every genuine file of the calibration pool goes
through each evaluation channel of a class, is cut into the daemon's windows (1 s, 0.5 s hop, at
most 8.5 s of each file per channel) and scored by the model; its *peak* (train/product_check.peak:
the highest threshold at which the daemon's rule, mean of `smoothing_windows` log-odds at or over
it `enter_windows` times in a row, would alert) is taken, and the class's threshold is the 99th
percentile of the pool's peaks on that class's channels: at most 1% of those genuine files alert.

Pools, for a model trained on 0.5.0's data (real/ + demo/, its split by `train.group_split`):
- calibration: the genuine files of real/ and demo/ in the calibration split, and the real2/
  speakers (never heard by such a model) whose group falls in the train or calibration split;
- report: the genuine test split of real/ and demo/, and the real2/ speakers of the test split
  (telephone, conversational, meeting, broadcast speech in many languages): genuine files
  alerted and false alerts per genuine call-hour, per channel; the clones caught at the
  threshold among the test split's held-out systems of demo/ and every system of demo2/ (none of
  which such a model trained on), before (the one threshold `threshold.p_spoof`) and after.

`--write` puts `threshold.by_class` and `validation.by_class` into DIR/detector.json.

A sidecar with a `cascade` section is scored as the daemon runs it (src/detect/cascade.rs): the
first stage scores every window, the model only the windows whose first-stage log-odds reach
`escalate_logit` and every `sample_every`-th window of the file (its first included); a window's
score is the model's where it ran, the first stage's otherwise. The share of windows that reached
the model is reported per channel and kind.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
import product_check  # noqa: E402
import train as T  # noqa: E402

CLASSES = {"wideband": ["wideband"], "narrowband_g711": ["g711_mu", "g711_a"],
           "narrowband_lossy": ["gsm", "amr_nb", "opus"]}
MAX_WINDOWS = 16  # 8.5 s of each file per channel
QUANTILE = 0.99


def pools(data, tiny, cache):
    """(path, pool, kind, is_real2, label) for every file scored."""
    if tiny:
        items = T.generated_items(cache, 12) + T.tiny_bonafide(cache)
        return [(it[0], ["calib", "report"][k % 2], "genuine" if it[1] == "bonafide" else "clone_test",
                 False, it[1]) for k, it in enumerate(items)]
    out = []
    for path, label, system, family, group, split, source in T.shared_items(data, T.SETS_V1):
        if label == "bonafide" and split in ("calib", "test"):
            out.append((path, "calib" if split == "calib" else "report", "genuine", False, label))
        elif label == "spoof" and split == "test":
            out.append((path, "report", "clone_test", False, label))
    for path, label, system, family, group, split, source in T.shared_items(data, ("real2", "demo2")):
        if "/real2/" in str(path):
            out.append((path, "report" if split == "test" else "calib", "genuine", True, label))
        elif label == "spoof":
            out.append((path, "report", "clone_demo2", False, label))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, default=T.ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=T.ROOT / ".deps" / "train-cache")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--write", action="store_true", help="write the thresholds into DIR/detector.json")
    ap.add_argument("--rule", help="SMOOTHING,ENTER: the alert rule to set thresholds for (default config.toml's)")
    ap.add_argument("--save-scores", type=Path, help="keep every file-channel's window log-odds here (JSON)")
    ap.add_argument("--scores", type=Path, help="reuse the window log-odds of --save-scores instead of scoring")
    args = ap.parse_args()
    t0 = time.time()
    card_path = args.model_dir / "detector.json"
    card = json.loads(card_path.read_text())
    session = ort.InferenceSession(str(args.model_dir / "detector.onnx"))
    cascade = card.get("cascade")
    first = ort.InferenceSession(str(args.model_dir / cascade["first_stage"])) if cascade else None
    escalated = {}  # (channel, kind) -> [windows escalated, windows]
    smoothing, enter = (tuple(int(v) for v in args.rule.split(",")) if args.rule
                        else product_check.verdict_rule())
    channels = [ch for chs in CLASSES.values() for ch in chs]
    scored = []  # (pool, kind, real2, channel, window log-odds, call seconds)
    if args.scores:
        saved = json.loads(args.scores.read_text())
        scored, escalated = saved["rows"], {tuple(k.split("|")): v for k, v in saved["escalated"].items()}
    else:
        items = pools(args.data, args.tiny, args.cache)
        for n, ((path, pool, kind, real2, label), x) in enumerate(T.loaded(items)):
            narrowband = sf.info(str(path)).samplerate < T.SR
            crng = np.random.default_rng(T.SEED + 1)
            seconds = min(len(x), T.WINDOW + (MAX_WINDOWS - 1) * T.WINDOW // 2) / T.SR
            for ch, ws in T.channel_windows(x, channels, crng, narrowband, MAX_WINDOWS):
                batch = np.stack(ws).astype(np.float32)
                if first is None:
                    logits = session.run(None, {"waveform": batch})[0]
                else:
                    logits = first.run(None, {"waveform": batch})[0].copy()
                    every = cascade["sample_every"]
                    up = logits >= cascade["escalate_logit"]
                    if every:
                        up |= np.arange(len(ws)) % every == 0
                    if up.any():
                        logits[up] = session.run(None, {"waveform": batch[up]})[0]
                    count = escalated.setdefault((ch, kind), [0, 0])
                    count[0] += int(up.sum())
                    count[1] += len(ws)
                scored.append((pool, kind, real2, ch, [round(float(v), 4) for v in logits], seconds))
            if (n + 1) % 200 == 0:
                print(f"{n + 1}/{len(items)} files scored, {time.time() - t0:.0f} s", flush=True)
    if args.save_scores:
        args.save_scores.write_text(json.dumps(
            {"rows": scored, "escalated": {"|".join(k): v for k, v in escalated.items()}}))
    rows = [(pool, kind, real2, ch, product_check.peak(np.array(logits), smoothing, enter), seconds)
            for pool, kind, real2, ch, logits, seconds in scored]
    old = float(np.log(card["threshold"]["p_spoof"] / (1 - card["threshold"]["p_spoof"])))
    by_class, validation = {}, {}
    for cls, chs in CLASSES.items():
        cal = [r[4] for r in rows if r[0] == "calib" and r[1] == "genuine" and r[3] in chs]
        if not cal:
            continue
        thr = float(np.quantile(cal, QUANTILE))
        by_class[cls] = round(float(1 / (1 + np.exp(-thr))), 4)
        per_channel = {}
        for ch in chs:
            rep = [r for r in rows if r[0] == "report" and r[3] == ch]
            entry = {}
            for name, t in (("before", old), ("after", thr)):
                g = [r for r in rep if r[1] == "genuine"]
                g2 = [r for r in g if r[2]]
                hours = sum(r[5] for r in g2) / 3600
                e = {"genuine_alerted": rate([r[4] >= t for r in g]),
                     "real2_alerts_per_hour": round(sum(r[4] >= t for r in g2) / hours, 2) if hours else None}
                for kind in ("clone_test", "clone_demo2"):
                    e[f"{kind}_caught"] = rate([r[4] >= t for r in rep if r[1] == kind])
                entry[name] = e
            entry["n"] = {k: sum(r[1] == k for r in rep) for k in ("genuine", "clone_test", "clone_demo2")}
            entry["real2_genuine_hours"] = round(sum(r[5] for r in rep if r[1] == "genuine" and r[2]) / 3600, 3)
            if escalated:
                entry["to_full_model"] = {k: round(escalated[(ch, k)][0] / escalated[(ch, k)][1], 4)
                                          for k in ("genuine", "clone_test", "clone_demo2") if (ch, k) in escalated}
            per_channel[ch] = entry
        validation[cls] = {"threshold_p_spoof": by_class[cls], "calibration_files": len(cal),
                           "channels": per_channel}
        print(f"{cls}: threshold {by_class[cls]} (from {len(cal)} genuine file-channels)")
        for ch, e in per_channel.items():
            print(f"  {ch}: before {e['before']}  after {e['after']}  n {e['n']}")
    print(f"{time.time() - t0:.0f} s")
    if args.write:
        card["threshold"]["by_class"] = by_class
        card["threshold"]["by_class_chosen_on"] = (
            ("the cascade as the daemon runs it: " if cascade else "") +
            f"per channel class, the {QUANTILE:.0%} quantile of genuine files' peak under the daemon's rule "
            f"(mean of {smoothing} windows, {enter} in a row): real/ and demo/ calibration-split genuine files "
            "and real2/ speakers of the train and calibration splits (train/class_thresholds.py)")
        card.setdefault("validation", {})["by_class"] = validation
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote threshold.by_class into {card_path}")


def rate(flags):
    return round(float(np.mean(flags)), 4) if len(flags) else None


if __name__ == "__main__":
    main()
