"""The DFA feedback unit: ``delta_l = mask ? requantize(B_l e) : 0`` for ``P`` neurons a cycle.

``docs/numerics.md`` section 5. The output error ``e`` is held and broadcast to every
hidden layer's unit at once (parallel error broadcast); each unit walks its neurons ``P``
at a time. Sparse feedback entries (index, sign, shift[, magnitude]) come with each
transfer, from a stored table or from an LFSR regenerating them (``storage = "lfsr"``).
With the value sets ``pm1`` and ``pow2`` a term is ``+-(e[index] << (F_fb - shift))``:
a multiplexer, a shifter and a negation, no multiplier. ``fixed`` values multiply by a
small magnitude.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig

from .arith import Requantize

__all__ = ["SparseProjection", "entry_layout"]


def entry_layout(cfg: EngineConfig) -> data.StructLayout:
    """One stored sparse feedback entry."""
    C, fb = cfg.n_classes, cfg.feedback
    fields = {"index": max(1, (C - 1).bit_length()), "sign": 1}
    if fb.values == "pow2":
        fields["shift"] = max(1, fb.max_shift.bit_length())
    if fb.values == "fixed":
        fields["magnitude"] = cfg.formats.feedback.width - 1
    return data.StructLayout(fields)


class SparseProjection(wiring.Component):
    """``P`` neurons per transfer of sparse DFA projection, requantization and masking.

    Members
    -------
    i : In(stream.Signature(StructLayout{e[C], entries[P][k], mask[P], active[P]}))
        ``mask``: the derivative mask; ``active``: lanes that hold a real neuron (the last
        group of a layer may be partial); inactive lanes give 0 and count no saturation.
    o : Out(stream.Signature(StructLayout{delta[P], saturated}))
        One output transfer per input transfer (registered, one cycle of latency).
    """

    def __init__(self, cfg: EngineConfig, lanes: int):
        if cfg.feedback.kind != "sparse":
            raise ValueError(f"SparseProjection needs sparse feedback, not {cfg.feedback.kind!r}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        self._cfg, self._lanes = cfg, lanes
        f, k, C = cfg.formats, cfg.feedback.k, cfg.n_classes
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "e": data.ArrayLayout(f.error.amaranth_shape(), C),
                "entries": data.ArrayLayout(data.ArrayLayout(entry_layout(cfg), k), lanes),
                "mask": lanes,
                "active": lanes}))),
            "o": Out(stream.Signature(data.StructLayout({
                "delta": data.ArrayLayout(f.delta.amaranth_shape(), lanes),
                "saturated": max(1, lanes.bit_length())}))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, f = self._cfg, self._cfg.formats
        k, fb = cfg.feedback.k, cfg.feedback
        ffb = f.feedback.frac_bits
        # +-1 values: the sum of +-e is exact at the error's fraction bits, and requantizing
        # it from there is the same value as from fe + ffb bits (the ffb extra bits are
        # zero), without a rounding adder when the delta keeps the error's fraction
        # (stochastic rounding draws its bits by the dropped width, so it keeps the wide sum)
        narrow = fb.values == "pm1" and cfg.rounding_backward != "stochastic"
        g_frac = f.error.frac_bits + (0 if narrow else ffb)
        g_width = f.error.width + (0 if narrow else f.feedback.width) + k.bit_length() + 1
        e = Array(self.i.payload.e[c] for c in range(cfg.n_classes))
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        saturated = []
        for p in range(self._lanes):
            terms = []
            for j in range(k):
                ent = self.i.payload.entries[p][j]
                sel = Signal(f.error.amaranth_shape(), name=f"e_sel{p}_{j}")
                m.d.comb += sel.eq(e[ent.index])
                mag = Signal(signed(g_width), name=f"term{p}_{j}")
                if fb.values == "pm1":
                    m.d.comb += mag.eq(sel if narrow else sel << ffb)
                elif fb.values == "pow2":
                    m.d.comb += mag.eq((sel << ffb) >> ent.shift)
                else:
                    m.d.comb += mag.eq(sel * ent.magnitude)
                term = Signal(signed(g_width), name=f"signed_term{p}_{j}")
                m.d.comb += term.eq(Mux(ent.sign, -mag, mag))
                terms.append(term)
            g = Signal(signed(g_width), name=f"g{p}")
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            m.d.comb += g.eq(total)
            rq = Requantize(g_width, g_frac, f.delta, cfg.rounding_backward)
            m.submodules[f"requant{p}"] = rq
            m.d.comb += rq.i.eq(g)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += self.o.payload.delta[p].eq(Mux(self.i.payload.mask[p] & self.i.payload.active[p], rq.o, 0))
            saturated.append(rq.saturated & self.i.payload.active[p])
        count = Signal.like(self.o.payload.saturated)
        total = saturated[0]
        for s in saturated[1:]:
            total = total + s
        m.d.comb += count.eq(total)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.saturated.eq(count)]
        return m
