"""Feedback matrices and initial weights: generated once, the same for every consumer.

The golden model, the float reference and the generated hardware must all use the same
``B_l`` and the same initial weights, so both are made here and nowhere else. The feedback
is drawn from the LFSR of :mod:`dfa_engine.lfsr` (``docs/numerics.md``, "Feedback"), so a
hardware ``storage = "lfsr"`` engine regenerates exactly the table a ``"table"`` engine stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import EngineConfig
from .lfsr import LFSRBlock, seed_state

__all__ = ["SparseFeedback", "feedback_matrix", "sparse_feedback", "initial_parameters"]


@dataclass(frozen=True)
class SparseFeedback:
    """The stored form of a sparse ``B_l``: per row, ``k`` entries of (index, sign, shift).

    ``value = (-1)**sign * 2**-shift`` for ``pm1``/``pow2``; for ``fixed`` values the raw
    magnitude is in ``magnitude`` (feedback format) and ``shift`` is 0.
    """

    index: np.ndarray      # (rows, k) class index
    sign: np.ndarray       # (rows, k) 1 = negative
    shift: np.ndarray      # (rows, k)
    magnitude: np.ndarray  # (rows, k) raw magnitude in the feedback format


def sparse_feedback(cfg: EngineConfig, layer: int) -> SparseFeedback:
    """The sparse feedback of hidden layer ``layer`` (0-based), drawn from its LFSR stream.

    Row ``i`` takes ``k`` draws ``w_0 .. w_{k-1}`` in order. Entry ``m``:
    ``index = (base + m) mod C`` with ``base = ((w_0 & 0xFFFF) * C) >> 16`` (distinct
    indices, no divider); ``sign = (w_m >> 16) & 1``; for ``pow2``,
    ``shift = (((w_m >> 17) & 0x7FFF) * (max_shift + 1)) >> 15``; for ``fixed``,
    ``magnitude = 1 + ((((w_m >> 17) & 0x7FFF) * max_raw) >> 15)``.
    """
    fb = cfg.feedback
    rows, classes, k = cfg.layers[layer + 1], cfg.n_classes, fb.k
    fmt = cfg.formats.feedback
    words = LFSRBlock(seed_state(fb.seed, layer)).draws(rows * k).reshape(rows, k)
    base = ((words[:, :1] & 0xFFFF) * classes) >> 16
    index = (base + np.arange(k)) % classes
    sign = (words >> 16) & 1
    one = 1 << fmt.frac_bits
    if fb.values == "pm1":
        shift = np.zeros_like(words)
        magnitude = np.full_like(words, one)
    elif fb.values == "pow2":
        shift = (((words >> 17) & 0x7FFF) * (fb.max_shift + 1)) >> 15
        magnitude = one >> shift
    else:
        shift = np.zeros_like(words)
        magnitude = 1 + ((((words >> 17) & 0x7FFF) * fmt.max_raw) >> 15)
    return SparseFeedback(index.astype(np.int64), sign.astype(np.int64), shift.astype(np.int64),
                          magnitude.astype(np.int64))


def feedback_matrix(cfg: EngineConfig, layer: int) -> np.ndarray:
    """``B_l`` as a dense raw int64 matrix (rows = neurons of hidden layer ``layer``, cols = classes).

    Dense feedback: entry ``(i, c)`` is draw number ``i * C + c``; its top ``width`` bits,
    read as a two's-complement number, are the raw value (uniform over the feedback format).
    """
    rows, classes = cfg.layers[layer + 1], cfg.n_classes
    if cfg.feedback.kind == "dense":
        width = cfg.formats.feedback.width
        words = LFSRBlock(seed_state(cfg.feedback.seed, layer)).draws(rows * classes)
        raw = words >> (32 - width)
        raw = np.where(raw >= 1 << (width - 1), raw - (1 << width), raw)
        return raw.reshape(rows, classes).astype(np.int64)
    sp = sparse_feedback(cfg, layer)
    B = np.zeros((rows, classes), dtype=np.int64)
    values = np.where(sp.sign == 1, -sp.magnitude, sp.magnitude)
    np.add.at(B, (np.arange(rows)[:, None].repeat(cfg.feedback.k, 1), sp.index), values)
    return B


def initial_parameters(cfg: EngineConfig):
    """Initial (W, b) per layer as raw int64: W uniform in +-1/sqrt(fan_in) from
    ``numpy.random.default_rng(training.seed)``, quantized to the weight format; b = 0."""
    rng = np.random.default_rng(cfg.seed)
    params = []
    for n_in, n_out in zip(cfg.layers[:-1], cfg.layers[1:]):
        bound = 1.0 / np.sqrt(n_in)
        W = cfg.formats.weight.from_float(rng.uniform(-bound, bound, size=(n_out, n_in)))
        params.append((W, np.zeros(n_out, dtype=np.int64)))
    return params
