"""Directed cocotb tests of the engine's ports in Verilator, through :class:`EngineTB`.

Started by :func:`dfa_engine.sim.verilator_run.run_directed` (the configuration arrives as a
pickle named by ``DFA_CONFIG``, the samples as ``DFA_DATA``). Every test drives the ports
with random idle cycles and backpressure, checks each result against the golden model as
it arrives (scoreboard), and ends by reading every weight, bias and counter back.
"""

from __future__ import annotations

import os
import pickle

import cocotb
import numpy as np

from dfa_engine.feedback import initial_parameters
from dfa_engine.hdl.engine import host_address
from dfa_engine.sim.cocotb_tb import EngineTB, unpack
from dfa_engine.sim.golden import GoldenModel


def _setup():
    with open(os.environ["DFA_CONFIG"], "rb") as fh:
        cfg = pickle.load(fh)
    data = np.load(os.environ["DFA_DATA"])
    return cfg, data["X"], data["Y"]


class Scoreboard:
    """Expected results in order; each result is checked the moment the monitor takes it."""

    def __init__(self, tb: EngineTB, golden: GoldenModel):
        self.tb, self.golden = tb, golden
        self.expected = []
        self.checked = 0
        self.errors = []
        tb.result.callback = self._check

    def expect(self, x, label, train=True):
        """The golden model's result for this sample, computed now (in sample order)."""
        cfg = self.golden.cfg
        label_ok = 0 <= label < cfg.n_classes
        if train and label_ok:
            pred = self.golden.train_step(x, int(label))
            e = [int(v) for v in self.golden.last_error]
        else:
            pred = self.golden.predict(x)
            e = None
        self.expected.append({"prediction": pred, "e": e, "trained": int(train and label_ok),
                              "rejected": int(not label_ok)})

    def _check(self, payload):
        got = unpack(self.tb.layout["result"], payload)
        if self.checked >= len(self.expected):
            self.errors.append(f"unexpected result {got}")
            return
        want = self.expected[self.checked]
        for key in ("prediction", "trained", "rejected"):
            if got[key] != want[key]:
                self.errors.append(f"result {self.checked}: {key} {got[key]} != golden {want[key]}")
        if want["e"] is not None and got["e"] != want["e"]:
            i = next(i for i, (a, b) in enumerate(zip(got["e"], want["e"])) if a != b)
            self.errors.append(f"result {self.checked}: e[{i}] {got['e'][i]} != golden {want['e'][i]}")
        self.checked += 1

    def drop_next(self):
        """The next expected result will not come (a reset dropped it)."""
        self.expected.pop(self.checked)

    def final_check(self):
        assert not self.errors, self.errors[:5]
        assert self.checked == len(self.expected), f"{len(self.expected) - self.checked} results missing"


async def _compare_params(tb, golden):
    params = await tb.read_params()
    for layer, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        if not np.array_equal(W, Wg):
            i, j = np.argwhere(W != Wg)[0]
            raise AssertionError(f"W{layer + 1}[{i}, {j}] = {W[i, j]} != golden {Wg[i, j]}")
        assert np.array_equal(b, bg), f"b{layer + 1} differs from the golden model"


@cocotb.test()
async def labels_outside_the_class_range(dut):
    """Labels >= C are refused: the result says rejected, nothing is trained, the
    counter counts them; the other samples train as usual (scoreboard on every result)."""
    cfg, X, Y = _setup()
    tb = EngineTB(dut, cfg, idle=0.3, backpressure=0.4, seed=1)
    golden = GoldenModel(cfg)
    sb = Scoreboard(tb, golden)
    await tb.reset()
    Y = Y[:24].copy()
    Y[[2, 9, 15]] = [cfg.n_classes, 0xFFFF, cfg.n_classes + 7]
    for s in range(len(Y)):
        sb.expect(X[s], int(Y[s]))
        await tb.send_sample(X[s], int(Y[s]))
    while sb.checked < len(sb.expected):
        await tb.cycles(10)
    sb.final_check()
    await _compare_params(tb, golden)
    c = await tb.read_counters()
    assert c["rejected_labels"] == 3 and c["samples_trained"] == 21 and c["samples_received"] == 24


