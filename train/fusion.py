#!/usr/bin/env python3
"""Choose how window scores become alerts, on the calibration split only.

    python train/fusion.py                 # ../shared/data, the shipped model (about 5 min)
    python train/fusion.py --tiny          # seconds: generated clips (CI keeps it alive)

Builds calls from the *calibration* split of models/training_manifest.csv (speakers and
synthesis systems that never trained the model and are never reported as unseen): genuine calls
(one speaker's files joined into calls of 20-40 s) and switch calls (a genuine opening, then a calibration
system's clone). Every call goes through G.711 mu-law, is cut into the daemon's windows (1 s,
0.5 s hop) and scored by models/detector.onnx. The alert rules of src/verdict/fusion.rs are then
replayed on those scores:

- "average": mean log-odds of the last `smoothing` windows at or above a threshold for
  `enter_windows` windows in a row (the rule shipped so far);
- "cusum": a one-sided CUSUM of the window log-odds, S = clamp(S + logit - drift, 0, cap), alert
  at S >= h; the textbook detector of a change at an unknown time.

Each candidate's threshold is set so its false alerts per genuine call-hour match the current
defaults' on these calls; at that equal false-alert rate the candidates are compared on delay
after the switch (p50/p95, audio seconds) and on switches missed. Writes a JSON report.
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
import train  # noqa: E402

HOP = train.WINDOW // 2
MAX_LOGIT = 8.0
EXIT_P, EXIT_WINDOWS = 0.3, 4


def window_logits(session, x):
    windows = train.sliding(x, HOP)
    if not windows:
        return np.zeros(0, np.float32)
    return session.run(None, {"waveform": np.stack(windows).astype(np.float32)})[0]


def replay(logits, rule, threshold):
    """Alert times (window index) of one call under `rule`, mirroring src/verdict/fusion.rs."""
    l = np.clip(logits, -MAX_LOGIT, MAX_LOGIT)
    alerts, suspected, above, below, s = [], False, 0, 0, 0.0
    for i in range(len(l)):
        k = rule.get("smoothing", 4)
        avg = l[max(0, i - k + 1):i + 1].mean()
        if suspected:
            below = below + 1 if avg < np.log(EXIT_P / (1 - EXIT_P)) else 0
            if below >= EXIT_WINDOWS:
                suspected, below, s = False, 0, 0.0
            continue
        if rule["kind"] == "average":
            above = above + 1 if avg >= threshold else 0
            hit = above >= rule["enter_windows"]
        else:
            s = min(max(0.0, s + l[i] - rule["drift"]), rule["cap"])
            hit = s >= threshold
        if hit:
            alerts.append(i)
            suspected, above = True, 0
    return alerts


def outcome(calls, rule, threshold):
    genuine_s, false_alerts, delays, missed = 0.0, 0, [], 0
    for c in calls:
        alerts = replay(c["logits"], rule, threshold)
        end_s = [(i * HOP + train.WINDOW) / train.SR for i in alerts]
        onset = c["onset_s"]
        before = [t for t in end_s if onset is None or t <= onset]
        false_alerts += len(before)
        genuine_s += c["seconds"] if onset is None else onset
        if onset is not None:
            after = [t for t in end_s if t > onset]
            if after:
                delays.append(after[0] - onset)
            else:
                missed += 1
    switches = sum(c["onset_s"] is not None for c in calls)
    return {
        "false_alerts_per_hour": false_alerts / max(genuine_s, 1e-9) * 3600,
        "delay_p50_s": float(np.percentile(delays, 50)) if delays else None,
        "delay_p95_s": float(np.percentile(delays, 95)) if delays else None,
        "missed": missed / max(switches, 1),
    }


def threshold_for(calls, rule, grid, budget):
    """The most permissive threshold on `grid` whose false-alert rate stays within `budget`."""
    for t in sorted(grid):
        if outcome(calls, rule, t)["false_alerts_per_hour"] <= budget + 1e-9:
            return t
    return max(grid)


def build_calls(items, session, rng, channel):
    by_speaker = defaultdict(list)
    spoofs = defaultdict(list)
    for path, label, system in items:
        (by_speaker[path.parent] if label == "bonafide" else spoofs[system]).append(path)
    audio = {}

    def get(p):
        if p not in audio:
            audio[p] = train.load(p)
        return audio[p]

    calls = []
    systems = sorted(spoofs)
    n = 0
    for speaker, files in sorted(by_speaker.items()):
        files = sorted(files)
        rng.shuffle(files)
        # The speaker's files, joined into calls of 20-40 s each.
        genuine, target = [], rng.uniform(20, 40)
        for i, f in enumerate(files):
            genuine.append(get(f))
            if sum(map(len, genuine)) / train.SR < target and i + 1 < len(files):
                continue
            x = np.concatenate(genuine)
            genuine, target = [], rng.uniform(20, 40)
            if len(x) < 10 * train.SR:
                continue
            calls.append({"x": x, "onset_s": None})
            if systems:
                # The same caller's opening, then a calibration system's clone (files joined).
                opening = x[: int(rng.uniform(5, min(15, len(x) / train.SR - 1)) * train.SR)]
                system = systems[n % len(systems)]
                picks = rng.permutation(len(spoofs[system]))[:4]
                clone = np.concatenate([get(spoofs[system][j]) for j in picks])[: 20 * train.SR]
                calls.append({"x": np.concatenate([opening, clone]), "onset_s": len(opening) / train.SR,
                              "system": system})
            n += 1
    for c in calls:
        y = train.channel(c.pop("x"), channel, rng)
        c["seconds"] = len(y) / train.SR
        c["logits"] = window_logits(session, y)
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=train.ROOT.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=train.ROOT / "models")
    ap.add_argument("--channel", default="g711_mu")
    ap.add_argument("--out", type=Path, default=train.ROOT / ".deps" / "fusion" / "fusion.json")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(train.SEED)
    session = ort.InferenceSession(str(args.model / "detector.onnx"))
    if args.tiny:
        items = [(p, "bonafide", "bonafide") for p, *_ in train.tiny_bonafide(args.out.parent / "cache")]
        items += [(p, lab, sys_) for p, lab, sys_, *_ in train.generated_items(args.out.parent / "cache", 6)]
    else:
        with open(args.model / "training_manifest.csv") as f:
            items = [(args.data / r["path"], r["label"], r["system"]) for r in csv.DictReader(f)
                     if r["split"] == "calib" and r["source"] not in ("espeak-ng", "flite")]
    calls = build_calls(items, session, rng, args.channel)

    shipped = {"kind": "average", "smoothing": 4, "enter_windows": 2}
    card = json.load(open(args.model / "detector.json"))
    p = card["threshold"]["p_spoof"]
    shipped_t = float(np.log(p / (1 - p)))
    budget = outcome(calls, shipped, shipped_t)["false_alerts_per_hour"]
    candidates = [dict(kind="average", smoothing=s, enter_windows=e) for s in (1, 2, 3, 4) for e in (1, 2)]
    candidates += [dict(kind="cusum", drift=d, cap=c) for d in (0.0, 0.5, 1.0, 1.5, 2.0) for c in (8.0, 16.0)]
    results = [{"rule": shipped, "threshold": shipped_t, "shipped": True, **outcome(calls, shipped, shipped_t)}]
    for rule in candidates:
        grid = np.arange(-2.0, 8.01, 0.25) if rule["kind"] == "average" else np.arange(0.5, 16.01, 0.25)
        t = threshold_for(calls, rule, grid, budget)
        results.append({"rule": rule, "threshold": float(t), **outcome(calls, rule, t)})
    report = {
        "split": "calib (models/training_manifest.csv)",
        "channel": args.channel,
        "genuine_calls": sum(c["onset_s"] is None for c in calls),
        "switch_calls": sum(c["onset_s"] is not None for c in calls),
        "genuine_hours": sum(c["seconds"] if c["onset_s"] is None else c["onset_s"] for c in calls) / 3600,
        "false_alert_budget_per_hour": budget,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
