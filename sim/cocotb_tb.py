"""A cocotb testbench for the engine's ports: stream drivers and monitors in Python.

For directed tests on small configurations (``sim/cocotb_directed.py``): every transfer
goes through Python, with random idle cycles on the inputs and random backpressure on the
outputs. Long training runs use the SystemVerilog harness instead (``sim/harness.py``),
which keeps Python off the per-cycle path.

Payloads are packed and unpacked with the engine's own port layouts (Amaranth
``StructLayout`` field offsets), so the testbench holds no second copy of a format.
"""

from __future__ import annotations

import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event, ReadOnly, RisingEdge

from dfa_engine.hdl.engine import COUNTERS, Engine, host_address

__all__ = ["pack", "unpack", "StreamDriver", "StreamMonitor", "EngineTB"]


def pack(layout, fields: dict) -> int:
    """An integer payload from field values (nested dicts/lists for struct/array fields)."""
    from amaranth.lib import data

    value = 0
    for name, field in layout:
        v = fields.get(name, 0)
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            for i, item in enumerate(v):
                width = shape.elem_shape.width if hasattr(shape.elem_shape, "width") else shape.elem_shape
                value |= (int(item) & ((1 << width) - 1)) << (field.offset + i * width)
        else:
            value |= (int(v) & ((1 << field.width) - 1)) << field.offset
    return value


def _signed(shape) -> bool:
    return bool(getattr(shape, "signed", False))


def unpack(layout, value: int) -> dict:
    """Field values of an integer payload (signed fields sign-extended)."""
    from amaranth.lib import data

    out = {}
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            elem = shape.elem_shape
            width = elem.width if hasattr(elem, "width") else elem
            items = []
            for i in range(shape.length):
                raw = (value >> (field.offset + i * width)) & ((1 << width) - 1)
                if _signed(elem) and raw >> (width - 1):
                    raw -= 1 << width
                items.append(raw)
            out[name] = items
        else:
            raw = (value >> field.offset) & ((1 << field.width) - 1)
            if _signed(shape) and raw >> (field.width - 1):
                raw -= 1 << field.width
            out[name] = raw
    return out


class StreamDriver:
    """Drives ``<prefix>__valid``/``<prefix>__payload`` from a queue, with random idle
    cycles between transfers; valid and payload stay put until the transfer (stream rules).

    One clocked process: after each rising edge it drives the next values; in the read-only
    phase before the next edge it samples ``valid & ready``, which tells whether that edge
    transfers (the handshake is judged on settled values, whatever the simulator's order of
    edge callbacks and register updates).
    """

    def __init__(self, dut, prefix: str, clk, *, idle: float = 0.0, rng: random.Random | None = None,
                 callback=None):
        self.callback = callback
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk, self.idle = clk, idle
        self.rng = rng or random.Random(0)
        self.queue = deque()
        self.transfers = 0
        self.enabled = True
        self._current = None
        self._fired = False
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send_nowait(self, payload: int) -> Event:
        done = Event()
        self.queue.append((payload, done))
        return done

    async def send(self, payload: int):
        """Queue one transfer and wait until it has happened."""
        await self.send_nowait(payload).wait()

    def flush(self):
        """Forget everything not yet transferred (after a reset)."""
        self.queue.clear()
        self._current = None
        self.valid.value = 0

    async def _run(self):
        while True:
            await RisingEdge(self.clk)
            if self._fired and self._current is not None:
                self.transfers += 1
                if self.callback is not None:
                    self.callback(self._current[0])
                self._current[1].set()
                self._current = None
            if self._current is None and self.queue and self.enabled and self.rng.random() >= self.idle:
                self._current = self.queue.popleft()
                self.payload.value = self._current[0]
                self.valid.value = 1
            elif self._current is None:
                self.valid.value = 0
            await ReadOnly()
            self._fired = bool(self.valid.value) and bool(self.ready.value)


