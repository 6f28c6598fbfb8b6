#!/usr/bin/env python3
"""A two-stage cascade scored exactly as the daemon runs it (issue 23, part 1), on the
leave-one-family-out window logits of `train/cnn.py` (`.deps/cnn`):

    .deps/venv/bin/python train/cascade.py                  # CNN -> 0.5.x recipe, every finished fold and seed
    .deps/venv/bin/python train/cascade.py --second .deps/cnn/runs-fused
    .deps/venv/bin/python train/cascade.py --tiny --cache DIR/cnn-tiny   # seconds (CI smoke)

The daemon's cascade (`src/detect/cascade.rs`, the sidecar's `cascade` section): every window is
scored by the cheap first stage; a window goes on to the full detector when the first stage's
calibrated log-odds reach `escalate_logit`, or when its position in the call is a multiple of
`sample_every` (the call's first window included), so a clone the first stage misses is still
looked at. The window's score is the second stage's where it ran, the first stage's otherwise;
the alert rule (mean of 4 windows' log-odds, 2 in a row, per-class threshold) reads those scores.

Here, per fold and seed found in both runs folders, each stage is Platt-calibrated as `cnn.py
report` does (calibration split, held-out families excluded); `escalate_logit` is the first
stage's log-odds that lets through `--keep` of the calibration split's spoof windows (trained
families only: the held-out family never sets it); a file's windows are a call's windows in time
order (1 s, 0.5 s hop), so `sample_every` counts them from the file's first. The cascade's window
log-odds are written as a runs folder and `cnn.py report` scores them by the daemon's rule, the
same report as every arm of issue 18 (Platt is linear, so the rule's EER and the catch at the
calibration threshold are what the daemon would get). Also reported per fold, seed and channel:
the share of windows that reach the second stage, on genuine test files and on held-out clones.

Output: OUT/cascade.json (per keep and sample_every: the report's pooled figures and the shares),
and a markdown table on stdout against the second stage alone.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import cnn  # noqa: E402


def cascade_runs(args, keep, every, out):
    """Writes the cascade's window log-odds of every fold and seed into `out`; returns the shares
    of windows escalated: {fold: {seed: {channel: {"genuine": share, "spoof": share}}}} and the
    escalation thresholds."""
    meta = json.loads((args.cache / "files.json").read_text())
    files, channels = meta["files"], meta["channels"]
    index = np.load(args.cache / "eval_index.npy")
    position = np.zeros(int(index[-1, 2] + index[-1, 3]), np.int64)
    for _, _, start, n in index:
        position[start:start + n] = np.arange(n)
    out.mkdir(parents=True, exist_ok=True)
    shares, thresholds = {}, {}
    for name, seed, held, run in cnn.finished_runs(args.cache, files, args.tiny, runs=args.first):
        other = args.second / run.name
        if not other.exists():
            continue
        first, second = np.load(run), np.load(other)
        a1, b1 = cnn.platt(cnn.window_logits(index, channels, first), files, held)
        a2, b2 = cnn.platt(cnn.window_logits(index, channels, second), files, held)
        l1, l2 = a1 * first + b1, a2 * second + b2
        cal_spoof = np.concatenate([l1[start:start + n] for k, _, start, n in index
                                    if files[k]["split"] == "calib" and files[k]["label"] == "spoof"
                                    and files[k]["family"] not in held])
        cal_spoof = cal_spoof[np.isfinite(cal_spoof)]
        t = float(np.quantile(cal_spoof, 1.0 - keep)) if keep < 1.0 else -np.inf
        escalate = (l1 >= t) | ((position % every == 0) if every else False)
        # A window the first stage did not score (a file no report of the fold reads) has no
        # cascade score either, not the full model's on every `every`-th window alone.
        cascaded = np.where(np.isnan(l1), np.nan, np.where(escalate, l2, l1))
        np.save(out / run.name, cascaded.astype(np.float32))
        thresholds.setdefault(name, {})[seed] = t
        by_channel = {}
        for ch_i, ch in enumerate(channels):
            rows = {"genuine": [], "spoof": []}
            for k, c, start, n in index:
                f = files[k]
                if c != ch_i:
                    continue
                if f["label"] == "bonafide" and f["split"] == "test":
                    rows["genuine"].append(escalate[start:start + n])
                elif f["label"] == "spoof" and f["family"] in held:
                    rows["spoof"].append(escalate[start:start + n])
            if rows["genuine"] and rows["spoof"]:
                by_channel[ch] = {k: round(float(np.concatenate(v).mean()), 4) for k, v in rows.items()}
        shares.setdefault(name, {})[seed] = by_channel
    return shares, thresholds


def report(args, runs, out):
    ns = argparse.Namespace(cache=args.cache, tiny=args.tiny, extra=None, runs=runs, out=out)
    cnn.report(ns)
    return json.loads((out / "cnn.json").read_text())


def pooled_share(shares, channels):
    """Mean over folds (not zero-shot) and seeds of the escalated shares, per channel."""
    out = {}
    for ch in channels:
        for kind in ("genuine", "spoof"):
            v = [s[ch][kind] for name, by in shares.items() if name != "zero-shot" for s in by.values() if ch in s]
            if v:
                out.setdefault(ch, {})[kind] = round(float(np.mean(v)), 4)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--first", type=Path, help="first stage's runs folder (default CACHE/runs: the CNN)")
    ap.add_argument("--second", type=Path, help="second stage's runs folder (default CACHE/runs-whisper)")
    ap.add_argument("--keep", default="0.9,0.95,0.98", help="shares of calibration spoof windows escalated")
    ap.add_argument("--sample-every", default="8", help="every Nth window of a call also escalated (0: none)")
    ap.add_argument("--out", type=Path, help="default CACHE/cascade")
    args = ap.parse_args()
    args.cache = args.cache or cnn.ROOT / ".deps" / ("cnn-tiny" if args.tiny else "cnn")
    args.first = args.first or args.cache / "runs"
    args.second = args.second or args.cache / "runs-whisper"
    args.out = args.out or args.cache / "cascade"
    channels = json.loads((args.cache / "files.json").read_text())["channels"]

    result = {"first": str(args.first), "second": str(args.second), "arms": {}}
    full = report(args, args.second, args.out / "second-alone")
    result["arms"]["second alone"] = {"pooled": full["pooled"], "shares": None}
    first = report(args, args.first, args.out / "first-alone")
    result["arms"]["first alone"] = {"pooled": first["pooled"], "shares": None}
    for every in [int(e) for e in args.sample_every.split(",")]:
        for keep in [float(k) for k in args.keep.split(",")]:
            tag = f"keep{keep:g}-every{every}"
            shares, thresholds = cascade_runs(args, keep, every, args.out / "runs" / tag)
            rep = report(args, args.out / "runs" / tag, args.out / tag)
            result["arms"][tag] = {"pooled": rep["pooled"], "shares": pooled_share(shares, channels),
                                   "per_fold_shares": shares, "escalate_logit": thresholds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cascade.json").write_text(json.dumps(result, indent=1))

    def cell(arm, ch):
        p = arm["pooled"].get("eer_rule", {}).get(ch)
        c = arm["pooled"].get("caught", {}).get(ch)
        g = arm["pooled"].get("genuine_alerted", {}).get(ch)
        s = (arm["shares"] or {}).get(ch)
        text = f"{p['mean'] * 100:.1f}% ({p['min'] * 100:.1f}-{p['max'] * 100:.1f})" if p else "-"
        if c and g:
            text += f", caught {c['mean'] * 100:.1f}%, genuine {g['mean'] * 100:.1f}%"
        if s:
            text += f", to stage 2: genuine {s['genuine'] * 100:.0f}% / clones {s['spoof'] * 100:.0f}%"
        return text

    print("| arm | " + " | ".join(channels) + " |")
    print("|" + "---|" * (len(channels) + 1))
    for tag, arm in result["arms"].items():
        print(f"| {tag} | " + " | ".join(cell(arm, ch) for ch in channels) + " |")


if __name__ == "__main__":
    main()
