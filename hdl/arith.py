"""Arithmetic building blocks shared by every datapath unit: requantization and LFSR draws.

Both are the hardware twins of :mod:`dfa_engine.fixed` and :mod:`dfa_engine.lfsr`, and are
unit-tested against them in the Amaranth simulator (``tests/test_hdl_arith.py``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.fixed import FixedFormat
from dfa_engine.lfsr import MASK32, TAPS, draw

__all__ = ["Requantize", "LFSRDraw", "leap_matrix", "times_const", "hardtanh"]


def times_const(x, c: int):
    """``x * c`` for a constant ``c >= 0`` as a sum of shifted copies of ``x`` (one per set
    bit of ``c``): the same value as ``x * c``, but logic, not a multiplier. Yosys maps a
    product by a constant that is not a power of two onto an iCE40 SB_MAC16, and nextpnr
    does not time a DSP used without its registers against the clock (it puts it in a
    pseudo clock domain, ``$PACKER_GND_NET``): an address computed that way is an untimed
    path. Address arithmetic therefore uses this."""
    if not isinstance(c, int) or c < 0:
        raise ValueError(f"times_const: the constant must be an integer >= 0, not {c!r}")
    terms = [x << b for b in range(c.bit_length()) if (c >> b) & 1]
    if not terms:
        return Const(0, 1)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def hardtanh(a, frac_bits: int):
    """``(clip(a, -1, 1), -1 < a < 1)`` of a signed raw value with ``frac_bits`` fraction
    bits, from its bits alone (``docs/numerics.md``; golden: ``sim/golden.py``).

    ``a >= 1`` when ``a`` is not negative and has an integer bit set; ``a <= -1`` when it
    is negative and not ``-1`` plus a nonzero fraction. Clamping at ``a = +-1`` changes
    nothing, so these two bits give the value, and the mask ("strictly inside") is
    neither. Four comparisons with the bounds per lane were carry chains on the ECP5.
    """
    one = 1 << frac_bits
    ge_one = ~a[-1] & a[frac_bits:-1].any()
    le_minus_one = a[-1] & ~(a[frac_bits:-1].all() & a[:frac_bits].any())
    return Mux(ge_one, one, Mux(le_minus_one, -one, a)), ~ge_one & ~le_minus_one


class Requantize(wiring.Component):
    """Combinational ``requantize`` of ``docs/numerics.md``: round, then saturate.

    Parameters
    ----------
    in_width : int
        Width of the signed input ``i`` (raw, ``in_frac`` fraction bits).
    in_frac : int
    fmt : FixedFormat
        Output format of ``o``.
    mode : "trunc" | "nearest" | "stochastic"
        With ``stochastic``, the port ``rand`` (32 bits) supplies the random word.

    Members
    -------
    i : In(signed(in_width))
    rand : In(32), only for ``stochastic``
    o : Out(fmt.amaranth_shape())
    saturated : Out(1)
        High when the rounded value was clamped (one saturation event).
    """

    def __init__(self, in_width: int, in_frac: int, fmt: FixedFormat, mode: str = "nearest"):
        if not isinstance(in_width, int) or in_width < 1:
            raise ValueError(f"Input width must be a positive integer, not {in_width!r}")
        if mode not in ("trunc", "nearest", "stochastic"):
            raise ValueError(f"Rounding mode must be trunc, nearest or stochastic, not {mode!r}")
        self._in_width, self._in_frac, self._fmt, self._mode = in_width, in_frac, fmt, mode
        members = {"i": In(signed(in_width)), "o": Out(fmt.amaranth_shape()), "saturated": Out(1)}
        if mode == "stochastic":
            members["rand"] = In(32)
        super().__init__(members)

    @property
    def fmt(self):
        return self._fmt

    def elaborate(self, platform):
        m = Module()
        fmt, shift = self._fmt, self._in_frac - self._fmt.frac_bits
        wide = self._in_width + max(-shift, 0) + 2
        rounded = Signal(signed(wide))
        if shift <= 0:
            m.d.comb += rounded.eq(self.i << -shift)
        elif self._mode == "trunc":
            m.d.comb += rounded.eq(self.i >> shift)
        elif self._mode == "nearest":
            # floor((x + 2^(s-1)) / 2^s) = floor((floor(x / 2^(s-1)) + 1) / 2): the bits
            # below s - 1 cannot carry into the result, so the adder spans only the bits
            # that survive (a full-width adder was half of every requantizer's carry chain)
            m.d.comb += rounded.eq(((self.i >> (shift - 1)) + 1) >> 1)
        else:
            m.d.comb += rounded.eq((self.i + self.rand[:shift]) >> shift)
        lo, hi = fmt.min_raw, fmt.max_raw
        # The rounded value's range, from the input's: when it lies inside the format no
        # clamp can fire, and none is built (less logic, and a faster Verilator model).
        in_lo, in_hi = -(1 << (self._in_width - 1)), (1 << (self._in_width - 1)) - 1
        if shift <= 0:
            out_lo, out_hi = in_lo << -shift, in_hi << -shift
        else:
            max_bias = {"trunc": 0, "nearest": 1 << (shift - 1), "stochastic": (1 << shift) - 1}[self._mode]
            out_lo, out_hi = in_lo >> shift, (in_hi + max_bias) >> shift
        if lo <= out_lo and out_hi <= hi:
            m.d.comb += self.o.eq(rounded)
            return m
        # Out of range, from the bits alone: a value fits a signed w-bit format when its
        # bits from w - 1 up are copies of its sign, an unsigned one when those from w up
        # are zero and it is not negative. (Comparisons with the bounds became carry
        # chains, two per requantizer, on the ECP5.)
        sign = rounded[-1]
        if fmt.signed:
            upper = rounded[fmt.width - 1:wide - 1]
            over, under = ~sign & upper.any(), sign & ~upper.all()
        else:
            upper = rounded[fmt.width:wide - 1]
            over, under = ~sign & upper.any(), sign
        with m.If(over):
            m.d.comb += [self.o.eq(hi), self.saturated.eq(1)]
        with m.Elif(under):
            m.d.comb += [self.o.eq(lo), self.saturated.eq(1)]
        with m.Else():
            m.d.comb += self.o.eq(rounded)
        return m


def leap_matrix(draws: int = 1):
    """Columns of the GF(2) matrix that advances the LFSR by ``draws`` draws:
    ``out bit r = XOR of state bits c with matrix[c] bit r``."""
    cols = []
    for b in range(32):
        s = 1 << b
        for _ in range(draws):
            s = draw(s)
        cols.append(s)
    return cols


class LFSRDraw(wiring.Component):
    """An LFSR that advances ``per_cycle`` draws each cycle ``en`` is high (leap-ahead XOR
    network) and presents the ``per_cycle`` consecutive random words of those draws.

    ``load``/``seed`` set the state (the state is the last word presented).

    Members
    -------
    en, load : In(1)
    seed : In(32)
    words : Out(32 * per_cycle); word ``k`` (bits ``32k .. 32k+31``) is draw ``k + 1``.
    """

    def __init__(self, per_cycle: int = 1, reset_state: int = 1):
        if not isinstance(per_cycle, int) or per_cycle < 1:
            raise ValueError(f"Draws per cycle must be a positive integer, not {per_cycle!r}")
        if not 0 < reset_state <= MASK32:
            raise ValueError(f"LFSR reset state must be 1..2^32-1, not {reset_state!r}")
        self._per_cycle, self._reset_state = per_cycle, reset_state
        super().__init__({"en": In(1), "load": In(1), "seed": In(32), "words": Out(32 * per_cycle)})

    def elaborate(self, platform):
        m = Module()
        state = Signal(32, init=self._reset_state)
        cols = leap_matrix(1)
        words, s = [], state
        for k in range(self._per_cycle):
            nxt = Signal(32, name=f"draw{k + 1}")
            for r in range(32):
                terms = [s[c] for c in range(32) if (cols[c] >> r) & 1]
                bit = terms[0]
                for t in terms[1:]:
                    bit = bit ^ t
                m.d.comb += nxt[r].eq(bit)
            words.append(nxt)
            s = nxt
        m.d.comb += self.words.eq(Cat(*words))
        with m.If(self.load):
            m.d.sync += state.eq(self.seed)
        with m.Elif(self.en):
            m.d.sync += state.eq(words[-1])
        return m
