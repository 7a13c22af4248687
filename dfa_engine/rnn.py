"""Float Elman RNN reference: BPTT, truncated BPTT, DFA through time (dense / sparse feedback),
hybrid and time-module training, with manual gradients (definitions: ``docs/rnn.md``).

Network (one recurrent layer, ``H`` neurons, inputs ``I``, outputs ``O``; ``h_0 = 0``)::

    a_t = W_xh x_t + W_hh h_{t-1} + b_h,   h_t = f(a_t)     (f = tanh or hardtanh)
    y_s = W_hy h_s + b_y                                      (s = T, or every s: ``readout``)

``cell = "leaky"``: each neuron keeps a fixed fraction of its state (a leaky integrator,
``alpha_i = 2^-s_i`` with ``s_i = i mod (leak_max_shift + 1)``: every time constant from 1
to ``2^leak_max_shift`` steps, equally often, no storage (the definition is
:func:`dfa_engine.rnn_config.leak_shifts`); in fixed point a shift and an add,
``docs/numerics.md`` 13.9)::

    h_t = h_{t-1} + alpha * (f(a_t) - h_{t-1})                 (Elman: alpha = 1)

Loss: mean cross-entropy (``loss = "xent"``) or mean ``0.5 * |y - target|^2`` (``"mse"``),
averaged over the batch (and over the ``T`` steps with ``readout = "every"``). ``e_s = dL/dy_s``
(``(softmax(y_s) - onehot) / N`` resp. ``(y_s - target) / N``, divided by ``T`` as well with
``readout = "every"``; ``e_s = 0`` at steps without a readout). The output layer always gets
its true gradient ``dW_hy = sum_s e_s^T h_s``. The recurrent layer gets
``delta_t = g_t * alpha * f'(a_t)`` (``g_t`` = what reaches ``h_t``; ``alpha = 1`` for Elman) and
``dW_xh = sum_t delta_t^T x_t``, ``dW_hh = sum_t delta_t^T h_{t-1}``, ``db_h = sum_t delta_t``.
What ``g_t`` is, per ``method`` (``P_s = W_hy^T e_s``, the output layer's true error at ``h_s``;
``D(v) = B v``, the feedback projection, ``B`` an ``H x O`` matrix; ``w`` = ``window``):

* ``bptt``: the true gradient, ``g_t = P_t + W_hh^T delta_{t+1} + (1 - alpha) * g_{t+1}`` (full
  backward pass through time; the last term only for the leaky cell).
* ``tbptt`` (``bptt_steps = k``): every ``P_s`` is carried back through at most ``k - 1``
  transitions (``g_t = sum_{s = t}^{t + k - 1} J_{s->t} P_s``; Williams & Peng's BPTT(k)).
* ``dfa`` / ``dfa_sparse``: ``g_t = B (sum_{s = t}^{t + w - 1} e_s)``: the error that arrives at
  step ``s`` is projected straight to the hidden state of steps ``s - w + 1 .. s``; no ``W_hh^T``,
  no ``W_hy^T``. ``window = "all"`` (``w = T``), ``"last"`` (``w = 1``) or an int. With a last-step
  readout and ``"all"``: ``delta_t = (B e_T) * f'(a_t)`` for every ``t``.
  ``window = "trace"``: each neuron's own eligibility trace (e-prop, Bellec et al. 2020, with
  the DFA projection as its learning signal): ``g_t = sum_{s >= t} (1 - alpha)^{s - t} * B e_s``,
  the part of ``dh_s / dtheta`` that runs through the neuron's leak, ignoring ``W_hh``. It is
  computed forward in time as a trace per weight, or, as here, from per-neuron scalars
  (with a last-step readout ``g_t = (1 - alpha)^{T - t} * B e_T``: a fixed per-neuron window);
  never through ``W_hh^T``. For the Elman cell it is ``"last"``.
* ``hybrid`` (``bptt_steps = k >= 1``): the true truncated gradient for the ``k`` steps up to each
  error (``tbptt`` with ``k``) plus the DFA projection for the older steps of the window:
  ``g_t = sum_{s=t}^{t+k-1} J_{s->t} P_s + B sum_{s = t + k}^{t + w - 1} e_s``. ``k = 1`` is
  "BP for the output layer, DFA elsewhere" and still has no backward pass through time.
* ``module`` (``bptt_steps = m``): time modules: the sequence is cut into chunks of ``m`` steps,
  the last chunk ending at ``T``. Inside a chunk, true BPTT; the true errors ``P_s`` enter at their
  own step; the last step of every chunk also receives ``B (sum_{s > end} e_s)``, the errors of
  the later chunks by the feedback path (reading (a) of ``docs/cnn.md``, in time).

``feedback.kind``: ``"dense"`` (the project's LFSR dense feedback, :func:`dfa_engine.feedback.
feedback_matrix`, format ``s0.7``: uniform in [-1, 1)), ``"sparse"`` (the project's sparse
(index, sign[, shift]) lists, :func:`dfa_engine.feedback.sparse_feedback`, ``k`` nonzeros per
hidden neuron, applied as a gather-and-add) or ``"output"`` (``B = W_hy^T``, the output layer's
current weights: not a fixed random matrix, stored nowhere). ``feedback.scale`` multiplies
``B`` (dense / sparse). The recurrent layer is stream 0 of the feedback seed.

Optimizer: plain SGD on mini-batches (samples in data-set order), one learning rate, optional
global-norm gradient clipping (``clip``; the same for every method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .rnn_config import MAX_LEAK_SHIFT, leak_shifts

__all__ = ["RNNFeedback", "RNNConfig", "RNN", "costs", "METHODS", "feedback_engine_config", "adding_task", "load_task",
           "TASKS"]

METHODS = ("bptt", "tbptt", "dfa", "dfa_sparse", "hybrid", "module")
DENSE_FEEDBACK_FORMAT = "s0.7"


@dataclass(frozen=True)
class RNNFeedback:
    """``kind``: dense | sparse | output; ``k``, ``values`` (pm1 | pow2), ``max_shift`` and
    ``seed`` as in the engine's ``[feedback]``; ``scale`` multiplies ``B``; ``bits`` per dense
    entry (8: ``s0.7``); ``storage``: table | lfsr (0 bits)."""

    kind: str = "dense"
    k: int = 1
    values: str = "pm1"
    max_shift: int = 3
    scale: float = 1.0
    bits: int = 8
    storage: str = "table"
    seed: int = 1


@dataclass(frozen=True)
class RNNConfig:
    n_in: int = 28
    hidden: int = 128
    n_out: int = 10
    activation: str = "tanh"          # tanh | hardtanh
    readout: str = "last"             # last | every
    loss: str = "xent"                # xent | mse
    method: str = "bptt"
    window: object = "all"            # all | last | trace | int (DFA projection window)
    bptt_steps: int = 1               # tbptt: k; hybrid: k; module: chunk length
    feedback: RNNFeedback = field(default_factory=RNNFeedback)
    lr: float = 0.1
    batch_size: int = 16
    clip: float | None = None
    seed: int = 0
    cell: str = "elman"               # elman | leaky
    leak_max_shift: int = 5           # leaky: alpha_i = 2^-s_i, s_i in 0 .. leak_max_shift

    def with_(self, **kw) -> "RNNConfig":
        return replace(self, **kw)


def window_steps(cfg: RNNConfig, T: int) -> int:
    """Steps that receive a delta from one error (the trace window reaches back to step 1)."""
    w = cfg.window
    if w == "trace":
        return T if cfg.cell == "leaky" else 1
    if w == "all":
        return T
    if w == "last":
        return 1
    w = int(w)
    if w < 1:
        raise ValueError(f"window must be 'all', 'last' or >= 1, not {cfg.window!r}")
    return min(w, T)


def feedback_engine_config(cfg: RNNConfig):
    """An :class:`~dfa_engine.config.EngineConfig` whose layer 0 is the recurrent layer
    (``n_in - hidden - n_out``), so that the project's feedback generator makes its ``B``."""
    from .config import FeedbackConfig, default_config
    from .fixed import FixedFormat

    fb = cfg.feedback
    base = default_config()
    formats = base.formats
    if fb.kind == "dense":
        formats = replace(formats, feedback=FixedFormat.parse(DENSE_FEEDBACK_FORMAT))
        fc = FeedbackConfig(kind="dense", k=1, values="fixed", seed=fb.seed, storage=fb.storage)
    else:
        fc = FeedbackConfig(kind="sparse", k=fb.k, values=fb.values,
                            max_shift=fb.max_shift if fb.values == "pow2" else 0, seed=fb.seed, storage=fb.storage)
    return base.with_(layers=(cfg.n_in, cfg.hidden, cfg.n_out), methods=("dfa",), lr_shift=(0, 0),
                      feedback=fc, formats=formats)


