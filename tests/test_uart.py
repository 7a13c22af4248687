# amaranth: UnusedElaboratable=no
"""UARTRx and UARTTx: loopback, bit-level framing errors and glitches, constructor errors."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from dfa_engine.boards.uart import UARTRx, UARTTx, uart_divisor


def test_init():
    rx, tx = UARTRx(divisor=7), UARTTx(divisor=4)
    assert rx.divisor == 7 and tx.divisor == 4
    assert rx.o.payload.shape().width == 8 and tx.i.payload.shape().width == 8


@pytest.mark.parametrize("cls", [UARTRx, UARTTx])
def test_init_wrong_divisor(cls):
    with pytest.raises(ValueError, match=r"^Divisor must be at least 4 clock cycles per bit, not 3$"):
        cls(divisor=3)
    with pytest.raises(ValueError, match=r"^Divisor must be at least 4 clock cycles per bit, not -8$"):
        cls(divisor=-8)
    with pytest.raises(TypeError, match=r"^Divisor must be an integer number of clock cycles per bit, not 8\.0$"):
        cls(divisor=8.0)
    with pytest.raises(TypeError, match=r"^Divisor must be an integer number of clock cycles per bit, not True$"):
        cls(divisor=True)


def test_uart_divisor():
    assert uart_divisor(12e6, 115200) == 104
    with pytest.raises(ValueError, match=r"^A 1000000\.0 Hz clock cannot make 115200 baud within 2\.0%: "
                                         r"divisor 9 is 3\.5% off$"):
        uart_divisor(1e6, 115200)
    with pytest.raises(ValueError, match=r"^A 100000\.0 Hz clock is too slow for 115200 baud: 1 cycles per bit, "
                                         r"at least 4 needed$"):
        uart_divisor(1e5, 115200)


@pytest.mark.parametrize("divisor", [4, 11])
def test_sim_loopback(divisor):
    """Random bytes, TX pin wired to RX pin, with random idle time between bytes and a
    consumer that takes every byte within a byte time (UART has no backpressure)."""
    rng = np.random.default_rng(divisor)
    sent = [int(b) for b in rng.integers(0, 256, size=40)] + [0x00, 0xFF, 0x7E, 0x7D]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.rx = rx = UARTRx(divisor=divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got, errors = [], []

    async def sender(ctx):
        for b in sent:
            for _ in range(int(rng.integers(0, 3 * divisor))):
                await ctx.tick()
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)

    async def receiver(ctx):
        ctx.set(rx.o.ready, 1)
        while len(got) < len(sent):
            valid, payload = ctx.get(rx.o.valid), ctx.get(rx.o.payload)
            if ctx.get(rx.framing_error) or ctx.get(rx.overrun):
                errors.append(1)
            await ctx.tick()
            if valid:
                got.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.run()
    assert got == sent
    assert errors == []


def _drive_bits(divisor, frames, skew=0):
    """Drive the RX pin bit by bit: each frame is (byte, stop_bit). ``skew`` cycles are
    added to every bit time (a sender with a slower clock)."""
    dut = UARTRx(divisor=divisor)
    got, framing = [], []
    done = []

    async def pin(ctx):
        for _ in range(5):
            await ctx.tick()
        for byte, stop in frames:
            bits = [0] + [(byte >> i) & 1 for i in range(8)] + [stop]
            for b in bits:
                ctx.set(dut.rx, b)
                for _ in range(divisor + skew):
                    await ctx.tick()
            ctx.set(dut.rx, 1)
            for _ in range(2 * divisor):
                await ctx.tick()
        done.append(1)

    async def monitor(ctx):
        ctx.set(dut.o.ready, 1)
        while not done:
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            if ctx.get(dut.framing_error):
                framing.append(len(got))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(pin)
    sim.add_testbench(monitor)
    sim.run()
    return got, framing


def test_sim_bad_stop_bit_is_flagged_and_dropped():
    got, framing = _drive_bits(8, [(0x41, 1), (0x5A, 0), (0xC3, 1)])
    assert got == [0x41, 0xC3]
    assert framing == [1]        # one framing error, between the two good bytes


def test_sim_resynchronises_on_each_start_bit():
    """A sender 3% slow (one cycle per bit at divisor 33): sampling in the middle of each
    bit and restarting on every start edge keeps every byte."""
    got, framing = _drive_bits(33, [(b, 1) for b in (0x00, 0xFF, 0x55, 0xAA, 0x81)], skew=1)
    assert got == [0x00, 0xFF, 0x55, 0xAA, 0x81]
    assert framing == []


def test_sim_glitch_is_not_a_start_bit():
    dut = UARTRx(divisor=10)
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for _ in range(5):
            await ctx.tick()
        ctx.set(dut.rx, 0)           # 3 cycles low: shorter than half a bit
        for _ in range(3):
            await ctx.tick()
        ctx.set(dut.rx, 1)
        for _ in range(200):
            if ctx.get(dut.o.valid) or ctx.get(dut.framing_error):
                got.append(1)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == []


def test_sim_overrun():
    """A byte completed while the previous one waits is dropped and flagged."""
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=4)
    m.submodules.rx = rx = UARTRx(divisor=4)
    m.d.comb += rx.rx.eq(tx.tx)
    log = {"overrun": 0}

    async def bench(ctx):
        for b in (0x11, 0x22):
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)
        for _ in range(100):
            log["overrun"] += ctx.get(rx.overrun)
            await ctx.tick()
        log["held"] = ctx.get(rx.o.payload)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert log == {"overrun": 1, "held": 0x11}
