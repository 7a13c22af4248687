"""The RNN training engine: ``docs/numerics.md`` section 13 as loop-nest passes.

One recurrent layer (Elman, or the leaky cell of section 13.9) trained by DFA through time
and a dense readout of its last state
(:class:`dfa_engine.sim.golden_rnn.GoldenRNN`), on the loop-nest datapath of
:mod:`dfa_engine.hdl.loopnest` (one multiply-accumulate a cycle). A sequence runs:

``LOAD``   the sample stream fills the input buffer (``T * I`` values, step by step);
``REC``    for every step ``t`` and neuron ``i``: ``z = sum_j W1[i, j] [x_t; h_{t-1}][j]``
           (``W1 = [W_x | W_h]``, one row of ``I + H`` weights; the ``x`` terms shifted by
           ``s_x``, the ``h`` terms by ``s_h``; ``h_0 = 0``), ``+ b_1 << s_b``, requantize,
           activation and mask: ``h_t`` and ``m_t`` stored for every step (the leaky cell:
           ``h_t = h_{t-1} + round((f(a_t) - h_{t-1}) >> s_i)``, its own ``h_{t-1}[i]`` from a
           copy of the state memory, ``s_i = i mod (S + 1)`` from a constant table);
``OUT``    the readout of ``h_T`` into the output-error unit (the MLP's);
``ERR``    ``e`` and the prediction;
``DOUT``   ``delta_2``; ``PROJ`` ``g = requantize(B e)``: dense ``B`` a ROM of ``H x C`` values,
           ``C`` terms a row; sparse ``B`` its ``(index, value)`` lists, ``k`` terms a row
           (a sparse matrix-vector product: ``e[index] * value``);
``TRACE``  the leaky cell only: each neuron's eligibility-trace weighting of ``g``, one step a
           cycle back from ``T`` (``q = round(g >> s)``, then ``q -= round(q >> s)``), masked
           into the stored ``delta_t`` (no multiplier);
``UPD2``, ``UPDB2``  the readout's update;
``UPD1``   every ``W1[i, j]``: the exact sum over the window's steps of
           ``delta_t[i] * [x_t; h_{t-1}][j]`` (DFA: ``delta_t = m_t ? g : 0``; BPTT and the
           leaky cell: the stored ``delta_t``), then one rounding (``W_x``'s and
           ``W_h``'s own fraction bits) and the saturating subtraction; ``UPDB1`` the bias;
``RESULT`` one transfer on the result stream.

With DFA no pass reads a transposed weight or runs backwards through time; the BPTT
baseline (``method = "bptt"``, section 13.8) replaces ``PROJ`` with ``BPTO`` (``W_2^T
delta_2``) and ``BPTH`` (``W_h^T delta_{t+1}``, step by step back in time; on the leaky cell
each step's sum starts from the kept ``(1 - alpha) g_{t+1}``). The host map is the CNN
engine's ``{kind, layer, index}``: layer 0 is ``W1 = [W_x | W_h]`` (row-major, ``H x (I + H)``)
with ``b_1``; layer 1 is ``W_2`` with ``b_2``.
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Array, Cat, Const, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring

from dfa_engine.config import ConfigError
from dfa_engine.rnn_config import RNNEngineConfig

from .arith import LFSRDraw, hardtanh, times_const
from .feedback import lfsr_entry, lfsr_row_base
from .engine import stream_ports
from .loopnest import (LOOP_COUNTERS, PIPELINE_DEPTH, READ_LATENCY, LoopNestEngine, PassPlan, bits_for, lut,
                       schedule_cycles)

__all__ = ["RNNEngine", "rnn_engine_signature", "rnn_address_layout", "rnn_host_address", "RNN_COUNTERS",
           "rnn_cycles", "rnn_schedule", "rnn_host_parameters", "rnn_matrix_shapes"]

RNN_COUNTERS = LOOP_COUNTERS


def rnn_matrix_shapes(cfg: RNNEngineConfig) -> list:
    """``(rows, columns)`` of each host-map layer's weights: ``W1 = [W_x | W_h]``, ``W_2``."""
    return [(cfg.hidden, cfg.inputs + cfg.hidden), (cfg.classes, cfg.hidden)]


