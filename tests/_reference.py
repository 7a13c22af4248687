"""Independent reference implementations for the tests (pure Python ints, Fraction, Decimal).

Nothing here imports dfa_engine: these are second implementations of the arithmetic in
``docs/numerics.md``, written from the specification, against which the code under test is
compared. They are slow and simple on purpose.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction

# ---- fixed point ---------------------------------------------------------------------


def fmt_bounds(signed: bool, int_bits: int, frac_bits: int):
    """(min_raw, max_raw) of a format, from the meaning of its bits."""
    magnitude_bits = int_bits + frac_bits
    if signed:
        return -(2 ** magnitude_bits), 2 ** magnitude_bits - 1
    return 0, 2 ** magnitude_bits - 1


def ref_round(x: int, s: int, mode: str, r: int = 0) -> int:
    """round(x / 2^s) by the definitions, with exact rationals."""
    if s <= 0:
        return x * 2 ** (-s)
    q = Fraction(x, 2 ** s)
    if mode == "trunc":
        return math.floor(q)
    if mode == "nearest":
        return math.floor(q + Fraction(1, 2))
    if mode == "stochastic":
        return math.floor(Fraction(x + (r % 2 ** s), 2 ** s))
    raise AssertionError(mode)


def ref_sat(x: int, lo: int, hi: int) -> int:
    return lo if x < lo else hi if x > hi else x


def ref_from_float(value: float, signed: bool, int_bits: int, frac_bits: int) -> int:
    lo, hi = fmt_bounds(signed, int_bits, frac_bits)
    return ref_sat(math.floor(Fraction(value) * 2 ** frac_bits + Fraction(1, 2)), lo, hi)


# ---- LFSR: GF(2)[x] / p(x), p = x^32 + x^22 + x^2 + x + 1 ------------------------------

POLY = (1 << 32) | (1 << 22) | (1 << 2) | (1 << 1) | 1


def clmul(a: int, b: int) -> int:
    """Carry-less (GF(2)[x]) product."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def polymod(a: int, p: int = POLY) -> int:
    dp = p.bit_length() - 1
    while a.bit_length() - 1 >= dp:
        a ^= p << (a.bit_length() - 1 - dp)
    return a


def mulmod(a: int, b: int, p: int = POLY) -> int:
    return polymod(clmul(a, b), p)


def powmod(a: int, e: int, p: int = POLY) -> int:
    out = 1
    while e:
        if e & 1:
            out = mulmod(out, a, p)
        a = mulmod(a, a, p)
        e >>= 1
    return out


#: x^-1 mod p: p = 1 + x*q, so x*q = p - 1 = 1 (mod p).
X_INV = (POLY ^ 1) >> 1


def ref_step(state: int) -> int:
    """One right-shift Galois step = multiplication of the state polynomial by x^-1 mod p."""
    return mulmod(state, X_INV)


X_INV_32 = powmod(X_INV, 32)


def ref_draw(state: int) -> int:
    """One draw = 32 steps = multiplication by x^-32."""
    return mulmod(state, X_INV_32)


def ref_fmix32(h: int) -> int:
    """murmur3 fmix32, from the published algorithm."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2 ** 32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2 ** 32
    h ^= h >> 16
    return h


def ref_seed_state(seed: int, stream: int) -> int:
    s = ref_fmix32((seed % 2 ** 32) ^ ref_fmix32(stream + 0x9E3779B9))
    return s if s else 1


class RefLFSR:
    def __init__(self, state: int):
        self.state = state

    def draw(self) -> int:
        self.state = ref_draw(self.state)
        return self.state

    def draws(self, n: int):
        return [self.draw() for _ in range(n)]


# ---- softmax table -------------------------------------------------------------------


def ref_exp_table(t: int, size: int):
    """E[k] = floor(exp(-k / 2^t) * 2^15 + 1/2), with 50-digit decimals."""
    getcontext().prec = 50
    return [int(((Decimal(-k) / Decimal(2 ** t)).exp() * 32768 + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))
            for k in range(size)]
