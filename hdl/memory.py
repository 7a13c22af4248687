"""Single-port weight memories (``hardware.memory = "spram"``).

The iCE40 UP5K keeps large weight matrices only in its four SB_SPRAM256KA blocks (16 bits x
16,384 words each), which have one address: each cycle one read *or* one write. With
``memory = "spram"`` every weight memory of the engine is built single-ported, whatever
it maps to, so the schedule (and the cycle count) is the same in simulation and on any
board: the controller never issues a read in a cycle that writes a word back
(``hdl/engine.py``: a pass over single-port weights moves one word every two cycles while
it also updates, the port bound). On an iCE40 UP platform the memories that
:func:`spram_plan` chooses become SB_SPRAM256KA tiles (no initial contents: the host loads
the weights over its link); everywhere else an Amaranth memory with one shared address.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib import memory

SPRAM_WIDTH = 16
SPRAM_DEPTH = 16384
#: SB_SPRAM256KA blocks of an iCE40 UP5K
UP5K_SPRAMS = 4


def _ceil_div(a, b):
    return -(-a // b)


def spram_tiles(width: int, depth: int) -> int:
    """SB_SPRAM256KA blocks for a ``width`` x ``depth`` memory (tiled in width and depth)."""
    return _ceil_div(width, SPRAM_WIDTH) * _ceil_div(depth, SPRAM_DEPTH)


def weight_memory_geometry(cfg) -> list:
    """``(width, depth)`` of each layer's weight memory: one word of P weights per (row
    group, column)."""
    P, n = cfg.lanes, cfg.layers
    return [(P * cfg.formats.weight.width, _ceil_div(n[l + 1], P) * n[l]) for l in range(cfg.n_layers)]


def spram_plan(cfg, available: int = UP5K_SPRAMS) -> tuple:
    """The layers whose weight memory goes to SPRAM on an iCE40 UP device: the largest
    first, while the blocks last. Empty unless ``hardware.memory = "spram"``."""
    if cfg.memory != "spram":
        return ()
    geo = weight_memory_geometry(cfg)
    chosen, left = [], available
    for l in sorted(range(len(geo)), key=lambda l: -geo[l][0] * geo[l][1]):
        tiles = spram_tiles(*geo[l])
        if tiles <= left:
            chosen.append(l)
            left -= tiles
    return tuple(sorted(chosen))


def is_ice40_up(platform) -> bool:
    return platform is not None and str(getattr(platform, "device", "")).startswith("iCE40UP")


class SPRAMTileModel(Elaboratable):
    """The behaviour of one SB_SPRAM256KA as Yosys's ``cells_sim.v`` models it (MASKWREN
    all ones, awake, powered): on a clock edge with ``chipselect``, a read (``~wren``)
    loads ``dataout`` from ``address``; a write stores ``datain`` and leaves ``dataout``
    undefined, which this model makes a recognisable garbage word (0xDEAD) so a test sees
    any use of it. Without ``chipselect`` nothing changes."""

    GARBAGE = 0xDEAD

    def __init__(self):
        self.address = Signal(14)
        self.datain = Signal(SPRAM_WIDTH)
        self.wren = Signal()
        self.chipselect = Signal()
        self.dataout = Signal(SPRAM_WIDTH)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=SPRAM_WIDTH, depth=SPRAM_DEPTH, init=[])
        rd, wr = mem.read_port(transparent_for=()), mem.write_port()
        word = Signal(SPRAM_WIDTH)
        m.d.comb += [rd.addr.eq(self.address), rd.en.eq(self.chipselect & ~self.wren), word.eq(rd.data),
                     wr.addr.eq(self.address), wr.data.eq(self.datain), wr.en.eq(self.chipselect & self.wren)]
        wrote = Signal()          # the last selected cycle wrote: dataout is undefined
        with m.If(self.chipselect):
            m.d.sync += wrote.eq(self.wren)
        m.d.comb += self.dataout.eq(Mux(wrote, self.GARBAGE, word))
        return m


class SinglePortRAM(Elaboratable):
    """A ``width`` x ``depth`` RAM with one address: ``wr_en`` selects a write of
    ``wr_data`` at ``wr_addr``; otherwise ``rd_addr`` is read and its word appears on
    ``rd_data`` the next cycle. A write cycle reads nothing (``rd_data`` then holds no
    defined word: the controller never uses it). ``spram``: build it from SB_SPRAM256KA
    tiles (iCE40 UP only; contents start undefined). ``tile_model``: build the tiles from
    :class:`SPRAMTileModel`, so the Amaranth simulator can check the tiling."""

    def __init__(self, width: int, depth: int, init=(), spram: bool = False, name: str = "ram",
                 tile_model: bool = False):
        self.width, self.depth, self.spram = width, depth, spram
        self._tile_model = tile_model     # tests: SPRAMTileModel in place of the primitive
        self._init = list(init)
        if spram and any(self._init):
            raise ValueError(f"{name}: SB_SPRAM256KA has no initial contents; load the weights from the host")
        self.rd_addr = Signal(range(max(depth, 2)), name=f"{name}_rd_addr")
        self.rd_data = Signal(width, name=f"{name}_rd_data")
        self.wr_addr = Signal(range(max(depth, 2)), name=f"{name}_wr_addr")
        self.wr_data = Signal(width, name=f"{name}_wr_data")
        self.wr_en = Signal(name=f"{name}_wr_en")
        self._name = name

    def elaborate(self, platform):
        m = Module()
        addr = Signal.like(self.rd_addr, name=f"{self._name}_addr")
        m.d.comb += addr.eq(Mux(self.wr_en, self.wr_addr, self.rd_addr))
        if not self.spram:
            m.submodules.mem = mem = memory.Memory(shape=self.width, depth=self.depth, init=self._init)
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(~self.wr_en), self.rd_data.eq(rd.data),
                         wr.addr.eq(addr), wr.data.eq(self.wr_data), wr.en.eq(self.wr_en)]
            return m
        cols = _ceil_div(self.width, SPRAM_WIDTH)
        rows = _ceil_div(self.depth, SPRAM_DEPTH)
        wdata = Signal(cols * SPRAM_WIDTH)
        m.d.comb += wdata.eq(self.wr_data)
        row = self.rd_addr[14:] if rows > 1 else Const(0, 1)
        row_q = Signal(max(1, len(row)))           # the row whose word rd_data shows
        with m.If(~self.wr_en):
            m.d.sync += row_q.eq(row)
        # Every tile is always selected: a read reads all rows (``row_q`` picks the word)
        # and a write is steered by the row of ``wr_addr`` alone. A chip select decoded
        # from the multiplexed address put the address multiplexer and a comparison in
        # series with the controller's write decision, the UP5K build's critical path.
        wr_row = self.wr_addr[14:] if rows > 1 else Const(0, 1)
        row_words = []
        for r in range(rows):
            write_here = self.wr_en & (wr_row == r) if rows > 1 else self.wr_en
            word = []
            for c in range(cols):
                dout = Signal(SPRAM_WIDTH, name=f"{self._name}_r{r}c{c}")
                din = wdata[c * SPRAM_WIDTH:(c + 1) * SPRAM_WIDTH]
                if self._tile_model:
                    tile = SPRAMTileModel()
                    m.d.comb += [tile.address.eq(addr[:14]), tile.datain.eq(din), tile.wren.eq(write_here),
                                 tile.chipselect.eq(1), dout.eq(tile.dataout)]
                else:
                    tile = Instance(
                        "SB_SPRAM256KA",
                        i_ADDRESS=addr[:14], i_DATAIN=din,
                        i_MASKWREN=Const(0b1111, 4), i_WREN=write_here, i_CHIPSELECT=Const(1, 1),
                        i_CLOCK=ClockSignal("sync"), i_STANDBY=Const(0, 1), i_SLEEP=Const(0, 1),
                        i_POWEROFF=Const(1, 1), o_DATAOUT=dout)
                m.submodules[f"spram_r{r}c{c}"] = tile
                word.append(dout)
            row_words.append(Cat(*word)[:self.width])
        if rows == 1:
            m.d.comb += self.rd_data.eq(row_words[0])
        else:
            with m.Switch(row_q):
                for r in range(rows):
                    with m.Case(r):
                        m.d.comb += self.rd_data.eq(row_words[r])
        return m


class DelayLine(Elaboratable):
    """``o`` is ``i`` of ``depth`` cycles ago, every cycle (no enable, no reset: it carries
    data whose valid bit travels beside it in a register that does reset).

    ``in_memory``: a RAM written at a pointer that advances every cycle and read
    ``depth - 1`` entries behind it (a synchronous read adds the last cycle), instead of
    ``depth`` registers per bit. On the iCE40 UP5K the engine's logic cells run out before
    its block RAMs, and a register whose input is another register costs a logic cell of
    its own; a delay line of 24 bits x 4 cycles is 96 of them, or 2 block RAMs and a
    pointer. The engine uses it where ``hardware.memory = "spram"``."""

    def __init__(self, width: int, depth: int, *, in_memory: bool, name: str = "delay"):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"{name}: depth must be a positive integer, not {depth!r}")
        self.width, self.depth, self.in_memory = width, depth, in_memory and depth >= 2
        self.i = Signal(width, name=f"{name}_i")
        self.o = Signal(width, name=f"{name}_o")
        self._name = name

    def elaborate(self, platform):
        m = Module()
        if not self.in_memory:
            stage = self.i
            for k in range(self.depth):
                reg = Signal(self.width, name=f"{self._name}_{k}", reset_less=True)
                m.d.sync += reg.eq(stage)
                stage = reg
            m.d.comb += self.o.eq(stage)
            return m
        # entries: a power of two above depth - 1, so the pointers wrap by themselves and
        # the entry read is never the one written in the same cycle
        size = 1 << max(1, self.depth.bit_length())
        m.submodules.mem = mem = memory.Memory(shape=self.width, depth=size, init=[],
                                               attrs={"ram_style": "block"})
        rd, wr = mem.read_port(transparent_for=()), mem.write_port()
        ptr = Signal(range(size), name=f"{self._name}_ptr", reset_less=True)
        m.d.sync += ptr.eq(ptr + 1)
        m.d.comb += [wr.addr.eq(ptr), wr.data.eq(self.i), wr.en.eq(1),
                     rd.addr.eq(ptr - (self.depth - 1)), rd.en.eq(1), self.o.eq(rd.data)]
        return m