def rnn_host_parameters(params: dict) -> list:
    """``[(W1, b_1), (W_2, b_2)]`` of a parameter dict ``{Wx, Wh, b1, W2, b2}`` (as the host
    map lays them out)."""
    return [(np.concatenate([params["Wx"], params["Wh"]], axis=1), params["b1"]), (params["W2"], params["b2"])]


def rnn_address_layout(cfg: RNNEngineConfig) -> dict:
    """Bit fields of a host address, low to high: index, layer, kind."""
    biggest = max(r * c for r, c in rnn_matrix_shapes(cfg))
    return {"index": bits_for(max(biggest, len(RNN_COUNTERS))), "layer": 1, "kind": 2}


def rnn_host_address(cfg: RNNEngineConfig, kind: str, layer: int = 0, row: int = 0, column: int = 0,
                     counter: str | None = None) -> int:
    """Host address of ``W[layer][row, column]``, ``b[layer][row]`` or a counter."""
    fields = rnn_address_layout(cfg)
    if kind == "counter":
        return (2 << (fields["index"] + fields["layer"])) | RNN_COUNTERS.index(counter)
    code = {"weight": 0, "bias": 1}[kind]
    index = row * rnn_matrix_shapes(cfg)[layer][1] + column if kind == "weight" else row
    return (code << (fields["index"] + fields["layer"])) | (layer << fields["index"]) | index


def rnn_engine_signature(cfg: RNNEngineConfig) -> wiring.Signature:
    """The same four streams as the MLP engine (:func:`~dfa_engine.hdl.engine.stream_ports`)."""
    return stream_ports(cfg, sum(rnn_address_layout(cfg).values()))


def _check(cfg: RNNEngineConfig):
    if cfg.method == "bptt" and min(cfg.window, cfg.steps) > 1 and cfg.hidden < PIPELINE_DEPTH + 1:
        # BPTT's step t reads delta_{t+1}[H-1] H cycles after it was issued
        raise ConfigError("network.hidden", cfg.hidden,
                          f"is too small for BPTT on this engine: at least {PIPELINE_DEPTH + 1} (the pipeline's "
                          f"depth + 1)")
    if cfg.inputs + cfg.hidden < PIPELINE_DEPTH + 1:
        # step t reads h_{t-1}[H-1] I + H cycles after step t-1 issued it, and the pipeline
        # writes it PIPELINE_DEPTH cycles after its issue
        raise ConfigError("network.hidden", cfg.hidden,
                          f"is too small: inputs + hidden must be at least {PIPELINE_DEPTH + 1} for the "
                          f"engine's pipeline (the recurrence reads a state {cfg.inputs + cfg.hidden} cycles "
                          f"after it is issued)")
    for name, mode in (("forward", cfg.rounding_forward), ("backward", cfg.rounding_backward),
                       ("update", cfg.rounding_update)):
        if mode not in ("nearest", "trunc"):
            raise ConfigError(f"rounding.{name}", mode, "is not implemented by the RNN engine (nearest or trunc)")


def rnn_schedule(cfg: RNNEngineConfig) -> tuple:
    """(forward passes, backward and update passes) of one sequence of ``cfg.steps`` steps."""
    T, I, H, C = cfg.steps, cfg.inputs, cfg.hidden, cfg.classes
    K = min(cfg.window, T)
    fwd = [PassPlan("REC", 0, (T, H), (I + H,)), PassPlan("OUT", 1, (C,), (H,))]
    if cfg.method == "bptt":
        # section 13.8: W_2^T delta_2 into the last step, then K - 1 steps of W_h^T back in time
        deltas = [PassPlan("BPTO", 0, (H,), (C,))] + ([PassPlan("BPTH", 0, (K - 1, H), (H,))] if K > 1 else [])
    else:
        # dense: every class of a row; sparse: the row's k (index, value) entries
        deltas = [PassPlan("PROJ", 0, (H,), (C if cfg.feedback.kind == "dense" else cfg.feedback.k,))]
        if cfg.cell == "leaky":
            # section 13.9: per neuron, the window's steps from T back, one a cycle
            deltas.append(PassPlan("TRACE", 0, (H, K), (1,)))
    bwd = [PassPlan("DOUT", 1, (C,), (1,)), *deltas,
           PassPlan("UPD2", 1, (C, H), (1,)), PassPlan("UPDB2", 1, (C,), (1,)),
           PassPlan("UPD1", 0, (H, I + H), (K,)), PassPlan("UPDB1", 0, (H,), (K,))]
    return fwd, bwd


