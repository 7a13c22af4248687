"""Drive a generated engine (MLP or CNN, :mod:`dfa_engine.hdl.family`) in Amaranth's Python simulator.

For small configurations and unit-level checks; long runs use Verilator (``sim/cocotb_tb``).
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from dfa_engine.hdl.family import engine_family


def run_engine(cfg, samples, labels, train=True, params=None, seed=0, idle=0.0, backpressure=0.0,
               host_ops=()):
    """Send ``samples`` through the engine; returns (results, parameters, counters).

    ``results``: list of (prediction, e list, trained, rejected) per sample.
    ``parameters``: [(W, b)] read back over the host port after the last sample.
    ``host_ops``: (after_sample_index, address, write, data) requests interleaved with samples;
    their responses are returned in ``counters["host"]``.
    """
    fam = engine_family(cfg)
    host_address = fam.host_address
    dut = fam.engine(cfg, params=params)
    rng = np.random.default_rng(seed)
    results, host_resp, params_out, counters = [], [], [], {}
    train_flags = [train] * len(samples) if isinstance(train, bool) else list(train)

    async def host(ctx, address, write=0, data=0):
        ctx.set(dut.host_req.payload, {"address": address, "write": write, "data": data})
        ctx.set(dut.host_req.valid, 1)
        await ctx.tick().until(dut.host_req.ready)
        ctx.set(dut.host_req.valid, 0)
        ctx.set(dut.host_resp.ready, 1)
        (resp,) = await ctx.tick().sample(dut.host_resp.payload).until(dut.host_resp.valid)
        ctx.set(dut.host_resp.ready, 0)
        return int(resp.data), int(resp.error)

    async def bench(ctx):
        ops = sorted(host_ops, key=lambda op: op[0])
        for s, (x, y) in enumerate(zip(samples, labels)):
            for op in [op for op in ops if op[0] == s]:
                host_resp.append(await host(ctx, *op[1:]))
            for j, v in enumerate(np.asarray(x).reshape(-1)):
                while rng.random() < idle:
                    ctx.set(dut.sample.valid, 0)
                    await ctx.tick()
                ctx.set(dut.sample.payload, {"data": int(v), "label": int(y), "train": int(train_flags[s])})
                ctx.set(dut.sample.valid, 1)
                await ctx.tick().until(dut.sample.ready)
            ctx.set(dut.sample.valid, 0)
            while True:
                ready = rng.random() >= backpressure
                ctx.set(dut.result.ready, ready)
                valid, p = ctx.get(dut.result.valid), ctx.get(dut.result.payload)
                await ctx.tick()   # the transfer happens at this edge if valid and ready
                if ready and valid:
                    results.append((int(p.prediction), [int(v) for v in p.e], int(p.trained), int(p.rejected)))
                    break
            ctx.set(dut.result.ready, 0)
        for op in [op for op in ops if op[0] >= len(samples)]:
            host_resp.append(await host(ctx, *op[1:]))
        for layer, (n_out, n_in) in enumerate(fam.matrix_shapes(cfg)):
            W = np.zeros((n_out, n_in), dtype=np.int64)
            b = np.zeros(n_out, dtype=np.int64)
            for i in range(n_out):
                for j in range(n_in):
                    W[i, j] = (await host(ctx, host_address(cfg, "weight", layer, i, j)))[0]
                b[i] = (await host(ctx, host_address(cfg, "bias", layer, i)))[0]
            params_out.append((W, b))
        for name in fam.counters:
            counters[name] = (await host(ctx, host_address(cfg, "counter", counter=name)))[0]
        counters["host"] = host_resp

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results, params_out, counters


def cycles_after_load(dut, x, label: int, train: bool = True) -> int:
    """Clock cycles from the last input transfer of one sample to its result (the engine's
    compute time for that sample), measured in Amaranth's simulator."""
    took = {}

    async def bench(ctx):
        for v in np.asarray(x).reshape(-1):
            ctx.set(dut.sample.payload, {"data": int(v), "label": int(label), "train": int(train)})
            ctx.set(dut.sample.valid, 1)
            await ctx.tick().until(dut.sample.ready)
        ctx.set(dut.sample.valid, 0)
        ctx.set(dut.result.ready, 1)
        n = 0
        while not ctx.get(dut.result.valid):
            await ctx.tick()
            n += 1
        took["cycles"] = n

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return took["cycles"]
