# amaranth: UnusedElaboratable=no
"""HostLink with an Engine in Amaranth's simulator: frames in, responses out, checked against
the golden model; garbage, truncated, corrupted and refused frames counted, never executed.

The expected link counters and the expected number of responses come from the Python
receiver (``FrameDecoder`` with the board's frame types) fed with the same bytes: the
gateware and its software twin must agree byte for byte.
"""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from dfa_engine.boards.link import HostLink
from dfa_engine.boards.uart import UARTRx, UARTTx
from dfa_engine.config import config_from_dict
from dfa_engine.feedback import initial_parameters
from dfa_engine.hdl.engine import COUNTERS, Engine, host_address
from dfa_engine.host import (
    FrameDecoder, crc16, decode_payload, encode_read, encode_sample, encode_status, encode_write,
    stuff,
)
from dfa_engine.link_format import (
    ESCAPE, ESCAPE_XOR, FLAG, LINK_COUNTERS, READ, READ_RESP, RESULT, SAMPLE, STATUS_RESP, TO_BOARD, TO_HOST, WRITE,
    WRITE_ACK, LinkFormat,
    engine_signature,
)
from dfa_engine.sim.golden import GoldenModel

# 9-bit host addresses: the address field has 7 bits the engine does not have.
CFG = config_from_dict({"network": {"layers": [6, 5, 3], "methods": ["dfa"]}, "training": {"lr_shift": 3},
                        "feedback": {"k": 2}, "hardware": {"lanes": 2}})


def test_init():
    link = HostLink(CFG)
    fmt = link.format
    assert (fmt.address_width, fmt.address_bytes, fmt.data_bytes, fmt.input_bytes, fmt.error_bytes) == (9, 2, 4, 1, 2)
    # The engine side is the engine's own signature, flipped: connect() pairs them.
    assert link.signature.members["engine"] == In(Engine(CFG).signature)
    assert engine_signature(CFG) == Engine(CFG).signature
    m = Module()
    m.submodules.link, m.submodules.engine = link, engine = link, Engine(CFG)
    wiring.connect(m, link.engine, engine)


def test_init_wrong_cfg():
    with pytest.raises(TypeError, match=r"^Configuration must be an EngineConfig, a CNNEngineConfig or an RNNEngineConfig, not 'x'$"):
        HostLink("x")


# ---- a scripted host ---------------------------------------------------------------------
def run_link(cfg, chunks, *, params=None, idle=0.2, backpressure=0.3, seed=0, max_cycles=5000):
    """Send ``chunks`` of bytes to a HostLink + Engine; returns (responses, counters port).

    A chunk is bytes, or ("line_error", bytes, k): the line error strobe is raised after the
    first ``k`` bytes. After each chunk the host waits for as many responses as the board's
    receiver model says the chunk completes (stop and wait)."""
    m = Module()
    m.submodules.link = link = HostLink(cfg)
    m.submodules.engine = engine = Engine(cfg, params=params)
    wiring.connect(m, link.engine, engine)
    fmt = LinkFormat(cfg)
    model = FrameDecoder(fmt, TO_BOARD)
    host_rx = FrameDecoder(fmt, TO_HOST)
    rng = np.random.default_rng(seed)
    responses, final = [], {}

    async def host(ctx):
        expected = 0
        for chunk in chunks:
            error_at = None
            if isinstance(chunk, tuple):
                _, chunk, error_at = chunk
            for k, byte in enumerate(chunk):
                if k == error_at:
                    model.line_error()
                    ctx.set(link.rx_error, 1)
                    await ctx.tick()
                    ctx.set(link.rx_error, 0)
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(link.rx.payload, byte)
                ctx.set(link.rx.valid, 1)
                await ctx.tick().until(link.rx.ready)
                ctx.set(link.rx.valid, 0)
                expected += len(model.feed(bytes((byte,))))
            cycles = 0
            while len(responses) < expected:
                await ctx.tick()
                cycles += 1
                assert cycles < max_cycles, "no response"
        for _ in range(50):        # nothing more comes out
            await ctx.tick()
        assert len(responses) == expected
        final.update({name: ctx.get(link.counters[name]) for name in LINK_COUNTERS})
        final["model"] = dict(model.counters)

    async def host_receiver(ctx):
        while True:
            ready = rng.random() >= backpressure
            ctx.set(link.tx.ready, ready)
            valid, byte = ctx.get(link.tx.valid), ctx.get(link.tx.payload)
            await ctx.tick()
            if valid and ready:
                responses.extend(host_rx.feed(bytes((byte,))))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(host_receiver, background=True)
    sim.run()
    assert host_rx.counters == {"frames_ok": len(responses), "bad_crc": 0, "bad_frame": 0, "bytes_dropped": 0}
    return responses, final


