"""The CNN training engine: ``docs/numerics.md`` section 12 as a sequence of loop-nest passes.

Every step of the CNN golden model (:class:`dfa_engine.sim.golden_cnn.GoldenCNN`) is a sum of
products over an index space followed by one rounding: the convolution, BP through a conv
or dense layer (its transpose), the sparse dilated DFA projection, the weight and bias
gradients; pooling and the BP routing through pooling are the same loops with a max or a
select instead of the sum. The engine therefore has one datapath, a *pass*: nested counters
(outer loops = the output element, inner loops = the terms of its sum) issue memory reads
(one cycle, block RAM), the next cycle multiplies and accumulates (exactly: the accumulator
is wide enough for every sum, so the order of the terms does not matter, as in the golden
model), and on the last term of each output the pass's own finishing logic rounds,
saturates, applies the activation or the update, and writes the result. The controller runs
the passes of one sample in order:

``LOAD``   the sample stream fills the input buffer (``C*H*W`` transfers);
forward    per layer: ``FWD`` (conv or dense, then activation and mask), ``POOL`` (max with
           its arg-max, or average);
``ERR``    the MLP's output-error unit (:class:`~dfa_engine.hdl.output_error.OutputError`);
backward   ``DOUT`` (``delta_L``), then top-down per hidden layer: ``DFA`` (the dilated
           projection of ``e``, masked) or ``BP`` (the transposed product at the block
           output) and ``ROUTE`` (through the pooling, masked);
update     per layer: ``UPD`` (every weight: its gradient sum, ``W -= sat(round(lr * P))``)
           and ``UPDB`` (every bias);
``RESULT`` one transfer on the result stream.

One multiply-accumulate a cycle (``lanes = 1``): the reference design that the lane-parallel
version must match. The ports are those of the MLP engine (:func:`cnn_engine_signature`), so
the Verilator harness, the host link and the scoreboard serve both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Const, Mux, Signal, signed, unsigned
from amaranth.lib import wiring

from dfa_engine.cnn_config import CNNEngineConfig
from dfa_engine.config import ConfigError

from .arith import hardtanh, times_const
from .engine import stream_ports
from .loopnest import LOOP_COUNTERS, LoopNestEngine, PassPlan, bits_for, flat, lut, schedule_cycles

__all__ = ["CNNEngine", "cnn_engine_signature", "cnn_address_layout", "cnn_host_address", "CNN_COUNTERS",
           "cnn_cycles", "schedule", "network_layers", "check_engine_config"]

#: Read-only counters at ``kind = 2``, by index.
CNN_COUNTERS = LOOP_COUNTERS
_bits = bits_for


# ---- geometry of the network, shared by the engine, its host map and the cycle count ------------

@dataclass
class _Layer:
    """One conv/dense layer as the engine sees it. Dense layers are convs of a ``1 x 1``
    input with ``n`` channels (``in_shape = (n, 1, 1)``, kernel 1)."""
    l: int
    kind: str                 # "conv" | "dense"
    in_shape: tuple           # (C, H, W)
    h_shape: tuple            # (C, H, W) of the activation output (before pooling)
    o_shape: tuple            # (C, H, W) of the block output (after pooling)
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    pool: tuple | None = None  # ("max" | "avg", size)
    method: str | None = None  # "dfa" | "bp" (hidden layers), None (output)

    @property
    def n_weights(self):
        return self.h_shape[0] * (self.in_shape[0] // self.groups) * self.kernel * self.kernel

    @property
    def fan_in(self):
        return (self.in_shape[0] // self.groups) * self.kernel * self.kernel


def _as3(shape):
    return tuple(shape) if len(shape) == 3 else (shape[0], 1, 1)


def network_layers(cfg: CNNEngineConfig) -> list:
    """The conv/dense layers with their shapes and the pooling of their blocks; refuses what
    the engine does not implement, naming the field."""
    shapes = cfg.shapes
    out = []
    for l, i in enumerate(cfg.param_layers):
        spec = cfg.layers[i]
        j, pools = i + 1, []
        while j < len(cfg.layers) and cfg.layers[j].type in ("maxpool", "avgpool", "flatten"):
            if cfg.layers[j].type != "flatten":
                pools.append((j, cfg.layers[j]))
            j += 1
        if len(pools) > 1:
            raise ConfigError(f"network.layers[{pools[1][0]}].type", pools[1][1].type,
                              "is a second pooling layer after one conv layer; the RTL pools once per block")
        pool = None
        if pools:
            p = pools[0][1]
            pool = ("max" if p.type == "maxpool" else "avg", p.size)
        in_shape = _as3(shapes[i])
        h_shape = _as3(shapes[i + 1])
        o_shape = _as3(shapes[j]) if j < len(shapes) else h_shape
        if pool is not None:
            o_shape = _as3(shapes[pools[0][0] + 1])
        if spec.type == "dense":
            n = math.prod(shapes[i])
            out.append(_Layer(l, "dense", (n, 1, 1), h_shape, o_shape, pool=pool,
                              method=spec.method if l < cfg.n_layers - 1 else None))
        else:
            out.append(_Layer(l, "conv", in_shape, h_shape, o_shape, spec.kernel, spec.stride, spec.padding,
                              spec.groups, pool, spec.method if l < cfg.n_layers - 1 else None))
    return out


def check_engine_config(cfg: CNNEngineConfig) -> list:
    """The engine's limits beyond the configuration validator's; returns the layers."""
    for name, mode in (("forward", cfg.rounding_forward), ("backward", cfg.rounding_backward),
                       ("update", cfg.rounding_update)):
        if mode not in ("nearest", "trunc"):
            raise ConfigError(f"rounding.{name}", mode, "is not implemented by the CNN engine (nearest or trunc)")
    if cfg.feedback.storage != "table" and "dfa" in cfg.methods:
        raise ConfigError("feedback.storage", cfg.feedback.storage,
                          "is not implemented by the CNN engine yet: it stores the table (\"table\")")
    return network_layers(cfg)


def cnn_address_layout(cfg: CNNEngineConfig) -> dict:
    """Bit fields of a host address, low to high: index, layer, kind."""
    layers = network_layers(cfg)
    biggest = max(max(L.n_weights, L.h_shape[0]) for L in layers)
    return {"index": _bits(max(biggest, len(CNN_COUNTERS))), "layer": _bits(len(layers)), "kind": 2}


def cnn_host_address(cfg: CNNEngineConfig, kind: str, layer: int = 0, row: int = 0, column: int = 0,
                     counter: str | None = None) -> int:
    """Host address of ``W[layer][row, column]`` (``column`` indexes the flattened
    ``(c_in, ky, kx)`` fan-in), ``b[layer][row]`` or a counter."""
    fields = cnn_address_layout(cfg)
    layers = network_layers(cfg)
    if kind == "counter":
        return (2 << (fields["index"] + fields["layer"])) | CNN_COUNTERS.index(counter)
    code = {"weight": 0, "bias": 1}[kind]
    index = row * layers[layer].fan_in + column if kind == "weight" else row
    return (code << (fields["index"] + fields["layer"])) | (layer << fields["index"]) | index


def cnn_engine_signature(cfg: CNNEngineConfig) -> wiring.Signature:
    """The same four streams as the MLP engine (:func:`~dfa_engine.hdl.engine.stream_ports`)."""
    return stream_ports(cfg, sum(cnn_address_layout(cfg).values()))


# ---- the schedule --------------------------------------------------------------------------------

def schedule(cfg: CNNEngineConfig) -> tuple:
    """(forward passes, backward and update passes) of one sample, in order."""
    layers = network_layers(cfg)
    L = len(layers)
    fwd, bwd = [], []
    for Ly in layers:
        if Ly.kind == "dense":
            fwd.append(PassPlan("FWD", Ly.l, (Ly.h_shape[0],), (Ly.in_shape[0],)))
        else:
            K = Ly.kernel
            fwd.append(PassPlan("FWD", Ly.l, Ly.h_shape, (Ly.in_shape[0] // Ly.groups, K, K)))
        if Ly.pool is not None:
            P = Ly.pool[1]
            fwd.append(PassPlan("POOL", Ly.l, Ly.o_shape, (P, P)))
    bwd.append(PassPlan("DOUT", L - 1, (cfg.n_classes,), (1,)))
    for l in range(L - 2, -1, -1):
        Ly, Up = layers[l], layers[l + 1]
        if Ly.method == "dfa":
            bwd.append(PassPlan("DFA", l, Ly.h_shape, (cfg.feedback.k,)))
        else:
            if Up.kind == "dense":
                bwd.append(PassPlan("BP", l, (Up.in_shape[0],), (Up.h_shape[0],)))
            else:
                bwd.append(PassPlan("BP", l, Up.in_shape, (Up.h_shape[0] // Up.groups, Up.kernel, Up.kernel)))
            bwd.append(PassPlan("ROUTE", l, Ly.h_shape, (1,)))
    for Ly in layers:
        if Ly.kind == "dense":
            bwd.append(PassPlan("UPD", Ly.l, (Ly.h_shape[0], Ly.in_shape[0]), (1,)))
            bwd.append(PassPlan("UPDB", Ly.l, (Ly.h_shape[0],), (1,)))
        else:
            K = Ly.kernel
            bwd.append(PassPlan("UPD", Ly.l, (Ly.h_shape[0], Ly.in_shape[0] // Ly.groups, K, K), Ly.h_shape[1:]))
            bwd.append(PassPlan("UPDB", Ly.l, (Ly.h_shape[0],), Ly.h_shape[1:]))
    return fwd, bwd


def cnn_cycles(cfg: CNNEngineConfig) -> dict:
    """Cycles per training and inference sample by phase: the controller's schedule."""
    fwd, bwd = schedule(cfg)
    return schedule_cycles(fwd, bwd, math.prod(cfg.input_shape), cfg)


