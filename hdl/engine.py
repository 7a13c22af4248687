"""The MLP training engine: memories, datapath units and the controller.

One sample goes through these phases (``docs/architecture.md`` has the picture):

``LOAD``    the sample stream fills the input buffer (``n_0`` transfers);
``FWD``     layer by layer, ``P`` output neurons at a time through the shared MAC array;
``ERR``     the output-error unit forms ``e`` and the prediction;
``DELTA``   ``delta_L`` from ``e``; then every DFA layer's feedback unit at once (``e`` is
            broadcast to all of them); then the BP layers top-down (transposed products);
``UPDATE``  layer by layer, ``P`` weights a cycle, read-modify-write;
``RESULT``  one transfer on the result stream.

Memories are words of ``P`` lanes (lane ``p`` of word ``g * n_in + j`` is
``W[g * P + p, j]``), so ``P`` lanes are fed every cycle from one read port. Vectors
(``h``, masks, deltas) are stored the same way, ``P`` elements a word. No divider:
counters keep (word, lane) pairs.

The host port addresses parameters as ``{kind, layer, group, lane, column}`` bit fields
(``engine_info`` documents the layout); an address outside the map is refused and
counted. Host accesses and samples are served one at a time, only between samples, so
a sample arriving during a weight load waits (backpressure) and nothing is lost.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth.hdl import (Array, Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Module, Mux,
                          ResetSignal, Signal, Value, signed, unsigned)
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.feedback import feedback_matrix, initial_parameters, sparse_feedback
from dfa_engine.lfsr import seed_state

from .arith import LFSRDraw, Requantize, hardtanh, times_const
from .feedback import SparseProjection, entry_layout, lfsr_entry, lfsr_row_base
from .mac import MACArray
from .memory import DelayLine, SinglePortRAM, is_ice40_up, spram_plan
from .output_error import OutputError
from .update import UPDATE_LATENCY, UpdateLanes

__all__ = ["Engine", "address_layout", "host_address", "COUNTERS", "LABEL_BITS", "host_data_width",
           "engine_signature", "stream_ports"]

#: Read-only counters at ``kind = 2``, by index.
COUNTERS = ("samples_trained", "samples_inferred", "rejected_labels", "rejected_addresses",
            "saturation_events", "samples_received", "resets", "aborted_samples", "dropped_outputs")
COUNTER_MAX = 2**32 - 1   # counters saturate here instead of wrapping


def _ceil_div(a, b):
    return -(-a // b)


def _bits(n):
    """Bits to hold 0 .. n - 1 (at least 1)."""
    return max(1, (n - 1).bit_length())


def address_layout(cfg: EngineConfig, lanes: int) -> dict:
    """Bit fields of a host address, low to high: column, lane, group, layer, kind."""
    L = cfg.n_layers
    return {
        "column": _bits(max(cfg.layers[:-1])),
        "lane": _bits(lanes),
        "group": _bits(max(_ceil_div(n, lanes) for n in cfg.layers[1:])),
        "layer": _bits(L),
        "kind": 2,
    }


#: Width of the sample stream's label field.
LABEL_BITS = 16


def host_data_width(cfg: EngineConfig) -> int:
    """Width of the host port's data word: any weight or bias, and the 32-bit counters."""
    return max(32, cfg.formats.weight.width, cfg.formats.bias.width)


def engine_signature(cfg: EngineConfig) -> wiring.Signature:
    """The engine's ports (its four streams), from the engine's side: the one definition
    that the engine, the host link (``boards/link.py``) and the host's frame layouts
    (``dfa_engine/link_format.py``) share."""
    return stream_ports(cfg, sum(address_layout(cfg, cfg.lanes).values()))


def stream_ports(cfg, addr_width: int) -> wiring.Signature:
    """The four streams of every generated engine (MLP, CNN, RNN) for ``cfg``'s formats and
    classes, with a host address of ``addr_width`` bits."""
    f, C = cfg.formats, cfg.n_classes
    data_width = host_data_width(cfg)
    return wiring.Signature({
        "sample": In(stream.Signature(data.StructLayout({
            "data": f.input.amaranth_shape(), "label": LABEL_BITS, "train": 1}))),
        "result": Out(stream.Signature(data.StructLayout({
            "prediction": _bits(C), "e": data.ArrayLayout(f.error.amaranth_shape(), C),
            "trained": 1, "rejected": 1}))),
        "host_req": In(stream.Signature(data.StructLayout({
            "address": addr_width, "write": 1, "data": signed(data_width)}))),
        "host_resp": Out(stream.Signature(data.StructLayout({
            "data": signed(data_width), "error": 1}))),
    })


