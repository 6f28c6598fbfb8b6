#!/usr/bin/env python3
"""A sequential test against the daemon's alert rule, at the same false-alert rate per genuine
call-hour, on the CNN's leave-one-family-out window logits (issue 18, part 3).

    .deps/venv/bin/python train/sequential.py                          # .deps/cnn (about 2 min)
    .deps/venv/bin/python train/sequential.py --tiny --cache DIR/cnn   # seconds (CI smoke)

Input: the cache of train/cnn.py (files.json, eval_index.npy, runs/<fold>_s<seed>.npy), every
finished fold of `--seed`. Each run is Platt-calibrated as `cnn.py report` does (cnn.platt: the
calibration split without the held-out families), so a window's logit is a calibrated log-odds.

Calls, per fold and channel, are built from window-logit sequences, not from audio: a file's
windows (1 s, 0.5 s hop, at most 16 = its first 8.5 s) through that channel are joined to the next
file's. That approximates a call made of those files joined: the junction windows a real call would
have (half one file, half the next) are missing, and a call's time runs at 0.5 s per window.
- genuine calls: one group's (speaker's, demo page's) genuine files in a seeded random order, cut
  into calls of 20-40 s; a group with less audio gives one shorter call (most real/ speakers
  of the calibration and test splits have one file, so many calls are one file of up to 8.5 s);
- switch calls: the first 5-15 s of a genuine call (calls of at least 5.5 s, one switch call
  each), then one clone system's files (seeded order) joined up to 20 s. Onset is the end of the
  opening's last window; the first clone window ends 0.5 s later (in real audio the first
  all-clone window ends 1 s after onset, the junction window coming between), so real-audio
  delays would be up to 0.5 s longer, for every rule alike.
Calibration calls: the calibration split's genuine files; clones from the calibration split's
spoofs of the families the fold trained on. Test calls: the test split's genuine files; clones of
the held-out families (every split of them, as `cnn.py report` tests them).

Rules (train/fusion.py's replay of src/verdict/fusion.rs, exit hysteresis included):
- shipped: "average" with the daemon's smoothing/enter (config.toml) at the threshold `cnn.py
  report` gives its channel class (99th percentile of calibration genuine files' rule peaks);
- "average" with smoothing 1-4 and enter 1-2;
- "cusum": S = clamp(S + logit - drift, 0, cap), alert at S >= h. With Platt-calibrated window
  log-odds this is the textbook CUSUM/SPRT on log-likelihood ratios (the drift absorbs the
  calibration prior and the overlap of 50%-hop windows, which makes them far from independent);
  a separate SPRT would only add a lower boundary, which the clamp at 0 already is.
Every candidate's threshold is the most permissive one (on a grid) whose false alerts per genuine
call-hour on the calibration calls of the channel class (its channels pooled, as the daemon has one
threshold per class) are at most the shipped rule's on the same calls.

Reported on the test calls per fold, channel and rule: false alerts per genuine call-hour
(genuine calls, and switch calls before onset), switches caught, delay after onset (p50, p95 over
the caught ones, audio seconds), and the share of switch calls alerted within 5 s and 10 s of
onset (a latency figure that does not depend on which switches are caught). Folds are pooled (the single-family folds, not `zero-shot`, which
repeats two of them): counts summed, delays pooled, so each fold weighs by its switch calls.
The pick: the rule with the lowest pooled delay p50 (then p95) among those at or under the
shipped rule's pooled false-alert rate that catch at least as many switches; picked on the test
calls (where the comparison is made) and, for honesty, also on the calibration calls.
Writes OUT/sequential.json (default .deps/sequential/) and prints markdown tables.
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import cnn  # noqa: E402
import fusion  # noqa: E402
import product_check  # noqa: E402
from class_thresholds import CLASSES  # noqa: E402

HOP_S = fusion.HOP / fusion.train.SR  # 0.5
WINDOW_S = fusion.train.WINDOW / fusion.train.SR  # 1.0
EXIT_LOGIT = float(np.log(fusion.EXIT_P / (1 - fusion.EXIT_P)))
MAX_CLONE_WINDOWS = int((20 - WINDOW_S) / HOP_S) + 1  # 20 s of clone


def call_plans(files, per_files, rng, split, clone_files):
    """Which files each call joins, independent of fold model and channel: genuine calls
    [("genuine", [file, ...])] and switch calls ("switch", [file, ...], opening seconds, system,
    [clone file, ...]). `per_files`: file -> its window count; `clone_files`: system -> files."""
    groups = defaultdict(list)
    for k, f in enumerate(files):
        if f["split"] == split and f["label"] == "bonafide" and k in per_files:
            groups[f["group"]].append(k)
    plans = []
    systems = sorted(clone_files)
    order = list(rng.permutation(len(systems))) if systems else []
    n = 0
    for g in sorted(groups):
        ks = list(rng.permutation(sorted(groups[g])))
        call, target = [], rng.uniform(20, 40)
        for i, k in enumerate(ks):
            call.append(int(k))
            if sum(per_files[j] for j in call) * HOP_S < target and i + 1 < len(ks):
                continue
            plans.append(("genuine", call))
            seconds = (sum(per_files[j] for j in call) - 1) * HOP_S + WINDOW_S
            if systems and seconds >= 5.5:
                opening = rng.uniform(5, min(15, seconds - 0.5))
                system = systems[order[n % len(systems)]]
                picks = [int(j) for j in rng.permutation(clone_files[system])]
                plans.append(("switch", call, opening, system, picks))
                n += 1
            call, target = [], rng.uniform(20, 40)
    return plans


def materialise(plans, per, ch):
    """The plans' calls through channel `ch`, as fusion.outcome takes them: logits (calibrated),
    onset_s (None for genuine calls), seconds. Files without windows through `ch` are left out."""
    calls = []
    for p in plans:
        seq = [per[(k, ch)] for k in p[1] if (k, ch) in per]
        if not seq:
            continue
        x = np.concatenate(seq)
        if p[0] == "genuine":
            calls.append({"logits": x, "onset_s": None, "seconds": (len(x) - 1) * HOP_S + WINDOW_S})
            continue
        m = min(len(x), int((p[2] - WINDOW_S) / HOP_S) + 1)  # opening windows: those ending by p[2]
        clone = [per[(k, ch)] for k in p[4] if (k, ch) in per]
        if m < 1 or not clone:
            continue
        clone = np.concatenate(clone)[:MAX_CLONE_WINDOWS]
        y = np.concatenate([x[:m], clone])
        calls.append({"logits": y, "onset_s": (m - 1) * HOP_S + WINDOW_S, "seconds": (len(y) - 1) * HOP_S + WINDOW_S,
                      "system": p[3]})
    return calls


class Batch:
    """Calls padded into arrays, for replaying a rule at many thresholds at once."""

    def __init__(self, calls):
        self.calls = calls
        T = max((len(c["logits"]) for c in calls), default=1)
        C = len(calls)
        self.l = np.zeros((C, T))
        self.valid = np.zeros((C, T), bool)
        # the first window that ends after onset: windows before it count as false alerts
        self.first_clone = np.full(C, T + 1)
        for i, c in enumerate(calls):
            x = np.clip(c["logits"], -fusion.MAX_LOGIT, fusion.MAX_LOGIT)
            self.l[i, :len(x)] = x
            self.valid[i, :len(x)] = True
            if c["onset_s"] is not None:
                self.first_clone[i] = int(round((c["onset_s"] - WINDOW_S) / HOP_S)) + 1
        self.genuine_s = sum(c["seconds"] if c["onset_s"] is None else c["onset_s"] for c in calls)
        self.switch = np.array([c["onset_s"] is not None for c in calls])
        self._avg = {}

    def avg(self, k):
        """Mean of the last k clipped logits at each window (fewer at the start), as fusion.replay."""
        if k not in self._avg:
            c = np.cumsum(np.pad(self.l, ((0, 0), (1, 0))), axis=1)
            i = np.arange(self.l.shape[1])
            lo = np.maximum(0, i - k + 1)
            self._avg[k] = (c[:, i + 1] - c[:, lo]) / (i + 1 - lo)
        return self._avg[k]

    def replay(self, rule, thresholds):
        """fusion.replay at every threshold: (false alerts [C, K], first alert window after onset
        [C, K], -1 when none)."""
        th = np.asarray(thresholds, float)[None, :]
        C, T = self.l.shape
        K = th.shape[1]
        avg = self.avg(rule.get("smoothing", 4))
        exit_avg = avg if rule["kind"] == "average" else self.avg(4)
        susp = np.zeros((C, K), bool)
        above = np.zeros((C, K), int)
        below = np.zeros((C, K), int)
        s = np.zeros((C, K))
        false = np.zeros((C, K), int)
        first = np.full((C, K), -1)
        for i in range(T):
            v = self.valid[:, i][:, None]
            a = avg[:, i][:, None]
            below_new = np.where(exit_avg[:, i][:, None] < EXIT_LOGIT, below + 1, 0)
            leave = susp & (below_new >= fusion.EXIT_WINDOWS)
            if rule["kind"] == "average":
                above_new = np.where(a >= th, above + 1, 0)
                hit = ~susp & (above_new >= rule["enter_windows"])
                s_new = s
            else:
                above_new = above
                s_new = np.minimum(np.maximum(0.0, s + self.l[:, i][:, None] - rule["drift"]), rule["cap"])
                hit = ~susp & (s_new >= th)
            hit &= v
            below = np.where(v, np.where(susp, np.where(leave, 0, below_new), below), below)
            s = np.where(v, np.where(susp, np.where(leave, 0.0, s), s_new), s)
            above = np.where(v, np.where(susp, above, np.where(hit, 0, above_new)), above)
            susp = np.where(v, np.where(susp, ~leave, hit), susp)
            before = (i < self.first_clone)[:, None]
            false += hit & before
            first = np.where(hit & ~before & (first < 0), i, first)
        return false, first

    def outcome(self, rule, thresholds):
        """fusion.outcome's numbers at each threshold, plus the delays themselves."""
        false, first = self.replay(rule, thresholds)
        rows = []
        for j in range(false.shape[1]):
            caught = self.switch & (first[:, j] >= 0)
            onset = np.array([c["onset_s"] or 0.0 for c in self.calls])
            delays = (first[caught, j] * HOP_S + WINDOW_S) - onset[caught]
            rows.append({"false_alerts": int(false[:, j].sum()), "genuine_s": self.genuine_s,
                         "switches": int(self.switch.sum()), "caught": int(caught.sum()),
                         "delays": [round(float(d), 3) for d in delays]})
        return rows


