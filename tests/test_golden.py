"""The golden model against a slow, independent pure-Python reference of docs/numerics.md.

The reference below uses Python ints only (nested loops, Fraction-based rounding from
tests/_reference.py) and follows the written operation order; it shares no arithmetic with
sim/golden.py. Inputs it takes from the package: the configuration, the feedback matrices
(checked separately in test_feedback.py) and nothing else.
"""

import numpy as np
import pytest

from _reference import RefLFSR, fmt_bounds, ref_exp_table, ref_from_float, ref_round, ref_seed_state
from dfa_engine.config import config_from_dict
from dfa_engine.feedback import feedback_matrix
from dfa_engine.sim.golden import GoldenModel, softmax_table
from dfa_engine.sim.trace import Difference, Trace, first_difference


# ---- the reference -------------------------------------------------------------------------

class RefModel:
    def __init__(self, cfg, params):
        self.cfg = cfg
        self.f = cfg.formats
        self.W = [[[int(v) for v in row] for row in W] for W, _ in params]
        self.b = [[int(v) for v in b] for _, b in params]
        self.B = [None if m == "bp" else feedback_matrix(cfg, l).tolist() for l, m in enumerate(cfg.methods)]
        self.table = ref_exp_table(cfg.softmax_table_frac_bits, cfg.softmax_table_size)
        self.stats = {}
        L = cfg.n_layers
        if cfg.rounding_update == "stochastic":
            # docs/numerics.md section 9: row i of layer l (1-based) is stream l * 65536 + i.
            self.rng = [[RefLFSR(ref_seed_state(cfg.rounding_seed, (l + 1) * 65536 + i))
                         for i in range(cfg.layers[l + 1])] for l in range(L)]
        lrf = self.f.learning_rate
        self.lr_raw = (None if cfg.lr_multiplier is None
                       else ref_from_float(cfg.lr_multiplier, False, lrf.int_bits, lrf.frac_bits))

    def sat(self, v, fmt, site):
        lo, hi = fmt_bounds(fmt.signed, fmt.int_bits, fmt.frac_bits)
        if v < lo or v > hi:
            self.stats[site] = self.stats.get(site, 0) + 1
            return lo if v < lo else hi
        return v

    def forward(self, x):
        cfg, f = self.cfg, self.f
        h, pre, masks = [list(x)], [], []
        one = 2 ** f.activation.frac_bits
        for l in range(cfg.n_layers):
            x_frac = (f.input if l == 0 else f.activation).frac_bits
            acc_frac = f.weight.frac_bits + x_frac
            a = []
            for i, row in enumerate(self.W[l]):
                z = 0
                for j, w in enumerate(row):
                    z += w * h[l][j]
                z += self.b[l][i] * 2 ** (acc_frac - f.bias.frac_bits)
                a.append(self.sat(ref_round(z, acc_frac - f.activation.frac_bits, cfg.rounding_forward),
                                  f.activation, f"a{l + 1}"))
            pre.append(a)
            if l < cfg.n_layers - 1:
                if cfg.activation == "relu":
                    h.append([max(v, 0) for v in a])
                    masks.append([v > 0 for v in a])
                else:
                    h.append([min(max(v, -one), one) for v in a])
                    masks.append([-one < v < one for v in a])
        return pre, h, masks

    def output_error(self, y, label):
        cfg, f = self.cfg, self.f
        t, N = cfg.softmax_table_frac_bits, cfg.softmax_table_size
        m = max(y)
        E = []
        for v in y:
            k = (m - v) // 2 ** (f.activation.frac_bits - t)
            E.append(self.table[k] if k < N else 0)
        S = sum(E)
        R = 2 ** 31 // S
        p = [ref_round(Ei * R, 31 - f.error.frac_bits, "nearest") for Ei in E]
        p[label] -= 2 ** f.error.frac_bits
        return [self.sat(v, f.error, "e") for v in p]

    def step(self, x, label):
        cfg, f = self.cfg, self.f
        L = cfg.n_layers
        pre, h, masks = self.forward(x)
        y = pre[-1]
        prediction = y.index(max(y))
        e = self.output_error(y, label)
        delta, g_all = [None] * L, [None] * (L - 1)
        delta[L - 1] = [self.sat(ref_round(v, f.error.frac_bits - f.delta.frac_bits, cfg.rounding_backward),
                                 f.delta, f"delta{L}") for v in e]
        for l in range(L - 2, -1, -1):
            g = []
            for i in range(cfg.layers[l + 1]):
                if cfg.methods[l] == "dfa":
                    acc = sum(self.B[l][i][c] * e[c] for c in range(cfg.n_classes))
                    g_frac = f.error.frac_bits + f.feedback.frac_bits
                else:
                    acc = sum(self.W[l + 1][k][i] * delta[l + 1][k] for k in range(cfg.layers[l + 2]))
                    g_frac = f.weight.frac_bits + f.delta.frac_bits
                g.append(self.sat(ref_round(acc, g_frac - f.delta.frac_bits, cfg.rounding_backward),
                                  f.delta, f"g{l + 1}"))
            g_all[l] = g
            delta[l] = [gi if mi else 0 for gi, mi in zip(g, masks[l])]
        for l in range(L):                       # updates use the deltas of the pre-update weights
            self.update(l, delta[l], h[l])
        rec = {"x": list(x), "y": y, "e": e, "prediction": [prediction]}
        for l in range(L):
            rec[f"a{l + 1}"] = pre[l]
            rec[f"delta{l + 1}"] = delta[l]
            if l < L - 1:
                rec[f"h{l + 1}"] = h[l + 1]
                rec[f"g{l + 1}"] = g_all[l]
        return prediction, rec

    def update(self, l, delta, h_in):
        cfg, f = self.cfg, self.f
        x_frac = (f.input if l == 0 else f.activation).frac_bits
        if self.lr_raw is None:
            lr, lr_frac = 1, cfg.lr_shift[l]
        else:
            lr, lr_frac = self.lr_raw, f.learning_rate.frac_bits
        mode = cfg.rounding_update
        n_in = len(h_in)
        for i in range(len(delta)):
            words = self.rng[l][i].draws(n_in + 1) if mode == "stochastic" else [0] * (n_in + 1)
            for j in range(n_in):
                prod = delta[i] * lr * h_in[j]
                dW = self.sat(ref_round(prod, f.delta.frac_bits + x_frac + lr_frac - f.update.frac_bits, mode,
                                        words[j]), f.update, f"dW{l + 1}")
                self.W[l][i][j] = self.sat(self.W[l][i][j] - dW, f.weight, f"W{l + 1}")
            db = self.sat(ref_round(delta[i] * lr, f.delta.frac_bits + lr_frac - f.bias.frac_bits, mode,
                                    words[n_in]), f.bias, f"db{l + 1}")
            self.b[l][i] = self.sat(self.b[l][i] - db, f.bias, f"b{l + 1}")