class StreamMonitor:
    """Takes transfers from ``<prefix>__valid``/``<prefix>__payload`` with random
    backpressure on ``<prefix>__ready``; each payload goes to ``callback`` and ``queue``."""

    def __init__(self, dut, prefix: str, clk, *, backpressure: float = 0.0, rng: random.Random | None = None,
                 callback=None):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk, self.backpressure = clk, backpressure
        self.rng = rng or random.Random(1)
        self.callback = callback
        self.queue = deque()
        self.event = Event()
        self._fired = None
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def receive(self) -> int:
        while not self.queue:
            self.event.clear()
            await self.event.wait()
        return self.queue.popleft()

    async def _run(self):
        while True:
            await RisingEdge(self.clk)
            if self._fired is not None:
                self.queue.append(self._fired)
                if self.callback is not None:
                    self.callback(self._fired)
                self.event.set()
            self.ready.value = int(self.rng.random() >= self.backpressure)
            await ReadOnly()
            fired = bool(self.valid.value) and bool(self.ready.value)
            self._fired = int(self.payload.value) if fired else None


class EngineTB:
    """The engine (``dfa_engine_top``) with a clock, a reset, drivers for ``sample`` and
    ``host_req``, monitors for ``result`` and ``host_resp``, and helpers that speak in
    samples, parameters and counters."""

    def __init__(self, dut, cfg, *, idle: float = 0.0, backpressure: float = 0.0, seed: int = 0):
        self.dut, self.cfg = dut, cfg
        rng = random.Random(seed)
        members = Engine(cfg, init_parameters=False).signature.members
        self.layout = {name: members[name].signature.members["payload"].shape
                       for name in ("sample", "result", "host_req", "host_resp")}
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.cycle = 0
        #: (cycle, stream name, payload) of every transfer, in order
        self.log = []
        cocotb.start_soon(self._count())

        def logger(name):
            return lambda payload: self.log.append((self.cycle, name, payload))

        self.sample = StreamDriver(dut, "sample", dut.clk, idle=idle, rng=random.Random(rng.random()),
                                   callback=logger("sample"))
        self.host_req = StreamDriver(dut, "host_req", dut.clk, idle=idle, rng=random.Random(rng.random()),
                                     callback=logger("host_req"))
        self.result = StreamMonitor(dut, "result", dut.clk, backpressure=backpressure,
                                    rng=random.Random(rng.random()), callback=logger("result"))
        self.host_resp = StreamMonitor(dut, "host_resp", dut.clk, backpressure=backpressure,
                                       rng=random.Random(rng.random()), callback=logger("host_resp"))

    async def _count(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def reset(self, cycles: int = 4):
        """Hold ``rst`` for ``cycles`` clock cycles (inputs stay as they are)."""
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def cycles(self, count: int):
        for _ in range(count):
            await RisingEdge(self.dut.clk)

    def sample_words(self, x, label: int, train: bool = True) -> list:
        return [pack(self.layout["sample"], {"data": int(v), "label": int(label) & 0xFFFF, "train": int(train)})
                for v in x]

    async def send_sample(self, x, label: int, train: bool = True, count: int | None = None):
        """Send a sample (or its first ``count`` elements); returns when all are accepted."""
        words = self.sample_words(x, label, train)[:count]
        events = [self.sample.send_nowait(w) for w in words]
        for ev in events:
            await ev.wait()

    async def next_result(self) -> dict:
        return unpack(self.layout["result"], await self.result.receive())

    async def host(self, address: int, write: bool = False, data: int = 0) -> dict:
        await self.host_req.send(pack(self.layout["host_req"], {"address": address, "write": int(write), "data": data}))
        return unpack(self.layout["host_resp"], await self.host_resp.receive())

    async def write_param(self, kind: str, layer: int, row: int, column: int, value: int) -> int:
        """Returns the response's error bit."""
        return (await self.host(host_address(self.cfg, kind, layer, row, column), True, value))["error"]

    async def read_params(self) -> list:
        import numpy as np

        params = []
        for layer in range(self.cfg.n_layers):
            n_out, n_in = self.cfg.layers[layer + 1], self.cfg.layers[layer]
            W = np.zeros((n_out, n_in), dtype=np.int64)
            b = np.zeros(n_out, dtype=np.int64)
            for i in range(n_out):
                for j in range(n_in):
                    W[i, j] = (await self.host(host_address(self.cfg, "weight", layer, i, j)))["data"]
                b[i] = (await self.host(host_address(self.cfg, "bias", layer, i)))["data"]
            params.append((W, b))
        return params

    async def read_counters(self) -> dict:
        return {name: (await self.host(host_address(self.cfg, "counter", counter=name)))["data"]
                for name in COUNTERS}