def summary(rows):
    """Counts summed over `rows` (folds, channels), delays pooled."""
    fa = sum(r["false_alerts"] for r in rows)
    hours = sum(r["genuine_s"] for r in rows) / 3600
    sw = sum(r["switches"] for r in rows)
    caught = sum(r["caught"] for r in rows)
    d = [x for r in rows for x in r["delays"]]
    return {"false_alerts_per_hour": round(fa / hours, 2) if hours else None, "false_alerts": fa,
            "genuine_hours": round(hours, 3), "switches": sw, "caught": round(caught / sw, 4) if sw else None,
            "caught_by_5s": round(sum(x <= 5 for x in d) / sw, 4) if sw else None,
            "caught_by_10s": round(sum(x <= 10 for x in d) / sw, 4) if sw else None,
            "delay_p50_s": round(float(np.percentile(d, 50)), 2) if d else None,
            "delay_p95_s": round(float(np.percentile(d, 95)), 2) if d else None}


def check_parity(batch, rule, t):
    """The batched replay must agree with fusion.replay/outcome (the daemon's rule, in Python)."""
    got = batch.outcome(rule, [t])[0]
    ref = fusion.outcome(batch.calls, rule, t)
    missed = (got["switches"] - got["caught"]) / max(got["switches"], 1)
    fa = got["false_alerts"] / max(got["genuine_s"], 1e-9) * 3600
    ok = abs(fa - ref["false_alerts_per_hour"]) < 1e-6 and abs(missed - ref["missed"]) < 1e-9
    if got["delays"]:
        ok &= abs(float(np.percentile(got["delays"], 50)) - ref["delay_p50_s"]) < 1e-6
    if not ok:
        sys.exit(f"sequential: batched replay disagrees with fusion.replay for {rule} at {t}: {got} vs {ref}")


