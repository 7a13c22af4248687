# amaranth: UnusedElaboratable=no
"""The output-error unit against the golden model, value for value."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from dfa_engine.config import config_from_dict
from dfa_engine.hdl.output_error import OutputError
from dfa_engine.sim.golden import GoldenModel


@pytest.mark.parametrize("classes,act,err,t,size", [(10, "s5.10", "s1.14", 4, 128), (3, "s3.8", "s0.7", 2, 16),
                                                    (16, "s5.10", "s1.14", 8, 4096)])
def test_output_error_matches_golden(classes, act, err, t, size):
    cfg = config_from_dict({"network": {"layers": [4, classes]},
                            "formats": {"activation": act, "error": err, "delta": err},
                            "softmax": {"table_frac_bits": t, "table_size": size}})
    golden = GoldenModel(cfg)
    fmt = cfg.formats.activation
    rng = np.random.default_rng(classes)
    cases = [np.zeros(classes, dtype=np.int64), np.full(classes, fmt.max_raw), np.full(classes, fmt.min_raw)]
    edge = np.full(classes, fmt.min_raw)
    edge[classes // 2] = fmt.max_raw
    cases.append(edge)
    for _ in range(25):
        spread = int(rng.choice([1 << fmt.frac_bits, 8 << fmt.frac_bits, fmt.max_raw]))
        cases.append(np.clip(rng.integers(-spread, spread + 1, size=classes), fmt.min_raw, fmt.max_raw))
    labels = [int(rng.integers(0, classes)) for _ in cases]
    lanes = 3
    dut = OutputError(cfg, lanes)
    got, latencies = [], []

    async def bench(ctx):
        for y, label in zip(cases, labels):
            # the logits, `lanes` a cycle, as the engine writes them
            for g in range(-(-classes // lanes)):
                vals = [int(y[g * lanes + p]) if g * lanes + p < classes else 0 for p in range(lanes)]
                ctx.set(dut.y_wr, {"en": 1, "group": g, "value": vals})
                await ctx.tick()
            ctx.set(dut.y_wr.en, 0)
            ctx.set(dut.i.payload, {"label": label})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 1)
            ticks = 0                       # clock edges from the start's transfer to o.valid
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                ticks += 1
            payload, e = ctx.get(dut.o.payload), ctx.get(dut.e)
            got.append(([int(v) for v in e], int(payload.prediction), int(payload.saturated)))
            latencies.append(ticks)
            await ctx.tick()                # the transfer on o

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == len(cases)
    for y, label, (e, pred, sat) in zip(cases, labels, got):
        golden.stats.clear()
        want = golden.output_error(y, label)
        assert e == list(want), (list(y), label)
        assert pred == int(np.argmax(y))
        assert sat == golden.stats.get("e", 0)
    # the schedule's figure (estimate_cycles, the loop-nest engines) counts the start's
    # transfer and the transfer on o besides these edges; two bits of E a cycle
    assert latencies == [OutputError.cycles(classes) - 2] * len(cases)
    assert OutputError.MUL_STEPS == 8
