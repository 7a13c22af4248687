# amaranth: UnusedElaboratable=no
"""The single-port weight memory (``hdl/memory.py``) in the Amaranth simulator: the SPRAM
tiling (rows by address, columns by width, every tile selected, writes steered by the
write address's row) against a plain dictionary, with the tile primitive replaced by its
behavioural model; the delay line (registers or a RAM); and ``times_const``, the
multiplier-free address arithmetic."""

import random

import pytest
from amaranth.hdl import Const, Module, Signal
from amaranth.sim import Simulator

from dfa_engine.hdl.arith import times_const
from dfa_engine.hdl.memory import SPRAM_DEPTH, DelayLine, SinglePortRAM, SPRAMTileModel


def _run_random_traffic(ram, depth, width, cycles, seed):
    """Random reads and writes; every read's word (next cycle) must equal the last word
    written there. Returns (reads checked, rows whose words were read)."""
    rng = random.Random(seed)
    # hot addresses at the same offsets in every row (a row is SPRAM_DEPTH words), so a
    # write that reached the wrong row would change a word that is read later
    offsets = [rng.randrange(depth % SPRAM_DEPTH or SPRAM_DEPTH) for _ in range(6)] + [0]
    hot = sorted({r * SPRAM_DEPTH + o for r in range(-(-depth // SPRAM_DEPTH)) for o in offsets
                  if r * SPRAM_DEPTH + o < depth} | {depth - 1})
    ref = {}
    checked, rows_read = [0], set()

    async def bench(ctx):
        for a in hot:                                   # fill every hot address first
            ref[a] = rng.getrandbits(width)
            ctx.set(ram.wr_en, 1)
            ctx.set(ram.wr_addr, a)
            ctx.set(ram.wr_data, ref[a])
            await ctx.tick()
        expect = None
        for _ in range(cycles):
            if expect is not None:
                assert ctx.get(ram.rd_data) == ref_at_read, (expect, hex(ctx.get(ram.rd_data)))
                checked[0] += 1
            a = rng.choice(hot)
            # a different address for the other port: the RAM must use the right one
            ctx.set(ram.rd_addr, rng.choice(hot))
            ctx.set(ram.wr_addr, rng.choice(hot))
            if rng.random() < 0.4:
                ref[a] = rng.getrandbits(width)
                ctx.set(ram.wr_en, 1)
                ctx.set(ram.wr_addr, a)
                ctx.set(ram.wr_data, ref[a])
                expect = None
            else:
                ctx.set(ram.wr_en, 0)
                ctx.set(ram.rd_addr, a)
                ctx.set(ram.wr_data, rng.getrandbits(width))
                expect, ref_at_read = a, ref[a]
                rows_read.add(a // SPRAM_DEPTH)
            await ctx.tick()

    m = Module()
    m.submodules.ram = ram
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return checked[0], rows_read


@pytest.mark.parametrize("width", [14, 20])
def test_spram_tiles_read_back_every_write_across_rows(width):
    depth = 2 * SPRAM_DEPTH + 300                      # three rows of tiles
    ram = SinglePortRAM(width, depth, spram=True, name="W1", tile_model=True)
    checked, rows = _run_random_traffic(ram, depth, width, cycles=600, seed=width)
    assert checked > 250 and rows == {0, 1, 2}


def test_block_ram_version_agrees_with_the_same_traffic():
    depth = 700
    ram = SinglePortRAM(20, depth, name="W1")
    checked, rows = _run_random_traffic(ram, depth, 20, cycles=400, seed=3)
    assert checked > 150


def test_tile_model_word_after_a_write_is_garbage():
    """The model marks the undefined word after a write, so a controller that used it
    would fail the tests above (and the tiling test does not rely on it)."""
    t = SPRAMTileModel()
    seen = []

    async def bench(ctx):
        ctx.set(t.chipselect, 1)
        ctx.set(t.wren, 1)
        ctx.set(t.address, 5)
        ctx.set(t.datain, 0x1234)
        await ctx.tick()
        seen.append(ctx.get(t.dataout))
        ctx.set(t.wren, 0)
        await ctx.tick()
        seen.append(ctx.get(t.dataout))

    sim = Simulator(t)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [SPRAMTileModel.GARBAGE, 0x1234]


@pytest.mark.parametrize("c", [0, 1, 2, 3, 10, 64, 784, 1000, 4095])
def test_times_const_is_the_product(c):
    x = Signal(12)
    y = Signal(24)
    m = Module()
    m.d.comb += y.eq(times_const(x, c))
    values = [0, 1, 2, 5, 777, 4095]
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(x, v)
            got.append(ctx.get(y))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == [v * c for v in values]


def test_times_const_rejects_a_negative_constant():
    with pytest.raises(ValueError, match="times_const: the constant must be an integer >= 0, not -3"):
        times_const(Const(1, 4), -3)


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7, 8])
def test_delay_line_gives_the_input_of_depth_cycles_ago(depth, in_memory):
    """Random words every cycle, for many times the pointer's wrap: the output at cycle t
    is the input of cycle t - depth (checked from the first cycle whose input exists)."""
    rng = random.Random(depth)
    dut = DelayLine(13, depth, in_memory=in_memory)
    words = [rng.getrandbits(13) for _ in range(200)]
    seen = []

    async def bench(ctx):
        for w in words:
            ctx.set(dut.i, w)
            seen.append(ctx.get(dut.o))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen[depth:] == words[:len(words) - depth]
    assert dut.in_memory == (in_memory and depth >= 2)


def test_delay_line_rejects_a_depth_below_one():
    with pytest.raises(ValueError, match="depth must be a positive integer, not 0"):
        DelayLine(4, 0, in_memory=True)
