"""The board-independent top: UART pins, the host link and the engine.

Every board top-level (``boards/icebreaker.py``, ``boards/ulx3s.py``) instantiates
:class:`LinkTop` and connects its two pins (and its reset request) to the board; the
simulated board top used by the end-to-end tests is the same block, converted to Verilog
with :func:`link_top_verilog`.

::

    rx pin --> UARTRx --> HostLink --> Engine --> HostLink --> UARTTx --> tx pin
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.hdl.family import check_engine_config_type, engine_family

from .link import HostLink
from .uart import UARTRx, UARTTx

__all__ = ["LinkTop", "link_top_verilog"]


class LinkTop(wiring.Component):
    """The engine behind a UART host link.

    Parameters
    ----------
    cfg : EngineConfig
    divisor : int
        Clock cycles per UART bit (``boards.uart.uart_divisor(clk_hz, baud)``).
    init_parameters : bool
        Initialise the weight memories with the configuration's initial parameters (else
        zero; the host loads them over the link).

    Members
    -------
    rx : In(1)        UART receive pin (idle high).
    tx : Out(1)       UART transmit pin (idle high).
    """

    def __init__(self, cfg: EngineConfig, *, divisor: int, init_parameters: bool = True):
        check_engine_config_type(cfg)
        self._cfg, self._divisor, self._init = cfg, divisor, init_parameters
        # construct the UARTs now so that a bad divisor fails here, not at elaboration
        self._uart_rx, self._uart_tx = UARTRx(divisor=divisor), UARTTx(divisor=divisor)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    @property
    def cfg(self):
        return self._cfg

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = rx = self._uart_rx
        m.submodules.uart_tx = tx = self._uart_tx
        m.submodules.link = link = HostLink(self._cfg)
        m.submodules.engine = engine = engine_family(self._cfg).engine(self._cfg, init_parameters=self._init)
        wiring.connect(m, link.engine, engine)
        wiring.connect(m, rx.o, link.rx)
        wiring.connect(m, link.tx, tx.i)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx),
                     link.rx_error.eq(rx.framing_error | rx.overrun)]
        return m


def link_top_verilog(cfg: EngineConfig, *, divisor: int, init_parameters: bool = True,
                     name: str = "dfa_link_top") -> str:
    """Verilog of :class:`LinkTop` (ports ``clk``, ``rst``, ``rx``, ``tx``), no source paths."""
    from amaranth.back import verilog

    top = LinkTop(cfg, divisor=divisor, init_parameters=init_parameters)
    return verilog.convert(top, name=name, emit_src=False)
