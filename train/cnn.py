#!/usr/bin/env python3
"""A from-scratch CNN on log linear-filterbank energies (0-8 kHz, the 4-8 kHz band included where a
call has it), compared leave-one-family-out on real/ + real2/ + demo/ + demo2/, scored by the
daemon's alert rule. Three steps, because Debian's PyTorch needs Debian's numpy 1.x while the
project's venv (codecs, onnxruntime, sklearn) has numpy 2:

    .deps/venv/bin/python train/cnn.py prepare             # crops, channels, features (~15 min, 2 cores)
    /usr/bin/python3      train/cnn.py fit --seeds 0,1,2   # one CNN per fold and seed (checkpointed, resumable)
    .deps/venv/bin/python train/cnn.py report              # Platt, thresholds, EERs, alert rates: OUT/cnn.json
    .deps/venv/bin/python train/cnn.py prepare-extra --extra kokoro,copysynth   # training-only spoofs
                                                           # (vocoder-here: after train/vocoder.py fit);
                                                           # then fit/report --extra kokoro,copysynth

    ... prepare --tiny / fit --tiny / report --tiny        # seconds, generated clips (CI smoke)

    .deps/venv/bin/python train/cnn.py pack                # .deps/cnn-pack: 44 MiB for a GPU machine
    scripts/gpu-cnn.sh                                     # there: fit --device cuda on the pack
    /usr/bin/python3      train/cnn.py score --runs DIR    # here: the returned checkpoints, every window

prepare: every file of the four sets (and the espeak-ng/flite voices of train.py) is loaded at
16 kHz. Train-split files give `--crops` random voiced 1 s crops, each through the "phone"
augmentation (room, noise, one channel drawn per crop; a source recorded at 8 kHz draws only among
the 8 kHz channels). Calibration- and test-split files, and every spoof file (each is tested in the
fold that holds its family out), go through each evaluation channel whole and are cut into 1 s
windows at the daemon's 0.5 s hop (at most EVAL_WINDOWS per file). A window's features are the
log energies of 80 linear bands over 97 frames (512-point Hann STFT, 10 ms hop) of the RMS-
normalised window, stored as float16: the same computation as the exported graph (`Frontend`).

fit: for each fold (each synthesis family held out, and `zero-shot`: both zero-shot families out
together) and seed, a CNN trains on the train-split windows of the other families and the genuine
train speakers, drawn so that each spoof system and each genuine source weighs the same and the
classes weigh the same (seven demo2 pages give clones only: a page's recording conditions must not
stand for "synthetic"). It then scores every evaluation window. Checkpoints every epoch; a run
that was stopped resumes where it was, and finished folds are skipped.

report: per fold, Platt scaling on the calibration split without the held-out family; per channel,
the file-mean EER and the daemon's rule EER (whole file and first 3.5 s) of the held-out family's
spoofs against the genuine test speakers (real/real2 speakers and demo pages never trained on);
the rule's threshold at 1% of calibration-split genuine files alerted, per channel class, and at it
the share of clones caught, of genuine test files alerted, and false alerts per genuine call-hour
on the held-out real2 speakers. Folds are pooled weighted by their spoof files, over seeds with
mean and spread.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261125
SR = 16000
WINDOW = 16000
N_FFT, HOP, N_BANDS = 512, 160, 80
FRAMES = (WINDOW - N_FFT) // HOP + 1  # 97
EVAL_WINDOWS = 16  # 8.5 s of each evaluation file per channel
CHANNELS = ["wideband", "g711_mu", "g711_a", "gsm", "amr_nb", "opus"]
ZERO_SHOT = ("tts-zero-shot-lm", "tts-zero-shot-flow")
TRAIN_ONLY_FAMILIES = ("tts-parametric",)  # the generated espeak-ng/flite voices: never a fold


# ------------------------------------------------------------------------------ front-end


# The STFT and filterbank are features.py's (there with 60 bands), written again here because
# `fit` runs in Debian's Python, which has PyTorch but not the onnx package features.py imports.
def stft_kernels():
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    return np.cos(2 * np.pi * k * n / N_FFT) * window, -np.sin(2 * np.pi * k * n / N_FFT) * window


def filterbank():
    bins = N_FFT // 2 + 1
    freqs = np.linspace(0, SR / 2, bins)
    edges = np.linspace(0, SR / 2, N_BANDS + 2)
    fb = np.zeros((bins, N_BANDS))
    for b in range(N_BANDS):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        fb[:, b] = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return fb


_COS, _SIN = stft_kernels()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
_FB = filterbank()


def log_bands(windows):
    """[N, WINDOW] -> [N, FRAMES, N_BANDS] float32: what `Frontend` computes in the graph."""
    x = np.asarray(windows, np.float64)
    x = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)
    idx = np.arange(FRAMES)[:, None] * HOP + np.arange(N_FFT)[None, :]
    spec = np.fft.rfft(x[:, idx] * _HANN, axis=-1)  # [N, T, 257]: the graph's cos/sin kernels
    return np.log((spec.real ** 2 + spec.imag ** 2) @ _FB + 1e-6).astype(np.float32)


# -------------------------------------------------------------------------------- prepare


def drawn(args):
    """What `prepare` draws, in its order: (file metadata, train-split crops after augmentation,
    [(channel, evaluation windows)]), one file at a time. `prepare`, and `prepare-whisper` and
    `prepare-raw` through `replay`, read it, so the Whisper features and the waveforms are of the
    very windows the CNN's are."""
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).parent))
    import train as T

    rng = np.random.default_rng(SEED)
    if args.tiny:
        items = T.generated_items(args.cache_train, 18) + T.tiny_bonafide(args.cache_train)
        families = ["tts-a", "tts-b"]
        for k, it in enumerate(items):
            family = families[k % 2] if it[1] == "spoof" else "bonafide"
            items[k] = it[:3] + (family, it[4], ["train", "calib", "test"][k % 3]) + it[6:]
        channels = ["wideband", "g711_mu", "amr_nb"]
    else:
        items = T.shared_items(args.data, T.SETS_V2) + T.generated_items(args.cache_train, 72)
        channels = CHANNELS
    for (path, label, system, family, group, split, source), x in T.loaded(items):
        rate = sf.info(str(path)).samplerate
        f = dict(path=str(path), label=label, system=system, family=family, group=group, split=split,
                 source=source, rate=rate, seconds=round(len(x) / SR, 3),
                 real2="/real2/" in str(path))
        crops = []
        if split == "train":
            crops = [T.augment(w, rng, "phone", narrowband_only=rate < SR) for w in T.crops(x, args.crops, rng)]
        evals = []
        if split != "train" or label == "spoof":
            crng = np.random.default_rng(SEED + 1)
            evals = list(T.channel_windows(x, channels, crng, rate < SR, EVAL_WINDOWS))
        yield f, crops, evals, channels


