#!/usr/bin/env python3
"""Does fine-tuning the Whisper front-end help on unseen systems? A paired probe, on a CPU.

    .deps/venv/bin/python train/finetune.py prep       # windows and weights (~10 min, 2 cores)
    /usr/bin/python3 train/finetune.py run             # PyTorch (Debian python3-torch; ~40 min)
    .deps/venv/bin/python train/finetune.py prep --tiny --out /tmp/ft && \\
        /usr/bin/python3 train/finetune.py run --tiny --out /tmp/ft   # seconds (CI)

The shipped detector freezes Whisper tiny.en (blocks 0-1, every tap's mean and std pooled) and
trains a small head. Whether unfreezing the encoder generalises to synthesis systems never seen
in training, or only fits the seen ones better (Kumar et al. 2022, "Fine-tuning can distort
pretrained features and underperform out-of-distribution"), is measured here with one split:

- `prep` (the project's venv): the data of train/train.py (../shared/data, generated and
  copy-synthesised clips) and its split, where whole synthesis systems sit in the test split
  only. Train-split files give `--crops` augmented 1 s crops (the "phone" recipe); calibration
  and test files give the daemon's windows (1 s, 0.5 s hop, at most `--max-windows`) through each
  evaluation channel. Writes OUT/windows.npz (float16 audio), OUT/files.json, OUT/weights.npz
  (the encoder's CTranslate2 weights and the mel filters) and OUT/parity.npz (the ONNX front-end's
  features of a few windows).
- `run` (any Python with PyTorch): the ONNX front-end of train/whisper_frontend.py ported to
  PyTorch (checked against OUT/parity.npz first), then two detectors from the same crops, the
  same head and the same seed: **frozen** (the head trained on the frozen encoder's features:
  linear probing, the shipped recipe's kind) and **fine-tuned** (that head, then the head and
  the whole encoder trained on together at a small learning rate: LP-FT). Both score every
  test window; a file's score is its mean window log-odds. Writes OUT/finetune.json: file EER
  per channel on the test split (genuine test speakers against the test split's unseen
  systems), both detectors, and the CPU time each step took.

The two runs use separate Pythons because Debian's python3-torch needs Debian's numpy 1.x,
while the project's venv has numpy 2. Debian's PyTorch links the reference BLAS; `apt-get install
libopenblas0-pthread` swaps in OpenBLAS, 6.5x faster here (a training step of 32 crops: 2.0
against 13.2 crops/s on 2 busy cores). Nothing here is exported: this is a measurement.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261125
LAYERS = 2  # encoder blocks, as the shipped detector


def prep(args):
    sys.path.insert(0, str(Path(__file__).parent))
    import onnxruntime as ort

    import copysynth
    import features
    import train as T
    import whisper_frontend

    rng = np.random.default_rng(SEED)
    if args.tiny:
        items = T.generated_items(args.cache, 18) + T.packaged_voice_items(args.cache, 3, neural=False)
        items += T.tiny_bonafide(args.cache)
        items = [it[:5] + (["train", "calib", "test"][k % 3],) + it[6:] for k, it in enumerate(items)]
        vocoders, channels = ["griffin-lim"], ["wideband", "g711_mu"]
    else:
        items = T.shared_items(args.data) + T.generated_items(args.cache, 72)
        vocoders, channels = ["hifigan", "griffin-lim"], T.EVAL_CHANNELS
    genuine = [it for it in items if it[1] == "bonafide" and it[5] == "train"]
    items += copysynth.items(args.cache, genuine, T.load, vocoders)

    train_w, train_y, eval_w, eval_file, eval_ch, files = [], [], [], [], [], []
    for (path, label, system, family, group, split, source), x in T.loaded(items):
        if split == "train":
            for w in T.crops(x, args.crops, rng):
                train_w.append(T.augment(w, rng, "phone"))
                train_y.append(label == "spoof")
            continue
        fid = len(files)
        files.append(dict(label=label, system=system, family=family, split=split))
        crng = np.random.default_rng(SEED + 1)
        for c, ch in enumerate(channels):
            for w in T.sliding(T.channel(x, ch, crng))[:args.max_windows]:
                eval_w.append(w)
                eval_file.append(fid)
                eval_ch.append(c)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "windows.npz", train_w=np.stack(train_w).astype(np.float16),
             train_y=np.array(train_y, np.int8), eval_w=np.stack(eval_w).astype(np.float16),
             eval_file=np.array(eval_file, np.int32), eval_ch=np.array(eval_ch, np.int8))
    (args.out / "files.json").write_text(json.dumps(dict(channels=channels, files=files)))

    weights = whisper_frontend.load_ctranslate2(whisper_frontend.fetch_weights(args.cache))
    keep = {k: np.asarray(v, np.float32) for k, v in weights.items()
            if k.startswith(("encoder/conv", "encoder/position")) or any(
                k.startswith(f"encoder/layer_{i}/") for i in range(LAYERS))}
    np.savez(args.out / "weights.npz", mel=whisper_frontend.slaney_mel().astype(np.float32), **keep)

    front = whisper_frontend.encoder_nodes(weights, "waveform", "features", T.WINDOW, LAYERS, taps="all")
    session = ort.InferenceSession(features.feature_model(T.WINDOW, front).SerializeToString())
    sample = np.stack(eval_w[:16]).astype(np.float16).astype(np.float32)
    np.savez(args.out / "parity.npz", waveform=sample, features=T.featurize(session, list(sample)))
    print(f"prep: {len(train_w)} train crops, {len(eval_w)} evaluation windows of {len(files)} files")


def encoder(weights_path):
    """train/whisper_frontend.encoder_nodes(taps="all") in PyTorch, its weights trainable."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in np.load(weights_path).items()}
    n_fft, hop = 400, 160

    class Encoder(torch.nn.Module):
        """train/whisper_frontend.encoder_nodes(taps="all") in PyTorch: [B, 16000] -> [B, 2304]."""

        def __init__(self):
            super().__init__()
            n = torch.arange(n_fft, dtype=torch.float64)
            k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
            hann = 0.5 - 0.5 * torch.cos(2 * np.pi * n / n_fft)
            kernels = torch.cat([torch.cos(2 * np.pi * k * n / n_fft) * hann,
                                 -torch.sin(2 * np.pi * k * n / n_fft) * hann])[:, None, :].float()
            self.register_buffer("stft", kernels)
            self.register_buffer("mel", w["mel"])
            self.register_buffer("pos", w["encoder/position_encodings/encodings"])
            self.p = torch.nn.ParameterDict()
            for name, value in w.items():
                if name.startswith("encoder/conv") or name.startswith("encoder/layer_"):
                    self.p[name.replace("/", "__")] = torch.nn.Parameter(value.clone())

        def q(self, name):
            return self.p[name.replace("/", "__")]

        def forward(self, wave):
            frames = wave.shape[1] // hop
            x = F.pad(wave[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")
            spec = F.conv1d(x, self.stft, stride=hop)[:, :, :frames]
            bins = n_fft // 2 + 1
            power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
            logm = torch.log10(torch.clamp(self.mel @ power, min=1e-10))
            logm = torch.maximum(logm, logm.amax(dim=(1, 2), keepdim=True) - 8.0)
            logm = (logm + 4.0) / 4.0
            x = F.gelu(F.conv1d(logm, self.q("encoder/conv1/weight"), self.q("encoder/conv1/bias"), padding=1))
            x = F.gelu(F.conv1d(x, self.q("encoder/conv2/weight"), self.q("encoder/conv2/bias"), padding=1, stride=2))
            x = x.transpose(1, 2)
            t, d = x.shape[1], x.shape[2]
            x = x + self.pos[:t]
            heads = d // 64
            taps = [x]
            for i in range(LAYERS):
                p = f"encoder/layer_{i}/"
                h = F.layer_norm(x, (d,), self.q(p + "self_attention/layer_norm/gamma"),
                                 self.q(p + "self_attention/layer_norm/beta"), 1e-5)
                qkv = F.linear(h, self.q(p + "self_attention/linear_0/weight"), self.q(p + "self_attention/linear_0/bias"))
                qkv = qkv.reshape(-1, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
                att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / np.sqrt(d // heads), dim=-1) @ qkv[2]
                att = att.transpose(1, 2).reshape(-1, t, d)
                x = x + F.linear(att, self.q(p + "self_attention/linear_1/weight"), self.q(p + "self_attention/linear_1/bias"))
                h = F.layer_norm(x, (d,), self.q(p + "ffn/layer_norm/gamma"), self.q(p + "ffn/layer_norm/beta"), 1e-5)
                h = F.gelu(F.linear(h, self.q(p + "ffn/linear_0/weight"), self.q(p + "ffn/linear_0/bias")))
                x = x + F.linear(h, self.q(p + "ffn/linear_1/weight"), self.q(p + "ffn/linear_1/bias"))
                taps.append(x)
            stats = []
            for x in taps:
                mean = x.mean(1)
                stats += [mean, torch.sqrt(((x - mean[:, None]) ** 2).mean(1) + 1e-6)]
            return torch.cat(stats, 1)

    return Encoder()


def run(args):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    # Debian's PyTorch 1.13: oneDNN's conv1d backward returned garbage now and then (gradients of
    # 1e16 or inf on the conv stem, differing run to run, while the gradient at its output was
    # 2e-5), and fine-tuning diverged. Without oneDNN the gradients are finite and reproducible.
    torch.backends.mkldnn.enabled = False
    if args.tiny:
        args.epochs, args.probe_epochs = 1, 2
    enc = encoder(args.out / "weights.npz")
    parity = np.load(args.out / "parity.npz")
    with torch.no_grad():
        got = enc(torch.from_numpy(parity["waveform"])).numpy()
    gap = float(np.max(np.abs(got - parity["features"])) / (np.max(np.abs(parity["features"])) + 1e-9))
    print(f"parity with the ONNX front-end: max relative gap {gap:.2e}", flush=True)
    if gap > 1e-3:
        sys.exit("finetune: the PyTorch port does not match train/whisper_frontend.py")

    data = np.load(args.out / "windows.npz")
    meta = json.loads((args.out / "files.json").read_text())
    train_w = torch.from_numpy(data["train_w"].astype(np.float32))
    train_y = torch.from_numpy(data["train_y"].astype(np.float32))
    eval_w, eval_file, eval_ch = data["eval_w"], data["eval_file"], data["eval_ch"]
    report = {"train_crops": len(train_y), "eval_windows": len(eval_w), "seconds": {}}

    def features(model, waves, batch=64):
        out = []
        with torch.no_grad():
            for i in range(0, len(waves), batch):
                out.append(model(torch.as_tensor(np.asarray(waves[i:i + batch], np.float32))))
        return torch.cat(out)

    t0 = time.process_time()
    enc.eval()
    frozen_train = features(enc, train_w)
    report["seconds"]["frozen_features_train"] = round(time.process_time() - t0, 1)
    # train.py's standardiser: the scale floored at 5% of the median feature's. Without the floor the
    # features that barely vary (the positional encodings' share of the encoder input) are divided
    # by ~0, and the encoder's smallest move blows the head's input up (the first run diverged).
    mu, sd = frozen_train.mean(0), frozen_train.std(0)
    sd = torch.clamp(sd, min=0.05 * float(sd.median()) + 1e-9)
    spoof_share = float(train_y.mean())
    pos_weight = torch.tensor((1 - spoof_share) / max(spoof_share, 1e-6))

    head = torch.nn.Sequential(torch.nn.Linear(frozen_train.shape[1], args.hidden), torch.nn.ReLU(),
                               torch.nn.Linear(args.hidden, 1))

    def loss_of(z, y):
        return F.binary_cross_entropy_with_logits(head((z - mu) / sd)[:, 0], y, pos_weight=pos_weight)

    # Linear probing: the head alone on the frozen features.
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=args.weight_decay)
    t0 = time.process_time()
    for _ in range(args.probe_epochs):
        for idx in torch.randperm(len(train_y), generator=g).split(args.batch):
            opt.zero_grad()
            loss_of(frozen_train[idx], train_y[idx]).backward()
            opt.step()
    report["seconds"]["probe"] = round(time.process_time() - t0, 1)

    def scores(model):
        z = features(model, eval_w)
        with torch.no_grad():
            return head((z - mu) / sd)[:, 0].numpy()

    def evaluate(window_logits):
        out = {}
        for c, ch in enumerate(meta["channels"]):
            per_file = {}
            for s, f, cc in zip(window_logits, eval_file, eval_ch):
                if cc == c:
                    per_file.setdefault(int(f), []).append(float(s))
            test = [(np.mean(v), meta["files"][f]) for f, v in per_file.items() if meta["files"][f]["split"] == "test"]
            bona = [s for s, m in test if m["label"] == "bonafide"]
            spoof = [s for s, m in test if m["label"] == "spoof"]
            out[ch] = {"eer_file": round(eer(bona, spoof), 4), "n_bonafide": len(bona), "n_spoof": len(spoof)}
        return out

    t0 = time.process_time()
    report["frozen"] = evaluate(scores(enc))
    report["seconds"]["score_frozen"] = round(time.process_time() - t0, 1)
    print("frozen:", json.dumps(report["frozen"]), flush=True)

    # Fine-tuning: the probed head and the whole encoder together, the encoder at a small rate.
    enc.train()
    opt = torch.optim.AdamW([{"params": enc.parameters(), "lr": args.lr},
                             {"params": head.parameters(), "lr": args.lr * 10}], weight_decay=args.weight_decay)
    t0 = time.process_time()
    steps = 0
    for epoch in range(args.epochs):
        for idx in torch.randperm(len(train_y), generator=g).split(args.batch):
            opt.zero_grad()
            loss = loss_of(enc(train_w[idx]), train_y[idx])
            loss.backward()
            opt.step()
            steps += 1
            if steps % 50 == 0:
                print(f"epoch {epoch} step {steps} loss {loss.item():.3f} {time.process_time() - t0:.0f}s cpu", flush=True)
    report["seconds"]["finetune"] = round(time.process_time() - t0, 1)
    report["finetune_steps"] = steps
    enc.eval()
    t0 = time.process_time()
    report["finetuned"] = evaluate(scores(enc))
    report["seconds"]["score_finetuned"] = round(time.process_time() - t0, 1)
    print("fine-tuned:", json.dumps(report["finetuned"]), flush=True)
    report["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    (args.out / "finetune.json").write_text(json.dumps(report, indent=1))


def eer(bona, spoof):
    """Equal error rate, spoof positive (as train/train.py's eer, which this Python cannot import)."""
    bona, spoof = np.asarray(bona), np.asarray(spoof)
    if len(bona) == 0 or len(spoof) == 0:
        return float("nan")
    scores = np.concatenate([bona, spoof])
    labels = np.concatenate([np.zeros(len(bona)), np.ones(len(spoof))])[np.argsort(scores, kind="mergesort")]
    frr = np.concatenate([[0], np.cumsum(labels) / len(spoof)])
    far = np.concatenate([[1], 1 - np.cumsum(1 - labels) / len(bona)])
    i = np.argmin(np.abs(frr - far))
    return float((frr[i] + far[i]) / 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--cache", type=Path, default=ROOT / ".deps" / "train-cache")
    p.add_argument("--crops", type=int, default=3)
    p.add_argument("--max-windows", type=int, default=12)
    p.set_defaults(func=prep)
    r = sub.add_parser("run")
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--probe-epochs", type=int, default=20)
    r.add_argument("--lr", type=float, default=1e-5, help="the encoder's learning rate (the head's is 10x)")
    r.add_argument("--hidden", type=int, default=64)
    r.add_argument("--weight-decay", type=float, default=1e-2)
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--threads", type=int, default=2)
    r.set_defaults(func=run)
    for q in (p, r):
        q.add_argument("--out", type=Path, default=ROOT / ".deps" / "finetune")
        q.add_argument("--tiny", action="store_true", help="a seconds-long run on generated clips (CI)")
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
