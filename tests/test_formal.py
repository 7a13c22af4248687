# amaranth: UnusedElaboratable=no
"""Formal checks (SymbiYosys through :mod:`dfa_engine.sim.formal`): stream rules and
counting on the engine, the host link and the UART, the link's frame acceptance against a
behavioural model, and the sparse feedback unit against a behavioural model.

``docs/formal.md`` says what each check proves, at which depth and why. Every kind of
check has a twin here that breaks the design or the model on purpose and must see
SymbiYosys report ``FAIL``: a check that cannot fail proves nothing.

Marked ``formal`` (``pytest -m "not formal"`` leaves them out).
"""

import pytest
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Array, Assert, Assume, Cat, Const, Cover, Elaboratable, Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import wiring
from amaranth.sim import Simulator

from dfa_engine.boards.link import HostLink, crc16_step
from dfa_engine.boards.uart import UARTRx, UARTTx
from dfa_engine.config import config_from_dict
from dfa_engine.hdl.engine import Engine
from dfa_engine.hdl.feedback import SparseProjection
from dfa_engine.link_format import (
    CRC_INIT, CRC_POLY, ESCAPE, ESCAPE_XOR, FLAG, READ, SAMPLE, SAMPLE_TRAIN, TO_BOARD, WRITE,
)
from dfa_engine.sim.formal import (
    assert_passes, check, check_stream, drive_stream, elaborate_with_internals, transfer, transfer_counter,
)

pytestmark = pytest.mark.formal

# Narrow formats keep the solver's work small; the controller and the stream logic do not
# depend on the widths (the same code is generated for every format).
NARROW = {"input": "u0.4", "weight": "s1.4", "bias": "s1.4", "activation": "s2.4", "error": "s1.4",
          "feedback": "s1.2", "delta": "s1.4", "update": "s1.4", "learning_rate": "u0.8"}
# The engine checks: the smallest engine with a hidden DFA layer and a partial lane group
# (3 neurons on 2 lanes), in narrow formats.
ENGINE_CFG = config_from_dict({"network": {"layers": [4, 3, 2]}, "hardware": {"lanes": 2}, "formats": NARROW})
ENGINE_CFG_TWO_PASS = config_from_dict({"network": {"layers": [2, 2, 2]},
                                        "hardware": {"lanes": 2, "schedule": "two_pass"}, "formats": NARROW})


# Wall-clock seconds one check may take before it is killed (status TIMEOUT, a failure).
TIMEOUT = 150
# The link-stream BMC at depth 45 is the longest check: 141 s alone on the 2-core
# development machine (session 8), and it timed out at step 44 of 45 under the full
# suite's load with the common limit.
LINK_STREAMS_TIMEOUT = 450


