"""The CNN golden model (sim/golden_cnn.py) against independent slow loops written from
docs/numerics.md section 12, against the float reference with wide formats, and the CNN
configuration's validation messages."""

import copy

import numpy as np
import pytest
import torch

from dfa_engine.cnn import DilatedFeedback, FeedbackSpec
from dfa_engine.cnn_config import cnn_config_from_dict
from dfa_engine.config import ConfigError
from dfa_engine.sim.golden_cnn import GoldenCNN, avgpool_route, dilated_feedback_table, maxpool, maxpool_route
from dfa_engine.study_cnn_fixed import engine_dict, float_twin

torch.set_num_threads(1)


# ---- independent references (Python ints, loops) -----------------------------------------------

def rnd(z: int, shift: int, mode: str) -> int:
    if shift <= 0:
        return z * 2 ** -shift
    if mode == "trunc":
        return z // 2 ** shift
    return (2 * z + 2 ** shift) // 2 ** (shift + 1)          # floor(z / 2^s + 1/2)


def requant(z: int, shift: int, mode: str, fmt, count: list) -> int:
    r = rnd(z, shift, mode)
    c = min(max(r, fmt.min_raw), fmt.max_raw)
    count[0] += c != r
    return c


def ref_conv(x, W, b, spec, acc_frac, bias_shift):
    """Exact sums z[co, oy, ox], summed in the written order (c_in, ky, kx)."""
    cin, h, w = x.shape
    cout, cig, k, _ = W.shape
    s, p, G = spec.stride, spec.padding, spec.groups
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    z = np.zeros((cout, ho, wo), dtype=object)
    for co in range(cout):
        g = co // (cout // G)
        for oy in range(ho):
            for ox in range(wo):
                acc = int(b[co]) * 2 ** bias_shift
                for ci in range(cig):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy * s + ky - p, ox * s + kx - p
                            if 0 <= iy < h and 0 <= ix < w:
                                acc += int(W[co, ci, ky, kx]) * int(x[g * cig + ci, iy, ix])
                z[co, oy, ox] = acc
    return z