def rnn_cycles(cfg: RNNEngineConfig) -> dict:
    """Cycles per training and inference sequence by phase (the controller's schedule)."""
    fwd, bwd = rnn_schedule(cfg)
    return schedule_cycles(fwd, bwd, cfg.steps * cfg.inputs, cfg)


class RNNEngine(LoopNestEngine):
    """The generated RNN trainer for one :class:`RNNEngineConfig` (see the module's text)."""

    COUNTERS = RNN_COUNTERS

    def __init__(self, cfg: RNNEngineConfig, params=None, init_parameters: bool = True):
        from dfa_engine.sim.golden_rnn import initial_rnn_parameters

        try:
            _check(cfg)
        except ConfigError:
            self._MustUse__silence = True     # refused, never to be elaborated: no "unused" warning
            raise
        self._cfg = cfg
        self._K = min(cfg.window, cfg.steps)
        self._leaky = cfg.cell == "leaky"
        self._stored_deltas = cfg.method == "bptt" or self._leaky      # delta_t in d1mem
        self._params = rnn_host_parameters(initial_rnn_parameters(cfg) if params is None else params)
        self._init_parameters = init_parameters
        self._addr = rnn_address_layout(cfg)
        super().__init__(rnn_engine_signature(cfg))

    def programs(self):
        return rnn_schedule(self._cfg)

    def n_inputs(self):
        return self._cfg.steps * self._cfg.inputs

    def load_port(self):
        return self.xmem

    def delta_out_port(self):
        return self.d2mem

    def parameter_ports(self):
        (r1, c1), (r2, c2) = rnn_matrix_shapes(self._cfg)
        return [(self.w1, self.b1, r1 * c1, r1), (self.w2, self.b2, r2 * c2, r2)]

    def build_memories(self):
        from dfa_engine.feedback import feedback_matrix, sparse_feedback

        cfg, f = self._cfg, self._cfg.formats
        T, I, H, C = cfg.steps, cfg.inputs, cfg.hidden, cfg.classes
        mem = self.mem

        def init(v):
            return [int(x) for x in np.asarray(v).reshape(-1)] if self._init_parameters else None

        (W1, b1), (W2, b2) = self._params
        self.xmem = mem("x", f.input.amaranth_shape(), T * I)
        self.hmem = mem("h", f.activation.amaranth_shape(), T * H)       # h_{t+1} at t*H
        self.maskmem = mem("mask", unsigned(1), T * H)
        self.w1 = mem("w1", f.weight.amaranth_shape(), H * (I + H), init(W1))
        self.b1 = mem("b1", f.bias.amaranth_shape(), H, init(b1))
        self.w2 = mem("w2", f.weight.amaranth_shape(), C * H, init(W2))
        self.b2 = mem("b2", f.bias.amaranth_shape(), C, init(b2))
        self.gmem = mem("g", f.delta.amaranth_shape(), H)
        self.d2mem = mem("delta2", f.delta.amaranth_shape(), C)
        B = feedback_matrix(cfg.feedback_engine_config(), 0)
        if cfg.feedback.kind == "dense":
            self.brom = mem("B", f.feedback.amaranth_shape(), H * C, [int(v) for v in B.reshape(-1)])
        else:
            # the (index, value) lists, word r * k + m = {index, value}: the same B (checked)
            sp = sparse_feedback(cfg.feedback_engine_config(), 0)
            values = np.where(sp.sign == 1, -sp.magnitude, sp.magnitude)
            dense = np.zeros_like(B)
            np.add.at(dense, (np.arange(H)[:, None].repeat(cfg.feedback.k, 1), sp.index), values)
            if not np.array_equal(dense, B):      # one definition of B: the lists must be the matrix
                raise RuntimeError("the sparse feedback lists do not add up to feedback_matrix's B")
            if cfg.feedback.storage == "lfsr":
                self._build_lfsr_feedback()
            else:
                self.brom = self.index_value_rom("B", sp.index, values, C)
        if self._stored_deltas:
            # delta_t of the window's steps (slot k = step T - K + k), written top-down
            self.d1mem = mem("delta1", f.delta.amaranth_shape(), self._K * H)
        if self._leaky and cfg.method == "bptt":
            # 13.9: (1 - alpha) g_t[i], which the next (earlier) step's sum starts from
            self.keepmem = mem("keep", signed(f.delta.width + 1), H)
        if self._leaky:
            # section 13.9: neuron i's own h_{t-1}[i] beside the REC terms' h_{t-1}[j], from a
            # copy of the state memory written with it (one read port each: Yosys 0.5x's ABC9
            # pass fails an assertion on the ECP5 with a second read port on the block RAM)
            self.hcopy = mem("h_own", f.activation.amaranth_shape(), T * H)
            self.hown = self.hcopy.r

    def _build_lfsr_feedback(self):
        """``storage = "lfsr"``: no table; the PROJ pass visits entry ``m`` of neuron ``i`` as
        draw ``i k + m`` of the layer's LFSR stream, the order in which
        ``dfa_engine.feedback.sparse_feedback`` draws them, so one draw a term regenerates the
        lists. The LFSR sits at its seed whenever the pass is not issuing."""
        from dfa_engine.lfsr import seed_state

        m, fb = self.m, self._cfg.feedback
        seed = seed_state(fb.seed, 0)
        m.submodules.fb_lfsr = self.fb_gen = gen = LFSRDraw(per_cycle=1, reset_state=seed)
        self.fb_issuing = Signal()                      # the PROJ pass issues (set in issue_PROJ)
        m.d.comb += [gen.en.eq(self.fb_issuing), gen.load.eq(~self.fb_issuing), gen.seed.eq(seed)]
        vw = self._cfg.formats.feedback.width
        self.fb_issue_word = Signal(vw + bits_for(self._cfg.classes))   # {index, value} at issue
        # the word reaches stage A with the pass's other reads (address register, read, data)
        word = self.fb_issue_word
        for n in range(READ_LATENCY):
            nxt = Signal.like(word, name=f"fb_word{n}")
            self._late_m.d.sync += nxt.eq(word)
            word = nxt
        self.fb_word = word

    def _issue_lfsr_entry(self, m_index):
        """Entry ``m_index`` of the row whose draws the LFSR presents (``w_0`` kept from its
        first entry), as the ``{index, value}`` word of :meth:`index_value_rom`."""
        cfg, f = self._cfg, self._cfg.formats
        w = self.fb_gen.words[:32]
        w0 = Signal(16, name="fb_w0")
        with self.m.If(self.issuing & (m_index == 0)):
            self.m.d.sync += w0.eq(w[:16])
        base = lfsr_row_base(Mux(m_index == 0, w[:16], w0), cfg.classes)
        ent = lfsr_entry(cfg.feedback, cfg.classes, f.feedback.max_raw, base, w, m_index)
        one = Const(1 << f.feedback.frac_bits, f.feedback.width)
        if cfg.feedback.values == "pm1":
            magnitude = one
        elif cfg.feedback.values == "pow2":
            magnitude = one >> ent["shift"]
        else:
            magnitude = ent["magnitude"]
        value = Signal(signed(f.feedback.width), name="fb_value")
        self.m.d.comb += [value.eq(Mux(ent["sign"], -magnitude, magnitude)), self.fb_issuing.eq(self.issuing),
                          self.fb_issue_word.eq(Cat(value, ent["index"]))]

    def widths(self, plan):
        cfg, f = self._cfg, self._cfg.formats
        a_w = max(f.weight.width, f.delta.width, f.feedback.width) + 1
        sx, sh = self._shifts()
        b_w = max(f.input.width + sx, f.activation.width + sh, f.delta.width, f.error.width, 2) + 1
        acc_w = max(cfg.required_accumulator_bits(0), cfg.required_accumulator_bits(1),
                    f.error.width + f.feedback.width + math.ceil(math.log2(cfg.classes + 1)),
                    a_w + b_w + math.ceil(math.log2(min(cfg.window, cfg.steps) + 1))) + 2
        return a_w, b_w, acc_w

    # ---- forward: the recurrent steps ---------------------------------------------------
    def issue_REC(self, p):
        cfg = self._cfg
        I, H = cfg.inputs, cfg.hidden
        t, i, j = self.c[:3]
        is_x = j < I
        self.m.d.comb += [
            self.w1.r.addr.eq(times_const(i, I + H) + j),
            self.b1.r.addr.eq(i),
            self.xmem.r.addr.eq(times_const(t, I) + j),
            # h_{t-1} (stored at (t-1)*H), for t >= 1; h_0 = 0 is a zero term
            self.hmem.r.addr.eq(times_const(t, H) - H + j - I),
            self.valid.eq(is_x | (t != 0)),
        ]
        if self._leaky:
            self.m.d.comb += self.hown.addr.eq(times_const(t, H) - H + i)

    def stage_REC(self, p):
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        zf = cfg.z_frac
        sx, sh = self._shifts()
        is_x = self.cd[2] < cfg.inputs
        # the x and h terms aligned on the sum's fraction bits by shifting the operand (exact)
        m.d.comb += [self.mul_a.eq(self.w1.r.data),
                     self.mul_b.eq(Mux(is_x, self.xmem.r.data << sx, self.hmem.r.data << sh)),
                     self.init.eq(self.b1.r.data << (zf - f.bias.frac_bits))]

    def _shifts(self):
        """``(s_x, s_h)``: the alignment of the ``W_x x`` and ``W_h h`` terms (section 13.1)."""
        cfg, f = self._cfg, self._cfg.formats
        zf = cfg.z_frac
        return zf - f.weight.frac_bits - f.input.frac_bits, zf - f.weight.frac_bits - f.activation.frac_bits

    def finish_REC(self, p):
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        t, i = self.cf[:2]
        rq = self.rq(self.total, cfg.z_frac, f.activation, cfg.rounding_forward)
        if cfg.activation == "relu":
            h, mask = Mux(rq.o[-1], 0, rq.o), ~rq.o[-1] & rq.o.any()
        else:
            h, mask = hardtanh(rq.o, f.activation.frac_bits)
        out = times_const(t, cfg.hidden) + i
        if self._leaky:
            self._leaky_state_write(h, Mux(t == 0, 0, self.late(self.hown.data)), out)
        else:
            m.d.comb += [self.hmem.w.addr.eq(out), self.hmem.w.data.eq(h), self.hmem.w.en.eq(self.finishing)]
        m.d.comb += [self.maskmem.w.addr.eq(out), self.maskmem.w.data.eq(mask), self.maskmem.w.en.eq(self.finishing)]
        with m.If(self.finishing):
            self.sat(rq.saturated)

    def _leaky_state_write(self, c, prev, addr):
        """13.9 at stage E: ``h_t = h_{t-1} + round((c - h_{t-1}) >> s_i)`` (between ``h_{t-1}``
        and ``c = f(a_t)``: no saturation; ``h_0 = 0``) into the state memory and its copy.
        ``c``, ``h_{t-1}``, ``s_i`` and the address are registered at stage D, so the leak is
        not in the requantizer's cycle; the write lands one cycle later than the Elman cell's,
        which the recurrence's read distance (``I + H >= PIPELINE_DEPTH + 1``) already covers."""
        cfg, f, lm = self._cfg, self._cfg.formats, self._late_m
        fin = self.signal(1, "rec_fin")
        self.m.d.comb += fin.eq(self.finishing)          # only in REC's finishing stage
        en_e = self.signal(1, "rec_fin_e")
        c_e = self.signal(f.activation.amaranth_shape(), "rec_c_e")
        prev_e = self.signal(f.activation.amaranth_shape(), "rec_prev_e")
        s_e = self.signal(range(cfg.leak_max_shift + 1), "rec_s_e")
        addr_e = self.signal(len(self.hmem.w.addr), "rec_addr_e")
        lm.d.sync += [en_e.eq(fin), c_e.eq(c), prev_e.eq(prev), s_e.eq(self._leak_shift(self.cd[1])),
                      addr_e.eq(addr)]
        h = prev_e + self._leak_round(c_e - prev_e, s_e, cfg.rounding_forward, lm)
        for port in (self.hmem, self.hcopy):
            lm.d.comb += [port.w.addr.eq(addr_e), port.w.data.eq(h), port.w.en.eq(en_e)]

    def _leak_shift(self, i):
        """``s_i`` of the neuron whose counter (at stage A) is ``i``, delayed to stage D: a
        constant table (``i mod (S + 1)``), registered with the term."""
        return self.late(lut(self._cfg.leak_shifts, i))

    def _leak_round(self, v, s, mode, module=None):
        """``round(v / 2^s)`` (section 2's ``mode``) for a shift ``s`` of ``0 .. leak_max_shift``:
        one constant shift per value of ``s``, picked by ``s``."""
        v = Value.cast(v).as_signed()
        picks = [v] + [(v >> k) if mode == "trunc" else ((v + (1 << (k - 1))) >> k)
                       for k in range(1, self._cfg.leak_max_shift + 1)]
        out = self.signal(signed(len(v) + 1), "leak")
        (module or self.m).d.comb += out.eq(Array(picks)[s] if len(picks) > 1 else v)
        return out

    # ---- the leaky cell's eligibility trace (section 13.9) -----------------------------------
    def issue_TRACE(self, p):
        H, T = self._cfg.hidden, self._cfg.steps
        i, back = self.c[:2]
        self.m.d.comb += [self.gmem.r.addr.eq(i),
                          self.maskmem.r.addr.eq(times_const(T - 1 - back, H) + i)]       # step T-1-back

    def stage_TRACE(self, p):
        self.m.d.comb += [self.mul_a.eq(0), self.mul_b.eq(0), self.init.eq(0)]

    def finish_TRACE(self, p):
        """``q_T = round(g >> s)``, then each step back ``q -= round(q >> s)`` (a register holds
        the last ``q``: the terms finish one a cycle, in order); ``delta_t = m_t ? q : 0``."""
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        i, back = self.cf[:2]
        s = self._leak_shift(self.cd[0])
        q_prev = self.signal(f.delta.amaranth_shape(), "trace_q")
        q = self.signal(f.delta.amaranth_shape(), "trace_q_now")
        mode = cfg.rounding_backward
        first = self._leak_round(self.late(self.gmem.r.data), s, mode)
        # network.trace = false: alpha g at every step of the window
        m.d.comb += q.eq(Mux(back == 0, first, q_prev - self._leak_round(q_prev, s, mode)) if cfg.trace else first)
        with m.If(self.finishing):
            m.d.sync += q_prev.eq(q)
        m.d.comb += [self.d1mem.w.addr.eq(times_const(self._K - 1 - back, cfg.hidden) + i),
                     self.d1mem.w.data.eq(Mux(self.late(self.maskmem.r.data), q, 0)),
                     self.d1mem.w.en.eq(self.finishing)]

    def _h_last(self, j):
        return times_const(Const(self._cfg.steps - 1), self._cfg.hidden) + j

    def issue_OUT(self, p):
        c, j = self.c[:2]
        self.m.d.comb += [self.w2.r.addr.eq(times_const(c, self._cfg.hidden) + j), self.b2.r.addr.eq(c),
                          self.hmem.r.addr.eq(self._h_last(j))]

    def stage_OUT(self, p):
        f = self._cfg.formats
        self.m.d.comb += [self.mul_a.eq(self.w2.r.data), self.mul_b.eq(self.hmem.r.data),
                          self.init.eq(self.b2.r.data << (self._cfg.y_frac - f.bias.frac_bits))]

    def finish_OUT(self, p):
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        rq = self.rq(self.total, cfg.y_frac, f.activation, cfg.rounding_forward)
        with m.If(self.finishing):
            self.sat(rq.saturated)
            m.d.comb += [self.oe.y_wr.en.eq(1), self.oe.y_wr.group.eq(self.cf[0]), self.oe.y_wr.value[0].eq(rq.o)]

    def issue_PROJ(self, p):
        i, c = self.c[:2]
        cfg = self._cfg
        if cfg.feedback.kind == "sparse" and cfg.feedback.storage == "lfsr":
            self._issue_lfsr_entry(c)
            return
        per_row = cfg.classes if cfg.feedback.kind == "dense" else cfg.feedback.k
        self.m.d.comb += self.brom.r.addr.eq(times_const(i, per_row) + c)

    def stage_PROJ(self, p):
        if self._cfg.feedback.kind == "dense":
            value, index = self.brom.r.data, self.cd[1]
        elif self._cfg.feedback.storage == "lfsr":
            value, index = self.index_value(self.fb_word)
        else:
            value, index = self.index_value(self.brom.r.data)
        self.m.d.comb += [self.mul_a.eq(value), self.mul_b.eq(self.oe.e[index]), self.init.eq(0)]

    def finish_PROJ(self, p):
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        rq = self.rq(self.total, f.error.frac_bits + f.feedback.frac_bits, f.delta, cfg.rounding_backward)
        m.d.comb += [self.gmem.w.addr.eq(self.cf[0]), self.gmem.w.data.eq(rq.o), self.gmem.w.en.eq(self.finishing)]
        with m.If(self.finishing):
            self.sat(rq.saturated)

    # ---- BPTT (section 13.8): the baseline on the same hardware ------------------------------
    def _bptt_finish(self, i, slot, i_stage_a):
        """``delta_t[i] = m_t[i] ? requantize(total) : 0`` into slot ``slot`` (step ``T - K + slot``).
        The leaky cell (13.9): ``g = requantize(total)``, ``delta_t = m_t ? round(g >> s_i) : 0``,
        and the part that goes straight back to ``h_{t-1}``, ``g - round(g >> s_i)``, kept for
        the next step's sum (``i_stage_a``: the neuron counter at stage A, for ``s_i``)."""
        m, cfg, f = self.m, self._cfg, self._cfg.formats
        rq = self.rq(self.total, f.weight.frac_bits + f.delta.frac_bits, f.delta, cfg.rounding_backward)
        mask = self.late(self.maskmem.r.data)
        delta = rq.o
        if self._leaky:
            delta = self._leak_round(rq.o, self._leak_shift(i_stage_a), cfg.rounding_backward)
            m.d.comb += [self.keepmem.w.addr.eq(i), self.keepmem.w.data.eq(rq.o - delta),
                         self.keepmem.w.en.eq(self.finishing)]
        m.d.comb += [self.d1mem.w.addr.eq(times_const(slot, cfg.hidden) + i), self.d1mem.w.data.eq(Mux(mask, delta, 0)),
                     self.d1mem.w.en.eq(self.finishing)]
        with m.If(self.finishing):
            self.sat(rq.saturated)

    def issue_BPTO(self, p):
        cfg = self._cfg
        H, T = cfg.hidden, cfg.steps
        i, c = self.c[:2]
        self.m.d.comb += [self.w2.r.addr.eq(times_const(c, H) + i), self.d2mem.r.addr.eq(c),       # W_2[c, i]
                          self.maskmem.r.addr.eq((T - 1) * H + i)]

    def stage_BPTO(self, p):
        self.m.d.comb += [self.mul_a.eq(self.w2.r.data), self.mul_b.eq(self.d2mem.r.data), self.init.eq(0)]

    def finish_BPTO(self, p):
        self._bptt_finish(self.cf[0], Const(self._K - 1), self.cd[0])

    def _bptt_step(self, s, name):
        """``(t, slot)`` of BPTH's outer step ``s``: step ``T - 2 - s``, slot ``K - 2 - s``."""
        cfg = self._cfg
        t = self.signal(range(cfg.steps), f"{name}_t")
        slot = self.signal(range(self._K), f"{name}_slot")
        self.m.d.comb += [t.eq(cfg.steps - 2 - s), slot.eq(self._K - 2 - s)]
        return t, slot

    def issue_BPTH(self, p):
        cfg = self._cfg
        I, H = cfg.inputs, cfg.hidden
        s, i, k = self.c[:3]
        t, slot = self._bptt_step(s, "bpth")
        self.m.d.comb += [self.w1.r.addr.eq(times_const(k, I + H) + (I + i)),          # W_h[k, i]
                          self.d1mem.r.addr.eq(times_const(slot + 1, H) + k),           # delta_{t+1}[k]
                          self.maskmem.r.addr.eq(times_const(t, H) + i)]
        if self._leaky:
            # (written by the step after this one, H x H cycles earlier; this step's element i
            # overwrites it only at its own finish)
            self.m.d.comb += self.keepmem.r.addr.eq(i)

    def stage_BPTH(self, p):
        # the leaky cell's sum starts from (1 - alpha) g_{t+1}[i], aligned to F_w + F_delta
        init = self.keepmem.r.data << self._cfg.formats.weight.frac_bits if self._leaky else 0
        self.m.d.comb += [self.mul_a.eq(self.w1.r.data), self.mul_b.eq(self.d1mem.r.data), self.init.eq(init)]

    def finish_BPTH(self, p):
        _, slot = self._bptt_step(self.cf[0], "bpth_f")
        self._bptt_finish(self.cf[1], slot, self.cd[1])

    def _update(self, p, in_frac, port, addr, fmt, target, layer):
        """``port[addr] = sat_fmt(port[addr] - sat_target(round(lr * total)))`` (``target``: the
        update format for weights, the bias format for biases; ``addr`` a function of the
        counters), through the base's stages D and E."""
        rq = self.lr_step(layer, self._cfg.formats.delta.frac_bits + in_frac, target)
        self.update_step(p, port, rq.o, rq.saturated, fmt, addr)

    def issue_UPD2(self, p):
        c, j = self.c[:2]
        self.m.d.comb += [self.d2mem.r.addr.eq(c), self.hmem.r.addr.eq(self._h_last(j)),
                          self.w2.r.addr.eq(times_const(c, self._cfg.hidden) + j)]

    def stage_UPD2(self, p):
        self.m.d.comb += [self.mul_a.eq(self.d2mem.r.data), self.mul_b.eq(self.hmem.r.data), self.init.eq(0)]

    def finish_UPD2(self, p):
        f, H = self._cfg.formats, self._cfg.hidden
        self._update(p, f.activation.frac_bits, self.w2, lambda c: times_const(c[0], H) + c[1], f.weight, f.update, 1)

    def issue_UPDB2(self, p):
        self.m.d.comb += [self.d2mem.r.addr.eq(self.c[0]), self.b2.r.addr.eq(self.c[0])]

    def stage_UPDB2(self, p):
        self.m.d.comb += [self.mul_a.eq(self.d2mem.r.data), self.mul_b.eq(1), self.init.eq(0)]

    def finish_UPDB2(self, p):
        f = self._cfg.formats
        self._update(p, 0, self.b2, lambda c: c[0], f.bias, f.bias, 1)

    def _window_step(self, k):
        """The 0-based step of window term ``k``: ``T - K + k``."""
        cfg = self._cfg
        return k + (cfg.steps - min(cfg.window, cfg.steps))

    def issue_UPD1(self, p):
        cfg = self._cfg
        I, H = cfg.inputs, cfg.hidden
        i, j, k = self.c[:3]
        t = self._window_step(k)
        if self._stored_deltas:
            self.m.d.comb += self.d1mem.r.addr.eq(times_const(k, H) + i)
        self.m.d.comb += [
            self.gmem.r.addr.eq(i),
            self.maskmem.r.addr.eq(times_const(t, H) + i),
            self.xmem.r.addr.eq(times_const(t, I) + j),
            self.hmem.r.addr.eq(times_const(t, H) - H + j - I),
            self.w1.r.addr.eq(times_const(i, I + H) + j),
            self.valid.eq((j < I) | (t != 0)),
        ]

    def _delta1(self):
        """``delta_t[i]`` of the window term in flight (stage A): the stored delta (BPTT, the
        leaky cell's trace), or DFA's ``m_t ? g : 0``."""
        if self._stored_deltas:
            return self.d1mem.r.data
        return Mux(self.maskmem.r.data, self.gmem.r.data, 0)

    def stage_UPD1(self, p):
        is_x = self.cd[1] < self._cfg.inputs
        self.m.d.comb += [self.mul_a.eq(self._delta1()),
                          self.mul_b.eq(Mux(is_x, self.xmem.r.data, self.hmem.r.data)), self.init.eq(0)]

    def finish_UPD1(self, p):
        cfg, f = self._cfg, self._cfg.formats
        I, H = cfg.inputs, cfg.hidden
        is_x = self.cf[1] < I
        rq_x = self.lr_step(0, f.delta.frac_bits + f.input.frac_bits, f.update)
        rq_h = self.lr_step(0, f.delta.frac_bits + f.activation.frac_bits, f.update)
        self.update_step(p, self.w1, Mux(is_x, rq_x.o, rq_h.o), Mux(is_x, rq_x.saturated, rq_h.saturated),
                         f.weight, lambda c: times_const(c[0], I + H) + c[1])

    def issue_UPDB1(self, p):
        H = self._cfg.hidden
        i, k = self.c[:2]
        t = self._window_step(k)
        if self._stored_deltas:
            self.m.d.comb += self.d1mem.r.addr.eq(times_const(k, H) + i)
        self.m.d.comb += [self.gmem.r.addr.eq(i), self.maskmem.r.addr.eq(times_const(t, H) + i),
                          self.b1.r.addr.eq(i)]

    def stage_UPDB1(self, p):
        self.m.d.comb += [self.mul_a.eq(self._delta1()), self.mul_b.eq(1),
                          self.init.eq(0)]

    def finish_UPDB1(self, p):
        f = self._cfg.formats
        self._update(p, 0, self.b1, lambda c: c[0], f.bias, f.bias, 0)

