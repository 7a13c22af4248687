"""The loop-nest engine: one multiply-accumulate datapath that runs a fixed sequence of passes.

The CNN and RNN engines (``hdl/cnn_engine.py``, ``hdl/rnn_engine.py``) are built on it. Every
step of their golden models is a sum of products over an index space followed by one
rounding (or a loop with a max or a select in place of the sum), so a step is a *pass*:
nested counters (outer loops = one output element, inner loops = its terms) issue block-RAM
reads (with a register before and after the block RAM, :class:`RegisteredRead`), and a
pipeline follows, one term a cycle:

``A``  the read data are here: the pass selects the multiplier's operands (``stage_K``);
``B``  the registered operands are multiplied;
``C``  the registered product is accumulated exactly (the accumulator is as wide as the
       largest sum needs, so the order of the terms does not matter, as in the golden
       models); the sum is registered;
``D``  on the last term of an output element the pass's finishing logic (``finish_K``)
       rounds, saturates, applies the activation and writes the result;
``E``  for the weight and bias updates (:meth:`LoopNestEngine.update_step`): the rounded
       step, registered at ``D``, is subtracted from the old value, saturated and written
       back.

Every pass drains the pipeline (``PIPELINE_DEPTH`` cycles) before the next one issues, so a
pass reads only what the passes before it wrote.

A subclass supplies the schedule (:meth:`LoopNestEngine.programs`: the forward passes, then
the backward and update passes of a training sample), its memories
(:meth:`build_memories`), the datapath widths, and for every pass kind ``K`` the methods
``issue_K(p)`` (drive the read addresses from the counters :attr:`c`, and :attr:`valid` for a
term that is zero), ``stage_K(p)`` (stage A: set :attr:`mul_a`, :attr:`mul_b`, :attr:`init`
from the read data and the counters :attr:`cd`) and ``finish_K(p)`` (stage D: on
:attr:`finishing`, from :attr:`total`, the counters :attr:`cf` and :meth:`late` copies of
stage-A values, write the result and set :attr:`sat_events`). The base
builds the rest: counters, the stage registers, the shared multiply-accumulate, the output-
error unit, the controller (LOAD, the forward passes, ERR, the backward passes for a
training sample, RESULT), the host port and the counters, with the MLP engine's ports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import memory, wiring

from .arith import Requantize, times_const
from .engine import LABEL_BITS
from .output_error import OutputError

__all__ = ["LoopNestEngine", "PassPlan", "LOOP_COUNTERS", "NON_MAC_PASSES", "PIPELINE_DEPTH", "output_error_cycles", "schedule_cycles",
           "lut", "flat"]

#: Read-only counters at ``kind = 2``, by index.
LOOP_COUNTERS = ("samples_trained", "samples_inferred", "rejected_labels", "rejected_addresses",
                 "saturation_events", "samples_received")
COUNTER_MAX = 2**32 - 1
#: Cycles from a term's issue to its read data at stage A: the address register, the
#: block RAM's read, the data register.
READ_LATENCY = 3
#: Cycles from a term's issue to its last stage (E), and each pass's drain.
PIPELINE_DEPTH = READ_LATENCY + 4
#: Pass kinds whose terms are not multiply-accumulates (pooling, routing, delta_L, the RNN's
#: eligibility-trace weighting).
NON_MAC_PASSES = ("POOL", "ROUTE", "DOUT", "TRACE")


def bits_for(n):
    """Bits to hold 0 .. n - 1 (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class PassPlan:
    """One loop nest of a schedule: ``kind``, the layer it serves, the outer loops (one
    output element each) and the inner loops (its terms)."""
    kind: str
    layer: int
    outer: tuple
    inner: tuple

    @property
    def dims(self) -> tuple:
        return tuple(self.outer) + tuple(self.inner)

    @property
    def cycles(self) -> int:
        """Issue cycles (one term a cycle), without the pass's drain."""
        return math.prod(self.dims)


def output_error_cycles(cfg) -> int:
    """Cycles of the output-error unit (``hdl/output_error.py``), as in the MLP."""
    return OutputError.cycles(cfg.n_classes)


def schedule_cycles(fwd, bwd, n_inputs: int, cfg) -> dict:
    """Cycles per training and inference sample by phase: each pass issues one term a cycle
    and drains the pipeline; the output-error unit as in the MLP."""
    load = n_inputs + 1
    f = sum(p.cycles + PIPELINE_DEPTH for p in fwd)
    b = sum(p.cycles + PIPELINE_DEPTH for p in bwd)
    err = output_error_cycles(cfg)
    return {"load": load, "forward": f, "output_error": err, "backward_and_update": b, "result": 1,
            "train_sample": load + f + err + b + 1, "infer_sample": load + f + err + 1,
            "terms_per_sample": sum(p.cycles for p in fwd + bwd)}


def lut(values, index):
    """A constant table read with ``index`` (small: address arithmetic by a non-power-of-two
    divisor or modulus, which would otherwise be a divider)."""
    if len(set(values)) == 1:
        return Const(values[0])
    return Array([Const(v) for v in values])[index]


def flat(indices, dims):
    """Row-major flat index of ``indices`` in an array of ``dims`` (constant strides, no
    multiplier)."""
    total, stride = None, 1
    for i, d in zip(reversed(list(indices)), reversed(list(dims))):
        term = times_const(i, stride) if stride != 1 else i
        total = term if total is None else total + term
        stride *= d
    return total


def _all(terms):
    out = Const(1)
    for t in terms:
        out = out & t
    return out


class Ports:
    """A memory's read port ``r`` and write port ``w``."""

    def __init__(self, r, w):
        self.r, self.w = r, w


class RegisteredRead:
    """A block-RAM read port with a register on each side: ``addr`` is registered before it
    reaches the block RAM, and the data is registered once more after it (``data`` three
    cycles after ``addr``). The address arithmetic, the block RAM and the logic behind it
    are then in separate cycles."""

    def __init__(self, port, addr, data):
        self.addr, self.data, self.port = addr, data, port


class LoopNestEngine(wiring.Component):
    """Base of the loop-nest engines (see the module's text).

    Subclasses set :attr:`_cfg` (a configuration with ``lr(layer)``), :attr:`_addr`
    (``{"index", "layer", "kind"}`` bit widths) and call ``super().__init__(signature)``;
    they implement :meth:`programs`, :meth:`n_inputs`, :meth:`build_memories`,
    :meth:`widths`, :meth:`load_port`, :meth:`parameter_ports`, :meth:`delta_out_port` and,
    per pass kind ``K`` other than ``DOUT``, ``issue_K``, ``stage_K`` and ``finish_K``
    (an update's ``finish_K`` hands its write-back to :meth:`update_step`).
    """

    N_COUNTERS = 6
    COUNTERS = LOOP_COUNTERS

    @property
    def cfg(self):
        return self._cfg

    # ---- what a subclass supplies ---------------------------------------------------------
    def programs(self) -> tuple:
        raise NotImplementedError

    def n_inputs(self) -> int:
        raise NotImplementedError

    def build_memories(self):
        """Create the memories (with :meth:`mem`) as attributes."""
        raise NotImplementedError

    def widths(self, plan) -> tuple:
        """``(a_width, b_width, acc_width)``: the multiplier's signed operands and the
        accumulator, wide enough for every pass of ``plan``."""
        raise NotImplementedError

    def load_port(self):
        """The write port the sample stream fills, one value a transfer."""
        raise NotImplementedError

    def parameter_ports(self) -> list:
        """Per host-map layer ``(weights, biases, n_weights, n_biases)`` (:class:`Ports`)."""
        raise NotImplementedError

    # ---- helpers for subclasses -------------------------------------------------------------
    def mem(self, name, shape, depth, init=None):
        mm = memory.Memory(shape=shape, depth=max(depth, 2), init=init or [])
        self.m.submodules[name] = mm
        rp = mm.read_port()
        addr = Signal.like(rp.addr, name=f"{name}_ra")
        data = Signal.like(rp.data, name=f"{name}_rd")
        self._late_m.d.sync += [rp.addr.eq(addr), data.eq(rp.data)]
        return Ports(RegisteredRead(rp, addr, data), mm.write_port())

    def index_value_rom(self, name, index, value, n_classes):
        """A ROM of sparse feedback entries, one ``{index, value}`` word each (``value`` raw in
        the feedback format, ``index`` a class), in the order given; see :meth:`index_value`."""
        vw = self._cfg.formats.feedback.width
        words = [(int(i) << vw) | (int(v) & ((1 << vw) - 1))
                 for i, v in zip(np.asarray(index).reshape(-1), np.asarray(value).reshape(-1))]
        return self.mem(name, unsigned(vw + bits_for(n_classes)), len(words), words)

    def index_value(self, word):
        """``(value, index)`` of a word of :meth:`index_value_rom`."""
        vw = self._cfg.formats.feedback.width
        return word[:vw].as_signed(), word[vw:]

    def rq(self, value, in_frac, fmt, mode, width=None):
        """A requantizer of ``value`` (width ``width``, default the accumulator's)."""
        r = Requantize(width or self.acc_w, in_frac, fmt, "trunc" if mode == "trunc" else "nearest")
        self._n += 1
        self.m.submodules[f"rq{self._n}"] = r
        self.m.d.comb += r.i.eq(value)
        return r

    def sat(self, *flags):
        """Saturation events of the finishing output element (summed)."""
        total = flags[0]
        for fl in flags[1:]:
            total = total + fl
        self.m.d.comb += self.sat_events.eq(total)

    def signal(self, shape, prefix):
        self._n += 1
        return Signal(shape, name=f"{prefix}_{self._n}")

    def late(self, value):
        """``value`` (a stage-A value) delayed to stage D: three registers, free-running (the
        pipeline never stalls), one chain per signal."""
        return self._delayed(value, 3, self._late)

    def after(self, value):
        """``value`` (a stage-D value) one cycle later, at stage E."""
        return self._delayed(value, 1, self._after)

    def _delayed(self, value, n, memo):
        key = id(value)
        if key in memo:
            return memo[key][1]
        v = Value.cast(value)
        cur = v
        for _ in range(n):
            r = self.signal(v.shape(), "late")
            self._late_m.d.sync += r.eq(cur)
            cur = r
        memo[key] = (value, cur)      # (keeps value alive: its id stays unique)
        return cur

    def lr_step(self, layer, frac, fmt):
        """``requantize(lr * total, frac + F_lr, fmt)`` with ``rounding.update``: the rounded
        step of a weight (``fmt`` = update) or bias (``fmt`` = bias) whose exact gradient sum
        :attr:`total` has ``frac`` fraction bits."""
        lr, lr_frac = self._cfg.lr(layer)       # (lr_raw, F_lr), section 6
        scaled = times_const(self.total, lr) if lr != 1 else self.total
        return self.rq(scaled, frac + lr_frac, fmt, self._cfg.rounding_update,
                       width=self.acc_w + max(lr, 1).bit_length() + 1)

    # ---- the output layer's delta: delta_L = requantize(e), one class a cycle (no terms)
    def delta_out_port(self):
        """The memory of ``delta_L`` (one element per class)."""
        raise NotImplementedError

    def issue_DOUT(self, p):
        pass

    def stage_DOUT(self, p):
        pass

    def finish_DOUT(self, p):
        cfg, f = self._cfg, self._cfg.formats
        rq = self.rq(self.oe.e[self.cf[0]], f.error.frac_bits, f.delta, cfg.rounding_backward, width=f.error.width)
        port = self.delta_out_port()
        self.m.d.comb += [port.w.addr.eq(self.cf[0]), port.w.data.eq(rq.o), port.w.en.eq(1)]
        self.sat(rq.saturated)

    def update_step(self, p, port, step, step_saturated, fmt, addr):
        """The update's stage D and E: ``step`` (the rounded, saturated ``dW`` or ``db`` at
        stage D) and the old value are registered; at E ``port[addr] = sat_fmt(old - step)``
        (``addr``, a function of the stage-E counters :attr:`cfe`). Called from ``finish_K``;
        the base's stage E (:meth:`_update_e`) uses what this stores. The step's saturation is
        counted at D, the subtraction's at E."""
        self._updates[p] = (port, self.after(step), self.after(self.late(port.r.data)), fmt, addr)
        with self.m.If(self.finishing):
            self.sat(step_saturated)

    def _update_e(self, p):
        port, step, old, fmt, addr = self._updates[p]
        new = self.rq(old - step, fmt.frac_bits, fmt, "trunc", width=max(fmt.width, step.shape().width) + 2)
        self.m.d.comb += [port.w.addr.eq(addr(self.cfe)), port.w.data.eq(new.o), port.w.en.eq(self.finishing_e)]
        with self.m.If(self.finishing_e):
            self.sat_e(new.saturated)

    def sat_e(self, *flags):
        """Saturation events of an output element's stage E (summed)."""
        total = flags[0]
        for fl in flags[1:]:
            total = total + fl
        self.m.d.comb += self.sat_events_e.eq(total)

    # ---- the engine ---------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        self.m, self._n, self._late, self._after, self._updates = m, 0, {}, {}, {}
        m.submodules.late = self._late_m = Module()     # unconditional delay registers
        cfg = self._cfg
        C = cfg.n_classes
        fwd_plan, bwd_plan = self.programs()
        plan = list(fwd_plan) + list(bwd_plan)
        self.build_memories()
        m.submodules.oe = self.oe = oe = OutputError(cfg, lanes=1)
        a_w, b_w, self.acc_w = self.widths(plan)

        # ---- counters and the stage registers ----------------------------------------------
        n_ctr = self.N_COUNTERS
        ctr_w = bits_for(max(max(p.dims) for p in plan) + 1)
        self.c = c = [Signal(ctr_w, name=f"c{k}") for k in range(n_ctr)]
        self.cd = cd = [Signal(ctr_w, name=f"cd{k}") for k in range(n_ctr)]     # at stage A
        cur = Signal(range(len(plan) + 1))
        pass_d = Signal(range(len(plan) + 1))
        active_d, self.first_d, last_d, valid_d = Signal(), Signal(), Signal(), Signal()
        self.cf = [self.late(cd[k]) for k in range(n_ctr)]                        # at stage D
        self.issuing = issuing = Signal()       # the running pass issues a term this cycle
        self.valid = valid = Signal()

        label, train, label_ok = Signal(LABEL_BITS), Signal(), Signal()
        self.do_train = do_train = Signal()
        n_in = self.n_inputs()
        load_count = Signal(range(max(n_in, 2)))
        prediction = Signal(bits_for(C))
        counters = Array(Signal(32, name=f"ctr_{n}") for n in self.COUNTERS)
        ctr = dict(zip(self.COUNTERS, counters))

        def bump(name, amount=1):
            sig = ctr[name]
            m.d.sync += sig.eq(Mux(sig + amount > COUNTER_MAX, COUNTER_MAX, sig + amount))

        # ---- the shared multiply-accumulate: A operands, B product, C sum, D finish -------
        self.mul_a = Signal(signed(a_w))
        self.mul_b = Signal(signed(b_w))
        self.init = Signal(signed(self.acc_w))
        op_a, op_b = Signal(signed(a_w)), Signal(signed(b_w))                   # stage B
        init_b, init_c = Signal(signed(self.acc_w)), Signal(signed(self.acc_w))
        product = Signal(signed(a_w + b_w))                                      # stage C
        acc = Signal(signed(self.acc_w))
        total_c = Signal(signed(self.acc_w))
        self.total = Signal(signed(self.acc_w))                                  # stage D
        active_b, first_b, last_b, valid_b = Signal(), Signal(), Signal(), Signal()
        active_c, first_c, last_c, valid_c = Signal(), Signal(), Signal(), Signal()
        active_f, last_f = Signal(), Signal()
        m.d.sync += [op_a.eq(self.mul_a), op_b.eq(self.mul_b), init_b.eq(self.init),
                     active_b.eq(active_d), first_b.eq(self.first_d), last_b.eq(last_d), valid_b.eq(valid_d),
                     product.eq(op_a * op_b), init_c.eq(init_b),
                     active_c.eq(active_b), first_c.eq(first_b), last_c.eq(last_b), valid_c.eq(valid_b),
                     self.total.eq(total_c), active_f.eq(active_c), last_f.eq(last_c)]
        m.d.comb += total_c.eq(Mux(first_c, init_c, acc) + Mux(valid_c, product, 0))
        with m.If(active_c):
            m.d.sync += acc.eq(total_c)
        pass_f = self.late(pass_d)
        self.sat_events, self.sat_events_e = Signal(3), Signal(3)
        self.finishing = Signal()
        m.d.comb += self.finishing.eq(active_f & last_f)
        # stage E (the updates' subtraction and write-back)
        active_e, self.finishing_e = Signal(), Signal()
        pass_e = self.after(pass_f)
        self.cfe = [self.after(self.cf[k]) for k in range(n_ctr)]
        m.d.sync += [active_e.eq(active_f), self.finishing_e.eq(self.finishing)]
        # counted a cycle later (off the finishing stages' rounding and saturation paths)
        sat_late = Signal(4)
        m.d.sync += sat_late.eq(Mux(self.finishing & do_train, self.sat_events, 0)
                                + Mux(self.finishing_e & do_train, self.sat_events_e, 0))
        sat_err = Signal(bits_for(C + 2))        # the output-error unit's, in ERR_WAIT
        bump("saturation_events", sat_late + sat_err)

        # issue side: addresses of the running pass; stage side: the pass of the term in flight
        with m.Switch(cur):
            for pid, p in enumerate(plan):
                with m.Case(pid):
                    m.d.comb += valid.eq(1)
                    getattr(self, f"issue_{p.kind}")(p)
        with m.If(active_d):
            with m.Switch(pass_d):
                for pid, p in enumerate(plan):
                    with m.Case(pid):
                        getattr(self, f"stage_{p.kind}")(p)
        with m.If(active_f):
            with m.Switch(pass_f):
                for pid, p in enumerate(plan):
                    with m.Case(pid):
                        getattr(self, f"finish_{p.kind}")(p)
        with m.If(active_e):
            with m.Switch(pass_e):
                for pid, p in enumerate(plan):
                    if p in self._updates:
                        with m.Case(pid):
                            self._update_e(p)

        # counters of the running pass: step, and flags for the stage
        last_issue, first_term, last_term = Signal(), Signal(), Signal()
        with m.Switch(cur):
            for pid, p in enumerate(plan):
                with m.Case(pid):
                    dims, n_out = p.dims, len(p.outer)
                    at_max = [c[k] == dims[k] - 1 for k in range(len(dims))]
                    m.d.comb += [first_term.eq(_all([c[k] == 0 for k in range(n_out, len(dims))])),
                                 last_term.eq(_all(at_max[n_out:])), last_issue.eq(_all(at_max))]
                    with m.If(issuing):
                        self._step(m, c, dims, len(dims) - 1)
        # the issue's flags and counters, three cycles on (the address register, the read,
        # the data register): stage A
        flags = [(issuing, active_d), (first_term, self.first_d), (last_term, last_d), (valid, valid_d),
                 (cur, pass_d)] + [(c[k], cd[k]) for k in range(n_ctr)]
        for src, dst in flags:
            for n in range(READ_LATENCY - 1):
                mid = Signal.like(dst, name=f"{dst.name}_read{n}")
                m.d.sync += mid.eq(src)
                src = mid
            m.d.sync += dst.eq(src)

        # ---- host requests -------------------------------------------------------------------
        fi, fl = self._addr["index"], self._addr["layer"]
        data_width = self.host_resp.payload.data.shape().width
        h_addr = Signal(fi + fl + 2)
        h_write = Signal()
        h_data = Signal(signed(data_width))
        h_index, h_layer, h_kind = h_addr[:fi], h_addr[fi:fi + fl], h_addr[fi + fl:]
        resp_data, resp_error = Signal(signed(data_width)), Signal()
        in_host = Signal()
        params = self.parameter_ports()
        with m.If(in_host):
            for w, b, _, _ in params:
                m.d.comb += [w.r.addr.eq(h_index), b.r.addr.eq(h_index)]

        m.d.comb += [
            self.result.payload.prediction.eq(prediction),
            self.result.payload.e.eq(oe.e),
            self.result.payload.trained.eq(do_train),
            self.result.payload.rejected.eq(train & ~label_ok),
            self.host_resp.payload.data.eq(resp_data),
            self.host_resp.payload.error.eq(resp_error),
            oe.i.payload.label.eq(Mux(label_ok, label, 0)),
        ]
        first_bwd = len(fwd_plan)
        load = self.load_port()
        drain = Signal(range(PIPELINE_DEPTH))
        host_wait = Signal(range(READ_LATENCY))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.host_req.valid):
                    m.d.comb += self.host_req.ready.eq(1)
                    m.d.sync += [h_addr.eq(self.host_req.payload.address), h_write.eq(self.host_req.payload.write),
                                 h_data.eq(self.host_req.payload.data)]
                    m.next = "HOST_READ"
                with m.Elif(self.sample.valid):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.sample.ready.eq(1), load.w.addr.eq(load_count),
                             load.w.data.eq(self.sample.payload.data), load.w.en.eq(self.sample.valid)]
                with m.If(self.sample.valid):
                    with m.If(load_count == 0):
                        lab, tr = self.sample.payload.label, self.sample.payload.train
                        ok = lab < C
                        m.d.sync += [label.eq(lab), train.eq(tr), label_ok.eq(ok), do_train.eq(tr & ok)]
                        bump("samples_received")
                    with m.If(load_count == n_in - 1):
                        m.d.sync += [load_count.eq(0), cur.eq(0)]
                        m.next = "RUN"
                    with m.Else():
                        m.d.sync += load_count.eq(load_count + 1)
            with m.State("RUN"):
                m.d.comb += issuing.eq(1)
                with m.If(last_issue):
                    m.d.sync += drain.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # the last term's finishing stage writes in the last drain cycle
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == PIPELINE_DEPTH - 1):
                    with m.If(cur == first_bwd - 1):
                        m.next = "ERR_START"
                    with m.Elif(cur == len(plan) - 1):
                        m.next = "RESULT"
                    with m.Else():
                        m.d.sync += cur.eq(cur + 1)
                        m.next = "RUN"
            with m.State("ERR_START"):
                m.d.comb += oe.i.valid.eq(1)
                with m.If(oe.i.ready):
                    m.next = "ERR_WAIT"
            with m.State("ERR_WAIT"):
                m.d.comb += oe.o.ready.eq(1)
                with m.If(oe.o.valid):
                    m.d.sync += prediction.eq(oe.o.payload.prediction)
                    with m.If(do_train):
                        m.d.comb += sat_err.eq(oe.o.payload.saturated)
                        m.d.sync += cur.eq(first_bwd)
                        m.next = "RUN"
                    with m.Else():
                        m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    with m.If(do_train):
                        bump("samples_trained")
                    with m.Else():
                        bump("samples_inferred")
                    with m.If(train & ~label_ok):
                        bump("rejected_labels")
                    m.next = "IDLE"
            with m.State("HOST_READ"):
                m.d.comb += in_host.eq(1)
                m.next = "HOST_WAIT"
            with m.State("HOST_WAIT"):          # the address register, the read, the data register
                m.d.comb += in_host.eq(1)
                m.d.sync += host_wait.eq(host_wait + 1)
                with m.If(host_wait == READ_LATENCY - 2):
                    m.d.sync += host_wait.eq(0)
                    m.next = "HOST_ANSWER"
            with m.State("HOST_ANSWER"):
                # the read data of h_index is here: answer with it, and write when allowed
                m.d.comb += in_host.eq(1)
                self._host_answer(m, params, h_kind, h_layer, h_index, h_write, h_data, resp_data, resp_error,
                                  counters, bump)
                m.next = "HOST_RESP"
            with m.State("HOST_RESP"):
                m.d.comb += self.host_resp.valid.eq(1)
                with m.If(self.host_resp.ready):
                    m.next = "IDLE"
        return m

    @staticmethod
    def _step(m, c, dims, k):
        """Advance the nested counters ``c[0..k]`` (innermost ``k``) of loops ``dims``."""
        if k < 0:
            return
        if dims[k] == 1:
            LoopNestEngine._step(m, c, dims, k - 1)
            return
        with m.If(c[k] == dims[k] - 1):
            m.d.sync += c[k].eq(0)
            LoopNestEngine._step(m, c, dims, k - 1)
        with m.Else():
            m.d.sync += c[k].eq(c[k] + 1)

    def _host_answer(self, m, params, kind, layer, index, write, data_in, resp_data, resp_error, counters, bump):
        f = self._cfg.formats
        refused = Signal()
        with m.Switch(kind):
            with m.Case(0, 1):
                for l, (wp, bp, n_w, n_b) in enumerate(params):
                    with m.If(layer == l):
                        for code, port, fmt, depth in ((0, wp, f.weight, n_w), (1, bp, f.bias, n_b)):
                            with m.If(kind == code):
                                m.d.sync += resp_data.eq(port.r.data)
                                in_map = index < depth
                                fits = (data_in >= fmt.min_raw) & (data_in <= fmt.max_raw)
                                m.d.comb += refused.eq(~in_map | (write & ~fits))
                                m.d.comb += [port.w.addr.eq(index), port.w.data.eq(data_in),
                                             port.w.en.eq(write & in_map & fits)]
                with m.If(layer >= len(params)):
                    m.d.comb += refused.eq(1)
            with m.Case(2):
                m.d.sync += resp_data.eq(counters[index[:bits_for(len(self.COUNTERS))]])
                m.d.comb += refused.eq(write | (index >= len(self.COUNTERS)))
            with m.Default():
                m.d.comb += refused.eq(1)
        m.d.sync += resp_error.eq(refused)
        with m.If(refused):
            bump("rejected_addresses")
