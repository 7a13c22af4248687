# amaranth: UnusedElaboratable=no
"""The whole engine in Amaranth's simulator on small networks, against the golden model."""

import numpy as np
import pytest

from dfa_engine.config import config_from_dict
from dfa_engine.hdl.engine import host_address
from dfa_engine.sim.amaranth_tb import run_engine
from dfa_engine.sim.golden import GoldenModel

CONFIGS = {
    "dfa-k2-P2": {"network": {"layers": [6, 5, 4], "methods": ["dfa"]}, "training": {"lr_shift": 3},
                  "feedback": {"k": 2}, "hardware": {"lanes": 2}},
    "bp-P1": {"network": {"layers": [5, 4, 3], "methods": ["bp"]}, "training": {"lr_shift": 2},
              "hardware": {"lanes": 1}},
    "hybrid-3hidden-P4-pow2": {"network": {"layers": [7, 6, 5, 6, 3], "methods": ["dfa", "bp", "dfa"],
                                           "activation": "hardtanh"},
                               "training": {"lr_shift": [3, 4, 3, 2]},
                               "feedback": {"k": 2, "values": "pow2", "max_shift": 2}, "hardware": {"lanes": 4}},
    "dfa-fixed-multiplier-trunc": {"network": {"layers": [4, 9, 3], "methods": ["dfa"]},
                                   "training": {"learning_rate": 0.2}, "rounding": {"forward": "trunc", "update": "trunc"},
                                   "feedback": {"k": 1, "values": "fixed"},
                                   "formats": {"weight": "s2.9", "bias": "s2.9", "update": "s1.9",
                                               "activation": "s3.8", "delta": "s0.11", "error": "s1.10"},
                                   "hardware": {"lanes": 3}},
    "dense-P3": {"network": {"layers": [5, 7, 4], "methods": ["dfa"]}, "training": {"lr_shift": 3},
                 "feedback": {"kind": "dense", "values": "fixed"}, "formats": {"feedback": "s0.7"},
                 "hardware": {"lanes": 3}},
    "lfsr-k2-pow2-2hidden-P2": {"network": {"layers": [5, 7, 6, 4], "methods": ["dfa", "dfa"]},
                                "training": {"lr_shift": 3},
                                "feedback": {"k": 2, "values": "pow2", "max_shift": 3, "storage": "lfsr"},
                                "hardware": {"lanes": 2}},
}


def _with_schedule(d, schedule):
    return {**d, "hardware": {**d.get("hardware", {}), "schedule": schedule}}