def prepare(args):
    files, train_x, train_file, eval_x, eval_index = [], [], [], [], []
    n_train = n_eval = 0
    channels = CHANNELS
    for f, crops, evals, channels in drawn(args):
        k = len(files)
        if crops:
            train_x.append(log_bands(crops).astype(np.float16))
            train_file += [k] * len(crops)
            n_train += len(crops)
        for ch, ws in evals:
            eval_x.append(log_bands(ws).astype(np.float16))
            eval_index.append((k, channels.index(ch), n_eval, len(ws)))
            n_eval += len(ws)
        files.append(f)
        if len(files) % 200 == 0:
            print(f"prepare: {len(files)} files, {n_train} train crops, {n_eval} eval windows, "
                  f"{time.time() - args.t0:.0f} s", flush=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    np.save(args.cache / "train_x.npy", np.concatenate(train_x))
    np.save(args.cache / "train_file.npy", np.array(train_file, np.int32))
    np.save(args.cache / "eval_x.npy", np.concatenate(eval_x))
    np.save(args.cache / "eval_index.npy", np.array(eval_index, np.int64))
    (args.cache / "files.json").write_text(json.dumps({"channels": channels, "files": files}))
    print(f"prepare: {len(files)} files, {n_train} train crops, {n_eval} eval windows in "
          f"{time.time() - args.t0:.0f} s -> {args.cache}")


# ----------------------------------------------------------------- the 0.5.x recipe beside it


def replay(args, name, width, dtype, featurize):
    """Replays what `prepare` drew, from the seed, into NAME_train.npy and NAME_eval.npy (rows as
    train_x.npy and eval_x.npy): `featurize(list of 1 s windows) -> [n, width]`. Stops if the replay
    differs from the cache."""
    meta = json.loads((args.cache / "files.json").read_text())["files"]
    index = np.load(args.cache / "eval_index.npy")
    n_train, n_eval = len(np.load(args.cache / "train_file.npy")), int(index[-1, 2] + index[-1, 3])
    parts = {part: args.cache / f"{name}_{part}.npy.part" for part in ("train", "eval")}
    train = np.lib.format.open_memmap(parts["train"], "w+", dtype, (n_train, width))
    evals = np.lib.format.open_memmap(parts["eval"], "w+", dtype, (n_eval, width))
    at_train = at_eval = 0
    for k, (f, crops, windows, _) in enumerate(drawn(args)):
        if k >= len(meta) or f["path"] != meta[k]["path"]:
            sys.exit(f"cnn.py prepare-{name}: file {k} is {f['path']}, prepare had another: the data changed")
        if crops:
            train[at_train:at_train + len(crops)] = featurize(crops)
            at_train += len(crops)
        for _, ws in windows:
            evals[at_eval:at_eval + len(ws)] = featurize(ws)
            at_eval += len(ws)
        if (k + 1) % 200 == 0:
            print(f"prepare-{name}: {k + 1} files, {at_train} crops, {at_eval} windows, "
                  f"{time.time() - args.t0:.0f} s", flush=True)
    if (at_train, at_eval) != (n_train, n_eval):
        sys.exit(f"cnn.py prepare-{name}: replayed {at_train} crops and {at_eval} windows, prepare cut "
                 f"{n_train} and {n_eval}")
    train.flush()
    evals.flush()
    del train, evals
    for part, path in parts.items():
        path.rename(args.cache / f"{name}_{part}.npy")
    print(f"prepare-{name}: {n_train} crops, {n_eval} windows in {time.time() - args.t0:.0f} s")


def prepare_whisper(args):
    """The shipped detector's front-end (Whisper tiny.en, two encoder blocks, every tap pooled: 2,304
    columns) on the windows `prepare` cut: whisper_train.npy and whisper_eval.npy."""
    sys.path.insert(0, str(Path(__file__).parent))
    import lofo
    import train as T

    session = lofo.front_end_session("whisper", args.cache_train, 2, "fp32", taps="all")
    replay(args, "whisper", session.get_outputs()[0].shape[-1], np.float16, lambda ws: T.featurize(session, ws))


def prepare_raw(args):
    """The waveforms of the windows `prepare` cut (16,000 samples at 16 kHz, after augmentation and
    the channel), float32 (float16's rounding noise, about -66 dB, would fill the empty 4-8 kHz band
    of narrowband channels): raw_train.npy and raw_eval.npy, for the raw-waveform models of
    train/aasist.py. About 6.7 GB for the full cache."""
    replay(args, "raw", WINDOW, np.float32, lambda ws: np.asarray(ws, np.float32))


def fit_whisper(args):
    """The 0.5.x head (three 64-unit MLPs, their logits averaged) on the Whisper features, per fold
    and seed, trained on the same rows with the same weights as the CNN: runs-whisper/FOLD_sSEED.npy,
    the logit of every evaluation window, which `report --runs CACHE/runs-whisper` reads as the
    CNN's. Only the model differs."""
    sys.path.insert(0, str(Path(__file__).parent))
    import train as T

    files = json.loads((args.cache / "files.json").read_text())["files"]
    train_x = np.load(args.cache / "whisper_train.npy", mmap_mode="r")
    eval_x = np.load(args.cache / "whisper_eval.npy", mmap_mode="r")
    train_file = np.load(args.cache / "train_file.npy")
    out = args.runs or args.cache / "runs-whisper"
    out.mkdir(parents=True, exist_ok=True)
    label = np.array([f["label"] == "spoof" for f in files])
    for name, held, seed, tag, rows in pending_runs(args, files, train_file, out, "fit-whisper"):
        x = np.asarray(train_x[rows], np.float32)
        y = label[train_file[rows]].astype(int)
        w = weights(files, train_file[rows], label)
        mu, sd = T.standardiser(x)
        mlp = T.mlp_heads((x - mu) / sd, y, 64, 1e-2, [SEED + 10 * seed + k for k in range(3)], args.tiny,
                          sample_weight=w * len(y))
        logits = np.concatenate([T.mlp_logit((np.asarray(eval_x[i:i + 8192], np.float32) - mu) / sd, mlp)
                                 for i in range(0, len(eval_x), 8192)]).astype(np.float32)
        np.save(out / f"{tag}.npy", logits)
        print(f"fit-whisper: {tag} in {time.time() - args.t0:.0f} s", flush=True)


EXTRAS = ("kokoro", "copysynth", "vocoder-here")
COPYSYNTH_VOCODERS = ("hifigan", "griffin-lim", "world")


def prepare_extra(args):
    """Training crops of spoofs that only ever train and no fold holds out, into extra_NAME.npy
    (with extra_NAME_system.npy: each row's system): `fit --extra NAME[,NAME]` adds each of their
    systems as one more spoof system of every fold.
    - kokoro: Kokoro-82M clips (train/kokoro.py), one system.
    - copysynth: every genuine train-split file of the cache, a 1.5 s stretch of it through each
      vocoder of train/copysynth.py (HiFi-GAN universal on every file, HiFi-GAN LJSpeech and WORLD
      on alternate halves, Griffin-Lim on every file), so the copy differs from its source only by
      the vocoder; a source recorded at 8 kHz keeps to the 8 kHz channels, as its genuine crops do.
    - vocoder-here: the same, through the iSTFT vocoder trained here (train/vocoder.py), every file."""
    sys.path.insert(0, str(Path(__file__).parent))
    import train as T

    for name in args.extra.split(","):
        rng = np.random.default_rng(SEED + 3 + 2 * EXTRAS.index(name))
        crops, systems = [], []
        if name == "kokoro":
            import kokoro
            for _, x in T.loaded(kokoro.items(args.cache_train / "kokoro", 6 if args.tiny else args.kokoro)):
                crops += [T.augment(w, rng, "phone") for w in T.crops(x, args.crops, rng)]
            systems = ["kokoro"] * len(crops)
        else:
            import copysynth
            files = json.loads((args.cache / "files.json").read_text())["files"]
            genuine = [f for f in files if f["label"] != "spoof" and f["split"] == "train"]
            rate = {copysynth.file_key(Path(f["path"])): f["rate"] for f in genuine}  # by the copies' names
            vocoders = (("istft",) if name == "vocoder-here" else ("griffin-lim", "world") if args.tiny
                        else COPYSYNTH_VOCODERS)
            items = copysynth.items(args.cache_train, [(Path(f["path"]),) for f in genuine], T.load, vocoders)
            for item, x in T.loaded(items):
                narrow = rate[item[0].stem] < SR
                got = [T.augment(w, rng, "phone", narrowband_only=narrow) for w in T.crops(x, args.crops // 2, rng)]
                crops += got
                systems += [item[2]] * len(got)
        args.cache.mkdir(parents=True, exist_ok=True)
        np.save(args.cache / f"extra_{name}.npy", log_bands(crops).astype(np.float16))
        np.save(args.cache / f"extra_{name}_system.npy", np.array(systems))
        print(f"prepare-extra: {name}: {len(crops)} crops of {len(set(systems))} systems "
              f"({time.time() - args.t0:.0f} s) -> {args.cache / f'extra_{name}.npy'}", flush=True)


def load_extras(cache, names):
    """The extra training crops of `fit --extra` and each row's system name."""
    xs, systems = [np.zeros((0, FRAMES, N_BANDS), np.float16)], [np.zeros(0, str)]
    for name in names.split(",") if names else []:
        xs.append(np.load(cache / f"extra_{name}.npy"))
        sys_file = cache / f"extra_{name}_system.npy"  # absent for the first Kokoro caches: one system
        systems.append(np.load(sys_file) if sys_file.exists() else np.full(len(xs[-1]), name))
    return np.concatenate(xs), np.concatenate(systems)


# ------------------------------------------------------------------------------------ pack


def pack(args):
    """A compact copy of a cache for a machine without the data (scripts/gpu-cnn.sh), at most
    `--mib` MiB: training crops drawn without replacement with `weights()`'s per-system/source
    weighting (rare systems and sources keep all their crops, abundant ones are thinned), and the
    evaluation windows of the zero-shot fold's report (calibration split, genuine test files, both
    zero-shot families) through `--pack-channels`, at most `--pack-windows` per file: enough for a
    quick look on that machine, not for the report, which scores the returned checkpoints on the
    whole cache (`score`). Features are stored as uint8 with a per-band offset and step
    (NAME.quant.npy, about 0.1 nat a step), half of float16's size; files.json keeps only the files
    the rows come from, re-indexed."""
    src, dst = args.cache, args.pack_out
    meta = json.loads((src / "files.json").read_text())
    files, channels = meta["files"], meta["channels"]
    train_x = np.load(src / "train_x.npy", mmap_mode="r")
    train_file = np.load(src / "train_file.npy")
    eval_x = np.load(src / "eval_x.npy", mmap_mode="r")
    eval_index = np.load(src / "eval_index.npy")
    label = np.array([f["label"] == "spoof" for f in files])
    rng = np.random.default_rng(SEED + 7)
    keep_ch = set(channels) if args.tiny else set(args.pack_channels.split(","))
    held = tuple({f["family"] for f in files if f["label"] == "spoof"}) if args.tiny else ZERO_SHOT
    needed = needed_windows(files, eval_index, held, False, len(eval_x))
    eval_rows, index_rows = [], []
    for k, ch, start, n in eval_index:
        if channels[ch] in keep_ch and needed[start]:
            take = min(int(n), args.pack_windows)
            index_rows.append((int(k), int(ch), len(eval_rows), take))
            eval_rows += range(int(start), int(start) + take)
    row = FRAMES * N_BANDS  # bytes of a uint8 row
    room = int(args.mib * 2 ** 20) - len(eval_rows) * row - (1 << 20)  # 1 MiB for files.json and the rest
    if room < 100 * row:
        sys.exit(f"pack: {args.mib} MiB leaves no room for training crops beside {len(eval_rows)} evaluation windows")
    n_train = min(len(train_file), room // row)
    pick = np.sort(rng.choice(len(train_file), n_train, replace=False, p=weights(files, train_file, label)))
    sample = np.asarray(train_x[np.sort(rng.choice(len(train_x), min(len(train_x), 4000), replace=False))], np.float32)
    lo, hi = sample.min(axis=(0, 1)), sample.max(axis=(0, 1))
    step = np.maximum(hi - lo, 1e-3) / 255

    def quantise(x):
        return np.clip(np.round((np.asarray(x, np.float32) - lo) / step), 0, 255).astype(np.uint8)

    used = sorted(set(train_file[pick].tolist()) | {k for k, *_ in index_rows})
    new = {k: i for i, k in enumerate(used)}
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("*.npy"):
        old.unlink()
    xs = [quantise(train_x[pick[i:i + 2048]]) for i in range(0, len(pick), 2048)]
    np.save(dst / "train_x.npy", np.concatenate(xs) if xs else np.zeros((0, FRAMES, N_BANDS), np.uint8))
    np.save(dst / "train_file.npy", np.array([new[k] for k in train_file[pick]], train_file.dtype))
    rows = np.array(eval_rows, int)
    np.save(dst / "eval_x.npy", np.concatenate([quantise(eval_x[rows[i:i + 2048]]) for i in range(0, len(rows), 2048)])
            if len(rows) else np.zeros((0, FRAMES, N_BANDS), np.uint8))
    np.save(dst / "eval_index.npy", np.array([(new[k], ch, start, n) for k, ch, start, n in index_rows], eval_index.dtype))
    for name in ("train_x", "eval_x"):
        np.save(dst / f"{name}.quant.npy", np.stack([lo, step]).astype(np.float32))
    (dst / "files.json").write_text(json.dumps({
        "channels": channels, "files": [files[k] for k in used],
        "pack": {"from": str(src), "train_rows": int(n_train), "of_train_rows": int(len(train_file)),
                 "eval_windows": len(eval_rows), "eval_channels": sorted(keep_ch), "windows_per_file": args.pack_windows,
                 "eval_fold": list(held), "features": "uint8, per-band offset and step in NAME.quant.npy"}}))
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"pack: {dst}: {n_train} of {len(train_file)} training crops, {len(eval_rows)} evaluation windows "
          f"({', '.join(sorted(keep_ch))}; {len(index_rows)} file-channels), {len(used)} files: "
          f"{size / 2 ** 20:.1f} MiB")


# ------------------------------------------------------------------------------------- fit


def folds(files, tiny):
    """Fold name -> families held out: `zero-shot` (both zero-shot families) first, then each family,
    the zero-shot ones first (a run that is stopped has the folds that matter most)."""
    fams = sorted({f["family"] for f in files if f["label"] == "spoof" and f["family"] not in TRAIN_ONLY_FAMILIES},
                  key=lambda fam: (fam not in ZERO_SHOT, fam))
    out = {} if tiny else {"zero-shot": ZERO_SHOT}
    out.update({fam: (fam,) for fam in fams})
    return out


def pending_runs(args, files, train_file, out, step):
    """(fold name, families held out, seed, run tag, training rows) of each run that `args` asks for
    (`--folds`, `--seeds`, `--all`: one run on every family) and `out` does not yet hold; the
    finished ones are announced and skipped, so a stopped command resumes where it was."""
    family = np.array([f["family"] for f in files])
    todo = folds(files, args.tiny)
    if args.folds:
        todo = {k: v for k, v in todo.items() if k in args.folds.split(",")}
    if getattr(args, "all", False):
        todo = {"all": ()}
    for name, held in todo.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            tag = f"{name}_s{seed}"
            if (out / f"{tag}.npy").exists():
                print(f"{step}: {tag} done before, skipped", flush=True)
                continue
            yield name, held, seed, tag, np.flatnonzero(~np.isin(family[train_file], held))


def build_model(torch, band_mean, band_std):
    nn = torch.nn

    class Frontend(nn.Module):
        """waveform [B, 16000] -> log band energies [B, 1, N_BANDS, FRAMES] (as log_bands)."""

        def __init__(self):
            super().__init__()
            kernels = np.concatenate([_COS, _SIN])[:, None, :]
            self.register_buffer("kernels", torch.tensor(kernels, dtype=torch.float32))
            self.register_buffer("fb", torch.tensor(_FB, dtype=torch.float32))

        def forward(self, wave):
            wave = wave / torch.sqrt(torch.mean(wave * wave, dim=1, keepdim=True) + 1e-8)
            spec = torch.nn.functional.conv1d(wave[:, None, :], self.kernels, stride=HOP)
            half = N_FFT // 2 + 1
            power = spec[:, :half] ** 2 + spec[:, half:] ** 2  # [B, 257, T]
            return torch.log(torch.matmul(power.transpose(1, 2), self.fb) + 1e-6)  # [B, T, F]

    def block(cin, cout, pool):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return layers

    class Net(nn.Module):
        """Log bands (standardised per band with training statistics) -> 4 conv blocks -> mean and
        std over time of each (channel, band) -> linear -> logit."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(band_mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(band_std, dtype=torch.float32))
            self.body = nn.Sequential(*block(1, 16, True), *block(16, 32, True), *block(32, 48, True),
                                      *block(48, 64, False))
            self.drop = nn.Dropout(0.3)
            self.head = nn.Linear(2 * 64 * (N_BANDS // 8), 1)

        def forward(self, bands):  # [B, T, F]
            z = ((bands - self.mean) / self.std).transpose(1, 2)[:, None]  # [B, 1, F, T]
            h = self.body(z)  # [B, 64, F/8, T/8]
            h = torch.cat([h.mean(dim=3), h.std(dim=3)], dim=1).flatten(1)
            return self.head(self.drop(h))[:, 0]

    return Frontend, Net


class Features:
    """A cache's feature rows ([N, FRAMES, N_BANDS]) read as float32: float16 as `prepare` stores
    them, or uint8 with a per-band offset and step beside them (NAME.quant.npy, from `pack`)."""

    def __init__(self, cache, name):
        self.x = np.load(cache / f"{name}.npy", mmap_mode="r")
        quant = cache / f"{name}.quant.npy"
        self.q = np.load(quant).astype(np.float32) if quant.exists() else None  # [2, N_BANDS]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        x = np.asarray(self.x[idx], np.float32)
        return x if self.q is None else self.q[0] + x * self.q[1]


def extra_suffix(extra):
    """The name suffix of runs and reports with `--extra` spoofs: "-kokoro+copysynth", or ""."""
    return "-" + extra.replace(",", "+") if extra else ""


def runs_dir(args):
    """Where fit writes and report/score read runs: --runs, else CACHE/runs (runs-EXTRA)."""
    return args.runs or args.cache / f"runs{extra_suffix(args.extra)}"


def torch_device(torch, name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"cnn.py: --device {name} asked for, but this PyTorch ({torch.__version__}) sees no CUDA device")
    return torch.device(name)


def needed_windows(files, eval_index, held, everything, n_eval, channels=None):
    """The evaluation windows a fold's report reads (the calibration split, the genuine test files,
    the held-out spoofs; every window for `--all`), through every channel or those indices only."""
    needed = np.zeros(n_eval, bool)
    for k, ch, start, n in eval_index:
        f = files[k]
        if channels is not None and ch not in channels:
            continue
        if everything or f["split"] == "calib" or (f["split"] == "test" and f["label"] == "bonafide") or (
                f["label"] == "spoof" and f["family"] in held):
            needed[start:start + n] = True
    return needed


def score_windows(torch, net, eval_x, needed, device, batch=512):
    """A trained net's logit per needed evaluation window; NaN elsewhere."""
    rows_eval = np.flatnonzero(needed)
    logits = np.full(len(eval_x), np.nan, np.float32)
    net.eval()
    with torch.no_grad():
        for i in range(0, len(rows_eval), batch):
            r = rows_eval[i:i + batch]
            logits[r] = net(torch.tensor(eval_x[r]).to(device)).cpu().numpy()
    return logits


def score(args):
    """Runs trained elsewhere (`fit --device cuda` on a `pack`, scripts/gpu-cnn.sh): each
    RUNS/<fold>_s<seed>.pt (or all_s<seed>.final.pt) without its .npy is scored on this cache's
    evaluation windows, so that `report` and train/sequential.py read it like a run of `fit`."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch_device(torch, args.device)
    files = json.loads((args.cache / "files.json").read_text())["files"]
    eval_x = Features(args.cache, "eval_x")
    eval_index = np.load(args.cache / "eval_index.npy")
    out = runs_dir(args)
    _, Net = build_model(torch, np.zeros(N_BANDS), np.ones(N_BANDS))
    todo = {"all": ()} if args.all else folds(files, args.tiny)
    for name, held in todo.items():
        for seed in [int(x) for x in args.seeds.split(",")]:
            tag = f"{name}_s{seed}"
            ckpt = out / (f"{tag}.final.pt" if name == "all" else f"{tag}.pt")
            if (out / f"{tag}.npy").exists() or not ckpt.exists():
                continue
            net = Net().to(device)
            net.load_state_dict(torch.load(ckpt, map_location=device)["net"])  # its band statistics too
            t0 = time.time()
            logits = score_windows(torch, net, eval_x, needed_windows(files, eval_index, held, name == "all",
                                                                      len(eval_x)), device)
            np.save(out / f"{tag}.npy", logits)
            print(f"score: {tag} from {ckpt.name}: {int(np.sum(~np.isnan(logits)))} windows ({time.time() - t0:.0f} s)",
                  flush=True)


def fit(args):
    import torch

    torch.set_num_threads(args.threads)
    device = torch_device(torch, args.device)
    meta = json.loads((args.cache / "files.json").read_text())
    files = meta["files"]
    train_x = Features(args.cache, "train_x")
    train_file = np.load(args.cache / "train_file.npy")
    n_base = len(train_x)
    extra, extra_system = load_extras(args.cache, args.extra)  # training only: rows past n_base
    if len(extra):
        train_x = np.concatenate([train_x[np.arange(n_base)].astype(np.float16), extra])
    eval_x = Features(args.cache, "eval_x")
    eval_index = np.load(args.cache / "eval_index.npy")
    out = runs_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    sample = np.random.default_rng(0).choice(len(train_x), min(len(train_x), 4000), replace=False)
    sx = np.asarray(train_x[np.sort(sample)], np.float32)
    band_mean, band_std = sx.mean(axis=(0, 1)), sx.std(axis=(0, 1)) + 1e-3
    _, Net = build_model(torch, band_mean, band_std)
    label = np.array([f["label"] == "spoof" for f in files])
    for name, held, seed, tag, rows in pending_runs(args, files, train_file, out, "fit"):
        w = weights(files, train_file[rows], label)
        if len(extra):  # each extra system weighs as much as one spoof system of the fold
            systems = len({files[k]["system"] for k in train_file[rows] if label[k]})
            _, inverse, counts = np.unique(extra_system, return_inverse=True, return_counts=True)
            w = np.concatenate([w, 0.5 / systems / counts[inverse]])
            rows = np.concatenate([rows, np.arange(n_base, n_base + len(extra))])
            w /= w.sum()
        torch.manual_seed(SEED + seed)
        rng = np.random.default_rng(SEED + seed)
        net = Net().to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-3)
        steps_per_epoch = max(1, len(rows) // args.batch)
        total = steps_per_epoch * args.epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
        ckpt = out / f"{tag}.pt"
        epoch0 = 0
        if ckpt.exists():
            state = torch.load(ckpt, map_location=device)
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            epoch0 = state["epoch"]
            rng = np.random.default_rng(SEED + seed + 1000 * epoch0)
            print(f"fit: {tag} resumed after epoch {epoch0}", flush=True)
        y_all = torch.tensor(np.concatenate([label[train_file], np.ones(len(extra), bool)]).astype(np.float32)).to(device)
        t0 = time.time()
        for epoch in range(epoch0, args.epochs):
            net.train()
            draw = rows[rng.choice(len(rows), steps_per_epoch * args.batch, p=w)]
            loss_sum = 0.0
            for s in range(steps_per_epoch):
                idx = np.sort(draw[s * args.batch:(s + 1) * args.batch])
                xb = torch.tensor(np.asarray(train_x[idx], np.float32))
                xb = spec_augment(torch, xb, rng).to(device)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb), y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss)
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch + 1}, ckpt)
            print(f"fit: {tag} epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        # Scored: what the report reads for this fold (the calibration split, the genuine test
        # files, the held-out spoofs); the other windows stay NaN.
        logits = score_windows(torch, net, eval_x, needed_windows(files, eval_index, held, args.all, len(eval_x)),
                               device)
        np.save(out / f"{tag}.npy", logits)
        if args.all:
            torch.save({"net": net.state_dict()}, out / f"{tag}.final.pt")
        print(f"fit: {tag} scored {len(logits)} windows ({time.time() - t0:.0f} s)", flush=True)


def weights(files, file_of_row, label):
    """Sampling weights of training rows: the classes weigh the same, and within them each spoof
    system and each genuine source (a corpus, a demo page) weighs the same."""
    key = np.array([f["system"] if f["label"] == "spoof" else f["source"] for f in files])[file_of_row]
    spoof = label[file_of_row]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    for cls in (True, False):
        m = spoof == cls
        w[m] *= 0.5 / w[m].sum()
    return w / w.sum()


def spec_augment(torch, x, rng):
    """Training-time masking of one band stretch (up to 8 of 80) and one time stretch (up to 12 of
    97 frames) on half of the windows each, filled with the window's mean: the CNN must not lean
    on one narrow band or moment."""
    x = x.clone()
    for i in range(len(x)):
        if rng.random() < 0.5:
            w = int(rng.integers(1, 9))
            f0 = int(rng.integers(0, N_BANDS - w))
            x[i, :, f0:f0 + w] = x[i].mean()
        if rng.random() < 0.5:
            w = int(rng.integers(1, 13))
            t0 = int(rng.integers(0, FRAMES - w))
            x[i, t0:t0 + w, :] = x[i].mean()
    return x


def export(args):
    """The `fit --all` model of `--seeds` (its first) as DIR/detector.onnx: waveform [batch, 16000]
    -> logit [batch], the front-end in the graph and the Platt scaling of `report` folded in.
    Checked against the stored features' scores before it is written."""
    import torch

    seed = int(args.seeds.split(",")[0])
    runs = runs_dir(args)
    platt = json.loads((runs / f"all_s{seed}.platt.json").read_text())
    state = torch.load(runs / f"all_s{seed}.final.pt", map_location="cpu")["net"]
    Frontend, Net = build_model(torch, np.zeros(N_BANDS), np.ones(N_BANDS))
    net = Net()
    net.load_state_dict(state)
    net.eval()

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.front, self.net = Frontend(), net

        def forward(self, waveform):
            return self.net(self.front(waveform)) * platt["a"] + platt["b"]

    model = Detector().eval()
    rng = np.random.default_rng(SEED)
    waves = rng.normal(0, 0.1, (8, WINDOW)).astype(np.float32) * rng.uniform(0.1, 2, (8, 1)).astype(np.float32)
    with torch.no_grad():
        graph = model(torch.tensor(waves)).numpy()
        stored = net(torch.tensor(log_bands(waves))).numpy() * platt["a"] + platt["b"]
    gap = float(np.abs(graph - stored).max())
    if gap > 1e-3:
        sys.exit(f"export: the graph's front-end disagrees with the training features by {gap}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.tensor(waves[:2]), str(args.out / "detector.onnx"), input_names=["waveform"],
                      output_names=["logit"], dynamic_axes={"waveform": {0: "batch"}, "logit": {0: "batch"}},
                      opset_version=17)
    print(f"export: {args.out / 'detector.onnx'} (graph vs features: max gap {gap:.2e})")


# ---------------------------------------------------------------------------------- report


def finished_runs(cache, files, tiny, runs=None):
    """(fold name, seed as a string, families held out, logits file) of every finished run in the
    cache (or in `runs`), in file order; `all` (the candidate) holds nothing out. Unknown fold names
    are skipped."""
    for run in sorted((runs or cache / "runs").glob("*_s*.npy")):
        name, seed = run.stem.rsplit("_s", 1)
        held = () if name == "all" else folds(files, tiny).get(name)
        if held is not None:
            yield name, seed, held, run


def window_logits(index, channels, logits):
    """(file index, channel name) -> that file's window logits through that channel, in time order
    (1 s windows, 0.5 s hop, at most EVAL_WINDOWS), from one run's logits and eval_index.npy. A run
    that did not score a file through a channel (all its windows NaN) has no entry for it; a file
    scored in part means a net that put out NaN, and stops the report."""
    out = {}
    for k, ch, start, n in index:
        x = logits[start:start + n]
        missing = np.isnan(x)
        if missing.all():
            continue
        if missing.any():
            sys.exit(f"cnn.py: file {k} channel {channels[int(ch)]}: {int(missing.sum())} of {n} window "
                     "logits are NaN (a diverged run?)")
        out[(int(k), channels[int(ch)])] = x
    return out


def platt(per, files, held):
    """Platt scaling (a, b) of one run, calibrated logit = a * logit + b: a logistic regression on
    the calibration split's windows (every channel the run scored) of every family but the held-out
    ones."""
    from sklearn.linear_model import LogisticRegression

    cal = [(per[(k, ch)], files[k]["label"] == "spoof") for (k, ch) in per
           if files[k]["split"] == "calib" and files[k]["family"] not in held]
    fit = LogisticRegression(C=1e4).fit(np.concatenate([x for x, _ in cal])[:, None],
                                        np.concatenate([np.full(len(x), s) for x, s in cal]))
    return float(fit.coef_[0][0]), float(fit.intercept_[0])


def report(args):
    sys.path.insert(0, str(Path(__file__).parent))
    import product_check
    import train as T
    from class_thresholds import CLASSES

    class_of_channel = {ch: cls for cls, chs in CLASSES.items() for ch in chs}

    meta = json.loads((args.cache / "files.json").read_text())
    files, channels = meta["files"], meta["channels"]
    index = np.load(args.cache / "eval_index.npy")
    smoothing, enter = product_check.verdict_rule()
    result = {"channels": channels, "folds": {}, "rule": [smoothing, enter]}
    for name, seed, held, run in finished_runs(args.cache, files, args.tiny, runs_dir(args)):
        per = window_logits(index, channels, np.load(run))
        a, b = platt(per, files, held)
        if name == "all":  # the candidate: its calibration, for export
            (run.parent / f"{run.stem}.platt.json").write_text(json.dumps({"a": a, "b": b}))
            continue
        cal_peak = {}  # channel class -> calibration genuine files' rule peaks
        for (k, ch), x in per.items():
            f = files[k]
            if f["split"] == "calib" and f["label"] == "bonafide":
                cal_peak.setdefault(class_of_channel[ch], []).append(product_check.peak(a * x + b, smoothing, enter))
        thr = {c: float(np.quantile(v, 0.99)) for c, v in cal_peak.items()}
        fold = {}
        for ch in channels:
            cls = class_of_channel[ch]
            bona = [(files[k], a * x + b) for (k, c), x in per.items() if c == ch
                    and files[k]["split"] == "test" and files[k]["label"] == "bonafide"]
            spoof = [a * x + b for (k, c), x in per.items() if c == ch and files[k]["label"] == "spoof"
                     and files[k]["family"] in held]
            if not bona or not spoof:
                continue
            pb = np.array([product_check.peak(s, smoothing, enter) for _, s in bona])
            ps = np.array([product_check.peak(s, smoothing, enter) for s in spoof])
            pb6 = [product_check.peak(s[:6], smoothing, enter) for _, s in bona]
            ps6 = [product_check.peak(s[:6], smoothing, enter) for s in spoof]
            r2 = np.array([f["real2"] for f, _ in bona])
            hours = sum(min(f["seconds"], 8.5) for f, _ in bona if f["real2"]) / 3600
            t = thr.get(cls, np.inf)
            fold[ch] = {"n_spoof": len(spoof), "n_bonafide": len(bona),
                        "eer_file": round(T.eer([s.mean() for _, s in bona], [s.mean() for s in spoof])[0], 4),
                        "eer_rule": round(T.eer(pb, ps)[0], 4), "eer_rule_3500ms": round(T.eer(pb6, ps6)[0], 4),
                        "threshold_logit": round(t, 3),
                        "caught": round(float(np.mean(ps >= t)), 4),
                        "genuine_alerted": round(float(np.mean(pb >= t)), 4),
                        "real2_alerts_per_hour": round(float(np.sum(pb[r2] >= t)) / hours, 3) if hours else None,
                        "real2_hours": round(hours, 3)}
        result["folds"].setdefault(name, {})[seed] = fold
        print(f"report: {name} seed {seed}: " + ", ".join(
            f"{ch} {r['eer_rule'] * 100:.1f}%" for ch, r in fold.items()), flush=True)
    result["pooled"] = pool(result["folds"], channels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cnn{extra_suffix(args.extra)}.json").write_text(json.dumps(result, indent=1))
    print(table(result, channels))


def fuse(args):
    """Score-level fusion of two runs folders (`--fuse A,B`) into `--runs`: per fold and seed found
    in both, a logistic regression on the two window logits, fitted on the calibration split's
    windows without the held-out families (as `platt`), gives the fused logit of every window."""
    from sklearn.linear_model import LogisticRegression

    meta = json.loads((args.cache / "files.json").read_text())
    files = meta["files"]
    index = np.load(args.cache / "eval_index.npy")
    first, second = [Path(d) for d in args.fuse.split(",")]
    out = args.runs or args.cache / "runs-fused"
    out.mkdir(parents=True, exist_ok=True)
    calib = np.zeros(int(index[-1, 2] + index[-1, 3]), bool)
    for name, seed, held, run in finished_runs(args.cache, files, args.tiny, runs=first):
        other = second / run.name
        if not other.exists():
            continue
        a, b = np.load(run), np.load(other)
        calib[:] = False
        spoof = np.zeros_like(calib)
        for k, _, start, n in index:
            if files[k]["split"] == "calib" and files[k]["family"] not in held:
                calib[start:start + n] = True
                spoof[start:start + n] = files[k]["label"] == "spoof"
        x = np.stack([a, b], axis=1)
        calib &= ~np.isnan(x).any(axis=1)  # a run scored on some channels only
        lr = LogisticRegression(C=1e4).fit(x[calib], spoof[calib])
        np.save(out / run.name, (x @ lr.coef_[0]).astype(np.float32))
        print(f"fuse: {run.stem}: weights {lr.coef_[0].round(3).tolist()}", flush=True)


def pool(folds_result, channels):
    """Per seed: leave-one-family-out folds (not `zero-shot`) weighted by spoof files; then the
    mean and the spread (min, max) over seeds. `zero-shot` on its own."""
    seeds = sorted({s for by in folds_result.values() for s in by})
    out = {}
    for key in ("eer_file", "eer_rule", "eer_rule_3500ms", "caught", "genuine_alerted"):
        for ch in channels:
            vals = []
            for s in seeds:
                rows = [by[s][ch] for name, by in folds_result.items() if name != "zero-shot" and s in by
                        and ch in by[s]]
                n = sum(r["n_spoof"] for r in rows)
                if n:
                    vals.append(sum(r[key] * r["n_spoof"] for r in rows) / n)
            if vals:
                out.setdefault(key, {})[ch] = {"mean": round(float(np.mean(vals)), 4), "min": round(min(vals), 4),
                                               "max": round(max(vals), 4), "seeds": len(vals)}
    zs = folds_result.get("zero-shot", {})
    if zs:
        out["zero-shot"] = {ch: {k: round(float(np.mean([zs[s][ch][k] for s in zs if ch in zs[s]])), 4)
                                 for k in ("eer_rule", "caught", "genuine_alerted")}
                            for ch in channels if any(ch in zs[s] for s in zs)}
    return out


def table(result, channels):
    lines = ["| held out | seeds | " + " | ".join(channels) + " |", "|" + "---|" * (len(channels) + 2)]
    for name, by in result["folds"].items():
        cells = []
        for ch in channels:
            v = [by[s][ch]["eer_rule"] for s in by if ch in by[s]]
            cells.append(f"{np.mean(v) * 100:.1f}% ({min(v) * 100:.1f}-{max(v) * 100:.1f})" if v else "-")
        n = next((r["n_spoof"] for s in by for r in by[s].values()), 0)
        lines.append(f"| {name} (n={n}) | {len(by)} | " + " | ".join(cells) + " |")
    p = result["pooled"].get("eer_rule", {})
    lines.append("| all folds, weighted | | " + " | ".join(
        f"{p[ch]['mean'] * 100:.1f}% ({p[ch]['min'] * 100:.1f}-{p[ch]['max'] * 100:.1f})" if ch in p else "-"
        for ch in channels) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "prepare-extra", "prepare-whisper", "prepare-raw", "fit-whisper", "fuse", "pack", "fit",
                                     "score", "report", "export"])
    ap.add_argument("--extra", help=f"prepare-extra/fit/report: extra training spoofs, comma-separated, of {EXTRAS}")
    ap.add_argument("--kokoro", type=int, default=240, help="prepare-extra: Kokoro clips (train/kokoro.py)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, help="features and runs (default .deps/cnn, or .deps/cnn-tiny)")
    ap.add_argument("--out", type=Path, help="report folder (default: the cache)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run on generated clips (CI)")
    ap.add_argument("--crops", type=int, default=8, help="training crops per train-split file")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--folds", help="comma-separated fold names (default: every family, and zero-shot)")
    ap.add_argument("--all", action="store_true", help="fit: one model on every family (the candidate)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="fit/score: cpu or cuda")
    ap.add_argument("--fuse", help="fuse: two runs folders, comma-separated (into --runs, default CACHE/runs-fused)")
    ap.add_argument("--runs", type=Path, help="fit/score/report/export: the runs folder (default CACHE/runs)")
    ap.add_argument("--pack-out", type=Path, help="pack: the compact copy (default .deps/cnn-pack, or cnn-tiny-pack)")
    ap.add_argument("--mib", type=float, default=44.0, help="pack: size limit (the working tree travels beside it)")
    ap.add_argument("--pack-channels", default="g711_mu", help="pack: evaluation channels kept (all with --tiny)")
    ap.add_argument("--pack-windows", type=int, default=1, help="pack: evaluation windows kept per file and channel")
    args = ap.parse_args()
    if args.step == "prepare-extra" and not args.extra:
        args.extra = "kokoro"
    unknown = [n for n in (args.extra or "").split(",") if n and n not in EXTRAS]
    if unknown:
        ap.error(f"--extra: unknown {unknown}; known {list(EXTRAS)}")
    args.t0 = time.time()
    args.cache = args.cache or ROOT / ".deps" / ("cnn-tiny" if args.tiny else "cnn")
    args.cache_train = ROOT / ".deps" / "train-cache"
    args.out = args.out or args.cache
    args.pack_out = args.pack_out or ROOT / ".deps" / ("cnn-tiny-pack" if args.tiny else "cnn-pack")
    if args.tiny:
        args.crops, args.epochs = 2, 1
    {"prepare": prepare, "prepare-extra": prepare_extra, "prepare-whisper": prepare_whisper, "prepare-raw": prepare_raw,
     "fit-whisper": fit_whisper, "fuse": fuse, "pack": pack, "fit": fit, "score": score, "report": report,
     "export": export}[args.step](args)


if __name__ == "__main__":
    main()