# ---- the engine ----------------------------------------------------------------------------------

class CNNEngine(LoopNestEngine):
    """The generated CNN trainer for one :class:`CNNEngineConfig` (see the module's text).

    Members: ``sample``, ``result``, ``host_req``, ``host_resp`` as the MLP engine's
    (:class:`~dfa_engine.hdl.engine.Engine`); the host map is :func:`cnn_address_layout`.
    """

    COUNTERS = CNN_COUNTERS

    def __init__(self, cfg: CNNEngineConfig, params=None, init_parameters: bool = True):
        from dfa_engine.sim.golden_cnn import initial_cnn_parameters

        self._cfg = cfg
        try:
            self._layers = check_engine_config(cfg)
        except ConfigError:
            self._MustUse__silence = True     # refused, never to be elaborated: no "unused" warning
            raise
        self._params = initial_cnn_parameters(cfg) if params is None else params
        self._init_parameters = init_parameters
        self._addr = cnn_address_layout(cfg)
        super().__init__(cnn_engine_signature(cfg))

    def programs(self):
        return schedule(self._cfg)

    def n_inputs(self):
        return math.prod(self._cfg.input_shape)

    def load_port(self):
        return self.xmem[0]

    def delta_out_port(self):
        return self.dmem[-1]

    def parameter_ports(self):
        return [(self.wmem[l], self.bmem[l], Ly.n_weights, Ly.h_shape[0]) for l, Ly in enumerate(self._layers)]

    def build_memories(self):
        cfg, f = self._cfg, self._cfg.formats
        layers, L = self._layers, len(self._layers)
        mem = self.mem
        self.in_fmt = in_fmt = [cfg.in_format(l) for l in range(L)]
        act_shape, delta_shape = f.activation.amaranth_shape(), f.delta.amaranth_shape()
        self.xmem = [mem(f"x{l}", in_fmt[l].amaranth_shape(), math.prod(layers[l].in_shape)) for l in range(L)]
        self.dmem = [mem(f"delta{l}", delta_shape, math.prod(layers[l].h_shape)) for l in range(L)]
        self.hmem, self.maskmem, self.argmem, self.gmem, self.fbrom = {}, {}, {}, {}, {}
        # max pooling: the running maximum and its position (registers), and their next values
        self._pool_regs, self._pool_new = {}, {}
        for l, Ly in enumerate(layers):
            if Ly.pool is not None and Ly.pool[0] == "max":
                arg = unsigned(_bits(Ly.pool[1] ** 2))
                self._pool_regs[l] = (Signal(act_shape, name=f"pool_max{l}"), Signal(arg, name=f"pool_arg{l}"))
                self._pool_new[l] = (Signal(act_shape, name=f"pool_max_next{l}"), Signal(arg, name=f"pool_arg_next{l}"))
        self.wmem, self.bmem = [], []
        for l, Ly in enumerate(layers):
            W, b = self._params[l]
            winit = [int(v) for v in W.reshape(-1)] if self._init_parameters else None
            binit = [int(v) for v in b] if self._init_parameters else None
            self.wmem.append(mem(f"w{l}", f.weight.amaranth_shape(), Ly.n_weights, winit))
            self.bmem.append(mem(f"b{l}", f.bias.amaranth_shape(), Ly.h_shape[0], binit))
            if l == L - 1:
                continue
            n_h = math.prod(Ly.h_shape)
            self.maskmem[l] = mem(f"mask{l}", unsigned(1), n_h)
            if Ly.pool is not None:
                self.hmem[l] = mem(f"h{l}", act_shape, n_h)
                if Ly.pool[0] == "max":
                    self.argmem[l] = mem(f"arg{l}", unsigned(_bits(Ly.pool[1] ** 2)), math.prod(Ly.o_shape))
            if Ly.method == "bp":
                self.gmem[l] = mem(f"g{l}", delta_shape, math.prod(Ly.o_shape))
            else:
                self.fbrom[l] = self._feedback_rom(l, Ly)

    def _feedback_rom(self, l, Ly):
        """The sparse dilated table of layer ``l``: word ``r * k + m`` = ``{index, value}``."""
        from dfa_engine.sim.golden_cnn import dilated_feedback_table, dilated_feedback_values

        cfg, f = self._cfg, self._cfg.formats
        index, sign, shift = dilated_feedback_table(Ly.h_shape[0], cfg.n_classes, cfg.feedback, l)
        value = dilated_feedback_values(sign, shift, f.feedback.frac_bits)
        return self.index_value_rom(f"fb{l}", index, value, cfg.n_classes)

    def widths(self, plan):
        cfg, f = self._cfg, self._cfg.formats

        def mag(fmt):
            return max(-fmt.min_raw, fmt.max_raw)

        in_fmt = self.in_fmt
        a_w = max(f.weight.width, f.delta.width, f.feedback.width, f.activation.width) + 1
        b_w = max(max(x.width for x in in_fmt), f.delta.width, f.error.width, 2) + 1
        bound = 0
        for p in plan:
            n = math.prod(p.inner)
            if p.kind == "FWD":
                acc_frac = cfg.accumulator_frac(p.layer)
                t = mag(f.weight) * mag(in_fmt[p.layer]) * n + (mag(f.bias) << (acc_frac - f.bias.frac_bits))
            elif p.kind == "POOL":
                t = mag(f.activation) * n
            elif p.kind == "DFA":
                t = mag(f.feedback) * mag(f.error) * n
            elif p.kind == "BP":
                t = mag(f.weight) * mag(f.delta) * n
            elif p.kind == "UPD":
                t = mag(f.delta) * mag(in_fmt[p.layer]) * n
            elif p.kind == "UPDB":
                t = mag(f.delta) * n
            else:
                t = 0
            bound = max(bound, t)
        return a_w, b_w, bound.bit_length() + 2

    # ---- forward: conv / dense, activation, mask -------------------------------------------
    def _conv_input(self, Ly, co, ci, oy, ox, ky, kx):
        """Address of input ``x[g*Cig + ci, oy*s + ky - p, ox*s + kx - p]`` and its validity."""
        Ci, H, W = Ly.in_shape
        Co = Ly.h_shape[0]
        cig, cog = Ci // Ly.groups, Co // Ly.groups
        g = lut([q // cog for q in range(Co)], co) if Ly.groups > 1 else Const(0)
        cin = times_const(g, cig) + ci
        iy, ix = self.signal(signed(16), f"iy{Ly.l}"), self.signal(signed(16), f"ix{Ly.l}")
        self.m.d.comb += [iy.eq(times_const(oy, Ly.stride) + ky - Ly.padding),
                          ix.eq(times_const(ox, Ly.stride) + kx - Ly.padding)]
        ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        addr = times_const(cin, H * W) + times_const(iy, W) + ix
        return addr, ok

    def issue_FWD(self, p):
        m, Ly, l = self.m, self._layers[p.layer], p.layer
        c = self.c
        if Ly.kind == "dense":
            co, j = c[0], c[1]
            m.d.comb += [self.xmem[l].r.addr.eq(j), self.wmem[l].r.addr.eq(times_const(co, Ly.in_shape[0]) + j),
                         self.bmem[l].r.addr.eq(co)]
            return
        co, oy, ox, ci, ky, kx = c[:6]
        K = Ly.kernel
        addr, ok = self._conv_input(Ly, co, ci, oy, ox, ky, kx)
        m.d.comb += [self.xmem[l].r.addr.eq(addr), self.valid.eq(ok),
                     self.wmem[l].r.addr.eq(flat([co, ci, ky, kx], (Ly.h_shape[0], Ly.in_shape[0] // Ly.groups, K, K))),
                     self.bmem[l].r.addr.eq(co)]

    def stage_FWD(self, p):
        f, l = self._cfg.formats, p.layer
        acc_frac = self._cfg.accumulator_frac(l)
        self.m.d.comb += [self.mul_a.eq(self.wmem[l].r.data), self.mul_b.eq(self.xmem[l].r.data),
                          self.init.eq(self.bmem[l].r.data << (acc_frac - f.bias.frac_bits))]

    def finish_FWD(self, p):
        m, cfg, f, l = self.m, self._cfg, self._cfg.formats, p.layer
        Ly, L = self._layers[l], len(self._layers)
        rq = self.rq(self.total, cfg.accumulator_frac(l), f.activation, cfg.rounding_forward)
        out = flat(self.cf[:3], Ly.h_shape) if Ly.kind == "conv" else self.cf[0]
        with m.If(self.finishing):
            self.sat(rq.saturated)
            if l == L - 1:
                m.d.comb += [self.oe.y_wr.en.eq(1), self.oe.y_wr.group.eq(self.cf[0]),
                             self.oe.y_wr.value[0].eq(rq.o)]
                return
            if cfg.activation == "relu":
                h, mask = Mux(rq.o[-1], 0, rq.o), ~rq.o[-1] & rq.o.any()
            else:
                h, mask = hardtanh(rq.o, f.activation.frac_bits)
            dest = self.hmem[l] if Ly.pool is not None else self.xmem[l + 1]
            m.d.comb += [dest.w.addr.eq(out), dest.w.data.eq(h), dest.w.en.eq(1),
                         self.maskmem[l].w.addr.eq(out), self.maskmem[l].w.data.eq(mask),
                         self.maskmem[l].w.en.eq(1)]

    def issue_POOL(self, p):
        Ly, c = self._layers[p.layer], self.c
        _, H, W = Ly.h_shape
        P = Ly.pool[1]
        ch, oy, ox, py, px = c[:5]
        addr = times_const(ch, H * W) + times_const(oy, P * W) + times_const(py, W) + times_const(ox, P) + px
        self.m.d.comb += self.hmem[p.layer].r.addr.eq(addr)

    def stage_POOL(self, p):
        m, l = self.m, p.layer
        Ly, cd = self._layers[l], self.cd
        kind, P = Ly.pool
        val = self.hmem[l].r.data
        if kind == "avg":
            m.d.comb += [self.mul_a.eq(val), self.mul_b.eq(1), self.init.eq(0)]
            return
        # the running maximum and its first position, at stage A (one window element a cycle)
        (pmax, parg), (new_max, new_arg) = self._pool_regs[l], self._pool_new[l]
        take = self.first_d | (val > pmax)          # strict: ties keep the first maximum
        m.d.comb += [new_max.eq(Mux(take, val, pmax)), new_arg.eq(Mux(take, times_const(cd[3], P) + cd[4], parg))]
        m.d.sync += [pmax.eq(new_max), parg.eq(new_arg)]

    def finish_POOL(self, p):
        m, cfg, f, l = self.m, self._cfg, self._cfg.formats, p.layer
        Ly = self._layers[l]
        kind, P = Ly.pool
        dest = self.xmem[l + 1]
        out = flat(self.cf[:3], Ly.o_shape)
        m.d.comb += [dest.w.addr.eq(out), dest.w.en.eq(self.finishing)]
        if kind == "avg":
            rq = self.rq(self.total, f.activation.frac_bits + 2 * (P.bit_length() - 1), f.activation,
                         cfg.rounding_forward)
            m.d.comb += dest.w.data.eq(rq.o)
            return
        new_max, new_arg = self._pool_new[l]
        am = self.argmem[l]
        m.d.comb += [dest.w.data.eq(self.late(new_max)), am.w.addr.eq(out), am.w.data.eq(self.late(new_arg)),
                     am.w.en.eq(self.finishing)]

    def issue_DFA(self, p):
        m, Ly, c = self.m, self._layers[p.layer], self.c
        d, k = self.cfg.feedback.d, self.cfg.feedback.k
        ch, y, x, t = c[:4]
        _, H, W = Ly.h_shape
        ym = lut([v % d for v in range(H)], y)
        xm = lut([v % d for v in range(W)], x)
        row = times_const(ch, d * d) + times_const(ym, d) + xm
        m.d.comb += [self.fbrom[p.layer].r.addr.eq(times_const(row, k) + t),
                     self.maskmem[p.layer].r.addr.eq(flat([ch, y, x], Ly.h_shape))]

    def stage_DFA(self, p):
        value, index = self.index_value(self.fbrom[p.layer].r.data)
        self.m.d.comb += [self.mul_a.eq(value), self.mul_b.eq(self.oe.e[index]), self.init.eq(0)]

    def finish_DFA(self, p):
        m, cfg, f, l = self.m, self._cfg, self._cfg.formats, p.layer
        Ly = self._layers[l]
        rq = self.rq(self.total, f.error.frac_bits + f.feedback.frac_bits, f.delta, cfg.rounding_backward)
        dm = self.dmem[l]
        m.d.comb += [dm.w.addr.eq(flat(self.cf[:3], Ly.h_shape)),
                     dm.w.data.eq(Mux(self.late(self.maskmem[l].r.data), rq.o, 0)), dm.w.en.eq(self.finishing)]
        with m.If(self.finishing):
            self.sat(rq.saturated)

    def issue_BP(self, p):
        m, c = self.m, self.c
        Up = self._layers[p.layer + 1]
        w, dm = self.wmem[p.layer + 1], self.dmem[p.layer + 1]
        if Up.kind == "dense":
            j, co = c[0], c[1]
            m.d.comb += [w.r.addr.eq(times_const(co, Up.in_shape[0]) + j), dm.r.addr.eq(co)]
            return
        Ci, H, W = Up.in_shape
        Co, Ho, Wo = Up.h_shape
        K, s, pd, G = Up.kernel, Up.stride, Up.padding, Up.groups
        cig, cog = Ci // G, Co // G
        ci, iy, ix, q, ky, kx = c[:6]
        g = lut([v // cig for v in range(Ci)], ci) if G > 1 else Const(0)
        cim = lut([v % cig for v in range(Ci)], ci) if G > 1 else ci
        co = times_const(g, cog) + q
        oy, oky = self._transposed(iy, ky, pd, s, K, H, Ho, "y")
        ox, okx = self._transposed(ix, kx, pd, s, K, W, Wo, "x")
        m.d.comb += [self.valid.eq(oky & okx),
                     w.r.addr.eq(times_const(co, cig * K * K) + times_const(cim, K * K) + times_const(ky, K) + kx),
                     dm.r.addr.eq(times_const(co, Ho * Wo) + times_const(oy, Wo) + ox)]

    def _transposed(self, i, k, pad, stride, K, size, out_size, axis):
        """``(o, valid)`` with ``o * stride = i + pad - k``: the output position that input
        ``i`` meets through kernel tap ``k``."""
        t = self.signal(signed(16), f"t{axis}")
        self.m.d.comb += t.eq(i + pad - k)
        if stride == 1:
            return t, (t >= 0) & (t < out_size)
        lo = -(K - 1)
        span = range(lo, size + pad)
        ok_tab = [int(v >= 0 and v % stride == 0 and v // stride < out_size) for v in span]
        o_tab = [max(v, 0) // stride for v in span]
        idx = self.signal(range(len(span) + 1), f"ti{axis}")
        self.m.d.comb += idx.eq(t - lo)
        return lut(o_tab, idx), lut(ok_tab, idx)

    def stage_BP(self, p):
        l = p.layer
        self.m.d.comb += [self.mul_a.eq(self.wmem[l + 1].r.data), self.mul_b.eq(self.dmem[l + 1].r.data),
                          self.init.eq(0)]

    def finish_BP(self, p):
        m, cfg, f, l = self.m, self._cfg, self._cfg.formats, p.layer
        Ly, Up = self._layers[l], self._layers[l + 1]
        avg_shift = 2 * (Ly.pool[1].bit_length() - 1) if Ly.pool is not None and Ly.pool[0] == "avg" else 0
        rq = self.rq(self.total, f.weight.frac_bits + f.delta.frac_bits + avg_shift, f.delta, cfg.rounding_backward)
        out = self.cf[0] if Up.kind == "dense" else flat(self.cf[:3], Up.in_shape)
        gm = self.gmem[l]
        m.d.comb += [gm.w.addr.eq(out), gm.w.data.eq(rq.o), gm.w.en.eq(self.finishing)]
        with m.If(self.finishing):
            self.sat(rq.saturated)

    def issue_ROUTE(self, p):
        m, Ly, c = self.m, self._layers[p.layer], self.c
        ch, y, x = c[:3]
        _, H, W = Ly.h_shape
        m.d.comb += self.maskmem[p.layer].r.addr.eq(flat([ch, y, x], Ly.h_shape))
        if Ly.pool is None:
            m.d.comb += self.gmem[p.layer].r.addr.eq(flat([ch, y, x], Ly.h_shape))
            return
        P = Ly.pool[1]
        _, Ho, Wo = Ly.o_shape
        yo = lut([min(v // P, Ho - 1) for v in range(H)], y)
        xo = lut([min(v // P, Wo - 1) for v in range(W)], x)
        addr = times_const(ch, Ho * Wo) + times_const(yo, Wo) + xo
        m.d.comb += self.gmem[p.layer].r.addr.eq(addr)
        if p.layer in self.argmem:
            m.d.comb += self.argmem[p.layer].r.addr.eq(addr)

    def stage_ROUTE(self, p):
        pass

    def finish_ROUTE(self, p):
        m, l = self.m, p.layer
        Ly, cf = self._layers[l], self.cf
        g = self.late(self.gmem[l].r.data)
        take = self.late(self.maskmem[l].r.data)
        if Ly.pool is not None:
            P = Ly.pool[1]
            _, H, W = Ly.h_shape
            _, Ho, Wo = Ly.o_shape
            take = take & (cf[1] < Ho * P) & (cf[2] < Wo * P)
            if Ly.pool[0] == "max":
                pos = times_const(lut([v % P for v in range(H)], cf[1]), P) + lut([v % P for v in range(W)], cf[2])
                take = take & (self.late(self.argmem[l].r.data) == pos)
        dm = self.dmem[l]
        m.d.comb += [dm.w.addr.eq(flat(cf[:3], Ly.h_shape)), dm.w.data.eq(Mux(take, g, 0)), dm.w.en.eq(1)]

    def issue_UPD(self, p):
        m, Ly, c, l = self.m, self._layers[p.layer], self.c, p.layer
        if Ly.kind == "dense":
            co, j = c[0], c[1]
            m.d.comb += [self.dmem[l].r.addr.eq(co), self.xmem[l].r.addr.eq(j),
                         self.wmem[l].r.addr.eq(times_const(co, Ly.in_shape[0]) + j)]
            return
        co, ci, ky, kx, oy, ox = c[:6]
        K = Ly.kernel
        addr, ok = self._conv_input(Ly, co, ci, oy, ox, ky, kx)
        m.d.comb += [self.xmem[l].r.addr.eq(addr), self.valid.eq(ok),
                     self.dmem[l].r.addr.eq(flat([co, oy, ox], Ly.h_shape)),
                     self.wmem[l].r.addr.eq(flat([co, ci, ky, kx], (Ly.h_shape[0], Ly.in_shape[0] // Ly.groups, K, K)))]

    def stage_UPD(self, p):
        l = p.layer
        self.m.d.comb += [self.mul_a.eq(self.dmem[l].r.data), self.mul_b.eq(self.xmem[l].r.data), self.init.eq(0)]

    def finish_UPD(self, p):
        f, l = self._cfg.formats, p.layer
        Ly = self._layers[l]
        rq = self.lr_step(l, f.delta.frac_bits + self.in_fmt[l].frac_bits, f.update)
        K = Ly.kernel
        dims = (Ly.h_shape[:1] + Ly.in_shape[:1] if Ly.kind == "dense"
                else (Ly.h_shape[0], Ly.in_shape[0] // Ly.groups, K, K))
        self.update_step(p, self.wmem[l], rq.o, rq.saturated, f.weight, lambda c: flat(c[:len(dims)], dims))

    def issue_UPDB(self, p):
        m, Ly, c, l = self.m, self._layers[p.layer], self.c, p.layer
        if Ly.kind == "dense":
            m.d.comb += [self.dmem[l].r.addr.eq(c[0]), self.bmem[l].r.addr.eq(c[0])]
            return
        m.d.comb += [self.dmem[l].r.addr.eq(flat(c[:3], Ly.h_shape)), self.bmem[l].r.addr.eq(c[0])]

    def stage_UPDB(self, p):
        l = p.layer
        self.m.d.comb += [self.mul_a.eq(self.dmem[l].r.data), self.mul_b.eq(1), self.init.eq(0)]

    def finish_UPDB(self, p):
        f, l = self._cfg.formats, p.layer
        rq = self.lr_step(l, f.delta.frac_bits, f.bias)
        self.update_step(p, self.bmem[l], rq.o, rq.saturated, f.bias, lambda c: c[0])