def rule_name(rule):
    if rule["kind"] == "average":
        return f"average s{rule['smoothing']} e{rule['enter_windows']}"
    return f"cusum d{rule['drift']:g} cap{rule['cap']:g}"


def pick(table, shipped):
    """The rule with the lowest delay p50 (then p95) at a false-alert rate at or under the
    shipped rule's that catches at least as many switches; the shipped rule if none beats it."""
    base = table[shipped]
    ok = [n for n, r in table.items() if r["caught"] is not None and r["delay_p50_s"] is not None
          and r["false_alerts_per_hour"] <= base["false_alerts_per_hour"] + 1e-9 and r["caught"] >= base["caught"]]
    return min(ok, key=lambda n: (table[n]["delay_p50_s"], table[n]["delay_p95_s"], n != shipped, n), default=shipped)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, help="train/cnn.py's cache (default .deps/cnn, or .deps/cnn-tiny)")
    ap.add_argument("--out", type=Path, help="report folder (default .deps/sequential, or the cache)")
    ap.add_argument("--runs", type=Path, help="the runs folder (default CACHE/runs; e.g. CACHE/runs-gpu, from `cnn.py score`)")
    ap.add_argument("--seed", default="0", help="the CNN runs' seed")
    ap.add_argument("--tiny", action="store_true", help="the tiny cache of `cnn.py prepare --tiny` (CI)")
    args = ap.parse_args()
    t0 = time.time()
    args.cache = args.cache or cnn.ROOT / ".deps" / ("cnn-tiny" if args.tiny else "cnn")
    args.out = args.out or (args.cache / "sequential" if args.tiny else cnn.ROOT / ".deps" / "sequential")
    meta = json.loads((args.cache / "files.json").read_text())
    files, channels = meta["files"], meta["channels"]
    index = np.load(args.cache / "eval_index.npy")
    n_windows = {int(k): int(n) for k, _, _, n in index}
    smoothing, enter = product_check.verdict_rule()
    shipped = {"kind": "average", "smoothing": smoothing, "enter_windows": enter}
    candidates = [dict(kind="average", smoothing=s, enter_windows=e) for s in (1, 2, 3, 4) for e in (1, 2)]
    candidates += [dict(kind="cusum", drift=d, cap=c) for d in (0.0, 0.5, 1.0, 1.5, 2.0) for c in (8.0, 16.0)]
    grids = {"average": np.round(np.arange(-4.0, 8.001, 0.05), 3), "cusum": np.round(np.arange(0.05, 16.001, 0.05), 3)}
    class_of = {ch: cls for cls, chs in CLASSES.items() for ch in chs if ch in channels}
    SHIPPED = "shipped " + rule_name(shipped)

    runs = [r for r in cnn.finished_runs(args.cache, files, args.tiny, runs=args.runs) if r[0] != "all" and r[1] == args.seed]
    if not runs:
        sys.exit(f"sequential: no finished fold of seed {args.seed} in {args.runs or args.cache / 'runs'}")
    results = {}  # fold -> split -> channel -> rule name -> outcome row
    thresholds = {}  # fold -> class -> rule name -> threshold
    parity_checked = 0
    for name, seed, held, run in runs:
        per_all = cnn.window_logits(index, channels, np.load(run))
        a, b = cnn.platt(per_all, files, held)
        per = {key: a * x + b for key, x in per_all.items()}
        clones = {"calib": defaultdict(list), "test": defaultdict(list)}
        for k, f in enumerate(files):
            if f["label"] != "spoof" or k not in n_windows:
                continue
            if f["family"] in held:
                clones["test"][f["system"]].append(k)
            elif f["split"] == "calib" and f["family"] not in cnn.TRAIN_ONLY_FAMILIES:
                clones["calib"][f["system"]].append(k)
        # The same genuine calls in every fold (the seed does not depend on the fold); only the
        # switch calls' clones do.
        plans = {split: call_plans(files, n_windows, np.random.default_rng(cnn.SEED + i), split, clones[split])
                 for i, split in enumerate(("calib", "test"))}
        batches = {split: {ch: Batch(materialise(plans[split], per, ch)) for ch in channels} for split in plans}
        # the shipped rule's class thresholds, as cnn.py report sets them
        peaks = defaultdict(list)
        for (k, ch), x in per.items():
            if files[k]["split"] == "calib" and files[k]["label"] == "bonafide":
                peaks[class_of[ch]].append(product_check.peak(x, smoothing, enter))
        ship_t = {cls: float(np.quantile(v, 0.99)) for cls, v in peaks.items()}
        thr = {}
        for cls in ship_t:
            chs = [ch for ch in channels if class_of[ch] == cls]
            cal = [batches["calib"][ch] for ch in chs if batches["calib"][ch].calls]
            if not cal:
                continue
            if parity_checked < 4:  # the batched replay against fusion.py's, on real calls
                check_parity(cal[0], shipped, ship_t[cls])
                check_parity(cal[0], candidates[-3], 3.0)
                parity_checked += 1
            hours = sum(bt.genuine_s for bt in cal) / 3600
            budget = sum(bt.outcome(shipped, [ship_t[cls]])[0]["false_alerts"] for bt in cal) / hours
            thr[cls] = {SHIPPED: ship_t[cls], "budget_per_hour": budget}
            for rule in candidates:
                grid = grids[rule["kind"]]
                fa = sum(bt.replay(rule, grid)[0].sum(axis=0) for bt in cal) / hours
                okay = np.flatnonzero(fa <= budget + 1e-9)
                thr[cls][rule_name(rule)] = float(grid[okay[0]] if len(okay) else grid[-1])
        thresholds[name] = {"platt": [a, b], "by_class": thr}
        for split in ("calib", "test"):
            for ch in channels:
                bt = batches[split][ch]
                if not bt.calls or class_of[ch] not in thr:
                    continue
                rows = {}
                for rule in [shipped] + candidates:
                    n = SHIPPED if rule is shipped else rule_name(rule)
                    rows[n] = {"rule": rule, "threshold": thr[class_of[ch]][n], **bt.outcome(rule, [thr[class_of[ch]][n]])[0]}
                results.setdefault(name, {}).setdefault(split, {})[ch] = rows
        print(f"sequential: {name} (seed {seed}, held out {', '.join(held)}): "
              f"{sum(int(bt.switch.sum()) for bt in batches['test'].values())} test switch calls, "
              f"{sum(len(bt.calls) - int(bt.switch.sum()) for bt in batches['test'].values())} genuine (all channels); "
              f"{time.time() - t0:.0f} s", flush=True)

    # Pooled: the single-family folds (zero-shot repeats two of them), and zero-shot on its own.
    names = [SHIPPED] + [rule_name(r) for r in candidates]
    pooled_folds = [f for f in results if f != "zero-shot"] or list(results)
    report = {"cache": str(args.cache), "seed": args.seed, "folds": {f: [list(h) for n, s, h, _ in runs if n == f][0]
                                                                  for f in results},
              "pooled_folds": pooled_folds, "shipped": SHIPPED, "thresholds": thresholds,
              "pooled": {}, "zero-shot": {}, "pick": {}, "per_fold": {}}
    for split in ("calib", "test"):
        for scope, fs in (("pooled", pooled_folds), ("zero-shot", [f for f in results if f == "zero-shot"])):
            if not fs:
                continue
            by = {}
            for ch in channels + ["all"]:
                chs = channels if ch == "all" else [ch]
                table = {n: summary([results[f][split][c][n] for f in fs for c in chs if c in results[f][split]])
                         for n in names}
                if table[SHIPPED]["switches"]:
                    by[ch] = table
            report[scope][split] = by
            if scope == "pooled":
                report["pick"][split] = {ch: pick(t, SHIPPED) for ch, t in by.items()}
    for f in results:
        report["per_fold"][f] = {ch: {n: summary([results[f]["test"][ch][n]]) for n in names}
                                 for ch in results[f]["test"]}
    report["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sequential.json").write_text(json.dumps(report, indent=1))
    print(tables(report, channels))
    print(f"sequential: {args.out / 'sequential.json'} ({report['seconds']} s)")


