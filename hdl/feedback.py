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

from amaranth.hdl import Array, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig

from .arith import Requantize, times_const

__all__ = ["SparseProjection", "entry_layout", "lfsr_entry", "lfsr_row_base"]


def entry_layout(cfg: EngineConfig) -> data.StructLayout:
    """One stored sparse feedback entry."""
    C, fb = cfg.n_classes, cfg.feedback
    fields = {"index": max(1, (C - 1).bit_length()), "sign": 1}
    if fb.values == "pow2":
        fields["shift"] = max(1, fb.max_shift.bit_length())
    if fb.values == "fixed":
        fields["magnitude"] = cfg.formats.feedback.width - 1
    return data.StructLayout(fields)


def lfsr_row_base(w0, n_classes: int):
    """The first class index of a row, ``((w_0 & 0xFFFF) * C) >> 16``, from its first draw
    (``dfa_engine.feedback.sparse_feedback``); formed once per row, shared by its entries."""
    return times_const(w0[:16], n_classes) >> 16


def lfsr_entry(fb, n_classes: int, max_raw: int, base, word, m):
    """Entry ``m`` of a row regenerated from its LFSR draws, as ``dfa_engine.feedback.
    sparse_feedback`` defines it: ``base`` from :func:`lfsr_row_base`, ``word`` the row's draw
    ``w_m``; ``m`` an int or a value below ``C``. Returns a dict of expressions for the fields
    of :func:`entry_layout` (``index``, ``sign`` and, by ``fb.values``, ``shift`` or
    ``magnitude``); no divider, constant multipliers only."""
    C = n_classes
    fields = {"index": Mux(base + m >= C, base + m - C, base + m), "sign": word[16]}
    if fb.values == "pow2":
        fields["shift"] = times_const(word[17:32], fb.max_shift + 1) >> 15
    if fb.values == "fixed":
        fields["magnitude"] = 1 + (times_const(word[17:32], max_raw) >> 15)
    return fields


