# amaranth: UnusedElaboratable=no
"""Sparse feedback projection against the golden model's B_l e, requantized and masked."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from dfa_engine.config import config_from_dict
from dfa_engine.feedback import feedback_matrix, sparse_feedback
from dfa_engine.fixed import requantize
from dfa_engine.hdl.feedback import SparseProjection


@pytest.mark.parametrize("projection", ["parallel", "serial"])
@pytest.mark.parametrize("k,values,max_shift,lanes,error", [
    (1, "pm1", 0, 4, "s1.14"), (2, "pow2", 3, 3, "s1.14"), (3, "fixed", 0, 2, "s1.14"), (2, "pm1", 0, 1, "s3.12"),
])
def test_sparse_projection_matches_golden(k, values, max_shift, lanes, error, projection):
    cfg = config_from_dict({
        "network": {"layers": [5, 12, 10]},
        # a narrow delta format so that saturation happens for large errors
        "formats": {"error": error, "delta": "s0.9"},
        "feedback": {"kind": "sparse", "k": k, "values": values, "max_shift": max_shift},
        "hardware": {"projection": projection},
    })
    f = cfg.formats
    sp = sparse_feedback(cfg, 0)
    B = feedback_matrix(cfg, 0)
    rows = cfg.layers[1]
    rng = np.random.default_rng(k * 10 + lanes)
    dut = SparseProjection(cfg, lanes)
    errors = [rng.integers(f.error.min_raw, f.error.max_raw + 1, size=10) for _ in range(4)]
    errors.append(np.full(10, f.error.max_raw))
    masks = [rng.integers(0, 2, size=rows) for _ in errors]
    got = []

    async def driver(ctx):
        for e, mask in zip(errors, masks):
            for base in range(0, rows, lanes):
                entries = []
                for p in range(lanes):
                    i = min(base + p, rows - 1)
                    row = []
                    for j in range(k):
                        ent = {"index": int(sp.index[i, j]), "sign": int(sp.sign[i, j])}
                        if values == "pow2":
                            ent["shift"] = int(sp.shift[i, j])
                        if values == "fixed":
                            ent["magnitude"] = int(sp.magnitude[i, j])
                        row.append(ent)
                    entries.append(row)
                ctx.set(dut.i.payload, {"e": [int(v) for v in e], "entries": entries,
                                        "mask": sum(int(mask[min(base + p, rows - 1)]) << p for p in range(lanes)),
                                        "active": sum(1 << p for p in range(lanes) if base + p < rows)})
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sampler(ctx):
        want = len(errors) * -(-rows // lanes)
        async for _, _, valid, ready, payload in ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload):
            if valid and ready:
                got.append(([int(v) for v in payload.delta], int(payload.saturated)))
            if len(got) == want:
                break

    async def backpressure(ctx):
        while True:
            ctx.set(dut.o.ready, rng.random() < 0.7)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(backpressure, background=True)
    sim.add_process(sampler)
    sim.run_until(1e-2)
    assert len(got) == len(errors) * -(-rows // lanes)
    chunks = iter(got)
    any_saturated = False
    for e, mask in zip(errors, masks):
        stats = {}
        g = requantize(B @ e, f.error.frac_bits + f.feedback.frac_bits, f.delta, cfg.rounding_backward, stats=stats, name="g")
        want_delta = np.where(mask == 1, g, 0)
        sat_total = 0
        for base in range(0, rows, lanes):
            delta, sat = next(chunks)
            n = min(lanes, rows - base)
            assert delta == list(want_delta[base:base + n]) + [0] * (lanes - n)
            sat_total += sat
        # saturation is counted on every neuron, masked or not, as in the golden model
        assert sat_total == stats.get("g", 0)
        any_saturated |= sat_total > 0
    assert any_saturated
