"""The update unit: ``W -= sat_update(round(lr * delta h^T))`` for ``P`` weights a cycle.

``docs/numerics.md`` section 6. Lanes are laid out like the MAC array's (lane ``p`` owns
row ``i0 + p``): each transfer brings one broadcast input ``h_j`` and the ``P`` weights
``W[i0 + p, j]`` read from the banks; out come the ``P`` new weights to write back. The
lane's ``delta`` is held for the whole row group. The same unit updates biases with
``h = 1`` and the bias format (``for_bias=True``).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.fixed import FixedFormat

from .arith import RegisteredProduct, Requantize, is_ecp5

__all__ = ["UpdateLanes", "UPDATE_LATENCY"]

#: Cycles from an accepted input to its output: the input registers; the product (a DSP
#: with registered inputs and output); the alignment, rounding and saturation of ``dW``;
#: the subtraction and the clamp (in one cycle this chain limited the engine to 19 MHz on
#: the UP5K and 44 MHz on the ECP5; an iCE40 SB_MAC16 without input registers is left out
#: of nextpnr's timing analysis, docs/boards.md).
UPDATE_LATENCY = 4


class UpdateLanes(wiring.Component):
    """Parameters: ``cfg``, ``lanes``, ``layer`` (0-based; picks the input format and the
    learning rate; a tuple of layers makes one unit shared by those layers, selected per
    transfer by the payload field ``layer``, an index into the tuple), ``for_bias`` (update
    biases instead of weights).

    Members
    -------
    i : In(stream.Signature(StructLayout{h?, w[P], delta[P], layer?, rand[P]?}))
        ``h`` only for weights (a bias unit's input is the constant 1).
        ``rand`` only with stochastic rounding: one LFSR word per lane.
    o : Out(stream.Signature(StructLayout{w[P], sat_update, sat_weight}))
        :data:`UPDATE_LATENCY` cycles after the input when ``o.ready`` stays high (the
        whole pipeline stalls while ``o`` waits); ``sat_update``/``sat_weight`` count the
        lanes whose ``dW`` / new weight were clamped (sites ``dW<l>``/``W<l>``, or
        ``db<l>``/``b<l>``).
    """

    def __init__(self, cfg: EngineConfig, lanes: int, layer, for_bias: bool = False):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        shared = not isinstance(layer, int)
        layers = tuple(layer) if shared else (layer,)
        if not layers:
            raise ValueError("Layer list must not be empty")
        for lyr in layers:
            if not isinstance(lyr, int) or not 0 <= lyr < cfg.n_layers:
                raise ValueError(f"Layer must be 0..{cfg.n_layers - 1}, not {lyr!r}")
        self._cfg, self._lanes, self._layers, self._for_bias = cfg, lanes, layers, for_bias
        self._shared = shared
        f = cfg.formats
        self._x_fmts = [FixedFormat(False, 1, 0) if for_bias else cfg.in_format(lyr) for lyr in layers]
        self._w_fmt = f.bias if for_bias else f.weight
        fields = {}
        if not for_bias:
            # one shape that holds every layer's raw input (signed if any is signed); a
            # bias unit has no h port: its input is the constant 1 (a constant driven into
            # a payload bit from outside becomes an `always @*` with no sensitivity in
            # Amaranth's Verilog, which event-driven simulators never run).
            sgn = any(x.signed for x in self._x_fmts)
            width = max(x.width + (1 if sgn and not x.signed else 0) for x in self._x_fmts)
            fields["h"] = signed(width) if sgn else unsigned(width)
        fields["w"] = data.ArrayLayout(self._w_fmt.amaranth_shape(), lanes)
        fields["delta"] = data.ArrayLayout(f.delta.amaranth_shape(), lanes)
        if shared:
            fields["layer"] = range(len(layers))
        if cfg.rounding_update == "stochastic":
            fields["rand"] = data.ArrayLayout(32, lanes)
        count = max(1, lanes.bit_length())
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(fields))),
            "o": Out(stream.Signature(data.StructLayout({
                "w": data.ArrayLayout(self._w_fmt.amaranth_shape(), lanes),
                "sat_update": count, "sat_weight": count}))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, f = self._cfg, self._cfg.formats
        w_fmt = self._w_fmt
        # dW is in the weight's (or bias's) fraction bits and clamped to the update
        # format's range (for biases: the bias format).
        d_fmt = w_fmt if self._for_bias else f.update
        # Per layer: the learning rate (a shift, or one multiplier for all layers) and the
        # fraction bits of the product delta * h * lr.
        if cfg.lr_multiplier is None:
            lr_raw = 1
            lr_fracs = [cfg.lr_shift[lyr] for lyr in self._layers]
        else:
            lr_raw = int(f.learning_rate.from_float(cfg.lr_multiplier))
            lr_fracs = [f.learning_rate.frac_bits] * len(self._layers)
        prod_fracs = [f.delta.frac_bits + lr_frac + x.frac_bits for lr_frac, x in zip(lr_fracs, self._x_fmts)]
        # A unit shared by several layers aligns every layer's product to the largest
        # fraction (a left shift by k, exact) and rounds once: floor((x 2^k + r 2^k) / 2^(s+k))
        # = floor((x + r) / 2^s), so the result equals the per-layer rounding bit for bit.
        frac = max(prod_fracs)
        aligns = [frac - pf for pf in prod_fracs]
        # Stage I registers the input, so that the multiplier's operands come from
        # registers. The operand and product registers have no reset and exactly the
        # operands' and the product's widths: synthesis then moves them into the DSP (an
        # SB_MAC16's registers have no synchronous reset, and yosys ice40_dsp takes a
        # register only if its whole wire has one initial value).
        pin = Signal.like(self.i.payload, name="pin")
        delta_r = [Signal.like(self.i.payload.delta[p], name=f"opnd_delta{p}", reset_less=True)
                   for p in range(self._lanes)]
        # A weight unit aligns the broadcast input, not the P products: one shifter for
        # h in front of the multipliers instead of one layer multiplexer per lane behind
        # them (the same product, bit for bit: (delta h) 2^k = delta (h 2^k)).
        h_aligned = not self._for_bias and max(aligns) > 0
        if self._for_bias:
            h = Const(1, 1)
        elif h_aligned:
            sgn = self.i.payload.h.shape().signed
            width = max(x.width + (1 if sgn and not x.signed else 0) + k for x, k in zip(self._x_fmts, aligns))
            h = Signal(signed(width) if sgn else unsigned(width), name="opnd_h", reset_less=True)
        else:
            h = Signal.like(self.i.payload.h, name="opnd_h", reset_less=True)
        products = [delta_r[p] * h if lr_raw == 1 else delta_r[p] * h * lr_raw for p in range(self._lanes)]
        prod_width = len(products[0])
        # A weight unit with a shift for its learning rate is one product a lane, delta h:
        # its operand and product registers are a RegisteredProduct (on the ECP5 the
        # MULT18X18D's own registers), fed by the input and the aligned h directly.
        if not self._for_bias:
            h_in = Signal.like(h, name="h_in")      # the input's h, aligned for its layer
            if h_aligned:
                with m.Switch(self.i.payload.layer):
                    for li, k in enumerate(aligns):
                        with m.Case(li):
                            m.d.comb += h_in.eq(self.i.payload.h << k)
            else:
                m.d.comb += h_in.eq(self.i.payload.h)
        own_mul = not self._for_bias and lr_raw == 1
        if own_mul:
            dsp = "MULT18X18D" if is_ecp5(platform) and len(h_in) <= 18 and len(delta_r[0]) <= 18 else None
            muls = [RegisteredProduct(delta_r[p].shape(), h_in.shape(), primitive=dsp) for p in range(self._lanes)]
        aligned_width = prod_width + (0 if h_aligned else max(aligns))
        # Four stages that advance together: I holds the input, A the products (and the
        # weights, layer and random words that go with them), B the rounded and saturated
        # dW, then the outputs.
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        i_valid, a_valid, b_valid = Signal(), Signal(), Signal()
        with m.If(advance):
            m.d.sync += [i_valid.eq(self.i.valid), a_valid.eq(i_valid), b_valid.eq(a_valid),
                         self.o.valid.eq(b_valid), pin.eq(self.i.payload)]
            if not own_mul:      # (a bias unit, or a learning-rate multiplier: delta h lr)
                m.d.sync += [d.eq(self.i.payload.delta[p]) for p, d in enumerate(delta_r)]
                if not self._for_bias:
                    m.d.sync += h.eq(h_in)
        sat_u, sat_w = [], []
        fire = advance & b_valid         # the output stage takes stage B's contents
        sel = Signal.like(self.i.payload.layer, name="a_layer") if self._shared else 0
        if self._shared:
            with m.If(advance):
                m.d.sync += sel.eq(pin.layer)
        for p in range(self._lanes):
            w_a = Signal(w_fmt.amaranth_shape(), name=f"w_a{p}")
            with m.If(advance):
                m.d.sync += w_a.eq(pin.w[p])
            if own_mul:
                m.submodules[f"mul{p}"] = muls[p]
                m.d.comb += [muls[p].a.eq(self.i.payload.delta[p]), muls[p].b.eq(h_in), muls[p].en.eq(advance)]
                prod = muls[p].p
            else:
                prod = Signal(products[p].shape(), name=f"prod{p}", reset_less=True)
                with m.If(advance):
                    m.d.sync += prod.eq(products[p])
            aligned = Signal(signed(aligned_width), name=f"aligned{p}")
            rq = Requantize(aligned_width, frac, d_fmt, cfg.rounding_update)
            m.submodules[f"requant{p}"] = rq
            if max(aligns) == 0 or h_aligned:
                m.d.comb += aligned.eq(prod)
            else:
                with m.Switch(sel):
                    for li, k in enumerate(aligns):
                        with m.Case(li):
                            m.d.comb += aligned.eq(prod << k)
            m.d.comb += rq.i.eq(aligned)
            if cfg.rounding_update == "stochastic":
                rand_a = Signal(32, name=f"rand_a{p}")
                with m.If(advance):
                    m.d.sync += rand_a.eq(pin.rand[p])
                shifts = [pf - d_fmt.frac_bits for pf in prod_fracs]
                with m.Switch(sel):
                    for li, (k, s) in enumerate(zip(aligns, shifts)):
                        with m.Case(li):
                            if s > 0:
                                m.d.comb += rq.rand.eq(rand_a[:s] << k)
                            else:
                                m.d.comb += rq.rand.eq(0)
            dw_b = Signal.like(rq.o, name=f"dw_b{p}")
            w_b = Signal.like(w_a, name=f"w_b{p}")
            sat_b = Signal(name=f"sat_b{p}")
            with m.If(advance):
                m.d.sync += [dw_b.eq(rq.o), w_b.eq(w_a), sat_b.eq(rq.saturated)]
            diff = Signal(signed(w_fmt.width + 2), name=f"diff{p}")
            m.d.comb += diff.eq(w_b - dw_b)
            clamped = Signal(w_fmt.amaranth_shape(), name=f"w_new{p}")
            over, under = diff > w_fmt.max_raw, diff < w_fmt.min_raw
            m.d.comb += clamped.eq(Mux(over, w_fmt.max_raw, Mux(under, w_fmt.min_raw, diff)))
            with m.If(fire):
                m.d.sync += self.o.payload.w[p].eq(clamped)
            sat_u.append(sat_b)
            sat_w.append(over | under)
        for name, bits in (("sat_update", sat_u), ("sat_weight", sat_w)):
            total = bits[0]
            for b in bits[1:]:
                total = total + b
            with m.If(fire):
                m.d.sync += getattr(self.o.payload, name).eq(total)
        return m
