"""8N1 UART receiver and transmitter with byte streams, for the host link.

One start bit (low), eight data bits LSB first, one stop bit (high); the line idles high.
``divisor`` is the number of clock cycles per bit (``clock / baud``, see
:func:`uart_divisor`).

The receiver synchronises the pin with two flip-flops, waits for the line to go low and
checks the start bit again half a bit later: a glitch shorter than half a bit is ignored
and the receiver goes back to looking for a start bit, so it resynchronises on every
byte instead of trusting a free-running bit clock. Each data bit and the stop bit are
sampled in the middle of the bit. A low stop bit means the receiver was out of step with
the sender (or the line is in a break); the byte is dropped, ``framing_error`` pulses,
and the receiver waits for the line to go high before looking for the next start bit.
Because the receiver returns to the start-bit search in the middle of the stop bit, a
sender whose clock is a few percent off still lines up again on every start bit.

The receiver holds one byte. UART has no flow control, so a byte completed while the
previous one still waits is lost and ``overrun`` pulses: the consumer must take a byte
within one byte time (the host link always does except while it executes a frame, when
the host waits by protocol, ``docs/host_link.md``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]

#: Fewest clock cycles per bit: the start bit is detected up to one cycle late and checked
#: half a bit later, so two cycles either side of the sampling point are needed.
MIN_DIVISOR = 4


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"Divisor must be an integer number of clock cycles per bit, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Divisor must be at least {MIN_DIVISOR} clock cycles per bit, not {divisor!r}")


def uart_divisor(clk_freq: float, baud: int, tolerance: float = 0.02) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_freq``.

    Raises ``ValueError`` when the rounded divisor misses the baud rate by more than
    ``tolerance``: by the stop bit (9.5 bits after the start edge) the sampling point of a
    receiver that is 5% off has drifted out of the bit.
    """
    if baud <= 0 or clk_freq <= 0:
        raise ValueError(f"Clock frequency and baud rate must be positive, not {clk_freq!r} and {baud!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"A {clk_freq!r} Hz clock is too slow for {baud!r} baud: {divisor} cycles per bit, "
                         f"at least {MIN_DIVISOR} needed")
    error = abs(clk_freq / divisor - baud) / baud
    if error > tolerance:
        raise ValueError(f"A {clk_freq!r} Hz clock cannot make {baud!r} baud within {tolerance:.1%}: "
                         f"divisor {divisor} is {error:.1%} off")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver: pin in, bytes out.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : In(1)
        The pin (asynchronous; synchronised inside). Idles high.
    o : Out(stream.Signature(8))
        Received bytes. One byte is held until taken.
    framing_error : Out(1)
        Pulses for one cycle when a byte is dropped because its stop bit was low.
    overrun : Out(1)
        Pulses for one cycle when a byte is dropped because the previous one was not taken.

    Raises
    ------
    TypeError
        If ``divisor`` is not an integer.
    ValueError
        If ``divisor`` is below 4.
    """

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self._divisor))
        bit = Signal(range(8))
        shreg = Signal(8)
        tick = Signal()
        m.d.comb += tick.eq(timer == 0)
        with m.If(~tick):
            m.d.sync += timer.eq(timer - 1)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # the middle of the start bit, half a bit from its (possibly late) edge
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(tick):
                    with m.If(rx):
                        m.next = "IDLE"          # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self._divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(tick):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1), timer.eq(self._divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(tick):
                    with m.If(~rx):
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.next = "IDLE"
            with m.State("BREAK"):
                # A low stop bit: wait for the line to go high before trusting a low level
                # as the next start bit.
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter: bytes in, pin out.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; ``ready`` while the transmitter is idle.
    tx : Out(1)
        The pin. Idles high.

    Raises
    ------
    TypeError
        If ``divisor`` is not an integer.
    ValueError
        If ``divisor`` is below 4.
    """

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        # start bit, 8 data bits, stop bit; shifted out LSB first. All ones = idle line.
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))

        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits_left == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(0, self.i.payload, 1)), bits_left.eq(10), timer.eq(self._divisor - 1)]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits_left.eq(bits_left - 1),
                             timer.eq(self._divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
