#!/usr/bin/env python3
"""Small ONNX graphs for behaviour tests, with sidecars in the shipped model's format.

loudness.onnx: NOT a deepfake detector. logit = 0.5 * (level_dBFS + 18), the window's RMS
level in dB relative to full scale: quiet speech (-30 dBFS) scores p ~ 0.002, loud speech
(-6 dBFS) p ~ 0.998. Tests use it to drive the pipeline with a known, audible property (a call
that turns loud at a known second) and check windows, fusion, hysteresis and alert timing.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".deps/test-models")
out.mkdir(parents=True, exist_ok=True)
W = 16000
n = helper.make_node


def loudness(name, offset_logit, meaning, **card_extra):
    """logit = 0.5 * (level_dBFS + 18) + offset_logit, as NAME.onnx with its sidecar."""
    init = [
        numpy_helper.from_array(np.array([-1], np.int64), "axis"),
        numpy_helper.from_array(np.array(1e-10, np.float32), "eps"),
        numpy_helper.from_array(np.array(0.5 * 10 / math.log(10), np.float32), "scale"),
        numpy_helper.from_array(np.array(0.5 * 18 + offset_logit, np.float32), "offset"),
    ]
    nodes = [
        n("Mul", ["waveform", "waveform"], ["sq"]),
        n("ReduceMean", ["sq", "axis"], ["ms"], keepdims=0),
        n("Add", ["ms", "eps"], ["ms_eps"]),
        n("Log", ["ms_eps"], ["ln"]),
        n("Mul", ["ln", "scale"], ["scaled"]),
        n("Add", ["scaled", "offset"], ["logit"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", W])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / f"{name}.onnx"))
    card = {
        "name": f"test-{name}", "version": "1",
        "input": {"name": "waveform", "sample_rate": 16000, "window_samples": W},
        "output": {"name": "logit", "kind": "logit", "meaning": meaning},
        "threshold": {"p_spoof": 0.5},
        **card_extra,
    }
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")


TEST_ONLY = "TEST ONLY: 0.5 * (window RMS level in dBFS + 18){}; not a deepfake detector"
loudness("loudness", 0.0, TEST_ONLY.format(""))
# A cascade of two loudness graphs: the first stage reads 2 lower in log-odds than the full
# model, so a test can tell which one scored a window; windows at or over -18 dBFS + 4 dB
# (first-stage log-odds >= 0) go on to the full model, and so does every 4th window of a call.
loudness("loudness-first", -2.0, TEST_ONLY.format(" - 2"))
loudness("loudness-cascade", 0.0, TEST_ONLY.format(""),
         cascade={"first_stage": "loudness-first.onnx", "escalate_logit": 0.0, "sample_every": 4})
print(f"wrote {out}/loudness.onnx, loudness-first.onnx, loudness-cascade.onnx")
