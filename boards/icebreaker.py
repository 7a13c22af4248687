"""iCEBreaker (iCE40 UP5K) top-level: the engine behind the FTDI UART.

::

    clk12 (pin 35) --> SB_PLL40_PAD --> sync clock (requested frequency)
    PLL LOCK, 15 us timer, button (pin 10) --> PowerOnReset --> sync reset
    uart rx (pin 6) --> LinkTop --> uart tx (pin 9)

The 12 MHz oscillator enters on the PLL's own pad, so the PLL is an ``SB_PLL40_PAD``
(feeding the pad through an input buffer to an ``SB_PLL40_CORE`` collides with the PLL's
use of that I/O site on the UP5K). The PLL parameters are those ``icepll`` would choose
(:func:`boards.clocking.ice40_pll`); at 12 MHz exactly no PLL is used. The clock is
constrained at the PLL's actual output frequency, so nextpnr reports fmax against it.
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth_boards.icebreaker import ICEBreakerPlatform

from dfa_engine.config import EngineConfig
from dfa_engine.hdl.family import check_engine_config_type

from .clocking import PowerOnReset, ice40_pll
from .top import LinkTop
from .uart import uart_divisor

__all__ = ["ICEBreakerTop", "ICEBreakerPlatform", "OSC_MHZ"]

#: The board's oscillator.
OSC_MHZ = 12.0
#: Reset held after the PLL locks (iCE40 block RAMs read as zero for ~3 us after configuration).
POR_SECONDS = 15e-6


class ICEBreakerTop(Elaboratable):
    """The iCEBreaker top-level.

    Parameters
    ----------
    cfg : EngineConfig
    freq_mhz : float
        Requested system clock (MHz); the PLL gets as close as it can (16-275 MHz, or
        exactly 12 MHz without a PLL).
    baud : int
        UART baud rate.
    init_parameters : bool
        Passed to :class:`~boards.top.LinkTop`.

    Raises
    ------
    ValueError
        The PLL cannot make the frequency, or the UART divisor misses the baud rate.
    """

    def __init__(self, cfg: EngineConfig, *, freq_mhz: float = 24.0, baud: int = 115200,
                 init_parameters: bool = True):
        check_engine_config_type(cfg)
        self.cfg, self.baud, self.init_parameters = cfg, baud, init_parameters
        self.requested_mhz = float(freq_mhz)
        try:
            self.pll = None if self.requested_mhz == OSC_MHZ else ice40_pll(OSC_MHZ, self.requested_mhz)
            self.freq_mhz = OSC_MHZ if self.pll is None else self.pll.f_out
            self.divisor = uart_divisor(self.freq_mhz * 1e6, baud)
        except ValueError:
            self._MustUse__silence = True    # never built: no "created but never used" warning
            raise

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        # the PLL output; kept through synthesis so that the clock constraint finds it by name
        clk = Signal(name="sys_clk", attrs={"keep": 1})
        m.d.comb += cd_sync.clk.eq(clk)
        clk12 = platform.request("clk12", 0, dir="-")
        if self.pll is None:
            m.submodules.clk_buf = buf = io.Buffer("i", clk12)
            m.d.comb += clk.eq(buf.i)
            locked = Const(1)
        else:
            p, locked = self.pll, Signal()
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
                i_PACKAGEPIN=clk12.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        platform.add_clock_constraint(clk, self.freq_mhz * 1e6)

        m.submodules.button = button = io.Buffer("i", platform.request("button", 0, dir="-"))
        m.submodules.por = PowerOnReset(max(1, round(POR_SECONDS * self.freq_mhz * 1e6)),
                                        locked=locked, user_reset=button.i)   # pressed: 1 (the pin is inverted)

        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.top = top = LinkTop(self.cfg, divisor=self.divisor, init_parameters=self.init_parameters)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]
        return m