@pytest.mark.parametrize("schedule", ["two_pass", "one_pass"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_matches_golden(name, schedule):
    cfg = config_from_dict(_with_schedule(CONFIGS[name], schedule))
    rng = np.random.default_rng(len(name))
    n = 12
    X = rng.integers(cfg.formats.input.min_raw, cfg.formats.input.max_raw + 1, size=(n, cfg.layers[0]))
    Y = rng.integers(0, cfg.n_classes, size=n)
    train = [True] * n
    train[5] = False           # one inference in the middle
    Y[7] = cfg.n_classes + 3   # a label outside the class range: rejected, not trained
    results, params, counters = run_engine(cfg, X, Y, train=train, idle=0.2, backpressure=0.3, seed=1)
    golden = GoldenModel(cfg)
    for s in range(n):
        if train[s] and Y[s] < cfg.n_classes:
            pred = golden.train_step(X[s], int(Y[s]))
        else:
            pred = golden.predict(X[s])
        assert results[s][0] == pred, f"sample {s}: prediction"
        if train[s] and Y[s] < cfg.n_classes:
            assert results[s][1] == list(golden.last_error), f"sample {s}: e"
        assert results[s][2] == int(train[s] and Y[s] < cfg.n_classes)
        assert results[s][3] == int(Y[s] >= cfg.n_classes)
    for l, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        assert np.array_equal(W, Wg), f"layer {l + 1} weights"
        assert np.array_equal(b, bg), f"layer {l + 1} biases"
    assert counters["samples_trained"] == n - 2
    assert counters["samples_inferred"] == 1
    assert counters["rejected_labels"] == 1
    assert counters["samples_received"] == n
    assert counters["rejected_addresses"] == 0


@pytest.mark.parametrize("schedule", ["two_pass", "one_pass"])
@pytest.mark.parametrize("name", ["dfa-k2-P2", "bp-P1", "hybrid-3hidden-P4-pow2"])
def test_single_port_weights_match_golden(name, schedule):
    """memory = "spram": one read or write of a weight word per cycle; same results and
    weights as the golden model, with host writes and reads in between samples."""
    d = _with_schedule(CONFIGS[name], schedule)
    cfg = config_from_dict({**d, "hardware": {**d["hardware"], "memory": "spram"}})
    rng = np.random.default_rng(11)
    n = 8
    X = rng.integers(cfg.formats.input.min_raw, cfg.formats.input.max_raw + 1, size=(n, cfg.layers[0]))
    Y = rng.integers(0, cfg.n_classes, size=n)
    train = [True] * n
    train[4] = False
    addr = host_address(cfg, "weight", layer=0, row=1, column=2)
    golden = GoldenModel(cfg)
    host_ops = [(3, addr, 1, 77), (6, addr, 0, 0)]
    results, params, counters = run_engine(cfg, X, Y, train=train, idle=0.2, backpressure=0.3, seed=2,
                                           host_ops=host_ops)
    for s in range(n):
        if s == 3:
            golden.write_parameter("weight", 0, 1, 2, 77)
        pred = golden.train_step(X[s], int(Y[s])) if train[s] else golden.predict(X[s])
        assert results[s][0] == pred, f"sample {s}: prediction"
        if s == 5:
            assert counters["host"][1] == (int(golden.W[0][1, 2]), 0)
    for l, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        assert np.array_equal(W, Wg), f"layer {l + 1} weights"
        assert np.array_equal(b, bg), f"layer {l + 1} biases"
    assert counters["samples_trained"] == n - 1


def test_engine_output_errors_match_golden_trace():
    cfg = config_from_dict(CONFIGS["dfa-k2-P2"])
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, size=(6, 6))
    Y = rng.integers(0, 4, size=6)
    results, _, _ = run_engine(cfg, X, Y)
    golden = GoldenModel(cfg, trace=True)
    golden.train_epoch(X, Y)
    for s in range(6):
        assert results[s][1] == list(golden.trace[s]["e"])


def test_host_port_writes_reads_and_refuses():
    cfg = config_from_dict(CONFIGS["dfa-k2-P2"])
    f = cfg.formats
    ops = [
        (0, host_address(cfg, "weight", 1, 3, 4), 1, -1234),               # write W2[3, 4]
        (0, host_address(cfg, "bias", 0, 4), 1, 777),                      # write b1[4]
        (0, host_address(cfg, "weight", 0, 5, 0), 1, 5),                   # row 5 of 5: refused
        (0, host_address(cfg, "weight", 0, 0, 6), 0, 0),                   # column 6 of 6: refused
        (0, host_address(cfg, "weight", 0, 0, 0), 1, f.weight.max_raw + 1),  # value out of range: refused
        (0, host_address(cfg, "counter", counter="samples_trained"), 1, 5),  # counters are read-only
    ]
    X = np.zeros((0, 6), dtype=np.int64)
    results, params, counters = run_engine(cfg, X, [], host_ops=ops)
    assert [err for _, err in counters["host"]] == [0, 0, 1, 1, 1, 1]
    assert params[1][0][3, 4] == -1234
    assert params[0][1][4] == 777
    assert counters["rejected_addresses"] == 4
    golden = GoldenModel(cfg)
    W2 = golden.W[1].copy()
    W2[3, 4] = -1234
    assert np.array_equal(params[1][0], W2)


def test_sample_arriving_during_weight_load_waits_and_is_trained_once():
    """A host write and a sample presented in the same cycle: the write goes first (the
    sample stream is held by backpressure, nothing lost), then the sample trains once."""
    from amaranth.sim import Simulator

    from dfa_engine.hdl.engine import Engine

    cfg = config_from_dict(CONFIGS["dfa-k2-P2"])
    dut = Engine(cfg)
    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, size=6)
    label = 2
    addr = host_address(cfg, "weight", 0, 1, 3)
    log = {}

    async def bench(ctx):
        ctx.set(dut.host_req.payload, {"address": addr, "write": 1, "data": 4321})
        ctx.set(dut.host_req.valid, 1)
        ctx.set(dut.sample.payload, {"data": int(x[0]), "label": label, "train": 1})
        ctx.set(dut.sample.valid, 1)
        ctx.set(dut.host_resp.ready, 1)
        ctx.set(dut.result.ready, 1)
        cycle = 0
        j = 0
        while "result" not in log:
            if ctx.get(dut.host_req.valid) and ctx.get(dut.host_req.ready):
                log["host_accepted"] = cycle
            if ctx.get(dut.sample.valid) and ctx.get(dut.sample.ready) and "first_sample" not in log:
                log["first_sample"] = cycle
            host_done = ctx.get(dut.host_req.valid) and ctx.get(dut.host_req.ready)
            sample_moved = ctx.get(dut.sample.valid) and ctx.get(dut.sample.ready)
            if ctx.get(dut.result.valid):
                log["result"] = int(ctx.get(dut.result.payload.trained))
            await ctx.tick()
            cycle += 1
            if host_done:
                ctx.set(dut.host_req.valid, 0)
            if sample_moved:
                j += 1
                if j < len(x):
                    ctx.set(dut.sample.payload, {"data": int(x[j]), "label": label, "train": 1})
                else:
                    ctx.set(dut.sample.valid, 0)
        ctx.set(dut.host_req.payload, {"address": addr, "write": 0, "data": 0})
        ctx.set(dut.host_req.valid, 1)
        await ctx.tick().until(dut.host_req.ready)
        ctx.set(dut.host_req.valid, 0)
        (resp,) = await ctx.tick().sample(dut.host_resp.payload).until(dut.host_resp.valid)
        log["w_after"] = int(resp.data)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert log["host_accepted"] < log["first_sample"]
    assert log["result"] == 1
    from dfa_engine.feedback import initial_parameters

    params = initial_parameters(cfg)
    params[0][0][1, 3] = 4321      # the host write, applied before the sample
    golden = GoldenModel(cfg, params=params)
    golden.train_step(x, label)
    assert log["w_after"] == golden.W[0][1, 3]