def fmt(r):
    d = "-" if r["delay_p50_s"] is None else f"{r['delay_p50_s']:.1f} / {r['delay_p95_s']:.1f}"
    return (f"{r['false_alerts_per_hour']:.1f} | {r['caught'] * 100:.1f}% | {r['caught_by_5s'] * 100:.1f}% | "
            f"{r['caught_by_10s'] * 100:.1f}% | {d}")


def tables(report, channels):
    test = report["pooled"]["test"]
    ship = report["shipped"]
    best = report["pick"]["test"]["all"]
    lines = [f"Test calls, folds {', '.join(report['pooled_folds'])} pooled (seed {report['seed']}); "
             f"every rule at the shipped rule's false-alert rate on calibration calls.", "",
             "| rule | false alerts / genuine h | caught | by 5 s | by 10 s | delay p50 / p95 (s) |",
             "|---|---|---|---|---|---|"]
    for n, r in sorted(test["all"].items(), key=lambda kv: (kv[0] != ship, kv[1]["delay_p50_s"] or 99,
                                                            kv[1]["delay_p95_s"] or 99)):
        lines.append(f"| {n}{' (pick)' if n == best and n != ship else ''} | {fmt(r)} |")
    lines += ["", "Per channel: the shipped rule, the pick over all channels, and the channel's own pick.", "",
              "| channel | switches | genuine h | rule | false alerts / genuine h | caught | by 5 s | by 10 s | "
              "delay p50 / p95 (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for ch in channels:
        if ch not in test:
            continue
        t = test[ch]
        own = report["pick"]["test"][ch]
        shown = [ship] + [n for n in (best, own) if n != ship]
        for i, n in enumerate(dict.fromkeys(shown)):
            head = f"| {ch} | {t[ship]['switches']} | {t[ship]['genuine_hours']:.2f}" if i == 0 else "| | |"
            tag = " (channel's pick)" if n == own and n != ship else ""
            lines.append(f"{head} | {n}{tag} | {fmt(t[n])} |")
    cal = report["pick"].get("calib", {}).get("all")
    if cal:
        lines += ["", f"Picked on the calibration calls instead: {cal} "
                      f"(test: {fmt(test['all'][cal])}; shipped {fmt(test['all'][ship])})."]
    zs = report.get("zero-shot", {}).get("test", {}).get("all")
    if zs:
        lines += [f"zero-shot fold (both zero-shot families out): shipped {fmt(zs[ship])}; {best} {fmt(zs[best])}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
