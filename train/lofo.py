#!/usr/bin/env python3
"""Leave-one-family-out evaluation of detector recipes, the from-scratch baseline beside them,
and a nuisance-feature check. Nothing here is exported; train/train.py makes the shipped model.

    python train/lofo.py --features .deps/lofo/features.pkl   # ../shared/data (~40 min, 2 cores)
    python train/lofo.py --tiny --out /tmp/r                    # seconds, generated clips (CI)
    python train/lofo.py --features ... --hold-out system       # leave one system out instead

For each synthesis family F of ../shared/data/demo: a classifier (the recipe of train.py: frozen
front-end, MLP head, Platt calibration, 99th-percentile genuine threshold) is trained on the
train split without any F system, calibrated on the calibration split without F, and tested on
every F file against the genuine speakers of the test split (never seen in training or
calibration). `--hold-out system` does the same per synthesis system (its siblings in the family
stay in training) and pools each family's systems beside it. Copy-synthesised spoofs
(train/copysynth.py) count as vocoder copy-synthesis and leave with that family. Each file goes
through each evaluation channel (wideband, G.711 mu/A-law, GSM 06.10, AMR-NB, Opus), and is
scored like the daemon (1 s windows, 0.5 s hop): over the whole file (the mean window log-odds),
over its first 1.5 s of speech (two windows), and by the statistic the daemon alerts on (its
fusion rule's peak, train/product_check.peak: a file scores the highest threshold at which the
daemon would have alerted on it), the last over the whole file and over its first 3.5 s.

`--variants` names the recipes compared on the same features (see Variant); every Whisper tap
is featurised once, so recipes that differ in taps, data or head share one pass, and
`--features` keeps that pass for the next run.

The nuisance check trains a logistic regression on features that differ between the classes
for reasons other than synthesis (source sample rate, band limit, loudness, leading and
trailing silence, duration, DC offset) and reports its test EER: near 50% means the data
offers no such shortcut; far below means it does, and the numbers above must be read with it.

Writes OUT/lofo.json and prints a Markdown table.
"""

import argparse
import json
import pickle
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).parent))
import copysynth  # noqa: E402
import features  # noqa: E402
import ge2e_frontend  # noqa: E402
import product_check  # noqa: E402
import train as T  # noqa: E402

CHANNELS = ["wideband", "g711_mu", "g711_a", "gsm", "amr_nb", "opus"]
# Whisper front-ends: `whisper` is tiny.en (the shipped one), `whisperb` multilingual base,
# `whispert` tiny.en with a third statistic per tap (the mean absolute frame-to-frame change). Each
# pooled tap is the mean and std of the encoder's width (and, for `whispert`, the change): its
# columns in the stored features.
RULE_WINDOWS = 6  # 3.5 s of speech: the daemon's rule scored on equal lengths (see fold)
WHISPER_WIDTH = {"whisper": 768, "whisperb": 1024, "whispert": 1152}


def front_end_session(name, cache, layers=2, precision="fp32", taps="last", calibration=None):
    if name == "ge2e":
        return ge2e_frontend.session(cache)
    front = None
    if name in WHISPER_WIDTH:
        import whisper_frontend
        fetch = whisper_frontend.fetch_base_weights if name == "whisperb" else whisper_frontend.fetch_weights
        weights = whisper_frontend.load_ctranslate2(fetch(cache))
        front = whisper_frontend.encoder_nodes(weights, "waveform", "features", T.WINDOW, layers, taps=taps,
                                               deltas=name == "whispert")
    model = features.feature_model(T.WINDOW, front)
    if precision == "int8" and name in WHISPER_WIDTH:
        model = features.quantize_int8(model, calibration)
    options = ort.SessionOptions()
    return ort.InferenceSession(model.SerializeToString(), options)