def _reset_scenario(cfg, x_a, x_b, label_a, label_b, reset_after, partial_b):
    """Sample A in full; ``reset_after`` cycles later a 2-cycle reset; then ``partial_b``
    elements of sample B and a 1-cycle reset (B discarded); then B in full. Returns the
    results seen, the parameters and the counters read back."""
    from amaranth.hdl import ClockDomain, Module
    from amaranth.sim import Simulator

    from dfa_engine.hdl.engine import COUNTERS, Engine

    dut = Engine(cfg)
    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    # the testbench waits on a reset-less twin of the clock (a wait on `sync` itself
    # would be interrupted by the resets under test)
    top.domains.tb = tb = ClockDomain("tb", reset_less=True)
    top.d.comb += tb.clk.eq(cd.clk)
    top.submodules.dut = dut
    out = {"results": []}

    async def send(ctx, x, label, count=None):
        for v in x[:count]:
            ctx.set(dut.sample.payload, {"data": int(v), "label": label, "train": 1})
            ctx.set(dut.sample.valid, 1)
            await ctx.tick("tb").until(dut.sample.ready)
        ctx.set(dut.sample.valid, 0)

    async def pulse_reset(ctx, cycles):
        ctx.set(cd.rst, 1)
        await ctx.tick("tb").repeat(cycles)
        ctx.set(cd.rst, 0)

    async def host(ctx, address):
        ctx.set(dut.host_req.payload, {"address": address, "write": 0, "data": 0})
        ctx.set(dut.host_req.valid, 1)
        await ctx.tick("tb").until(dut.host_req.ready)
        ctx.set(dut.host_req.valid, 0)
        ctx.set(dut.host_resp.ready, 1)
        (resp,) = await ctx.tick("tb").sample(dut.host_resp.payload).until(dut.host_resp.valid)
        ctx.set(dut.host_resp.ready, 0)
        return int(resp.data)

    async def monitor(ctx):
        ctx.set(dut.result.ready, 1)
        async for _clk, _rst, valid, payload in ctx.tick("tb").sample(dut.result.valid, dut.result.payload):
            if valid:
                out["results"].append((int(payload.prediction), [int(v) for v in payload.e]))

    async def bench(ctx):
        await send(ctx, x_a, label_a)
        if reset_after:
            await ctx.tick("tb").repeat(reset_after)
        await pulse_reset(ctx, 2)
        await send(ctx, x_b, label_b, partial_b)
        await pulse_reset(ctx, 1)
        await send(ctx, x_b, label_b)
        await ctx.tick("tb").until(dut.result.valid)
        await ctx.tick("tb").repeat(2)
        params = []
        for layer in range(cfg.n_layers):
            n_out, n_in = cfg.layers[layer + 1], cfg.layers[layer]
            W = np.array([[await host(ctx, host_address(cfg, "weight", layer, i, j)) for j in range(n_in)]
                          for i in range(n_out)])
            b = np.array([await host(ctx, host_address(cfg, "bias", layer, i)) for i in range(n_out)])
            params.append((W, b))
        out["params"] = params
        out["counters"] = {name: await host(ctx, host_address(cfg, "counter", counter=name)) for name in COUNTERS}

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(monitor)
    sim.run()
    return out


@pytest.mark.parametrize("schedule", ["two_pass", "one_pass"])
@pytest.mark.parametrize("reset_after", [0, 3, 9, 17, 26, 40, 60])
def test_reset_mid_training_trains_every_accepted_sample_once(reset_after, schedule):
    """A reset while sample A is in flight (forward, error, delta or update, by the delay)
    is deferred until A's update is complete: A is trained exactly once, its result is
    dropped and counted; a partial sample B is discarded and counted, then B sent again
    trains once. The weights equal the golden model trained on A then B."""
    cfg = config_from_dict(_with_schedule(CONFIGS["dfa-k2-P2"], schedule))
    rng = np.random.default_rng(reset_after)
    x_a, x_b = rng.integers(0, 256, size=(2, 6))
    out = _reset_scenario(cfg, x_a, x_b, 1, 3, reset_after, partial_b=4)
    golden = GoldenModel(cfg)
    golden.train_step(x_a, 1)
    pred_b = golden.train_step(x_b, 3)
    for (W, b), (Wg, bg) in zip(out["params"], golden.parameters()):
        assert np.array_equal(W, Wg) and np.array_equal(b, bg)
    c = out["counters"]
    assert c["samples_trained"] == 2 and c["samples_received"] == 2
    assert c["resets"] == 2 and c["aborted_samples"] == 1
    # A's result is dropped unless it was taken before the reset request
    assert len(out["results"]) + c["dropped_outputs"] == 2
    assert out["results"][-1] == (pred_b, list(golden.last_error))
