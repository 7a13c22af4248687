"""The output-error unit: ``e = softmax(y) - onehot(t)`` exactly as ``docs/numerics.md`` 4.

Sequential and small: one class per cycle for the maximum, one per cycle for the exp-table
look-up and the sum, a 1-bit-per-cycle restoring divider for ``R = floor(2^31 / S)``, and
for each class a shift-and-add multiplication ``E R`` (two bits of ``E`` a cycle, from the
multiples 0, R, 2R and 3R) for ``p = round(E R)``, its rounding and store overlapped with
the next class's multiplication. ``OutputError.cycles(C)`` cycles per sample (``(E_bits / 2
+ 2) C + 42``), next to the thousands of the MAC passes, and no multiplier: on the iCE40
UP5K the 8 DSPs all go to the lanes.
The unit owns the logits (in a small RAM, written by the engine, ``P`` a cycle, as the MAC
array produces them) and the output error registers (read by the engine until the next
start), so neither is held twice. The prediction (first maximum) falls out of the first pass.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.tables import EXP_FRAC_BITS, RECIP_BITS, exp_table

__all__ = ["OutputError"]


class OutputError(wiring.Component):
    """Logits written in, ``label`` streamed in to start, ``e[C]`` and the prediction out.

    Parameters
    ----------
    cfg : EngineConfig
    lanes : int
        Logits written per cycle (the engine's ``P``).

    Members
    -------
    y_wr : In(StructLayout{en, group, value: ArrayLayout(activation, lanes)})
        When ``en``: ``y[group * lanes + p] = value[p]`` for every ``p`` below ``C``. Not
        between a transfer on ``i`` and the next on ``o``: the logits' RAM holds the
        exp values meanwhile (the engine waits for ``o`` before its next forward pass).
    i : In(stream.Signature(StructLayout{label}))
        Starts the computation on the logits written so far.
    o : Out(stream.Signature(StructLayout{prediction, saturated}))
        One transfer when ``e`` is ready; ``saturated`` counts the elements of ``e`` that
        were clamped (site ``e``).
    e : Out(ArrayLayout(error, C))
        The output error, valid from ``o.valid`` until the next start.
    """

    #: Steps of the radix-4 multiplication E R, one a cycle (two bits of E each).
    MUL_STEPS = (EXP_FRAC_BITS + 2) // 2

    @classmethod
    def cycles(cls, n_classes: int) -> int:
        """Cycles the unit adds to a sample: the start's transfer 1, MAX ``C + 1``, EXP
        ``C + 4``, the divider ``RECIP_BITS + 2``, a class every ``MUL_STEPS`` cycles, the
        last product's rounding and store 2, the transfer on ``o`` 1."""
        C = n_classes
        return 1 + (C + 1) + (C + 4) + (RECIP_BITS + 2) + C * cls.MUL_STEPS + 2 + 1

    def __init__(self, cfg: EngineConfig, lanes: int = 1):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        self._cfg, self._lanes = cfg, lanes
        f = cfg.formats
        C = cfg.n_classes
        idx_w = max(1, (C - 1).bit_length())
        self._idx_w = idx_w
        groups = -(-C // lanes)
        super().__init__({
            "y_wr": In(data.StructLayout({"en": 1, "group": range(max(groups, 2)),
                                          "value": data.ArrayLayout(f.activation.amaranth_shape(), lanes)})),
            "i": In(stream.Signature(data.StructLayout({"label": idx_w}))),
            "o": Out(stream.Signature(data.StructLayout({"prediction": idx_w, "saturated": idx_w + 1}))),
            "e": Out(data.ArrayLayout(f.error.amaranth_shape(), C)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, f = self._cfg, self._cfg.formats
        C, N = cfg.n_classes, cfg.softmax_table_size
        act = f.activation
        fe = f.error.frac_bits
        m.submodules.table = table = memory.Memory(shape=unsigned(EXP_FRAC_BITS + 1), depth=N,
                                                   init=exp_table(cfg))
        # a synchronous read (block RAM): the EXP pass is a 3-stage pipeline (address, table,
        # sum), which keeps the class-index multiplexer, the subtraction, the table and the
        # sum's adder in separate cycles (one combinational path of them ran at 19 MHz on
        # the UP5K)
        rd = table.read_port()

        # One RAM word per group of P classes (the engine writes P logits a cycle) holds
        # each class's logit until the EXP pass has read it, then its exp value E_c (the
        # EXP pass writes E three classes behind the one it reads, one lane of a word, and
        # no logit is needed after that). A RAM, not C registers and their multiplexers:
        # on the UP5K the logic cells run out first. Reads are synchronous: the word of
        # class ``idx`` is read every cycle, and ``v_sel`` shows class ``idx_q`` (the
        # ``idx`` of the cycle before).
        ew = EXP_FRAC_BITS + 1
        vw = max(act.width, ew)
        P = self._lanes
        n_words = -(-C // P)
        idx = Signal(range(C + 1))
        idx_q = Signal(range(C + 1))
        # lanes that hold a class: class c sits in lane c mod P, so only min(P, C) lanes
        # are ever read; the lane of idx_q is registered beside it (no table lookup between
        # the register and the multiplexer, which feeds the MAX comparison)
        used_lanes = min(P, C)
        lane_q = Signal(range(max(used_lanes, 2)))
        m.d.sync += idx_q.eq(idx)
        m.submodules.store = store = memory.Memory(shape=P * vw, depth=max(n_words, 2), init=[])
        st_rd = store.read_port(transparent_for=())
        st_wr = store.write_port(granularity=vw)
        word_of = Array(Const(min(c, C - 1) // P, range(max(n_words, 2))) for c in range(C + 1))
        lane_of = Array(Const(min(c, C - 1) % P, range(max(P, 2))) for c in range(C + 1))
        m.d.comb += st_rd.addr.eq(word_of[idx])
        m.d.sync += lane_q.eq(lane_of[idx])
        v_lanes = Array(st_rd.data[p * vw:(p + 1) * vw] for p in range(used_lanes))
        v_sel = Signal(vw)
        y_sel = Signal(act.amaranth_shape())        # the logit of class idx_q
        E_sel = Signal(ew)                          # the exp value of class idx_q
        m.d.comb += [v_sel.eq(v_lanes[lane_q] if used_lanes > 1 else st_rd.data[:vw]),
                     y_sel.eq(v_sel[:act.width]), E_sel.eq(v_sel[:ew])]
        label = Signal(self._idx_w)
        ymax = Signal(act.amaranth_shape())
        pred = Signal(self._idx_w)
        S = Signal(EXP_FRAC_BITS + 1 + C.bit_length())
        # Restoring division of 2^31 by S: quotient bits from the top.
        rem = Signal(len(S) + 1)
        quo = Signal(RECIP_BITS + 1)
        bit = Signal(range(RECIP_BITS + 2))
        sat_count = Signal(self._idx_w + 1)

        # logits, P a cycle, from the engine (a whole word); the EXP pass writes one lane
        with m.If(self.y_wr.en):
            m.d.comb += [st_wr.addr.eq(self.y_wr.group), st_wr.en.eq((1 << P) - 1),
                         st_wr.data.eq(Cat(*(Cat(self.y_wr.value[p].as_unsigned(), Const(0, vw - act.width))
                                             for p in range(P))))]

        d = Signal(act.width + 1)
        m.d.comb += d.eq(ymax - y_sel)
        k = Signal(len(d))
        m.d.comb += k.eq(d >> (act.frac_bits - cfg.softmax_table_frac_bits))
        # EXP pipeline: stage 0 reads class idx from the RAM; stage 1 registers the table
        # index of that class (idx_q); stage 2 reads the table; stage 3 adds the entry (0
        # past the table's end) to S and writes it over the class's logit.
        k_q = Signal(range(N), name="exp_k")
        v0 = Signal(name="exp_v0")         # a class read was issued the cycle before (MAX, EXP)
        v1, in1, idx1 = Signal(name="exp_v1"), Signal(name="exp_in1"), Signal(range(C + 1), name="exp_idx1")
        v2, in2, idx2 = Signal(name="exp_v2"), Signal(name="exp_in2"), Signal(range(C + 1), name="exp_idx2")
        m.d.comb += rd.addr.eq(k_q)
        e_now = Signal(EXP_FRAC_BITS + 1)
        m.d.comb += e_now.eq(in2.replicate(EXP_FRAC_BITS + 1) & rd.data)

        # E R by shift and add, two bits of E a cycle: the accumulator's high part gets 0,
        # R, 2R or 3R (3R formed once, when the divider ends), then the whole shifts right
        # by two; after D = ceil(len(E) / 2) steps acc = E R exactly. The product is
        # rounded (prod -> rounded) and stored (-> e) in the two cycles after its last step,
        # while the next class's multiplication runs: D cycles a class.
        qw = RECIP_BITS + 1
        D = self.MUL_STEPS
        assert D >= 3, "the next class's read is issued two steps before the last"
        ew2 = 2 * D
        acc = Signal(ew2 + qw)
        mul_e = Signal(ew2)
        step = Signal(range(D))
        r3 = Signal(qw + 2)
        multiple = Signal(qw + 2)
        m.d.comb += multiple.eq(Array([Const(0, qw), quo, quo << 1, r3])[mul_e[:2]])
        added = Signal(qw + 2)
        m.d.comb += added.eq(acc[ew2:] + multiple)
        acc_next = Signal(len(acc))
        m.d.comb += acc_next.eq(Cat(acc[2:ew2], added))
        cls = Signal(range(C + 1))                  # the class being multiplied
        cls_hit = Signal()                          # ... is the label's
        shift = RECIP_BITS - fe
        # E <= S, so E R <= 2^31: the product fits 32 bits, and rounding it is a 32-bit add
        # (registered), the label's one and the saturation the next cycle (the store): one
        # 50-bit chain of both was the UP5K build's critical path.
        assert RECIP_BITS == 31
        prod, prod_valid = Signal(32), Signal()
        prod_cls, prod_hit = Signal(range(C)), Signal()
        rounded, r_valid = Signal(32 - shift + 1), Signal()
        r_cls, r_hit = Signal(range(C)), Signal()
        p = Signal(signed(len(rounded) + 2))
        m.d.comb += p.eq(rounded - r_hit * (1 << fe))
        e_sat = Signal(f.error.amaranth_shape())
        is_sat = Signal()
        with m.If(p > f.error.max_raw):
            m.d.comb += [e_sat.eq(f.error.max_raw), is_sat.eq(1)]
        with m.Elif(p < f.error.min_raw):
            m.d.comb += [e_sat.eq(f.error.min_raw), is_sat.eq(1)]
        with m.Else():
            m.d.comb += e_sat.eq(p)

        m.d.sync += [prod_valid.eq(0), r_valid.eq(prod_valid)]
        with m.If(prod_valid):
            m.d.sync += [rounded.eq((prod + (1 << (shift - 1))) >> shift), r_cls.eq(prod_cls), r_hit.eq(prod_hit)]
        with m.If(r_valid):
            m.d.sync += [self.e[r_cls].eq(e_sat), sat_count.eq(sat_count + is_sat)]
        m.d.comb += [self.o.payload.prediction.eq(pred), self.o.payload.saturated.eq(sat_count)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [label.eq(self.i.payload.label), idx.eq(0), pred.eq(0)]
                    m.next = "MAX"
            with m.State("MAX"):
                # class idx is read; class idx_q (read the cycle before) is compared; the
                # first maximum wins, class 0 is taken as it comes
                m.d.sync += v0.eq(idx != C)
                with m.If(v0 & ((idx_q == 0) | (y_sel > ymax))):
                    m.d.sync += [ymax.eq(y_sel), pred.eq(idx_q)]
                with m.If(idx == C):
                    m.d.sync += [idx.eq(0), S.eq(0), v0.eq(0)]
                    m.next = "EXP"
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
            with m.State("EXP"):
                m.d.sync += [v0.eq(idx != C), v1.eq(v0), v2.eq(v1), in2.eq(in1), idx2.eq(idx1)]
                with m.If(idx != C):
                    m.d.sync += idx.eq(idx + 1)
                with m.If(v0):
                    m.d.sync += [k_q.eq(k[:len(k_q)]), in1.eq(k < N), idx1.eq(idx_q)]
                with m.If(v2):
                    m.d.comb += [st_wr.addr.eq(word_of[idx2]), st_wr.en.eq(1 << lane_of[idx2] if P > 1 else 1),
                                 st_wr.data.eq(e_now.replicate(P) if vw == ew else
                                               Cat(e_now, Const(0, vw - ew)).replicate(P))]
                    m.d.sync += S.eq(S + e_now)
                with m.If((idx == C) & ~v0 & ~v1 & ~v2):
                    # class 0's E is read during the whole division (idx = 0)
                    m.d.sync += [rem.eq(0), quo.eq(0), bit.eq(RECIP_BITS + 1), idx.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                # Dividend 2^31: bit 31 set, all lower bits zero.
                with m.If(bit == 0):
                    m.d.sync += [r3.eq(quo + (quo << 1)), sat_count.eq(0),
                                 acc.eq(0), mul_e.eq(E_sel), step.eq(0), cls.eq(0), cls_hit.eq(label == 0)]
                    m.next = "MUL"
                with m.Else():
                    trial = Signal(len(rem) + 1)
                    m.d.comb += trial.eq((rem << 1) | (bit == RECIP_BITS + 1))
                    with m.If(trial >= S):
                        m.d.sync += [rem.eq(trial - S), quo.eq((quo << 1) | 1)]
                    with m.Else():
                        m.d.sync += [rem.eq(trial), quo.eq(quo << 1)]
                    m.d.sync += bit.eq(bit - 1)
            with m.State("MUL"):
                # class idx (= cls until step D - 3, then the next) is read; E_sel shows the
                # next class at the last step, which loads it
                with m.If(step == D - 3):
                    m.d.sync += idx.eq(idx + 1)
                with m.If(step == D - 1):
                    m.d.sync += [prod.eq(acc_next[:32]), prod_valid.eq(1), prod_cls.eq(cls), prod_hit.eq(cls_hit),
                                 acc.eq(0), mul_e.eq(E_sel), step.eq(0), cls.eq(idx_q), cls_hit.eq(idx_q == label)]
                    with m.If(idx_q == C):
                        m.next = "DRAIN"
                with m.Else():
                    m.d.sync += [acc.eq(acc_next), mul_e.eq(mul_e >> 2), step.eq(step + 1)]
            with m.State("DRAIN"):
                # the last product is rounded (prod_valid), then stored as o.valid rises:
                # e and the count are complete when o.valid shows
                with m.If(~prod_valid):
                    m.d.sync += self.o.valid.eq(1)
                    m.next = "OUT"
            with m.State("OUT"):
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
                    m.next = "IDLE"
        return m