def nuisance(path):
    """What differs between recordings for reasons other than synthesis."""
    info = sf.info(str(path))
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if len(x) == 0:
        return None
    frame = max(1, rate // 100)
    energy = np.array([np.mean(x[i:i + frame] ** 2) for i in range(0, max(1, len(x) - frame), frame)])
    loud = energy > 1e-4 * (energy.max() + 1e-12)
    first = int(np.argmax(loud)) if loud.any() else len(energy)
    last = int(np.argmax(loud[::-1])) if loud.any() else len(energy)
    spec = np.abs(np.fft.rfft(x[: rate * 4] * np.hanning(min(len(x), rate * 4))))
    freqs = np.fft.rfftfreq(min(len(x), rate * 4), 1 / rate)
    cum = np.cumsum(spec ** 2)
    rolloff = freqs[np.searchsorted(cum, 0.99 * cum[-1])] if cum[-1] > 0 else 0.0
    return [info.samplerate / 1000, rolloff / 1000, 10 * np.log10(np.mean(x ** 2) + 1e-12),
            first / 100, last / 100, len(x) / rate, float(np.mean(x)) * 100]


def collect(items, sessions, args, rng):
    """Per file: metadata, train-crop features (train split) and evaluation-window features per
    channel (calibration and test splits, and every spoof file: each is tested in its fold)."""
    files = []
    for (path, label, system, family, group, split, source), x in T.loaded(items):
        f = dict(label=label, system=system, family=family, split=split, nuisance=nuisance(path),
                 train={}, eval={})
        narrowband = sf.info(str(path)).samplerate < T.SR  # recorded at 8 kHz: it has no wideband form
        if split == "train":
            windows = T.crops(x, args.crops, rng)
            for recipe in args.recipes:
                crops = [T.augment(w, rng, recipe, narrowband_only=narrowband) for w in windows]
                for name, s in sessions.items():
                    f["train"][f"{name}:{recipe}"] = T.featurize(s, crops) if crops else None
        if split != "train" or (label == "spoof" and not is_copysynth(f)):
            crng = np.random.default_rng(T.SEED + 1)
            for ch in args.channels:
                if ch == "wideband" and narrowband:
                    continue
                ws = T.sliding(T.channel(x, ch, crng))
                if ws:
                    for name, s in sessions.items():
                        f["eval"].setdefault(name, {})[ch] = T.featurize(s, ws)
        files.append(f)
        if len(files) % 200 == 0:
            print(f"{len(files)} files featurized in {time.time() - args.t0:.0f}s", flush=True)
    return files


def merge(files, new):
    """Adds the features of `new` (a replay of the pass that made `files`) to `files`."""
    if len(new) != len(files):
        sys.exit(f"lofo: the replay found {len(new)} files, the stored features {len(files)}: the data changed")
    for f, g in zip(files, new):
        if (f["system"], f["label"], f["split"]) != (g["system"], g["label"], g["split"]):
            sys.exit(f"lofo: the replay diverged at {g['system']}: the data changed; delete the features pickle")
        old = {k.split(":")[1]: len(v) for k, v in f["train"].items() if v is not None}
        old_eval = {ch: len(v) for by_channel in f["eval"].values() for ch, v in by_channel.items()}
        if any(v is not None and len(v) != old.get(k.split(":")[1], len(v)) for k, v in g["train"].items()) or any(
                len(v) != old_eval.get(ch, len(v)) for by_channel in g["eval"].values() for ch, v in by_channel.items()):
            sys.exit(f"lofo: the replay cut other windows from {g['system']}: delete the features pickle")
        f["train"].update(g["train"])
        f["eval"].update(g["eval"])


def is_copysynth(f):
    return f["system"].startswith(copysynth.SYSTEM_PREFIX)


class Variant:
    """A classifier recipe on stored features: FRONT[/TAPS[/FLAG...]]. TAPS: which pooled points of
    the Whisper encoder (768 columns each for tiny.en `whisper`, 1024 for base `whisperb`) it reads. Flags: `cs` adds the copy-synthesised spoofs;
    `mg` the generators added after 0.3.1 (Piper's VITS voice, Festival's voices and, with `cs`, WORLD
    copy-synthesis; training data only, never tested, and left out with their family), `mgp`,
    `mgf`, `mgw` (or `mgpw`...) only some of them; `sN` the head's seed moved by N;
    `eN` N heads of successive seeds, their logits averaged (one MLP N times as wide, for export);
    `ph` the "phone" augmentation recipe (else "basic"), `rb` the "rawboost" one; `nd` (front-end
    `whispert`) leaves the frame-to-frame change out, which reads what `whisper` stores;
    `hN` N hidden units; `aX` L2 penalty X;
    `cK` trains on a third of each file's training crops (those numbered K, K+3, ...; with
    `--crops 9`, three disjoint draws of 3 crops: how much the draw alone moves a result);
    `bs` weighs every spoof system equally (and the two classes equally) instead of every window; `oc` a one-class head instead of the MLP (squared
    Mahalanobis distance from the genuine training windows, in their top `kN` principal
    components); `hy` both, combined by the calibration."""

    def __init__(self, spec, hidden=64):
        self.spec = spec
        front, *rest = spec.split("/")
        self.front, self.taps = front, rest[0] if rest else ""
        self.fronts = front.split("+")  # several front-ends: their features side by side
        self.tap_sets = (self.taps.split("+") + [""] * len(self.fronts))[:len(self.fronts)]
        flags = rest[1:]
        self.copysynth = "cs" in flags
        # `mg` all the generators added after 0.3.1; `mg` + letters some of them (p Piper, f Festival, w WORLD)
        picked = [f[2:] or "pfw" for f in flags if re.fullmatch(r"mg[pfw]*", f)]
        self.more_generators = tuple(T.ADDED_GENERATORS["pfw".index(c)] for c in picked[0]) if picked else ()
        self.recipe = "rawboost" if "rb" in flags else "phone" if "ph" in flags else "basic"
        self.no_change = "nd" in flags
        self.balance_systems = "bs" in flags
        def number(prefix, default, kind):
            found = [kind(f[1:]) for f in flags if re.fullmatch(prefix + r"[0-9.e-]+", f)]
            return found[0] if found else default
        self.hidden = number("h", hidden, int)
        self.alpha = number("a", 1e-2, float)
        self.components = number("k", 64, int)
        self.seed = T.SEED + number("s", 0, int)  # `sN`: another seed for the head (run-to-run spread)
        self.crop_draw = number("c", None, int)  # `cK`: every third training crop from crop K
        self.ensemble = number("e", 1, int)  # `eN`: N heads (seeds seed..seed+N-1), their logits averaged
        self.head = "oc" if "oc" in flags else "hy" if "hy" in flags else "mlp"

    def columns(self, front, taps, x):
        if front in WHISPER_WIDTH:
            n = WHISPER_WIDTH[front]
            kept = n * 2 // 3 if front == "whispert" and self.no_change else n  # mean and std only
            points = range(x.shape[-1] // n) if taps in ("", "all") else [int(t) for t in taps]
            return np.concatenate([x[..., n * t:n * t + kept] for t in points], axis=-1)
        if taps in ("", "all"):
            return x
        if front == "ge2e":
            return np.concatenate([x[..., slice(*ge2e_frontend.TAPS[t])] for t in taps], axis=-1)
        return x

    def has(self, f, split_key):
        """Whether file `f` has every front-end's features (`train` crops or `eval` channels)."""
        if split_key == "train":
            return all(f["train"].get(f"{fr}:{self.recipe}") is not None for fr in self.fronts)
        return all(fr in f["eval"] for fr in self.fronts)

    def train_features(self, f):
        x = np.concatenate([self.columns(fr, t, f["train"][f"{fr}:{self.recipe}"])
                            for fr, t in zip(self.fronts, self.tap_sets)], axis=-1)
        if self.crop_draw is not None:  # a file with fewer crops than draws lends one to each
            x = x[list(range(self.crop_draw, len(x), 3)) or [self.crop_draw % len(x)]]
        return x

    def eval_channels(self, f):
        return list(f["eval"][self.fronts[0]]) if self.has(f, "eval") else []

    def eval_features(self, f, ch):
        return np.concatenate([self.columns(fr, t, f["eval"][fr][ch]) for fr, t in zip(self.fronts, self.tap_sets)],
                              axis=-1)


def fold(files, variant, held_out, args, unit="family", trained=None):
    """Trains without `held_out` (a family, or with unit="system" one system); returns EERs on it
    per channel. Copy-synthesised spoofs (HiFi-GAN, Griffin-Lim) count as vocoder copy-synthesis:
    they leave with that family, and stay when one published system is held out. `trained` (a
    dict) keeps the classifier of a fold whose held-out system never trains or calibrates (a
    test-split system): those folds all train the same classifier."""
    def usable(f):
        if is_copysynth(f) and (not variant.copysynth or (unit == "family" and held_out == copysynth.FAMILY)):
            return False
        if T.is_added_generator(f["system"]) and not f["system"].startswith(variant.more_generators):
            return False
        return f[unit] != held_out

    shared = unit == "system" and trained is not None and not any(
        f["system"] == held_out for f in files if f["split"] in ("train", "calib"))
    if shared and variant.spec in trained:
        logits, b, thr = trained[variant.spec]
    else:
        logits, b, thr = fit(files, variant, usable, args)
        if shared:
            trained[variant.spec] = (logits, b, thr)

    out = {}
    rule = product_check.verdict_rule()
    for ch in args.channels:
        bona = [logits(variant.eval_features(f, ch)) + b for f in files
                if f["split"] == "test" and f["label"] == "bonafide" and ch in variant.eval_channels(f)]
        spoof = [logits(variant.eval_features(f, ch)) + b for f in files
                 if f[unit] == held_out and f["label"] == "spoof" and not is_copysynth(f)
                 and not T.is_added_generator(f["system"]) and ch in variant.eval_channels(f)]
        if not bona or not spoof:
            continue
        e_file, _ = T.eer([s.mean() for s in bona], [s.mean() for s in spoof])
        e_15, _ = T.eer([s[:2].mean() for s in bona], [s[:2].mean() for s in spoof])
        e_rule, _ = T.eer([product_check.peak(s, *rule) for s in bona], [product_check.peak(s, *rule) for s in spoof])
        # The same on every file's first RULE_WINDOWS windows: a peak has more chances on a longer
        # file, and the genuine test files run longer than the spoofs (35% of them past 6 s, no spoof).
        e_rule_short, _ = T.eer([product_check.peak(s[:RULE_WINDOWS], *rule) for s in bona],
                                [product_check.peak(s[:RULE_WINDOWS], *rule) for s in spoof])
        out[ch] = {"n_spoof": len(spoof), "n_bonafide": len(bona), "eer_file": round(e_file, 4),
                   "eer_1500ms": round(e_15, 4), "eer_rule": round(e_rule, 4),
                   "eer_rule_3500ms": round(e_rule_short, 4),
                   "genuine_alerted": round(float(np.mean([s.mean() >= thr for s in bona])), 4),
                   "spoof_detected": round(float(np.mean([s.mean() >= thr for s in spoof])), 4)}
    return out


def fit(files, variant, usable, args):
    """The recipe's classifier on the `usable` train-split files, Platt-calibrated and thresholded
    on the usable calibration-split files: (logits(feats) without the offset, offset, threshold)."""
    tr = [f for f in files if f["split"] == "train" and usable(f) and variant.has(f, "train")]
    per_file = [variant.train_features(f) for f in tr]
    X = np.concatenate(per_file)
    y = np.concatenate([np.full(len(x), f["label"] == "spoof") for x, f in zip(per_file, tr)]).astype(int)
    mu, sd = T.standardiser(X)
    if variant.balance_systems:  # every spoof system weighs the same; each class sums to 1
        system = np.concatenate([np.full(len(x), f["system"]) for x, f in zip(per_file, tr)])
        names, inverse, counts = np.unique(system, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
        w[y == 1] *= 1.0 / len(set(system[y == 1]))
        w[y == 0] = 1.0 / (y == 0).sum()
    mlp = None
    if variant.head != "oc":  # "oc": the one-class score alone
        seeds = [variant.seed + k for k in range(variant.ensemble)]
        mlp = T.mlp_heads((X - mu) / sd, y, variant.hidden, variant.alpha, seeds, args.tiny,
                          pick=lambda k: T.balanced_indices(y, np.random.default_rng(seeds[k])),
                          sample_weight=w * len(y) / 2 if variant.balance_systems else None)

    if variant.head != "mlp":
        centre, whiten = T.genuine_whitening((X[y == 0] - mu) / sd, variant.components)

    def raw(feats):
        """[N, scores]: the MLP's logit and/or the one-class distance."""
        z = (feats - mu) / sd
        cols = []
        if mlp is not None:  # the heads' mean logit
            cols.append(T.mlp_logit(z, mlp))
        if variant.head != "mlp":
            cols.append(np.sum(((z - centre) @ whiten) ** 2, axis=1) / whiten.shape[1])
        return np.stack(cols, axis=1)

    cal = [f for f in files if f["split"] == "calib" and usable(f)]
    cal_feats = [(variant.eval_features(f, ch), f["label"] == "spoof") for f in cal for ch in variant.eval_channels(f)]
    cx = np.concatenate([raw(x) for x, _ in cal_feats])
    cy = np.concatenate([np.full(len(x), spoof) for x, spoof in cal_feats])
    platt = LogisticRegression(C=1e4).fit(cx, cy)
    a, b = platt.coef_[0], float(platt.intercept_[0])

    def logits(feats):
        return raw(feats) @ a

    bona_cal = [np.mean(logits(variant.eval_features(f, ch)) + b) for f in cal if f["label"] == "bonafide"
                for ch in variant.eval_channels(f)]
    thr = float(np.quantile(bona_cal, 0.99))
    return logits, b, thr


def nuisance_check(files):
    tr = [f for f in files if f["split"] != "test" and f["nuisance"] is not None and not is_copysynth(f)]
    te = [f for f in files if f["split"] == "test" and f["nuisance"] is not None]
    X, y = np.array([f["nuisance"] for f in tr]), np.array([f["label"] == "spoof" for f in tr])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit((X - mu) / sd, y)
    s = clf.decision_function((np.array([f["nuisance"] for f in te]) - mu) / sd)
    lab = np.array([f["label"] == "spoof" for f in te])
    e, _ = T.eer(s[~lab], s[lab])
    names = ["source_rate_khz", "rolloff99_khz", "rms_db", "lead_silence_s", "trail_silence_s",
             "duration_s", "dc_offset_pct"]
    return {"test_eer": round(e, 4), "train_files": len(tr), "test_files": len(te),
            "coefficients": dict(zip(names, np.round(clf.coef_[0], 3).tolist()))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=T.ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=T.ROOT / ".deps" / "train-cache")
    ap.add_argument("--out", type=Path, default=T.ROOT / ".deps" / "lofo")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run on generated clips (CI)")
    ap.add_argument("--crops", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--whisper-layers", type=int, default=2, help="encoder blocks kept (whisper front-end)")
    ap.add_argument("--precision", choices=["int8", "fp32"], default="fp32", help="as train.py (whisper front-end)")
    ap.add_argument("--variants", default="whisper/2,whisper/all/cs/ph,lfcc//cs/ph",
                    help="classifier recipes, comma-separated FRONT[/TAPS[/FLAG...]] (see Variant): TAPS are the "
                         "Whisper encoder points pooled (0 = its input, k = after block k, 'all'); the default "
                         "compares 0.2.0's recipe, the shipped one and the from-scratch baseline")
    ap.add_argument("--hold-out", choices=["family", "system"], default="family",
                    help="leave one synthesis family out per fold (default), or one system")
    ap.add_argument("--features", type=Path, help="a pickle of the featurised files: read if it exists, else written")
    ap.add_argument("--sets", choices=["v1", "v2"], default="v1",
                    help="v1: real/ and demo/ (0.5.0's data); v2: with real2/ and demo2/, flow-matching TTS a family")
    args = ap.parse_args()
    args.t0 = time.time()
    rng = np.random.default_rng(T.SEED)
    variants = [Variant(v, args.hidden) for v in args.variants.split(",")]
    fronts = sorted({fr for v in variants for fr in v.fronts})
    recipes = sorted({v.recipe for v in variants})
    if args.tiny:
        items = T.generated_items(args.cache, 18) + T.tiny_bonafide(args.cache)
        families = ["tts-a", "tts-b"]
        for k, it in enumerate(items):  # both classes in every split, two pretend families
            family = families[k % 2] if it[1] == "spoof" else "bonafide"
            items[k] = it[:3] + (family, it[4], ["train", "calib", "test"][k % 3]) + it[6:]
        args.channels = ["wideband", "g711_mu", "amr_nb"]
    else:
        items = T.shared_items(args.data, T.SETS_V2 if args.sets == "v2" else T.SETS_V1)
        items += T.generated_items(args.cache, 72)
        args.channels = CHANNELS
    files = pickle.loads(args.features.read_bytes()) if args.features and args.features.exists() else None
    stored_added = [f for f in files or [] if T.is_added_generator(f["system"])]
    stored_base = [f for f in files or [] if not T.is_added_generator(f["system"])] if files else None
    genuine = [it for it in items if it[1] == "bonafide" and it[5] == "train"]
    if any(v.copysynth for v in variants) or any(is_copysynth(f) for f in stored_base or []):
        items += copysynth.items(args.cache, genuine, T.load, ("griffin-lim",) if args.tiny else ("hifigan", "griffin-lim"))
    # The generators added after 0.3.1 are a block of their own, featurised with a seed of their own,
    # so that features stored before them stay valid and a fresh pass equals a completed one.
    added = []
    if any(v.more_generators for v in variants) or stored_added:
        added = T.packaged_voice_items(args.cache, 3 if args.tiny else 48, neural=not args.tiny)
        if args.tiny:  # as the other generated clips: the pretend families, every split
            added = [it[:3] + (families[k % 2], it[4], ["train", "calib", "test"][k % 3]) + it[6:]
                     for k, it in enumerate(added)]
        added += copysynth.items(args.cache, genuine, T.load, ("world",))
    sessions, calibration = {}, []

    def session(name):
        if not calibration and args.precision == "int8":
            # Activation scales from windows of the train split, as train.py, drawn once.
            pick = [items[i] for i in np.random.default_rng(T.SEED).permutation(len(items)) if items[i][5] == "train"]
            windows = [T.augment(w, rng) for it in pick[:200] for w in T.crops(T.load(it[0]), 3, rng)]
            calibration.append(np.stack(windows[:512]))
        if name not in sessions:
            sessions[name] = front_end_session(name, args.cache, args.whisper_layers, args.precision, taps="all",
                                               calibration=calibration[0] if calibration else None)
        return sessions[name]

    changed = False
    blocks = [(items, stored_base, rng)]
    if added:
        blocks.append((added, stored_added or None, np.random.default_rng(T.SEED + 2)))
    files = []
    for block_items, stored, block_rng in blocks:
        missing = [fr for fr in fronts if stored is None or not any(fr in f["eval"] for f in stored)]
        if missing:
            # Every tap is stored, so recipes that differ only in the taps they read share one pass.
            # Front-ends missing from stored features are added by replaying the stored pass for
            # them only: same items, recipes and seeds, so every window (crop, augmentation,
            # channel) is the one the stored features saw.
            args.recipes = (sorted({k.split(":")[1] for f in stored for k in f["train"]}) if stored
                            else sorted(set(recipes) | {k.split(":")[1] for f in stored_base or [] for k in f["train"]}))
            new = collect(block_items, {name: session(name) for name in missing}, args, block_rng)
            if stored is None:
                stored = new
            else:
                merge(stored, new)
            changed = True
        files += stored
    if changed and args.features:
        args.features.parent.mkdir(parents=True, exist_ok=True)
        args.features.write_bytes(pickle.dumps(files))
    unit = args.hold_out
    key = "systems" if unit == "system" else "families"
    held = sorted({f[unit] for f in files if f["label"] == "spoof" and not is_copysynth(f)
                   and not T.is_added_generator(f["system"])})
    report = {"channels": args.channels, "held_out": unit, key: {}, "nuisance": nuisance_check(files)}
    trained = {}
    for v in variants:
        for x in held:
            report[key].setdefault(x, {})[v.spec] = fold(files, v, x, args, unit, trained)
            print(f"{v.spec} without {x}: {report[key][x][v.spec]}", flush=True)
    report["pooled"] = pooled(report[key], report["channels"], [v.spec for v in variants])
    if unit == "system":  # each family's systems pooled: against leave-one-family-out, what siblings give
        family = {f["system"]: f["family"] for f in files}
        report["by_family"] = {fam: pooled({x: r for x, r in report[key].items() if family[x] == fam},
                                           report["channels"], [v.spec for v in variants])
                               for fam in sorted({family[x] for x in held})}
    report["seconds"] = round(time.time() - args.t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lofo.json").write_text(json.dumps(report, indent=1))
    print(table(report, [v.spec for v in variants]))


def pooled(folds, channels, specs):
    """Per recipe and channel: the folds' EERs weighted by their number of spoof files (file
    means per channel, the first 1.5 s through mu-law, and the daemon's rule per channel, over
    the whole file and over its first 3.5 s)."""
    out = {}
    for spec in specs:
        columns = ([(ch, "eer_file", ch) for ch in channels] + [("first_1500ms", "eer_1500ms", "g711_mu")]
                   + [(f"rule_{ch}", "eer_rule", ch) for ch in channels]
                   + [(f"rule_3500ms_{ch}", "eer_rule_3500ms", ch) for ch in channels])
        for ch, key, src in columns:
            rows = [by[spec][src] for by in folds.values() if key in by.get(spec, {}).get(src, {})]
            n = sum(r["n_spoof"] for r in rows)
            if n:
                out.setdefault(spec, {})[ch] = round(sum(r[key] * r["n_spoof"] for r in rows) / n, 4)
    return out


def table(report, fronts):
    unit = report["held_out"]
    head = (f"| held-out {unit} | front-end | " + " | ".join(report["channels"])
            + " | first 1.5 s (mu-law) | daemon's rule (mu-law) | its first 3.5 s (mu-law) |")
    lines = [head, "|" + "---|" * (len(report["channels"]) + 5)]
    for fam, by_front in report["systems" if unit == "system" else "families"].items():
        for front in fronts:
            r = by_front.get(front, {})
            cells = [f"{r[ch]['eer_file'] * 100:.1f}%" if ch in r else "-" for ch in report["channels"]]
            extra = [r.get("g711_mu", {}).get(k) for k in ("eer_1500ms", "eer_rule", "eer_rule_3500ms")]
            n = next(iter(r.values()), {}).get("n_spoof", 0)
            cells += [f"{e * 100:.1f}%" if e is not None else "-" for e in extra]
            lines.append(f"| {fam} (n={n}) | {front} | " + " | ".join(cells) + " |")
    pooled_columns = report["channels"] + ["first_1500ms", "rule_g711_mu", "rule_3500ms_g711_mu"]
    for front in fronts:
        p = report.get("pooled", {}).get(front, {})
        cells = [f"{p[ch] * 100:.1f}%" if ch in p else "-" for ch in pooled_columns]
        lines.append(f"| all, weighted by n | {front} | " + " | ".join(cells) + " |")
    for fam, by_front in report.get("by_family", {}).items():
        for front in fronts:
            p = by_front.get(front, {})
            cells = [f"{p[ch] * 100:.1f}%" if ch in p else "-" for ch in pooled_columns]
            lines.append(f"| {fam}: its systems, weighted by n | {front} | " + " | ".join(cells) + " |")
    lines.append(f"\nNuisance-feature classifier, test EER: {report['nuisance']['test_eer'] * 100:.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