def run_check(spec, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    return check(spec, **kwargs)


def expect(result, status):
    assert result.status == status, f"{result}\n{result.tail()}"


# ---- wrappers that break a stream on purpose ------------------------------------------------

class _Interposer(wiring.Component):
    """``inner`` with the same ports, every member passed through except the stream at
    ``path``, whose ``valid`` goes through :meth:`corrupt`."""

    def __init__(self, inner, path):
        self._inner, self._path = inner, tuple(path)
        super().__init__(inner.signature)

    def corrupt(self, m, valid, ready):
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        target = self._path + ("valid",)
        ready_path = self._path + ("ready",)
        outer_ready = None
        for (path, member, outer), (_, _, inner_v) in zip(self.signature.flatten(self),
                                                          inner.signature.flatten(inner)):
            if path == ready_path:
                outer_ready = outer
        for (path, member, outer), (_, _, inner_v) in zip(self.signature.flatten(self),
                                                          inner.signature.flatten(inner)):
            if path == target:
                m.d.comb += outer.eq(self.corrupt(m, inner_v, outer_ready))
            elif member.flow == wiring.In:
                m.d.comb += inner_v.eq(outer)
            else:
                m.d.comb += outer.eq(inner_v)
        return m


class WithdrawsValid(_Interposer):
    """Bug: after one cycle of backpressure, ``valid`` drops for a cycle."""

    def corrupt(self, m, valid, ready):
        stalled = Signal()
        m.d.sync += stalled.eq(valid & ~ready & ~stalled)
        return valid & ~stalled


class OffersTwice(_Interposer):
    """Bug: after a transfer, the same payload is offered (and transferred) once more."""

    def corrupt(self, m, valid, ready):
        again = Signal()
        with m.If(valid & ready & ~again):
            m.d.sync += again.eq(1)
        with m.Elif(again & ready):
            m.d.sync += again.eq(0)
        return valid | again


# ---- the engine: stream rules, one result per sample, one response per request --------------

def result_latency(cfg):
    """Cycles from the last element of a training sample to ``result.valid`` (simulated)."""
    dut = Engine(cfg)
    out = []

    async def bench(ctx):
        for j in range(cfg.layers[0]):
            ctx.set(dut.sample.payload, {"data": j + 1, "label": 1, "train": 1})
            ctx.set(dut.sample.valid, 1)
            await ctx.tick().until(dut.sample.ready)
        ctx.set(dut.sample.valid, 0)
        n = 0
        while not ctx.get(dut.result.valid):
            await ctx.tick()
            n += 1
        out.append(n)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out[0]


class EngineSpec(Elaboratable):
    """The engine's four streams (``docs/formal.md``, "Engine").

    ``host``: ``"free"`` (any request at any time), ``"off"`` (no requests).
    ``samples``: ``"free"`` (any producer keeping the rules: valid and values free every
    cycle) or ``"steady"`` (always offering, one unknown payload, so label, train flag and
    value, for every element: the controller looks at the label and the flag only).
    ``latency``: when given, the result must be offered at most this many cycles after
    the last element of a sample was taken.
    """

    def __init__(self, dut, cfg, *, host="free", samples="free", latency=None):
        self.dut, self.cfg, self.host, self.samples, self.latency = dut, cfg, host, samples, latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        n0 = self.cfg.layers[0]
        rst = ResetSignal()

        if self.samples == "steady":
            drive_stream(m, dut.sample, "sample", valid=1, payload=AnyConst(len(dut.sample.payload.as_value())))
        else:
            drive_stream(m, dut.sample, "sample")
        if self.host == "free":
            drive_stream(m, dut.host_req, "host_req")
        else:
            m.d.comb += dut.host_req.valid.eq(0)
        # A reset request may withdraw an offered result or response (it is dropped and
        # counted, docs/architecture.md "Reset"): the rules hold in every other cycle.
        check_stream(m, dut.result, "result", exempt=rst)
        check_stream(m, dut.host_resp, "host_resp", exempt=rst)

        # Counting holds until the first reset (a reset drops what was offered).
        clean = Signal(init=1, reset_less=True)
        with m.If(rst):
            m.d.sync += clean.eq(0)
        elem = Signal(range(n0), reset_less=True)
        samples = Signal(8, reset_less=True)
        with m.If(transfer(dut.sample)):
            m.d.sync += elem.eq(Mux(elem == n0 - 1, 0, elem + 1))
            with m.If(elem == n0 - 1):
                m.d.sync += samples.eq(samples + 1)
        results = transfer_counter(m, dut.result, "results")
        reqs = transfer_counter(m, dut.host_req, "reqs")
        resps = transfer_counter(m, dut.host_resp, "resps")
        owed_result = Signal(8)
        owed_resp = Signal(8)
        m.d.comb += [owed_result.eq(samples - results), owed_resp.eq(reqs - resps)]
        with m.If(clean & ~rst):
            m.d.comb += [
                Assert(owed_result <= 1, "more than one sample in flight, or a result twice"),
                Assert(owed_resp <= 1, "more than one request in flight, or a response twice"),
                Assert(~dut.result.valid | (owed_result == 1), "a result offered for no sample"),
                Assert(~dut.host_resp.valid | (owed_resp == 1), "a response offered for no request"),
                # one thing at a time: nothing new is taken while something is owed, so an
                # offered result or response can never be overwritten (dropped)
                Assert(~transfer(dut.sample) | ((owed_result == 0) & (owed_resp == 0)),
                       "a sample element taken while a result or response is owed"),
                Assert(~transfer(dut.host_req) | ((owed_result == 0) & (owed_resp == 0) & (elem == 0)),
                       "a request taken during a sample or while something is owed"),
            ]
        if self.latency is not None:
            wait = Signal(range(self.latency + 2), reset_less=True)
            with m.If((owed_result == 1) & ~dut.result.valid & (wait <= self.latency)):
                m.d.sync += wait.eq(wait + 1)
            with m.Elif(owed_result == 0):
                m.d.sync += wait.eq(0)
            with m.If(clean):
                m.d.comb += Assert(wait <= self.latency, "the result came late")
        return m


# The result path. Depth: n0 + the latency + 4 cycles, so that every trace in which the
# sample arrives without gaps reaches the result and has it stalled for several cycles;
# the latency bound makes a trace that never reaches it fail.
def test_engine_result_stream():
    latency = result_latency(ENGINE_CFG)
    depth = ENGINE_CFG.layers[0] + latency + 4
    spec = EngineSpec(Engine(ENGINE_CFG), ENGINE_CFG, host="off", samples="steady", latency=latency)
    assert_passes(run_check(spec, depth=depth, name="engine_result"))


def test_engine_result_stream_two_pass():
    latency = result_latency(ENGINE_CFG_TWO_PASS)
    depth = ENGINE_CFG_TWO_PASS.layers[0] + latency + 4
    spec = EngineSpec(Engine(ENGINE_CFG_TWO_PASS), ENGINE_CFG_TWO_PASS, host="off", samples="steady",
                      latency=latency)
    assert_passes(run_check(spec, depth=depth, name="engine_result_two_pass"))


# The host port, the sample input and resets: any requests, samples and resets at any
# time. Depth 24: a request is answered 2 cycles after it is taken, so 24 cycles hold
# several requests with backpressure, a whole sample load (4 elements) and resets in every
# reachable state of those phases.
ENGINE_HOST_DEPTH = 24


def test_engine_host_port_and_resets():
    spec = EngineSpec(Engine(ENGINE_CFG), ENGINE_CFG, host="free", samples="free")
    assert_passes(run_check(spec, depth=ENGINE_HOST_DEPTH, resets=True, name="engine_host"))


@pytest.mark.parametrize("bug", [WithdrawsValid, OffersTwice])
def test_engine_host_port_bug_is_found(bug):
    dut = bug(Engine(ENGINE_CFG), ("host_resp",))
    spec = EngineSpec(dut, ENGINE_CFG, host="free", samples="free")
    expect(run_check(spec, depth=10, name=f"engine_bug_{bug.__name__}"), "FAIL")


# ---- the sparse feedback unit against a behavioural model ----------------------------------

MODEL_WIDTH = 32   # wider than any sum B e of the configurations below: the model never overflows


def projection_sums(cfg, lanes, payload, below=None):
    """``g = sum_j sign_j * value_j * e[index_j]`` of each lane, exactly, with the error's
    plus the feedback's fraction bits (``docs/numerics.md`` section 5). ``below``: only
    the terms whose class is below it (what a serial unit has added before that class)."""
    f, fb, k, C = cfg.formats, cfg.feedback, cfg.feedback.k, cfg.n_classes
    ffb = f.feedback.frac_bits
    sums = []
    for p in range(lanes):
        g = Const(0, signed(MODEL_WIDTH))
        for j in range(k):
            ent = payload.entries[p][j]
            # e[index] as a sum of one-hot terms, not the unit's multiplexer
            e_sel = sum(Mux(ent.index == c if below is None else (ent.index == c) & (below > c), payload.e[c], 0)
                        for c in range(C))
            if fb.values == "pm1":
                value = e_sel * (1 << ffb)
            elif fb.values == "pow2":
                value = sum(Mux(ent.shift == sh, e_sel * (1 << (ffb - sh)), 0) for sh in range(fb.max_shift + 1))
            else:
                value = e_sel * ent.magnitude
            g = g + Mux(ent.sign, -value, value)
        sums.append(g)
    return sums


def projection_outputs(cfg, sums, keep, active, *, wrong=False):
    """(delta[lanes], saturated) from the exact sums: ``round_backward`` by
    ``F_e + F_fb - F_delta`` bits, then clamp; the delta is kept where ``keep`` (mask and
    active) is set, and a saturation counts only in an active lane."""
    f = cfg.formats
    s = f.error.frac_bits + f.feedback.frac_bits - f.delta.frac_bits
    deltas, sats = [], []
    for p, g in enumerate(sums):
        if s > 0:
            nearest = cfg.rounding_backward == "nearest"
            if wrong:
                nearest = not nearest
            rounded = (g + ((1 << (s - 1)) if nearest else 0)) >> s
        else:
            rounded = g << -s
        lo, hi = f.delta.min_raw, f.delta.max_raw
        clamped = Mux(rounded > hi, hi, Mux(rounded < lo, lo, rounded))
        deltas.append(Mux(keep[p], clamped, 0))
        sats.append(((rounded > hi) | (rounded < lo)) & active[p])
    return deltas, sum(sats)


def projection_model(cfg, lanes, payload, *, wrong=False):
    """(delta[lanes], saturated) of ``docs/numerics.md`` section 5 for one transfer, written
    from the definition: the exact sums, rounded, clamped and masked."""
    keep = payload.mask & payload.active
    return projection_outputs(cfg, projection_sums(cfg, lanes, payload), keep, payload.active, wrong=wrong)


class ProjectionSpec(Elaboratable):
    """Every output transfer of :class:`SparseProjection` equals the model applied to the
    matching input transfer, bit for bit (``delta`` and ``saturated``), in order; one
    output per input; both streams keep the rules.

    The unit holds up to ``LATENCY`` (2) transfers. For the k-induction proof the spec
    also states what the first stage holds: the exact sum of its transfer (at the unit's
    ``sum_frac`` fraction bits), from which the model's rounding must give the output the
    spec owes for it. Without that, a stage stalled behind ``o`` could hold any value for
    as long as the induction looks.

    A serial unit (``hardware.projection = "serial"``) also holds a transfer part-way: the
    spec states that it is past step 0 only while ``i`` holds a transfer back, that its
    broadcast registers hold ``e`` (and ``-e``) of the class before its step, and that
    each lane's running sum is the model's sum over the classes before that one."""

    def __init__(self, cfg, lanes, *, wrong=False):
        self.cfg, self.lanes, self.wrong = cfg, lanes, wrong

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = SparseProjection(self.cfg, self.lanes)
        fb, f = self.cfg.feedback, self.cfg.formats
        assert dut.LATENCY == 2
        drive_stream(m, dut.i, "i")
        check_stream(m, dut.o, "o")
        # the tables' contract: an index names a class, a shift is at most max_shift
        for p in range(self.lanes):
            for j in range(fb.k):
                ent = dut.i.payload.entries[p][j]
                m.d.comb += Assume(ent.index < self.cfg.n_classes)
                if fb.values == "pow2":
                    m.d.comb += Assume(ent.shift <= fb.max_shift)
        deltas, sat = projection_model(self.cfg, self.lanes, dut.i.payload, wrong=self.wrong)
        incoming = Signal.like(dut.o.payload, reset_less=True)
        m.d.comb += [incoming.delta[p].eq(deltas[p]) for p in range(self.lanes)]
        m.d.comb += incoming.saturated.eq(sat)
        # the outputs owed, oldest first
        owed_q = [Signal.like(dut.o.payload, reset_less=True, name=f"owed_q{i}") for i in range(2)]
        owed = Signal(2)
        push, pop = transfer(dut.i), transfer(dut.o)
        m.d.sync += owed.eq(owed + push - pop)
        with m.If(pop):
            m.d.sync += owed_q[0].eq(owed_q[1])
        with m.If(push):
            with m.If(owed - pop == 0):
                m.d.sync += owed_q[0].eq(incoming)
            with m.Else():
                m.d.sync += owed_q[1].eq(incoming)
        m.d.comb += [Assert(owed <= 2, "more than two transfers in flight"),
                     Assert(owed == dut.o.valid + dut.s1_valid, "an output lost or made up")]
        with m.If(dut.o.valid):
            m.d.comb += Assert(dut.o.payload.as_value() == owed_q[0].as_value(), "output differs from the model")
        # the first stage's sum, rounded by the model, is what is owed for it
        scale = f.error.frac_bits + f.feedback.frac_bits - dut.sum_frac
        sums = [g.as_signed() << scale for g in dut.s1_g]
        s1_deltas, s1_sat = projection_outputs(self.cfg, sums, dut.s1_keep, dut.s1_active, wrong=self.wrong)
        s1_owed = Mux(dut.o.valid, owed_q[1].as_value(), owed_q[0].as_value())
        s1_want = Signal.like(dut.o.payload, reset_less=True)
        m.d.comb += s1_want.eq(s1_owed)
        with m.If(dut.s1_valid):
            m.d.comb += [Assert(s1_want.delta[p] == s1_deltas[p], "stage 1 holds the wrong sum")
                         for p in range(self.lanes)]
            m.d.comb += Assert(s1_want.saturated == s1_sat, "stage 1 holds the wrong lanes")
        if dut.serial:
            held = Signal(reset_less=True)       # i held a transfer back in the last cycle
            m.d.sync += held.eq(dut.i.valid & ~dut.i.ready)
            C = self.cfg.n_classes
            step = dut.s0_class
            m.d.comb += [Assert(step <= C, "no such step"),
                         Assert((step == 0) | held, "a transfer part-way with none held")]
            added = Signal(range(C + 1))            # the class the lanes add in this step
            m.d.comb += added.eq(step - 1)
            partial = projection_sums(self.cfg, self.lanes, dut.i.payload, below=added)
            scale = f.error.frac_bits + f.feedback.frac_bits - dut.sum_frac
            e_added = Array(dut.i.payload.e[c] for c in range(C))[added[:len(dut.s0_bclass)]]
            with m.If(step != 0):
                m.d.comb += [Assert(dut.s0_bclass == added, "the broadcast names the wrong class"),
                             Assert(dut.s0_e == e_added, "the broadcast holds the wrong error")]
                if fb.values == "pm1":
                    m.d.comb += Assert(dut.s0_e_neg.as_signed() << scale ==
                                       -(e_added.as_signed() << f.feedback.frac_bits),
                                       "the broadcast holds the wrong negated error")
            for p in range(self.lanes):
                m.d.comb += Assert((dut.s0_acc[p].as_signed() << scale) == Mux(step == 0, 0, partial[p]),
                                   "a running sum differs from the model's")
        return m


def _projection_cfg(feedback, formats, rounding="nearest", projection="parallel"):
    return config_from_dict({"network": {"layers": [2, 3, 3]}, "feedback": {"kind": "sparse", **feedback},
                             "formats": formats, "rounding": {"backward": rounding},
                             "hardware": {"projection": projection}})


PROJECTION_CASES = {
    # 3 classes (so some index values name no class), 2 lanes, k = 2
    "pm1": (_projection_cfg({"k": 2, "values": "pm1"}, {"error": "s1.6", "feedback": "s1.3", "delta": "s0.5"}), 2),
    "pow2-trunc": (_projection_cfg({"k": 2, "values": "pow2", "max_shift": 3},
                                   {"error": "s1.6", "feedback": "s1.3", "delta": "s0.5"}, "trunc"), 2),
    # a multiplier each: a sum of two products is kept small (4-bit errors, 2-bit values)
    "fixed-k2": (_projection_cfg({"k": 2, "values": "fixed"}, {"error": "s1.3", "feedback": "s0.2", "delta": "s0.3"}), 1),
    "fixed-k1": (_projection_cfg({"k": 1, "values": "fixed"}, {"error": "s1.6", "feedback": "s1.3", "delta": "s0.5"}), 2),
    # one class a cycle: the shared-negation +-1 form and the generic (shifted) form
    "pm1-serial": (_projection_cfg({"k": 2, "values": "pm1"}, {"error": "s1.6", "feedback": "s1.3", "delta": "s0.5"},
                                   projection="serial"), 2),
    "pow2-trunc-serial": (_projection_cfg({"k": 2, "values": "pow2", "max_shift": 3},
                                          {"error": "s1.6", "feedback": "s1.3", "delta": "s0.5"}, "trunc",
                                          projection="serial"), 1),
}


# k-induction with k = 3: the unit holds two transfers, and the spec states what each of
# its stages holds, so three cycles of holding imply the next; PASS is a proof for traces
# of any length.
@pytest.mark.parametrize("case", sorted(PROJECTION_CASES))
def test_projection_equals_model(case):
    cfg, lanes = PROJECTION_CASES[case]
    assert_passes(run_check(ProjectionSpec(cfg, lanes), depth=3, mode="prove", name=f"projection_{case}"))


def test_projection_wrong_model_is_found():
    cfg, lanes = PROJECTION_CASES["pm1"]
    expect(run_check(ProjectionSpec(cfg, lanes, wrong=True), depth=4, name="projection_wrong"), "FAIL")


# ---- the host link: stream rules and one response per accepted frame -------------------------

LINK_CFG = config_from_dict({"network": {"layers": [2, 3, 2]}, "hardware": {"lanes": 2}, "formats": NARROW})


class LinkSpec(Elaboratable):
    """:class:`HostLink`'s streams and its frame bookkeeping (``docs/formal.md``, "Host link").

    Every input is free under the rules (bytes, line errors, the engine's answers at any
    time); every output is taken with free backpressure.
    """

    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.dut
        eng = link.engine
        n0 = self.cfg.layers[0]
        drive_stream(m, link.rx, "rx")
        m.d.comb += link.rx_error.eq(AnySeq(1))
        drive_stream(m, eng.result, "result")
        drive_stream(m, eng.host_resp, "host_resp")
        check_stream(m, link.tx, "tx")
        check_stream(m, eng.sample, "sample")
        check_stream(m, eng.host_req, "host_req")

        elem = Signal(range(n0), reset_less=True)
        samples = Signal(8, reset_less=True)
        with m.If(transfer(eng.sample)):
            m.d.sync += elem.eq(Mux(elem == n0 - 1, 0, elem + 1))
            with m.If(elem == n0 - 1):
                m.d.sync += samples.eq(samples + 1)
        results = transfer_counter(m, eng.result, "results")
        reqs = transfer_counter(m, eng.host_req, "reqs")
        resps = transfer_counter(m, eng.host_resp, "resps")
        # response frames: a FLAG opens, the next FLAG closes (stuffing keeps FLAG out of frames)
        tx_open = Signal(reset_less=True)
        sent = Signal(8, reset_less=True)
        with m.If(transfer(link.tx) & (link.tx.payload == FLAG)):
            m.d.sync += tx_open.eq(~tx_open)
            with m.If(tx_open):
                m.d.sync += sent.eq(sent + 1)
        owed_frames = Signal(8)
        owed_result = Signal(8)
        owed_resp = Signal(8)
        m.d.comb += [owed_frames.eq(link.counters.frames_ok[:8] - sent),
                     owed_result.eq(samples - results), owed_resp.eq(reqs - resps)]
        m.d.comb += [
            Assert(owed_frames <= 1, "a response frame missing or sent twice"),
            Assert(~link.tx.valid | (owed_frames == 1), "a response frame sent for no accepted frame"),
            Assert(~link.rx.ready | (owed_frames == 0), "a new frame taken before the last was answered"),
            Assert(owed_result <= 1, "a sample sent before the last one's result came"),
            Assert(~eng.sample.valid | (owed_result == 0), "a sample element offered while a result is owed"),
            Assert(~eng.result.ready | ((owed_result == 1) & (elem == 0)), "a result taken for no whole sample"),
            Assert(owed_resp <= 1, "a request sent before the last one's response came"),
            Assert(~eng.host_req.valid | ((owed_resp == 0) & (owed_result == 0) & (elem == 0)),
                   "a request offered during a sample or while a response is owed"),
            Assert(~eng.host_resp.ready | (owed_resp == 1), "a response taken for no request"),
        ]
        # Reachability (mode="cover"): a whole SAMPLE exchange (frame in, elements, result,
        # RESULT frame out) and a whole READ or WRITE exchange fit in the depth.
        m.d.comb += [Cover((results == 1) & (sent == 1) & ~tx_open),
                     Cover((resps == 1) & (sent == 1) & ~tx_open)]
        return m


# Depth 45: the longest exchange, a SAMPLE frame (14 bytes with its flags), its 4 elements,
# the result and the 13-byte RESULT frame, fits with cycles to spare for backpressure;
# shorter exchanges (STATUS: 7 bytes in, 23 out) fit with a second frame behind them.
LINK_DEPTH = 45
# a whole exchange: the transmitter loads each response byte in a cycle of its own
LINK_COVER_DEPTH = LINK_DEPTH


def test_link_streams():
    assert_passes(run_check(LinkSpec(HostLink(LINK_CFG), LINK_CFG), depth=LINK_DEPTH, name="link_streams",
                            timeout=LINK_STREAMS_TIMEOUT))


def test_link_streams_reachable():
    assert_passes(run_check(LinkSpec(HostLink(LINK_CFG), LINK_CFG), depth=LINK_COVER_DEPTH, mode="cover",
                            name="link_streams_cover"))


@pytest.mark.parametrize("bug,path", [(WithdrawsValid, ("tx",)), (OffersTwice, ("engine", "host_req"))])
def test_link_streams_bug_is_found(bug, path):
    spec = LinkSpec(bug(HostLink(LINK_CFG), path), LINK_CFG)
    expect(run_check(spec, depth=LINK_DEPTH, name=f"link_bug_{bug.__name__}"), "FAIL")


# ---- the host link's receiver: exactly the well-formed frames ----------------------------

def crc16_model(crc, byte):
    """CRC-16/CCITT-FALSE, one byte, MSB first: the textbook shift register."""
    for i in range(7, -1, -1):
        top = crc[15] ^ byte[i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(top, CRC_POLY, 0)
    return crc


class CRCSpec(Elaboratable):
    """The link's one-byte CRC step (``crc16_step``, an XOR table) equals the textbook
    shift register for every register value and byte (2**24 cases, one solver query).
    ``wrong``: a model with another polynomial (it must be caught)."""

    def __init__(self, *, wrong=False):
        self.wrong = wrong

    def elaborate(self, platform):
        m = Module()
        crc, byte = AnySeq(16), AnySeq(8)
        want = crc16_model(crc, byte)
        if self.wrong:
            want = want ^ Mux(crc[15] ^ byte[7], 0x0001, 0)
        m.d.comb += Assert(crc16_step(crc, byte) == want, "crc16_step differs from the textbook CRC")
        return m


class FrameSpec(Elaboratable):
    """:class:`HostLink`'s receiver against a streaming model of ``docs/host_link.md``
    ("What the receiver does with bytes"), over any byte stream: any bytes (flags,
    escapes, garbage), any gaps, line errors at any time, the engine and the transmitter
    answering or holding back at any time.

    The model keeps the unstuffed bytes of the frame being collected and judges a frame
    at its closing flag in the documented order; at every cycle the link's four counters
    equal the model's (so it accepts exactly the frames the model accepts, and refuses the
    others for the documented reason). An accepted SAMPLE frame makes the link offer
    exactly ``n0`` elements with its values, label and train flag; an accepted WRITE or
    READ frame whose address fits exactly one request with its address and data; nothing
    else reaches the engine. The CRC is computed with ``crc16_step``, which
    :class:`CRCSpec` proves equal to the textbook CRC.

    ``wrong``: a model that forgets that an escape pending at the closing flag is an abort
    (it must be caught).
    """

    def __init__(self, cfg, *, wrong=False):
        self.cfg, self.wrong = cfg, wrong

    def elaborate(self, platform):
        m = Module()
        link = HostLink(self.cfg)
        m.submodules.link, dut = elaborate_with_internals(
            link, "hunting", "escape", "poisoned", "count", "crc", "last2", "ftype", "flen", "scal", "vidx")
        fmt, eng, cnt = link.format, link.engine, link.counters
        max_frame = fmt.max_frame(TO_BOARD)
        n0 = fmt.n_inputs
        assert fmt.input_bytes == 1

        drive_stream(m, link.rx, "rx")
        drive_stream(m, eng.result, "result")
        drive_stream(m, eng.host_resp, "host_resp")
        m.d.comb += [link.rx_error.eq(AnySeq(1)), link.tx.ready.eq(AnySeq(1)),
                     eng.sample.ready.eq(AnySeq(1)), eng.host_req.ready.eq(AnySeq(1))]
        # A line error is the UART losing a byte: a byte that arrived after the one it
        # holds. Under stop and wait it never holds a FLAG that long, so a line error in the
        # cycle a FLAG is taken is outside the protocol (docs/formal.md).
        m.d.comb += Assume(~(link.rx_error & transfer(link.rx) & (link.rx.payload == FLAG)))
        # The receiver works on the byte (and line error) of the cycle before: the model
        # reads the same stream one cycle late, so its state is compared with the
        # receiver's as it was before that stage.
        take, b, line_error = Signal(), Signal(8), Signal()
        m.d.sync += [take.eq(transfer(link.rx)), b.eq(link.rx.payload), line_error.eq(link.rx_error)]

        # ---- the model's state: the frame being collected
        hunting = Signal(init=1)
        esc = Signal()
        poison = Signal()
        n = Signal(range(max_frame + 1))
        u = [Signal(8, name=f"u{k}") for k in range(max_frame)]
        # The CRC field is the frame's last two bytes, which are known only at its end: the
        # CRC runs two bytes behind, over each byte as it leaves the window of the last two.
        crc = Signal(16, init=CRC_INIT)
        last = Signal(16)
        counts = {name: Signal(8, name=f"model_{name}") for name in ("frames_ok", "bad_crc", "bad_frame",
                                                                      "bytes_dropped")}

        def bump(name):
            return counts[name].eq(counts[name] + 1)

        ftype, flen = u[0], Cat(u[1], u[2])
        type_ok = Const(0, 1)
        for t in TO_BOARD:
            type_ok = type_ok | ((ftype == t) & (flen == fmt.payload_length(t)))
        aborted = esc if not self.wrong else Const(0, 1)
        verdict_ok = Signal()
        with m.If(line_error & ~hunting):
            m.d.sync += poison.eq(1)
        with m.If(take):
            with m.If(b == FLAG):
                with m.If(~hunting & ((n != 0) | poison | aborted)):
                    with m.If(poison | aborted | (n < 5)):
                        m.d.sync += bump("bad_frame")
                    with m.Elif(crc != last):
                        m.d.sync += bump("bad_crc")
                    with m.Elif((flen != n - 5) | ~type_ok):
                        m.d.sync += bump("bad_frame")
                    with m.Else():
                        m.d.sync += bump("frames_ok")
                        m.d.comb += verdict_ok.eq(1)
                m.d.sync += [hunting.eq(0), esc.eq(0), poison.eq(0), n.eq(0), crc.eq(CRC_INIT)]
            with m.Elif(hunting):
                m.d.sync += bump("bytes_dropped")
            with m.Elif(~esc & (b == ESCAPE)):
                m.d.sync += esc.eq(1)
            with m.Else():
                d = Mux(esc, b ^ ESCAPE_XOR, b)
                m.d.sync += esc.eq(0)
                with m.If(n == max_frame):
                    m.d.sync += [bump("bad_frame"), hunting.eq(1)]       # overlong
                with m.Else():
                    m.d.sync += [n.eq(n + 1), last.eq(Cat(last[8:], d))]
                    with m.If(n >= 2):
                        m.d.sync += crc.eq(crc16_step(crc, last[:8]))
                    with m.Switch(n):
                        for k in range(max_frame):
                            with m.Case(k):
                                m.d.sync += u[k].eq(d)
        for name, count in counts.items():
            m.d.comb += Assert(cnt[name][:8] == count, f"{name} differs from the model")
        # The receiver's state equals the model's. These invariants are what make the check
        # fast: the solver assumes each cycle's (once proved) in the next, so it compares one
        # CRC step at a time instead of two XOR networks over the whole frame.
        m.d.comb += [Assert(dut["hunting"] == hunting), Assert(dut["escape"] == esc),
                     Assert(dut["poisoned"] == poison), Assert(dut["count"] == n),
                     Assert(dut["crc"] == crc), Assert(dut["last2"] == last),
                     Assert((n == 0) | (dut["ftype"] == ftype)), Assert((n < 3) | (dut["flen"] == flen))]
        # ... and so do the payload bytes it keeps (all but a sample's values, which go to
        # a buffer memory: vidx counts them)
        x_off = fmt.field(SAMPLE, "x").offset
        is_sample = ftype == SAMPLE
        for k in range(len(dut["scal"]) // 8):
            kept = (n > 3 + k) & ~(is_sample & (k >= x_off)) if k >= x_off else (n > 3 + k)
            m.d.comb += Assert(~kept | (dut["scal"].word_select(k, 8) == u[3 + k]))
        m.d.comb += Assert(~is_sample | (n < 3 + x_off) |
                           (dut["vidx"] == Mux(n - 3 - x_off > n0, n0, n - 3 - x_off)))

        # ---- what an accepted frame makes the link do
        fld = lambda t, name: fmt.field(t, name)                 # noqa: E731
        payload_byte = lambda t, name, i=0: u[3 + fld(t, name).offset + i]  # noqa: E731
        want_x = [Signal(8, name=f"want_x{i}") for i in range(n0)]
        want_label, want_train = Signal(16, name="want_label"), Signal(name="want_train")
        owed_elems = Signal(range(n0 + 1))
        elem = Signal(range(n0))
        address = Cat(*(payload_byte(WRITE, "address", i) for i in range(fmt.address_bytes)))
        wdata = Cat(*(payload_byte(WRITE, "data", i) for i in range(fmt.data_bytes)))
        top = wdata[fmt.data_width - 1:]
        fits = ((address >> fmt.address_width) == 0) & ((top == 0) | (top == (1 << len(top)) - 1))
        want_addr = Signal(len(address), name="want_addr")
        want_data = Signal(len(wdata), name="want_data")
        want_write = Signal(name="want_write")
        owed_req = Signal()
        with m.If(verdict_ok & (ftype == SAMPLE)):
            m.d.sync += [owed_elems.eq(n0), elem.eq(0),
                         want_label.eq(Cat(payload_byte(SAMPLE, "label", 0), payload_byte(SAMPLE, "label", 1))),
                         want_train.eq((payload_byte(SAMPLE, "flags") & SAMPLE_TRAIN) != 0)]
            m.d.sync += [want_x[i].eq(payload_byte(SAMPLE, "x", i)) for i in range(n0)]
        with m.If(verdict_ok & ((ftype == WRITE) | (ftype == READ)) & fits):
            m.d.sync += [owed_req.eq(1), want_addr.eq(address), want_write.eq(ftype == WRITE),
                         want_data.eq(Mux(ftype == WRITE, wdata, 0))]
        with m.If(transfer(eng.sample)):
            m.d.sync += [owed_elems.eq(owed_elems - 1), elem.eq(elem + 1)]
        with m.If(transfer(eng.host_req)):
            m.d.sync += owed_req.eq(0)
        sp, rp = eng.sample.payload, eng.host_req.payload
        with m.If(eng.sample.valid):
            m.d.comb += [
                Assert(owed_elems != 0, "a sample element from no accepted SAMPLE frame"),
                # (bits of an x byte above the input format's width are dropped: host_link.md
                # leaves them unspecified, docs/formal.md)
                Assert(sp.data.as_unsigned() == Array(want_x)[elem][:fmt.input_format.width],
                       "a sample value differs from the frame"),
                Assert(sp.label == want_label, "the label differs from the frame"),
                Assert(sp.train == want_train, "the train flag differs from the frame"),
            ]
        with m.If(eng.host_req.valid):
            m.d.comb += [
                Assert(owed_req, "a request from no accepted WRITE or READ frame that fits"),
                Assert(rp.address == want_addr, "the address differs from the frame"),
                Assert(rp.write == want_write, "the access kind differs from the frame"),
                Assert(rp.data.as_unsigned() == want_data, "the data differs from the frame"),
            ]
        # Reachability (mode="cover"): a well-formed SAMPLE frame is accepted and its last
        # element taken; a WRITE frame's request is taken.
        m.d.comb += [Cover(transfer(eng.sample) & (owed_elems == 1)),
                     Cover(transfer(eng.host_req) & rp.write),
                     Cover(counts["bad_crc"] != 0)]
        return m


# The receiver's configuration: 2 one-byte inputs, so the longest well-formed frame is a
# 10-byte SAMPLE or WRITE (12 bytes on the wire with its flags; docs/formal.md).
FRAME_CFG = config_from_dict({"network": {"layers": [2, 3, 2]}, "hardware": {"lanes": 2}, "formats": NARROW})
FRAME_DEPTH = 18


def test_link_crc_step():
    assert_passes(run_check(CRCSpec(), depth=1, name="link_crc"))


def test_link_crc_wrong_model_is_found():
    expect(run_check(CRCSpec(wrong=True), depth=1, name="link_crc_wrong"), "FAIL")


def test_link_accepts_exactly_the_well_formed_frames():
    assert_passes(run_check(FrameSpec(FRAME_CFG), depth=FRAME_DEPTH, name="link_frames"))


def test_link_frames_reachable():
    assert_passes(run_check(FrameSpec(FRAME_CFG), depth=FRAME_DEPTH, mode="cover", name="link_frames_cover"))


def test_link_frames_wrong_model_is_found():
    expect(run_check(FrameSpec(FRAME_CFG, wrong=True), depth=FRAME_DEPTH, name="link_frames_wrong"), "FAIL")


# ---- the UART: the receiver's byte stream, and a transmitter-to-receiver loopback ---------

UART_DIVISOR = 4    # the smallest divisor: the fewest cycles per byte, the same logic


class UARTRxSpec(Elaboratable):
    """:class:`UARTRx`'s byte stream keeps the rules whatever the pin does and whatever
    the consumer does (a byte completed while one waits is dropped, never overwrites it)."""

    def __init__(self, dut):
        self.dut = dut

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += dut.rx.eq(AnySeq(1))
        check_stream(m, dut.o, "o")
        return m


class UARTLoopbackSpec(Elaboratable):
    """Bytes into :class:`UARTTx` come out of :class:`UARTRx` on the other end of the wire,
    the same bytes in the same order, none lost, none twice, no line error (the consumer
    takes each byte within a byte time, as the host link does while idle).

    ``wrong``: a model that expects the bits in the other order, MSB first (it must be
    caught)."""

    def __init__(self, tx, rx, *, wrong=False):
        self.tx, self.rx, self.wrong = tx, rx, wrong

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = tx, rx = self.tx, self.rx
        drive_stream(m, tx.i, "i")
        m.d.comb += [rx.rx.eq(tx.tx), rx.o.ready.eq(AnySeq(1))]
        # the consumer takes a byte within 8 cycles of its offer
        waited = Signal(range(9), reset_less=True)
        with m.If(rx.o.valid & ~rx.o.ready):
            m.d.sync += waited.eq(waited + 1)
        with m.Else():
            m.d.sync += waited.eq(0)
        m.d.comb += Assume(waited < 8)
        # the bytes sent and not yet received (at most two: the transmitter takes the next
        # byte as soon as the last one's stop bit is out, before the receiver delivers it)
        queue = [Signal(8, name=f"q{i}", reset_less=True) for i in range(2)]
        sent = transfer_counter(m, tx.i, "sent")
        got = transfer_counter(m, rx.o, "got")
        with m.If(transfer(tx.i)):
            m.d.sync += Array(queue)[sent[0]].eq(tx.i.payload)
        m.d.comb += [Assert((sent - got)[:8] <= 2, "more than two bytes on the wire"),
                     Assert(~rx.framing_error & ~rx.overrun, "a line error on a clean wire")]
        want = Array(queue)[got[0]]
        if self.wrong:
            want = Cat(*reversed([want[i] for i in range(8)]))
        with m.If(transfer(rx.o)):
            m.d.comb += [Assert(sent != got, "a byte received that was not sent"),
                         Assert(rx.o.payload == want, "a byte received differs from the one sent")]
        m.d.comb += Cover((got == 1) & (sent == 2))
        return m


# k-induction, k = 4: the rules are about one cycle and the next, and the receiver's
# output register changes only on a transfer or when it is empty; PASS is a proof for
# traces of any length.
def test_uart_rx_stream():
    assert_passes(run_check(UARTRxSpec(UARTRx(divisor=UART_DIVISOR)), depth=4, mode="prove", name="uart_rx"))


def test_uart_rx_stream_bug_is_found():
    dut = WithdrawsValid(UARTRx(divisor=UART_DIVISOR), ("o",))
    expect(run_check(UARTRxSpec(dut), depth=60, name="uart_rx_bug"), "FAIL")


# Depth 60: a byte is 10 bits of 4 cycles; the receiver delivers it about 44 cycles after
# the transmitter took it (2 cycles of synchronizer, the middle of the stop bit), by which
# time the transmitter has taken the next byte: one byte through the wire and the next on
# it, with the consumer's delays (the cover shows the first arrives).
UART_LOOP_DEPTH = 60


def test_uart_loopback():
    spec = UARTLoopbackSpec(UARTTx(divisor=UART_DIVISOR), UARTRx(divisor=UART_DIVISOR))
    assert_passes(run_check(spec, depth=UART_LOOP_DEPTH, name="uart_loopback"))


def test_uart_loopback_reachable():
    spec = UARTLoopbackSpec(UARTTx(divisor=UART_DIVISOR), UARTRx(divisor=UART_DIVISOR))
    assert_passes(run_check(spec, depth=UART_LOOP_DEPTH, mode="cover", name="uart_loopback_cover"))


def test_uart_loopback_wrong_model_is_found():
    spec = UARTLoopbackSpec(UARTTx(divisor=UART_DIVISOR), UARTRx(divisor=UART_DIVISOR), wrong=True)
    expect(run_check(spec, depth=UART_LOOP_DEPTH, name="uart_loopback_wrong"), "FAIL")