# ---- cases ------------------------------------------------------------------------------------

NARROW = {"input": "u2.6", "weight": "s1.6", "bias": "s1.4", "activation": "s2.4", "error": "s0.6",
          "feedback": "s1.4", "delta": "s0.6", "update": "s0.6", "learning_rate": "u0.8"}

CASES = {
    "dfa-sparse-pm1-relu-shift": dict(layers=[6, 5, 4], net={"method": "dfa"}, training={"lr_shift": 3}),
    "bp-relu-shift-per-layer": dict(layers=[6, 5, 4], net={"method": "bp"}, training={"lr_shift": [2, 4]}),
    "dfa-dense-hardtanh-lr": dict(layers=[7, 6, 5, 3], net={"method": "dfa", "activation": "hardtanh"},
                                  feedback={"kind": "dense", "values": "fixed", "storage": "table"},
                                  training={"learning_rate": 0.3}),
    "hybrid-dfa-bp-pow2-trunc": dict(layers=[7, 6, 5, 3], net={"methods": ["dfa", "bp"]},
                                     feedback={"values": "pow2", "k": 2, "max_shift": 3},
                                     rounding={"forward": "trunc", "backward": "trunc", "update": "trunc"},
                                     training={"lr_shift": [1, 2, 3]}),
    "hybrid-bp-dfa-fixed-hardtanh": dict(layers=[7, 6, 5, 3], net={"methods": ["bp", "dfa"], "activation": "hardtanh"},
                                         feedback={"values": "fixed", "k": 2},
                                         rounding={"forward": "trunc", "backward": "nearest", "update": "trunc"},
                                         training={"learning_rate": 0.05}),
    "bp-deep-hardtanh-nearest": dict(layers=[7, 6, 5, 3], net={"method": "bp", "activation": "hardtanh"},
                                     training={"lr_shift": 2}),
    "saturating-dfa-relu": dict(layers=[6, 5, 4], net={"method": "dfa"}, formats=NARROW,
                                softmax={"table_frac_bits": 2, "table_size": 4}, training={"lr_shift": 0},
                                big=True),
    "saturating-bp-hardtanh-lr": dict(layers=[7, 6, 5, 3], net={"method": "bp", "activation": "hardtanh"},
                                      formats=NARROW, softmax={"table_frac_bits": 1, "table_size": 2},
                                      training={"learning_rate": 0.9}, big=True),
    "saturating-hybrid-stochastic": dict(layers=[7, 6, 5, 3], net={"methods": ["dfa", "bp"]}, formats=NARROW,
                                         feedback={"values": "pow2", "max_shift": 4},
                                         rounding={"update": "stochastic", "seed": 3},
                                         training={"learning_rate": 0.7}, big=True),
    "stochastic-dfa-lr": dict(layers=[7, 6, 5, 3], net={"method": "dfa"}, feedback={"k": 3},
                              rounding={"update": "stochastic"}, training={"learning_rate": 0.2}),
    "stochastic-bp-shift": dict(layers=[6, 5, 4], net={"method": "bp"},
                                rounding={"forward": "trunc", "update": "stochastic", "seed": 12345},
                                training={"lr_shift": [5, 6]}),
}


