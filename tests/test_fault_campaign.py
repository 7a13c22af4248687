"""The fault campaign (issue 8, items 3 and 4): each case a test, each kind counted in
``docs/faults.md``.

After each fault: no hang (every wait has a bound), no wrap-around (saturation counted,
the RTL's count equal to the golden model's), the documented recovery, and every accepted
sample trained exactly once, so that the weights still equal the golden model's.

Kinds here (the ones the other test files did not cover yet, or covered with fewer cases):

- resets at random cycles during a weight load (engine, Verilator) and during frames on
  the host link (HostLink + engine, Amaranth simulator), with the host's documented
  recovery (``docs/host_link.md``, "Flow control");
- long stalls (5,000 cycles) on every stream of the engine and of the host link;
- saturation at every site (full-scale inputs, narrow formats, learning rate 1);
- labels outside the class range, one case per boundary value;
- every address of the host memory map's address space, engine and link;
- configuration files: syntax errors, truncations, wrong types and out-of-range values
  for every field, files of the wrong kind, values that look like code; through
  ``load_config`` and through the CLI;
- generated files (Verilog, engine.json, the build's report and scripts) free of paths,
  user and host names.

Verilator cases reuse the builds of ``tests/test_rtl_verilator.py`` (``CONFIGS["dfa-k1-P4"]``);
the saturation cases need one build of their own (about 15 s).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dfa_engine.config import ConfigError, config_from_dict, load_config
from dfa_engine.data import load_dataset

HERE = Path(__file__).parent
DFA_K1_P4 = {"network": {"layers": [64, 32, 10], "method": "dfa"}, "training": {"lr_shift": 5},
             "hardware": {"lanes": 4, "schedule": "two_pass"}}     # == test_rtl_verilator CONFIGS["dfa-k1-P4"]


def _digits(cfg, n):
    ds = load_dataset("digits")
    return cfg.formats.input.from_float(ds.x_train[:n]), ds.y_train[:n].copy()


# ==== Verilator: the bare engine through the Python testbench (tests/_fault_cocotb.py) ====

def _run_cocotb(cfg, X, Y, testcase, tag, params) -> dict:
    """Run one cocotb test of ``tests/_fault_cocotb.py`` on the bare engine; the build is the
    one ``run_directed`` (``tests/test_rtl_verilator.py``) makes for the same configuration."""
    from cocotb_tools.runner import get_results, get_runner

    from dfa_engine.gen.generate import TOP_NAME, generate
    from dfa_engine.sim import verilator_run as vr

    build_dir = vr.BUILD_ROOT / (vr._config_key(cfg, 0) + "-tb")
    src_dir, stamp = build_dir / "src", build_dir / "built.ok"
    vr._set_build_environment()
    runner = get_runner("verilator")
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.lock", "w") as lock:        # the same build as run_directed's
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            src_dir.mkdir(parents=True, exist_ok=True)
            generate(cfg, src_dir, init_parameters=True)
            runner.build(sources=[src_dir / f"{TOP_NAME}.v"], hdl_toplevel=TOP_NAME, build_dir=build_dir,
                         build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3"],
                         timescale=("1ns", "1ps"), always=True, log_file=build_dir / "build.log")
            stamp.write_text("ok\n")
    run_dir = build_dir / f"run_fault_{tag}_{os.getpid()}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with open(run_dir / "config.pkl", "wb") as fh:
        pickle.dump(cfg, fh)
    np.savez(run_dir / "data.npz", X=np.asarray(X, dtype=np.int64), Y=np.asarray(Y, dtype=np.int64))
    xml = run_dir / "results.xml"
    try:
        runner.test(hdl_toplevel=TOP_NAME, hdl_toplevel_lang="verilog", test_module="_fault_cocotb",
                    testcase=testcase, build_dir=build_dir, test_dir=run_dir,
                    extra_env={"DFA_CONFIG": str(run_dir / "config.pkl"), "DFA_DATA": str(run_dir / "data.npz"),
                               "DFA_FAULT": json.dumps(params), "DFA_FAULT_DIR": str(run_dir),
                               "OPENBLAS_NUM_THREADS": "1",
                               "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
                    results_xml=str(xml), log_file=run_dir / "sim.log")
    except SystemExit:
        pass                       # a failed cocotb test: the results say so
    tests, failed = get_results(xml) if xml.exists() else (1, 1)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    return {"tests": tests, "failed": failed, "log": str(run_dir / "sim.log"), **summary}


def _log_tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_resets_during_weight_load(seed):
    """Resets at random cycles (mean 60 cycles apart) during a 120-write weight load."""
    cfg = config_from_dict(DFA_K1_P4)
    X, Y = _digits(cfg, 4)
    out = _run_cocotb(cfg, X, Y, "resets_during_weight_load", f"wload{seed}",
                      {"seed": seed, "n_writes": 120, "reset_mean": 60})
    assert (out["tests"], out["failed"]) == (1, 0), _log_tail(out["log"])
    assert out["resets_injected"] >= 5 and out["counters_delta"]["dropped_outputs"] >= 1


@pytest.mark.parametrize("stream", ["sample", "result", "host_req", "host_resp"])
def test_engine_long_stall(stream):
    """5,000 cycles without valid (sample, host_req) or without ready (result, host_resp)."""
    cfg = config_from_dict(DFA_K1_P4)
    X, Y = _digits(cfg, 4)
    out = _run_cocotb(cfg, X, Y, "long_stall", f"stall_{stream}", {"stream": stream, "stall": 5000})
    assert (out["tests"], out["failed"]) == (1, 0), _log_tail(out["log"])


# ==== Verilator: saturation at every site =================================================

# Narrow formats, inputs u2.6 at full scale, learning rate 1 (lr_shift 0), ReLU: every
# saturation site of docs/numerics.md section 10 clamps (checked on the golden model below).
SATURATING = {"network": {"layers": [64, 32, 10], "method": "dfa", "activation": "relu"},
              "formats": {"input": "u2.6", "weight": "s1.6", "bias": "s0.4", "activation": "s2.4", "error": "s0.6",
                          "feedback": "s1.4", "delta": "s0.5", "update": "s0.6"},
              "feedback": {"k": 2}, "training": {"lr_shift": 0}, "hardware": {"lanes": 4}}
SAT_SITES = ("a1", "a2", "e", "delta2", "g1", "dW1", "dW2", "W1", "W2", "db1", "db2", "b1", "b2")


def _saturating_samples(n=120):
    cfg = config_from_dict(SATURATING)
    X, Y = _digits(cfg, n)
    X[::4] = cfg.formats.input.max_raw          # every fourth sample at full scale
    X[1::8] = 0                                 # and some all-zero ones
    return cfg, X, Y


def test_saturation_sites_all_clamp_in_the_golden_model():
    from dfa_engine.sim.golden import GoldenModel

    cfg, X, Y = _saturating_samples()
    golden = GoldenModel(cfg)
    for x, y in zip(X, Y):
        golden.train_step(x, int(y))
    assert set(golden.stats) == set(SAT_SITES), golden.stats
    assert all(v > 0 for v in golden.stats.values())


@pytest.mark.parametrize("reset_period", [0, 1500], ids=["no-resets", "resets"])
def test_rtl_saturating_training_counts_every_clamp(reset_period):
    """Every site saturates many times; the RTL's saturation counter equals the golden
    model's total, nothing wraps (the weights equal the golden model's), with and without
    resets at random cycles."""
    from dfa_engine.sim.verilator_run import run_training

    cfg, X, Y = _saturating_samples()
    s = run_training(cfg, X, Y, idle=0.2, backpressure=0.3, tag=f"fault-sat-{reset_period}", reset_period=reset_period)
    assert s["mismatch"] is None, s["mismatch"]
    assert s["params_equal"] is True
    c = s["counters"]
    assert c["saturation_events"] == s["golden_saturation_events"] > 1000
    assert c["samples_trained"] == len(X) and c["samples_received"] == len(X)
    if reset_period:
        assert c["resets"] >= 10 and c["dropped_outputs"] == sum(r.get("dropped", False) for r in s["results"])


# ==== The host link (HostLink + engine, Amaranth simulator, byte streams) =================

LINK_CFG = config_from_dict({"network": {"layers": [6, 5, 3], "methods": ["dfa"]}, "training": {"lr_shift": 3},
                             "feedback": {"k": 2}, "hardware": {"lanes": 2}})


class LinkBench:
    """``HostLink`` + ``Engine`` as ``boards/top.py`` connects them (without the UARTs: the
    host writes bytes to the link's receive stream and reads its transmit stream), in a
    ``sync`` domain whose reset the bench drives. The host follows ``docs/host_link.md``:
    stop and wait, a timeout, and the documented recovery (resend a WRITE, READ or STATUS;
    before resending a training SAMPLE, read ``samples_trained`` to tell a lost result from
    a lost request)."""

    def __init__(self, cfg, *, seed=0, idle=0.1, backpressure=0.2, timeout=1500):
        from amaranth.hdl import ClockDomain, ClockSignal, Module
        from amaranth.lib import wiring

        from dfa_engine.boards.link import HostLink
        from dfa_engine.hdl.engine import Engine
        from dfa_engine.host import FrameDecoder
        from dfa_engine.link_format import TO_HOST, LinkFormat

        self.cfg, self.fmt = cfg, LinkFormat(cfg)
        m = Module()
        m.domains.sync = self.cd = ClockDomain("sync")
        # the bench ticks on the same clock in a domain without reset (a tick of a domain
        # being reset raises in Amaranth's simulator)
        m.domains.tb = ClockDomain("tb", reset_less=True)
        m.d.comb += ClockSignal("tb").eq(ClockSignal("sync"))
        m.submodules.link = self.link = HostLink(cfg)
        m.submodules.engine = Engine(cfg)
        wiring.connect(m, self.link.engine, m.submodules.engine)
        self.m = m
        self.rng = np.random.default_rng(seed)
        self.idle, self.backpressure, self.timeout = idle, backpressure, timeout
        self.decoder = FrameDecoder(self.fmt, TO_HOST)
        self.received = []
        self.stats = {"timeouts": 0, "lost_results": 0, "resends": 0, "resets": 0, "stale": 0}
        self.reset_mean = 0            # 0: no resets injected
        self.stall_next_response = False   # hold tx.ready low for 5,000 cycles of a response

    # ---- the host's byte level ----
    async def send(self, ctx, data, gap_at=None, gap=0):
        link = self.link
        for k, byte in enumerate(data):
            if k == gap_at:
                await ctx.tick("tb").repeat(gap)
            while self.rng.random() < self.idle:
                await ctx.tick("tb")
            ctx.set(link.rx.payload, byte)
            ctx.set(link.rx.valid, 1)
            for _ in range(100_000):            # bounded: a link that never takes a byte is a hang
                *_, ready = await ctx.tick("tb").sample(link.rx.ready)
                if ready:
                    break
            else:
                raise AssertionError("the link took no byte for 100,000 cycles (a hang)")
            ctx.set(link.rx.valid, 0)

    async def exchange(self, ctx, frame, rtype, **send_args):
        """Send ``frame``; the first response of type ``rtype`` within the timeout, or None."""
        self.stats["stale"] += len(self.received)
        self.received.clear()
        await self.send(ctx, frame, **send_args)
        for _ in range(self.timeout):
            got = [f for f in self.received if f.type == rtype]
            if got:
                self.received.remove(got[0])
                return got[0]
            await ctx.tick("tb")
        return None

    async def request(self, ctx, frame, rtype, *, train_count=None, attempts=30, **send_args):
        """One request with the documented recovery; ``train_count``: for a training sample,
        the samples the host knows were trained before it. Returns the response, or
        ``"lost"`` for a training sample that was trained but whose result was lost."""
        for _ in range(attempts):
            resp = await self.exchange(ctx, frame, rtype, **send_args)
            if resp is not None:
                return resp
            self.stats["timeouts"] += 1
            if train_count is not None:
                n = await self.read_counter(ctx, "samples_trained")
                if n == train_count + 1:
                    self.stats["lost_results"] += 1
                    return "lost"
                assert n == train_count, (n, train_count)
            self.stats["resends"] += 1
        raise AssertionError(f"no response after {attempts} attempts (a hang)")

    async def read_counter(self, ctx, name):
        from dfa_engine.hdl.engine import host_address
        from dfa_engine.host import decode_payload, encode_read
        from dfa_engine.link_format import READ_RESP

        r = await self.request(ctx, encode_read(self.fmt, host_address(self.cfg, "counter", counter=name)), READ_RESP)
        return decode_payload(self.fmt, r)["data"]

    # ---- background processes ----
    async def _receiver(self, ctx):
        rng = np.random.default_rng(self.rng.integers(1 << 30))
        link = self.link
        while True:
            if self.stall_next_response and ctx.get(link.tx.valid):
                ctx.set(link.tx.ready, 0)
                for _ in range(5000):      # (single ticks: a background process may end mid-wait)
                    await ctx.tick("tb")
                self.stall_next_response = False
                self.stats["stalled"] = 5000
            ready = rng.random() >= self.backpressure
            ctx.set(link.tx.ready, ready)
            valid, byte = ctx.get(link.tx.valid), ctx.get(link.tx.payload)
            await ctx.tick("tb")
            if valid and ready:
                self.received.extend(self.decoder.feed(bytes((byte,))))

    async def _injector(self, ctx):
        rng = np.random.default_rng(self.rng.integers(1 << 30))
        while True:
            for _ in range(int(rng.integers(1, 2 * max(self.reset_mean, 1)))):
                await ctx.tick("tb")
            if self.reset_mean:
                ctx.set(self.cd.rst, 1)
                for _ in range(int(rng.integers(1, 4))):
                    await ctx.tick("tb")
                ctx.set(self.cd.rst, 0)
                self.stats["resets"] += 1

    def run(self, script):
        from amaranth.sim import Simulator

        done = {}

        async def host(ctx):
            done["result"] = await script(self, ctx)

        sim = Simulator(self.m)
        sim.add_clock(1e-6)
        sim.add_testbench(host)
        sim.add_testbench(self._receiver, background=True)
        sim.add_testbench(self._injector, background=True)
        sim.run()             # every wait of the host is bounded (timeouts, attempts): no hang
        return done["result"]


async def _read_all_params(bench, ctx):
    from dfa_engine.hdl.engine import host_address
    from dfa_engine.host import decode_payload, encode_read
    from dfa_engine.link_format import READ_RESP

    cfg = bench.cfg
    params = []
    for layer in range(cfg.n_layers):
        n_out, n_in = cfg.layers[layer + 1], cfg.layers[layer]
        W, b = np.zeros((n_out, n_in), dtype=np.int64), np.zeros(n_out, dtype=np.int64)
        for i in range(n_out):
            for j in range(n_in):
                r = await bench.request(ctx, encode_read(bench.fmt, host_address(cfg, "weight", layer, i, j)), READ_RESP)
                W[i, j] = decode_payload(bench.fmt, r)["data"]
            r = await bench.request(ctx, encode_read(bench.fmt, host_address(cfg, "bias", layer, i)), READ_RESP)
            b[i] = decode_payload(bench.fmt, r)["data"]
        params.append((W, b))
    return params


def _assert_params_equal(params, golden):
    for layer, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        assert np.array_equal(W, Wg), f"W{layer + 1} differs from the golden model"
        assert np.array_equal(b, bg), f"b{layer + 1} differs from the golden model"


async def _link_traffic(bench, ctx, golden, n_train=30, n_infer=4, n_writes=6, stall=None):
    """Writes, training samples (one with a label out of range) and inferences through the
    link with recovery; every result that arrives is checked against the golden model,
    which takes each step once."""
    from dfa_engine.hdl.engine import host_address
    from dfa_engine.host import decode_payload, encode_sample, encode_write
    from dfa_engine.link_format import RESULT, WRITE_ACK

    cfg, fmt, rng = bench.cfg, bench.fmt, bench.rng
    f = cfg.formats
    trained = 0
    checked = 0
    for _ in range(n_writes):
        layer = int(rng.integers(cfg.n_layers))
        i, j = int(rng.integers(cfg.layers[layer + 1])), int(rng.integers(cfg.layers[layer]))
        v = int(rng.integers(f.weight.min_raw // 4, f.weight.max_raw // 4))
        r = await bench.request(ctx, encode_write(fmt, host_address(cfg, "weight", layer, i, j), v), WRITE_ACK)
        assert decode_payload(fmt, r)["error"] is False
        assert golden.write_parameter("weight", layer, i, j, v)
    X = rng.integers(0, 256, size=(n_train + n_infer, cfg.layers[0]))
    Y = rng.integers(0, cfg.n_classes, size=n_train + n_infer)
    Y[3] = cfg.n_classes + 1
    for s in range(n_train + n_infer):
        train = s < n_train
        x, label = X[s], int(Y[s])
        ok = 0 <= label < cfg.n_classes
        send_args = {}
        if stall == "rx_gap" and s == 5:
            send_args = {"gap_at": 7, "gap": 5000}          # 5,000 cycles in the middle of the frame
        if stall == "tx_stall" and s == 5:
            bench.stall_next_response = True
        r = await bench.request(ctx, encode_sample(fmt, x, label, train), RESULT,
                                train_count=trained if (train and ok) else None, **send_args)
        if train and ok:
            pred = golden.train_step(x, label)
            e = [int(v) for v in golden.last_error]
            trained += 1
        else:
            y = golden.forward(x)[0][-1]
            # inference: e against the label sent; a label out of range: against class 0
            pred, e = int(np.argmax(y)), [int(v) for v in golden.output_error(y, label if ok else 0)]
        if r == "lost":
            continue
        res = decode_payload(fmt, r)
        assert (res["prediction"], res["e"]) == (pred, e), f"sample {s}"
        assert (res["trained"], res["rejected"]) == (train and ok, not ok), f"sample {s}"
        checked += 1
    return trained, checked


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_link_resets_during_frames(seed):
    """Resets (1-3 cycles) at random cycles, on average every 700, of a host link carrying
    writes, 30 training samples and 4 inferences: a reset loses the frame being received or
    sent and the link's own counters; the host times out and recovers as documented, and
    every accepted sample is trained exactly once (the weights read back equal the golden
    model's; ``samples_trained`` equals the host's count)."""
    from dfa_engine.sim.golden import GoldenModel

    bench = LinkBench(LINK_CFG, seed=seed)
    golden = GoldenModel(LINK_CFG)

    async def script(bench, ctx):
        bench.reset_mean = 700
        trained, checked = await _link_traffic(bench, ctx, golden)
        bench.reset_mean = 0
        await ctx.tick("tb").repeat(10)
        params = await _read_all_params(bench, ctx)
        return trained, checked, params, await bench.read_counter(ctx, "samples_trained"), \
            await bench.read_counter(ctx, "resets")

    trained, checked, params, n_trained, n_resets = bench.run(script)
    _assert_params_equal(params, golden)
    assert n_trained == trained == 29
    assert bench.stats["resets"] >= 5 and bench.stats["timeouts"] >= 1, bench.stats
    assert 1 <= n_resets - 1 <= bench.stats["resets"]          # (the first is the power-on reset)
    assert checked + bench.stats["lost_results"] == 34


@pytest.mark.parametrize("stall", ["rx_gap", "tx_stall"])
def test_link_long_stall(stall):
    """5,000 cycles without a byte in the middle of a SAMPLE frame (the receiver has no
    inter-byte timeout: the frame completes), or with the host not taking the bytes of a
    RESULT frame: nothing lost, no timeout, the weights equal the golden model's."""
    from dfa_engine.sim.golden import GoldenModel

    bench = LinkBench(LINK_CFG, seed=5, timeout=20_000)
    golden = GoldenModel(LINK_CFG)

    async def script(bench, ctx):
        trained, checked = await _link_traffic(bench, ctx, golden, n_train=10, n_infer=2, n_writes=2, stall=stall)
        params = await _read_all_params(bench, ctx)
        return trained, checked, params

    trained, checked, params = bench.run(script)
    _assert_params_equal(params, golden)
    assert (trained, checked) == (9, 12)
    assert bench.stats["timeouts"] == 0 and bench.decoder.counters["bad_frame"] == 0
    if stall == "tx_stall":
        assert bench.stats.get("stalled") == 5000


# ==== Labels outside the class range (engine, Amaranth simulator) =========================

@pytest.mark.parametrize("label", [3, 4, 255, 256, 0x7FFF, 0x8000, 0xFFFF])
def test_label_outside_the_class_range(label):
    """A training sample whose label is outside 0..C-1 (C = 3; the label field is 16 bits)
    is rejected, counted and not trained; the samples around it train as usual."""
    from dfa_engine.sim.amaranth_tb import run_engine
    from dfa_engine.sim.golden import GoldenModel

    cfg = LINK_CFG
    rng = np.random.default_rng(label)
    X = rng.integers(0, 256, size=(3, cfg.layers[0]))
    Y = [1, label, 2]
    results, params, counters = run_engine(cfg, X, Y, idle=0.2, backpressure=0.3, seed=label)
    golden = GoldenModel(cfg)
    golden.train_step(X[0], 1)
    assert results[1][0] == golden.predict(X[1]) and results[1][2:] == (0, 1)
    golden.train_step(X[2], 2)
    _assert_params_equal(params, golden)
    assert (counters["samples_trained"], counters["rejected_labels"], counters["samples_received"]) == (2, 1, 3)


# ==== Host addresses: only the documented memory map ======================================

def _memory_map(cfg):
    """Every documented address -> ("weight" | "bias", layer, row, col) or ("counter", name)."""
    from dfa_engine.hdl.engine import COUNTERS, host_address

    out = {}
    for layer in range(cfg.n_layers):
        for i in range(cfg.layers[layer + 1]):
            for j in range(cfg.layers[layer]):
                out[host_address(cfg, "weight", layer, i, j)] = ("weight", layer, i, j)
            out[host_address(cfg, "bias", layer, i)] = ("bias", layer, i, 0)
    for name in COUNTERS:
        out[host_address(cfg, "counter", counter=name)] = ("counter", name)
    return out


SWEEP_CFGS = {
    "6-5-3-P2": LINK_CFG,
    "5-4-3-3-P3": config_from_dict({"network": {"layers": [5, 4, 3, 3], "methods": ["dfa", "dfa"]},
                                    "hardware": {"lanes": 3}}),
}


@pytest.mark.parametrize("name", ["5-4-3-3-P3", "6-5-3-P2"])
def test_engine_refuses_every_address_outside_the_map(name):
    """A write and a read of every address of the host port's address space: inside the
    documented map (weights, biases; counters read-only) accepted, everything else refused
    (error bit) and counted in ``rejected_addresses``; no refused write changes anything."""
    from dfa_engine.hdl.engine import address_layout
    from dfa_engine.sim.amaranth_tb import run_engine
    from dfa_engine.sim.golden import GoldenModel

    cfg = SWEEP_CFGS[name]
    width = sum(address_layout(cfg, cfg.lanes).values())
    mmap = _memory_map(cfg)
    ops, want_err = [], []
    golden = GoldenModel(cfg)
    for a in range(1 << width):
        value = (a * 37) % 201 - 100
        ops.append((0, a, 1, value))
        target = mmap.get(a)
        ok = target is not None and target[0] != "counter"
        want_err.append(0 if ok else 1)
        if ok:
            golden.write_parameter(*target, value)
    for a in range(1 << width):
        ops.append((0, a, 0, 0))
        want_err.append(0 if a in mmap else 1)
    X = np.zeros((0, cfg.layers[0]), dtype=np.int64)
    _, params, counters = run_engine(cfg, X, [], host_ops=ops)
    got_err = [err for _, err in counters["host"]]
    wrong = [hex(ops[k][1]) for k in range(len(ops)) if got_err[k] != want_err[k]]
    assert not wrong, f"{len(wrong)} addresses answered wrongly, e.g. {wrong[:8]}"
    assert counters["rejected_addresses"] == sum(want_err)
    _assert_params_equal(params, golden)


def test_link_refuses_addresses_outside_the_map():
    """READ and WRITE frames for every address the link's 2-byte address field can carry
    above the engine's 9 bits (a sample of 64) and for every address below: refused with
    the error flag (by the link above the engine's width, by the engine inside it but
    outside the map), counted by the engine when it saw them, nothing changed."""
    from dfa_engine.hdl.engine import address_layout
    from dfa_engine.host import decode_payload, encode_frame
    from dfa_engine.link_format import READ, READ_RESP, WRITE, WRITE_ACK
    from dfa_engine.sim.golden import GoldenModel

    cfg = LINK_CFG
    width = sum(address_layout(cfg, cfg.lanes).values())
    mmap = _memory_map(cfg)
    bench = LinkBench(cfg, seed=9, idle=0.0, backpressure=0.0)
    fmt = bench.fmt
    rng = np.random.default_rng(9)
    above = sorted(set(int(a) for a in rng.integers(1 << width, 1 << (8 * fmt.address_bytes), size=64)))
    inside = list(range(1 << width))
    golden = GoldenModel(cfg)

    def raw(ftype, address, data=None):    # frames host.py would refuse to encode
        payload = address.to_bytes(fmt.address_bytes, "little")
        if data is not None:
            payload += int(data).to_bytes(fmt.data_bytes, "little", signed=True)
        return encode_frame(ftype, payload)

    async def script(bench, ctx):
        errors = []
        for a in above + inside:
            r = await bench.request(ctx, raw(WRITE, a, 17), WRITE_ACK)
            errors.append((a, "write", decode_payload(fmt, r)["error"]))
            r = await bench.request(ctx, raw(READ, a), READ_RESP)
            errors.append((a, "read", decode_payload(fmt, r)["error"]))
        return errors, await _read_all_params(bench, ctx), await bench.read_counter(ctx, "rejected_addresses")

    errors, params, rejected = bench.run(script)
    for a in inside:
        t = mmap.get(a)
        if t is not None and t[0] != "counter":
            golden.write_parameter(*t, 17)
    want = {(a, op): not (a in mmap and (op == "read" or mmap[a][0] != "counter"))
            for a in above + inside for op in ("write", "read")}
    wrong = [(hex(a), op) for a, op, err in errors if err != want[(a, op)]]
    assert not wrong, wrong[:8]
    _assert_params_equal(params, golden)
    assert rejected == sum(want[(a, op)] for a in inside for op in ("write", "read"))


# ==== Configuration files =================================================================

# A complete file that sets every field of every section (values valid together).
COMPLETE = """[network]
layers = [12, 8, 4]
activation = "relu"
method = "dfa"

[formats]
input = "u0.8"
weight = "s1.14"
bias = "s1.14"
activation = "s5.10"
accumulator = "auto"
error = "s1.14"
feedback = "s1.6"
delta = "s1.14"
update = "s1.14"
learning_rate = "u0.16"

[rounding]
forward = "nearest"
backward = "trunc"
update = "stochastic"
seed = 3

[training]
lr_shift = [5, 6]
epochs = 3
seed = 2

[feedback]
kind = "sparse"
k = 2
values = "pow2"
max_shift = 3
storage = "lfsr"
seed = 4

[softmax]
table_frac_bits = 4
table_size = 64

[hardware]
lanes = 4
memory = "auto"
schedule = "two_pass"
projection = "serial"
"""
_FIELDS = [(sec, key) for sec, body in tomllib.loads(COMPLETE).items() for key in body]

# (section, key) -> values outside its range (numbers) / its choices (strings)
OUT_OF_RANGE = {
    ("network", "layers"): [[12, 0, 4], [12, 65537, 4], [12], [12, 8, 1], []],
    ("formats", "accumulator"): [1, 65, 20],
    ("rounding", "seed"): [-1, 2**32],
    ("training", "lr_shift"): [[-1, 6], [5, 25], [5, 6, 7]],
    ("training", "epochs"): [0, 100001],
    ("training", "seed"): [-1, 2**32],
    ("feedback", "k"): [0, 5],
    ("feedback", "max_shift"): [-1, 16, 7],
    ("feedback", "seed"): [-1, 2**32],
    ("softmax", "table_frac_bits"): [-1, 9, 11],
    ("softmax", "table_size"): [1, 8192, 100],
    ("hardware", "lanes"): [0, 1025],
    ("network", "activation"): ["tanh", ""],
    ("network", "method"): ["fa"],
    ("formats", "input"): ["u60.8", "u0.-1", "x0.8"],
    ("formats", "weight"): ["u1.14", "s1,14", "s48.1"],
    ("formats", "learning_rate"): ["s0.15"],
    ("rounding", "forward"): ["stochastic", "up"],
    ("rounding", "update"): ["even"],
    ("feedback", "kind"): ["banded"],
    ("feedback", "values"): ["pm3"],
    ("feedback", "storage"): ["rom"],
    ("hardware", "memory"): ["ddr"],
    ("hardware", "schedule"): ["fused"],
    ("hardware", "projection"): ["fast"],
}


def _toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _with_field(section, key, value_text):
    """COMPLETE with one field's value replaced by ``value_text`` (TOML source)."""
    lines, current = [], None
    for line in COMPLETE.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.split(" = ")[0] == key:
            line = f"{key} = {value_text}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _wrong_types(section, key):
    """Values of a type the field never takes."""
    value = tomllib.loads(COMPLETE)[section][key]
    out = ["true", "{a = 1}"]
    out.append('"12"' if not isinstance(value, str) else "12")
    out.append("1.5" if not isinstance(value, float) else '"x"')
    if not isinstance(value, list):
        out.append("[1, 2]")
    return out


CONFIG_CASES = []       # (id, text, the field the message must name)
for sec, key in _FIELDS:
    for k, v in enumerate(_wrong_types(sec, key)):
        CONFIG_CASES.append((f"type-{sec}.{key}-{k}", _with_field(sec, key, v), f"{sec}.{key}"))
for (sec, key), values in OUT_OF_RANGE.items():
    for k, v in enumerate(values):
        CONFIG_CASES.append((f"range-{sec}.{key}-{k}", _with_field(sec, key, _toml_value(v)), f"{sec}."))
SYNTAX = {
    "header-unclosed": COMPLETE.replace("[formats]", "[formats"),
    "array-unclosed": COMPLETE.replace("[12, 8, 4]", "[12, 8, 4"),
    "string-unclosed": COMPLETE.replace('"relu"', '"relu'),
    "bare-word": COMPLETE.replace('"relu"', "relu"),
    "junk-after-value": COMPLETE.replace("epochs = 3", "epochs = 3 3"),
    "missing-value": COMPLETE.replace("epochs = 3", "epochs ="),
    "missing-equals": COMPLETE.replace("epochs = 3", "epochs 3"),
    "duplicate-key": COMPLETE.replace("epochs = 3", "epochs = 3\nepochs = 4"),
    "duplicate-table": COMPLETE + "[hardware]\n",
    "tab-in-key": COMPLETE.replace("lanes = 4", "la\tnes = 4"),
    "nul-byte": COMPLETE.replace("lanes = 4", "lanes = 4\x00"),
    "bom-in-middle": COMPLETE.replace("[softmax]", "\ufeff[softmax]"),
}
for name, text in SYNTAX.items():
    CONFIG_CASES.append((f"syntax-{name}", text, "(bad.toml)"))
# truncated inside a token: a header, a key, a string, an array, an inline table, after "="
for marker, cut in (("[formats]", 4), ("learning_rate = ", 5), ('"stochastic"', 6), ("[5, 6]", 3),
                    ("layers = [12, 8, 4]", 17), ("table_size = ", 13), ('"two_pass"', 1), ("activation = ", 13)):
    at = COMPLETE.index(marker) + cut
    CONFIG_CASES.append((f"truncated-at-{at}", COMPLETE[:at], "(bad.toml)"))
# the wrong kind of file
WRONG_KIND = {
    "json": json.dumps({"network": {"layers": [12, 8, 4]}}),
    "yaml": "network:\n  layers: [12, 8, 4]\n",
    "ini": "[network]\nlayers: 12, 8, 4\n",
    "python": "import os\nconfig = {'network': {'layers': [12, 8, 4]}}\n",
    "shell": "#!/bin/sh\nrm -rf /tmp/nothing\n",
    "csv": "layers,activation\n12,relu\n",
}
for name, text in WRONG_KIND.items():
    CONFIG_CASES.append((f"kind-{name}", text, None))


def _expect_config_error(message, field):
    assert "\n" not in message and "Traceback" not in message
    if field is not None:
        assert message.startswith(field), message


@pytest.mark.parametrize("text, field", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_configuration_file(tmp_path, text, field):
    """Every malformed, truncated, wrongly typed or out-of-range file is refused with one
    ConfigError line that names the field (or the file, for TOML syntax); never accepted."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    _expect_config_error(str(exc.value), field)


BINARY = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(40)),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(range(200, 256)),
    "latin1": b'[network]\nactivation = "r\xe9lu"\n',
    "utf16": "[network]\nlayers = [12, 8, 4]\n".encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_configuration_file(tmp_path, name):
    path = tmp_path / "bad.toml"
    path.write_bytes(BINARY[name])
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    _expect_config_error(str(exc.value), None)


def test_config_cases_cover_every_field():
    types = {c[0].split("-")[1] for c in CONFIG_CASES if c[0].startswith("type-")}
    assert types == {f"{s}.{k}" for s, k in _FIELDS} and len(_FIELDS) == 32
    # a file truncated at a line boundary is a shorter valid file (TOML has no end marker):
    # the fields it lost take their defaults. The one such cut checked here:
    assert load_config_text(COMPLETE[:COMPLETE.index("[formats]")]).layers == (12, 8, 4)


def load_config_text(text):
    return config_from_dict(tomllib.loads(text))


# Through the CLI: in process (argparse, the error path, the exit status) for every case,
# and as a real process for one case of each kind.
@pytest.mark.parametrize("text, field", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_cli_generate_bad_configuration(tmp_path, capsys, text, field):
    from dfa_engine.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["generate", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    _expect_config_error(err[0][len("error: "):], field)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["type-training.epochs-2", "range-hardware.lanes-1", "syntax-string-unclosed",
                                  "truncated-at-{}".format(COMPLETE.index('"stochastic"') + 6), "kind-json"])
def test_cli_generate_bad_configuration_process(tmp_path, case):
    text, field = {c[0]: c[1:] for c in CONFIG_CASES}[case]
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "dfa_engine.cli", "generate", str(path), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    _expect_config_error(lines[0][len("error: "):], field)


# ---- parsed as data only ----
CODE = ["__import__('os').system('touch {marker}')", "$(touch {marker})", "`touch {marker}`",
        "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}; open('{marker}', 'w')",
        "!!python/object/apply:os.system ['touch {marker}']", "eval(compile('open(\"{marker}\",\"w\")','x','exec'))"]


@pytest.mark.parametrize("where", ["network.activation", "formats.weight", "feedback.kind", "hardware.memory",
                                   "training.epochs", "key", "section"])
@pytest.mark.parametrize("code", range(len(CODE)))
def test_configuration_is_data_only(tmp_path, monkeypatch, where, code):
    """A value (or key, or section name) that is code stays a string: it is refused as a
    value outside the field's choices, or as an unknown key or section; nothing runs."""
    from dfa_engine.cli import main

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    payload = CODE[code].format(marker=marker)
    if where == "key":
        text = COMPLETE.replace("[hardware]\n", f"[hardware]\n{json.dumps(payload)} = 1\n")
    elif where == "section":
        text = COMPLETE + f"[{json.dumps(payload)}]\nx = 1\n"
    else:
        sec, key = where.split(".")
        text = _with_field(sec, key, json.dumps(payload))
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path)
    assert main(["check", str(path)]) == 2
    assert not marker.exists()
    assert not (tmp_path / "PWNED").exists()


# ==== Generated files: no path, user or host name =========================================

def _machine_names(tmp_path):
    import getpass
    import socket

    names = {str(tmp_path), str(Path.cwd()), str(Path.home()), sys.prefix, str(HERE.parent)}
    return names, getpass.getuser(), socket.gethostname()


def _assert_no_machine_names(files, names, user, host):
    import re

    for path in files:
        text = path.read_text(errors="replace")
        for name in names:
            assert name not in text, (path.name, name)
        for word in (user, host):
            # as a word (a 2-letter host name like "vm" may occur inside identifiers)
            assert not re.search(rf"(?<![A-Za-z0-9_$.]){re.escape(word)}(?![A-Za-z0-9_$])", text), (path.name, word)


def test_generated_verilog_and_engine_json_have_no_machine_names(tmp_path, monkeypatch):
    """``generate`` into two folders from two working directories, with the user and host
    names replaced by unique markers: the files are byte-identical and contain neither
    path, nor marker, nor the real user and host names."""
    import getpass
    import socket

    from dfa_engine.gen.generate import generate

    cfg = config_from_dict(DFA_K1_P4)
    names, user, host = _machine_names(tmp_path)
    outs = []
    for k, fake in enumerate(("usr-mark-71", "usr-mark-72")):
        monkeypatch.setattr(getpass, "getuser", lambda fake=fake: fake)
        monkeypatch.setattr(socket, "gethostname", lambda fake=fake: fake.replace("usr", "host"))
        monkeypatch.setenv("USER", fake)
        monkeypatch.setenv("HOSTNAME", fake.replace("usr", "host"))
        cwd = tmp_path / f"cwd{k}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        out = tmp_path / f"deep{k}" / "gen"
        generate(cfg, out)
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir()) and "engine.json" in files
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    _assert_no_machine_names(list(outs[0].iterdir()), names | {"usr-mark", "host-mark"}, user, host)


