"""The update unit: ``W -= sat_update(round(lr * delta h^T))`` for ``P`` weights a cycle.

``docs/numerics.md`` section 6. Lanes are laid out like the MAC array's (lane ``p`` owns
row ``i0 + p``): each transfer brings one broadcast input ``h_j`` and the ``P`` weights
``W[i0 + p, j]`` read from the banks; out come the ``P`` new weights to write back. The
lane's ``delta`` is held for the whole row group. The same unit updates biases with
``h = 1`` and the bias format (``for_bias=True``).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.fixed import FixedFormat

from .arith import Requantize

__all__ = ["UpdateLanes"]


class UpdateLanes(wiring.Component):
    """Parameters: ``cfg``, ``lanes``, ``layer`` (0-based; picks the input format and the
    learning rate), ``for_bias`` (update biases instead of weights).

    Members
    -------
    i : In(stream.Signature(StructLayout{h, w[P], delta[P], rand[P]?}))
        ``rand`` only with stochastic rounding: one LFSR word per lane.
    o : Out(stream.Signature(StructLayout{w[P], sat_update, sat_weight}))
        Registered; ``sat_update``/``sat_weight`` count the lanes whose ``dW`` / new
        weight were clamped (sites ``dW<l>``/``W<l>``, or ``db<l>``/``b<l>``).
    """

    def __init__(self, cfg: EngineConfig, lanes: int, layer: int, for_bias: bool = False):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"Layer must be 0..{cfg.n_layers - 1}, not {layer!r}")
        self._cfg, self._lanes, self._layer, self._for_bias = cfg, lanes, layer, for_bias
        f = cfg.formats
        self._x_fmt = FixedFormat(False, 1, 0) if for_bias else cfg.in_format(layer)
        self._w_fmt = f.bias if for_bias else f.weight
        fields = {
            "h": self._x_fmt.amaranth_shape() if not for_bias else 1,
            "w": data.ArrayLayout(self._w_fmt.amaranth_shape(), lanes),
            "delta": data.ArrayLayout(f.delta.amaranth_shape(), lanes),
        }
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
        if cfg.lr_multiplier is None:
            lr_raw, lr_frac, lr_width = 1, cfg.lr_shift[self._layer], 1
        else:
            lr_raw = int(f.learning_rate.from_float(cfg.lr_multiplier))
            lr_frac, lr_width = f.learning_rate.frac_bits, f.learning_rate.width
        x_fmt, w_fmt = self._x_fmt, self._w_fmt
        # dW is in the weight's (or bias's) fraction bits and clamped to the update
        # format's range (for biases: the bias format).
        d_fmt = w_fmt if self._for_bias else f.update
        prod_frac = f.delta.frac_bits + lr_frac + x_fmt.frac_bits
        prod_width = f.delta.width + x_fmt.width + lr_width + 2
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        sat_u, sat_w = [], []
        fire = self.i.valid & self.i.ready
        for p in range(self._lanes):
            prod = Signal(signed(prod_width), name=f"prod{p}")
            m.d.comb += prod.eq(self.i.payload.delta[p] * self.i.payload.h * lr_raw)
            rq = Requantize(prod_width, prod_frac, d_fmt, cfg.rounding_update)
            m.submodules[f"requant{p}"] = rq
            m.d.comb += rq.i.eq(prod)
            if cfg.rounding_update == "stochastic":
                m.d.comb += rq.rand.eq(self.i.payload.rand[p])
            diff = Signal(signed(w_fmt.width + 2), name=f"diff{p}")
            m.d.comb += diff.eq(self.i.payload.w[p] - rq.o)
            clamped = Signal(w_fmt.amaranth_shape(), name=f"w_new{p}")
            over, under = diff > w_fmt.max_raw, diff < w_fmt.min_raw
            m.d.comb += clamped.eq(Mux(over, w_fmt.max_raw, Mux(under, w_fmt.min_raw, diff)))
            with m.If(fire):
                m.d.sync += self.o.payload.w[p].eq(clamped)
            sat_u.append(rq.saturated)
            sat_w.append(over | under)
        for name, bits in (("sat_update", sat_u), ("sat_weight", sat_w)):
            total = bits[0]
            for b in bits[1:]:
                total = total + b
            with m.If(fire):
                m.d.sync += getattr(self.o.payload, name).eq(total)
        with m.If(fire):
            m.d.sync += self.o.valid.eq(1)
        return m
