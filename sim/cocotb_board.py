"""cocotb tests of the simulated board: :class:`~dfa_engine.host.HostClient` talks to the
link top in Verilator through its UART pins.

Started by :func:`dfa_engine.sim.board_run.run_board` (configuration in ``config.pkl``,
samples in ``data.npz``, knobs in ``params.json``, all in ``DFA_RUN_DIR``); each test
writes ``summary.json`` there and fails if it recorded an error.

The host is ``HostClient`` itself, unchanged: it runs in a :func:`cocotb.task.bridge`
thread (blocking code, like on a real host), and its transport, :class:`BridgedLine`, is
a serial port whose ``read`` hands control back to the simulator through a
:func:`cocotb.task.resume` function until the harness's receiver has seen a response's
closing flag (or a simulated timeout passed). So the simulator runs freely between
frames and Python wakes about once per request.

Tests:

- ``end_to_end``: link status, single parameter writes and reads (one refused), the
  initial parameters loaded with ``write_all_params``, ``n_train`` training samples (one
  with a label out of range) and ``n_infer`` inferences, each result (prediction, ``e``,
  flags) compared with the golden model as it arrives; every weight and bias read back
  and compared; engine and link counters.
- ``garbage``: the same traffic through a noisy line (:class:`NoisyLine`): before a
  request, at random (seeded), the line carries random bytes, a truncated copy of the
  request, a copy with a bad CRC, a copy spoilt by a framing error, a frame with a good
  CRC but a wrong length or type, or an overlong frame. A software model of the board's
  receiver (``FrameDecoder`` with the board's frame types) is fed the same bytes: every
  request must be exactly one valid frame to it and the garbage none, every request gets
  exactly one response (``HostClient`` refuses anything else), the STATUS responses equal
  the model's counters, and the weights read back equal the golden model's.
- ``serve_pty``: no script; the board on a pseudo-terminal for a host program
  (:func:`~dfa_engine.sim.board_run.board_on_pty`).
"""

from __future__ import annotations

import json
import os
import pickle
import time
import tty
from pathlib import Path

import cocotb
import numpy as np
from cocotb.task import bridge, resume
from cocotb.triggers import First, RisingEdge, Timer

from dfa_engine.feedback import initial_parameters
from dfa_engine.host import EngineError, FrameDecoder, HostClient, crc16, stuff
from dfa_engine.link_format import ESCAPE, ESCAPE_XOR, FLAG, READ, SAMPLE, TO_BOARD, WRITE, LinkFormat
from dfa_engine.sim.board_run import QUEUE_DEPTH
from dfa_engine.sim.golden import GoldenModel

__all__ = ["SimLine", "BridgedLine", "NoisyLine"]


