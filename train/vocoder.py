#!/usr/bin/env python3
"""A small vocoder trained here, for paired copy-synthesis only (a training tool, never shipped).

The detector's leave-one-family-out runs show neural-vocoder copy-synthesis at chance: the CNN has
not learned what a vocoder leaves, and every modern cloner's output passes through one. The
vocoders packaged here (two HiFi-GAN checkpoints, WORLD, Griffin-Lim) are few; each one trained
here is one more artefact family, cheaply. It need not sound good, only be different.

`istft`: a Vocos-style head (Siuzdak 2023): an 80-band log-mel (16 kHz, 512-point STFT, hop 128)
through a 1-D ConvNeXt stack to the complex STFT (log-magnitude and phase per bin), inverted by
an iSTFT. Trained without a discriminator, on multi-resolution STFT and mel losses alone, so its
phase is its own: the artefacts of a GAN-free iSTFT vocoder, unlike HiFi-GAN's upsampling
convolutions. Two steps, because Debian's PyTorch needs Debian's numpy 1.x while the venv
(soundfile, scipy) has numpy 2:

    .deps/venv/bin/python train/vocoder.py prepare     # 1 s segments of genuine train speech (.deps/vocoder)
    /usr/bin/python3      train/vocoder.py fit --minutes 45   # checkpointed, resumable; then exports ONNX
    .deps/venv/bin/python train/vocoder.py compare     # log-mel distance to the source, per vocoder
    ... --tiny                                          # seconds (CI smoke)

The ONNX graph maps the log-mel to the STFT's real and imaginary parts; `resynthesise()` computes
the mel and inverts the STFT in numpy, so train/copysynth.py runs it from the venv like its other
vocoders (`--copysynth ...,istft`).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from whisper_ggml import slaney_mel  # noqa: E402

SR, N_FFT, HOP, N_MELS = 16000, 512, 128, 80
SEGMENT = SR  # training segments of 1 s
SEED = 20261207


def window():
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def log_mel(x):
    """[frames, 80] log-mel of 16 kHz audio: centred frames (reflect padding), as torch.stft's."""
    x = np.pad(np.asarray(x, np.float32), N_FFT // 2, mode="reflect")
    frames = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * window(), axis=1))
    return np.log(np.maximum(mag @ slaney_mel(SR, N_FFT, N_MELS).T, 1e-5)).astype(np.float32)


