"""ULX3S (ECP5 LFE5U-12F/25F/45F/85F) top-level: the engine behind the FTDI UART.

::

    clk25 (G2) --> EHXPLLL (CLKOP fed back) --> sync clock (requested frequency)
    PLL LOCK, 15 us timer, PWR button (D6) --> PowerOnReset --> sync reset
    uart rx (M1, FTDI TXD) --> LinkTop --> uart tx (L4, FTDI RXD)

The PLL parameters are those ``ecppll`` would choose (:func:`boards.clocking.ecp5_pll`),
with the same ``FREQUENCY_PIN_*`` and loop-filter attributes, so nextpnr derives the
same constraint; at 25 MHz exactly no PLL is used. The clock is also constrained at the
PLL's actual output frequency, so nextpnr reports fmax against it. The ESP32 pins are
left unrequested.
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth_boards.ulx3s import (ULX3S_12F_Platform, ULX3S_25F_Platform, ULX3S_45F_Platform,
                                   ULX3S_85F_Platform)

from dfa_engine.config import EngineConfig
from dfa_engine.hdl.family import check_engine_config_type

from .clocking import PowerOnReset, ecp5_pll
from .top import LinkTop
from .uart import uart_divisor

__all__ = ["ULX3STop", "PLATFORMS", "OSC_MHZ"]

OSC_MHZ = 25.0
POR_SECONDS = 15e-6
#: Board names (as ``dfa-engine build --board`` spells them) to platforms.
PLATFORMS = {"ulx3s-12f": ULX3S_12F_Platform, "ulx3s-25f": ULX3S_25F_Platform,
             "ulx3s-45f": ULX3S_45F_Platform, "ulx3s-85f": ULX3S_85F_Platform}


def _mhz_attr(f):
    return f"{f:.6f}".rstrip("0").rstrip(".")


class ULX3STop(Elaboratable):
    """The ULX3S top-level (any of the four devices).

    Parameters
    ----------
    cfg : EngineConfig
    freq_mhz : float
        Requested system clock (MHz); the PLL gets as close as it can (10-400 MHz, or
        exactly 25 MHz without a PLL).
    baud : int
        UART baud rate.
    init_parameters : bool
        Passed to :class:`~boards.top.LinkTop`.

    Raises
    ------
    ValueError
        The PLL cannot make the frequency, or the UART divisor misses the baud rate.
    """

    def __init__(self, cfg: EngineConfig, *, freq_mhz: float = 50.0, baud: int = 115200,
                 init_parameters: bool = True):
        check_engine_config_type(cfg)
        self.cfg, self.baud, self.init_parameters = cfg, baud, init_parameters
        self.requested_mhz = float(freq_mhz)
        try:
            self.pll = None if self.requested_mhz == OSC_MHZ else ecp5_pll(OSC_MHZ, self.requested_mhz)
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
        m.submodules.clk_buf = buf = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        if self.pll is None:
            m.d.comb += clk.eq(buf.i)
            locked = Const(1)
        else:
            p, locked = self.pll, Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=_mhz_attr(p.f_in), a_FREQUENCY_PIN_CLKOP=_mhz_attr(p.f_out),
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
                p_CLKOP_CPHASE=p.clkop_cphase, p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p.clkfb_div,
                i_RST=Const(0), i_STDBY=Const(0), i_CLKI=buf.i, i_CLKFB=clk,
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
                i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
                i_ENCLKOP=Const(0),
                o_CLKOP=clk, o_LOCK=locked)
        platform.add_clock_constraint(clk, self.freq_mhz * 1e6)

        m.submodules.button = button = io.Buffer("i", platform.request("button_pwr", 0, dir="-"))
        m.submodules.por = PowerOnReset(max(1, round(POR_SECONDS * self.freq_mhz * 1e6)),
                                        locked=locked, user_reset=button.i)   # pressed: 1 (the pin is inverted)

        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-", "rts": "-", "dtr": "-"})   # rts, dtr unused
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.top = top = LinkTop(self.cfg, divisor=self.divisor, init_parameters=self.init_parameters)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]
        return m