class SimLine:
    """The harness's byte queues, seen from a cocotb coroutine.

    Parameters
    ----------
    dut
        The ``tb_board`` harness.
    divisor : int
        Clock cycles per bit (to turn queued bytes into a timeout).
    gap : int
        The harness's largest random gap between host bytes, in cycles.
    """

    def __init__(self, dut, divisor: int, gap: int = 0):
        self.dut = dut
        self.byte_cycles = 12 * divisor + gap
        self.tx_wr = 0
        self.rx_rd = 0
        self._frame_end = RisingEdge(dut.rx_frame)
        #: host bytes sent and board bytes received, in all
        self.bytes_sent = self.bytes_received = 0

    @property
    def cycles(self) -> int:
        return int(self.dut.cycles.value)

    def queued(self) -> int:
        """Host bytes not yet started by the harness's transmitter."""
        return self.tx_wr - int(self.dut.tx_rd.value)

    async def push(self, data: bytes, bad_stop=()):
        """Queue ``data`` for the board; the bytes at the indices in ``bad_stop`` go with a
        low stop bit (a framing error at the board's receiver)."""
        if not data:
            return
        while self.queued() + len(data) > QUEUE_DEPTH:
            await Timer(self.byte_cycles * 10 * 64, "ns")
        txq = self.dut.txq
        for k, byte in enumerate(data):
            txq[(self.tx_wr + k) % QUEUE_DEPTH].value = byte | (0x100 if k in bad_stop else 0)
        self.tx_wr += len(data)
        self.dut.tx_wr.value = self.tx_wr & 0xFFFFFFFF
        self.bytes_sent += len(data)

    def take(self) -> bytes:
        """Board bytes received since the last call."""
        wr = int(self.dut.rx_wr.value)
        rxq = self.dut.rxq
        data = bytes(int(rxq[i % QUEUE_DEPTH].value) for i in range(self.rx_rd, wr))
        if wr - self.rx_rd > QUEUE_DEPTH:
            raise RuntimeError("the harness's receive queue overflowed")
        self.rx_rd = wr
        self.bytes_received += len(data)
        return data

    async def poll(self, cycles: int) -> bytes:
        """Run until a response's closing flag was received or ``cycles`` passed; returns
        the bytes received."""
        await First(self._frame_end, Timer(10 * cycles, "ns"))
        return self.take()

    async def receive(self, timeout_cycles: int) -> bytes:
        """Wait until a response's closing flag was received or ``timeout_cycles`` passed
        (counted after the queued host bytes are sent); returns the bytes received."""
        timeout = Timer(10 * (timeout_cycles + self.queued() * self.byte_cycles), "ns")
        await First(self._frame_end, timeout)
        return self.take()


class BridgedLine:
    """A blocking serial-port-like transport over :class:`SimLine`, for code running in a
    :func:`cocotb.task.bridge` thread (``HostClient``).

    ``write`` only collects bytes; ``read`` sends them and lets the simulation run until a
    response frame is complete or ``timeout_cycles`` pass (then it returns ``b""``, as
    ``serial.Serial.read`` does on a timeout).
    """

    def __init__(self, line: SimLine, timeout_cycles: int = 200_000):
        self.line = line
        self.timeout_cycles = timeout_cycles
        self._pending = bytearray()
        self._bad_stop = []
        self._buf = bytearray()
        self.writes = 0

    def write(self, data: bytes, bad_stop=()) -> int:
        self._bad_stop += [len(self._pending) + k for k in bad_stop]
        self._pending += data
        self.writes += 1
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self._buf)

    def read(self, n: int = 1) -> bytes:
        if not self._buf:
            self._buf += self._exchange()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def reset_input_buffer(self):
        self._buf.clear()

    def flush(self):
        """Send whatever was written, without waiting for an answer."""
        self._send()

    def run(self, cycles: int) -> bytes:
        """Send what was written, let ``cycles`` pass, return the bytes that came back."""
        return self._run(cycles)

    def cycles(self) -> int:
        return self._cycles()

    @resume
    async def _exchange(self) -> bytes:
        await self._push_pending()
        return await self.line.receive(self.timeout_cycles)

    @resume
    async def _send(self):
        await self._push_pending()

    @resume
    async def _run(self, cycles: int) -> bytes:
        await self._push_pending()
        await Timer(10 * (cycles + self.line.queued() * self.line.byte_cycles), "ns")
        return self.line.take()

    @resume
    async def _cycles(self) -> int:
        return self.line.cycles

    async def _push_pending(self):
        data, bad = bytes(self._pending), set(self._bad_stop)
        self._pending.clear()
        self._bad_stop.clear()
        await self.line.push(data, bad)


def _unstuff(frame: bytes) -> bytearray:
    body, escape = bytearray(), False
    for byte in frame[1:-1]:
        if byte == ESCAPE and not escape:
            escape = True
        else:
            body.append(byte ^ ESCAPE_XOR if escape else byte)
            escape = False
    return body