class SparseProjection(wiring.Component):
    """``P`` neurons per transfer of sparse DFA projection, requantization and masking.

    Members
    -------
    i : In(stream.Signature(StructLayout{e[C], entries[P][k], mask[P], active[P]}))
        ``mask``: the derivative mask; ``active``: lanes that hold a real neuron (the last
        group of a layer may be partial); inactive lanes give 0 and count no saturation.
    o : Out(stream.Signature(StructLayout{delta[P], saturated}))
        One output transfer per input transfer, :data:`LATENCY` cycles later when ``o``
        is not stalled.

    Two stages that advance together (a stall of ``o`` holds both): the first forms the
    exact sum ``g`` (class multiplexer, shift, negation, adder), the second requantizes,
    masks and counts saturations. In one cycle the chain limited the UP5K build to
    28.3 MHz (``docs/boards.md``). The first stage's registers are attributes
    (``s1_valid``, ``s1_g``, ``s1_keep``, ``s1_active``, and ``sum_frac``, the fraction
    bits of ``s1_g``) so that the formal check can state what they hold.

    With ``cfg.projection == "serial"`` the first stage reads ``e`` one class a cycle
    through one shared ``C``-way multiplexer and negation (instead of one per lane and
    entry), into registers: in step ``c`` (``s0_class``) of a transfer, ``c < C``, it
    registers ``e[c]`` and ``-e[c]`` (``s0_e``, ``s0_e_neg``, class ``s0_bclass``), and in
    step ``c >= 1`` every lane adds the terms whose entry names class ``c - 1`` to its
    running sum (``s0_acc``). It accepts the transfer (``i.ready``) in step ``C``, so a
    transfer takes ``C + 1`` cycles and ``i`` must hold it that long (the stream rule).
    The broadcast registers keep the multiplexer and the negation out of the lanes' adder
    path (in one cycle they limited a P = 8 ECP5 build to 79.8 MHz). The sum is the same
    exact integer, so the outputs are those of the parallel form, bit for bit. The
    ``s0_*`` registers are attributes for the formal check.
    """

    #: Cycles from an accepted input to its output while ``o`` is not stalled.
    LATENCY = 2

    def __init__(self, cfg: EngineConfig, lanes: int):
        if cfg.feedback.kind != "sparse":
            raise ValueError(f"SparseProjection needs sparse feedback, not {cfg.feedback.kind!r}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        self._cfg, self._lanes = cfg, lanes
        f, k, C, fb = cfg.formats, cfg.feedback.k, cfg.n_classes, cfg.feedback
        # +-1 values: the sum of +-e is exact at the error's fraction bits, and requantizing
        # it from there is the same value as from fe + ffb bits (the ffb extra bits are
        # zero), without a rounding adder when the delta keeps the error's fraction
        # (stochastic rounding draws its bits by the dropped width, so it keeps the wide sum)
        self._narrow = fb.values == "pm1" and cfg.rounding_backward != "stochastic"
        self.sum_frac = f.error.frac_bits + (0 if self._narrow else f.feedback.frac_bits)
        self._g_width = f.error.width + (0 if self._narrow else f.feedback.width) + k.bit_length() + 1
        self.s1_valid = Signal()
        self.s1_g = [Signal(signed(self._g_width), name=f"s1_g{p}") for p in range(lanes)]
        self.s1_keep = Signal(lanes)        # mask & active: the delta is kept
        self.s1_active = Signal(lanes)
        self.serial = cfg.projection == "serial"
        if self.serial:
            self.s0_class = Signal(range(C + 1))
            self.s0_bclass = Signal(range(C))
            self.s0_e = Signal(f.error.amaranth_shape())
            self.s0_e_neg = Signal(signed(self._g_width))
            self.s0_acc = [Signal(signed(self._g_width), name=f"s0_acc{p}") for p in range(lanes)]
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
        narrow, g_frac, g_width = self._narrow, self.sum_frac, self._g_width
        e = Array(self.i.payload.e[c] for c in range(cfg.n_classes))
        P = self._lanes
        s1_valid, s1_keep, s1_active = self.s1_valid, self.s1_keep, self.s1_active
        advance = ~self.o.valid | self.o.ready
        serial = self.serial
        C = cfg.n_classes
        if serial:
            # step s0_class of the transfer; it is taken in step C
            step = advance & self.i.valid
            last = self.s0_class == C
            take = step & last
            m.d.comb += self.i.ready.eq(advance & last)
            with m.If(step):
                m.d.sync += self.s0_class.eq(Mux(last, 0, self.s0_class + 1))
            # one multiplexer and one negation for all lanes, into the broadcast registers
            e_c = Signal(f.error.amaranth_shape(), name="e_class")
            m.d.comb += e_c.eq(e[self.s0_class])
            with m.If(step & ~last):
                m.d.sync += [self.s0_e.eq(e_c), self.s0_bclass.eq(self.s0_class),
                             self.s0_e_neg.eq(-(e_c if narrow else e_c << ffb))]
            e_c_pos = Signal(signed(g_width), name="e_class_pos")
            m.d.comb += e_c_pos.eq(self.s0_e if narrow else self.s0_e << ffb)
            e_c_neg = self.s0_e_neg
            adding = step & (self.s0_class != 0)     # the lanes add class s0_bclass
        else:
            take = advance & self.i.valid
            m.d.comb += self.i.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(take), self.o.valid.eq(s1_valid)]
        # stage 1: g = sum_j sign_j * value_j * e[index_j], exact
        for p in range(P):
            terms = []
            for j in range(k):
                ent = self.i.payload.entries[p][j]
                term = Signal(signed(g_width), name=f"signed_term{p}_{j}")
                if serial and fb.values == "pm1":
                    m.d.comb += term.eq(Mux(ent.index == self.s0_bclass, Mux(ent.sign, e_c_neg, e_c_pos), 0))
                    terms.append(term)
                    continue
                sel = Signal(f.error.amaranth_shape(), name=f"e_sel{p}_{j}")
                if serial:
                    m.d.comb += sel.eq(Mux(ent.index == self.s0_bclass, self.s0_e, 0))
                else:
                    m.d.comb += sel.eq(e[ent.index])
                mag = Signal(signed(g_width), name=f"term{p}_{j}")
                if fb.values == "pm1":
                    m.d.comb += mag.eq(sel if narrow else sel << ffb)
                elif fb.values == "pow2":
                    m.d.comb += mag.eq((sel << ffb) >> ent.shift)
                else:
                    m.d.comb += mag.eq(sel * ent.magnitude)
                m.d.comb += term.eq(Mux(ent.sign, -mag, mag))
                terms.append(term)
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            if serial:
                # the running sum over the classes added so far; it starts again after the
                # last (s1_g takes the whole sum)
                acc = self.s0_acc[p]
                with m.If(adding):
                    m.d.sync += acc.eq(Mux(last, 0, acc + total))
                total = acc + total
            with m.If(advance):
                m.d.sync += self.s1_g[p].eq(total)
        with m.If(advance):
            m.d.sync += [s1_keep.eq(self.i.payload.mask & self.i.payload.active),
                         s1_active.eq(self.i.payload.active)]
        # stage 2: requantize, mask, count the saturated lanes
        saturated = []
        for p in range(P):
            rq = Requantize(g_width, g_frac, f.delta, cfg.rounding_backward)
            m.submodules[f"requant{p}"] = rq
            m.d.comb += rq.i.eq(self.s1_g[p])
            with m.If(advance):
                m.d.sync += self.o.payload.delta[p].eq(Mux(s1_keep[p], rq.o, 0))
            saturated.append(rq.saturated & s1_active[p])
        count = Signal.like(self.o.payload.saturated)
        total = saturated[0]
        for s in saturated[1:]:
            total = total + s
        m.d.comb += count.eq(total)
        with m.If(advance):
            m.d.sync += self.o.payload.saturated.eq(count)
        return m
