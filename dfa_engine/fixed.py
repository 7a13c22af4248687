"""The one fixed-point format type of dfa-engine, and its exact integer operations.

Every tensor in the engine is an integer array of *raw* values; a :class:`FixedFormat`
says what they mean (``value = raw * 2**-frac_bits``) and how wide they are. The
generator, the golden model and the testbenches all take their formats from here, so
there is no second copy of a format anywhere. ``docs/numerics.md`` is the written
definition; this module is its implementation.

Operations work on NumPy ``int64`` arrays (and Python ints); callers are responsible
for keeping intermediate values below 2**62, which the configuration validator checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["FixedFormat", "ROUNDING_MODES", "shift_round", "saturate", "requantize"]

#: Rounding modes, see ``docs/numerics.md`` section "Rounding".
ROUNDING_MODES = ("trunc", "nearest", "stochastic")

_FORMAT_RE = re.compile(r"^([su])([0-9]+)\.([0-9]+)$")


@dataclass(frozen=True)
class FixedFormat:
    """A two's-complement (``signed``) or unsigned fixed-point format.

    ``width = signed + int_bits + frac_bits``; the raw integer ``r`` means ``r / 2**frac_bits``.
    Written as ``"s3.12"`` (sign bit, 3 integer bits, 12 fraction bits: 16 bits, range
    [-8, 8)) or ``"u0.8"`` (8 bits, range [0, 1)).
    """

    signed: bool
    int_bits: int
    frac_bits: int

    def __post_init__(self):
        for name in ("int_bits", "frac_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, not {self.signed!r}")
        if self.width < 1 or self.width > 48:
            raise ValueError(f"format width must be 1..48 bits, not {self.width} ({self})")

    @classmethod
    def parse(cls, text: str) -> "FixedFormat":
        """Parse ``"s<int>.<frac>"`` or ``"u<int>.<frac>"``."""
        if not isinstance(text, str):
            raise TypeError(f"a format is a string like 's3.12', not {text!r}")
        m = _FORMAT_RE.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a format; write s<int>.<frac> or u<int>.<frac>, e.g. 's3.12'")
        return cls(m.group(1) == "s", int(m.group(2)), int(m.group(3)))

    def __str__(self):
        return f"{'s' if self.signed else 'u'}{self.int_bits}.{self.frac_bits}"

    @property
    def width(self) -> int:
        return int(self.signed) + self.int_bits + self.frac_bits

    @property
    def min_raw(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_raw(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def min_value(self) -> float:
        return self.min_raw * self.lsb

    @property
    def max_value(self) -> float:
        return self.max_raw * self.lsb

    def to_float(self, raw):
        """Raw integers to their real values (exact in float64 for widths <= 48)."""
        return np.asarray(raw, dtype=np.float64) * self.lsb

    def from_float(self, value):
        """Quantize real values: round to nearest (ties up), then saturate.

        Used only at the edges (initial weights, inputs, learning rate); inside the
        engine every value is already an integer.
        """
        v = np.asarray(value, dtype=np.float64) * (1 << self.frac_bits)
        # floor(v + 0.5) computed without the inexact float addition (which turns
        # 0.49999999999999994 into 1.0): v - floor(v) is exact.
        scaled = np.floor(v)
        with np.errstate(invalid="ignore"):     # inf - inf for out-of-range values
            scaled = scaled + (v - scaled >= 0.5)
        scaled = np.clip(scaled, self.min_raw, self.max_raw)
        return scaled.astype(np.int64)

    def saturate(self, raw, stats=None, name=None):
        return saturate(raw, self, stats, name)

    def amaranth_shape(self):
        """The Amaranth shape of a raw value (``signed(width)`` or ``unsigned(width)``)."""
        from amaranth.hdl import signed, unsigned

        return signed(self.width) if self.signed else unsigned(self.width)

    def to_dict(self):
        return {"format": str(self), "signed": self.signed, "int_bits": self.int_bits,
                "frac_bits": self.frac_bits, "width": self.width}


def shift_round(raw, shift: int, mode: str = "nearest", rand=None):
    """Divide by ``2**shift`` and round to an integer, exactly.

    ``shift <= 0`` is an exact left shift. For ``shift > 0``:

    * ``trunc``: ``floor(x / 2**shift)`` (arithmetic shift right);
    * ``nearest``: ``floor(x / 2**shift + 1/2)`` (ties go up, towards +inf);
    * ``stochastic``: ``floor((x + r) / 2**shift)`` with ``r`` the low ``shift`` bits of
      ``rand`` (uniform random words from the LFSR of :mod:`dfa_engine.lfsr`).
    """
    raw = np.asarray(raw, dtype=np.int64)
    if shift <= 0:
        return raw << (-shift)
    if mode == "trunc":
        return raw >> shift
    if mode == "nearest":
        return (raw + (1 << (shift - 1))) >> shift
    if mode == "stochastic":
        if rand is None:
            raise ValueError("stochastic rounding needs random words (rand)")
        if shift > 32:
            raise ValueError(f"stochastic rounding shift must be <= 32, not {shift}")
        r = np.asarray(rand, dtype=np.int64) & ((1 << shift) - 1)
        return (raw + r) >> shift
    raise ValueError(f"rounding mode must be one of {ROUNDING_MODES}, not {mode!r}")


def saturate(raw, fmt: FixedFormat, stats=None, name=None):
    """Clamp to the format's range; count clamped elements in ``stats[name]``."""
    raw = np.asarray(raw, dtype=np.int64)
    out = np.clip(raw, fmt.min_raw, fmt.max_raw)
    if stats is not None:
        n = int(np.count_nonzero(out != raw))
        if n:
            stats[name] = stats.get(name, 0) + n
    return out


def requantize(raw, from_frac: int, fmt: FixedFormat, mode: str = "nearest", rand=None,
               stats=None, name=None):
    """Change a raw value with ``from_frac`` fraction bits into ``fmt``: round, then saturate.

    The order (round first, saturate second) is part of the specification.
    """
    return saturate(shift_round(raw, from_frac - fmt.frac_bits, mode, rand), fmt, stats, name)
