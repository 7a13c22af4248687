"""The bit-exact golden model of the RNN engine: ``docs/numerics.md`` section 13, in integers.

One recurrent layer (Elman, or the leaky cell of section 13.9) trained by DFA through time
(no backward pass through time; on the leaky cell through each neuron's eligibility trace) or
by truncated BPTT (13.8, the baseline), and a dense readout of the last hidden state trained
with its true gradient, one sequence at a time (batch 1). Every tensor is an int64 array of
raw values. The sums of products are formed exactly: in float64 BLAS, which is exact because
the configuration validator bounds every partial sum below 2**53 (as the MLP and CNN golden
models do), then converted to int64,
aligned by exact shifts, rounded once and saturated. The output error is the MLP golden
model's (section 4), the requantization and saturation are :mod:`dfa_engine.fixed`'s, and the
feedback matrix is the MLP's feedback generator's (:mod:`dfa_engine.feedback`, section 5).

Shapes: a sequence is ``(T, I)`` (batched ``(N, T, I)``); ``Wx`` ``(H, I)``, ``Wh`` ``(H, H)``,
``b1`` ``(H,)``, ``W2`` ``(C, H)``, ``b2`` ``(C,)``; ``B`` ``(H, C)``.
"""

from __future__ import annotations

import numpy as np

from dfa_engine.feedback import feedback_matrix
from dfa_engine.fixed import requantize, saturate, shift_round
from dfa_engine.rnn_config import RNNEngineConfig
from dfa_engine.tables import exp_table

from .golden import GoldenModel
from .trace import Trace

__all__ = ["GoldenRNN", "initial_rnn_parameters", "PARAMETER_NAMES"]

PARAMETER_NAMES = ("Wx", "Wh", "b1", "W2", "b2")


def _shapes(cfg: RNNEngineConfig) -> dict:
    H, I, C = cfg.hidden, cfg.inputs, cfg.classes
    return {"Wx": (H, I), "Wh": (H, H), "b1": (H,), "W2": (C, H), "b2": (C,)}


def initial_rnn_parameters(cfg: RNNEngineConfig) -> dict:
    """Initial parameters as raw int64 (section 13.7): ``Wx``, ``Wh``, ``W2`` (in this order,
    row-major) uniform in ``+-1/sqrt(H)`` from one ``numpy.random.default_rng(training.seed)``,
    quantized with ``FixedFormat.from_float``; biases 0."""
    rng = np.random.default_rng(cfg.seed)
    bound = 1.0 / np.sqrt(cfg.hidden)
    w = cfg.formats.weight
    shapes = _shapes(cfg)
    out = {}
    for name in ("Wx", "Wh", "W2"):
        out[name] = w.from_float(rng.uniform(-bound, bound, size=shapes[name]))
    out["b1"] = np.zeros(cfg.hidden, dtype=np.int64)
    out["b2"] = np.zeros(cfg.classes, dtype=np.int64)
    return out


