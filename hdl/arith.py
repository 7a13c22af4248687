"""Arithmetic building blocks shared by every datapath unit: requantization and LFSR draws.

Both are the hardware twins of :mod:`dfa_engine.fixed` and :mod:`dfa_engine.lfsr`, and are
unit-tested against them in the Amaranth simulator (``tests/test_hdl_arith.py``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.fixed import FixedFormat
from dfa_engine.lfsr import MASK32, draw

__all__ = ["Requantize", "LFSRDraw", "leap_matrix", "times_const", "hardtanh", "RegisteredProduct",
           "MULT18X18DModel", "is_ecp5"]


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


def is_ecp5(platform) -> bool:
    return platform is not None and str(getattr(platform, "device", "")).startswith("LFE5U")


#: The one configuration of the ECP5 multiplier used here: input registers A and B and the
#: output register on CLK0, enabled by CE0, never reset (RST0 low); no pipeline register.
MULT18X18D_PARAMS = {
    "REG_INPUTA_CLK": "CLK0", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
    "REG_INPUTB_CLK": "CLK0", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
    "REG_INPUTC_CLK": "NONE", "REG_PIPELINE_CLK": "NONE",
    "REG_OUTPUT_CLK": "CLK0", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
    "SOURCEB_MODE": "B_SHIFT", "MULT_BYPASS": "DISABLED", "RESETMODE": "SYNC",
}


class MULT18X18DModel(Elaboratable):
    """The behaviour of one ECP5 MULT18X18D in the configuration :data:`MULT18X18D_PARAMS`
    (Lattice TN1267, the sysDSP usage guide): on a clock edge with ``CE0`` the input
    registers take ``A``, ``B``, ``SIGNEDA``, ``SIGNEDB`` and the output register takes the
    product of the registered inputs (each 18 bits, sign-extended when its ``SIGNED`` bit
    was high). It takes the same keyword ports as the ``Instance`` (``i_A0`` ... ``o_P35``),
    so a test of :class:`RegisteredProduct` checks the primitive's wiring bit by bit."""

    def __init__(self, ports: dict):
        self._ports = ports

    def elaborate(self, platform):
        m = Module()
        pt = self._ports
        a = Cat(*(pt[f"i_A{k}"] for k in range(18)))
        b = Cat(*(pt[f"i_B{k}"] for k in range(18)))
        a_r, b_r = Signal(18), Signal(18)
        sa_r, sb_r = Signal(), Signal()
        p_r = Signal(36)
        a_val = Mux(sa_r, a_r.as_signed(), a_r.as_unsigned())
        b_val = Mux(sb_r, b_r.as_signed(), b_r.as_unsigned())
        with m.If(pt["i_CE0"]):
            m.d.sync += [a_r.eq(a), b_r.eq(b), sa_r.eq(pt["i_SIGNEDA"]), sb_r.eq(pt["i_SIGNEDB"]),
                         p_r.eq(a_val * b_val)]
        m.d.comb += [pt[f"o_P{k}"].eq(p_r[k]) for k in range(36)]
        return m


class RegisteredProduct(wiring.Component):
    """``p = a * b`` two cycles later: ``a`` and ``b`` enter registers, their product
    enters a register, both only on cycles with ``en`` (a pipeline that stalls as one).

    On the ECP5 (``primitive="MULT18X18D"``, chosen by :func:`is_ecp5` of the platform in
    the MAC and update units) the three registers are the multiplier's own: Yosys maps a
    product onto a MULT18X18D but leaves the registers around it in the fabric, where the
    wires to and from the multiplier were most of the ECP5 build's critical path.
    Elsewhere they are inferred (the iCE40's SB_MAC16 absorbs them). ``model``: build the
    ECP5 form from :class:`MULT18X18DModel` instead of the primitive, for the simulator.

    Members
    -------
    a, b : In(a_shape), In(b_shape)
    en : In(1)
    p : Out(shape of a * b)
    """

    def __init__(self, a_shape, b_shape, *, primitive: str | None = None, model: bool = False):
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        if primitive not in (None, "MULT18X18D"):
            raise ValueError(f"Multiplier primitive must be None or 'MULT18X18D', not {primitive!r}")
        if primitive is not None:
            for name, sh in (("a", a_shape), ("b", b_shape)):
                if sh.width > 18:
                    raise ValueError(f"MULT18X18D operand {name} has {sh.width} bits; at most 18 fit")
        self._primitive, self._model = primitive, model
        p_shape = (Signal(a_shape) * Signal(b_shape)).shape()
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1), "p": Out(p_shape)})

    def elaborate(self, platform):
        m = Module()
        if self._primitive is None:
            # no reset and exactly the operands' and the product's widths: synthesis then
            # moves them into the DSP (yosys ice40_dsp takes a register only if its whole
            # wire has one initial value)
            a_r = Signal.like(self.a, name="opnd_a", reset_less=True)
            b_r = Signal.like(self.b, name="opnd_b", reset_less=True)
            p_r = Signal.like(self.p, name="prod", reset_less=True)
            with m.If(self.en):
                m.d.sync += [a_r.eq(self.a), b_r.eq(self.b), p_r.eq(a_r * b_r)]
            m.d.comb += self.p.eq(p_r)
            return m
        a18, b18 = Signal(18), Signal(18)
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]        # sign- or zero-extended to 18 bits
        product = Signal(36)
        zero = Const(0, 1)
        ports = {f"i_A{k}": a18[k] for k in range(18)}
        ports.update({f"i_B{k}": b18[k] for k in range(18)})
        ports.update({f"i_C{k}": zero for k in range(18)})
        ports.update({f"o_P{k}": product[k] for k in range(36)})
        ports.update({"i_SIGNEDA": Const(int(self.a.shape().signed), 1),
                      "i_SIGNEDB": Const(int(self.b.shape().signed), 1),
                      "i_SOURCEA": zero, "i_SOURCEB": zero,
                      "i_CLK0": ClockSignal("sync"), "i_CE0": self.en, "i_RST0": zero})
        for k in (1, 2, 3):
            ports.update({f"i_CLK{k}": zero, f"i_CE{k}": zero, f"i_RST{k}": zero})
        # every output connected too (the registered operands, the shift chains out, the
        # sign): in the engine Yosys 0.70's abc9 stopped on an assertion with them left
        # open. The shift chains' inputs (SRIA, SRIB) stay open: they are the cascade's
        # dedicated wires, which the fabric's constant cannot reach (nextpnr fails to route).
        unused = Signal(3 * 18 + 2 * 18 + 1, name="mult_unused")
        outs = [f"o_{x}{k}" for x in ("ROA", "ROB", "ROC", "SROA", "SROB") for k in range(18)] + ["o_SIGNEDP"]
        ports.update({name: unused[j] for j, name in enumerate(outs)})
        if self._model:
            m.submodules.mult = MULT18X18DModel(ports)
        else:
            m.submodules.mult = Instance("MULT18X18D", **{f"p_{k}": v for k, v in MULT18X18D_PARAMS.items()},
                                         **ports)
        m.d.comb += self.p.eq(product[:len(self.p)])
        return m
