"""The MAC datapath: ``P`` output-stationary lanes that sum exactly (``docs/numerics.md`` 3.1).

Each lane owns one output neuron. One input element ``x_j`` is broadcast to all lanes per
transfer, with the ``P`` weights ``W[i0 + p, j]`` (one per lane, from ``P`` memory banks).
The first element of a row group loads the aligned bias; the last one emits the ``P``
exact sums. Because the accumulator is wide enough to never overflow, the order of the
terms is irrelevant: the same unit serves the forward pass (``W h``) and BP's transposed
product (``W^T delta``, lanes owning input neurons) and, later, convolutions streamed
through it.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import RegisteredProduct, is_ecp5

__all__ = ["MACArray"]


class MACArray(wiring.Component):
    """``P`` lanes of exact multiply-accumulate with stream input and output.

    Parameters
    ----------
    lanes : int
        Number of lanes ``P``.
    x_shape, w_shape : Shape
        Shapes of the broadcast operand and of each lane's weight.
    acc_width : int
        Width of each exact (signed) accumulator.
    bias_shape : Shape
        Shape of each lane's bias, already aligned to the accumulator's fraction bits.
    product_stage : bool
        Register the operands and the products (a DSP's input and pipeline registers)
        before they are accumulated: :attr:`PRODUCT_STAGES` more cycles of latency, the
        multiplier is a path from registers to a register (on the iCE40, nextpnr times an
        SB_MAC16 only when its registers are used), and the multiplier and the
        accumulator's adder are no longer one combinational path (the engine's forward MAC).

    Members
    -------
    i : In(stream.Signature(StructLayout{x, w[P], bias[P], first, last}))
        ``bias`` is read on ``first`` transfers only.
    o : Out(stream.Signature(ArrayLayout(signed(acc_width), P)))
        One transfer per ``last`` input: the sums of the row group.
    """

    #: Cycles the operands and the products spend in registers with ``product_stage``.
    PRODUCT_STAGES = 2

    def __init__(self, *, lanes: int, x_shape, w_shape, acc_width: int, bias_shape, product_stage: bool = False):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Lane count must be a positive integer, not {lanes!r}")
        if not isinstance(acc_width, int) or acc_width < 2:
            raise ValueError(f"Accumulator width must be an integer >= 2, not {acc_width!r}")
        self._lanes, self._acc_width = lanes, acc_width
        self._product_stage = product_stage
        in_layout = data.StructLayout({
            "x": x_shape,
            "w": data.ArrayLayout(w_shape, lanes),
            "bias": data.ArrayLayout(bias_shape, lanes),
            "first": 1,
            "last": 1,
        })
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(acc_width), lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        acc = [Signal(signed(self._acc_width), name=f"acc{p}") for p in range(self._lanes)]
        p_in = self.i.payload
        if not self._product_stage:
            # One output buffer: accept input unless a finished sum is waiting.
            m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += self.o.valid.eq(0)
            valid, first, last = self.i.valid & self.i.ready, p_in.first, p_in.last
            terms = [p_in.w[p] * p_in.x for p in range(self._lanes)]
            biases = [p_in.bias[p] for p in range(self._lanes)]
        else:
            # the operand and product stages and the accumulator advance together (stall as
            # one). The data registers have no reset and exactly the operands' and the
            # product's widths: synthesis then moves them into the DSP (yosys ice40_dsp
            # takes a register only if its whole wire has one initial value).
            advance = ~self.o.valid | self.o.ready
            m.d.comb += self.i.ready.eq(advance)
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += self.o.valid.eq(0)
            r_valid, r_first, r_last = Signal(name="opnd_valid"), Signal(name="opnd_first"), Signal(name="opnd_last")
            bias_r = [Signal.like(p_in.bias[p], name=f"opnd_bias{p}", reset_less=True) for p in range(self._lanes)]
            q_valid, first, last = Signal(name="prod_valid"), Signal(name="prod_first"), Signal(name="prod_last")
            biases = [Signal.like(p_in.bias[p], name=f"prod_bias{p}", reset_less=True) for p in range(self._lanes)]
            # each lane's operand and product registers: a RegisteredProduct (on the ECP5,
            # the MULT18X18D's own registers)
            x_shape, w_shape = p_in.x.shape(), p_in.w[0].shape()
            dsp = "MULT18X18D" if is_ecp5(platform) and x_shape.width <= 18 and w_shape.width <= 18 else None
            terms = []
            for p in range(self._lanes):
                mul = m.submodules[f"mul{p}"] = RegisteredProduct(w_shape, x_shape, primitive=dsp)
                m.d.comb += [mul.a.eq(p_in.w[p]), mul.b.eq(p_in.x), mul.en.eq(advance)]
                terms.append(mul.p)
            with m.If(advance):
                m.d.sync += [r_valid.eq(self.i.valid), r_first.eq(p_in.first), r_last.eq(p_in.last)]
                m.d.sync += [b.eq(p_in.bias[p]) for p, b in enumerate(bias_r)]
                m.d.sync += [q_valid.eq(r_valid), first.eq(r_first), last.eq(r_last)]
                m.d.sync += [b.eq(bias_r[p]) for p, b in enumerate(biases)]
            valid = q_valid & advance
        with m.If(valid):
            for p in range(self._lanes):
                nxt = Signal(signed(self._acc_width), name=f"next{p}")
                with m.If(first):
                    m.d.comb += nxt.eq(biases[p] + terms[p])
                with m.Else():
                    m.d.comb += nxt.eq(acc[p] + terms[p])
                m.d.sync += acc[p].eq(nxt)
            with m.If(last):
                m.d.sync += self.o.valid.eq(1)
        # The sums are the accumulators themselves, not a copy: while a result waits
        # (o.valid and not o.ready) no input is taken, so they hold still (P x acc_width
        # flip-flops fewer: 2,560 at P = 64).
        m.d.comb += [self.o.payload[p].eq(acc[p]) for p in range(self._lanes)]
        return m