def _corrupt_crc(frame: bytes) -> bytes:
    """The same frame with one payload bit flipped (the CRC no longer matches)."""
    body, escape = bytearray(), False
    for byte in frame[1:-1]:
        if byte == ESCAPE:
            escape = True
        else:
            body.append(byte ^ ESCAPE_XOR if escape else byte)
            escape = False
    body[3] ^= 0x10
    return bytes((FLAG,)) + stuff(bytes(body)) + bytes((FLAG,))


def _with_crc(ftype: int, payload: bytes, length=None) -> bytes:
    """A frame with a correct CRC but any type and length field (refused by their checks)."""
    body = bytes((ftype,)) + (len(payload) if length is None else length).to_bytes(2, "little") + payload
    return bytes((FLAG,)) + stuff(body + crc16(body).to_bytes(2, "little")) + bytes((FLAG,))


def test_sim_link_trains_like_golden_and_drops_bad_frames():
    cfg, fmt = CFG, LinkFormat(CFG)
    rng = np.random.default_rng(4)
    f = cfg.formats
    params = initial_parameters(cfg)
    writes = [("weight", 0, 4, 5, -1234), ("bias", 0, 2, 0, 777), ("weight", 1, 2, 4, f.weight.min_raw),
              ("bias", 1, 1, 0, f.bias.max_raw)]
    X = rng.integers(0, 256, size=(5, 6))
    X[0, :] = [0x7E, 0x7D, 0x7E, 0, 255, 0x7D]     # values that must be stuffed
    Y = [2, 0, 1, 5, 1]                            # label 5 is outside 0..2: rejected
    train = [True, True, False, True, True]

    valid, kinds = [], []                          # the frames that must be executed, in order
    for kind, layer, row, col, value in writes:
        valid.append(encode_write(fmt, host_address(cfg, kind, layer, row, col), value))
        kinds.append(WRITE_ACK)
    for x, y, t in zip(X, Y, train):
        valid.append(encode_sample(fmt, x, y, t))
        kinds.append(RESULT)
    valid.append(encode_write(fmt, host_address(cfg, "weight", 0, 5, 0), 1))        # row 5 of 5: engine refuses
    # address bit 9 set: past the engine's 9 address bits, so the link itself refuses
    # (host.py will not even encode these; the gateware must not alias them to address 0)
    valid.append(_with_crc(WRITE, (0x200 | host_address(cfg, "weight", 0, 0, 0)).to_bytes(2, "little")
                           + (1).to_bytes(4, "little")))
    valid.append(_with_crc(READ, (0xFFFF).to_bytes(2, "little")))
    kinds += [WRITE_ACK, WRITE_ACK, READ_RESP]
    valid.append(encode_status(fmt))
    kinds.append(STATUS_RESP)

    # Between and inside the valid frames: garbage, truncation, corruption, refused frames.
    bad = [
        bytes(rng.integers(0, 256, size=9, dtype=np.uint8)) + bytes([FLAG, 0x44, 0x7D, 0x7D, FLAG])
        + bytes(rng.integers(0, 256, size=12, dtype=np.uint8)),               # noise with flags and escapes
        valid[5][:9],                                                          # a sample cut short
        _corrupt_crc(valid[6]),                                                # bad CRC
        bytes([0x33, 0x7D]),                                                   # noise ending in an escape
        _with_crc(0x42, b"\x00"),                                              # unknown type
        _with_crc(READ, b"\x01\x00\x00"),                                      # wrong length for READ
        _with_crc(READ, b"\x01\x00", length=7),                                # length field disagrees
        _with_crc(SAMPLE, bytes(200)),                                         # overlong
        bytes([FLAG, 0x01, 0x7D, FLAG]),                                       # aborted by a flag after an escape
        bytes([FLAG, FLAG, FLAG]),                                             # empty frames: ignored
    ]
    chunks = [b"\x00\x13garbage before any flag"]
    for i, frame in enumerate(valid):
        if i < len(bad):
            chunks.append(bad[i])
        chunks.append(frame)
    # A valid frame spoilt by a line error (a UART framing error) is dropped, and its repeat runs.
    chunks.insert(3, ("line_error", valid[1], 5))

    responses, counters = run_link(cfg, chunks)
    assert [r.type for r in responses] == kinds

    golden_params = [(W.copy(), b.copy()) for W, b in params]
    for kind, layer, row, col, value in writes:
        if kind == "weight":
            golden_params[layer][0][row, col] = value
        else:
            golden_params[layer][1][row] = value
    golden = GoldenModel(cfg, params=golden_params)
    decoded = [decode_payload(fmt, r) for r in responses]
    assert all(d == {"data": d["data"], "error": False} for d in decoded[:4])
    for s, (x, y, t) in enumerate(zip(X, Y, train)):
        res = decoded[4 + s]
        if t and y < cfg.n_classes:
            assert res["prediction"] == golden.train_step(x, y), f"sample {s}"
            assert res["e"] == [int(v) for v in golden.last_error], f"sample {s}"
        else:
            assert res["prediction"] == golden.predict(x), f"sample {s}"
        assert (res["trained"], res["rejected"]) == (t and y < cfg.n_classes, y >= cfg.n_classes)
    assert [d["error"] for d in decoded[9:12]] == [True, True, True]
    status = decoded[12]
    model = counters.pop("model")
    assert status == model == counters
    assert status["frames_ok"] == len(valid)
    assert status["bad_crc"] >= 2 and status["bad_frame"] >= 7 and status["bytes_dropped"] >= 24


