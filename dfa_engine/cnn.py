"""Float CNN reference with BP, dense DFA, sparse dilated DFA, module DFA and hybrid training.

The definitions (index formula of the sparse dilated feedback, the two module readings, the
hybrid, the cost counters) are in ``docs/cnn.md``; this docstring is the short version.

Network
    A spec string such as ``"conv16-conv16-mp2-conv32-conv32-mp2-fc10"``: ``convN`` (options
    ``kK`` kernel, default 3, ``sS`` stride, default 1, ``pP`` padding, default ``K // 2``,
    ``gG`` groups, default 1, e.g. ``conv16k5p2g2``), ``mpN`` / ``apN`` (max / average
    pooling, window = stride = N), ``fcN`` (dense; a flatten is implied). Each parametrized
    layer with the activation (ReLU by default) and the pooling layers that follow it is one
    *block*; the last block (``fc10``) is the output layer, without activation.

Training (one step, :meth:`CNN.step`)
    ``e = (softmax(y) - onehot(t)) / N`` (mean cross-entropy over a mini-batch of ``N``). The
    output layer always gets its true gradient. Every other layer ``l`` has a *source*:

    * ``"bp"``: the gradient at its block output (after pooling) is the one propagated by BP
      from the layer above (transposed conv / ``W^T``, through whatever that layer received);
    * ``"dfa"``: the gradient at its activation output ``h_l`` (before pooling) is
      ``g_l = B_l e``, whatever happens above; ``delta_l = g_l * f'(a_l)``.

    ``B_l`` is ``"dense"`` (uniform in ``[-scale, scale)``, ``numel(h_l) x C``) or
    ``"sparse_dilated"`` (:class:`DilatedFeedback`). The network-level methods are patterns
    of sources (:func:`layer_sources`): ``bp``, ``dfa``, ``dfa_sparse_dilated``, ``module_a``
    (each module's top layer ``dfa``, BP inside the module), ``module_b`` (each module's top
    layer ``bp``, i.e. the gradient crosses the module boundary by BP; the other layers of
    the module ``dfa``) and ``hybrid`` (the modules in ``bp_modules`` by BP, the others DFA).

Costs per training sample (:func:`costs`)
    ``backward_macs``: the MACs that form the gradients ``g_l`` of the non-output layers (BP:
    the forward MACs of the layer above, run transposed; pooling routes for free; dense DFA
    ``numel(h_l) * C``; sparse dilated ``numel(h_l) * k`` signed additions). The output
    error, the ``f'`` masks and the weight gradients (the same for every method) are not
    counted. ``feedback_storage_bits``: dense ``numel(h_l) * C * fb_bits``; sparse dilated
    ``Ch * min(d, H) * min(d, W) * k * (ceil(log2 C_g) + 1 [+ shift bits])``; 0 for BP
    layers and for ``storage = "lfsr"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lfsr import LFSRBlock, seed_state

__all__ = ["LayerSpec", "parse_spec", "FeedbackSpec", "CNNConfig", "DilatedFeedback", "CNN",
           "layer_sources", "default_modules", "costs", "true_gradient_layers", "METHODS"]

METHODS = ("bp", "dfa", "dfa_sparse_dilated", "module_a", "module_b", "hybrid")


# ---- network spec ----------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    kind: str              # conv, fc, maxpool, avgpool
    n: int                 # output channels / features, or pool size
    k: int = 3
    stride: int = 1
    pad: int = 1
    groups: int = 1


_CONV = re.compile(r"^conv(\d+)((?:[kspg]\d+)*)$")


def parse_spec(spec: str) -> list:
    """``"conv8-mp2-conv16-mp2-fc10"`` -> list of :class:`LayerSpec` (see the module docstring)."""
    out = []
    for tok in spec.split("-"):
        m = _CONV.match(tok)
        if m:
            opts = dict((o[0], int(o[1:])) for o in re.findall(r"[kspg]\d+", m.group(2)))
            k = opts.get("k", 3)
            out.append(LayerSpec("conv", int(m.group(1)), k, opts.get("s", 1), opts.get("p", k // 2),
                                 opts.get("g", 1)))
        elif re.match(r"^mp\d+$", tok):
            out.append(LayerSpec("maxpool", int(tok[2:])))
        elif re.match(r"^ap\d+$", tok):
            out.append(LayerSpec("avgpool", int(tok[2:])))
        elif re.match(r"^fc\d+$", tok):
            out.append(LayerSpec("fc", int(tok[2:])))
        else:
            raise ValueError(f"cannot parse layer {tok!r} of {spec!r}")
    if not out or out[-1].kind != "fc":
        raise ValueError(f"{spec!r}: the last layer must be fcN (the output layer)")
    if out[0].kind not in ("conv", "fc"):
        raise ValueError(f"{spec!r}: the first layer must be conv or fc")
    return out


# ---- configuration ----------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackSpec:
    """Feedback of the DFA layers.

    ``kind``: ``"dense"`` or ``"sparse_dilated"``. Dense: uniform in ``[-scale, scale)``,
    stored with ``bits`` bits per entry. Sparse dilated: ``k`` taps per output position,
    lattice dilation ``d``, ``groups`` channel/class groups, values ``"pm1"`` (``+-scale``) or
    ``"pow2"`` (``+-scale * 2^-s``, ``0 <= s <= max_shift``). ``storage``: ``"table"`` or
    ``"lfsr"`` (regenerated: 0 bits). ``seed``: the LFSR seed (stream = layer index).
    """

    kind: str = "dense"
    k: int = 1
    d: int = 2
    groups: int = 1
    values: str = "pm1"
    max_shift: int = 3
    scale: float = 1.0
    bits: int = 8
    storage: str = "table"
    seed: int = 1


@dataclass(frozen=True)
class CNNConfig:
    """A network and how it is trained.

    ``modules``: lists of parametrized-layer indices (0-based, output layer excluded), e.g.
    ``((0, 1), (2, 3))``; default: the conv layers split at the pooling layers.
    ``sources``: explicit per-layer sources (``"bp"``/``"dfa"``, output excluded); overrides
    ``method``. ``bp_modules``: the modules trained by BP in ``hybrid`` (default: the last).
    """

    spec: str = "conv8-mp2-conv16-mp2-fc10"
    in_shape: tuple = (1, 28, 28)
    n_classes: int = 10
    activation: str = "relu"
    method: str = "bp"
    feedback: FeedbackSpec = field(default_factory=FeedbackSpec)
    modules: tuple | None = None
    bp_modules: tuple | None = None
    sources: tuple | None = None
    lr: float = 0.05
    batch_size: int = 16
    seed: int = 0

    def with_(self, **kw) -> "CNNConfig":
        return replace(self, **kw)

    @property
    def layers(self) -> list:
        return parse_spec(self.spec)


def _param_layers(cfg: CNNConfig) -> list:
    return [s for s in cfg.layers if s.kind in ("conv", "fc")]


def default_modules(cfg: CNNConfig) -> tuple:
    """Parametrized layers (output excluded) grouped at pooling layers and at the first fc."""
    modules, cur, idx = [], [], -1
    for s in cfg.layers[:-1]:
        if s.kind in ("conv", "fc"):
            idx += 1
            if s.kind == "fc" and cur:
                modules.append(tuple(cur))
                cur = []
            cur.append(idx)
        elif cur:
            modules.append(tuple(cur))
            cur = []
    if cur:
        modules.append(tuple(cur))
    return tuple(modules)


def layer_sources(cfg: CNNConfig) -> tuple:
    """Per non-output parametrized layer: ``"bp"`` or ``"dfa"`` (see the module docstring)."""
    n = len(_param_layers(cfg)) - 1
    if cfg.sources is not None:
        if len(cfg.sources) != n or any(s not in ("bp", "dfa") for s in cfg.sources):
            raise ValueError(f"sources must be {n} of 'bp'/'dfa', not {cfg.sources!r}")
        return tuple(cfg.sources)
    m = cfg.method
    modules = cfg.modules if cfg.modules is not None else default_modules(cfg)
    if m == "bp":
        return ("bp",) * n
    if m in ("dfa", "dfa_sparse_dilated"):
        return ("dfa",) * n
    src = ["dfa"] * n
    if m == "module_a":
        src = ["bp"] * n
        for mod in modules:
            src[max(mod)] = "dfa"
    elif m == "module_b":
        for mod in modules:
            src[max(mod)] = "bp"
    elif m == "hybrid":
        bp_mods = cfg.bp_modules if cfg.bp_modules is not None else (len(modules) - 1,)
        for i in bp_mods:
            for l in modules[i]:
                src[l] = "bp"
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {m!r}")
    return tuple(src)


def feedback_kind(cfg: CNNConfig) -> str:
    if cfg.method == "dfa":
        return "dense"
    if cfg.method == "dfa_sparse_dilated":
        return "sparse_dilated"
    return cfg.feedback.kind


# ---- sparse dilated feedback --------------------------------------------------------------

class DilatedFeedback:
    """Sparse feedback of one layer whose taps lie on a lattice of dilation ``d``.

    For a layer output of shape ``(Ch, H, W)``, ``C`` classes and ``G`` groups:

    * channel group of ``ch``: ``gi = ch // (Ch / G)``; its classes are
      ``c0 = floor(gi * C / G) .. c1 = floor((gi + 1) * C / G) - 1`` (``C_g = c1 - c0 + 1``);
    * phase of ``(y, x)``: ``(u, v) = (y mod d, x mod d)``; row ``r = (ch * d + u) * d + v``
      of a ``Ch * d * d`` x ``k`` table;
    * row ``r`` takes the LFSR draws ``w_{r,0} .. w_{r,k-1}`` (stream ``seed_state(seed,
      layer)``, draws in row-major order); entry ``m``: class
      ``c = c0 + (base + m) mod C_g`` with ``base = ((w_{r,0} & 0xFFFF) * C_g) >> 16``;
      sign ``(w_{r,m} >> 16) & 1``; for ``pow2`` the shift
      ``s = (((w_{r,m} >> 17) & 0x7FFF) * (max_shift + 1)) >> 15``;
    * ``g[ch, y, x] = sum_m (-1)^sign * scale * 2^-s * e[c]``.

    This is a grouped convolution (``G`` groups, ``d x d`` kernel ``K[ch, c, u, v]``, ``k``
    nonzeros per ``(ch, u, v)``) of the ``C``-channel error image that holds ``e`` at every
    lattice point ``(y, x) = (0, 0) mod d`` and zeros between them, i.e. a dilated
    (transposed) convolution with dilation ``d``: each output position sees exactly one
    lattice point, at offset ``(u, v)``. ``k`` signed additions per element, no multiplier.
    """

    def __init__(self, shape, n_classes: int, fb: FeedbackSpec, layer: int):
        ch, h, w = shape
        if fb.groups < 1 or ch % fb.groups or fb.groups > n_classes:
            raise ValueError(f"feedback groups {fb.groups} must divide the channels {ch} and be <= {n_classes}")
        self.shape, self.C, self.fb, self.layer = tuple(shape), n_classes, fb, layer
        d, G, C = fb.d, fb.groups, n_classes
        rows = ch * d * d
        gi = (np.arange(ch) // (ch // G)).repeat(d * d)
        c0 = (gi * C) // G
        cg = ((gi + 1) * C) // G - c0
        if fb.k > cg.min():
            raise ValueError(f"feedback k = {fb.k} exceeds the {cg.min()} classes of a group")
        words = LFSRBlock(seed_state(fb.seed, layer)).draws(rows * fb.k).reshape(rows, fb.k).astype(np.int64)
        base = ((words[:, :1] & 0xFFFF) * cg[:, None]) >> 16
        self.index = c0[:, None] + (base + np.arange(fb.k)) % cg[:, None]        # (rows, k)
        sign = (words >> 16) & 1
        if fb.values == "pm1":
            shift = np.zeros_like(words)
        elif fb.values == "pow2":
            shift = (((words >> 17) & 0x7FFF) * (fb.max_shift + 1)) >> 15
        else:
            raise ValueError(f"feedback values must be pm1 or pow2, not {fb.values!r}")
        self.sign, self.shift = sign, shift
        self.value = np.where(sign == 1, -1.0, 1.0) * fb.scale * 2.0 ** -shift      # (rows, k)
        K = np.zeros((rows, C))
        np.add.at(K, (np.arange(rows)[:, None].repeat(fb.k, 1), self.index), self.value)
        self.K = torch.as_tensor(K, dtype=torch.float32)                           # (Ch*d*d, C)

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        """``e`` (N, C) -> ``g`` (N, Ch, H, W)."""
        ch, h, w = self.shape
        d = self.fb.d
        p = (e @ self.K.T).reshape(-1, ch, d, d)
        return p.repeat(1, 1, -(-h // d), -(-w // d))[:, :, :h, :w]

    def reference_matrix(self) -> np.ndarray:
        """The operator as a dense ``(Ch*H*W) x C`` matrix, built element by element from the
        index formula (slow; for the tests)."""
        ch, h, w = self.shape
        d = self.fb.d
        M = np.zeros((ch * h * w, self.C))
        for c in range(ch):
            for y in range(h):
                for x in range(w):
                    r = (c * d + y % d) * d + x % d
                    for m in range(self.fb.k):
                        M[(c * h + y) * w + x, self.index[r, m]] += self.value[r, m]
        return M

    def storage_bits(self) -> int:
        ch, h, w = self.shape
        d, fb = self.fb.d, self.fb
        cg = self.C // fb.groups + (1 if self.C % fb.groups else 0)
        entry = max(1, math.ceil(math.log2(cg))) + 1
        if fb.values == "pow2":
            entry += max(1, math.ceil(math.log2(fb.max_shift + 1)))
        return ch * min(d, h) * min(d, w) * fb.k * entry


class DenseFeedback:
    """Dense ``B_l``: ``numel(h_l) x C`` entries uniform in ``[-scale, scale)`` (NumPy
    ``default_rng((seed, layer))``)."""

    def __init__(self, shape, n_classes: int, fb: FeedbackSpec, layer: int):
        self.shape, self.C, self.fb = tuple(shape), n_classes, fb
        n = int(np.prod(shape))
        B = np.random.default_rng((fb.seed, layer)).uniform(-fb.scale, fb.scale, size=(n, n_classes))
        self.B = torch.as_tensor(B, dtype=torch.float32)

    def __call__(self, e):
        return (e @ self.B.T).reshape(-1, *self.shape)

    def storage_bits(self) -> int:
        return int(np.prod(self.shape)) * self.C * self.fb.bits


# ---- the network -----------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, spec, in_shape, post, activation, is_output):
        super().__init__()
        self.spec, self.in_shape, self.is_output = spec, tuple(in_shape), is_output
        self.flatten_in = spec.kind == "fc" and len(in_shape) == 3
        if spec.kind == "conv":
            c, h, w = in_shape
            self.layer = nn.Conv2d(c, spec.n, spec.k, spec.stride, spec.pad, groups=spec.groups)
            ho = (h + 2 * spec.pad - spec.k) // spec.stride + 1
            wo = (w + 2 * spec.pad - spec.k) // spec.stride + 1
            self.out_shape = (spec.n, ho, wo)
            self.fwd_macs = spec.n * ho * wo * (c // spec.groups) * spec.k * spec.k
        else:
            n_in = int(np.prod(in_shape))
            self.layer = nn.Linear(n_in, spec.n)
            self.out_shape = (spec.n,)
            self.fwd_macs = spec.n * n_in
        self.post = list(post)
        shp = self.out_shape
        for p in self.post:
            if len(shp) != 3:
                raise ValueError("pooling after a dense layer")
            shp = (shp[0], shp[1] // p.n, shp[2] // p.n)
        self.block_out_shape = shp
        self.activation = activation

    def act(self, a):
        if self.is_output:
            return a
        if self.activation == "relu":
            return F.relu(a)
        if self.activation == "hardtanh":
            return F.hardtanh(a)
        raise ValueError(f"activation must be relu or hardtanh, not {self.activation!r}")

    def forward(self, x):
        """Returns (h, out): the activation output and the block output (after pooling)."""
        if self.flatten_in:
            x = x.flatten(1)
        h = self.act(self.layer(x))
        out = h
        for p in self.post:
            out = F.max_pool2d(out, p.n) if p.kind == "maxpool" else F.avg_pool2d(out, p.n)
        return h, out


class CNN(nn.Module):
    """The network of a :class:`CNNConfig`, trained by :meth:`step` (see the module docstring).

    Initial weights: PyTorch's default initialisation after ``torch.manual_seed(cfg.seed)``,
    so every method of the same spec and seed starts from the same weights.
    """

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        layers = cfg.layers
        blocks, shape, i = [], tuple(cfg.in_shape), 0
        while i < len(layers):
            spec = layers[i]
            j = i + 1
            while j < len(layers) and layers[j].kind in ("maxpool", "avgpool"):
                j += 1
            b = _Block(spec, shape, layers[i + 1:j], cfg.activation, j == len(layers))
            blocks.append(b)
            shape = b.block_out_shape
            i = j
        if blocks[-1].out_shape != (cfg.n_classes,):
            raise ValueError(f"the output layer must have {cfg.n_classes} features")
        self.blocks = nn.ModuleList(blocks)
        self.sources = layer_sources(cfg)
        kind = feedback_kind(cfg)
        fb = replace(cfg.feedback, kind=kind)
        self.feedback_spec = fb
        self.feedback = {}
        for l, s in enumerate(self.sources):
            if s == "dfa":
                shp = blocks[l].out_shape if len(blocks[l].out_shape) == 3 else (blocks[l].out_shape[0], 1, 1)
                cls = DilatedFeedback if kind == "sparse_dilated" else DenseFeedback
                self.feedback[l] = cls(shp, cfg.n_classes, fb, l)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)[1]
        return x

    def project(self, l: int, e: torch.Tensor) -> torch.Tensor:
        """``g_l = B_l e`` shaped like layer ``l``'s activation output."""
        g = self.feedback[l](e)
        return g.reshape(-1, *self.blocks[l].out_shape)

    def gradients(self, x, y):
        """One forward and backward pass; returns (loss, logits, e, {param: grad}, deltas) where
        ``deltas[l]`` is the gradient at layer ``l``'s pre-activation (``delta_l``)."""
        ins, hs, outs, pres = [], [], [], []
        cur = x
        for b in self.blocks:
            xin = cur.detach().requires_grad_(True)
            if b.flatten_in:
                xf = xin.flatten(1)
            else:
                xf = xin
            a = b.layer(xf)
            a.retain_grad()
            h = b.act(a)
            out = h
            for p in b.post:
                out = F.max_pool2d(out, p.n) if p.kind == "maxpool" else F.avg_pool2d(out, p.n)
            ins.append(xin), hs.append(h), outs.append(out), pres.append(a)
            cur = out
        logits = outs[-1]
        n = x.shape[0]
        loss = F.cross_entropy(logits, y)
        e = (torch.softmax(logits.detach(), 1) - F.one_hot(y, self.cfg.n_classes).to(logits.dtype)) / n
        grads, deltas = {}, {}
        L = len(self.blocks)
        carry = None
        for l in range(L - 1, -1, -1):
            b = self.blocks[l]
            if l == L - 1:
                target, g = outs[l], e
            elif self.sources[l] == "bp":
                target, g = outs[l], carry
            else:
                target, g = hs[l], self.project(l, e)
            need_in = l > 0 and self.sources[l - 1] == "bp"
            wrt = [b.layer.weight, b.layer.bias, pres[l]] + ([ins[l]] if need_in else [])
            res = torch.autograd.grad(target, wrt, g)
            grads[b.layer.weight], grads[b.layer.bias] = res[0], res[1]
            deltas[l] = res[2]
            carry = res[3] if need_in else None
        return loss.detach(), logits.detach(), e, grads, deltas

    def step(self, x, y, lr=None):
        """One SGD step (no momentum); returns the loss."""
        lr = self.cfg.lr if lr is None else lr
        loss, _, _, grads, _ = self.gradients(x, y)
        with torch.no_grad():
            for p, g in grads.items():
                p.sub_(lr * g)
        return float(loss)

    @torch.no_grad()
    def evaluate(self, x, y, batch=500) -> float:
        correct = 0
        for i in range(0, len(x), batch):
            correct += int((self(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
        return correct / len(x)

    def train_epoch(self, x, y) -> float:
        """One epoch of mini-batch SGD, samples in data-set order; returns the mean loss
        (``nan`` when training diverged)."""
        bs, total, nb = self.cfg.batch_size, 0.0, 0
        for i in range(0, len(x), bs):
            total += self.step(x[i:i + bs], y[i:i + bs])
            nb += 1
            if not math.isfinite(total):
                return float("nan")
        return total / nb


# ---- costs ----------------------------------------------------------------------------------

def costs(net: CNN) -> dict:
    """Per-sample error-propagation MACs and feedback storage (see the module docstring)."""
    blocks, C = net.blocks, net.cfg.n_classes
    fb = net.feedback_spec
    per_layer = []
    for l, s in enumerate(net.sources):
        n = int(np.prod(blocks[l].out_shape))
        if s == "bp":
            macs, bits = blocks[l + 1].fwd_macs, 0
        elif fb.kind == "sparse_dilated":
            macs = n * fb.k
            bits = 0 if fb.storage == "lfsr" else net.feedback[l].storage_bits()
        else:
            macs = n * C
            bits = 0 if fb.storage == "lfsr" else net.feedback[l].storage_bits()
        per_layer.append({"layer": l, "kind": blocks[l].spec.kind, "source": s, "backward_macs": macs,
                          "feedback_storage_bits": bits})
    return {
        "backward_macs": sum(r["backward_macs"] for r in per_layer),
        "feedback_storage_bits": sum(r["feedback_storage_bits"] for r in per_layer),
        "forward_macs": sum(b.fwd_macs for b in blocks),
        "per_layer": per_layer,
    }


def true_gradient_layers(net: CNN) -> list:
    """Per non-output layer: True when its delta is the true gradient (BP all the way down
    from the output), False when it depends on a feedback matrix."""
    out, above_true = [], True
    for l in range(len(net.sources) - 1, -1, -1):
        t = net.sources[l] == "bp" and above_true
        out.append(t)
        above_true = t
    return out[::-1]