@cocotb.test()
async def addresses_outside_memory(dut):
    """Reads and writes outside the memory map (a row past the layer, a column past its
    inputs, a layer or counter that does not exist) and writes of out-of-range values or
    to counters are refused with error = 1, counted, and change nothing."""
    cfg, X, Y = _setup()
    tb = EngineTB(dut, cfg, idle=0.3, backpressure=0.4, seed=2)
    await tb.reset()
    f = cfg.formats
    n = cfg.layers
    L = cfg.n_layers
    from dfa_engine.hdl.engine import address_layout

    top = L - 1                          # the last layer: fewest rows and inputs
    kind_shift = sum(address_layout(cfg, cfg.lanes).values()) - 2
    bad = [
        (host_address(cfg, "weight", top, n[L], 0), True, 1),        # a row past the layer
        (host_address(cfg, "bias", top, n[L]), True, 3),             # a bias row past the layer
        (host_address(cfg, "weight", 0, 1, 1), True, f.weight.max_raw + 1),   # value too large
        (host_address(cfg, "bias", 0, 1), True, f.bias.min_raw - 1),          # value too small
        (host_address(cfg, "counter", counter="resets") + 7, False, 0),        # no such counter
        (host_address(cfg, "counter", counter="samples_trained"), True, 9),    # counters are read-only
        (3 << kind_shift, False, 0),                                            # no such kind
    ]
    if n[top] < max(n[:-1]):
        bad.append((host_address(cfg, "weight", top, 0, n[top]), False, 0))     # a column past the inputs
    # the addresses above must not alias a valid one through a field too narrow to hold them
    assert host_address(cfg, "weight", top, n[L], 0) != host_address(cfg, "weight", top, n[L] % cfg.lanes, 0)
    for address, write, value in bad:
        resp = await tb.host(address, write, value)
        assert resp["error"] == 1, f"address {address:#x} accepted"
    good = await tb.host(host_address(cfg, "weight", 0, 1, 1), True, 1234)
    assert good["error"] == 0
    golden = GoldenModel(cfg)
    golden.write_parameter("weight", 0, 1, 1, 1234)
    await _compare_params(tb, golden)
    c = await tb.read_counters()
    assert c["rejected_addresses"] == len(bad)


