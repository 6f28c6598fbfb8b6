#!/usr/bin/env python3
"""Speaker verification with the Resemblyzer GE2E encoder (train/ge2e_frontend.py), measured as
the daemon would use it: 1 s windows at a 0.5 s hop, each embedded, a voiceprint the mean of an
enrolment's window embeddings (L2-normed), a call scored by the cosine of its windows' mean
embedding with the voiceprint.

    .deps/venv/bin/python train/speaker.py eval            # ../shared/data/real speakers (~5 min)
    .deps/venv/bin/python train/speaker.py eval --tiny     # seconds, generated voices (CI)
    .deps/venv/bin/python train/speaker.py export          # models/speaker.onnx and its sidecar

`export` cuts the encoder's graph at its speaker embedding (waveform [B, 16000] -> embedding
[B, 256], L2-normed) for the daemon's voice-change detector, with a sidecar naming it and the
thresholds `eval` measured (OUT/speaker.json).

For each speaker of real/ with at least `--min-seconds` of audio: the first files, in manifest
order, up to `--enrol-seconds`, enrol; every later file is a test call. Trials: every test call
against every voiceprint (same speaker: target). Channels: enrolment wideband and test through
G.711 mu-law (a voiceprint from an executive's recordings, the call over the phone), and both
through mu-law. LibriSpeech test-other speakers are not in the encoder's training data
(LibriSpeech train-other, VoxCeleb 1 and 2); VCC 2016's may or may not be.

Also: the change detector's view: for pairs of test calls of two different speakers joined, the
cosine between the first speaker's mean embedding and each later window's, against the same for
a single speaker's call: what a `VOICE_CHANGED` threshold separates.

Writes OUT/speaker.json and prints the EERs.
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import ge2e_frontend  # noqa: E402
import train as T  # noqa: E402

EMBED = slice(*ge2e_frontend.TAPS["e"])


def embed(session, x, ch, seed=0):
    """Window embeddings [N, 256] of audio `x` (16 kHz) through channel `ch`."""
    rng = np.random.default_rng(seed)
    ws = T.sliding(T.channel(x, ch, rng)) if ch != "wideband" else T.sliding(x)
    if not ws:
        return np.zeros((0, 256), np.float32)
    return T.featurize(session, ws)[:, EMBED]


REFERENCE_WINDOWS, RECENT_WINDOWS, CONSECUTIVE = 6, 4, 1


def change_events(e, threshold, recent_windows=RECENT_WINDOWS, consecutive=CONSECUTIVE):
    """Window indices where the daemon's rule reports a voice change in unit embeddings `e`: the
    mean of the last RECENT_WINDOWS windows against the mean of the first REFERENCE_WINDOWS
    (cosine), below `threshold` CONSECUTIVE times in a row; after an event the reference starts
    anew from the next windows."""
    events, ref, run, since = [], [], 0, []
    for i, w in enumerate(e):
        since.append(w)
        if len(ref) < REFERENCE_WINDOWS:
            ref.append(w)
            continue
        reference = unit(np.mean(ref, axis=0))
        recent = unit(np.mean(since[-recent_windows:], axis=0))
        run = run + 1 if float(recent @ reference) < threshold else 0
        if run >= consecutive:
            events.append(i)
            ref, run, since = [], 0, []
    return events


def unit(v):
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-9)


def speakers(data, min_seconds):
    by = {}
    with open(data / "real" / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by.setdefault(row["speaker"], []).append((data / "real" / row["path"], float(row["duration_s"])))
    return {s: files for s, files in by.items() if sum(d for _, d in files) >= min_seconds}


def tiny_speakers(cache):
    """Generated voices (espeak-ng variants) standing in for speakers: a smoke run only."""
    items = T.generated_items(cache, 24)
    by = {}
    for path, _, system, *_ in items:
        by.setdefault(system, []).append((path, 2.0))
    return {s: f for s, f in by.items() if len(f) >= 3}


def evaluate(args):
    session = ge2e_frontend.session(args.cache)
    spk = tiny_speakers(args.cache) if args.tiny else speakers(args.data, args.min_seconds)
    enrol_s = 4.0 if args.tiny else args.enrol_seconds
    prints, tests = {}, []
    for s, files in spk.items():
        enrol, total = [], 0.0
        for k, (path, dur) in enumerate(files):
            if total < enrol_s:
                enrol.append(path)
                total += dur
            else:
                tests += [(s, p) for p, _ in files[k:]]
                break
        for ch in ("wideband", "g711_mu"):
            e = np.concatenate([embed(session, T.load(p), ch) for p in enrol])
            prints.setdefault(ch, {})[s] = unit(unit(e).mean(0))
    calls = {}
    for s, p in tests:
        e = embed(session, T.load(p), "g711_mu")
        if len(e):
            calls.setdefault(s, []).append(unit(e))
    result = {"speakers": len(spk), "test_calls": sum(len(v) for v in calls.values()), "eer": {}}
    for enrol_ch in ("wideband", "g711_mu"):
        target, nontarget = [], []
        for s, embs in calls.items():
            for e in embs:
                m = unit(e.mean(0))
                for t, vp in prints[enrol_ch].items():
                    (target if t == s else nontarget).append(float(m @ vp))
        eer, thr = T.eer(nontarget, target)
        result["eer"][f"enrol_{enrol_ch}_test_g711_mu"] = {"eer": round(eer, 4), "threshold": round(float(thr), 4),
                                                           "target": len(target), "nontarget": len(nontarget)}
    # The daemon's change rule (src/verdict/voice.rs) on genuine calls (each speaker's test
    # files joined, so calls run a minute or more) and on switch calls (one speaker's call, then
    # another's): false events per genuine call-hour and the delay after the switch, per threshold.
    genuine = [np.concatenate(embs) for embs in calls.values()]
    if not args.tiny:  # and real2's speakers: each one's files joined into calls of up to a minute
        by = {}
        with open(args.data / "real2" / "manifest.csv") as f:
            for row in csv.DictReader(f):
                by.setdefault(row["speaker"], []).append(args.data / "real2" / row["path"])
        for spk_files in by.values():
            chunk = []
            for path in spk_files:
                e = embed(session, T.load(path), "g711_mu")
                if len(e):
                    chunk.append(unit(e))
                if sum(len(c) for c in chunk) >= 120:
                    genuine.append(np.concatenate(chunk))
                    chunk = []
            if sum(len(c) for c in chunk) >= 12:
                genuine.append(np.concatenate(chunk))
    names = sorted(calls)
    switches = []
    for i, s in enumerate(names):
        for k, first in enumerate(calls[s][:3]):
            other = calls[names[(i + 1 + k) % len(names)]][k % len(calls[names[(i + 1 + k) % len(names)]])]
            if len(first) >= 10:
                switches.append((np.concatenate([first, other]), len(first)))
    hours = sum(len(g) for g in genuine) * 0.5 / 3600
    rule = []
    grid = [(k, m, float(t)) for k in (3, 4, 6) for m in (1, 2) for t in np.round(np.arange(0.40, 0.90, 0.05), 2)]
    for k, m, thr in grid:
        false_events = sum(len(change_events(g, thr, k, m)) for g in genuine)
        calls_with = sum(bool(change_events(g, thr, k, m)) for g in genuine)
        delays, missed, early = [], 0, 0
        for e, at in switches:
            ev = change_events(e, thr, k, m)
            if any(x < at for x in ev):
                early += 1
            after = [x for x in ev if x >= at]
            if after:
                delays.append((after[0] - at) * 0.5 + 1.0)  # window end, seconds after the switch
            else:
                missed += 1
        rule.append({"recent_windows": k, "consecutive": m, "threshold": thr, "false_events_per_hour": round(false_events / hours, 2),
                     "genuine_calls_with_event": calls_with, "genuine_calls": len(genuine),
                     "switch_calls": len(switches), "missed": missed, "early": early,
                     "delay_s_p50": round(float(np.median(delays)), 2) if delays else None,
                     "delay_s_p95": round(float(np.quantile(delays, 0.95)), 2) if delays else None})
    result["change_rule"] = {"genuine_hours": round(hours, 3), "by_threshold": rule}
    # Change detection: the cosine of each window after the first 3 s with the first 3 s' mean.
    same, other = [], []
    names = sorted(calls)
    for i, s in enumerate(names):
        for e in calls[s]:
            if len(e) < 8:
                continue
            head = unit(e[:5].mean(0))
            same += [float(w @ head) for w in e[5:]]
            o = calls[names[(i + 1) % len(names)]][0]
            other += [float(w @ head) for w in o]
    if same and other:
        eer, thr = T.eer([-x for x in same], [-x for x in other])
        result["change_window_eer"] = {"eer": round(eer, 4), "threshold": round(-float(thr), 4),
                                       "same_windows": len(same), "other_windows": len(other),
                                       "same_median": round(float(np.median(same)), 3),
                                       "other_median": round(float(np.median(other)), 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speaker.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def export(args):
    import onnx
    from onnx.utils import Extractor

    ge2e_frontend.session(args.cache)  # exports ge2e.onnx once
    path = ge2e_frontend.onnx_path(args.cache)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and "features" in n.output)
    cut = Extractor(model).extract_model(["waveform"], [concat.input[-1]])
    cut.graph.output[0].name = "embedding"
    for n in cut.graph.node:
        n.output[:] = ["embedding" if o == concat.input[-1] else o for o in n.output]
    cut.graph.doc_string = "Resemblyzer GE2E speaker encoder (Apache-2.0), 1 s windows at 16 kHz"
    onnx.checker.check_model(cut)
    args.models.mkdir(parents=True, exist_ok=True)
    onnx.save(cut, str(args.models / "speaker.onnx"))
    measured = json.loads((args.out / "speaker.json").read_text()) if (args.out / "speaker.json").exists() else {}
    card = {
        "name": "resemblyzer-ge2e",
        "version": "0.1.4",
        "licence": "Apache-2.0 (Resemblyzer 0.1.4, pretrained.pt)",
        "input": {"name": "waveform", "sample_rate": 16000, "window_samples": 16000},
        "output": {"name": "embedding", "dim": 256, "normalised": True},
        "measured": measured,
    }
    (args.models / "speaker.json").write_text(json.dumps(card, indent=1) + "\n")
    # The cut graph gives what the full one gives in its last 256 columns.
    import onnxruntime as ort
    x = np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype(np.float32)
    full = ort.InferenceSession(str(path)).run(None, {"waveform": x})[0][:, EMBED]
    mine = ort.InferenceSession(str(args.models / "speaker.onnx")).run(None, {"waveform": x})[0]
    assert np.allclose(full, mine, atol=1e-5), np.abs(full - mine).max()
    print(f"exported {args.models / 'speaker.onnx'} ({(args.models / 'speaker.onnx').stat().st_size} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["eval", "export"])
    ap.add_argument("--models", type=Path, default=T.ROOT / "models")
    ap.add_argument("--data", type=Path, default=T.ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=T.ROOT / ".deps" / "train-cache")
    ap.add_argument("--out", type=Path, default=T.ROOT / ".deps" / "speaker")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--min-seconds", type=float, default=60.0)
    ap.add_argument("--enrol-seconds", type=float, default=30.0)
    args = ap.parse_args()
    args.t0 = time.time()
    evaluate(args) if args.step == "eval" else export(args)


if __name__ == "__main__":
    main()