def make_cfg(case):
    spec = CASES[case]
    data = {"network": {"layers": spec["layers"], **spec.get("net", {})}}
    for section in ("formats", "rounding", "training", "feedback", "softmax"):
        if section in spec:
            data[section] = dict(spec[section])
    return config_from_dict(data)


def random_params(cfg, rng, big=False):
    """Random in-range parameters; ``big`` puts many at the bounds of their formats."""
    f = cfg.formats
    params = []
    for n_in, n_out in zip(cfg.layers[:-1], cfg.layers[1:]):
        if big:
            W = rng.choice([f.weight.min_raw, f.weight.max_raw, 0, 1, -1], size=(n_out, n_in))
            W = np.where(rng.random((n_out, n_in)) < 0.5, rng.integers(f.weight.min_raw, f.weight.max_raw + 1,
                                                                       (n_out, n_in)), W)
            b = rng.integers(f.bias.min_raw, f.bias.max_raw + 1, n_out)
        else:
            bound = max(1, int(2 ** f.weight.frac_bits / np.sqrt(n_in)))
            W = rng.integers(-bound, bound + 1, (n_out, n_in))
            b = rng.integers(-(2 ** (f.bias.frac_bits - 4)), 2 ** (f.bias.frac_bits - 4), n_out)
        params.append((W.astype(np.int64), b.astype(np.int64)))
    return params


def random_inputs(cfg, rng, n, big=False):
    f = cfg.formats.input
    X = rng.integers(f.min_raw, f.max_raw + 1, (n, cfg.layers[0]))
    X[rng.random(X.shape) < 0.25] = 0                          # zero columns: skipped updates
    if big:
        X[rng.random(X.shape) < 0.3] = f.max_raw
    return X.astype(np.int64), rng.integers(0, cfg.n_classes, n)


STEPS = 20