class SparseProjection:
    """``g = B v`` with ``B`` given as per-row (index, value) lists: ``k`` gathers and signed
    (shifted) additions per hidden neuron, no multiplier for ``pm1``/``pow2``."""

    def __init__(self, index: np.ndarray, value: np.ndarray):
        self.index = torch.as_tensor(index, dtype=torch.long)        # (H, k)
        self.value = torch.as_tensor(value, dtype=torch.float32)     # (H, k)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` (..., O) -> (..., H)."""
        return (v[..., self.index] * self.value).sum(-1)

    def dense(self, n_cols: int) -> torch.Tensor:
        H, k = self.index.shape
        B = torch.zeros(H, n_cols)
        B.index_put_((torch.arange(H)[:, None].expand(H, k), self.index), self.value, accumulate=True)
        return B


def _act(name):
    if name == "tanh":
        return torch.tanh, lambda a, h: 1.0 - h * h
    if name == "hardtanh":
        return (lambda a: a.clamp(-1.0, 1.0)), (lambda a, h: ((a > -1.0) & (a < 1.0)).to(a.dtype))
    raise ValueError(f"activation must be tanh or hardtanh, not {name!r}")


class RNN:
    """Parameters, forward pass and the manual gradients of every method.

    Initial weights: ``torch.Generator().manual_seed(seed)``, every entry uniform in
    ``+-1/sqrt(H)`` (PyTorch's ``nn.RNN`` init), drawn in the order W_xh, W_hh, b_h, W_hy, b_y,
    so every method of the same shape and seed starts from the same weights (the leaky cell's
    included: its shifts are not drawn).
    """

    def __init__(self, cfg: RNNConfig):
        if cfg.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
        if cfg.readout not in ("last", "every") or cfg.loss not in ("xent", "mse"):
            raise ValueError("readout must be last|every and loss xent|mse")
        if cfg.cell not in ("elman", "leaky"):
            raise ValueError(f"cell must be elman or leaky, not {cfg.cell!r}")
        if cfg.window == "trace" and cfg.method not in ("dfa", "dfa_sparse"):
            raise ValueError(f"window 'trace' is a DFA window; method {cfg.method!r} has none")
        self.cfg = cfg
        H, I, O = cfg.hidden, cfg.n_in, cfg.n_out
        g = torch.Generator().manual_seed(cfg.seed)
        bound = 1.0 / math.sqrt(H)

        def u(*shape):
            return (torch.rand(*shape, generator=g) * 2 - 1) * bound

        self.W_xh, self.W_hh, self.b_h = u(H, I), u(H, H), u(H)
        self.W_hy, self.b_y = u(O, H), u(O)
        if cfg.cell == "leaky":
            if not 0 <= cfg.leak_max_shift <= MAX_LEAK_SHIFT:
                raise ValueError(f"leak_max_shift {cfg.leak_max_shift} is out of range; must be 0 .. {MAX_LEAK_SHIFT}")
            self.leak_shift = torch.tensor(leak_shifts(H, cfg.leak_max_shift))
        else:
            self.leak_shift = torch.zeros(H, dtype=torch.long)
        self.alpha = 2.0 ** -self.leak_shift.to(torch.float32)     # (H,), 1 for Elman
        self.keep = 1.0 - self.alpha                                # the state a step keeps
        self.f, self.fprime = _act(cfg.activation)
        self.B = None          # dense (H, O) tensor, scale included
        self.sparse = None     # SparseProjection
        if self.uses_feedback:
            self._make_feedback()

    # ---- feedback ------------------------------------------------------------------
    @property
    def feedback_kind(self) -> str:
        if self.cfg.method == "dfa_sparse":
            return "sparse"
        return self.cfg.feedback.kind

    @property
    def uses_feedback(self) -> bool:
        return self.cfg.method in ("dfa", "dfa_sparse", "hybrid", "module")

    def _make_feedback(self):
        from .feedback import feedback_matrix, sparse_feedback

        fb = replace(self.cfg.feedback, kind=self.feedback_kind)
        kind = fb.kind
        if kind == "output":
            return
        ecfg = feedback_engine_config(self.cfg.with_(feedback=fb))
        if kind == "dense":
            raw = feedback_matrix(ecfg, 0)
            B = ecfg.formats.feedback.to_float(raw) * fb.scale
            self.B = torch.as_tensor(B, dtype=torch.float32)
        elif kind == "sparse":
            sp = sparse_feedback(ecfg, 0)
            value = np.where(sp.sign == 1, -1.0, 1.0) * 2.0 ** -sp.shift * fb.scale
            self.sparse = SparseProjection(sp.index, value)
        else:
            raise ValueError(f"feedback kind must be dense, sparse or output, not {kind!r}")

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``B v`` for ``v`` of shape (..., O) -> (..., H)."""
        kind = self.feedback_kind
        if kind == "output":
            return v @ self.W_hy
        if kind == "sparse":
            return self.sparse(v)
        return v @ self.B.T

    def feedback_dense(self) -> torch.Tensor:
        """``B`` as a dense (H, O) matrix (for tests and the docs)."""
        kind = self.feedback_kind
        if kind == "output":
            return self.W_hy.T.clone()
        if kind == "sparse":
            return self.sparse.dense(self.cfg.n_out)
        return self.B

    # ---- parameters --------------------------------------------------------------------
    def params(self) -> dict:
        return {"W_xh": self.W_xh, "W_hh": self.W_hh, "b_h": self.b_h, "W_hy": self.W_hy, "b_y": self.b_y}

    def forward(self, x: torch.Tensor) -> dict:
        """``x`` (N, T, I) -> cache with time-major ``a`` (T, N, H), ``h`` (T+1, N, H; ``h[0] = 0``),
        ``y`` (T, N, O) for ``readout = "every"`` else (1, N, O), ``fa`` (T, N, H) = ``f(a)``."""
        N, T, _ = x.shape
        xs = x.transpose(0, 1)                                       # (T, N, I)
        xw = xs @ self.W_xh.T + self.b_h
        h = torch.zeros(T + 1, N, self.cfg.hidden)
        a = torch.empty(T, N, self.cfg.hidden)
        fa = torch.empty(T, N, self.cfg.hidden)
        leaky = self.cfg.cell == "leaky"
        for t in range(T):
            a[t] = xw[t] + h[t] @ self.W_hh.T
            fa[t] = self.f(a[t])
            h[t + 1] = h[t] + self.alpha * (fa[t] - h[t]) if leaky else fa[t]
        hy = h[1:] if self.cfg.readout == "every" else h[-1:]
        y = hy @ self.W_hy.T + self.b_y
        return {"x": xs, "a": a, "h": h, "y": y, "fa": fa}

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The network's prediction: the last step's output (N, O)."""
        return self.forward(x)["y"][-1]

    def output_error(self, cache, target):
        """(loss, E): ``E`` (T, N, O), ``E[s] = dL/dy_s`` (zero where there is no readout)."""
        y = cache["y"]
        R, N, O = y.shape
        T = cache["a"].shape[0]
        if self.cfg.loss == "xent":
            tgt = target if target.dim() == 2 else target[None].expand(R, N) if R > 1 else target[None]
            if tgt.shape[0] != R:
                tgt = tgt.T
            logp = torch.log_softmax(y, -1)
            loss = -logp.gather(-1, tgt[..., None]).mean()
            e = (logp.exp() - torch.nn.functional.one_hot(tgt, O).to(y.dtype)) / (N * R)
        else:
            tgt = target
            if R > 1 and tgt.dim() == 3:
                tgt = tgt.transpose(0, 1)
            diff = y - tgt
            loss = 0.5 * (diff ** 2).sum(-1).mean()
            e = diff / (N * R)
        if R == T:
            return float(loss), e
        E = torch.zeros(T, N, O)
        E[-1] = e[0]
        return float(loss), E

    # ---- the recurrent layer's deltas ---------------------------------------------------
    def _walk(self, delta, P, fp, k, readout_steps):
        """Truncated BPTT: every ``P[s]`` goes back through at most ``k - 1`` transitions
        (``fp`` = ``alpha * f'(a)``)."""
        for s in readout_steps:
            u = P[s]
            for j in range(k):
                t = s - j
                if t < 0:
                    break
                d = u * fp[t]
                delta[t] += d
                if j + 1 < k:
                    u = d @ self.W_hh + self.keep * u
        return delta

    def _trace_sum(self, E):
        """``G[t] = sum_{s >= t} keep^{s - t} * B e_s`` by ``G[t] = B e_t + keep * G[t + 1]``."""
        PE = self.project(E)
        G = torch.zeros_like(PE)
        acc = torch.zeros_like(PE[0])
        for t in range(E.shape[0] - 1, -1, -1):
            acc = PE[t] + self.keep * acc
            G[t] = acc
        return G

    def _window_sum(self, E, lo, hi):
        """``S[t] = sum_{s = t + lo}^{t + hi} E[s]`` (clipped to the sequence), from a suffix sum."""
        T = E.shape[0]
        suffix = torch.zeros((T + 1,) + tuple(E.shape[1:]))
        suffix[:T] = E.flip(0).cumsum(0).flip(0)
        t = torch.arange(T)
        a = (t + lo).clamp(max=T)
        b = (t + hi + 1).clamp(max=T)
        if lo > hi:
            return torch.zeros_like(E)
        return suffix[a] - suffix[b]

    def hidden_deltas(self, cache, E) -> torch.Tensor:
        """``delta_t`` (T, N, H) of the recurrent layer for the configured method."""
        cfg = self.cfg
        a = cache["a"]
        T = a.shape[0]
        fp = self.alpha * self.fprime(a, cache["fa"])                  # dh_t / da_t
        delta = torch.zeros_like(a)
        readout_steps = list(range(T)) if cfg.readout == "every" else [T - 1]
        m = cfg.method
        if m in ("bptt", "tbptt", "hybrid", "module"):
            P = E @ self.W_hy                                            # (T, N, H): W_hy^T e_s
        if m == "bptt":
            carry = torch.zeros_like(a[0])
            for t in range(T - 1, -1, -1):
                g = P[t] + carry
                d = g * fp[t]
                delta[t] = d
                carry = d @ self.W_hh + self.keep * g
            return delta
        if m == "tbptt":
            return self._walk(delta, P, fp, max(1, cfg.bptt_steps), readout_steps)
        w = window_steps(cfg, T)
        if m in ("dfa", "dfa_sparse"):
            if cfg.window == "trace":
                return self._trace_sum(E) * fp
            return self.project(self._window_sum(E, 0, w - 1)) * fp
        if m == "hybrid":
            k = max(1, cfg.bptt_steps)
            self._walk(delta, P, fp, k, readout_steps)
            if w > k:
                delta += self.project(self._window_sum(E, k, w - 1)) * fp
            return delta
        # module: chunks of m steps, the last one ending at T - 1
        mlen = max(1, cfg.bptt_steps)
        ends = set(range(T - 1, -1, -mlen))
        later = self._window_sum(E, 1, T)                               # sum of the errors after t
        carry = torch.zeros_like(a[0])
        for t in range(T - 1, -1, -1):
            g = P[t] + carry
            if t in ends and t < T - 1:
                g = g + self.project(later[t])
            d = g * fp[t]
            delta[t] = d
            # step t opens its chunk when t - 1 ends the previous one: nothing crosses the boundary
            carry = torch.zeros_like(carry) if (t - 1) in ends else d @ self.W_hh + self.keep * g
        return delta

    def gradients(self, x, target):
        """(loss, cache, E, delta, grads) for one mini-batch."""
        cache = self.forward(x)
        loss, E = self.output_error(cache, target)
        delta = self.hidden_deltas(cache, E)
        h, xs = cache["h"], cache["x"]
        grads = {
            "W_xh": torch.einsum("tnh,tni->hi", delta, xs),
            "W_hh": torch.einsum("tnh,tnj->hj", delta, h[:-1]),
            "b_h": delta.sum((0, 1)),
            "W_hy": torch.einsum("tno,tnh->oh", E, h[1:]),
            "b_y": E.sum((0, 1)),
        }
        return loss, cache, E, delta, grads

    def step(self, x, target, lr=None) -> float:
        lr = self.cfg.lr if lr is None else lr
        loss, _, _, _, grads = self.gradients(x, target)
        if self.cfg.clip:
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            if norm > self.cfg.clip:
                lr = lr * self.cfg.clip / norm
        for name, p in self.params().items():
            p.sub_(lr * grads[name])
        return loss

    def train_epoch(self, X, Y) -> float:
        bs, total, nb = self.cfg.batch_size, 0.0, 0
        for i in range(0, len(X), bs):
            total += self.step(X[i:i + bs], Y[i:i + bs])
            nb += 1
            if not math.isfinite(total):
                return float("nan")
        return total / nb

    def evaluate(self, X, Y, batch=500) -> float:
        """Accuracy (xent; the last step's output) or mean squared error (mse; the last step)."""
        correct, se = 0, 0.0
        for i in range(0, len(X), batch):
            y = self.output(X[i:i + batch])
            t = Y[i:i + batch]
            if self.cfg.loss == "xent":
                t = t if t.dim() == 1 else t[:, -1]
                correct += int((y.argmax(1) == t).sum())
            else:
                t = t if t.dim() == 2 else t[:, -1]
                se += float(((y - t) ** 2).sum(-1).sum())
        return correct / len(X) if self.cfg.loss == "xent" else se / len(X)