@cocotb.test()
async def sample_arriving_during_a_weight_load(dut):
    """A burst of weight writes and a sample presented together: the engine serves one at
    a time (host requests only between samples), so the sample waits under backpressure or
    the writes wait; nothing is lost and the sample trains once. The golden model replays
    the order the transfers were observed in."""
    cfg, X, Y = _setup()
    tb = EngineTB(dut, cfg, idle=0.2, backpressure=0.3, seed=3)
    golden = GoldenModel(cfg)
    await tb.reset()
    rng = np.random.default_rng(5)
    f = cfg.formats
    writes = []
    for _ in range(30):
        layer = int(rng.integers(cfg.n_layers))
        i = int(rng.integers(cfg.layers[layer + 1]))
        j = int(rng.integers(cfg.layers[layer]))
        writes.append((layer, i, j, int(rng.integers(f.weight.min_raw, f.weight.max_raw + 1))))
    req_layout = tb.layout["host_req"]
    from dfa_engine.sim.cocotb_tb import pack

    done = [tb.host_req.send_nowait(pack(req_layout, {"address": host_address(cfg, "weight", l_, i, j),
                                                      "write": 1, "data": v}))
            for l_, i, j, v in writes[:15]]
    sample_events = [tb.sample.send_nowait(w) for w in tb.sample_words(X[0], int(Y[0]))]
    done += [tb.host_req.send_nowait(pack(req_layout, {"address": host_address(cfg, "weight", l_, i, j),
                                                       "write": 1, "data": v}))
             for l_, i, j, v in writes[15:]]
    for ev in done + sample_events:
        await ev.wait()
    result = await tb.next_result()
    responses = [unpack(tb.layout["host_resp"], await tb.host_resp.receive()) for _ in writes]
    # order of service, from the transfer log
    order = [name for _, name, _ in tb.log if name in ("host_req", "sample")]
    first_sample = order.index("sample")
    last_sample = len(order) - 1 - order[::-1].index("sample")
    assert "host_req" not in order[first_sample:last_sample], "a host request was served inside a sample"
    writes_before = order[:first_sample].count("host_req")
    for l_, i, j, v in writes[:writes_before]:
        golden.write_parameter("weight", l_, i, j, v)
    pred = golden.train_step(X[0], int(Y[0]))
    for l_, i, j, v in writes[writes_before:]:
        golden.write_parameter("weight", l_, i, j, v)
    assert result["prediction"] == pred and result["e"] == [int(v) for v in golden.last_error]
    assert [r["error"] for r in responses] == [0] * len(writes)
    assert writes_before >= 1, "the sample never had to wait for the weight load"

    # the other way round: writes arriving while a sample is being received wait for it
    tb.log.clear()
    sample_events = [tb.sample.send_nowait(w) for w in tb.sample_words(X[1], int(Y[1]))]
    await sample_events[0].wait()
    late = writes[:10]
    done = [tb.host_req.send_nowait(pack(req_layout, {"address": host_address(cfg, "weight", l_, i, j),
                                                      "write": 1, "data": v // 3}))
            for l_, i, j, v in late]
    for ev in done + sample_events:
        await ev.wait()
    result = await tb.next_result()
    responses = [unpack(tb.layout["host_resp"], await tb.host_resp.receive()) for _ in late]
    order = [name for _, name, _ in tb.log if name in ("host_req", "sample")]
    assert order == ["sample"] * cfg.layers[0] + ["host_req"] * len(late)
    pred = golden.train_step(X[1], int(Y[1]))
    for l_, i, j, v in late:
        golden.write_parameter("weight", l_, i, j, v // 3)
    assert result["prediction"] == pred and result["e"] == [int(v) for v in golden.last_error]
    assert [r["error"] for r in responses] == [0] * len(late)
    await _compare_params(tb, golden)
    c = await tb.read_counters()
    assert c["samples_trained"] == 2 and c["samples_received"] == 2 and c["rejected_addresses"] == 0


@cocotb.test()
async def reset_in_the_middle_of_training(dut):
    """Resets at several points of a training stream: during a sample's load (the partial
    sample is discarded, counted, and sent again), during its forward pass, its error and
    its update (deferred: the sample in flight is trained once, its result dropped and
    counted), while a result waits under backpressure, and when idle. The weights equal the
    golden model trained once on every sample, in order."""
    cfg, X, Y = _setup()
    tb = EngineTB(dut, cfg, idle=0.2, backpressure=0.2, seed=4)
    golden = GoldenModel(cfg)
    sb = Scoreboard(tb, golden)
    await tb.reset()
    n0 = cfg.layers[0]
    s = 0
    expected_aborted = expected_resets = 0
    for delay in [0, 5, 20, 40, 80, 120, 200, 300, 500]:
        # a sample cut short by a reset, then sent whole
        await tb.send_sample(X[s], int(Y[s]), count=n0 // 2)
        await tb.reset(2)
        expected_resets += 1
        expected_aborted += 1
        sb.expect(X[s], int(Y[s]))
        await tb.send_sample(X[s], int(Y[s]))
        # a reset `delay` cycles after the sample was accepted whole: its result may come
        # first (then the reset finds the engine idle) or be dropped
        await tb.cycles(delay)
        before = sb.checked
        if delay == 300:
            tb.result.backpressure = 1.0      # the result waits, offered, when the reset comes
            await tb.cycles(400)
        await tb.reset(3)
        tb.result.backpressure = 0.2
        expected_resets += 1
        await tb.cycles(2)
        if sb.checked == before:
            # not delivered before the reset: the engine trains it but drops the result;
            # wait until it is idle again (the next request is served after the update)
            sb.drop_next()
        s += 1
    await tb.cycles(20)
    await tb.reset(1)                 # idle: nothing to lose
    expected_resets += 1
    for _ in range(3):                # and training goes on normally
        sb.expect(X[s], int(Y[s]))
        await tb.send_sample(X[s], int(Y[s]))
        s += 1
    while sb.checked < len(sb.expected):
        await tb.cycles(10)
    sb.final_check()
    await _compare_params(tb, golden)
    c = await tb.read_counters()
    assert c["resets"] == expected_resets
    assert c["aborted_samples"] == expected_aborted
    assert c["samples_trained"] == s and c["samples_received"] == s
    dropped = s - sb.checked
    assert c["dropped_outputs"] == dropped
    assert dropped >= 3, "no reset landed while a sample was in flight"