class NoisyLine:
    """A transport that puts seeded garbage on the line before some of the frames written
    to it, and feeds every byte it sends to a model of the board's receiver.

    Parameters
    ----------
    line : BridgedLine
    fmt : LinkFormat
    rng : numpy.random.Generator
    rate : float
        Probability of garbage before a frame.

    Members
    -------
    model : FrameDecoder
        The board's receiver in software, fed the same bytes (and the same line errors).
    kinds : dict
        How many garbage pieces of each kind were sent.
    errors : list of str
        A request that the model did not see as exactly one valid frame, or garbage that it
        took for one.
    """

    KINDS = ("noise", "truncated", "bad_crc", "framing_error", "bad_length", "unknown_type", "overlong")

    def __init__(self, line: BridgedLine, fmt, rng, rate: float):
        self.line, self.fmt, self.rng, self.rate = line, fmt, rng, rate
        self.model = FrameDecoder(fmt, TO_BOARD)
        self.kinds = dict.fromkeys(self.KINDS, 0)
        self.errors = []
        self.requests = 0

    # the serial-port surface HostClient uses
    @property
    def in_waiting(self):
        return self.line.in_waiting

    def read(self, n=1):
        return self.line.read(n)

    def write(self, frame: bytes) -> int:
        if self.rng.random() < self.rate:
            for _ in range(int(self.rng.integers(1, 3))):
                self._garbage(frame)
        frames = self.model.feed(frame)
        if len(frames) != 1:
            self.errors.append(f"request {self.requests} was {len(frames)} frames to the board's receiver model")
        self.requests += 1
        return self.line.write(frame)

    def _send_garbage(self, data: bytes, bad_stop=None):
        """Send ``data`` (a framing error on byte ``bad_stop``) and feed it to the model."""
        for k, byte in enumerate(data):
            got = self.model.line_error() if k == bad_stop else self.model.feed(bytes((byte,)))
            if got:
                self.errors.append(f"garbage {data.hex()} made a valid frame {got}")
        self.line.write(data, () if bad_stop is None else (bad_stop,))

    def _with_crc(self, ftype: int, payload: bytes, length: int) -> bytes:
        body = bytes((ftype,)) + length.to_bytes(2, "little") + payload
        return bytes((FLAG,)) + stuff(body + crc16(body).to_bytes(2, "little")) + bytes((FLAG,))

    def _garbage(self, frame: bytes):
        rng = self.rng
        kind = self.KINDS[int(rng.integers(len(self.KINDS)))]
        self.kinds[kind] += 1
        if kind == "noise":
            junk = bytearray(rng.integers(0, 256, size=int(rng.integers(1, 40)), dtype=np.uint8))
            junk[int(rng.integers(len(junk)))] = (FLAG, ESCAPE)[int(rng.integers(2))]
            self._send_garbage(bytes(junk))
        elif kind == "truncated":
            self._send_garbage(frame[:int(rng.integers(1, len(frame) - 1))])        # no closing flag
        elif kind == "bad_crc":
            body = _unstuff(frame)
            body[int(rng.integers(len(body)))] ^= 1 << int(rng.integers(8))         # one flipped bit
            self._send_garbage(bytes((FLAG,)) + stuff(bytes(body)) + bytes((FLAG,)))
        elif kind == "framing_error":
            # the request itself, one byte after its opening flag lost to a low stop bit
            self._send_garbage(frame, bad_stop=int(rng.integers(1, len(frame) - 1)))
        elif kind == "bad_length":
            ftype = int(rng.choice([SAMPLE, WRITE, READ]))
            n = self.fmt.payload_length(ftype)
            payload = bytes(rng.integers(0, 256, size=n + int(rng.choice([-1, 1])), dtype=np.uint8))
            length = len(payload) if rng.random() < 0.5 else n                      # length field wrong or right
            self._send_garbage(self._with_crc(ftype, payload, length))
        elif kind == "unknown_type":
            ftype = int(rng.choice([0x00, 0x05, 0x42, 0x81, 0xFF]))
            self._send_garbage(self._with_crc(ftype, bytes(3), 3))
        else:
            size = self.fmt.max_frame(TO_BOARD) + int(rng.integers(1, 20))
            junk = rng.integers(0, 256, size=size, dtype=np.uint8)
            junk[(junk == FLAG) | (junk == ESCAPE)] = 0x55
            self._send_garbage(bytes((FLAG,)) + bytes(junk) + bytes((FLAG,)))


