"""The one pseudo-random generator of the engine: a 32-bit Galois LFSR.

Hardware regenerates feedback matrices and stochastic-rounding bits with it, so it is
specified exactly (``docs/numerics.md``, section "LFSR"):

* state: 32 bits, never zero;
* one *step*: ``lsb = s & 1; s >>= 1; if lsb: s ^= TAPS`` with ``TAPS = 0x80200003``
  (the maximal-length polynomial x^32 + x^22 + x^2 + x + 1, period 2^32 - 1);
* one *draw*: 32 steps, then the new state is the 32-bit random word. In hardware a draw
  is a single XOR network (the 32-step leap-ahead matrix), and P draws per cycle are P
  chained copies of it.
* seeds: a user seed and a stream number go through :func:`seed_state` (murmur3's
  ``fmix32``) so that the streams of different layers are not shifted copies of each other.
"""

from __future__ import annotations

import numpy as np

TAPS = 0x80200003
MASK32 = 0xFFFFFFFF
STEPS_PER_DRAW = 32


def fmix32(h: int) -> int:
    """murmur3's 32-bit finalizer: a bijection that mixes every input bit into every output bit."""
    h &= MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    h ^= h >> 16
    return h


def seed_state(seed: int, stream: int) -> int:
    """Initial LFSR state of stream ``stream`` for the user seed ``seed`` (never zero)."""
    state = fmix32((seed & MASK32) ^ fmix32(stream + 0x9E3779B9))
    return state or 1


def step(state: int) -> int:
    lsb = state & 1
    state >>= 1
    if lsb:
        state ^= TAPS
    return state


def draw(state: int) -> int:
    """Advance one draw (32 steps) and return the new state, which is the random word."""
    for _ in range(STEPS_PER_DRAW):
        state = step(state)
    return state


class LFSR:
    """A stateful draw-by-draw generator (for tables and small sequences)."""

    def __init__(self, state: int):
        if not 0 < state <= MASK32:
            raise ValueError(f"LFSR state must be 1..2^32-1, not {state}")
        self.state = state

    def draw(self) -> int:
        self.state = draw(self.state)
        return self.state


def _byte_tables(images):
    """Lookup tables of the GF(2)-linear map with basis images ``images[b] = map(1 << b)``."""
    tables = np.zeros((4, 256), dtype=np.uint32)
    for pos in range(4):
        t = tables[pos]
        for v in range(1, 256):
            low = (v & -v).bit_length() - 1
            t[v] = t[v & (v - 1)] ^ images[8 * pos + low]
    return tables


def _apply(tables, states):
    s = states.astype(np.uint32)
    return (tables[0][s & 0xFF] ^ tables[1][(s >> 8) & 0xFF]
            ^ tables[2][(s >> 16) & 0xFF] ^ tables[3][s >> 24])


class LFSRBlock:
    """Vectorized draws for stochastic rounding: ``n`` consecutive draws in one call.

    The LFSR is linear over GF(2), so "advance by d draws" is a 32x32 bit matrix, applied
    with four byte-indexed lookup tables. Doubling (states ``k..2k`` are the leap of ``k``
    draws applied to states ``0..k``) makes ``n`` draws cost O(n) vectorized work.
    """

    _power_tables: list = []

    def __init__(self, state: int):
        if not 0 < state <= MASK32:
            raise ValueError(f"LFSR state must be 1..2^32-1, not {state}")
        self.state = state
        if not LFSRBlock._power_tables:
            images = np.array([draw(1 << b) for b in range(32)], dtype=np.uint32)
            for _ in range(40):
                tables = _byte_tables(images)
                LFSRBlock._power_tables.append(tables)
                images = _apply(tables, images)  # the images of the squared leap

    def draws(self, n: int) -> np.ndarray:
        """The next ``n`` random words (int64), advancing the state by ``n`` draws."""
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        out = np.empty(n, dtype=np.uint32)
        out[0] = _apply(self._power_tables[0], np.array([self.state], dtype=np.uint32))[0]
        k, j = 1, 0
        while k < n:
            m = min(k, n - k)
            out[k:k + m] = _apply(self._power_tables[j], out[:m])
            k, j = k + m, j + 1
        self.state = int(out[-1])
        return out.astype(np.int64)


class LFSRBank:
    """Many independent LFSR streams advanced together (one per weight row).

    ``draws(n)`` returns an array ``(streams, n)``: the next ``n`` words of every stream.
    Stochastic rounding gives each row of a weight matrix its own stream, so a ``P``-lane
    update unit (lane = row) needs one plain LFSR per lane and the result does not depend
    on ``P`` (``docs/numerics.md`` section 9).
    """

    def __init__(self, states):
        states = np.asarray(states, dtype=np.uint32)
        if np.any(states == 0):
            raise ValueError("LFSR states must be nonzero")
        self.states = states.copy()
        LFSRBlock(1)  # builds the shared leap tables

    def draws(self, n: int) -> np.ndarray:
        out = np.empty((self.states.size, n), dtype=np.uint32)
        if n == 0:
            return out.astype(np.int64)
        tables = LFSRBlock._power_tables
        out[:, 0] = _apply(tables[0], self.states)
        k, j = 1, 0
        while k < n:
            m = min(k, n - k)
            out[:, k:k + m] = _apply(tables[j], out[:, :m])
            k, j = k + m, j + 1
        self.states = out[:, -1].copy()
        return out.astype(np.int64)


def row_streams(seed: int, layer: int, rows: int) -> LFSRBank:
    """The stochastic-rounding streams of layer ``layer`` (0-based): row ``i`` starts at
    ``seed_state(seed, (layer + 1) * 65536 + i)``."""
    return LFSRBank([seed_state(seed, (layer + 1) * 65536 + i) for i in range(rows)])