class GoldenRNN:
    """Fixed-point RNN (Elman or leaky cell), recurrent layer by DFA through time (or the
    truncated-BPTT baseline), readout by its true gradient.

    Parameters
    ----------
    cfg : RNNEngineConfig
    params : dict of raw int64 arrays ``Wx, Wh, b1, W2, b2``, optional
        Default :func:`initial_rnn_parameters`.
    trace : bool
        Record every intermediate value of every training step in :attr:`trace`.

    Members
    -------
    stats : dict
        Saturation counts per site (``a1`` over all steps, ``a2``, ``e``, ``delta2``, ``g1``,
        ``dWx1``, ``Wx1``, ``dWh1``, ``Wh1``, ``db1``, ``b1``, ``dW2``, ``W2``, ``db2``, ``b2``).
    B : (H, C) int64
        The feedback matrix (raw, feedback format).
    """

    def __init__(self, cfg: RNNEngineConfig, params=None, trace: bool = False):
        self.cfg = cfg
        f = cfg.formats
        params = initial_rnn_parameters(cfg) if params is None else params
        self.p = {}
        for name, shape in _shapes(cfg).items():
            v = np.array(params[name], dtype=np.int64)
            fmt = f.bias if name.startswith("b") else f.weight
            if v.shape != shape:
                raise ValueError(f"{name} must be {shape}, not {v.shape}")
            if v.min(initial=0) < fmt.min_raw or v.max(initial=0) > fmt.max_raw:
                raise ValueError(f"{name}: values outside {fmt}")
            self.p[name] = v
        self._sync()
        self.B = feedback_matrix(cfg.feedback_engine_config(), 0)
        self._Bf = self.B.astype(np.float64)
        self.exp_table = np.array(exp_table(cfg), dtype=np.int64)
        self.leak = np.array(cfg.leak_shifts, dtype=np.int64)        # s_i (all 0: Elman)
        self.stats: dict = {}
        self.samples_trained = 0
        self.trace = Trace() if trace else None

    def _sync(self):
        self._f = {k: v.astype(np.float64) for k, v in self.p.items() if not k.startswith("b")}

    # ---- forward ---------------------------------------------------------------------------
    def _activation(self, a):
        if self.cfg.activation == "relu":
            return np.maximum(a, 0), a > 0
        one = 1 << self.cfg.formats.activation.frac_bits
        return np.clip(a, -one, one), (a > -one) & (a < one)

    def _leak_round(self, v, mode):
        """``round(v / 2^s_i)`` per neuron (the last axis), section 2's rounding in ``mode``."""
        out = np.empty_like(v)
        for s in np.unique(self.leak):
            sel = self.leak == s
            out[..., sel] = shift_round(v[..., sel], int(s), mode)
        return out

    def _forward(self, x, stats=None):
        """Batched forward of ``x`` ``(N, T, I)`` raw input: pre-activations ``a`` ``(T, N, H)``,
        states ``h`` ``(T + 1, N, H)`` with ``h[0] = 0``, masks ``(T, N, H)`` and logits ``(N, C)``."""
        cfg, f = self.cfg, self.cfg.formats
        x = np.asarray(x, dtype=np.int64)
        N, T, _ = x.shape
        zf = cfg.z_frac
        sx = zf - f.weight.frac_bits - f.input.frac_bits          # alignment of W_x x_t
        sh = zf - f.weight.frac_bits - f.activation.frac_bits     # alignment of W_h h_{t-1}
        xw = (x.astype(np.float64) @ self._f["Wx"].T).astype(np.int64) << sx     # (N, T, H), exact
        bias = self.p["b1"] << (zf - f.bias.frac_bits)
        h = np.zeros((T + 1, N, cfg.hidden), dtype=np.int64)
        a = np.zeros((T, N, cfg.hidden), dtype=np.int64)
        m = np.zeros((T, N, cfg.hidden), dtype=bool)
        for t in range(T):
            hw = (h[t].astype(np.float64) @ self._f["Wh"].T).astype(np.int64) << sh
            z = xw[:, t] + hw + bias
            a[t] = requantize(z, zf, f.activation, cfg.rounding_forward, stats=stats, name="a1")
            c, m[t] = self._activation(a[t])
            if cfg.cell == "leaky":          # 13.9: between h_{t-1} and c, never saturates
                h[t + 1] = h[t] + self._leak_round(c - h[t], cfg.rounding_forward)
            else:
                h[t + 1] = c
        yf = cfg.y_frac
        zy = (h[T].astype(np.float64) @ self._f["W2"].T).astype(np.int64) + (self.p["b2"] << (yf - f.bias.frac_bits))
        y = requantize(zy, yf, f.activation, cfg.rounding_forward, stats=stats, name="a2")
        return a, h, m, y

    def forward(self, x):
        """One sequence ``(T, I)``: (``a`` ``(T, H)``, ``h`` ``(T + 1, H)`` with ``h[0] = 0``,
        masks ``(T, H)``, logits ``(C,)``); no saturation counting."""
        a, h, m, y = self._forward(np.asarray(x)[None])
        return a[:, 0], h[:, 0], m[:, 0], y[0]

    def logits(self, x):
        return self.forward(x)[3]

    def predict(self, x) -> int:
        return int(np.argmax(self.logits(x)))

    # ---- one training step -----------------------------------------------------------------
    def train_step(self, x, label: int) -> int:
        """Train on one sequence ``x`` ``(T, I)`` (raw input format); returns the forward pass's
        prediction. Section 13: forward, output error, deltas, updates."""
        cfg, f = self.cfg, self.cfg.formats
        if not 0 <= label < cfg.classes:
            raise ValueError(f"label {label} is outside 0..{cfg.classes - 1}")
        x = np.asarray(x, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != cfg.inputs:
            raise ValueError(f"a sequence must be (T, {cfg.inputs}), not {x.shape}")
        T = x.shape[0]
        a, h, m, y = self._forward(x[None], self.stats)
        a, h, m, y = a[:, 0], h[:, 0], m[:, 0], y[0]
        prediction = int(np.argmax(y))
        e = GoldenModel.output_error(self, y, label)         # the MLP's output-error unit, section 4
        self.last_error = e
        delta2 = requantize(e, f.error.frac_bits, f.delta, cfg.rounding_backward, stats=self.stats, name="delta2")
        K = min(cfg.window, T)
        steps = np.arange(T - K, T)                          # 0-based t of a[t] = a_{t+1}
        if cfg.method == "bptt":
            delta1, g_steps = self._bptt_deltas(delta2, m, T, K)      # section 13.8
            g = g_steps[-1]
        else:
            # DFA: one projection of e_T, the same g for every step of the window
            G = (self._Bf @ e.astype(np.float64)).astype(np.int64)
            g = requantize(G, f.error.frac_bits + f.feedback.frac_bits, f.delta, cfg.rounding_backward,
                           stats=self.stats, name="g1")
            if cfg.cell == "leaky":                                           # 13.9
                q = self._trace_signal(g, K) if cfg.trace else self._leak_round(g, cfg.rounding_backward)[None]
                delta1 = np.where(m[steps], q, 0)
            else:
                delta1 = np.where(m[steps], g[None, :], 0)       # (K, H)
        # readout update: section 6
        self._update_dense("W2", "b2", 1, delta2[:, None] * h[T][None, :], delta2, f.activation.frac_bits, "2")
        # recurrent update: exact sums over the window, one rounding per weight
        df = delta1.astype(np.float64)
        Px = (df.T @ x[steps].astype(np.float64)).astype(np.int64)            # F_d + F_in
        Ph = (df.T @ h[steps].astype(np.float64)).astype(np.int64)            # h[steps] = h_{t-1}; F_d + F_a
        S = delta1.sum(axis=0)
        lr, lr_frac = cfg.lr(0)
        mode = cfg.rounding_update
        dWx = requantize(Px * lr, f.delta.frac_bits + lr_frac + f.input.frac_bits, f.update, mode,
                         stats=self.stats, name="dWx1")
        dWh = requantize(Ph * lr, f.delta.frac_bits + lr_frac + f.activation.frac_bits, f.update, mode,
                         stats=self.stats, name="dWh1")
        db = requantize(S * lr, f.delta.frac_bits + lr_frac, f.bias, mode, stats=self.stats, name="db1")
        self.p["Wx"] = saturate(self.p["Wx"] - dWx, f.weight, self.stats, "Wx1")
        self.p["Wh"] = saturate(self.p["Wh"] - dWh, f.weight, self.stats, "Wh1")
        self.p["b1"] = saturate(self.p["b1"] - db, f.bias, self.stats, "b1")
        self._sync()
        self.samples_trained += 1
        if self.trace is not None:
            rec = {"x": x}
            for t in range(T):
                rec[f"a1_{t + 1}"] = a[t]
                rec[f"h1_{t + 1}"] = h[t + 1]
            rec.update({"a2": y, "y": y, "prediction": np.array([prediction]), "e": e, "delta2": delta2, "g1": g})
            for i, t in enumerate(steps):
                rec[f"delta1_{t + 1}"] = delta1[i]
            self.trace.append(rec)
        return prediction

    def _trace_signal(self, g, K: int):
        """Section 13.9: the eligibility-trace weighting of ``g`` over the last ``K`` steps,
        ``q_T = round(g / 2^s)``, ``q_{t-1} = q_t - round(q_t / 2^s)`` (``g alpha keep^(T-t)``);
        returns ``(K, H)``, oldest step first."""
        mode = self.cfg.rounding_backward
        q = self._leak_round(g, mode)
        out = [q]
        for _ in range(K - 1):
            q = q - self._leak_round(q, mode)
            out.append(q)
        return np.array(out[::-1])

    def _bptt_deltas(self, delta2, m, T: int, K: int):
        """Section 13.8: BPTT truncated to the last ``K`` steps, from the pre-update weights
        (the leaky cell: 13.9). Returns ``delta1`` ``(K, H)`` (steps ``T-K .. T-1``, 0-based)
        and the ``g`` (``dL/dh_t``) of each."""
        cfg, f = self.cfg, self.cfg.formats
        frac = f.weight.frac_bits + f.delta.frac_bits
        G = (self._f["W2"].T @ delta2.astype(np.float64)).astype(np.int64)          # dL/dh_T
        deltas, gs = [], []
        for t in range(T - 1, T - K - 1, -1):
            g = requantize(G, frac, f.delta, cfg.rounding_backward, stats=self.stats, name="g1")
            through = self._leak_round(g, cfg.rounding_backward)                   # alpha * g (Elman: g)
            d = np.where(m[t], through, 0)
            deltas.append(d)
            gs.append(g)
            G = (self._f["Wh"].T @ d.astype(np.float64)).astype(np.int64)           # dL/dh_{t-1}
            G += (g - through) << f.weight.frac_bits                                # + keep * g (leaky)
        return np.array(deltas[::-1]), gs[::-1]

    def _update_dense(self, wname, bname, layer, P, S, x_frac, site):
        """Section 6: ``W -= sat(round(lr * P))``, ``b -= sat(round(lr * S))``."""
        cfg, f = self.cfg, self.cfg.formats
        lr, lr_frac = cfg.lr(layer)
        mode = cfg.rounding_update
        dW = requantize(P * lr, f.delta.frac_bits + lr_frac + x_frac, f.update, mode,
                        stats=self.stats, name=f"dW{site}")
        self.p[wname] = saturate(self.p[wname] - dW, f.weight, self.stats, f"W{site}")
        db = requantize(S * lr, f.delta.frac_bits + lr_frac, f.bias, mode, stats=self.stats, name=f"db{site}")
        self.p[bname] = saturate(self.p[bname] - db, f.bias, self.stats, f"b{site}")

    # ---- epochs ----------------------------------------------------------------------------
    def train_epoch(self, X, labels, progress=None) -> float:
        """Train on every sequence of ``X`` (raw input, ``(N, T, I)``) in order; returns the
        training accuracy."""
        correct = 0
        for i in range(len(X)):
            correct += self.train_step(X[i], int(labels[i])) == labels[i]
            if progress is not None:
                progress(i + 1)
        return correct / max(len(X), 1)

    def evaluate(self, X, labels, batch: int = 500) -> float:
        """Accuracy of inference over ``X`` (the same integer operations, batched)."""
        correct = 0
        for i in range(0, len(X), batch):
            y = self._forward(np.asarray(X[i:i + batch]))[3]
            correct += int(np.sum(np.argmax(y, axis=1) == np.asarray(labels[i:i + batch])))
        return correct / max(len(X), 1)

    def parameters(self) -> dict:
        """Copies of ``Wx, Wh, b1, W2, b2``, raw int64."""
        return {k: v.copy() for k, v in self.p.items()}
