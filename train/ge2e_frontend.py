#!/usr/bin/env python3
"""A speaker-verification front-end for comparison: the Resemblyzer GE2E voice encoder.

PyPI `Resemblyzer==0.1.4` (Apache-2.0) ships `pretrained.pt`: a 3-layer LSTM (256 units) over a
40-band mel power spectrogram (25 ms Hann window, 10 ms hop, 16 kHz), trained with the GE2E loss
on thousands of real speakers (LibriSpeech, VoxCeleb 1 and 2). Its embedding is taught to ignore
everything but the speaker, so it tests whether a model of many real voices separates clones.

The encoder is exported once to ONNX with PyTorch (Debian's python3-torch is enough) as

waveform [B, 16000] -> level set to -30 dBFS (Resemblyzer's preprocessing; never a cue)
  -> mel power [B, 101, 40] (librosa's melspectrogram: centred, reflect-padded, Slaney mel)
  -> LSTM layers 1, 2, 3 -> features [B, 1792]:
     mean and std over time of each layer's outputs (tap k = layer k, 512 values each), then the
     speaker embedding (tap `e`: ReLU(linear(last state of layer 3)), L2-normed, 256 values)

so train/lofo.py featurises with ONNX Runtime exactly as for Whisper. Not shipped: the daemon
runs train/train.py's model only.

    python train/ge2e_frontend.py export --cache .deps/train-cache   # needs torch, once
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from whisper_ggml import slaney_mel  # noqa: E402

PACKAGE = "Resemblyzer==0.1.4"
N_FFT, HOP, N_MELS, HIDDEN, LAYERS = 400, 160, 40, 256, 3
TARGET_DBFS = -30.0
# Column ranges of the features, by tap name.
TAPS = {str(k + 1): (2 * HIDDEN * k, 2 * HIDDEN * (k + 1)) for k in range(LAYERS)}
TAPS["e"] = (2 * HIDDEN * LAYERS, 2 * HIDDEN * LAYERS + HIDDEN)
WIDTH = TAPS["e"][1]


def onnx_path(cache):
    return cache / "ge2e" / "ge2e.onnx"


def fetch(cache):
    """pretrained.pt from the PyPI wheel, once."""
    from whisper_frontend import wheel_member
    return wheel_member(PACKAGE, "resemblyzer/pretrained.pt", cache / "ge2e" / "pretrained.pt")


def export(cache, window=16000):
    import torch
    from torch import nn

    state = torch.load(cache / "ge2e" / "pretrained.pt", map_location="cpu")["model_state"]  # session() fetched it

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            n = np.arange(N_FFT)
            hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic, as librosa
            k = np.arange(N_FFT // 2 + 1)[:, None]
            kernels = np.concatenate([np.cos(2 * np.pi * k * n / N_FFT) * hann,
                                      -np.sin(2 * np.pi * k * n / N_FFT) * hann])[:, None, :]
            self.register_buffer("dft", torch.tensor(kernels, dtype=torch.float32))
            self.register_buffer("mel", torch.tensor(slaney_mel(16000, N_FFT, N_MELS), dtype=torch.float32))
            self.lstms = nn.ModuleList(nn.LSTM(N_MELS if k == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
                                       for k in range(LAYERS))
            for k, lstm in enumerate(self.lstms):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(lstm, f"{kind}_l0").data.copy_(state[f"lstm.{kind}_l{k}"])
            self.linear = nn.Linear(HIDDEN, HIDDEN)
            self.linear.weight.data.copy_(state["linear.weight"])
            self.linear.bias.data.copy_(state["linear.bias"])

        def forward(self, waveform):
            rms = torch.sqrt(torch.mean(waveform ** 2, dim=1, keepdim=True) + 1e-10)
            x = waveform * (10 ** (TARGET_DBFS / 20) / rms)
            x = nn.functional.pad(x[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
            spec = nn.functional.conv1d(x, self.dft, stride=HOP)  # [B, 402, T]
            half = N_FFT // 2 + 1
            power = spec[:, :half] ** 2 + spec[:, half:] ** 2
            h = torch.matmul(self.mel, power).transpose(1, 2)  # [B, T, 40]
            pooled = []
            for lstm in self.lstms:
                h, (last, _) = lstm(h)
                pooled += [h.mean(dim=1), h.std(dim=1)]
            embed = torch.relu(self.linear(last[0]))
            embed = embed / (torch.norm(embed, dim=1, keepdim=True) + 1e-8)
            return torch.cat(pooled + [embed], dim=1)

    model = Encoder().eval()
    path = onnx_path(cache)
    with torch.no_grad():
        torch.onnx.export(model, torch.randn(2, window) * 0.1, str(path), input_names=["waveform"],
                          output_names=["features"], dynamic_axes={"waveform": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=13)
    print(f"exported {path}")


def session(cache):
    """An ONNX Runtime session of the encoder, exporting it first if needed (with any Python that
    has PyTorch)."""
    import onnxruntime as ort
    path = onnx_path(cache)
    if not path.exists():
        fetch(cache)
        python = next((p for p in [sys.executable, "/usr/bin/python3"]
                       if subprocess.run([p, "-c", "import torch"], capture_output=True).returncode == 0), None)
        if python is None:
            sys.exit("ge2e_frontend: exporting the GE2E encoder needs PyTorch once: apt-get install python3-torch")
        subprocess.run([python, __file__, "export", "--cache", str(cache)], check=True)
    options = ort.SessionOptions()
    return ort.InferenceSession(str(path), options)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["export"])
    ap.add_argument("--cache", type=Path, required=True)
    export(ap.parse_args().cache)