@pytest.mark.parametrize("case", list(CASES))
def test_golden_matches_reference(case):
    cfg = make_cfg(case)
    big = CASES[case].get("big", False)
    rng = np.random.default_rng(sum(map(ord, case)))
    params = random_params(cfg, rng, big)
    X, labels = random_inputs(cfg, rng, STEPS, big)
    gold = GoldenModel(cfg, params=[(W.copy(), b.copy()) for W, b in params], trace=True)
    ref = RefModel(cfg, params)
    for s in range(STEPS):
        pred = gold.train_step(X[s], int(labels[s]))
        ref_pred, rec = ref.step([int(v) for v in X[s]], int(labels[s]))
        assert pred == ref_pred, (case, s)
        got = gold.trace[s]
        assert set(got) == set(rec), (case, s)                 # the same tensors
        for name, want in rec.items():
            assert got[name].dtype == np.int64
            assert got[name].tolist() == want, (case, s, name)
        assert gold.stats == ref.stats, (case, s)
    for l, (W, b) in enumerate(gold.parameters()):
        assert W.tolist() == ref.W[l], (case, l)
        assert b.tolist() == ref.b[l], (case, l)
    assert gold.samples_trained == STEPS
    if big:
        # The narrow cases exercise saturation at several sites, identically counted.
        assert {"a1", "e", "dW1"} <= set(gold.stats) or len(gold.stats) >= 4, gold.stats
        assert any(site.startswith("W") for site in gold.stats) or any(site.startswith("g") for site in gold.stats)
    # Inference after training agrees with the reference forward pass.
    Xt, yt = random_inputs(cfg, rng, 15, big)
    ref_pred = [ref.forward([int(v) for v in x])[0][-1] for x in Xt]
    ref_pred = [y.index(max(y)) for y in ref_pred]
    assert [gold.predict(x) for x in Xt] == ref_pred
    assert gold.evaluate(Xt, yt) == pytest.approx(np.mean(np.array(ref_pred) == yt))


@pytest.mark.parametrize("activation, method", [("relu", "dfa"), ("relu", "bp"), ("hardtanh", "dfa"),
                                                ("hardtanh", "bp")])
