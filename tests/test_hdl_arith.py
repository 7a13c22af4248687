# amaranth: UnusedElaboratable=no
"""Amaranth-simulator unit tests of hdl/arith.py against dfa_engine.fixed and dfa_engine.lfsr."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from dfa_engine.fixed import FixedFormat, requantize
from dfa_engine.hdl.arith import LFSRDraw, RegisteredProduct, Requantize, hardtanh
from dfa_engine.lfsr import LFSR, seed_state


def _edges(width):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [lo, lo + 1, -1, 0, 1, hi - 1, hi]


@pytest.mark.parametrize("in_width,in_frac,fmt,mode", [
    (24, 22, "s5.10", "nearest"), (24, 22, "s5.10", "trunc"), (20, 12, "s1.6", "nearest"),
    (12, 4, "s3.8", "nearest"), (32, 29, "s1.14", "stochastic"), (16, 10, "u0.8", "trunc"),
    # inputs whose rounded range lies inside the format: no clamp is built, none may fire
    (16, 14, "s1.14", "nearest"), (10, 8, "s3.10", "trunc"), (16, 16, "s3.10", "nearest"),
    (16, 18, "s3.10", "stochastic"),
])
def test_requantize_matches_golden(in_width, in_frac, fmt, mode):
    fmt = FixedFormat.parse(fmt)
    dut = Requantize(in_width, in_frac, fmt, mode)
    rng = np.random.default_rng(in_width * 7 + in_frac)
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    shift = in_frac - fmt.frac_bits
    values = _edges(in_width) + list(rng.integers(lo, hi + 1, size=300))
    if shift > 0:  # exact ties, both signs
        values += [k * (1 << shift) + (1 << (shift - 1)) for k in (-3, -1, 0, 2)]
        # just beyond the saturation thresholds
        values += [(fmt.max_raw << shift) + (1 << shift) - 1, (fmt.min_raw << shift) - 1]
    values = [v for v in values if lo <= v <= hi]
    rands = list(rng.integers(0, 1 << 32, size=len(values)))
    seen_sat = []

    async def bench(ctx):
        for v, r in zip(values, rands):
            ctx.set(dut.i, int(v))
            if mode == "stochastic":
                ctx.set(dut.rand, int(r))
            stats = {}
            want = int(requantize(np.int64(v), in_frac, fmt, mode, np.int64(r), stats, "s"))
            assert ctx.get(dut.o) == want, (v, r)
            assert ctx.get(dut.saturated) == (1 if stats else 0), v
            seen_sat.append(bool(stats))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen_sat) == len(values)


@pytest.mark.parametrize("in_width,in_frac,fmt,mode", [
    (9, 5, "s1.2", "nearest"), (9, 5, "s1.2", "trunc"), (9, 5, "s1.2", "stochastic"),
    (9, 3, "u1.2", "nearest"), (9, 3, "u0.4", "trunc"),          # negative inputs clamp to 0
    (8, 0, "s2.1", "nearest"), (8, 2, "u1.3", "nearest"),         # left shifts that saturate
    (8, 12, "u0.1", "trunc"), (8, 11, "u1.0", "trunc"),           # shifts past the input's width
    (10, 4, "s3.0", "nearest"),
])
def test_requantize_exhaustive(in_width, in_frac, fmt, mode):
    """Every input of a narrow requantizer (and, stochastic, several random words each):
    the rounding's narrow adder and the bitwise range check against the golden model."""
    fmt = FixedFormat.parse(fmt)
    dut = Requantize(in_width, in_frac, fmt, mode)
    values = range(-(1 << (in_width - 1)), 1 << (in_width - 1))
    rands = [0, 1, 0x5A5A5A5A, 0xFFFFFFFF] if mode == "stochastic" else [0]
    counts = {"checked": 0, "saturated": 0}

    async def bench(ctx):
        for v in values:
            ctx.set(dut.i, v)
            for r in rands:
                if mode == "stochastic":
                    ctx.set(dut.rand, r)
                stats = {}
                want = int(requantize(np.int64(v), in_frac, fmt, mode, np.int64(r), stats, "s"))
                assert (ctx.get(dut.o), ctx.get(dut.saturated)) == (want, 1 if stats else 0), (v, r)
                counts["checked"] += 1
                counts["saturated"] += bool(stats)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert counts["checked"] == len(values) * len(rands)
    assert counts["saturated"] > 0          # every case here reaches a clamp