def istft(real, imag, n):
    """Inverse of the centred STFT: [frames, 257] real and imaginary parts -> n samples."""
    w = window()
    frames = np.fft.irfft(real + 1j * imag, n=N_FFT, axis=1) * w
    length = N_FFT + HOP * (len(frames) - 1)
    y, norm = np.zeros(length), np.zeros(length)
    for i, f in enumerate(frames):
        y[i * HOP:i * HOP + N_FFT] += f
        norm[i * HOP:i * HOP + N_FFT] += w ** 2
    y = y / np.maximum(norm, 1e-8)
    return y[N_FFT // 2:N_FFT // 2 + n].astype(np.float32)


def resynthesise(session, x):
    """Copy-synthesis of 16 kHz audio through the exported vocoder (an onnxruntime session)."""
    real, imag = session.run(None, {"mel": log_mel(x)[None]})
    return istft(real[0], imag[0], len(x))


def onnx_path(cache):
    return cache / "vocoder" / "istft.onnx"


# -------------------------------------------------------------------------------- prepare


def prepare(args):
    """Up to two 1 s voiced segments of each genuine train-split file recorded at 16 kHz or more
    (the CNN cache's split, so no test speaker is learned), as float16 [N, 16000]. The tiny run
    takes whatever packaged prompts there are, Asterisk's 8 kHz ones included."""
    sys.path.insert(0, str(Path(__file__).parent))
    import train as T

    rng = np.random.default_rng(SEED)
    if args.tiny:
        items = T.tiny_bonafide(args.cache_train)
    else:
        files = json.loads((args.cnn_cache / "files.json").read_text())["files"]
        items = [(Path(f["path"]),) for f in files
                 if f["label"] != "spoof" and f["split"] == "train" and f["rate"] >= SR]
    segments = []
    for item, x in T.loaded(items):
        segments += T.crops(x / (np.max(np.abs(x)) + 1e-9) * 0.9, 1 if args.tiny else 2, rng)
    args.work.mkdir(parents=True, exist_ok=True)
    np.save(args.work / "segments.npy", np.stack(segments).astype(np.float16))
    print(f"vocoder prepare: {len(segments)} segments from {len(items)} files -> {args.work}")


def compare(args):
    """How far each copy-synthesis vocoder's output is from its source, on genuine test-split files
    (never trained on): the median over files of the mean absolute log-mel difference (nats, this
    vocoder's 80 bands), written to WORK/compare.json."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).parent))
    import copysynth
    import train as T

    files = json.loads((args.cnn_cache / "files.json").read_text())["files"]
    test = [f for f in files if f["label"] != "spoof" and f["split"] == "test" and f["rate"] >= SR]
    test = [test[i] for i in np.random.default_rng(SEED).choice(len(test), min(args.files, len(test)), replace=False)]
    sessions = copysynth.hifigan_sessions(args.cache_train)
    here = ort.InferenceSession(str(onnx_path(args.cache_train)))
    makers = {"istft (trained here)": lambda x: resynthesise(here, x),
              "hifigan-universal": lambda x: copysynth.hifigan(sessions["hifigan-universal"], x),
              "griffin-lim": copysynth.griffin_lim, "world": copysynth.world}
    dist = {name: [] for name in makers}
    for item, x in T.loaded([(Path(f["path"]),) for f in test]):
        x = copysynth.segment(x, copysynth.file_key(item[0]))
        ref = log_mel(x)
        for name, make in makers.items():
            y = make(x)
            y = np.pad(y, (0, max(0, len(x) - len(y))))[:len(x)]  # HiFi-GAN's may be a frame short
            dist[name].append(float(np.mean(np.abs(log_mel(y) - ref))))
    result = {name: {"median": float(np.median(d)), "files": len(d)} for name, d in dist.items()}
    (args.work / "compare.json").write_text(json.dumps(result, indent=1))
    for name, r in result.items():
        print(f"{name:22s} log-mel L1 median {r['median']:.3f} over {r['files']} test files")


# ------------------------------------------------------------------------------------ fit


def build(torch):
    nn = torch.nn

    class Block(nn.Module):  # ConvNeXt, 1-D
        def __init__(self, dim):
            super().__init__()
            self.dw = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.up, self.down = nn.Linear(dim, dim * 3), nn.Linear(dim * 3, dim)

        def forward(self, x):  # [B, C, T]
            y = self.norm(self.dw(x).transpose(1, 2))
            return x + self.down(torch.nn.functional.gelu(self.up(y))).transpose(1, 2)

    class Vocoder(nn.Module):
        def __init__(self, dim=192, blocks=5):
            super().__init__()
            self.inp = nn.Conv1d(N_MELS, dim, 7, padding=3)
            self.blocks = nn.Sequential(*[Block(dim) for _ in range(blocks)])
            self.norm = nn.LayerNorm(dim)
            self.out = nn.Linear(dim, 2 * (N_FFT // 2 + 1))

        def forward(self, mel):  # [B, T, 80] -> real, imag [B, T, 257]
            h = self.blocks(self.inp(mel.transpose(1, 2))).transpose(1, 2)
            logmag, phase = self.out(self.norm(h)).chunk(2, dim=-1)
            mag = torch.exp(logmag.clamp(max=6.0))
            return mag * torch.cos(phase), mag * torch.sin(phase)

    return Vocoder


def fit(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    segments = np.load(args.work / "segments.npy")
    Vocoder = build(torch)
    net = Vocoder()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    win = torch.hann_window(N_FFT)
    mel_fb = torch.tensor(slaney_mel(SR, N_FFT, N_MELS))

    def mel_of(x):
        mag = torch.stft(x, N_FFT, HOP, window=win, center=True, return_complex=True).abs()
        return torch.log(torch.clamp(torch.einsum("mf,bft->btm", mel_fb, mag), min=1e-5))

    def stft_loss(y, x):
        loss = 0.0
        for n_fft in (256, 512, 1024):
            w = torch.hann_window(n_fft)
            sy = torch.stft(y, n_fft, n_fft // 4, window=w, return_complex=True).abs() + 1e-5
            sx = torch.stft(x, n_fft, n_fft // 4, window=w, return_complex=True).abs() + 1e-5
            loss = loss + torch.norm(sx - sy) / torch.norm(sx) + torch.mean(torch.abs(torch.log(sx) - torch.log(sy)))
        return loss

    ckpt = args.work / "istft.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng = np.random.default_rng(SEED + step)
        print(f"vocoder fit: resumed at step {step}", flush=True)
    t0, losses = time.time(), []
    while step < args.steps and time.time() - t0 < args.minutes * 60:
        x = torch.tensor(segments[rng.choice(len(segments), args.batch)].astype(np.float32))
        real, imag = net(mel_of(x))
        y = torch.istft(torch.complex(real, imag).transpose(1, 2), N_FFT, HOP, window=win, center=True,
                        length=x.shape[1])
        loss = stft_loss(y, x) + torch.mean(torch.abs(mel_of(y) - mel_of(x)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        step += 1
        losses.append(float(loss))
        if step % 100 == 0 or step == args.steps:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            print(f"vocoder fit: step {step} loss {np.mean(losses[-100:]):.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    export(torch, net, args, {"steps": step, "segments": len(segments)})


def export(torch, net, args, facts):
    """mel [1, frames, 80] -> real, imag [1, frames, 257] into ONNX, and `facts` beside it."""
    net.eval()
    out = onnx_path(args.cache_train)
    out.parent.mkdir(parents=True, exist_ok=True)
    mel = torch.randn(1, 40, N_MELS)
    torch.onnx.export(net, mel, str(out), input_names=["mel"], output_names=["real", "imag"],
                      dynamic_axes={"mel": {1: "frames"}, "real": {1: "frames"}, "imag": {1: "frames"}},
                      opset_version=13)
    (out.parent / "istft.json").write_text(json.dumps(facts))
    print(f"vocoder: exported {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "fit", "compare"])
    ap.add_argument("--tiny", action="store_true", help="seconds, on generated clips (CI)")
    ap.add_argument("--work", type=Path, help="segments and checkpoint (default .deps/vocoder or vocoder-tiny)")
    ap.add_argument("--cnn-cache", type=Path, default=ROOT / ".deps" / "cnn", help="its files.json gives the split")
    ap.add_argument("--cache-train", type=Path, help="where the ONNX vocoder goes (default .deps/train-cache)")
    ap.add_argument("--minutes", type=float, default=45.0, help="fit: wall-clock budget of this run")
    ap.add_argument("--steps", type=int, default=20000, help="fit: total steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--files", type=int, default=60, help="compare: genuine test files")
    args = ap.parse_args()
    args.work = args.work or ROOT / ".deps" / ("vocoder-tiny" if args.tiny else "vocoder")
    args.cache_train = args.cache_train or ROOT / ".deps" / ("vocoder-tiny" if args.tiny else "train-cache")
    if args.tiny:
        args.steps, args.batch = 3, 2
    {"prepare": prepare, "fit": fit, "compare": compare}[args.step](args)


if __name__ == "__main__":
    main()