# ---- costs --------------------------------------------------------------------------------

def _feedback_entry_bits(fb: RNNFeedback, C: int) -> int:
    entry = max(1, math.ceil(math.log2(C))) + 1
    if fb.values == "pow2":
        entry += max(1, math.ceil(math.log2(fb.max_shift + 1)))
    return entry


def costs(cfg: RNNConfig, T: int) -> dict:
    """Per-sequence MACs (forward, error propagation, update), feedback storage and the values
    kept for the backward pass (``docs/rnn.md``, "Costs")."""
    H, I, O = cfg.hidden, cfg.n_in, cfg.n_out
    every = cfg.readout == "every"
    R = T if every else 1
    m = cfg.method
    kind = "sparse" if m == "dfa_sparse" else cfg.feedback.kind
    proj = H * (cfg.feedback.k if kind == "sparse" else O)        # one projection B v
    w = window_steps(cfg, T)
    k = max(1, cfg.bptt_steps)
    trans = 0           # W_hh^T transitions
    n_proj = 0          # feedback projections
    true_inj = R        # W_hy^T e_s
    if m == "bptt":
        trans, reached = T - 1, T
    elif m == "tbptt":
        trans = sum(min(k, s + 1) - 1 for s in (range(T) if every else [T - 1]))
        reached = T if every else min(k, T)
    elif m in ("dfa", "dfa_sparse"):
        true_inj = 0
        n_proj = R
        reached = T if every else w
    elif m == "hybrid":
        trans = sum(min(k, s + 1) - 1 for s in (range(T) if every else [T - 1]))
        n_proj = (R if every else 1) if w > k and T > k else 0
        reached = T if every else min(T, max(w, k))
    else:  # module
        n_chunks = -(-T // k)
        trans = T - n_chunks
        n_proj = (n_chunks - 1) if every else min(1, n_chunks - 1)
        reached = T
    err_macs = true_inj * O * H + trans * H * H + n_proj * proj
    fwd = T * H * (I + H) + R * O * H
    upd = reached * H * (I + H) + R * O * H
    if kind == "output" or n_proj == 0 or cfg.feedback.storage == "lfsr":
        bits = 0
    elif kind == "sparse":
        bits = H * cfg.feedback.k * _feedback_entry_bits(cfg.feedback, O)
    else:
        bits = H * O * cfg.feedback.bits
    return {
        "forward_macs": fwd, "error_macs": err_macs, "update_macs": upd,
        "error_macs_parts": {"output_transpose": true_inj * O * H, "through_time": trans * H * H,
                             "feedback": n_proj * proj},
        "through_time_transitions": trans, "feedback_projections": n_proj, "steps_updated": reached,
        "feedback_storage_bits": bits,
        # x_t and h_{t-1} of every step that will receive a delta, and h_T (f' follows from
        # h_t; the leaky cell keeps f(a_t) as well)
        "backward_state_words": reached * (I + H + (H if cfg.cell == "leaky" else 0)) + H,
        "backward_through_time": trans > 0,
    }


# ---- tasks --------------------------------------------------------------------------------

TASKS = ("mnist5k", "digits", "adding")
#: Adding problem: sequence length, training / test sequences (seeds 0 / 1).
ADDING_T, ADDING_TRAIN, ADDING_TEST = 50, 5000, 1000


def adding_task(n: int, T: int, seed: int):
    """The adding problem (Hochreiter & Schmidhuber 1997): ``x`` (n, T, 2), channel 0 uniform in
    [0, 1), channel 1 a marker that is 1 at exactly two steps, one drawn uniformly from the first
    half ``[0, T // 2)`` and one from the second half ``[T // 2, T)``; target (n, 1) = the sum of
    the two marked values. ``numpy.random.default_rng(seed)`` draws, in order, the values
    (n x T), the first and the second marker positions. Predicting the mean (1.0) gives
    MSE 1/6 = 0.167."""
    rng = np.random.default_rng(seed)
    vals = rng.uniform(0.0, 1.0, size=(n, T))
    p1 = rng.integers(0, T // 2, size=n)
    p2 = rng.integers(T // 2, T, size=n)
    mark = np.zeros((n, T))
    mark[np.arange(n), p1] = 1.0
    mark[np.arange(n), p2] = 1.0
    x = np.stack([vals, mark], axis=-1)
    y = (vals[np.arange(n), p1] + vals[np.arange(n), p2])[:, None]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def load_task(name: str):
    """(x_train, y_train, x_test, y_test, meta) as tensors ``(N, T, I)``. ``mnist5k`` and
    ``digits``: :func:`dfa_engine.data.load_dataset` (the MLP study's split), each image row one
    time step (28 x 28 resp. 8 x 8), classes as targets, cross-entropy. ``adding``:
    :func:`adding_task` with ``T = ADDING_T``, train seed 0, test seed 1, MSE."""
    if name == "adding":
        x, y = adding_task(ADDING_TRAIN, ADDING_T, 0)
        xt, yt = adding_task(ADDING_TEST, ADDING_T, 1)
        return x, y, xt, yt, {"T": ADDING_T, "n_in": 2, "n_out": 1, "loss": "mse"}
    from .data import load_dataset

    ds = load_dataset(name)
    side = 28 if name == "mnist5k" else 8
    f = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, side, side)  # noqa: E731
    return (f(ds.x_train), torch.tensor(ds.y_train), f(ds.x_test), torch.tensor(ds.y_test),
            {"T": side, "n_in": side, "n_out": 10, "loss": "xent"})