# ---- the host scripts (blocking, run in a bridge thread) --------------------------------
class Checker:
    """Collects mismatches instead of stopping at the first, so the summary tells all."""

    def __init__(self):
        self.errors = []

    def equal(self, got, want, what):
        if got != want:
            self.errors.append(f"{what}: board {got!r} != expected {want!r}")

    def result(self, res, golden, x, label, train, what):
        """A RESULT against the golden model, which takes the same step."""
        cfg = golden.cfg
        label_ok = 0 <= label < cfg.n_classes
        if train and label_ok:
            pred = golden.train_step(x, label)
            e = [int(v) for v in golden.last_error]
        else:
            # inference, or a label out of range: the engine forms e against label 0
            y = golden.forward(x)[0][-1]
            pred = int(np.argmax(y))
            e = [int(v) for v in golden.output_error(y, 0)]
        self.equal(res["prediction"], pred, f"{what}: prediction")
        self.equal(res["e"], e, f"{what}: e")
        self.equal((res["trained"], res["rejected"]), (train and label_ok, not label_ok), f"{what}: trained, rejected")

    def params(self, got, golden, what="parameters"):
        for layer, ((W, b), (Wg, bg)) in enumerate(zip(got, golden.parameters())):
            if not np.array_equal(W, Wg):
                i, j = np.argwhere(W != Wg)[0]
                self.errors.append(f"{what}: W{layer + 1}[{i}, {j}] board {W[i, j]} != golden {Wg[i, j]}")
            if not np.array_equal(b, bg):
                i = np.flatnonzero(b != bg)[0]
                self.errors.append(f"{what}: b{layer + 1}[{i}] board {b[i]} != golden {bg[i]}")


def _train_and_infer(client, golden, chk, X, Y, n_train, n_infer, transport, stats):
    """Train on the first ``n_train`` samples (sample 1's label replaced by one out of
    range), infer the next ``n_infer``; times the training."""
    C = golden.cfg.n_classes
    t0, c0 = time.perf_counter(), transport.cycles()
    for s in range(n_train):
        label = C + 3 if s == 1 else int(Y[s])
        chk.result(client.train(X[s], label), golden, X[s], label, True, f"train sample {s}")
    stats["train_seconds"] = time.perf_counter() - t0
    stats["train_cycles"] = transport.cycles() - c0
    for s in range(n_train, n_train + n_infer):
        chk.result(client.infer(X[s]), golden, X[s], 0, False, f"infer sample {s}")


