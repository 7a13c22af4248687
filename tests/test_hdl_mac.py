# amaranth: UnusedElaboratable=no
"""MACArray against exact integer sums, with random idle and backpressure cycles."""

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from dfa_engine.hdl.mac import MACArray


@pytest.mark.parametrize("product_stage", [False, True])
@pytest.mark.parametrize("lanes,x_signed", [(1, False), (4, True), (16, False)])
def test_mac_array_sums_exactly(lanes, x_signed, product_stage):
    rng = np.random.default_rng(lanes)
    xw, ww, bw, acc_w = 8, 16, 24, 34
    dut = MACArray(lanes=lanes, x_shape=signed(xw) if x_signed else unsigned(xw), w_shape=signed(ww),
                   acc_width=acc_w, bias_shape=signed(bw), product_stage=product_stage)
    groups = []
    for n in (1, 7, 50):  # row groups of different fan-in, including the extremes of every operand
        x = rng.integers(-(1 << (xw - 1)) if x_signed else 0, (1 << (xw - 1)) if x_signed else (1 << xw), size=n)
        W = rng.integers(-(1 << (ww - 1)), 1 << (ww - 1), size=(lanes, n))
        x[0] = -(1 << (xw - 1)) if x_signed else (1 << xw) - 1
        W[:, 0] = -(1 << (ww - 1))
        b = rng.integers(-(1 << (bw - 1)), 1 << (bw - 1), size=lanes)
        groups.append((x, W, b, [int(b[p]) + sum(int(W[p, j]) * int(x[j]) for j in range(n)) for p in range(lanes)]))
    results = []

    async def driver(ctx):
        for x, W, b, _ in groups:
            for j in range(len(x)):
                while rng.random() < 0.3:  # idle cycles
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"x": int(x[j]), "w": [int(v) for v in W[:, j]],
                                        "bias": [int(v) for v in b], "first": j == 0, "last": j == len(x) - 1})
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def backpressure(ctx):
        while len(results) < len(groups):
            ctx.set(dut.o.ready, rng.random() < 0.6)
            await ctx.tick()

    async def sampler(ctx):
        """Records every output transfer (valid and ready at a clock edge)."""
        async for clk_edge, rst, valid, ready, payload in ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload):
            if valid and ready:
                results.append([int(v) for v in payload])
            if len(results) == len(groups):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(backpressure, background=True)
    sim.add_process(sampler)
    sim.run_until(1e-6 * 5000)
    assert results == [g[3] for g in groups]