class Engine(wiring.Component):
    """The generated MLP trainer for one :class:`EngineConfig`.

    Members
    -------
    sample : In(stream)      ``{data, label, train}``; ``n_0`` transfers make one sample.
        ``label`` and ``train`` are read on the first transfer of a sample.
    result : Out(stream)     ``{prediction, e[C], trained, rejected}``, one per sample.
    host_req : In(stream)    ``{address, write, data}``: read or write one parameter or counter.
    host_resp : Out(stream)  ``{data, error}``, one per request.
    """

    def __init__(self, cfg: EngineConfig, params=None, init_parameters: bool = True):
        if cfg.rounding_update == "stochastic":
            raise ValueError("the engine does not implement rounding.update = \"stochastic\" yet")
        self._cfg = cfg
        self._P = cfg.lanes
        self._params = initial_parameters(cfg) if params is None else params
        # Without initial contents the weight memories start at zero and the host loads
        # them (faster Verilator builds for large networks).
        self._init_parameters = init_parameters
        self._addr = address_layout(cfg, self._P)
        self._data_width = host_data_width(cfg)
        super().__init__(engine_signature(cfg))

    @property
    def cfg(self):
        return self._cfg

    # ------------------------------------------------------------------------------
    def elaborate(self, platform):
        """The reset wrapper around the core (``docs/architecture.md``, "Reset").

        ``rst`` is a *request*: it is honoured at once where no accepted work is half done
        (idle, receiving a sample, offering a result or response) and otherwise deferred
        until the sample in flight has been trained, so that a reset never leaves a layer
        half updated and never loses a sample that was accepted whole. While a request is
        pending, the engine accepts nothing and offers nothing. The core's registers then
        reset; memories (weights, biases, feedback) and counters keep their contents.
        """
        m = Module()
        core = Module()
        reset_req = Signal()      # rst now, a deferred request, or the core in reset
        core_safe = Signal()      # the core is at a point where a reset loses nothing
        core_reset = Signal()     # a reset is taken now (the core's registers reset next cycle)
        self._elaborate_core(core, reset_req, core_safe, core_reset, platform)
        m.submodules.core = DomainRenamer("core")(core)
        m.domains.core = cd_core = ClockDomain("core", local=True)
        pending = Signal(reset_less=True)
        # The core's reset comes from a register: it reaches every register of the core, a
        # net too large to follow logic in the same cycle (13.3 ns on an ECP5 at P = 8).
        # While it is applied, reset_req keeps the ports closed, so the extra cycle loses
        # nothing.
        core_rst_q = Signal(reset_less=True)
        rst = ResetSignal("sync")
        m.d.comb += [reset_req.eq(rst | pending | core_rst_q), core_reset.eq((rst | pending) & core_safe),
                     cd_core.clk.eq(ClockSignal("sync")), cd_core.rst.eq(core_rst_q)]
        m.d.sync += [pending.eq((pending | rst) & ~core_reset), core_rst_q.eq(core_reset)]
        return m

    def _elaborate_core(self, m, reset_req, core_safe, core_reset, platform=None):
        cfg, f, P = self._cfg, self._cfg.formats, self._P
        L, C = cfg.n_layers, cfg.n_classes
        n = cfg.layers
        G = [_ceil_div(n[l + 1], P) for l in range(L)]          # row groups per layer
        Win = [_ceil_div(n[l], P) for l in range(L)]            # input words per layer

        # ---- memories ------------------------------------------------------------
        def lane_words(M, width):
            """Memory words of matrix ``M`` (rows = neurons): word ``g * cols + c`` holds
            ``M[g * P + p, c]`` in lane ``p``; rows past the end are zero."""
            M = np.asarray(M).reshape(len(M), -1)
            rows, cols = M.shape
            mask = (1 << width) - 1
            words = []
            for g_ in range(_ceil_div(rows, P)):
                for c in range(cols):
                    word = 0
                    for p in range(min(P, rows - g_ * P)):
                        word |= (int(M[g_ * P + p, c]) & mask) << (p * width)
                    words.append(word)
            return words

        wW, bW = f.weight.width, f.bias.width
        W_mem, b_mem = [], []
        # memory = "spram": single-port weight memories (one read or write a cycle), SPRAM
        # tiles on an iCE40 UP device (hdl/memory.py)
        single_port = cfg.memory == "spram"
        in_spram = spram_plan(cfg) if is_ice40_up(platform) else ()
        W_rd, W_wr = [], []
        for l, (W, b) in enumerate(self._params):
            init = self._init_parameters and l not in in_spram
            words = lane_words(W, wW) if init else []
            if single_port:
                mem = SinglePortRAM(P * wW, G[l] * n[l], init=words, spram=l in in_spram, name=f"W{l + 1}")
                W_rd.append(SimpleNamespace(addr=mem.rd_addr, data=mem.rd_data))
                W_wr.append(SimpleNamespace(addr=mem.wr_addr, data=mem.wr_data, en=mem.wr_en))
            else:
                mem = memory.Memory(shape=unsigned(P * wW), depth=G[l] * n[l], init=words)
                # Whole-word writes only: a host write of one weight is a read-modify-write
                # (HOST, HOST_READ), so the memories need no lane write-enables (Verilator
                # then queues one write, not P).
                W_rd.append(mem.read_port())
                W_wr.append(mem.write_port())
            m.submodules[f"W{l + 1}"] = mem
            W_mem.append(mem)
            bmem = memory.Memory(shape=unsigned(P * bW), depth=G[l], init=lane_words(b, bW) if init else [])
            m.submodules[f"b{l + 1}"] = bmem
            b_mem.append(bmem)

        xw, aw, dw = f.input.width, f.activation.width, f.delta.width
        # Activations are double-buffered (two halves, by sample parity ``cur``): the
        # one-pass schedule updates with sample n's inputs while it runs sample n + 1 forward.
        x_mem = memory.Memory(shape=unsigned(P * xw), depth=2 * Win[0], init=[])
        m.submodules.x = x_mem
        h_mem, mask_mem, delta_mem = [None] * L, [None] * L, [None] * L
        for l in range(L - 1):
            h_mem[l] = memory.Memory(shape=unsigned(P * aw), depth=2 * G[l], init=[])
            mask_mem[l] = memory.Memory(shape=unsigned(P), depth=G[l], init=[])
            m.submodules[f"h{l + 1}"] = h_mem[l]
            m.submodules[f"mask{l + 1}"] = mask_mem[l]
        for l in range(L):
            delta_mem[l] = memory.Memory(shape=unsigned(P * dw), depth=G[l], init=[])
            m.submodules[f"delta{l + 1}"] = delta_mem[l]
        # sparse feedback tables: one word of P x k entries per group
        fb_mem = [None] * L
        sparse = cfg.feedback.kind == "sparse"
        ent_layout = entry_layout(cfg) if ("dfa" in cfg.methods and sparse) else None
        if ent_layout is not None and cfg.feedback.storage == "table":
            ew = ent_layout.size
            k = cfg.feedback.k
            for l in range(L - 1):
                if cfg.methods[l] != "dfa":
                    continue
                sp = sparse_feedback(cfg, l)
                init = []
                for g in range(G[l]):
                    word = 0
                    for p in range(P):
                        i = g * P + p
                        for jj in range(k):
                            if i < n[l + 1]:
                                val = int(sp.index[i, jj]) | (int(sp.sign[i, jj]) << ent_layout["sign"].offset)
                                if cfg.feedback.values == "pow2":
                                    val |= int(sp.shift[i, jj]) << ent_layout["shift"].offset
                                if cfg.feedback.values == "fixed":
                                    val |= int(sp.magnitude[i, jj]) << ent_layout["magnitude"].offset
                            else:
                                val = 0
                            word |= val << ((p * k + jj) * ew)
                    init.append(word)
                fb_mem[l] = memory.Memory(shape=unsigned(P * k * ew), depth=G[l], init=init)
                m.submodules[f"fb{l + 1}"] = fb_mem[l]
        if "dfa" in cfg.methods and not sparse:
            # dense feedback: word (g, c) holds B[g * P + p, c] for the P lanes
            fw = f.feedback.width
            for l in range(L - 1):
                if cfg.methods[l] != "dfa":
                    continue
                fb_mem[l] = memory.Memory(shape=unsigned(P * fw), depth=G[l] * C,
                                          init=lane_words(feedback_matrix(cfg, l), fw))
                m.submodules[f"fb{l + 1}"] = fb_mem[l]

        # ports (every memory: one read port, one write port; users are multiplexed)
        b_rd = [mm.read_port() for mm in b_mem]
        b_wr = [mm.write_port() for mm in b_mem]
        x_rd, x_wr = x_mem.read_port(), x_mem.write_port(granularity=xw)
        x_rd_old = x_mem.read_port()
        h_rd = [None if mm is None else mm.read_port() for mm in h_mem]
        h_rd_old = [None if mm is None else mm.read_port() for mm in h_mem]
        h_wr = [None if mm is None else mm.write_port() for mm in h_mem]
        mask_rd = [None if mm is None else mm.read_port() for mm in mask_mem]
        mask_wr = [None if mm is None else mm.write_port() for mm in mask_mem]
        d_rd = [mm.read_port() for mm in delta_mem]
        d_wr = [mm.write_port(granularity=dw) for mm in delta_mem]
        fb_rd = [None if mm is None else mm.read_port() for mm in fb_mem]

        def lanes_active(group, rows):
            """Per lane: is row ``group * P + p`` one of the ``rows``? Only the last group
            can be partial, so two comparisons of the group number serve all P lanes (a
            comparison per lane was 64 adders and comparators at P = 64)."""
            n_groups, rem = _ceil_div(rows, P), rows - (_ceil_div(rows, P) - 1) * P
            whole, any_ = group < n_groups - 1, group < n_groups
            return [any_ if p < rem else whole for p in range(P)]

        def lanes_of(sig, width, shape):
            return [sig[p * width:(p + 1) * width].as_signed() if shape.signed else sig[p * width:(p + 1) * width]
                    for p in range(P)]

        # ---- datapath units --------------------------------------------------------
        x_shape = signed(max(f.input.width + (0 if f.input.signed else 1), aw))
        acc_width = cfg.accumulator_bits(0)
        max_bias_shift = max(cfg.accumulator_frac(l) - f.bias.frac_bits for l in range(L))
        # The forward sums of every layer are brought to the largest accumulator fraction
        # (an exact left shift, so the rounded results are the per-layer ones; docs/numerics.md).
        # Where the shifted inputs still fit the MAC's operand, the broadcast input is
        # shifted (one shifter) instead of the P sums (a layer multiplexer per lane); the
        # accumulator then holds the aligned sum, fwd_width bits.
        fwd_fracs = [cfg.accumulator_frac(l) for l in range(L)]
        fwd_frac = max(fwd_fracs)
        fwd_width = acc_width + fwd_frac - min(fwd_fracs)
        x_in_widths = [f.input.width + (0 if f.input.signed else 1)] + [aw] * (L - 1)
        align_x = max(w_ + fwd_frac - fr for w_, fr in zip(x_in_widths, fwd_fracs)) <= x_shape.width
        m.submodules.mac = mac = MACArray(lanes=P, x_shape=x_shape, w_shape=f.weight.amaranth_shape(),
                                          acc_width=fwd_width if align_x else acc_width,
                                          bias_shape=signed(bW + max_bias_shift), product_stage=True)
        m.d.comb += mac.o.ready.eq(1)
        m.submodules.oerr = oerr = OutputError(cfg, P)
        # the output error lives in the unit's registers (valid from ERR_WAIT to the next ERR)
        e_regs = Array(oerr.e[c] for c in range(C))
        proj = [None] * L        # sparse: the projection unit
        dmac = [None] * L        # dense: a MAC array of its own, x = e_c broadcast
        is_dfa = [l < L - 1 and cfg.methods[l] == "dfa" for l in range(L)]
        for l in range(L - 1):
            if is_dfa[l] and sparse:
                proj[l] = SparseProjection(cfg, P)
                m.submodules[f"proj{l + 1}"] = proj[l]
                m.d.comb += proj[l].o.ready.eq(1)
            elif is_dfa[l]:
                dmac[l] = MACArray(lanes=P, x_shape=f.error.amaranth_shape(), w_shape=f.feedback.amaranth_shape(),
                                   acc_width=f.error.width + f.feedback.width + _bits(C + 1) + 1,
                                   bias_shape=signed(2))
                m.submodules[f"dense{l + 1}"] = dmac[l]
                m.d.comb += dmac[l].o.ready.eq(1)
        # One weight and one bias update unit, shared by the layers (they update in turn).
        all_layers = tuple(range(L))
        m.submodules.upd = upd = UpdateLanes(cfg, P, all_layers)
        m.submodules.updb = upd_b = UpdateLanes(cfg, P, all_layers, for_bias=True)
        m.d.comb += [upd.o.ready.eq(1), upd_b.o.ready.eq(1)]

        # ---- state -------------------------------------------------------------------
        layer = Signal(range(max(L, 2)))
        g = Signal(range(max(G) + 1))
        # gn[l] = g * n[l], kept beside g (g only ever steps by one or returns to 0), so a
        # weight address g * n[l] + j is one adder from registers: a product there made
        # the weight memories' address a multiplier (an untimed SB_MAC16 on the iCE40)
        gn = [Signal(range(max(G) * n[l] + 1), name=f"gn{l + 1}") for l in range(L)]

        def g_zero():
            return [g.eq(0), *(gn[l].eq(0) for l in range(L))]

        def g_inc():
            return [g.eq(g + 1), *(gn[l].eq(gn[l] + n[l]) for l in range(L))]
        jw = Signal(range(max(Win) + 1))    # input word index
        jl = Signal(range(P + 1))           # input lane index
        j = Signal(range(max(n[:-1]) + 1))  # input element index
        label = Signal(16)
        train = Signal()
        rejected = Signal()
        prediction = Signal(_bits(C))
        # Counters survive a reset (reset_less) and saturate at COUNTER_MAX.
        counters = {name: Signal(32, name=f"count_{name}", reset_less=True) for name in COUNTERS}

        def bump(name, amount=1):
            total = counters[name] + amount
            return counters[name].eq(Mux(total > COUNTER_MAX, COUNTER_MAX, total))
        sat_inc = []  # per-cycle saturation counts of every unit, summed into one counter

        # Stage-2 pipeline registers of the streaming passes (address issued at stage 1,
        # memory data valid at stage 2).
        s2_valid = Signal()
        s2_first = Signal()
        s2_last = Signal()
        s2_lane = Signal(range(P + 1))
        s2_g = Signal.like(g)
        s2_layer = Signal.like(layer)
        s2_use_delta = Signal()     # the update at stage 2 applies the stored deltas
        s2_addr = Signal(range(max(G[l] * n[l] for l in range(L)) + 1))   # = s2_g * n[s2_layer] + s2_j
        m.d.sync += s2_valid.eq(0)
        one_pass = cfg.schedule == "one_pass"
        cur = Signal()        # parity of the activation buffers of the latest sample
        pending = Signal()    # one-pass: the latest trained sample's update is not applied yet
        fused = Signal()      # one-pass: this forward pass also applies the pending update
        upd_par = Signal()    # parity of the activations the update reads
        m.d.comb += upd_par.eq(Mux(fused, ~cur, cur))

        # ---- host request decode --------------------------------------------------
        a = self.host_req.payload.address
        fields, off = {}, 0
        for name, width in self._addr.items():
            fields[name] = a[off:off + width]
            off += width
        req_layer, req_g, req_lane, req_col, req_kind = (fields["layer"], fields["group"], fields["lane"],
                                                         fields["column"], fields["kind"])
        in_range = Signal()
        lay_ok = []
        for l in range(L):
            # Wide enough for any group field value: a row index truncated to this layer's
            # width would alias addresses outside the map onto real rows.
            row = Signal(range((1 << len(req_g)) * P + P), name=f"req_row{l}")
            m.d.comb += row.eq(times_const(req_g, P) + req_lane)
            ok_w = (req_kind == 0) & (req_col < n[l])
            ok_b = (req_kind == 1) & (req_col == 0)
            lay_ok.append((req_layer == l) & (req_lane < P) & (row < n[l + 1]) & (ok_w | ok_b))
        ok_counter = (req_kind == 2) & (a[:off - 2] < len(COUNTERS))  # counter index: all bits below kind
        reduce_or = lay_ok[0]
        for t in lay_ok[1:]:
            reduce_or = reduce_or | t
        m.d.comb += in_range.eq(reduce_or | ok_counter)
        req_data = self.host_req.payload.data
        value_ok = Signal()
        m.d.comb += value_ok.eq(Mux(req_kind == 0, (req_data >= f.weight.min_raw) & (req_data <= f.weight.max_raw),
                                    (req_data >= f.bias.min_raw) & (req_data <= f.bias.max_raw)))
        lat_kind = Signal(2)
        lat_layer = Signal.like(req_layer)
        lat_lane = Signal.like(req_lane)
        lat_counter = Signal(range(len(COUNTERS) + 1))
        lat_write = Signal()                      # HOST_READ completes a host write
        lat_w_addr = Signal(range(max(G[l] * n[l] for l in range(L)) + 1))
        lat_b_addr = Signal.like(g)
        lat_data = Signal(max(wW, bW))
        # The request's checks, latched by HOST and acted on by HOST_ISSUE: the port's
        # decode and the data's range comparison end at a register, not at the memories.
        lat_req_write = Signal()
        lat_accept = Signal()
        host_issue = Signal()                     # the controller is in HOST_ISSUE (a register)
        m.d.sync += host_issue.eq(0)

        # ---- defaults for memory ports ----------------------------------------------
        # Read addresses follow the issuing counters; write enables default off.
        for l in range(L):
            # (HOST_ISSUE reads the request's word: chosen by a register set in HOST, not by
            # a decode of the controller's state, which was an ECP5 build's critical path
            # into the block RAMs' addresses)
            m.d.comb += [W_rd[l].addr.eq(Mux(host_issue, lat_w_addr, gn[l] + j)),
                         b_rd[l].addr.eq(Mux(host_issue, lat_b_addr, g)), d_rd[l].addr.eq(g)]
        m.d.comb += [x_rd.addr.eq(Mux(cur, Win[0] + jw, jw)), x_rd_old.addr.eq(Mux(upd_par, Win[0] + jw, jw))]
        for l in range(L - 1):
            m.d.comb += [h_rd[l].addr.eq(Mux(cur, G[l] + jw, jw)), h_rd_old[l].addr.eq(Mux(upd_par, G[l] + jw, jw)),
                         mask_rd[l].addr.eq(g)]
            if fb_rd[l] is not None:
                m.d.comb += fb_rd[l].addr.eq(g)

        # ---- stage 2 of FWD and UPDATE: select the broadcast input element ----------
        def input_element(lyr, old=False):
            """The broadcast element of layer ``lyr``'s input at stage 2: of the latest
            sample (forward), or from the buffer the update reads (``old``)."""
            if lyr == 0:
                lanes = lanes_of((x_rd_old if old else x_rd).data, xw, f.input.amaranth_shape())
            else:
                lanes = lanes_of((h_rd_old if old else h_rd)[lyr - 1].data, aw, f.activation.amaranth_shape())
            return Array(lanes)[s2_lane]

        x_sel = Signal(x_shape)      # forward input
        x_upd = Signal(x_shape)      # update input
        with m.Switch(s2_layer):
            for l in range(L):
                with m.Case(l):
                    x_shift = fwd_frac - fwd_fracs[l] if align_x else 0
                    m.d.comb += [x_sel.eq(input_element(l) << x_shift), x_upd.eq(input_element(l, old=True))]

        # MAC feed (FWD). Whole memory words are multiplexed by layer and assigned to whole
        # payload fields: per-lane assignments inside a case statement become partial writes
        # of one wide signal in Verilog, which Verilator simulates several times slower.
        fwd_active = Signal()
        w_word = Signal(P * wW)
        d_word = Signal(P * dw)
        b_word = Signal(P * bW)
        m.d.comb += [w_word.eq(Array(W_rd[l].data for l in range(L))[s2_layer]),
                     d_word.eq(Array(d_rd[l].data for l in range(L))[s2_layer]),
                     b_word.eq(Array(b_rd[l].data for l in range(L))[s2_layer])]
        bias_lane_width = len(mac.i.payload.bias[0])

        def aligned_bias(words, lyr):
            """The P biases of a word, aligned to the accumulator of layer ``lyr`` (with
            ``align_x``, to the common fraction of every layer's)."""
            sh = (fwd_frac if align_x else cfg.accumulator_frac(lyr)) - f.bias.frac_bits
            aligned_lanes = []
            for p, lane in enumerate(lanes_of(words, bW, f.bias.amaranth_shape())):
                al = Signal(signed(bias_lane_width), name=f"bias_al{lyr + 1}_{p}")
                m.d.comb += al.eq(lane << sh)
                aligned_lanes.append(al)
            return Cat(*aligned_lanes)

        def delay_regs(src, dst, depth, name):
            """``dst`` = ``src`` ``depth`` cycles ago, in registers that reset (valid and
            write-enable bits, and the tags that follow a unit's pipeline)."""
            for k in range(depth):
                reg = dst if k == depth - 1 else Signal.like(src, name=f"{name}{k}")
                m.d.sync += reg.eq(src)
                src = reg

        def delay_data(srcs, dsts, depth, name):
            """``dsts`` = ``srcs`` ``depth`` cycles ago: data beside a bit of
            :func:`delay_regs`, so in a :class:`DelayLine` (a block RAM where logic cells
            are scarce: single-port weights, the UP5K)."""
            dl = DelayLine(sum(len(v) for v in srcs), depth, in_memory=single_port, name=name)
            m.submodules[name] = dl
            m.d.comb += dl.i.eq(Cat(*srcs))
            pos = 0
            for d in dsts:
                m.d.comb += d.eq(dl.o[pos:pos + len(d)])
                pos += len(d)

        # The MAC stage of the one-pass forward: the MAC multiplies the weights as the update
        # unit leaves them (the pending update applied), UPDATE_LATENCY cycles after stage 2.
        s3_valid, s3_first, s3_last = Signal(), Signal(), Signal()
        s3_g, s3_layer, s3_x = Signal.like(g), Signal.like(layer), Signal(x_shape)
        if one_pass:
            delay_regs(s2_valid & fwd_active, s3_valid, UPDATE_LATENCY, "mac_stage_valid")
            delay_data([s2_first, s2_last, s2_g, s2_layer, x_sel], [s3_first, s3_last, s3_g, s3_layer, s3_x],
                       UPDATE_LATENCY, "mac_stage")
            m.d.comb += [mac.i.payload.w.eq(upd.o.payload.w.as_value()),
                         mac.i.payload.bias.eq(aligned_bias(upd_b.o.payload.w.as_value(), 0) if align_x else
                                               Array(aligned_bias(upd_b.o.payload.w.as_value(), l)
                                                     for l in range(L))[s3_layer]),
                         mac.i.valid.eq(s3_valid), mac.i.payload.x.eq(s3_x),
                         mac.i.payload.first.eq(s3_first), mac.i.payload.last.eq(s3_last)]
        else:
            m.d.comb += [mac.i.payload.w.eq(w_word),
                         mac.i.payload.bias.eq(aligned_bias(b_word, 0) if align_x else
                                               Array(aligned_bias(b_rd[l].data, l) for l in range(L))[s2_layer]),
                         mac.i.valid.eq(s2_valid & fwd_active), mac.i.payload.x.eq(x_sel),
                         mac.i.payload.first.eq(s2_first), mac.i.payload.last.eq(s2_last)]

        # MAC results: requantize, activation, write h/mask or logits
        res_g = Signal.like(g)
        res_layer = Signal.like(layer)
        # One set of P requantizers for every layer: each layer's accumulator is first
        # aligned to the largest fraction (an exact left shift), which leaves the rounded
        # value unchanged (docs/numerics.md: floor((x 2^k + 2^(s+k-1)) / 2^(s+k)) = the
        # per-layer rounding).
        rq = [Requantize(fwd_width, fwd_frac, f.activation, cfg.rounding_forward) for _ in range(P)]
        for p in range(P):
            m.submodules[f"rq_fwd{p}"] = rq[p]
            aligned = Signal(signed(fwd_width), name=f"fwd_aligned{p}")
            if align_x:
                m.d.comb += aligned.eq(mac.o.payload[p])
            else:
                with m.Switch(res_layer):
                    for l in range(L):
                        with m.Case(l):
                            m.d.comb += aligned.eq(mac.o.payload[p] << (fwd_frac - fwd_fracs[l]))
            m.d.comb += rq[p].i.eq(aligned)
        # The requantized results are registered before the activation and the writes (the
        # accumulator's rounding, saturation, activation and write in one cycle ran the
        # UP5K at 20 MHz).
        r_valid = Signal(name="res_valid")
        r_g, r_layer = Signal.like(g, name="res_g_q"), Signal.like(layer, name="res_layer_q")
        r_val = [Signal(f.activation.amaranth_shape(), name=f"res_val{p}") for p in range(P)]
        r_sat = [Signal(name=f"res_sat{p}") for p in range(P)]
        m.d.sync += [r_valid.eq(mac.o.valid), r_g.eq(res_g), r_layer.eq(res_layer)]
        m.d.sync += [r.eq(q.o) for r, q in zip(r_val, rq)] + [r.eq(q.saturated) for r, q in zip(r_sat, rq)]
        for l in range(L):
            active_here = r_valid & (r_layer == l)
            nsat = Signal(range(P + 1), name=f"fwd_sat{l + 1}")
            terms = [r_sat[p] & act for p, act in enumerate(lanes_active(r_g, n[l + 1]))]
            acc_sum = terms[0]
            for t in terms[1:]:
                acc_sum = acc_sum + t
            m.d.comb += nsat.eq(Mux(active_here, acc_sum, 0))
            sat_inc.append(nsat)
            if l < L - 1:
                hv, mv = [], []
                for p in range(P):
                    a_ = r_val[p]
                    if cfg.activation == "relu":
                        hv.append(Mux(a_ > 0, a_, 0))
                        mv.append(a_ > 0)
                    else:
                        h_, m_ = hardtanh(a_, f.activation.frac_bits)
                        hv.append(h_)
                        mv.append(m_)
                m.d.comb += h_wr[l].addr.eq(Mux(cur, G[l] + r_g, r_g))
                hsig = [Signal(f.activation.amaranth_shape(), name=f"hval{l + 1}_{p}") for p in range(P)]
                for p in range(P):
                    m.d.comb += hsig[p].eq(hv[p])
                m.d.comb += [h_wr[l].data.eq(Cat(*hsig)), h_wr[l].en.eq(active_here),
                             mask_wr[l].addr.eq(r_g), mask_wr[l].data.eq(Cat(*mv)), mask_wr[l].en.eq(active_here)]
            else:
                # the logits go straight into the output-error unit, P a cycle
                m.d.comb += [oerr.y_wr.en.eq(active_here), oerr.y_wr.group.eq(r_g)]
                for p in range(P):
                    m.d.comb += oerr.y_wr.value[p].eq(r_val[p])

        # ---- DFA projections: all DFA layers at once -----------------------------------
        # Each DFA layer walks its groups with its own counter; e is broadcast to all.
        dfa_g = [Signal(range(G[l] + 1), name=f"dfa_g{l + 1}") if is_dfa[l] else None for l in range(L)]
        dfa_c = [Signal(range(C + 1), name=f"dfa_c{l + 1}") if is_dfa[l] else None for l in range(L)]
        dfa_s2 = [Signal(name=f"dfa_s2_{l + 1}") if is_dfa[l] else None for l in range(L)]
        dfa_s2g = [Signal.like(g, name=f"dfa_s2g{l + 1}") if is_dfa[l] else None for l in range(L)]
        dfa_out_g = [Signal.like(g, name=f"dfa_outg{l + 1}") if is_dfa[l] else None for l in range(L)]
        dfa_written = [Signal(range(G[l] + 1), name=f"dfa_written{l + 1}") if is_dfa[l] else None
                       for l in range(L)]
        dfa_run = Signal()
        dfa_start = Signal()
        for l in range(L - 1):
            if not is_dfa[l]:
                continue
            m.d.sync += dfa_s2[l].eq(0)
            if sparse:
                pr = proj[l]
                # a serial unit takes a group in C + 1 cycles: while it holds one back, the
                # group stays on its input (the memories read its address again)
                held = dfa_s2[l] & ~pr.i.ready
                issue = dfa_run & (dfa_g[l] < G[l]) & ~held
                rd_group = Mux(held, dfa_s2g[l], dfa_g[l])
                with m.If(dfa_start):
                    m.d.sync += [dfa_g[l].eq(0), dfa_written[l].eq(0)]
                with m.Elif(issue):
                    m.d.sync += [dfa_g[l].eq(dfa_g[l] + 1), dfa_s2[l].eq(1), dfa_s2g[l].eq(dfa_g[l])]
                with m.Elif(held):
                    m.d.sync += dfa_s2[l].eq(1)
                m.d.comb += mask_rd[l].addr.eq(rd_group)
                if cfg.feedback.storage == "table":
                    m.d.comb += fb_rd[l].addr.eq(rd_group)
                    entries = fb_rd[l].data
                else:
                    # Regenerate the entries: P * k draws a group, in the golden model's order.
                    k = cfg.feedback.k
                    gen = LFSRDraw(per_cycle=P * k, reset_state=seed_state(cfg.feedback.seed, l))
                    m.submodules[f"fb_lfsr{l + 1}"] = gen
                    m.d.comb += [gen.load.eq(dfa_start), gen.seed.eq(seed_state(cfg.feedback.seed, l)),
                                 gen.en.eq(issue)]
                    entries = Signal(P * k * ent_layout.size, name=f"fb_gen{l + 1}")
                    fields = []
                    for p in range(P):
                        w0 = gen.words[(p * k) * 32:(p * k) * 32 + 32]
                        base = Signal(_bits(C), name=f"fb_base{l + 1}_{p}")
                        m.d.comb += base.eq(lfsr_row_base(w0, C))
                        for jj in range(k):
                            w = gen.words[(p * k + jj) * 32:(p * k + jj) * 32 + 32]
                            ent = Signal(ent_layout, name=f"fb_ent{l + 1}_{p}_{jj}")
                            for name, value in lfsr_entry(cfg.feedback, C, f.feedback.max_raw, base, w, jj).items():
                                m.d.comb += getattr(ent, name).eq(value)
                            fields.append(ent.as_value())
                    with m.If(issue):
                        m.d.sync += entries.eq(Cat(*fields))
                for c in range(C):
                    m.d.comb += pr.i.payload.e[c].eq(e_regs[c])
                m.d.comb += [pr.i.payload.entries.eq(entries), pr.i.payload.mask.eq(mask_rd[l].data),
                             pr.i.valid.eq(dfa_s2[l])]
                m.d.comb += pr.i.payload.active.eq(Cat(*lanes_active(dfa_s2g[l], n[l + 1])))
                # o.ready is always high: a delta leaves the unit LATENCY cycles after its
                # group went in, and its group number follows it through as many registers
                delay_regs(dfa_s2g[l], dfa_out_g[l], SparseProjection.LATENCY, f"dfa_tag{l + 1}_")
                # (the only writer of this memory: its word and address need no
                # multiplexer, only its enables follow o.valid)
                m.d.comb += [d_wr[l].addr.eq(dfa_out_g[l]), d_wr[l].data.eq(pr.o.payload.delta.as_value())]
                with m.If(pr.o.valid):
                    m.d.comb += d_wr[l].en.eq((1 << P) - 1)
                    m.d.sync += dfa_written[l].eq(dfa_written[l] + 1)
                sat_inc.append(Mux(pr.o.valid, pr.o.payload.saturated, 0))
            else:
                # dense: for each group, C cycles of x = e_c, w = B[group rows, c]
                dm = dmac[l]
                issue = dfa_run & (dfa_g[l] < G[l])
                s2_c = Signal.like(dfa_c[l], name=f"dfa_s2c{l + 1}")
                s2_last_c = Signal(name=f"dfa_s2last{l + 1}")
                with m.If(dfa_start):
                    m.d.sync += [dfa_g[l].eq(0), dfa_c[l].eq(0), dfa_written[l].eq(0)]
                with m.Elif(issue):
                    m.d.sync += [dfa_s2[l].eq(1), dfa_s2g[l].eq(dfa_g[l]), s2_c.eq(dfa_c[l]),
                                 s2_last_c.eq(dfa_c[l] == C - 1)]
                    with m.If(dfa_c[l] == C - 1):
                        m.d.sync += [dfa_c[l].eq(0), dfa_g[l].eq(dfa_g[l] + 1)]
                    with m.Else():
                        m.d.sync += dfa_c[l].eq(dfa_c[l] + 1)
                m.d.comb += [fb_rd[l].addr.eq(times_const(dfa_g[l], C) + dfa_c[l]), mask_rd[l].addr.eq(dfa_g[l])]
                flanes = lanes_of(fb_rd[l].data, f.feedback.width, f.feedback.amaranth_shape())
                m.d.comb += [dm.i.valid.eq(dfa_s2[l]), dm.i.payload.x.eq(e_regs[s2_c]),
                             dm.i.payload.first.eq(s2_c == 0), dm.i.payload.last.eq(s2_last_c)]
                for p in range(P):
                    m.d.comb += [dm.i.payload.w[p].eq(flanes[p]), dm.i.payload.bias[p].eq(0)]
                mask_word = Signal(P, name=f"dfa_mask{l + 1}")
                with m.If(dfa_s2[l] & s2_last_c):
                    m.d.sync += [mask_word.eq(mask_rd[l].data), dfa_out_g[l].eq(dfa_s2g[l])]
                vals, nsat = [], []
                out_active = lanes_active(dfa_out_g[l], n[l + 1])
                for p in range(P):
                    rq = Requantize(len(dm.o.payload[p]), f.error.frac_bits + f.feedback.frac_bits, f.delta,
                                    cfg.rounding_backward)
                    m.submodules[f"rq_dense{l + 1}_{p}"] = rq
                    m.d.comb += rq.i.eq(dm.o.payload[p])
                    active = out_active[p]
                    vals.append(Mux(mask_word[p] & active, rq.o, 0))
                    nsat.append(rq.saturated & active)
                m.d.comb += [d_wr[l].addr.eq(dfa_out_g[l]), d_wr[l].data.eq(Cat(*vals))]
                with m.If(dm.o.valid):
                    m.d.comb += d_wr[l].en.eq((1 << P) - 1)
                    m.d.sync += dfa_written[l].eq(dfa_written[l] + 1)
                tot = nsat[0]
                for t in nsat[1:]:
                    tot = tot + t
                sat_inc.append(Mux(dm.o.valid, tot, 0))
        dfa_done = Const(1)
        for l in range(L - 1):
            if is_dfa[l]:
                dfa_done = dfa_done & (dfa_written[l] == G[l])

        # ---- BP: g_j = sum_k W_{l+1}[k, j] delta_{l+1}[k], lanes reduce over k -------
        # Generated only when a layer uses BP (the P multipliers and the adder tree would
        # otherwise sit idle in every DFA engine, and cost area and simulation time).
        bp_active = Signal()
        bp_w_layer = Signal.like(layer)
        s2_word = Signal.like(jw)
        if any(method == "bp" for method in cfg.methods):
            prod_w = wW + dw
            bp_acc_w = prod_w + _bits(max(n[1:]) * P + 1) + 2
            bp_acc = Signal(signed(bp_acc_w))
            bp_sum = Signal(signed(bp_acc_w))
            with m.Switch(s2_layer):
                for l in range(L - 1):
                    if cfg.methods[l] != "bp":
                        continue
                    with m.Case(l):
                        wl = lanes_of(W_rd[l + 1].data, wW, f.weight.amaranth_shape())
                        dl = lanes_of(d_rd[l + 1].data, dw, f.delta.amaranth_shape())
                        total = wl[0] * dl[0]
                        for p in range(1, P):
                            total = total + wl[p] * dl[p]
                        m.d.comb += bp_sum.eq(total)
            bp_rq = Requantize(bp_acc_w, f.weight.frac_bits + f.delta.frac_bits, f.delta, cfg.rounding_backward)
            m.submodules.bp_rq = bp_rq
            bp_full = Signal(signed(bp_acc_w))
            m.d.comb += [bp_full.eq(Mux(s2_first, 0, bp_acc) + bp_sum), bp_rq.i.eq(bp_full)]
            # result written one stage later (mask read alongside)
            bp_w_valid = Signal()
            bp_w_val = Signal(f.delta.amaranth_shape())
            bp_w_lane = Signal(range(P + 1))
            bp_w_word = Signal.like(jw)
            m.d.sync += bp_w_valid.eq(0)
            with m.If(s2_valid & bp_active):
                m.d.sync += bp_acc.eq(bp_full)
                with m.If(s2_last):
                    m.d.sync += [bp_w_valid.eq(1), bp_w_val.eq(bp_rq.o), bp_w_lane.eq(s2_lane),
                                 bp_w_word.eq(s2_word), bp_w_layer.eq(s2_layer)]
            bp_sat = Signal()
            m.d.comb += bp_sat.eq(s2_valid & bp_active & s2_last & bp_rq.saturated)
            sat_inc.append(bp_sat)
            # the mask word of the BP layer is read at the word being written
            bp_mask_bit = Signal()
            with m.Switch(bp_w_layer):
                for l in range(L - 1):
                    with m.Case(l):
                        m.d.comb += bp_mask_bit.eq(Array(mask_rd[l].data[p] for p in range(P))[bp_w_lane])
            with m.If(bp_w_valid):
                with m.Switch(bp_w_layer):
                    for l in range(L - 1):
                        with m.Case(l):
                            val = Mux(bp_mask_bit, bp_w_val, 0)
                            m.d.comb += [d_wr[l].addr.eq(bp_w_word),
                                         d_wr[l].data.eq(val.as_unsigned()[:dw].replicate(P)),
                                         d_wr[l].en.eq(Array(Const(1 << p, P) for p in range(P))[bp_w_lane])]

        # ---- UPDATE -------------------------------------------------------------------
        upd_active = Signal()
        u, ub = upd, upd_b
        # the update pass, or (one-pass) the forward pass, which applies a pending update
        # (and passes the weights through unchanged, delta = 0, when none is pending)
        sel = s2_valid & (upd_active | (fwd_active if one_pass else 0))
        delta_in = Signal(P * dw)
        # (upd_active | pending) as the word was issued, a register: equal at stage 2 (both
        # change only where no word is in flight) and off the update multiplier's input path
        m.d.comb += delta_in.eq(Mux(s2_use_delta, d_word, 0))
        m.d.comb += [u.i.valid.eq(sel), u.i.payload.h.eq(x_upd), u.i.payload.layer.eq(s2_layer),
                     ub.i.valid.eq(sel & s2_first), ub.i.payload.layer.eq(s2_layer)]
        m.d.comb += [u.i.payload.w.eq(w_word), u.i.payload.delta.eq(delta_in),
                     ub.i.payload.w.eq(b_word), ub.i.payload.delta.eq(delta_in)]
        out_addr = Signal.like(s2_addr, name="upd_addr")
        out_g = Signal.like(g, name="upd_g")
        out_layer = Signal.like(layer, name="upd_layer")
        in_addr = Signal.like(out_addr, name="upd_in_addr")
        in_g = Signal.like(g, name="upd_in_g")
        in_layer = Signal.like(layer, name="upd_in_layer")
        # A word is written back where an update is applied: always in the update pass,
        # in a one-pass forward pass only while an update is pending (otherwise the word
        # would come back unchanged, and single-port weights would stall for nothing).
        # The decision is taken as the word enters the update unit (``upd_active`` and
        # ``pending`` do not change while a word is in flight: every pass drains the unit
        # before the state that changes them) and travels with it, one bit per layer, so
        # a weight memory's write enable (and, single-port, its address multiplexer and
        # the issue stall) comes straight from a register.
        in_we = Signal(L, name="upd_in_we")
        m.d.sync += in_we.eq(0)
        with m.If(sel):
            m.d.sync += [in_g.eq(s2_g), in_layer.eq(s2_layer), in_addr.eq(s2_addr)]
            with m.If(upd_active | pending):
                m.d.sync += in_we.eq(Array(Const(1 << l, L) for l in range(L))[s2_layer])
        out_we = Signal(L, name="upd_we")
        # ... and follow the word through the rest of the update unit's pipeline
        assert UPDATE_LATENCY >= 2
        delay_regs(in_we, out_we, UPDATE_LATENCY - 1, "upd_stage_we")
        delay_data([in_addr, in_g, in_layer], [out_addr, out_g, out_layer], UPDATE_LATENCY - 1, "upd_stage")
        w_write = Signal()
        m.d.comb += w_write.eq(out_we.any())
        # host writes of a weight (in HOST_MERGE): a register per layer, set by HOST_READ
        host_w_we = Signal(L, name="host_w_we")
        host_w_word = Signal(P * wW)            # the word a host request reads (HOST_READ)
        host_b_word = Signal(P * bW)
        host_b_we = Signal(L, name="host_b_we")  # the same for a bias
        m.d.sync += [host_w_we.eq(0), host_b_we.eq(0)]
        # a host write: the word read, with the request's lane replaced. The write ports
        # choose it by the registered enables, not by the controller's state: the state's
        # decode in front of the memories' data was a critical path of the ECP5 build.
        w_merged = Cat(*(Mux(lat_lane == p, lat_data[:wW], host_w_word[p * wW:(p + 1) * wW]) for p in range(P)))
        b_merged = Cat(*(Mux(lat_lane == p, lat_data[:bW], host_b_word[p * bW:(p + 1) * bW]) for p in range(P)))
        # One write word and address for all layers' weight (and bias) memories, chosen by
        # a register (host_w_wr: a host write of any layer): the layers differ only in
        # their enables, so the word multiplexer is not built once per layer.
        host_w_wr, host_b_wr = Signal(name="host_w_wr"), Signal(name="host_b_wr")
        m.d.sync += [host_w_wr.eq(0), host_b_wr.eq(0)]
        w_wr_addr, w_wr_data = Signal.like(out_addr, name="w_wr_addr"), Signal(P * wW, name="w_wr_data")
        b_wr_addr, b_wr_data = Signal.like(g, name="b_wr_addr"), Signal(P * bW, name="b_wr_data")
        m.d.comb += [w_wr_addr.eq(Mux(host_w_wr, lat_w_addr, out_addr)),
                     w_wr_data.eq(Mux(host_w_wr, w_merged, u.o.payload.w.as_value())),
                     b_wr_addr.eq(Mux(host_b_wr, lat_b_addr, out_g)),
                     b_wr_data.eq(Mux(host_b_wr, b_merged, ub.o.payload.w.as_value()))]
        for l in range(L):
            m.d.comb += [W_wr[l].addr.eq(w_wr_addr), W_wr[l].data.eq(w_wr_data),
                         W_wr[l].en.eq(out_we[l] | host_w_we[l]),
                         b_wr[l].addr.eq(b_wr_addr), b_wr[l].data.eq(b_wr_data),
                         b_wr[l].en.eq((ub.o.valid & (out_layer == l)) | host_b_we[l])]
        # saturation of padding lanes cannot happen: their delta is 0, so dW = 0.
        sat_inc.append(Mux(u.o.valid, u.o.payload.sat_update + u.o.payload.sat_weight, 0))
        sat_inc.append(Mux(ub.o.valid, ub.o.payload.sat_update + ub.o.payload.sat_weight, 0))

        # ---- saturation counter -------------------------------------------------------
        # The per-cycle counts are summed by a balanced tree into a register and counted two
        # cycles after (a reset does not drop them: reset_less); one long chain of adders
        # into the 32-bit saturating counter was the engine's critical path.
        e_sat = Signal(16)
        # each unit's count is registered first (the forward count follows a requantizer's
        # comparisons: in one cycle with the tree it was an ECP5 build's critical path)
        terms = []
        for i, t in enumerate([*sat_inc, e_sat]):
            t_q = Signal(len(Value.cast(t)), name=f"sat_term{i}", reset_less=True)
            m.d.sync += t_q.eq(t)
            terms.append(t_q)
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        sat_q = Signal(16, reset_less=True)
        m.d.sync += [sat_q.eq(terms[0]), bump("saturation_events", sat_q)]

        # ---- issuing counters for streaming passes -------------------------------------
        def next_column():
            """j += 1, keeping (jw, jl) = (j // P, j % P) without a divider."""
            m.d.sync += j.eq(j + 1)
            with m.If(jl == P - 1):
                m.d.sync += [jl.eq(0), jw.eq(jw + 1)]
            with m.Else():
                m.d.sync += jl.eq(jl + 1)

        def step_columns(n_in, last_group, done_state):
            """Advance (g, j) over groups x columns; issue stage 2."""
            m.d.sync += [s2_valid.eq(1), s2_first.eq(j == 0), s2_last.eq(j == n_in - 1),
                         s2_lane.eq(jl), s2_g.eq(g), s2_layer.eq(layer), s2_word.eq(jw),
                         s2_addr.eq(Array(gn)[layer] + j), s2_use_delta.eq(upd_active | pending)]
            with m.If(j == n_in - 1):
                m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0)]
                with m.If(g == last_group):
                    m.next = done_state
                with m.Else():
                    m.d.sync += g_inc()
            with m.Else():
                next_column()

        # LOAD is the input memory's only writer: its word and address need no multiplexer
        m.d.comb += [x_wr.addr.eq(Mux(cur, jw, Win[0] + jw)),
                     x_wr.data.eq(self.sample.payload.data.as_unsigned().replicate(P))]
        drain = Signal(range(16))
        # single-port weights: a cycle that writes a word back issues no read
        w_port_busy = w_write if single_port else Const(0, 1)
        label_ok = Signal()
        m.d.comb += label_ok.eq(label < C)

        # two-pass: the deltas lead to the update pass; one-pass: the update is left pending
        # (COMMIT) and applied by the next forward pass, or by a flush (the update pass)
        # before anything could observe the weights (a host request) or a reset.
        after_deltas = "COMMIT" if one_pass else "UPDATE_START"
        if one_pass:
            m.d.comb += fused.eq(fwd_active)
        mac_in_first, mac_in_g, mac_in_layer = ((s3_valid & s3_first, s3_g, s3_layer) if one_pass
                                                else (s2_valid & s2_first, s2_g, s2_layer))
        # the group whose sums the MAC emits next: taken as its first element leaves the
        # MAC's operand and product stages (PRODUCT_STAGES cycles after it entered)
        res_first = Signal(name="res_first")
        res_src_g, res_src_layer = Signal.like(g, name="res_src_g"), Signal.like(layer, name="res_src_layer")
        for src, dst in ((mac_in_first, res_first), (mac_in_g, res_src_g), (mac_in_layer, res_src_layer)):
            delay_regs(src, dst, MACArray.PRODUCT_STAGES, f"{dst.name}_")
        # the last group's results: the MAC's stages, the result register, the write
        fwd_drain_cycles = (4 + MACArray.PRODUCT_STAGES) + (UPDATE_LATENCY if one_pass else 0)
        assert max(fwd_drain_cycles, 2 + UPDATE_LATENCY) < 16      # the drain counter's range

        with m.FSM() as fsm:
            with m.State("IDLE"):
                # nothing is accepted while a reset is requested
                with m.If(pending & (reset_req | self.host_req.valid)):
                    m.next = "UPDATE_START"
                with m.Elif(self.host_req.valid & ~reset_req):
                    m.next = "HOST"
                with m.Elif(self.sample.valid & ~reset_req):
                    m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.sample.ready.eq(~reset_req)
                with m.If(reset_req & pending):
                    # flush the pending update before the reset; the partial sample is lost
                    with m.If(j != 0):
                        m.d.sync += bump("aborted_samples")
                    m.next = "UPDATE_START"
                with m.If(self.sample.valid & self.sample.ready):
                    m.d.comb += x_wr.en.eq(Array(Const(1 << p, P) for p in range(P))[jl])
                    with m.If(j == 0):
                        m.d.sync += [label.eq(self.sample.payload.label), train.eq(self.sample.payload.train)]
                    with m.If(j == n[0] - 1):
                        m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0), *g_zero(), layer.eq(0), cur.eq(~cur),
                                     bump("samples_received")]
                        m.next = "FWD"
                    with m.Else():
                        next_column()
            with m.State("FWD"):
                m.d.comb += fwd_active.eq(1)
                with m.If(~w_port_busy):
                    with m.Switch(layer):
                        for l in range(L):
                            with m.Case(l):
                                step_columns(n[l], G[l] - 1, "FWD_DRAIN")
                with m.If(res_first):
                    m.d.sync += [res_g.eq(res_src_g), res_layer.eq(res_src_layer)]
                m.d.sync += drain.eq(0)
            with m.State("FWD_DRAIN"):
                m.d.comb += fwd_active.eq(1)
                with m.If(res_first):
                    m.d.sync += [res_g.eq(res_src_g), res_layer.eq(res_src_layer)]
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == fwd_drain_cycles):
                    with m.If(layer == L - 1):
                        m.d.sync += pending.eq(0)      # one-pass: applied by this pass
                        m.next = "ERR"
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), *g_zero()]
                        m.next = "FWD"
            with m.State("ERR"):
                m.d.comb += [oerr.i.payload.label.eq(Mux(label_ok, label, 0)), oerr.i.valid.eq(1)]
                with m.If(oerr.i.ready):
                    m.d.sync += rejected.eq(~label_ok)
                    m.next = "ERR_WAIT"
            with m.State("ERR_WAIT"):
                m.d.comb += oerr.o.ready.eq(1)
                with m.If(oerr.o.valid):
                    m.d.sync += [prediction.eq(oerr.o.payload.prediction), *g_zero()]
                    with m.If(train & ~rejected):
                        m.d.comb += e_sat.eq(oerr.o.payload.saturated)
                        m.next = "DELTA_OUT"
                    with m.Else():
                        m.next = "RESULT"
            with m.State("DELTA_OUT"):
                # delta_L = requantize(e), one word of P per cycle
                rqs = [Requantize(f.error.width, f.error.frac_bits, f.delta, cfg.rounding_backward) for _ in range(P)]
                vals_out = []
                nsat = []
                for p, active in enumerate(lanes_active(g, C)):
                    m.submodules[f"rq_dL{p}"] = rqs[p]
                    choices = [e_regs[gg * P + p] if gg * P + p < C else Const(0) for gg in range(G[L - 1])]
                    m.d.comb += rqs[p].i.eq(Array(choices)[g])
                    vals_out.append(rqs[p].o)
                    nsat.append(rqs[p].saturated & active)
                m.d.comb += d_wr[L - 1].en.eq((1 << P) - 1)
                tot = nsat[0]
                for t in nsat[1:]:
                    tot = tot + t
                m.d.comb += e_sat.eq(tot)
                with m.If(g == G[L - 1] - 1):
                    m.d.comb += dfa_start.eq(1)
                    m.next = "DELTA_DFA"
                with m.Else():
                    m.d.sync += g_inc()
            with m.State("DELTA_DFA"):
                m.d.comb += dfa_run.eq(1)
                with m.If(dfa_done):
                    m.d.sync += [layer.eq(L - 2 if L >= 2 else 0), j.eq(0), jw.eq(0), jl.eq(0), *g_zero()]
                    m.next = "DELTA_BP_NEXT"
            with m.State("DELTA_BP_NEXT"):
                # find the next BP layer, top-down
                bp_layers = [l for l in range(L - 1) if cfg.methods[l] == "bp"]
                if bp_layers:
                    with m.Switch(layer):
                        for l in range(L - 1):
                            with m.Case(l):
                                if cfg.methods[l] == "bp":
                                    m.next = "DELTA_BP"
                                elif l == 0:
                                    m.next = after_deltas
                                else:
                                    m.d.sync += layer.eq(l - 1)
                else:
                    m.next = after_deltas
                m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0), *g_zero(), drain.eq(0)]
            with m.State("DELTA_BP"):
                # issue: column j of layer `layer` (= row j of W_{layer+1}^T), groups g of layer+1
                m.d.comb += bp_active.eq(1)
                with m.Switch(layer):
                    for l in range(L - 1):
                        with m.Case(l):
                            if cfg.methods[l] != "bp":
                                continue
                            # W_{l+1} read at (g, j); delta_{l+1} word g; mask_l word of j
                            m.d.comb += [W_rd[l + 1].addr.eq(gn[l + 1] + j), d_rd[l + 1].addr.eq(g),
                                         mask_rd[l].addr.eq(s2_word)]
                            m.d.sync += [s2_valid.eq(1), s2_first.eq(g == 0), s2_last.eq(g == G[l + 1] - 1),
                                         s2_lane.eq(jl), s2_layer.eq(l), s2_word.eq(jw)]
                            with m.If(g == G[l + 1] - 1):
                                m.d.sync += g_zero()
                                with m.If(j == n[l + 1] - 1):
                                    m.next = "DELTA_BP_DRAIN"
                                with m.Else():
                                    next_column()
                            with m.Else():
                                m.d.sync += g_inc()
                m.d.sync += drain.eq(0)
            with m.State("DELTA_BP_DRAIN"):
                m.d.comb += bp_active.eq(1)
                with m.Switch(bp_w_layer):
                    for l in range(L - 1):
                        with m.Case(l):
                            m.d.comb += mask_rd[l].addr.eq(s2_word)
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == 3):
                    with m.If(layer == 0):
                        m.next = after_deltas
                    with m.Else():
                        m.d.sync += layer.eq(layer - 1)
                        m.next = "DELTA_BP_NEXT"
            with m.State("UPDATE_START"):
                m.d.sync += [layer.eq(0), *g_zero(), j.eq(0), jw.eq(0), jl.eq(0)]
                m.next = "UPDATE"
            with m.State("UPDATE"):
                m.d.comb += upd_active.eq(1)
                with m.If(~w_port_busy):
                    with m.Switch(layer):
                        for l in range(L):
                            with m.Case(l):
                                step_columns(n[l], G[l] - 1, "UPDATE_DRAIN")
                m.d.sync += drain.eq(0)
            with m.State("UPDATE_DRAIN"):
                m.d.comb += upd_active.eq(1)
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == 2 + UPDATE_LATENCY):
                    with m.If(layer == L - 1):
                        if one_pass:                    # a flush
                            m.d.sync += pending.eq(0)
                            m.next = "IDLE"
                        else:
                            m.d.sync += bump("samples_trained")
                            m.next = "RESULT"
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), *g_zero()]
                        m.next = "UPDATE"
            with m.State("COMMIT"):
                # one-pass: the sample is trained; its update is applied before anything
                # can read or use the weights
                m.d.sync += [pending.eq(1), bump("samples_trained")]
                m.next = "RESULT"
            with m.State("RESULT"):
                if one_pass:
                    with m.If(reset_req & pending):
                        m.d.sync += bump("dropped_outputs")
                        m.next = "UPDATE_START"
                m.d.comb += [self.result.valid.eq(~reset_req), self.result.payload.prediction.eq(prediction),
                             self.result.payload.trained.eq(train & ~rejected),
                             self.result.payload.rejected.eq(rejected)]
                for c in range(C):
                    m.d.comb += self.result.payload.e[c].eq(e_regs[c])
                with m.If(self.result.valid & self.result.ready):
                    with m.If(rejected):
                        m.d.sync += bump("rejected_labels")
                    with m.If(~train):
                        m.d.sync += bump("samples_inferred")
                    m.next = "IDLE"
            with m.State("HOST"):
                m.d.comb += self.host_req.ready.eq(1)
                m.d.sync += [lat_kind.eq(req_kind), lat_layer.eq(req_layer), lat_lane.eq(req_lane),
                             lat_counter.eq(a[:off - 2]), lat_write.eq(0), lat_data.eq(req_data),
                             lat_w_addr.eq(Array(times_const(req_g, n[l]) for l in range(L))[req_layer] + req_col),
                             lat_b_addr.eq(req_g), lat_req_write.eq(self.host_req.payload.write),
                             lat_accept.eq(in_range & ~(self.host_req.payload.write & ((req_kind == 2) | ~value_ok))),
                             host_issue.eq(1)]
                m.next = "HOST_ISSUE"
            with m.State("HOST_ISSUE"):
                # acts on the checks HOST latched and drives the read addresses from the
                # latched request (the port's decode, the data's range check and the memory
                # address in one cycle were the UP5K build's critical path); the word appears
                # next cycle (HOST_READ) and is registered; HOST_MERGE picks the lane and, for
                # a write, merges the new value into it and writes the whole word back
                with m.If(~lat_accept):
                    m.d.sync += [bump("rejected_addresses"),
                                 self.host_resp.payload.error.eq(1), self.host_resp.payload.data.eq(0)]
                    m.next = "HOST_RESP"
                with m.Else():
                    m.d.sync += [self.host_resp.payload.error.eq(0), s2_layer.eq(lat_layer),
                                 lat_write.eq(lat_req_write & (lat_kind != 2))]
                    m.next = "HOST_READ"
            with m.State("HOST_READ"):
                # the words land in registers first: a block RAM's output is slow (5.8 ns
                # on the ECP5 without its output register), too slow to drive the lane
                # multiplexer and the response in the same cycle
                # (w_word and b_word: the streaming passes' layer multiplexers, which
                # HOST_ISSUE pointed at the request's layer)
                m.d.sync += [host_w_word.eq(w_word), host_b_word.eq(b_word),
                             host_w_wr.eq(lat_write & (lat_kind == 0)), host_b_wr.eq(lat_write & (lat_kind == 1))]
                with m.Switch(lat_layer):
                    for l in range(L):
                        with m.Case(l):
                            m.d.sync += [host_w_we[l].eq(lat_write & (lat_kind == 0)),
                                         host_b_we[l].eq(lat_write & (lat_kind == 1))]
                m.next = "HOST_MERGE"
            with m.State("HOST_MERGE"):
                value = Signal(signed(self._data_width))
                with m.Switch(lat_kind):
                    with m.Case(0):
                        m.d.comb += value.eq(Array(lanes_of(host_w_word, wW, f.weight.amaranth_shape()))[lat_lane])
                    with m.Case(1):
                        m.d.comb += value.eq(Array(lanes_of(host_b_word, bW, f.bias.amaranth_shape()))[lat_lane])
                    with m.Case(2):
                        m.d.comb += value.eq(Array(counters[name] for name in COUNTERS)[lat_counter])
                m.d.sync += self.host_resp.payload.data.eq(value)
                # a write lands now: host_w_we / host_b_we, set by HOST_READ
                m.next = "HOST_RESP"
            with m.State("HOST_RESP"):
                m.d.comb += self.host_resp.valid.eq(~reset_req)
                with m.If(self.host_resp.valid & self.host_resp.ready):
                    m.next = "IDLE"

        # DELTA_OUT is the output layer's delta memory's only writer (its word: the
        # requantized output error of group g)
        m.d.comb += [d_wr[L - 1].addr.eq(g), d_wr[L - 1].data.eq(Cat(*vals_out))]

        # ---- reset bookkeeping --------------------------------------------------------
        m.d.comb += core_safe.eq(((fsm.ongoing("IDLE") | fsm.ongoing("LOAD") | fsm.ongoing("RESULT")) & ~pending) |
                                 ((fsm.ongoing("HOST_READ") | fsm.ongoing("HOST_MERGE")) & ~lat_write) |
                                 fsm.ongoing("HOST_RESP"))
        # A reset is counted in the cycle it is taken; the core's registers reset at the end
        # of the next (the wrapper's register), so a request held longer counts once.
        # The counts land a cycle later, from registers (reset_less: they outlive the reset
        # they count): the reset's decode in front of the counters' enables was a critical
        # path of the ECP5 build.
        in_reset = Signal(reset_less=True)
        m.d.sync += in_reset.eq(core_reset)
        taken = core_reset & ~in_reset
        taken_q, aborted_q, dropped_q = (Signal(reset_less=True, name=n_)
                                         for n_ in ("reset_taken", "reset_aborts", "reset_drops"))
        m.d.sync += [taken_q.eq(taken),
                     aborted_q.eq(taken & fsm.ongoing("LOAD") & (j != 0)),     # a partial sample, discarded
                     dropped_q.eq(taken & (fsm.ongoing("RESULT") | fsm.ongoing("HOST_READ") |
                                           fsm.ongoing("HOST_MERGE") | fsm.ongoing("HOST_RESP")))]   # never offered
        with m.If(taken_q):
            m.d.sync += bump("resets")
        with m.If(aborted_q):
            m.d.sync += bump("aborted_samples")
        with m.If(dropped_q):
            m.d.sync += bump("dropped_outputs")


def host_address(cfg: EngineConfig, kind: str, layer: int = 0, row: int = 0, column: int = 0,
                 counter: str | None = None) -> int:
    """The host-port address of a weight (``kind="weight"``), a bias (``"bias"``) or a
    counter (``"counter"``, by name from :data:`COUNTERS`). No range check: the engine
    refuses and counts addresses outside its map, and tests rely on being able to send them."""
    fields = address_layout(cfg, cfg.lanes)
    if kind == "counter":
        index = COUNTERS.index(counter)
        width = sum(fields.values()) - fields["kind"]
        return (2 << width) | index
    else:
        kind_code = {"weight": 0, "bias": 1}[kind]
        value = {"column": column, "lane": row % cfg.lanes, "group": row // cfg.lanes, "layer": layer}
    value["kind"] = kind_code
    addr, off = 0, 0
    for name, width in fields.items():
        v = value.get(name, 0)
        addr |= (v & ((1 << width) - 1)) << off
        off += width
    return addr