def test_build_outputs_have_no_machine_names(tmp_path, monkeypatch):
    """``dfa-engine build``'s outputs (report.json, engine.json, the Verilog, the scripts)
    with the tools stubbed out (a failed synthesis still writes the report): identical
    apart from the timings in two folders, and free of paths, user and host names."""
    from dfa_engine.gen import build as build_mod

    monkeypatch.setattr(build_mod, "_run_step", lambda cmd, cwd, env, log, timeout: (1, 0.0))
    cfg = config_from_dict({"network": {"layers": [16, 8, 4]}, "hardware": {"lanes": 1}})
    names, user, host = _machine_names(tmp_path)
    outs = []
    for k in range(2):
        cwd = tmp_path / f"cwd{k}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        out = tmp_path / f"b{k}" / "out"
        rep = build_mod.build(cfg, "icebreaker", out, freq_mhz=16.0, echo=lambda s: None)
        assert rep["status"] == "failed" and rep["failed_step"] == "synthesis"
        outs.append(out)
    reports = [json.loads((o / "report.json").read_text()) for o in outs]
    for r in reports:
        r.pop("times_s")
    assert reports[0] == reports[1]
    files = sorted(p.name for p in outs[0].iterdir() if p.is_file())
    assert "report.json" in files and "engine.json" in files
    for name in files:
        if name != "report.json":
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    _assert_no_machine_names([outs[0] / n for n in files], names, user, host)


def test_cli_generate_valid_configuration_the_engine_cannot_build(tmp_path):
    """A configuration that is valid (the golden model trains it) but that the engine does
    not implement (stochastic update rounding): one error line, status 2, no traceback
    (it was a ValueError traceback before)."""
    path = tmp_path / "stochastic.toml"
    path.write_text(COMPLETE, encoding="utf-8")
    assert load_config(path).rounding_update == "stochastic"
    r = subprocess.run([sys.executable, "-m", "dfa_engine.cli", "generate", str(path), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ['error: the engine does not implement rounding.update = "stochastic" yet']