def _end_to_end(cfg, line, X, Y, p):
    chk = Checker()
    transport = BridgedLine(line, p.get("timeout_cycles", 200_000))
    client = HostClient(transport, cfg)
    golden = GoldenModel(cfg)
    stats = {}
    f = cfg.formats
    chk.equal(client.link_status(), {"frames_ok": 1, "bad_crc": 0, "bad_frame": 0, "bytes_dropped": 0},
              "first link status")
    # single accesses on the board's zeroed memories
    for kind, layer, row, col, value in (("weight", 1, 3, 5, -1234), ("bias", 0, 2, 0, 77),
                                         ("weight", 0, 15, 63, f.weight.min_raw), ("bias", 1, 9, 0, f.bias.max_raw)):
        client.write_param(kind, layer, row, col, value)
        chk.equal(client.read_param(kind, layer, row, col), value, f"{kind} {layer} [{row}, {col}] read back")
    try:
        client.write_param("weight", 0, 0, 0, f.weight.max_raw + 1)
        chk.errors.append("a weight outside its format was accepted")
    except EngineError:
        pass
    t0 = time.perf_counter()
    client.write_all_params(initial_parameters(cfg))
    stats["load_seconds"] = time.perf_counter() - t0
    bytes0 = line.bytes_sent + line.bytes_received
    _train_and_infer(client, golden, chk, X, Y, p["n_train"], p["n_infer"], transport, stats)
    stats["line_bytes_per_sample"] = (line.bytes_sent + line.bytes_received - bytes0) / (p["n_train"] + p["n_infer"])
    t0 = time.perf_counter()
    chk.params(client.read_all_params(), golden)
    stats["read_all_seconds"] = time.perf_counter() - t0
    counters = client.read_counters()
    n_train, n_infer = p["n_train"], p["n_infer"]
    for name, want in (("samples_trained", n_train - 1), ("samples_inferred", n_infer), ("rejected_labels", 1),
                       ("rejected_addresses", 1), ("samples_received", n_train + n_infer),
                       ("resets", 1),          # the harness's power-on reset
                       ("aborted_samples", 0), ("dropped_outputs", 0)):
        chk.equal(counters[name], want, f"engine counter {name}")
    status = client.link_status()
    chk.equal(status, {"frames_ok": transport.writes, "bad_crc": 0, "bad_frame": 0, "bytes_dropped": 0},
              "final link status")
    chk.equal(client.decoder_counters, {"frames_ok": transport.writes, "bad_crc": 0, "bad_frame": 0,
                                        "bytes_dropped": 0}, "host decoder counters")
    chk.equal(transport.run(2000), b"", "bytes after the last response")
    return {"errors": chk.errors, "counters": counters, "link_status": status, "requests": transport.writes,
            **stats}


def _garbage(cfg, line, X, Y, p):
    chk = Checker()
    rng = np.random.default_rng(p.get("seed", 0))
    transport = BridgedLine(line, p.get("timeout_cycles", 200_000))
    noisy = NoisyLine(transport, LinkFormat(cfg), rng, p.get("rate", 0.3))
    client = HostClient(noisy, cfg)
    golden = GoldenModel(cfg)
    f = cfg.formats
    stats = {}
    client.write_all_params(initial_parameters(cfg))
    n_train, n_infer = p["n_train"], p["n_infer"]
    _train_and_infer(client, golden, chk, X, Y, n_train, n_infer, transport, stats)
    # random single accesses and status requests, each status checked against the model
    refused = 0
    for k in range(p.get("n_access", 60)):
        what = int(rng.integers(4))
        layer = int(rng.integers(cfg.n_layers))
        row, col = int(rng.integers(cfg.layers[layer + 1])), int(rng.integers(cfg.layers[layer]))
        if what == 0:
            kind = ("weight", "bias")[int(rng.integers(2))]
            col = col if kind == "weight" else 0
            fmt = f.weight if kind == "weight" else f.bias
            value = int(rng.integers(fmt.min_raw, fmt.max_raw + 1))
            if rng.random() < 0.2:                 # outside the format: refused by the engine
                value = int(rng.choice([fmt.min_raw - 1 - value % 7, fmt.max_raw + 1 + value % 7]))
            try:
                client.write_param(kind, layer, row, col, value)
                ok = True
            except EngineError:
                ok = False
                refused += 1
            chk.equal(ok, golden.write_parameter(kind, layer, row, col, value), f"access {k}: write accepted")
        elif what == 1:
            chk.equal(client.read_param("weight", layer, row, col), int(golden.W[layer][row, col]),
                      f"access {k}: read weight")
        elif what == 2:
            chk.equal(client.read_param("bias", layer, row), int(golden.b[layer][row]), f"access {k}: read bias")
        else:
            chk.equal(client.link_status(), noisy.model.counters, f"access {k}: link status")
    chk.params(client.read_all_params(), golden)
    counters = client.read_counters()
    for name, want in (("samples_trained", n_train - 1), ("samples_inferred", n_infer), ("rejected_labels", 1),
                       ("rejected_addresses", refused), ("samples_received", n_train + n_infer)):
        chk.equal(counters[name], want, f"engine counter {name}")
    status = client.link_status()
    chk.equal(status, noisy.model.counters, "final link status")
    chk.equal(status["frames_ok"], noisy.requests, "frames executed")
    chk.equal(client.decoder_counters, {"frames_ok": noisy.requests, "bad_crc": 0, "bad_frame": 0,
                                        "bytes_dropped": 0}, "host decoder counters")
    chk.equal(transport.run(2000), b"", "bytes after the last response")
    chk.errors += noisy.errors
    return {"errors": chk.errors, "counters": counters, "link_status": status, "requests": noisy.requests,
            "garbage": noisy.kinds, **stats}