def test_sim_link_reads_back_parameters_and_counters():
    """Train through the link, then read every parameter and engine counter back through it."""
    cfg, fmt = CFG, LinkFormat(CFG)
    rng = np.random.default_rng(8)
    X = rng.integers(0, 256, size=(3, 6))
    Y = rng.integers(0, 3, size=3)
    noise = [bytes(rng.integers(0, 256, size=3, dtype=np.uint8)) for _ in range(3)]
    chunks = [encode_sample(fmt, x, y, True) + junk for x, y, junk in zip(X, Y, noise)]
    reads = []
    for layer in range(cfg.n_layers):
        for i in range(cfg.layers[layer + 1]):
            reads += [("weight", layer, i, j) for j in range(cfg.layers[layer])] + [("bias", layer, i, 0)]
    chunks += [encode_read(fmt, host_address(cfg, k, layer, i, j)) for k, layer, i, j in reads]
    chunks += [encode_read(fmt, host_address(cfg, "counter", counter=name)) for name in COUNTERS]
    responses, _ = run_link(cfg, chunks, idle=0.0, backpressure=0.1)

    golden = GoldenModel(cfg)
    for x, y in zip(X, Y):
        golden.train_step(x, int(y))
    values = [decode_payload(fmt, r) for r in responses[3:]]
    assert not any(v["error"] for v in values)
    got = {key: v["data"] for key, v in zip(reads, values)}
    for layer, (W, b) in enumerate(golden.parameters()):
        for i in range(W.shape[0]):
            assert [got[("weight", layer, i, j)] for j in range(W.shape[1])] == list(W[i]), f"W{layer + 1}[{i}]"
            assert got[("bias", layer, i, 0)] == b[i], f"b{layer + 1}[{i}]"
    engine_counters = dict(zip(COUNTERS, (v["data"] for v in values[len(reads):])))
    assert engine_counters["samples_trained"] == 3 and engine_counters["samples_received"] == 3


