"""The detector's front-end as an ONNX graph, so Rust and Python compute identical features.

waveform [B, N] (16 kHz, [-1, 1])
  -> RMS normalisation (loudness is never a cue)
  -> STFT as a strided Conv (Hann, 512 points, 10 ms hop) -> power [B, 257, T]
  -> linear triangular filterbank (LFCC-style, 0-8 kHz) -> log energies [B, T, F]
  -> per-band mean, standard deviation, and standard deviation of the frame-to-frame delta
  -> features [B, 3F]

Training runs this very graph through onnxruntime to get its features, then appends the
classifier; there is no second implementation to drift.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 160
N_BANDS = 60
OPSET = 18


def stft_kernels():
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    cos = np.cos(2 * np.pi * k * n / N_FFT) * window
    sin = -np.sin(2 * np.pi * k * n / N_FFT) * window
    return np.concatenate([cos, sin])[:, None, :].astype(np.float32)  # [514, 1, 512]


def linear_filterbank():
    bins = N_FFT // 2 + 1
    freqs = np.linspace(0, SAMPLE_RATE / 2, bins)
    edges = np.linspace(0, SAMPLE_RATE / 2, N_BANDS + 2)
    fb = np.zeros((bins, N_BANDS), np.float32)
    for b in range(N_BANDS):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, b] = np.maximum(0, np.minimum(up, down))
    return fb


def feature_nodes(input_name="waveform", output_name="features"):
    """Nodes and initialisers computing `output_name` [B, 3F] from `input_name` [B, N]."""
    init = [
        numpy_helper.from_array(stft_kernels(), "stft_kernels"),
        numpy_helper.from_array(linear_filterbank(), "filterbank"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
        numpy_helper.from_array(np.array(1e-8, np.float32), "eps_rms"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps_power"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([N_FFT // 2 + 1], np.int64), "half"),
        numpy_helper.from_array(np.array([2 * (N_FFT // 2 + 1)], np.int64), "full"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "end"),
    ]
    n = helper.make_node
    nodes = [
        # RMS normalisation.
        n("Mul", [input_name, input_name], ["sq"]),
        n("ReduceMean", ["sq", "axis_last"], ["ms"], keepdims=1),
        n("Add", ["ms", "eps_rms"], ["ms_eps"]),
        n("Sqrt", ["ms_eps"], ["rms"]),
        n("Div", [input_name, "rms"], ["wave_norm"]),
        n("Unsqueeze", ["wave_norm", "axis1"], ["wave3"]),
        # STFT power.
        n("Conv", ["wave3", "stft_kernels"], ["spec"], strides=[HOP]),
        n("Slice", ["spec", "zero", "half", "axis1"], ["re"]),
        n("Slice", ["spec", "half", "full", "axis1"], ["im"]),
        n("Mul", ["re", "re"], ["re2"]),
        n("Mul", ["im", "im"], ["im2"]),
        n("Add", ["re2", "im2"], ["power"]),
        n("Transpose", ["power"], ["power_t"], perm=[0, 2, 1]),
        n("MatMul", ["power_t", "filterbank"], ["bands"]),
        n("Add", ["bands", "eps_power"], ["bands_eps"]),
        n("Log", ["bands_eps"], ["logb"]),  # [B, T, F]
        # Statistics over time.
        n("ReduceMean", ["logb", "axis1"], ["mean_k"], keepdims=1),
        n("Sub", ["logb", "mean_k"], ["centred"]),
        n("Mul", ["centred", "centred"], ["centred2"]),
        n("ReduceMean", ["centred2", "axis1"], ["var"], keepdims=0),
        n("Add", ["var", "eps_rms"], ["var_eps"]),
        n("Sqrt", ["var_eps"], ["std"]),
        n("Squeeze", ["mean_k", "axis1"], ["mean"]),
        n("Slice", ["logb", "one", "end", "axis1"], ["later"]),
        n("Slice", ["logb", "zero", "axis_last_t", "axis1"], ["earlier"]),
        n("Sub", ["later", "earlier"], ["delta"]),
        n("Mul", ["delta", "delta"], ["delta2"]),
        n("ReduceMean", ["delta2", "axis1"], ["dvar"], keepdims=0),
        n("Add", ["dvar", "eps_rms"], ["dvar_eps"]),
        n("Sqrt", ["dvar_eps"], ["dstd"]),
        n("Concat", ["mean", "std", "dstd"], [output_name], axis=1),
    ]
    init.append(numpy_helper.from_array(np.array([-1], np.int64), "axis_last_t"))
    return nodes, init


def lfcc_front_end():
    """(nodes, initialisers, feature dimension) of the LFCC-statistics front-end."""
    nodes, init = feature_nodes()
    return nodes, init, 3 * N_BANDS


def feature_model(window_samples, front=None):
    nodes, init, dim = front or lfcc_front_end()
    graph = helper.make_graph(
        nodes,
        "callguard_features",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", window_samples])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def compact_initializers(model, min_size=1024):
    """Stores float32 initialisers that fp16 holds exactly (the Whisper weights ship as fp16) as
    fp16 plus a Cast: half the file, identical outputs (ONNX Runtime folds the casts at load)."""
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size >= min_size:
            half = arr.astype(np.float16)
            if np.array_equal(half.astype(np.float32), arr):
                kept.append(numpy_helper.from_array(half, init.name + "_fp16"))
                casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=TensorProto.FLOAT))
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def quantize_int8(model, windows):
    """Static int8 quantisation of every MatMul with a weight initialiser (the Whisper blocks'
    projections and MLPs), as QDQ: int8 weights, and int8 activations whose scales are fixed here
    from `windows` [N, samples] (MinMax). Fixed scales keep a window's output independent of the
    other windows in its batch, which dynamic quantisation does not."""
    import tempfile
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"waveform": windows[i:i + 16]} for i in range(0, len(windows), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(str(dst))


def graph_front(model, dim):
    """(nodes, initialisers, dim) of a feature model, to put a classifier on (as `front`)."""
    return list(model.graph.node), list(model.graph.initializer), dim


def detector_model(window_samples, w1, b1, w2, b2, metadata, front=None, one_class=None):
    """Front-end plus a one-hidden-layer classifier whose output is a calibrated logit; with
    `one_class` = (shift, scale, W, weight), weight * |((features - shift) * scale) W|^2 is added."""
    nodes, init, _ = front or lfcc_front_end()
    nodes, init = list(nodes), list(init)
    n = helper.make_node
    init += [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([1], np.int64), "squeeze_axis"),
    ]
    nodes += [
        n("Gemm", ["features", "w1", "b1"], ["h1"]),
        n("Relu", ["h1"], ["a1"]),
        n("Gemm", ["a1", "w2", "b2"], ["mlp_logit"]),
    ]
    logit2 = "mlp_logit"
    if one_class is not None:
        shift, scale, w, weight = one_class
        init += [
            numpy_helper.from_array(shift.astype(np.float32), "oc_shift"),
            numpy_helper.from_array(scale.astype(np.float32), "oc_scale"),
            numpy_helper.from_array(w.astype(np.float32), "oc_w"),
            numpy_helper.from_array(np.array(weight, np.float32), "oc_weight"),
        ]
        nodes += [
            n("Sub", ["features", "oc_shift"], ["oc_centred"]),
            n("Mul", ["oc_centred", "oc_scale"], ["oc_std"]),
            n("MatMul", ["oc_std", "oc_w"], ["oc_z"]),
            n("Mul", ["oc_z", "oc_z"], ["oc_z2"]),
            n("ReduceSum", ["oc_z2", "squeeze_axis"], ["oc_d"], keepdims=1),
            n("Mul", ["oc_d", "oc_weight"], ["oc_term"]),
            n("Add", ["mlp_logit", "oc_term"], ["mixed_logit"]),
        ]
        logit2 = "mixed_logit"
    nodes.append(n("Squeeze", [logit2, "squeeze_axis"], ["logit"]))
    graph = helper.make_graph(
        nodes,
        "callguard_detector",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", window_samples])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    compact_initializers(model)
    onnx.checker.check_model(model)
    return model
