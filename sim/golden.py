"""The bit-exact golden model: the engine's training step in integer arithmetic.

Implements ``docs/numerics.md`` operation by operation, in the same order. The RTL is
checked against this model, so every value here is an integer (raw fixed-point) and the
model records a trace of every intermediate value on request.

Speed: the big matrix-vector products run in float64 BLAS, which is exact because the
configuration validator bounds every sum below 2**53; the update touches only the rows
with a nonzero delta and the columns with a nonzero input, since every other product is
zero and rounds to a zero update in every rounding mode.
"""

from __future__ import annotations

import numpy as np

from dfa_engine.config import EngineConfig
from dfa_engine.feedback import feedback_matrix, initial_parameters
from dfa_engine.fixed import requantize, saturate, shift_round
from dfa_engine.lfsr import row_streams
from dfa_engine.tables import RECIP_BITS, exp_table

from .trace import Trace

__all__ = ["GoldenModel", "softmax_table"]


def softmax_table(cfg: EngineConfig) -> np.ndarray:
    """The exp table of ``docs/numerics.md`` section 4 as an int64 array."""
    return np.array(exp_table(cfg), dtype=np.int64)


class GoldenModel:
    """Fixed-point MLP trained with BP, DFA or hybrid, one sample at a time (batch 1).

    Parameters
    ----------
    cfg : EngineConfig
    params : list of (W, b) raw int64 arrays, optional
        Initial parameters; default :func:`dfa_engine.feedback.initial_parameters`.
    trace : bool
        Record every intermediate value of every step in :attr:`trace`.
    """

    def __init__(self, cfg: EngineConfig, params=None, trace: bool = False):
        self.cfg = cfg
        f = cfg.formats
        params = initial_parameters(cfg) if params is None else params
        self.W = [np.array(W, dtype=np.int64) for W, _ in params]
        self.b = [np.array(b, dtype=np.int64) for _, b in params]
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            shape = (cfg.layers[l + 1], cfg.layers[l])
            if W.shape != shape or b.shape != shape[:1]:
                raise ValueError(f"layer {l + 1}: W must be {shape} and b {shape[:1]}, not {W.shape}, {b.shape}")
            if W.min(initial=0) < f.weight.min_raw or W.max(initial=0) > f.weight.max_raw:
                raise ValueError(f"layer {l + 1}: weights outside {f.weight}")
            if b.min(initial=0) < f.bias.min_raw or b.max(initial=0) > f.bias.max_raw:
                raise ValueError(f"layer {l + 1}: biases outside {f.bias}")
        self._Wf = [W.astype(np.float64) for W in self.W]
        self.B = [feedback_matrix(cfg, l) if m == "dfa" else None for l, m in enumerate(cfg.methods)]
        self._Bf = [None if B is None else B.astype(np.float64) for B in self.B]
        self.exp_table = softmax_table(cfg)
        self.stats: dict = {}
        self.samples_trained = 0
        self.trace = Trace() if trace else None
        if cfg.lr_multiplier is not None:
            self.lr_raw = int(f.learning_rate.from_float(cfg.lr_multiplier))
        else:
            self.lr_raw = None
        if cfg.rounding_update == "stochastic":
            self._rng = [row_streams(cfg.rounding_seed, l, cfg.layers[l + 1]) for l in range(cfg.n_layers)]

    # ---- forward ---------------------------------------------------------------
    def _activation(self, a):
        if self.cfg.activation == "relu":
            return np.maximum(a, 0), a > 0
        one = 1 << self.cfg.formats.activation.frac_bits
        return np.clip(a, -one, one), (a > -one) & (a < one)

    def forward(self, x):
        """Returns (pre-activations a_l, activations h_l with h_0 = x, derivative masks)."""
        cfg, f = self.cfg, self.cfg.formats
        h = [np.asarray(x, dtype=np.int64)]
        pre, masks = [], []
        for l in range(cfg.n_layers):
            acc_frac = cfg.accumulator_frac(l)
            z = self._Wf[l] @ h[l].astype(np.float64)
            z = z.astype(np.int64) + (self.b[l] << (acc_frac - f.bias.frac_bits))
            a = requantize(z, acc_frac, f.activation, cfg.rounding_forward, stats=self.stats, name=f"a{l + 1}")
            pre.append(a)
            if l < cfg.n_layers - 1:
                act, mask = self._activation(a)
                h.append(act)
                masks.append(mask)
        return pre, h, masks

    def predict(self, x) -> int:
        return int(np.argmax(self.forward(x)[0][-1]))

    # ---- output error ----------------------------------------------------------
    def output_error(self, y, label: int):
        """``e = softmax(y) - onehot(label)`` with the exp table and one reciprocal."""
        cfg, f = self.cfg, self.cfg.formats
        d = y.max() - y
        idx = d >> (f.activation.frac_bits - cfg.softmax_table_frac_bits)
        E = np.where(idx < cfg.softmax_table_size,
                     self.exp_table[np.minimum(idx, cfg.softmax_table_size - 1)], 0)
        S = int(E.sum())
        R = (1 << RECIP_BITS) // S
        p = shift_round(E * R, RECIP_BITS - f.error.frac_bits, "nearest")
        p[label] -= 1 << f.error.frac_bits
        return saturate(p, f.error, self.stats, "e")

    # ---- one training step ------------------------------------------------------
    def train_step(self, x, label: int) -> int:
        """Train on one sample; returns the prediction made by the forward pass."""
        cfg, f = self.cfg, self.cfg.formats
        if not 0 <= label < cfg.n_classes:
            raise ValueError(f"label {label} is outside 0..{cfg.n_classes - 1}")
        pre, h, masks = self.forward(x)
        y = pre[-1]
        prediction = int(np.argmax(y))
        e = self.output_error(y, label)
        self.last_error = e
        L = cfg.n_layers
        # Deltas, top down, all from the pre-update weights.
        delta = [None] * L
        delta[L - 1] = requantize(e, f.error.frac_bits, f.delta, cfg.rounding_backward,
                                  stats=self.stats, name=f"delta{L}")
        g_all = [None] * (L - 1)
        for l in range(L - 2, -1, -1):
            if cfg.methods[l] == "dfa":
                g = (self._Bf[l] @ e.astype(np.float64)).astype(np.int64)
                g_frac = f.error.frac_bits + f.feedback.frac_bits
            else:
                g = (self._Wf[l + 1].T @ delta[l + 1].astype(np.float64)).astype(np.int64)
                g_frac = f.weight.frac_bits + f.delta.frac_bits
            g = requantize(g, g_frac, f.delta, cfg.rounding_backward, stats=self.stats, name=f"g{l + 1}")
            g_all[l] = g
            delta[l] = np.where(masks[l], g, 0)
        # Updates.
        for l in range(L):
            self._update(l, delta[l], h[l])
        self.samples_trained += 1
        if self.trace is not None:
            # in the order of the computation, so that the trace diff's "first" is the cause
            rec = {"x": h[0]}
            for l in range(L - 1):
                rec[f"a{l + 1}"] = pre[l]
                rec[f"h{l + 1}"] = h[l + 1]
            rec.update({f"a{L}": pre[L - 1], "y": y, "prediction": np.array([prediction]), "e": e, f"delta{L}": delta[L - 1]})
            for l in range(L - 2, -1, -1):
                rec[f"g{l + 1}"] = g_all[l]
                rec[f"delta{l + 1}"] = delta[l]
            self.trace.append(rec)
        return prediction

    def _update(self, l: int, delta, h_in):
        """``W -= round(lr * delta h^T)``, ``b -= round(lr * delta)``, each saturated."""
        cfg, f = self.cfg, self.cfg.formats
        x_frac = cfg.in_format(l).frac_bits
        if self.lr_raw is None:
            lr, lr_frac = 1, cfg.lr_shift[l]
        else:
            lr, lr_frac = self.lr_raw, f.learning_rate.frac_bits
        mode = cfg.rounding_update
        n_out, n_in = self.W[l].shape
        # Only nonzero rows x nonzero columns can change. Stochastic rounding still draws
        # n_in + 1 words from every row's stream: one per weight, then one for the bias.
        words = self._rng[l].draws(n_in + 1) if mode == "stochastic" else None
        rand = None if words is None else words[:, :n_in]
        rows = np.flatnonzero(delta)
        cols = np.flatnonzero(h_in)
        if rows.size and cols.size:
            ix = np.ix_(rows, cols)
            prod = np.outer(delta[rows] * lr, h_in[cols])
            dW = requantize(prod, f.delta.frac_bits + x_frac + lr_frac, f.update, mode,
                            None if rand is None else rand[ix], self.stats, f"dW{l + 1}")
            W = saturate(self.W[l][ix] - dW, f.weight, self.stats, f"W{l + 1}")
            self.W[l][ix] = W
            self._Wf[l][ix] = W
        rand_b = None if words is None else words[:, n_in]
        if rows.size:
            db = requantize(delta[rows] * lr, f.delta.frac_bits + lr_frac, f.bias, mode,
                            None if rand_b is None else rand_b[rows], self.stats, f"db{l + 1}")
            self.b[l][rows] = saturate(self.b[l][rows] - db, f.bias, self.stats, f"b{l + 1}")

    # ---- epochs ---------------------------------------------------------------------
    def train_epoch(self, X, labels, progress=None):
        """Train on every row of ``X`` (raw input format) in order; returns training accuracy."""
        correct = 0
        for i in range(len(X)):
            correct += self.train_step(X[i], int(labels[i])) == labels[i]
            if progress is not None:
                progress(i + 1)
        return correct / max(len(X), 1)

    def evaluate(self, X, labels) -> float:
        """Accuracy of inference (no training) over the rows of ``X``."""
        cfg, f = self.cfg, self.cfg.formats
        # Batched forward: the same integer operations as forward(), row by row.
        h = np.asarray(X, dtype=np.int64)
        for l in range(cfg.n_layers):
            acc_frac = cfg.accumulator_frac(l)
            z = (h.astype(np.float64) @ self._Wf[l].T).astype(np.int64)
            z += self.b[l] << (acc_frac - f.bias.frac_bits)
            a = requantize(z, acc_frac, f.activation, cfg.rounding_forward)
            h = self._activation(a)[0] if l < cfg.n_layers - 1 else a
        return float(np.mean(np.argmax(h, axis=1) == np.asarray(labels)))

    def parameters(self):
        """Copies of (W, b) per layer, raw int64."""
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b)]

    def write_parameter(self, kind: str, layer: int, row: int, column: int, value: int) -> bool:
        """The host port's write: set one weight (``kind="weight"``) or bias (``"bias"``,
        column 0) and return True, or refuse a value outside its format (False), exactly as
        the engine does. Always use this rather than assigning to ``W``: the model keeps a
        float64 copy of every weight matrix for its exact BLAS products."""
        fmt = self.cfg.formats.weight if kind == "weight" else self.cfg.formats.bias
        if not fmt.min_raw <= value <= fmt.max_raw:
            return False
        if kind == "weight":
            self.W[layer][row, column] = value
            self._Wf[layer][row, column] = value
        else:
            self.b[layer][row] = value
        return True
