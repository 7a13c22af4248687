"""Clocks and resets for the board top-levels: PLL parameters and a power-on reset.

The PLL parameters are computed here, in Python, by the same searches as the
stand-alone calculators of the open toolchains, so that a board build needs no
generated Verilog and the numbers can be checked against those tools
(``tests/test_boards.py`` does, when they are installed):

- :func:`ice40_pll` mirrors ``icepll`` (IceStorm) in its default SIMPLE feedback mode:
  ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)`` with the phase detector at
  10-133 MHz and the VCO at 533-1066 MHz; the output range is 16-275 MHz.
- :func:`ecp5_pll` mirrors ``ecppll`` (Project Trellis) for one output (CLKOP fed back):
  ``f_out = f_in * CLKFB_DIV / CLKI_DIV``, ``f_vco = f_out * CLKOP_DIV`` at 400-800 MHz
  (ties broken towards 600 MHz), output 10-400 MHz. ``ecppll`` computes in single
  precision; so does this mirror, so that ties and the ``CLKOP_CPHASE`` truncation agree.

:class:`PowerOnReset` holds the ``sync`` domain in reset until the PLL reports lock and
then for a further ``delay`` seconds (iCE40 block RAMs read as zero for about 3 us after
configuration; Amaranth's own iCE40 platform waits 15 us, and so does this), then releases
it through a reset synchroniser. A user reset (a button) is ORed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

__all__ = ["ICE40PLL", "ECP5PLL", "ice40_pll", "ecp5_pll", "PowerOnReset"]


@dataclass(frozen=True)
class ICE40PLL:
    """``SB_PLL40_*`` parameters (SIMPLE feedback) and the frequencies they give (MHz)."""
    f_in: float
    f_out: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self):
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self):
        return self.f_pfd * (self.divf + 1)


@dataclass(frozen=True)
class ECP5PLL:
    """``EHXPLLL`` parameters (CLKOP fed back) and the frequencies they give (MHz)."""
    f_in: float
    f_out: float
    f_vco: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int


def ice40_pll(f_in_mhz: float, f_out_mhz: float) -> ICE40PLL:
    """The ``icepll`` choice for ``f_in_mhz`` to ``f_out_mhz`` (SIMPLE feedback).

    Raises ``ValueError`` outside the PLL's input (10-133 MHz) or output (16-275 MHz) range.
    """
    if not 10 <= f_in_mhz <= 133:
        raise ValueError(f"iCE40 PLL input frequency must be 10-133 MHz, not {f_in_mhz!r}")
    if not 16 <= f_out_mhz <= 275:
        raise ValueError(f"iCE40 PLL output frequency must be 16-275 MHz, not {f_out_mhz!r}")
    best = None
    for divr in range(16):
        f_pfd = f_in_mhz / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):          # 7 bits in SIMPLE mode (icepll's comment on the guide)
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = f_vco * 2.0 ** -divq
                if best is None or abs(fout - f_out_mhz) < abs(best[0] - f_out_mhz):
                    best = (fout, divr, divf, divq)
    if best is None:
        raise ValueError(f"No iCE40 PLL setting makes {f_out_mhz!r} MHz from {f_in_mhz!r} MHz")
    fout, divr, divf, divq = best
    f_pfd = f_in_mhz / (divr + 1)
    filter_range = (1 if f_pfd < 17 else 2 if f_pfd < 26 else 3 if f_pfd < 44 else
                    4 if f_pfd < 66 else 5 if f_pfd < 101 else 6)
    return ICE40PLL(f_in_mhz, fout, divr, divf, divq, filter_range)


def ecp5_pll(f_in_mhz: float, f_out_mhz: float) -> ECP5PLL:
    """The ``ecppll`` choice for ``f_in_mhz`` to ``f_out_mhz`` (CLKOP, no secondary outputs).

    Raises ``ValueError`` outside the PLL's input (8-400 MHz) or output (10-400 MHz) range.
    """
    if not 8 <= f_in_mhz <= 400:
        raise ValueError(f"ECP5 PLL input frequency must be 8-400 MHz, not {f_in_mhz!r}")
    if not 10 <= f_out_mhz <= 400:
        raise ValueError(f"ECP5 PLL output frequency must be 10-400 MHz, not {f_out_mhz!r}")
    f32 = np.float32
    inp, out = f32(f_in_mhz), f32(f_out_mhz)
    error, best = f32(np.inf), None
    for input_div in range(1, 129):
        fpfd = inp / f32(input_div)
        if fpfd < f32(3.125) or fpfd > f32(400):
            continue
        for feedback_div in range(1, 81):
            for output_div in range(1, 129):
                fvco = fpfd * f32(feedback_div) * f32(output_div)
                if fvco < f32(400) or fvco > f32(800):
                    continue
                fout = fvco / f32(output_div)
                err = abs(fout - out)
                if err < error or (err == error and abs(fvco - f32(600)) < abs(best[4] - f32(600))):
                    error = err
                    # ecppll shifts the primary output by 180 degrees (as Lattice's tools do),
                    # computed as float(0.5 / (fout * 1e6)) * fvco * 1e6, truncated
                    ns_phase = f32(1 / (float(fout) * 1e6) * 0.5)
                    cphase = int(float(ns_phase) * (float(fvco) * 1e6))
                    best = (input_div, feedback_div, output_div, fout, fvco, cphase)
    if best is None:
        raise ValueError(f"No ECP5 PLL setting makes {f_out_mhz!r} MHz from {f_in_mhz!r} MHz")
    input_div, feedback_div, output_div, fout, fvco, cphase = best
    return ECP5PLL(f_in_mhz, float(fout), float(fvco), input_div, feedback_div, output_div, cphase)


class PowerOnReset(Elaboratable):
    """Drive the reset of domain ``sync`` (whose clock is made elsewhere).

    The reset is held while ``locked`` is low (it is synchronised first) and for
    ``cycles`` clock cycles after it rises, and whenever ``user_reset`` is high; it is
    released synchronously (:class:`~amaranth.lib.cdc.ResetSynchronizer`, then one more
    register: the reset follows a request by up to three cycles). The timer runs
    in a reset-less local domain on the same clock, so it starts counting from the
    flip-flops' configuration value (zero) with no reset of its own.

    Parameters
    ----------
    cycles : int
        Cycles after lock before the reset is released (at least 1).
    locked : Value
        PLL lock (asynchronous), or ``Const(1)`` with no PLL.
    user_reset : Value
        Asynchronous reset request (e.g. a button), or ``Const(0)``.
    """

    def __init__(self, cycles: int, *, locked=Const(1), user_reset=Const(0)):
        if not isinstance(cycles, int) or cycles < 1:
            self._MustUse__silence = True
            raise ValueError(f"Power-on reset length must be a positive number of cycles, not {cycles!r}")
        self.cycles, self.locked, self.user_reset = cycles, locked, user_reset
        self.ready = Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(ClockSignal("sync"))
        locked = Signal()
        m.submodules.lock_sync = FFSynchronizer(self.locked, locked, o_domain="por")
        timer = Signal(range(self.cycles + 1))
        with m.If(~locked):
            m.d.por += [timer.eq(0), self.ready.eq(0)]
        with m.Elif(timer == self.cycles):
            m.d.por += self.ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        # The synchroniser's flip-flops sit near the button's pin; the domain's reset comes
        # from one more register, which the placer puts near the logic it reaches (the
        # engine reads it as a request in the same cycle: a 4.6 ns wire on an ECP5 build).
        m.domains.rsync = ClockDomain("rsync", local=True)
        m.d.comb += ClockSignal("rsync").eq(ClockSignal("sync"))
        m.submodules.reset_sync = ResetSynchronizer(~self.ready | self.user_reset, domain="rsync")
        rst_q = Signal(init=1)
        m.d.por += rst_q.eq(ResetSignal("rsync"))
        m.d.comb += ResetSignal("sync").eq(rst_q)
        return m