def test_sim_link_through_uarts():
    """Host UART -> pin -> UARTRx -> HostLink -> Engine -> HostLink -> UARTTx -> pin -> host UART."""
    cfg, fmt = CFG, LinkFormat(CFG)
    divisor = 4
    m = Module()
    m.submodules.link = link = HostLink(cfg)
    m.submodules.engine = engine = Engine(cfg)
    m.submodules.rx = rx = UARTRx(divisor=divisor)
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.host_tx = host_tx = UARTTx(divisor=divisor)
    m.submodules.host_rx = host_rx = UARTRx(divisor=divisor)
    wiring.connect(m, link.engine, engine)
    wiring.connect(m, rx.o, link.rx)
    wiring.connect(m, link.tx, tx.i)
    m.d.comb += [link.rx_error.eq(rx.framing_error | rx.overrun),
                 rx.rx.eq(host_tx.tx), host_rx.rx.eq(tx.tx)]
    x = [0x7E, 3, 200, 0x7D, 0, 255]
    frames = [encode_write(fmt, host_address(cfg, "bias", 1, 2), -5), b"\x7e\x99\x00\x11",
              encode_sample(fmt, x, 1, True), encode_read(fmt, host_address(cfg, "bias", 1, 2)),
              encode_status(fmt)]
    decoder = FrameDecoder(fmt, TO_HOST)
    responses = []

    async def host(ctx):
        for frame in frames:
            for byte in frame:
                ctx.set(host_tx.i.payload, byte)
                ctx.set(host_tx.i.valid, 1)
                await ctx.tick().until(host_tx.i.ready)
            ctx.set(host_tx.i.valid, 0)
            want = len(responses) + (frame[-1] == FLAG)
            for _ in range(20_000):
                if len(responses) == want:
                    break
                await ctx.tick()
            assert len(responses) == want, "no response"

    async def host_receive(ctx):
        ctx.set(host_rx.o.ready, 1)
        while True:
            valid, byte = ctx.get(host_rx.o.valid), ctx.get(host_rx.o.payload)
            await ctx.tick()
            if valid:
                responses.extend(decoder.feed(bytes((byte,))))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(host_receive, background=True)
    sim.run()
    assert [r.type for r in responses] == [WRITE_ACK, RESULT, READ_RESP, STATUS_RESP]
    golden = GoldenModel(cfg)
    golden.write_parameter("bias", 1, 2, 0, -5)
    result = decode_payload(fmt, responses[1])
    assert result["prediction"] == golden.train_step(x, 1)
    assert result["e"] == [int(v) for v in golden.last_error]
    assert decode_payload(fmt, responses[2]) == {"data": golden.b[1][2], "error": False}
    # the 4-byte junk (opening flag, no closing one) is closed by the next frame's flag
    assert decode_payload(fmt, responses[3]) == {"frames_ok": 4, "bad_crc": 0, "bad_frame": 1, "bytes_dropped": 0}