# ---- cocotb tests ----------------------------------------------------------------------
def _load():
    run_dir = Path(os.environ["DFA_RUN_DIR"])
    with open(run_dir / "config.pkl", "rb") as fh:
        cfg = pickle.load(fh)
    data = np.load(run_dir / "data.npz")
    params = json.loads((run_dir / "params.json").read_text())
    return run_dir, cfg, data["X"], data["Y"], params


async def _run(dut, script):
    run_dir, cfg, X, Y, p = _load()
    line = SimLine(dut, p["divisor"], p.get("gap", 0))
    await RisingEdge(dut.start)
    t0 = time.perf_counter()
    try:
        summary = await bridge(script)(cfg, line, X, Y, p)
    except Exception as exc:     # the summary still tells what happened; the log has the traceback
        dut._log.exception("host script failed")
        summary = {"errors": [f"{type(exc).__name__}: {exc}"]}
    wall = time.perf_counter() - t0
    cycles = line.cycles
    rx_errors = int(dut.rx_framing_errors.value)
    if rx_errors:
        summary["errors"].append(f"{rx_errors} board-to-host bytes with a low stop bit")
    summary.update({"cycles": cycles, "wall_seconds": wall, "sim_cycles_per_second": cycles / wall,
                    "bytes_sent": line.bytes_sent, "bytes_received": line.bytes_received})
    if "train_seconds" in summary:
        n = p["n_train"]
        summary["train_samples_per_second"] = n / summary["train_seconds"]
        summary["train_cycles_per_sample"] = summary["train_cycles"] / n
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=int))
    assert not summary["errors"], summary["errors"][:5]


@cocotb.test()
async def end_to_end(dut):
    await _run(dut, _end_to_end)


@cocotb.test()
async def garbage(dut):
    await _run(dut, _garbage)


@cocotb.test()
async def serve_pty(dut):
    """The simulated board on a pseudo-terminal: a host program (``dfa-engine train
    --port``) opens the path written to ``pty`` in the run directory. Bytes from the
    terminal go to the line every ``poll_cycles`` clock cycles; the board's bytes go back
    as soon as a frame is complete (and at each poll). Ends when a file ``stop`` appears
    in the run directory or after ``max_seconds``."""
    run_dir, cfg, X, Y, p = _load()
    line = SimLine(dut, p["divisor"], p.get("gap", 0))
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    (run_dir / "pty").write_text(os.ttyname(slave))
    await RisingEdge(dut.start)
    poll_cycles = p.get("poll_cycles", 1000)
    stop = run_dir / "stop"
    t0 = time.perf_counter()
    deadline = time.monotonic() + p.get("max_seconds", 600)
    wakes = 0
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                data = b""
            await line.push(data)
            out = await line.poll(poll_cycles)
            while out:
                out = out[os.write(master, out):]
            wakes += 1
            if wakes % 64 == 0 and (stop.exists() or time.monotonic() > deadline):
                break
    finally:
        os.close(master)
        os.close(slave)
    wall = time.perf_counter() - t0
    summary = {"errors": [], "cycles": line.cycles, "wall_seconds": wall, "sim_cycles_per_second": line.cycles / wall,
               "bytes_sent": line.bytes_sent, "bytes_received": line.bytes_received, "wakes": wakes}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))

