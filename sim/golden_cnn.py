"""The bit-exact golden model of the CNN engine: ``docs/numerics.md`` section 12, in integers.

Every tensor is an int64 array of raw values. The sums of products (convolution, its
transpose for BP, the weight gradient) are formed exactly: in float64 BLAS, which is exact
because the configuration validator bounds every partial sum below 2**53 (the MLP golden
model does the same), then converted to int64, rounded once and saturated. So the order in
which an RTL forms a sum does not matter; where the written definition names an order, it is
the canonical one (``(c_in, ky, kx)`` for a conv output, ``(oy, ox)`` for a weight gradient).

Shapes: feature maps are ``(C, H, W)`` (batched ``(N, C, H, W)`` in the forward pass), conv
weights ``(C_out, C_in / groups, K, K)`` (PyTorch's layout), dense weights ``(n_out, n_in)``
with ``n_in`` in flatten order ``(c, y, x)`` row-major.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dfa_engine.cnn_config import CNNEngineConfig, DilatedFeedbackConfig
from dfa_engine.fixed import requantize, saturate, shift_round
from dfa_engine.lfsr import LFSRBlock, seed_state
from dfa_engine.tables import exp_table

from .golden import GoldenModel
from .trace import Trace

__all__ = ["GoldenCNN", "initial_cnn_parameters", "dilated_feedback_table", "dilated_feedback_values",
           "project_dilated", "conv_sum", "conv_transpose_sum", "conv_weight_grad_sum", "maxpool", "maxpool_route",
           "avgpool_sum", "avgpool_route"]


# ---- sparse dilated feedback ----------------------------------------------------------------

def dilated_feedback_table(channels: int, n_classes: int, fb: DilatedFeedbackConfig, layer: int):
    """``(index, sign, shift)``, each ``(channels * d * d, k)``: the table of layer ``layer``
    (0-based), row ``r = (ch * d + u) * d + v``; the formula of ``docs/cnn.md`` (the float
    model's :class:`dfa_engine.cnn.DilatedFeedback` draws the same words in the same order)."""
    d, G, C, k = fb.d, fb.groups, n_classes, fb.k
    rows = channels * d * d
    gi = (np.arange(channels) // (channels // G)).repeat(d * d)
    c0 = (gi * C) // G
    cg = ((gi + 1) * C) // G - c0
    words = LFSRBlock(seed_state(fb.seed, layer)).draws(rows * k).reshape(rows, k)
    base = ((words[:, :1] & 0xFFFF) * cg[:, None]) >> 16
    index = c0[:, None] + (base + np.arange(k)) % cg[:, None]
    sign = (words >> 16) & 1
    if fb.values == "pow2":
        shift = (((words >> 17) & 0x7FFF) * (fb.max_shift + 1)) >> 15
    else:
        shift = np.zeros_like(words)
    return index.astype(np.int64), sign.astype(np.int64), shift.astype(np.int64)


def dilated_feedback_values(sign, shift, frac_bits: int):
    """Raw feedback values ``(-1)^sign * (2^F_fb >> shift)`` in the feedback format."""
    mag = (1 << frac_bits) >> shift
    return np.where(sign == 1, -mag, mag).astype(np.int64)


def project_dilated(index, value, e, shape, d: int):
    """``G[ch, y, x] = sum_m value[r, m] * e[index[r, m]]``, ``r = (ch*d + y mod d)*d + x mod d``,
    exact (fraction bits ``F_e + F_fb``). ``shape`` is ``(Ch, H, W)``."""
    ch, h, w = shape
    p = (value * e[index]).sum(axis=1).reshape(ch, d, d)
    return np.tile(p, (1, -(-h // d), -(-w // d)))[:, :h, :w]


# ---- convolution, exact ------------------------------------------------------------------------

def _patches(x, k: int, stride: int, pad: int):
    """``(N, C, H, W)`` -> ``(N, C, K, K, Ho, Wo)``: element ``[n, c, ky, kx, oy, ox]`` is
    ``x[n, c, oy*stride + ky - pad, ox*stride + kx - pad]`` (0 outside)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    v = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return v.transpose(0, 1, 4, 5, 2, 3)


def conv_sum(x, Wf, stride: int, pad: int, groups: int):
    """Exact ``z[n, co, oy, ox] = sum_(ci, ky, kx) W[co, ci, ky, kx] * x[n, g*Cig + ci, oy*s+ky-p, ox*s+kx-p]``
    (no bias), ``g = co // (C_out / groups)``. ``x`` int64 ``(N, C_in, H, W)``; ``Wf`` the
    weights as float64 (exact integers)."""
    n, cin = x.shape[:2]
    cout, cig, k, _ = Wf.shape
    p = _patches(x.astype(np.float64), k, stride, pad)
    ho, wo = p.shape[-2:]
    cols = p.reshape(n, groups, cig * k * k, ho * wo)
    z = np.matmul(Wf.reshape(1, groups, cout // groups, cig * k * k), cols)
    return z.reshape(n, cout, ho, wo).astype(np.int64)


def conv_transpose_sum(delta, Wf, in_hw, stride: int, pad: int, groups: int):
    """Exact BP through a conv: ``G[ci, iy, ix] = sum W[co, ci', ky, kx] * delta[co, oy, ox]``
    over every ``(co, ky, kx, oy, ox)`` of ``ci``'s group with ``iy = oy*s + ky - p``,
    ``ix = ox*s + kx - p`` (fraction bits ``F_w + F_delta``). ``delta`` ``(C_out, Ho, Wo)``."""
    cout, cig, k, _ = Wf.shape
    _, ho, wo = delta.shape
    h, w = in_hw
    dg = delta.reshape(groups, cout // groups, ho * wo).astype(np.float64)
    cols = np.matmul(Wf.reshape(groups, cout // groups, cig * k * k).transpose(0, 2, 1), dg)
    cols = cols.astype(np.int64).reshape(groups * cig, k, k, ho, wo)
    out = np.zeros((groups * cig, h + 2 * pad + stride, w + 2 * pad + stride), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            out[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride] += cols[:, ky, kx]
    return out[:, pad:pad + h, pad:pad + w]


def conv_weight_grad_sum(delta, x, k: int, stride: int, pad: int, groups: int):
    """Exact ``P[co, ci, ky, kx] = sum_(oy, ox) delta[co, oy, ox] * x[g*Cig + ci, oy*s+ky-p, ox*s+kx-p]``
    (fraction bits ``F_delta + F_x``). ``delta`` ``(C_out, Ho, Wo)``, ``x`` ``(C_in, H, W)``."""
    cout = delta.shape[0]
    cin = x.shape[0]
    cig = cin // groups
    p = _patches(x[None].astype(np.float64), k, stride, pad)[0]
    ho, wo = p.shape[-2:]
    cols = p.reshape(groups, cig * k * k, ho * wo)
    dg = delta.reshape(groups, cout // groups, ho * wo).astype(np.float64)
    P = np.matmul(dg, cols.transpose(0, 2, 1))
    return P.reshape(cout, cig, k, k).astype(np.int64)


# ---- pooling -----------------------------------------------------------------------------------

def _windows(x, size: int):
    """``(N, C, H, W)`` -> ``(N, C, H//P, W//P, P*P)``, window elements in row-major ``(py, px)``
    order; rows and columns beyond the last whole window are dropped."""
    n, c, h, w = x.shape
    ho, wo = h // size, w // size
    xs = x[:, :, :ho * size, :wo * size].reshape(n, c, ho, size, wo, size)
    return xs.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, size * size)


def maxpool(x, size: int):
    """Max over each ``P x P`` window; returns (output, index of the first maximum in row-major
    window order), both ``(N, C, H//P, W//P)``."""
    xs = _windows(x, size)
    arg = xs.argmax(axis=-1)
    return np.take_along_axis(xs, arg[..., None], -1)[..., 0], arg


def _unwindow(v, size: int, hw):
    """Inverse of :func:`_windows` for one sample: ``(C, Ho, Wo, P*P)`` -> ``(C, H, W)``, zeros
    where no window reaches."""
    c, ho, wo, _ = v.shape
    out = np.zeros((c, hw[0], hw[1]), dtype=np.int64)
    out[:, :ho * size, :wo * size] = v.reshape(c, ho, wo, size, size).transpose(0, 1, 3, 2, 4).reshape(
        c, ho * size, wo * size)
    return out


def maxpool_route(g, arg, size: int, hw):
    """BP through a max pool: each ``g[c, oy, ox]`` goes to its window's (first) maximum."""
    onehot = np.arange(size * size) == arg[..., None]
    return _unwindow(np.where(onehot, g[..., None], 0), size, hw)


def avgpool_sum(x, size: int):
    """The exact window sums (the average is this shifted right by ``2 log2 P``)."""
    return _windows(x, size).sum(axis=-1)


def avgpool_route(g, size: int, hw):
    """BP through an average pool: ``g[c, oy, ox]`` copied to every element of its window
    (the division by ``P^2`` is part of the requantization of ``g``)."""
    return _unwindow(np.repeat(g[..., None], size * size, axis=-1), size, hw)


# ---- parameters --------------------------------------------------------------------------------

def _param_shapes(cfg: CNNEngineConfig):
    out = []
    for l, i in enumerate(cfg.param_layers):
        spec = cfg.layers[i]
        if spec.type == "conv":
            out.append((spec.channels, cfg.shapes[i][0] // spec.groups, spec.kernel, spec.kernel))
        else:
            out.append((spec.channels, cfg.fan_in(l)))
    return out


def initial_cnn_parameters(cfg: CNNEngineConfig):
    """Initial (W, b) per conv/dense layer as raw int64: ``W`` uniform in ``+-1/sqrt(fan_in)``
    from ``numpy.random.default_rng(training.seed)``, layer by layer, quantized to the weight
    format; ``b = 0`` (``docs/numerics.md`` section 8, with the conv fan-in ``C_in/G * K * K``)."""
    rng = np.random.default_rng(cfg.seed)
    params = []
    for l, shape in enumerate(_param_shapes(cfg)):
        bound = 1.0 / np.sqrt(cfg.fan_in(l))
        params.append((cfg.formats.weight.from_float(rng.uniform(-bound, bound, size=shape)),
                       np.zeros(shape[0], dtype=np.int64)))
    return params


# ---- the model ---------------------------------------------------------------------------------

class GoldenCNN:
    """Fixed-point CNN trained with BP, sparse dilated DFA or both, one sample at a time.

    Parameters
    ----------
    cfg : CNNEngineConfig
    params : list of (W, b) raw int64 arrays, optional
        Default :func:`initial_cnn_parameters`.
    trace : bool
        Record every intermediate value of every training step in :attr:`trace`.

    Members
    -------
    stats : dict
        Saturation counts per site (``a<l>``, ``e``, ``delta<L>``, ``g<l>``, ``dW<l>``,
        ``W<l>``, ``db<l>``, ``b<l>``; ``l`` 1-based over the conv/dense layers).
    """

    def __init__(self, cfg: CNNEngineConfig, params=None, trace: bool = False):
        self.cfg = cfg
        f = cfg.formats
        params = initial_cnn_parameters(cfg) if params is None else params
        self.W = [np.array(W, dtype=np.int64) for W, _ in params]
        self.b = [np.array(b, dtype=np.int64) for _, b in params]
        shapes = _param_shapes(cfg)
        if len(params) != len(shapes):
            raise ValueError(f"params must hold {len(shapes)} (W, b) pairs, not {len(params)}")
        for l, (W, b, shape) in enumerate(zip(self.W, self.b, shapes)):
            if W.shape != shape or b.shape != shape[:1]:
                raise ValueError(f"layer {l + 1}: W must be {shape} and b {shape[:1]}, not {W.shape}, {b.shape}")
            if W.min(initial=0) < f.weight.min_raw or W.max(initial=0) > f.weight.max_raw:
                raise ValueError(f"layer {l + 1}: weights outside {f.weight}")
            if b.min(initial=0) < f.bias.min_raw or b.max(initial=0) > f.bias.max_raw:
                raise ValueError(f"layer {l + 1}: biases outside {f.bias}")
        self._Wf = [W.astype(np.float64) for W in self.W]
        self._specs = [cfg.layers[i] for i in cfg.param_layers]
        shapes = cfg.shapes
        # shape of h_l (the activation output, before pooling) and of o_l (the block output)
        self._h_shape = [shapes[i + 1] for i in cfg.param_layers]
        self._o_shape, self._in_hw = [], []
        for l, i in enumerate(cfg.param_layers):
            j = i + 1
            while j < len(cfg.layers) and cfg.layers[j].type in ("maxpool", "avgpool"):
                j += 1
            self._o_shape.append(shapes[j])
            self._in_hw.append(shapes[i][1:])
        self.feedback = {}
        for l, m in enumerate(cfg.methods):
            if m == "dfa":
                shp = self._h_shape[l]
                index, sign, shift = dilated_feedback_table(shp[0], cfg.n_classes, cfg.feedback, l)
                self.feedback[l] = (index, dilated_feedback_values(sign, shift, f.feedback.frac_bits))
        self.exp_table = np.array(exp_table(cfg), dtype=np.int64)
        self.stats: dict = {}
        self.samples_trained = 0
        self.trace = Trace() if trace else None
        self.lr_raw = None if cfg.lr_multiplier is None else int(f.learning_rate.from_float(cfg.lr_multiplier))

    # ---- forward ---------------------------------------------------------------------------
    def _activation(self, a):
        if self.cfg.activation == "relu":
            return np.maximum(a, 0), a > 0
        one = 1 << self.cfg.formats.activation.frac_bits
        return np.clip(a, -one, one), (a > -one) & (a < one)

    def _forward(self, x, keep: bool):
        """Batched forward of ``x`` ``(N, C, H, W)`` raw input. With ``keep`` (training, N = 1)
        counts saturations and returns what the backward pass needs."""
        cfg, f = self.cfg, self.cfg.formats
        stats = self.stats if keep else None
        L = cfg.n_layers
        h = np.asarray(x, dtype=np.int64)
        rec = {"inputs": [], "pre": [], "h": [], "masks": [], "pools": []}
        l = -1
        for spec in cfg.layers:
            if spec.parametrized:
                l += 1
                rec["inputs"].append(h)
                acc_frac = cfg.accumulator_frac(l)
                bias = self.b[l] << (acc_frac - f.bias.frac_bits)
                if spec.type == "conv":
                    z = conv_sum(h, self._Wf[l], spec.stride, spec.padding, spec.groups) + bias[None, :, None, None]
                else:
                    z = (h.astype(np.float64) @ self._Wf[l].T).astype(np.int64) + bias[None, :]
                a = requantize(z, acc_frac, f.activation, cfg.rounding_forward, stats=stats, name=f"a{l + 1}")
                rec["pre"].append(a)
                rec["pools"].append([])
                if l < L - 1:
                    h, m = self._activation(a)
                    rec["masks"].append(m)
                else:
                    h = a
                rec["h"].append(h)
            elif spec.type == "maxpool":
                hw = h.shape[2:]
                h, arg = maxpool(h, spec.size)
                rec["pools"][l].append(("max", spec.size, arg, hw))
            elif spec.type == "avgpool":
                hw = h.shape[2:]
                shift = 2 * (spec.size.bit_length() - 1)
                h = shift_round(avgpool_sum(h, spec.size), shift, cfg.rounding_forward)
                rec["pools"][l].append(("avg", spec.size, None, hw))
            else:  # flatten: (c, y, x) row-major
                h = h.reshape(h.shape[0], -1)
        return h, rec

    def forward(self, x):
        """One sample's forward pass: (pre-activations ``a_l``, activation outputs ``h_l`` before
        pooling), one per conv/dense layer (the last ``h`` is the logit vector)."""
        _, rec = self._forward(np.asarray(x)[None], False)
        return [a[0] for a in rec["pre"]], [h[0] for h in rec["h"]]

    def logits(self, x):
        """Logits (raw activation format) of one sample ``x`` of shape ``input``."""
        return self._forward(np.asarray(x)[None], False)[0][0]

    def predict(self, x) -> int:
        return int(np.argmax(self.logits(x)))

    # ---- backward --------------------------------------------------------------------------
    def _g_dfa(self, l: int, e):
        index, value = self.feedback[l]
        shp = self._h_shape[l]
        shp3 = shp if len(shp) == 3 else (shp[0], 1, 1)
        return project_dilated(index, value, e, shp3, self.cfg.feedback.d).reshape(shp)

    def _g_bp(self, l: int, delta_above, pools):
        """Exact BP sum at layer ``l``'s block output, and the avg-pool shift of its block."""
        spec = self._specs[l + 1]
        if spec.type == "conv":
            G = conv_transpose_sum(delta_above, self._Wf[l + 1], self._in_hw[l + 1], spec.stride, spec.padding,
                                   spec.groups)
        else:
            G = (self._Wf[l + 1].T @ delta_above.astype(np.float64)).astype(np.int64)
        G = G.reshape(self._o_shape[l])
        avg_shift = sum(2 * (size.bit_length() - 1) for kind, size, _, _ in pools if kind == "avg")
        return G, avg_shift

    # ---- one training step -----------------------------------------------------------------
    def train_step(self, x, label: int) -> int:
        """Train on one sample (raw input, shape ``input``); returns the forward pass's prediction."""
        cfg, f = self.cfg, self.cfg.formats
        if not 0 <= label < cfg.n_classes:
            raise ValueError(f"label {label} is outside 0..{cfg.n_classes - 1}")
        out, rec = self._forward(np.asarray(x)[None], True)
        y = out[0]
        prediction = int(np.argmax(y))
        e = GoldenModel.output_error(self, y, label)     # the MLP's output-error unit, section 4
        self.last_error = e
        L = cfg.n_layers
        delta, g_all = [None] * L, [None] * L
        delta[L - 1] = requantize(e, f.error.frac_bits, f.delta, cfg.rounding_backward,
                                  stats=self.stats, name=f"delta{L}")
        for l in range(L - 2, -1, -1):
            if cfg.methods[l] == "dfa":
                g = requantize(self._g_dfa(l, e), f.error.frac_bits + f.feedback.frac_bits, f.delta,
                               cfg.rounding_backward, stats=self.stats, name=f"g{l + 1}")
            else:
                pools = rec["pools"][l]
                G, avg_shift = self._g_bp(l, delta[l + 1], pools)
                g = requantize(G, f.weight.frac_bits + f.delta.frac_bits + avg_shift, f.delta,
                               cfg.rounding_backward, stats=self.stats, name=f"g{l + 1}")
                for kind, size, arg, hw in reversed(pools):
                    g = maxpool_route(g, arg[0], size, hw) if kind == "max" else avgpool_route(g, size, hw)
            g_all[l] = g
            delta[l] = np.where(rec["masks"][l][0], g, 0)
        for l in range(L):
            self._update(l, delta[l], rec["inputs"][l][0])
        self.samples_trained += 1
        if self.trace is not None:
            r = {"x": np.asarray(x)}
            for l in range(L - 1):
                r[f"a{l + 1}"] = rec["pre"][l][0]
                r[f"h{l + 1}"] = rec["h"][l][0]
            r.update({f"a{L}": y, "y": y, "prediction": np.array([prediction]), "e": e, f"delta{L}": delta[L - 1]})
            for l in range(L - 2, -1, -1):
                r[f"g{l + 1}"] = g_all[l]
                r[f"delta{l + 1}"] = delta[l]
            self.trace.append(r)
        return prediction

    def _update(self, l: int, delta, x_in):
        """``W -= sat(round(lr * sum_pos delta x))``, ``b -= sat(round(lr * sum_pos delta))``."""
        cfg, f = self.cfg, self.cfg.formats
        spec = self._specs[l]
        x_frac = cfg.in_format(l).frac_bits
        if self.lr_raw is None:
            lr, lr_frac = 1, cfg.lr_shift[l]
        else:
            lr, lr_frac = self.lr_raw, f.learning_rate.frac_bits
        mode = cfg.rounding_update
        if spec.type == "conv":
            P = conv_weight_grad_sum(delta, x_in, spec.kernel, spec.stride, spec.padding, spec.groups)
            S = delta.sum(axis=(1, 2))
        else:
            P = np.outer(delta, x_in)
            S = delta
        dW = requantize(P * lr, f.delta.frac_bits + lr_frac + x_frac, f.update, mode,
                        stats=self.stats, name=f"dW{l + 1}")
        self.W[l] = saturate(self.W[l] - dW, f.weight, self.stats, f"W{l + 1}")
        self._Wf[l] = self.W[l].astype(np.float64)
        db = requantize(S * lr, f.delta.frac_bits + lr_frac, f.bias, mode, stats=self.stats, name=f"db{l + 1}")
        self.b[l] = saturate(self.b[l] - db, f.bias, self.stats, f"b{l + 1}")

    # ---- epochs ----------------------------------------------------------------------------
    def train_epoch(self, X, labels, progress=None) -> float:
        """Train on every sample of ``X`` (raw input format, ``(N, C, H, W)``) in order;
        returns the training accuracy."""
        correct = 0
        for i in range(len(X)):
            correct += self.train_step(X[i], int(labels[i])) == labels[i]
            if progress is not None:
                progress(i + 1)
        return correct / max(len(X), 1)

    def evaluate(self, X, labels, batch: int = 100) -> float:
        """Accuracy of inference over ``X`` (the same integer operations, batched)."""
        correct = 0
        for i in range(0, len(X), batch):
            out = self._forward(np.asarray(X[i:i + batch]), False)[0]
            correct += int(np.sum(np.argmax(out, axis=1) == np.asarray(labels[i:i + batch])))
        return correct / max(len(X), 1)

    def parameters(self):
        """Copies of (W, b) per conv/dense layer, raw int64."""
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b)]