def test_derivative_mask_boundaries(activation, method):
    """Pre-activations exactly at 0 (relu) and exactly at +-1 (hardtanh) have derivative 0."""
    cfg = config_from_dict({"network": {"layers": [6, 6, 4], "method": method, "activation": activation},
                            "feedback": {"kind": "dense", "values": "fixed"}, "training": {"lr_shift": 4}})
    one_b = 2 ** cfg.formats.bias.frac_bits               # bias 1.0 -> a = 1.0 exactly when W row = 0
    rng = np.random.default_rng(8)
    W1 = rng.integers(-3000, 3000, (6, 6))
    W1[:5] = 0
    b1 = np.array([0, one_b, -one_b, one_b - 2 ** (cfg.formats.bias.frac_bits - cfg.formats.activation.frac_bits),
                   -one_b // 2, 123])
    W2 = rng.integers(-8000, 8000, (4, 6))
    params = [(W1, b1), (W2, np.zeros(4, np.int64))]
    gold = GoldenModel(cfg, params=[(W.copy(), b.copy()) for W, b in params], trace=True)
    ref = RefModel(cfg, params)
    x = np.array([200, 0, 17, 255, 3, 90])
    gold.train_step(x, 2)
    _, rec = ref.step(x.tolist(), 2)
    got = gold.trace[0]
    for name, want in rec.items():
        assert got[name].tolist() == want, name
    one_a = 2 ** cfg.formats.activation.frac_bits
    a1, g1, d1 = got["a1"], got["g1"], got["delta1"]
    assert a1[:5].tolist() == [0, one_a, -one_a, one_a - 1, -one_a // 2]
    assert np.all(g1[:4] != 0)
    if activation == "relu":
        assert d1[:5].tolist() == [0, g1[1], 0, g1[3], 0]
    else:
        assert d1[:5].tolist() == [g1[0], 0, 0, g1[3], g1[4]]


def test_saturation_cases_really_saturate():
    for case in [c for c in CASES if CASES[c].get("big")]:
        cfg = make_cfg(case)
        rng = np.random.default_rng(sum(map(ord, case)))
        params = random_params(cfg, rng, True)
        X, labels = random_inputs(cfg, rng, STEPS, True)
        gold = GoldenModel(cfg, params=params)
        for s in range(STEPS):
            gold.train_step(X[s], int(labels[s]))
        sites = set(gold.stats)
        assert any(s.startswith("a") for s in sites), (case, sites)
        assert any(s.startswith(("W", "dW", "b", "db")) for s in sites), (case, sites)
        assert all(v > 0 for v in gold.stats.values())


@pytest.mark.parametrize("t, size", [(0, 2), (1, 4), (2, 16), (4, 128), (6, 1024), (8, 4096), (3, 2)])
def test_softmax_table_matches_high_precision_reference(t, size):
    cfg = config_from_dict({"network": {"layers": [4, 3]}, "formats": {"activation": "s5.10"},
                            "softmax": {"table_frac_bits": t, "table_size": size}})
    table = softmax_table(cfg)
    assert table.dtype == np.int64
    assert table.tolist() == ref_exp_table(t, size)
    assert table[0] == 2 ** 15


# ---- determinism ---------------------------------------------------------------------------------

def _run(cfg, n=30, data_seed=0):
    rng = np.random.default_rng(data_seed)
    X, labels = random_inputs(cfg, rng, n)
    m = GoldenModel(cfg, trace=True)
    preds = [m.train_step(X[i], int(labels[i])) for i in range(n)]
    return m, preds


@pytest.mark.parametrize("update", ["nearest", "stochastic"])
def test_same_config_and_seed_bit_identical(update):
    cfg = config_from_dict({"network": {"layers": [10, 8, 6, 4], "methods": ["dfa", "bp"]},
                            "rounding": {"update": update}, "training": {"learning_rate": 0.25, "seed": 11}})
    a, pa = _run(cfg)
    b, pb = _run(cfg)
    assert pa == pb
    assert first_difference(a.trace, b.trace) is None
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
               for x, y in zip(a.parameters(), b.parameters()))
    assert a.stats == b.stats
    # Another training seed (other initial weights) or feedback seed: other results.
    other = cfg.with_(seed=12)
    c, _ = _run(other)
    assert first_difference(a.trace, c.trace) is not None
    assert not np.array_equal(a.parameters()[0][0], c.parameters()[0][0])
    d, _ = _run(cfg.with_(feedback=type(cfg.feedback)(seed=2)))
    diff = first_difference(a.trace, d.trace)
    assert diff is not None and diff.tensor not in ("x", "y", "a1", "a2", "a3", "h1", "h2")


def test_stochastic_rounding_is_deterministic_and_differs_from_nearest():
    base = {"network": {"layers": [10, 8, 4], "method": "dfa"}, "training": {"learning_rate": 0.01}}
    cfg_s = config_from_dict({**base, "rounding": {"update": "stochastic", "seed": 5}})
    cfg_n = config_from_dict({**base, "rounding": {"update": "nearest"}})
    a, _ = _run(cfg_s, 25)
    b, _ = _run(cfg_s, 25)
    assert first_difference(a.trace, b.trace) is None
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a.parameters(), b.parameters()))
    n, _ = _run(cfg_n, 25)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a.parameters(), n.parameters()))
    other, _ = _run(cfg_s.with_(rounding_seed=6), 25)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a.parameters(), other.parameters()))


# ---- traces ----------------------------------------------------------------------------------------

def _small_trace():
    cfg = config_from_dict({"network": {"layers": [6, 5, 4], "method": "bp"}, "training": {"lr_shift": 2}})
    m, _ = _run(cfg, 6, data_seed=4)
    return m.trace


def test_trace_save_load_round_trip(tmp_path):
    tr = _small_trace()
    path = tmp_path / "trace.npz"
    tr.save(path)
    back = Trace.load(path)
    assert len(back) == len(tr) == 6
    for r1, r2 in zip(tr.records, back.records):
        assert list(r1) == list(r2)
        for k in r1:
            assert r2[k].dtype == np.int64 and np.array_equal(r1[k], r2[k])
    assert first_difference(tr, back) is None
    assert first_difference(tr.records, back.records) is None


