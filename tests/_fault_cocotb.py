"""cocotb cases of the fault campaign (``tests/test_fault_campaign.py``) on the bare engine
in Verilator, through :class:`~dfa_engine.sim.cocotb_tb.EngineTB` (drivers and monitors with
random idle cycles and backpressure).

Started by ``_run_cocotb`` in the test file: the configuration arrives as a pickle named
by ``DFA_CONFIG``, the samples as ``DFA_DATA``, the case's knobs as JSON in ``DFA_FAULT``;
each test writes ``summary.json`` into ``DFA_FAULT_DIR`` and fails on any mismatch.

The golden model is replayed from the transfer log: every ``host_req`` write that was
transferred is applied, every sample transferred whole is trained (or inferred), in the
order the engine took them. That order is the only one the engine may follow (it serves
one request at a time), so the final parameters and every result must equal the replay's.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import with_timeout

from dfa_engine.hdl.engine import address_layout, host_address
from dfa_engine.sim.cocotb_tb import EngineTB, pack, unpack
from dfa_engine.sim.golden import GoldenModel


def _setup():
    with open(os.environ["DFA_CONFIG"], "rb") as fh:
        cfg = pickle.load(fh)
    data = np.load(os.environ["DFA_DATA"])
    return cfg, data["X"], data["Y"], json.loads(os.environ["DFA_FAULT"])


def _write_summary(summary):
    (Path(os.environ["DFA_FAULT_DIR"]) / "summary.json").write_text(json.dumps(summary, indent=1, default=int))


def _random_writes(cfg, rng, n, bad_fraction=0.0):
    """``n`` host writes: (address, value, target) with target (kind, layer, row, col) for
    a write inside the map and None for one the engine must refuse."""
    f = cfg.formats
    L = cfg.n_layers
    kind_shift = sum(address_layout(cfg, cfg.lanes).values()) - 2
    out = []
    for _ in range(n):
        layer = int(rng.integers(L))
        row, col = int(rng.integers(cfg.layers[layer + 1])), int(rng.integers(cfg.layers[layer]))
        if rng.random() < bad_fraction:
            choice = int(rng.integers(4))
            if choice == 0:
                out.append((host_address(cfg, "weight", L - 1, cfg.layers[L], 0), 1, None))    # a row past the layer
            elif choice == 1:
                out.append((host_address(cfg, "weight", 0, row, col), f.weight.max_raw + 1, None))  # value too large
            elif choice == 2:
                out.append((host_address(cfg, "counter", counter="resets"), 5, None))          # counters are read-only
            else:
                out.append((3 << kind_shift, 1, None))                                          # no such kind
        elif rng.random() < 0.8:
            out.append((host_address(cfg, "weight", layer, row, col), int(rng.integers(f.weight.min_raw, f.weight.max_raw + 1)),
                        ("weight", layer, row, col)))
        else:
            out.append((host_address(cfg, "bias", layer, row), int(rng.integers(f.bias.min_raw, f.bias.max_raw + 1)),
                        ("bias", layer, row, 0)))
    return out


def _replay(tb, cfg, writes_by_payload, samples):
    """The golden model replayed from the transfer log; returns (golden, expected results).

    ``writes_by_payload``: host_req payload -> (kind, layer, row, col, value) or None;
    ``samples``: the (x, label, train) of each sample, in the order they were queued."""
    golden = GoldenModel(cfg)
    expected = []
    n0 = cfg.layers[0]
    elements = 0
    for _, name, payload in tb.log:
        if name == "host_req":
            w = writes_by_payload.get(payload)
            if w is not None:
                assert golden.write_parameter(*w)
        elif name == "sample":
            elements += 1
            if elements % n0 == 0:
                x, label, train = samples[elements // n0 - 1]
                ok = 0 <= label < cfg.n_classes
                if train and ok:
                    pred = golden.train_step(x, label)
                    e = [int(v) for v in golden.last_error]
                else:
                    pred, e = golden.predict(x), None
                expected.append({"prediction": pred, "e": e, "trained": int(train and ok), "rejected": int(not ok)})
    return golden, expected


def _check_results(tb, expected):
    got = [unpack(tb.layout["result"], p) for _, name, p in tb.log if name == "result"]
    assert len(got) == len(expected), f"{len(got)} results, {len(expected)} expected"
    for k, (g, w) in enumerate(zip(got, expected)):
        for key in ("prediction", "trained", "rejected"):
            assert g[key] == w[key], f"result {k}: {key} {g[key]} != golden {w[key]}"
        if w["e"] is not None:
            assert g["e"] == w["e"], f"result {k}: e differs from the golden model"


async def _compare_params(tb, golden):
    params = await tb.read_params()
    for layer, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        if not np.array_equal(W, Wg):
            i, j = np.argwhere(W != Wg)[0]
            raise AssertionError(f"W{layer + 1}[{i}, {j}] = {W[i, j]} != golden {Wg[i, j]}")
        assert np.array_equal(b, bg), f"b{layer + 1} differs from the golden model"


def _req(tb, address, write, value):
    return pack(tb.layout["host_req"], {"address": address, "write": int(write), "data": value})


@cocotb.test()
async def resets_during_weight_load(dut):
    """A weight load (random writes, some outside the map or the format) through the host
    port with resets at random cycles (1-4 cycles long), random idle and backpressure:
    every write that was transferred lands once (a reset waits for it), every response is
    delivered or dropped and counted, refused writes are counted, and afterwards the engine
    trains bit-exactly on the loaded weights."""
    cfg, X, Y, p = _setup()
    rng = np.random.default_rng(p["seed"])
    tb = EngineTB(dut, cfg, idle=0.2, backpressure=0.3, seed=p["seed"])
    await tb.reset()
    c0 = await tb.read_counters()
    writes = _random_writes(cfg, rng, p["n_writes"], bad_fraction=0.1)
    payloads = {}
    for address, value, target in writes:
        payloads[_req(tb, address, True, value)] = None if target is None else (*target, value)
    tb.log.clear()
    events = [tb.host_req.send_nowait(_req(tb, a, True, v)) for a, v, _ in writes]
    state = {"injected": 0, "done": False}

    async def injector():
        while not state["done"]:
            await tb.cycles(int(rng.integers(1, 2 * p["reset_mean"])))
            if state["done"]:
                break
            await tb.reset(int(rng.integers(1, 5)))
            state["injected"] += 1

    task = cocotb.start_soon(injector())
    for ev in events:
        await with_timeout(ev.wait(), 200_000, "ns")      # no hang: every write is taken
    state["done"] = True
    await task
    await tb.cycles(300)                  # every response not dropped is out by now
    responses = [unpack(tb.layout["host_resp"], r) for r in tb.host_resp.queue]
    tb.host_resp.queue.clear()
    c = await tb.read_counters()
    d = {k: c[k] - c0[k] for k in c}
    n_bad = sum(t is None for _, _, t in writes)
    assert len(responses) + d["dropped_outputs"] == len(writes), (len(responses), d)
    assert d["rejected_addresses"] == n_bad, (d, n_bad)
    assert sum(r["error"] for r in responses) <= n_bad
    assert 1 <= d["resets"] <= state["injected"]
    golden, _ = _replay(tb, cfg, payloads, [])
    await _compare_params(tb, golden)
    # and training goes on bit-exactly from the loaded weights
    tb.log.clear()
    samples = [(X[s], int(Y[s]), True) for s in range(3)]
    for x, label, train in samples:
        await tb.send_sample(x, label, train)
    await with_timeout(_wait_results(tb, len(samples)), 200_000, "ns")
    expected = []
    for x, label, _ in samples:
        pred = golden.train_step(x, label)
        expected.append({"prediction": pred, "e": [int(v) for v in golden.last_error], "trained": 1, "rejected": 0})
    _check_results(tb, expected)
    await _compare_params(tb, golden)
    _write_summary({"writes": len(writes), "refused": n_bad, "resets_injected": state["injected"],
                    "counters_delta": d, "responses": len(responses)})
    assert state["injected"] >= 5 and d["dropped_outputs"] >= 1, "the resets did not hit the load"


async def _wait_results(tb, n):
    while sum(1 for _, name, _ in tb.log if name == "result") < n:
        await tb.cycles(10)


@cocotb.test()
async def long_stall(dut):
    """Writes, samples and results flowing with one stream stalled for ``stall`` cycles in
    the middle: ``sample`` (valid low halfway through a sample), ``result`` (ready low with
    a result offered), ``host_req`` (valid low halfway through a weight load) or
    ``host_resp`` (ready low with a response offered). Nothing is lost or repeated: every
    result and the final weights equal the golden model replayed in the order the engine
    took the transfers; no counter shows a dropped or aborted transfer."""
    cfg, X, Y, p = _setup()
    stream, stall = p["stream"], p["stall"]
    rng = np.random.default_rng(7)
    tb = EngineTB(dut, cfg, idle=0.2, backpressure=0.3, seed=11)
    await tb.reset()
    c0 = await tb.read_counters()
    tb.log.clear()
    writes = _random_writes(cfg, rng, 20)
    payloads = {_req(tb, a, True, v): (*t, v) for a, v, t in writes}
    samples = [(X[s], int(Y[s]), True) for s in range(4)]
    n0 = cfg.layers[0]
    words = [tb.sample_words(x, label, train) for x, label, train in samples]

    def queue_writes(part):
        return [tb.host_req.send_nowait(_req(tb, a, True, v)) for a, v, _ in part]

    events = []
    if stream == "result":
        tb.result.backpressure = 1.0
    if stream == "host_resp":
        tb.host_resp.backpressure = 1.0
    events += queue_writes(writes[:10])
    first = [tb.sample.send_nowait(w) for w in words[0]]
    if stream != "host_resp":          # (there, the first response blocks everything behind it)
        for ev in first:
            await ev.wait()
    else:
        events += first
    if stream == "sample":
        half = [tb.sample.send_nowait(w) for w in words[1][:n0 // 2]]
        for ev in half:
            await ev.wait()
    if stream == "host_req":
        for ev in events:
            await ev.wait()
    before = len(tb.log)
    await tb.cycles(stall)
    during = tb.log[before:]
    if stream == "result":
        assert not [e for e in during if e[1] == "result"], "a result was taken while ready was low"
        tb.result.backpressure = 0.3
    if stream == "host_resp":
        assert not [e for e in during if e[1] == "host_resp"], "a response was taken while ready was low"
        tb.host_resp.backpressure = 0.3
    if stream == "sample":
        assert not [e for e in during if e[1] == "result"][1:], "the half sample was trained"
        events += [tb.sample.send_nowait(w) for w in words[1][n0 // 2:]]
    else:
        events += [tb.sample.send_nowait(w) for w in words[1]]
    events += queue_writes(writes[10:])
    for w in words[2:]:
        events += [tb.sample.send_nowait(v) for v in w]
    for ev in events:
        await with_timeout(ev.wait(), 200_000, "ns")
    await with_timeout(_wait_results(tb, len(samples)), 200_000, "ns")
    await tb.cycles(300)
    n_resp = len(tb.host_resp.queue)
    tb.host_resp.queue.clear()
    golden, expected = _replay(tb, cfg, payloads, samples)
    _check_results(tb, expected)
    await _compare_params(tb, golden)
    c = await tb.read_counters()
    d = {k: c[k] - c0[k] for k in c}
    assert n_resp == len(writes)
    assert (d["samples_trained"], d["samples_received"], d["dropped_outputs"], d["aborted_samples"],
            d["rejected_addresses"], d["resets"]) == (len(samples), len(samples), 0, 0, 0, 0), d
    _write_summary({"stream": stream, "stall": stall, "transfers_during_stall": len(during), "counters_delta": d})