def ref_pool(x, size, kind):
    """(output, arg) with the first maximum in row-major window order; avg = exact sum."""
    c, h, w = x.shape
    out = np.zeros((c, h // size, w // size), dtype=np.int64)
    arg = np.zeros_like(out)
    for ch in range(c):
        for oy in range(h // size):
            for ox in range(w // size):
                vals = [int(x[ch, oy * size + py, ox * size + px]) for py in range(size) for px in range(size)]
                if kind == "max":
                    out[ch, oy, ox] = max(vals)
                    arg[ch, oy, ox] = vals.index(max(vals))
                else:
                    out[ch, oy, ox] = sum(vals)
    return out, arg


def ref_route(g, arg, size, kind, hw):
    c, ho, wo = g.shape
    out = np.zeros((c, *hw), dtype=np.int64)
    for ch in range(c):
        for oy in range(ho):
            for ox in range(wo):
                for q in range(size * size):
                    if kind == "avg" or q == arg[ch, oy, ox]:
                        out[ch, oy * size + q // size, ox * size + q % size] = g[ch, oy, ox]
    return out


def ref_conv_transpose(delta, W, in_shape, spec):
    cin, h, w = in_shape
    cout, cig, k, _ = W.shape
    s, p, G = spec.stride, spec.padding, spec.groups
    out = np.zeros(in_shape, dtype=object)
    _, ho, wo = delta.shape
    for co in range(cout):
        g = co // (cout // G)
        for oy in range(ho):
            for ox in range(wo):
                for ci in range(cig):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy * s + ky - p, ox * s + kx - p
                            if 0 <= iy < h and 0 <= ix < w:
                                out[g * cig + ci, iy, ix] += int(W[co, ci, ky, kx]) * int(delta[co, oy, ox])
    return out


# ---- configurations ------------------------------------------------------------------------------

def tiny(layers, methods=None, formats=None, shape=(2, 7, 7), lr_shift=3, **sections):
    ms = iter(methods or [])
    entries = []
    for t in layers:
        t = dict(t)
        if t["type"] in ("conv", "dense") and t is not None and methods is not None and t.get("features") != 10:
            t.setdefault("method", next(ms))
        entries.append(t)
    d = {"network": {"input": list(shape), "activation": sections.pop("activation", "hardtanh"), "layers": entries},
         "formats": formats or {}, "training": {"lr_shift": lr_shift, "seed": 3}}
    d.update(sections)
    d.setdefault("softmax", {"table_frac_bits": 2})
    return cnn_config_from_dict(d)


CONV_CASES = [
    dict(channels=4, kernel=3, stride=1, padding=1, groups=1),
    dict(channels=4, kernel=3, stride=2, padding=1, groups=2),
    dict(channels=6, kernel=2, stride=1, padding=0, groups=2),
    dict(channels=2, kernel=5, stride=3, padding=2, groups=1),
]
# narrow formats: the forward shift is 1 (every odd sum is a tie) and activations saturate often
NARROW = {"input": "u0.2", "weight": "s1.2", "bias": "s1.2", "activation": "s1.3", "update": "s1.2",
          "delta": "s1.6", "error": "s1.8", "feedback": "s1.3"}


@pytest.mark.parametrize("mode", ["nearest", "trunc"])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_forward_equals_loops(case, mode):
    conv = {"type": "conv", **CONV_CASES[case], "method": "bp"}
    cfg = tiny([conv, {"type": "flatten"}, {"type": "dense", "features": 10}], formats=NARROW,
               rounding={"forward": mode})
    rng = np.random.default_rng(case)
    m = GoldenCNN(cfg)
    f = cfg.formats
    W = rng.integers(f.weight.min_raw, f.weight.max_raw + 1, m.W[0].shape)
    b = rng.integers(f.bias.min_raw, f.bias.max_raw + 1, m.b[0].shape)
    m = GoldenCNN(cfg, [(W, b)] + m.parameters()[1:])
    x = rng.integers(0, f.input.max_raw + 1, cfg.input_shape)
    a, _ = m.forward(x)
    z = ref_conv(x, W, b, cfg.layers[0], cfg.accumulator_frac(0), cfg.accumulator_frac(0) - f.bias.frac_bits)
    count = [0]
    shift = cfg.accumulator_frac(0) - f.activation.frac_bits
    want = np.vectorize(lambda v: requant(v, shift, mode, f.activation, count), otypes=[object])(z).astype(np.int64)
    np.testing.assert_array_equal(a[0], want)
    assert shift == 1 and any(int(v) % 2 for v in z.flat), "no rounding ties exercised"
    assert count[0] > 0, "no saturation exercised"
    # the training forward counts the same clamped elements
    m.train_step(x, 0)
    assert m.stats["a1"] == count[0]


def test_pooling_equals_loops():
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, (3, 5, 7))            # small range: many ties; odd sizes drop a row/column
    for size in (2, 3):
        out, arg = maxpool(x[None], size)
        want, warg = ref_pool(x, size, "max")
        np.testing.assert_array_equal(out[0], want)
        np.testing.assert_array_equal(arg[0], warg)
        g = rng.integers(-9, 10, want.shape)
        np.testing.assert_array_equal(maxpool_route(g, arg[0], size, x.shape[1:]),
                                      ref_route(g, warg, size, "max", x.shape[1:]))
        np.testing.assert_array_equal(avgpool_route(g, size, x.shape[1:]),
                                      ref_route(g, warg, size, "avg", x.shape[1:]))


@pytest.mark.parametrize("mode", ["nearest", "trunc"])
def test_avgpool_forward_is_sum_then_shift(mode):
    cfg = tiny([{"type": "conv", "channels": 3, "method": "bp"}, {"type": "avgpool", "size": 2},
                {"type": "flatten"}, {"type": "dense", "features": 10}], formats=NARROW,
               shape=(1, 6, 6), rounding={"forward": mode}, activation="relu")
    m = GoldenCNN(cfg)
    x = np.random.default_rng(2).integers(0, 4, cfg.input_shape)
    _, h = m.forward(x)
    s, _ = ref_pool(h[0], 2, "avg")
    want = np.vectorize(lambda v: rnd(int(v), 2, mode))(s)
    # the dense layer reads exactly these values, in (c, y, x) order
    z = m.W[1].astype(object) @ want.reshape(-1).astype(object)
    acc = cfg.accumulator_frac(1)
    a = [requant(int(v), acc - cfg.formats.activation.frac_bits, mode, cfg.formats.activation, [0]) for v in z]
    np.testing.assert_array_equal(m.forward(x)[0][1], a)


def test_feedback_table_is_the_float_models():
    fb = FeedbackSpec(kind="sparse_dilated", d=3, k=2, groups=2, values="pow2", max_shift=3, seed=9)
    ref = DilatedFeedback((6, 5, 5), 10, fb, layer=2)
    cfg = tiny([{"type": "conv", "channels": 6, "method": "dfa"}, {"type": "flatten"},
                {"type": "dense", "features": 10}], feedback={"d": 3, "k": 2, "groups": 2, "values": "pow2",
                                                               "max_shift": 3, "seed": 9})
    index, sign, shift = dilated_feedback_table(6, 10, cfg.feedback, 2)
    np.testing.assert_array_equal(index, ref.index)
    np.testing.assert_array_equal(sign, ref.sign)
    np.testing.assert_array_equal(shift, ref.shift)


LAYERS = [{"type": "conv", "channels": 4, "kernel": 3, "padding": 1}, {"type": "maxpool", "size": 2},
          {"type": "conv", "channels": 6, "kernel": 3, "stride": 2, "padding": 1, "groups": 2},
          {"type": "flatten"}, {"type": "dense", "features": 10}]
FB = {"d": 3, "k": 2, "groups": 2, "values": "pow2", "max_shift": 2, "seed": 5}


def _step(methods, formats=None, rounding=None, seed=0):
    cfg = tiny(LAYERS, methods, formats=formats, shape=(2, 9, 9), feedback=FB, lr_shift=[2, 3, 4],
               **({"rounding": rounding} if rounding else {}))
    m = GoldenCNN(cfg, trace=True)
    x = np.random.default_rng(seed).integers(0, 256, cfg.input_shape)
    before = m.parameters()
    m.train_step(x, 7)
    return cfg, m, x, before, m.trace[0]


@pytest.mark.parametrize("mode", ["nearest", "trunc"])
def test_dfa_delta_equals_formula(mode):
    cfg, m, x, _, t = _step(("dfa", "dfa"), rounding={"backward": mode})
    f = cfg.formats
    e = t["e"]
    one = 1 << f.activation.frac_bits
    for l in (0, 1):
        ch, h, w = cfg.shapes[cfg.param_layers[l] + 1]
        index, sign, shift = dilated_feedback_table(ch, 10, cfg.feedback, l)
        d = FB["d"]
        count = [0]
        for c in range(ch):
            for y in range(h):
                for xx in range(w):
                    r = (c * d + y % d) * d + xx % d
                    G = sum((-1) ** int(sign[r, q]) * ((1 << f.feedback.frac_bits) >> int(shift[r, q])) * int(e[index[r, q]])
                            for q in range(FB["k"]))
                    g = requant(G, f.error.frac_bits + f.feedback.frac_bits - f.delta.frac_bits, mode, f.delta, count)
                    a = int(t[f"a{l + 1}"][c, y, xx])
                    assert t[f"g{l + 1}"][c, y, xx] == g
                    assert t[f"delta{l + 1}"][c, y, xx] == (g if -one < a < one else 0)


def test_bp_delta_through_conv_and_maxpool():
    cfg, m, x, before, t = _step(("bp", "bp"))
    f = cfg.formats
    # layer 2 (conv, groups 2, stride 2) from the output layer's delta: W^T delta
    W3 = before[2][0]
    G2 = W3.T.astype(object) @ t["delta3"].astype(object)
    g2 = np.array([requant(int(v), f.weight.frac_bits, "nearest", f.delta, [0]) for v in G2]).reshape(t["g2"].shape)
    np.testing.assert_array_equal(t["g2"], g2)
    # layer 1 from layer 2: transposed conv, requantized at the pool output, routed to the maximum
    spec2 = cfg.layers[2]
    G1 = ref_conv_transpose(t["delta2"], before[1][0], cfg.shapes[2], spec2)
    g1o = np.vectorize(lambda v: requant(int(v), f.weight.frac_bits, "nearest", f.delta, [0]))(G1).astype(np.int64)
    h1 = t["h1"]
    _, arg = ref_pool(h1, 2, "max")
    g1 = ref_route(g1o, arg, 2, "max", h1.shape[1:])
    np.testing.assert_array_equal(t["g1"], g1)
    one = 1 << f.activation.frac_bits
    np.testing.assert_array_equal(t["delta1"], np.where((t["a1"] > -one) & (t["a1"] < one), g1, 0))


@pytest.mark.parametrize("mode", ["nearest", "trunc"])
def test_update_equals_loops(mode):
    cfg, m, x, before, t = _step(("dfa", "bp"), formats={"weight": "s1.10", "bias": "s1.10", "update": "s1.10"},
                                 rounding={"update": mode})
    f = cfg.formats
    pooled, _ = ref_pool(t["h1"], 2, "max")
    inputs = [x, pooled, None]
    after = m.parameters()
    for l in (0, 1):
        spec = cfg.layers[cfg.param_layers[l]]
        W, b = before[l]
        delta, xin = t[f"delta{l + 1}"], inputs[l]
        x_frac = cfg.in_format(l).frac_bits
        S = cfg.lr_shift[l]
        cout, cig, k, _ = W.shape
        _, ho, wo = delta.shape
        s, p, G = spec.stride, spec.padding, spec.groups
        for co in range(cout):
            g = co // (cout // G)
            for ci in range(cig):
                for ky in range(k):
                    for kx in range(k):
                        P = 0
                        for oy in range(ho):
                            for ox in range(wo):
                                iy, ix = oy * s + ky - p, ox * s + kx - p
                                if 0 <= iy < xin.shape[1] and 0 <= ix < xin.shape[2]:
                                    P += int(delta[co, oy, ox]) * int(xin[g * cig + ci, iy, ix])
                        dW = requant(P, f.delta.frac_bits + S + x_frac - f.weight.frac_bits, mode, f.update, [0])
                        want = min(max(int(W[co, ci, ky, kx]) - dW, f.weight.min_raw), f.weight.max_raw)
                        assert after[l][0][co, ci, ky, kx] == want, (l, co, ci, ky, kx)
            db = requant(int(delta[co].sum()), f.delta.frac_bits + S - f.bias.frac_bits, mode, f.bias, [0])
            assert after[l][1][co] == min(max(int(b[co]) - db, f.bias.min_raw), f.bias.max_raw)
    # the output layer: the MLP's update
    W, b = before[2]
    xin = t["h2"].reshape(-1)
    dW = np.array([[rnd(int(d) * int(v), f.delta.frac_bits + 4 + f.activation.frac_bits - f.weight.frac_bits, mode)
                    for v in xin] for d in t["delta3"]])
    np.testing.assert_array_equal(after[2][0], np.clip(W - dW, f.weight.min_raw, f.weight.max_raw))
    assert m.stats.get("W1", 0) + m.stats.get("W2", 0) == 0   # no clamp expected with these formats


WIDE = {"input": "u0.8", "weight": "s2.21", "bias": "s2.21", "update": "s2.21", "activation": "s3.18",
        "error": "s1.22", "delta": "s1.22", "feedback": "s1.6"}


@pytest.mark.parametrize("methods,layers", [
    (("dfa", "bp"), [{"type": "conv", "channels": 4}, {"type": "maxpool", "size": 2},
                     {"type": "conv", "channels": 4, "groups": 2}, {"type": "maxpool", "size": 2},
                     {"type": "flatten"}, {"type": "dense", "features": 10}]),
    (("bp", "bp"), [{"type": "conv", "channels": 4}, {"type": "maxpool", "size": 2},
                    {"type": "conv", "channels": 6, "stride": 2, "groups": 2}, {"type": "flatten"},
                    {"type": "dense", "features": 10}]),
    (("bp", "bp"), [{"type": "conv", "channels": 4, "stride": 2}, {"type": "avgpool", "size": 2},
                    {"type": "flatten"}, {"type": "dense", "features": 12}, {"type": "dense", "features": 10}]),
])
def test_wide_formats_track_the_float_model(methods, layers):
    """With wide formats and a fine softmax table, several steps of the golden model stay
    within a small fraction of the float model's weight changes: wrong signs, a wrong
    feedback mapping or a wrong order of the transposed sums would not."""
    d = engine_dict("2conv")
    d["network"] = {"input": [1, 8, 8], "activation": "hardtanh",
                    "layers": [dict(t, **({"method": mm} if mm is not None else {}))
                               for t, mm in zip(layers, _spread(layers, methods))]}
    d["formats"] = WIDE
    true_grad = methods == ("bp", "bp")
    d["training"] = {"lr_shift": [4, 4, 4] if true_grad else [7, 4, 4], "seed": 1}
    d["softmax"] = {"table_frac_bits": 8, "table_size": 4096}
    cfg = cnn_config_from_dict(d)
    golden = GoldenCNN(cfg)
    W0 = golden.parameters()
    twin = float_twin(cfg, W0)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 1, 8, 8))
    Y = rng.integers(0, 10, 12)
    for i in range(12):
        golden.train_step(X[i], int(Y[i]))
        twin.step(torch.as_tensor(X[i:i + 1] / 256.0, dtype=torch.float32), torch.as_tensor(Y[i:i + 1]))
    for l, blk in enumerate(twin.blocks):
        wf = blk.layer.weight.detach().double().numpy()
        wq = cfg.formats.weight.to_float(golden.W[l])
        change = np.abs(wf - cfg.formats.weight.to_float(W0[l][0])).max()
        assert change > 1e-3, f"layer {l + 1} did not learn"
        assert np.abs(wq - wf).max() < 0.02 * change, f"layer {l + 1}"


def _spread(layers, methods):
    it = iter(methods)
    return [next(it) if t["type"] in ("conv", "dense") and t.get("features") != 10 else None for t in layers]


# ---- configuration ------------------------------------------------------------------------------

def _bad(mutate):
    d = copy.deepcopy(engine_dict("2conv"))
    mutate(d)
    with pytest.raises(ConfigError) as info:
        cnn_config_from_dict(d)
    return str(info.value)


def test_config_study_networks():
    for n in ("2conv", "4conv"):
        cfg = cnn_config_from_dict(engine_dict(n))
        assert cfg.layers[-1].type == "dense" and cfg.n_classes == 10
    cfg = cnn_config_from_dict(engine_dict("2conv"))
    assert cfg.shapes[-3] == (16, 7, 7) and cfg.methods == ("dfa", "bp") and cfg.lr_shift == (16, 6, 6)


def test_config_errors():
    L = lambda d: d["network"]["layers"]  # noqa: E731
    assert _bad(lambda d: L(d)[2].update(groups=3)) == (
        "network.layers[2].groups: 3 is out of range; must divide the 8 input channels and the 16 output channels")
    assert _bad(lambda d: L(d)[0].update(kernel=0)) == (
        "network.layers[0].kernel: 0 is out of range; must be 1 <= kernel <= 15")
    assert _bad(lambda d: L(d)[0].update(padding=3)) == (
        "network.layers[0].padding: 3 is out of range; must be 0 <= padding <= 2")
    assert _bad(lambda d: L(d)[1].update(type="avgpool", size=3)) == (
        "network.layers[1].size: 3 must be a power of two (the average is a shift)")
    assert _bad(lambda d: L(d).pop(4)) == (
        "network.layers[4].type: 'dense' follows a 16x7x7 feature map; insert { type = \"flatten\" } first")
    assert _bad(lambda d: L(d)[5].update(method="bp")) == (
        "network.layers[5].method: 'bp' is not allowed on the output layer (it always gets its true gradient)")
    assert _bad(lambda d: L(d)[0].update(method="sgd")) == "network.layers[0].method: 'sgd' must be one of dfa, bp"
    assert _bad(lambda d: L(d)[0].update(dilation=2)) == (
        "network.layers[0].dilation: 2 is not a field of a conv layer; known: channels, groups, kernel, method, "
        "padding, stride, type")
    assert _bad(lambda d: L(d).insert(0, {"type": "maxpool", "size": 2})) == (
        "network.layers[0].type: 'maxpool' must follow a conv layer (a pooling layer belongs to the conv layer "
        "before it)")
    assert _bad(lambda d: d["feedback"].update(groups=3)) == (
        "feedback.groups: 3 is out of range; must divide the 8 channels of network.layers[0] and be <= 10")
    assert _bad(lambda d: d["rounding"].update(update="stochastic") if "rounding" in d
                else d.update(rounding={"update": "stochastic"})) == (
        "rounding.update: 'stochastic' is not supported by the CNN model yet; must be trunc or nearest")
    assert _bad(lambda d: d["training"].update(lr_shift=[6, 6])) == (
        "training.lr_shift: [6, 6] must be an integer or a list of 3 integers, one per conv/dense layer")
    assert _bad(lambda d: d["formats"].update(weight="s8.38", update="s8.38")).startswith(
        "formats.weight: 's8.38' makes the exact accumulator of network.layers[0]")
    assert _bad(lambda d: L(d)[5].update(features=1)) == (
        "network.layers[5].features: 1 must be at least 2 (the number of classes)")


def test_example_file_is_the_study_config():
    from pathlib import Path

    from dfa_engine.cnn_config import load_cnn_config
    from dfa_engine.study_cnn_fixed import engine_config

    path = Path(__file__).parent.parent / "examples" / "cnn_2conv_hybrid.toml"
    assert load_cnn_config(path) == engine_config("2conv")


def test_study_quick():
    from dfa_engine.study_cnn_fixed import study

    r = study(("2conv",), epochs=1, quick=True, format_sets=("wide_weights",), quiet=True)["results"][0]
    assert r["methods"] == ["dfa", "bp"] and r["lr_shift"] == [16, 6, 6]
    assert abs(r["fixed_test_accuracy"] - r["float_twin_test_accuracy"]) < 0.02