def test_sim_link_refuses_what_the_engine_cannot_take():
    """33-bit data words travel in 5 bytes: a value that does not fit 33 bits, or an address
    with bits above the engine's, is refused by the link; the engine (here a testbench
    stand-in) sees only the accesses that fit, with their values intact."""
    cfg = config_from_dict({"network": {"layers": [4, 3, 2], "methods": ["dfa"]},
                            "formats": {"weight": "s2.30", "bias": "s2.30", "update": "s2.30"},
                            "hardware": {"lanes": 1}})
    fmt = LinkFormat(cfg)
    assert (fmt.data_width, fmt.data_bytes, fmt.address_width, fmt.address_bytes) == (33, 5, 8, 1)
    dut = HostLink(cfg)
    frames = [_with_crc(WRITE, bytes([0x21]) + (1 << 32).to_bytes(5, "little")),                # 2^32: too big
              _with_crc(WRITE, bytes([0x21]) + (-(1 << 32) - 1).to_bytes(5, "little", signed=True)),  # too small
              encode_write(fmt, 0x21, -(1 << 32)), encode_write(fmt, 0x22, (1 << 32) - 1), encode_read(fmt, 0x23)]
    decoder = FrameDecoder(fmt, TO_HOST)
    responses, seen = [], []

    async def host(ctx):
        for frame in frames:
            for byte in frame:
                ctx.set(dut.rx.payload, byte)
                ctx.set(dut.rx.valid, 1)
                await ctx.tick().until(dut.rx.ready)
            ctx.set(dut.rx.valid, 0)
            want = len(responses) + 1
            for _ in range(1000):
                if len(responses) == want:
                    break
                await ctx.tick()
            assert len(responses) == want, "no response"

    async def engine_stub(ctx):
        ctx.set(dut.engine.host_req.ready, 1)
        while True:
            valid, req = ctx.get(dut.engine.host_req.valid), ctx.get(dut.engine.host_req.payload)
            await ctx.tick()
            if valid:
                seen.append((int(req.address), int(req.write), int(req.data)))
                ctx.set(dut.engine.host_resp.payload, {"data": int(req.data) // 2, "error": 0})
                ctx.set(dut.engine.host_resp.valid, 1)
                await ctx.tick().until(dut.engine.host_resp.ready)
                ctx.set(dut.engine.host_resp.valid, 0)

    async def host_receive(ctx):
        ctx.set(dut.tx.ready, 1)
        while True:
            valid, byte = ctx.get(dut.tx.valid), ctx.get(dut.tx.payload)
            await ctx.tick()
            if valid:
                responses.extend(decoder.feed(bytes((byte,))))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(engine_stub, background=True)
    sim.add_testbench(host_receive, background=True)
    sim.run()
    assert seen == [(0x21, 1, -(1 << 32)), (0x22, 1, (1 << 32) - 1), (0x23, 0, 0)]
    assert [(r.type, decode_payload(fmt, r)) for r in responses] == [
        (WRITE_ACK, {"data": 0, "error": True}), (WRITE_ACK, {"data": 0, "error": True}),
        (WRITE_ACK, {"data": -(1 << 31), "error": False}), (WRITE_ACK, {"data": (1 << 31) - 1, "error": False}),
        (READ_RESP, {"data": 0, "error": False})]


def test_sim_crc16_step_matches_host_crc():
    from amaranth.hdl import Signal

    from dfa_engine.boards.link import crc16_step
    from dfa_engine.link_format import CRC_INIT

    crc_in, byte_in = Signal(16), Signal(8)
    out = Signal(16)
    m = Module()
    m.d.comb += out.eq(crc16_step(crc_in, byte_in))
    data = b"123456789" + bytes(np.random.default_rng(1).integers(0, 256, size=100, dtype=np.uint8))
    got = []

    async def bench(ctx):
        crc = CRC_INIT
        for byte in data:
            ctx.set(crc_in, crc)
            ctx.set(byte_in, byte)
            crc = ctx.get(out)
            got.append(crc)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got[8] == 0x29B1
    assert got == [crc16(data[:i + 1]) for i in range(len(data))]


def test_convert_default_configuration():
    """The default configuration's link converts to RTLIL, and stays small (a CRC written as
    chained expressions once made it 9 MB)."""
    from amaranth.back import rtlil

    from dfa_engine.config import load_config

    text = rtlil.convert(HostLink(load_config(None)))
    assert len(text) < 1_000_000


def test_link_top_converts_with_four_pins():
    """The board-independent top (boards/top.py): UART pins, link and engine, as Verilog."""
    import re

    from dfa_engine.boards.top import LinkTop, link_top_verilog

    verilog_text = link_top_verilog(CFG, divisor=4)
    ports = re.search(r"module dfa_link_top\(([^)]*)\)", verilog_text).group(1)
    assert sorted(p.strip() for p in ports.split(",")) == ["clk", "rst", "rx", "tx"]
    with pytest.raises(TypeError, match=r"^Configuration must be an EngineConfig, a CNNEngineConfig or an RNNEngineConfig, not 3$"):
        LinkTop(3, divisor=4)