def test_first_difference_names_sample_tensor_index_values(tmp_path):
    tr = _small_trace()
    tr.save(tmp_path / "a.npz")
    mod = Trace.load(tmp_path / "a.npz")
    old = int(mod.records[3]["g1"][2])
    mod.records[3]["g1"][2] = old + 7
    mod.records[5]["e"][0] += 1                     # a later difference is not the first
    d = first_difference(tr, mod)
    assert d == Difference(3, "g1", (2,), old, old + 7)
    assert str(d) == f"first difference: sample 3, tensor g1[2]: {old} != {old + 7}"
    # Two differences in one sample: the one in the earlier tensor of a's record is named.
    mod.records[3]["a1"][4] += 1
    names = list(tr.records[3])
    assert names.index("a1") < names.index("g1")
    assert first_difference(tr, mod).tensor == "a1"
    # Restricting the tensors compared.
    assert first_difference(tr, mod, tensors={"e"}) == Difference(5, "e", (0,), int(tr[5]["e"][0]),
                                                                  int(tr[5]["e"][0]) + 1)
    assert first_difference(tr, mod, tensors={"x"}) is None


def test_first_difference_structure_mismatches():
    tr = _small_trace()
    short = Trace(tr.records[:4])
    assert first_difference(tr, short) == Difference(4, "(sample)", (), "present", "missing")
    assert first_difference(short, tr) == Difference(4, "(sample)", (), "missing", "present")
    recs = [dict(r) for r in tr.records]
    del recs[2]["h1"]
    assert first_difference(tr, recs) == Difference(2, "h1", (), "present", "missing")
    recs = [dict(r) for r in tr.records]
    recs[1]["y"] = recs[1]["y"][:-1]
    assert first_difference(tr, recs) == Difference(1, "y", (), "shape (4,)", "shape (3,)")
    recs = [dict(r) for r in tr.records]
    recs[0]["extra"] = np.zeros(2, dtype=np.int64)
    assert first_difference(tr, recs) == Difference(0, "extra", (), "missing", "present")
    m2 = {"W": np.arange(6).reshape(2, 3)}
    m2b = {"W": np.arange(6).reshape(2, 3).copy()}
    m2b["W"][1, 2] = 0
    assert first_difference([m2], [m2b]) == Difference(0, "W", (1, 2), 5, 0)


# ---- invalid labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [4, 5, -1, 100])
def test_label_outside_class_range(label):
    cfg = config_from_dict({"network": {"layers": [6, 5, 4]}})
    m = GoldenModel(cfg, trace=True)
    before = m.parameters()
    with pytest.raises(ValueError) as exc:
        m.train_step(np.zeros(6, dtype=np.int64), label)
    assert str(exc.value) == f"label {label} is outside 0..3"
    assert m.samples_trained == 0 and len(m.trace) == 0
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(before, m.parameters()))


def test_parameter_shapes_and_ranges_checked():
    cfg = config_from_dict({"network": {"layers": [6, 5, 4]}})
    good = [(np.zeros((5, 6), np.int64), np.zeros(5, np.int64)), (np.zeros((4, 5), np.int64), np.zeros(4, np.int64))]
    GoldenModel(cfg, params=good)
    bad = [(np.zeros((6, 5), np.int64), np.zeros(5, np.int64)), good[1]]
    with pytest.raises(ValueError, match=r"^layer 1: W must be \(5, 6\) and b \(5,\), not \(6, 5\), \(5,\)$"):
        GoldenModel(cfg, params=bad)
    over = [(np.full((5, 6), 2 ** 15, np.int64), np.zeros(5, np.int64)), good[1]]
    with pytest.raises(ValueError, match=r"^layer 1: weights outside s1\.14$"):
        GoldenModel(cfg, params=over)


# ---- known gap: wide backward formats --------------------------------------------------------------

def test_wide_backward_formats_are_rejected():
    """W^T delta with 2^55-sized terms would round in float64: the validator must refuse it."""
    from dfa_engine.config import ConfigError
    with pytest.raises(ConfigError, match=r"^formats\.delta: 's12\.30' makes layer 1's BP sum W\^T delta 73 bits; the limit is 53$"):
        config_from_dict({"network": {"layers": [6, 5, 4], "method": "bp"},
                          "formats": {"weight": "s24.2", "update": "s24.2", "bias": "s1.2",
                                      "error": "s1.30", "delta": "s12.30"},
                          "training": {"lr_shift": 0}})