@pytest.mark.parametrize("width,frac", [(10, 4), (10, 0), (10, 9), (8, 7), (6, 1)])
def test_hardtanh_exhaustive(width, frac):
    """Every value of a signed activation: the bitwise clamp and mask equal the golden
    model's ``np.clip(a, -1, 1)`` and ``-1 < a < 1`` (sim/golden.py), for formats with
    no integer bits and no fraction bits too."""
    a = Signal(signed(width))
    value, inside = hardtanh(a, frac)
    h, mask = Signal(signed(width)), Signal()
    m = Module()
    m.d.comb += [h.eq(value), mask.eq(inside)]
    one = 1 << frac
    values = range(-(1 << (width - 1)), 1 << (width - 1))
    seen = set()

    async def bench(ctx):
        for v in values:
            ctx.set(a, v)
            want = (int(np.clip(v, -one, one)), int(-one < v < one))
            assert (ctx.get(h), ctx.get(mask)) == want, v
            seen.add(want[1])

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {0, 1}


@pytest.mark.parametrize("a_shape,b_shape", [(signed(16), signed(16)), (signed(18), unsigned(9)),
                                             (unsigned(18), signed(11)), (signed(16), signed(18))])
@pytest.mark.parametrize("form", ["inferred", "MULT18X18D"])
def test_registered_product(a_shape, b_shape, form):
    """p is the product of the operands taken two enabled cycles before, and holds still
    on cycles without ``en``: the inferred form, and the ECP5 primitive's wiring (every
    A/B/P bit, the sign controls, CE0) through a behavioural model of the MULT18X18D."""
    dut = RegisteredProduct(a_shape, b_shape, primitive=None if form == "inferred" else "MULT18X18D",
                            model=form != "inferred")
    rng = np.random.default_rng(a_shape.width * 31 + b_shape.width)

    def draw(shape):
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
        return int(rng.choice([lo, hi, lo + 1, -1 if shape.signed else 1, 0, int(rng.integers(lo, hi + 1))]))

    checked = []

    async def bench(ctx):
        taken = []                       # operands of the enabled cycles, oldest first
        for cycle in range(400):
            a, b, en = draw(a_shape), draw(b_shape), bool(rng.random() < 0.7)
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            if len(taken) >= 2:          # p shows the product of the last-but-one take
                assert ctx.get(dut.p) == taken[-2][0] * taken[-2][1], cycle
                checked.append(cycle)
            await ctx.tick()
            if en:
                taken.append((a, b))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 300


def test_registered_product_rejects_wide_operands():
    with pytest.raises(ValueError, match=r"^MULT18X18D operand b has 19 bits; at most 18 fit$"):
        RegisteredProduct(signed(16), signed(19), primitive="MULT18X18D")
    with pytest.raises(ValueError, match=r"^Multiplier primitive must be None or 'MULT18X18D', not 'DSP48'$"):
        RegisteredProduct(signed(16), signed(16), primitive="DSP48")


@pytest.mark.parametrize("per_cycle", [1, 3])
def test_lfsr_draw_matches_reference(per_cycle):
    seed = seed_state(5, 2)
    dut = LFSRDraw(per_cycle=per_cycle, reset_state=1)
    ref = LFSR(seed)

    async def bench(ctx):
        ctx.set(dut.seed, seed)
        ctx.set(dut.load, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        # ``words`` always shows the next draws; they are consumed only on cycles with ``en``.
        for cycle in range(6):
            enable = cycle % 3 != 1
            ctx.set(dut.en, enable)
            words = ctx.get(dut.words)
            got = [(words >> (32 * k)) & 0xFFFFFFFF for k in range(per_cycle)]
            peek = LFSR(ref.state)
            assert got == [peek.draw() for _ in range(per_cycle)]
            if enable:
                for _ in range(per_cycle):
                    ref.draw()
            await ctx.tick()
        assert ctx.get(dut.words) & 0xFFFFFFFF == LFSR(ref.state).draw()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_requantize_rejects_bad_parameters():
    # (construction fails, so there is no elaboratable left unused)
    with pytest.raises(ValueError, match=r"^Input width must be a positive integer, not 0$"):
        Requantize(0, 0, FixedFormat.parse("s1.6"))
    with pytest.raises(ValueError, match=r"^Rounding mode must be trunc, nearest or stochastic, not 'up'$"):
        Requantize(8, 0, FixedFormat.parse("s1.6"), "up")
