"""The Python host side: CRC, stuffing, every frame type, the streaming decoder under damage,
and HostClient against a model of the board built on the golden model."""

import sys

import numpy as np
import pytest
from _board_model import BoardModel

from dfa_engine.config import config_from_dict
from dfa_engine.hdl.engine import COUNTERS
from dfa_engine.host import (
    EngineError, Frame, FrameDecoder, HostClient, LinkError, crc16, decode_payload, encode_read,
    encode_response, encode_sample, encode_status, encode_write, open_serial, stuff,
)
from dfa_engine.link_format import (
    ESCAPE, FLAG, LINK_COUNTERS, READ, READ_RESP, RESULT, SAMPLE, STATUS, STATUS_RESP, TO_BOARD, TO_HOST, WRITE,
    WRITE_ACK, LinkFormat,
)
from dfa_engine.sim.golden import GoldenModel

CFG = config_from_dict({"network": {"layers": [6, 5, 3], "methods": ["dfa"]}, "training": {"lr_shift": 3},
                        "feedback": {"k": 2}, "hardware": {"lanes": 2}})
FMT = LinkFormat(CFG)


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE written out bit by bit, independently of host.py's table."""
    crc = 0xFFFF
    for byte in data:
        for k in range(7, -1, -1):
            top = ((crc >> 15) & 1) ^ ((byte >> k) & 1)
            crc = (crc << 1) & 0xFFFF
            if top:
                crc ^= 0x1021
    return crc


def test_crc16_check_value_and_bitwise():
    assert crc16(b"123456789") == 0x29B1          # the catalogued check value of CRC-16/CCITT-FALSE
    assert crc16(b"") == 0xFFFF
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64, 300):
        data = bytes(rng.integers(0, 256, size=n, dtype=np.uint8))
        assert crc16(data) == crc16_bitwise(data)


def test_stuffing_keeps_flags_at_the_ends_only():
    frame = encode_write(FMT, FLAG, 0x7D7E7D7E)
    assert frame[0] == FLAG and frame[-1] == FLAG and FLAG not in frame[1:-1]
    assert frame[4:8] == bytes([ESCAPE, 0x5E, 0x00, ESCAPE])
    assert stuff(bytes([FLAG, ESCAPE, 0x20])) == bytes([ESCAPE, 0x5E, ESCAPE, 0x5D, 0x20])
    assert FrameDecoder(FMT, TO_BOARD).feed(frame) == [Frame(WRITE, bytes([FLAG, 0, FLAG, ESCAPE, FLAG, ESCAPE]))]


def test_frame_layout():
    """Byte for byte, as docs/host_link.md writes it."""
    frame = encode_read(FMT, 0x123)
    body = bytes([READ, 2, 0, 0x23, 0x01])
    assert frame == bytes([FLAG]) + body + crc16(body).to_bytes(2, "little") + bytes([FLAG])
    assert encode_status(FMT) == bytes([FLAG, STATUS, 0, 0]) + crc16(bytes([STATUS, 0, 0])).to_bytes(2, "little") \
        + bytes([FLAG])
    body = bytes([WRITE, 6, 0, 0x05, 0x00]) + (-2).to_bytes(4, "little", signed=True)
    assert encode_write(FMT, 5, -2) == bytes([FLAG]) + stuff(body + crc16(body).to_bytes(2, "little")) + bytes([FLAG])
    body = bytes([SAMPLE, 9, 0, 0x01, 0x02, 0x00, 1, 2, 3, 4, 5, 6])
    assert encode_sample(FMT, [1, 2, 3, 4, 5, 6], 2, True) == bytes([FLAG]) + stuff(
        body + crc16(body).to_bytes(2, "little")) + bytes([FLAG])


def test_round_trip_every_type():
    board = FrameDecoder(FMT, TO_BOARD)
    frames = board.feed(encode_sample(FMT, [0x7E, 0x7D, 0, 255, 1, 2], 2, False) + encode_write(FMT, 0x1FF, -(1 << 31))
                        + encode_read(FMT, 0) + encode_status(FMT))
    assert [f.type for f in frames] == list(TO_BOARD)
    assert frames[0].payload == bytes([0, 2, 0, 0x7E, 0x7D, 0, 255, 1, 2])
    assert frames[1].payload == bytes([0xFF, 0x01, 0, 0, 0, 0x80])
    responses = [
        (RESULT, {"prediction": 2, "e": [-16384, 0x7E7D, -1], "trained": True, "rejected": False}),
        (RESULT, {"prediction": 0, "e": [0, 0, 0], "trained": False, "rejected": True}),
        (WRITE_ACK, {"data": -5, "error": False}),
        (READ_RESP, {"data": (1 << 31) - 1, "error": True}),
        (STATUS_RESP, {"frames_ok": 0xFFFFFFFF, "bad_crc": 1, "bad_frame": 2, "bytes_dropped": 0x7E7E7E7E}),
    ]
    host = FrameDecoder(FMT, TO_HOST)
    got = host.feed(b"".join(encode_response(FMT, t, fields) for t, fields in responses))
    assert [(f.type, decode_payload(FMT, f)) for f in got] == responses


def test_encode_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match=r"^A sample has 6 input values, not 5$"):
        encode_sample(FMT, [0] * 5, 0, True)
    with pytest.raises(ValueError, match=r"^Input value 256 is outside the input format u0\.8 \(0\.\.255\)$"):
        encode_sample(FMT, [0, 0, 256, 0, 0, 0], 0, True)
    with pytest.raises(ValueError, match=r"^Label 65536 does not fit in 2 byte\(s\)$"):
        encode_sample(FMT, [0] * 6, 65536, True)
    with pytest.raises(ValueError, match=r"^Address 512 is outside the 9-bit host address space$"):
        encode_read(FMT, 512)
    with pytest.raises(ValueError, match=r"^Data 2147483648 is outside the signed 32-bit range "
                                         r"-2147483648\.\.2147483647$"):
        encode_write(FMT, 0, 1 << 31)


def _valid_frames(rng, n):
    out = []
    for _ in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:
            out.append(encode_sample(FMT, rng.integers(0, 256, size=6), int(rng.integers(0, 3)), bool(rng.integers(2))))
        elif kind == 1:
            out.append(encode_write(FMT, int(rng.integers(0, 512)), int(rng.integers(-(1 << 31), 1 << 31))))
        elif kind == 2:
            out.append(encode_read(FMT, int(rng.integers(0, 512))))
        else:
            out.append(encode_status(FMT))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decoder_yields_exactly_the_valid_frames(seed):
    """Valid frames in order, separated by random garbage (with flags and escapes),
    truncated frames and frames with flipped bits; fed in random-sized pieces."""
    rng = np.random.default_rng(seed)
    valid = _valid_frames(rng, 60)
    reference = FrameDecoder(FMT, TO_BOARD)
    expected = [reference.feed(f)[0] for f in valid]
    stream, damaged = bytearray(), 0
    for frame in valid:
        what = rng.integers(0, 4)
        if what == 0:
            junk = bytearray(rng.integers(0, 256, size=int(rng.integers(1, 40)), dtype=np.uint8))
            junk[int(rng.integers(len(junk)))] = [FLAG, ESCAPE][int(rng.integers(2))]
            stream += junk
        elif what == 1:
            cut = _valid_frames(rng, 1)[0]
            stream += cut[:int(rng.integers(1, len(cut) - 1))]                      # no closing flag
            damaged += 1
        elif what == 2:
            bad = bytearray(_valid_frames(rng, 1)[0])
            bad[int(rng.integers(1, len(bad) - 1))] ^= 1 << int(rng.integers(8))     # one flipped bit
            stream += bad
            damaged += 1
        stream += frame
    decoder = FrameDecoder(FMT, TO_BOARD)
    got, pos = [], 0
    while pos < len(stream):
        step = int(rng.integers(1, 50))
        got += decoder.feed(bytes(stream[pos:pos + step]))
        pos += step
    assert got == expected
    c = decoder.counters
    assert c["frames_ok"] == len(valid)
    assert c["bad_crc"] + c["bad_frame"] >= damaged


def test_decoder_counters():
    d = FrameDecoder(FMT, TO_BOARD)
    assert d.feed(b"abc") == [] and d.counters["bytes_dropped"] == 3          # no flag yet: hunting
    good = encode_read(FMT, 7)
    assert d.feed(good + good) == [Frame(READ, bytes([7, 0]))] * 2
    d.feed(bytes([FLAG, 1, 2, FLAG]))                                         # runt
    d.feed(bytes([FLAG, READ, ESCAPE, FLAG]))                                 # aborted: escape then flag
    d.feed(bytes([FLAG]) + bytes(40) + bytes([FLAG]))                         # overlong: 14 bytes max
    assert d.counters == {"frames_ok": 2, "bad_crc": 0, "bad_frame": 3, "bytes_dropped": 3 + 40 - 15}
    d.feed(good[:4])
    d.line_error()                                                            # the UART lost a byte
    assert d.feed(good[4:] + good) == [Frame(READ, bytes([7, 0]))]
    assert d.counters["bad_frame"] == 4
    bad = bytearray(good)
    bad[2] ^= 4
    d.feed(bytes(bad))
    assert d.counters["bad_crc"] == 1


# ---- HostClient ---------------------------------------------------------------------------
# the board: the link's receiver, and the golden model in place of the engine
FakeBoard = BoardModel


def test_client_against_a_board_model():
    board = FakeBoard(CFG)
    client = HostClient(board, CFG)
    ref = GoldenModel(CFG)
    rng = np.random.default_rng(3)
    client.write_param("weight", 1, 2, 4, -321)
    client.write_param("bias", 0, 3, 0, 55)
    ref.W[1][2, 4], ref.b[0][3] = -321, 55
    assert client.read_param("weight", 1, 2, 4) == -321
    for _ in range(4):
        x, y = rng.integers(0, 256, size=6), int(rng.integers(0, 3))
        res = client.train(x, y)
        assert res["prediction"] == ref.train_step(x, y)
        assert res["e"] == [int(v) for v in ref.last_error]
        assert res["trained"] and not res["rejected"]
    x = rng.integers(0, 256, size=6)
    assert client.infer(x)["prediction"] == ref.predict(x)
    for (W, b), (Wr, br) in zip(client.read_all_params(), ref.parameters()):
        assert W.dtype == np.int64 and W.shape == Wr.shape and b.shape == br.shape
        assert np.array_equal(W, Wr) and np.array_equal(b, br)
    assert client.read_counters()["samples_trained"] == 4
    assert set(client.read_counters()) == set(COUNTERS)
    status = client.link_status()
    assert set(status) == set(LINK_COUNTERS) and status["bad_crc"] == 0
    assert status["frames_ok"] == board.rx.counters["frames_ok"]
    with pytest.raises(EngineError, match=r"^The engine refused writing 40000 to weight layer 0 \[0, 0\]$"):
        client.write_param("weight", 0, 0, 0, 40000)
    with pytest.raises(ValueError, match=r"^Parameter kind must be 'weight' or 'bias', not 'counter'$"):
        client.read_param("counter", 0, 0, 0)
    board.corrupt = True
    with pytest.raises(LinkError, match=r"^No response to READ \(transport read timed out\)$"):
        client.read_param("bias", 0, 0)
    assert client.decoder_counters["bad_crc"] == 1
    assert client.read_param("bias", 0, 3) == ref.b[0][3]   # the next exchange is unaffected


def test_client_refuses_a_wrong_response():
    class Liar:
        def __init__(self, reply):
            self.reply = reply

        def write(self, data):
            pass

        def read(self, n):
            reply, self.reply = self.reply, b""
            return reply

    with pytest.raises(LinkError, match=r"^No response to STATUS"):
        HostClient(Liar(encode_status(FMT)), CFG).link_status()      # a request, not a response
    mixup = Liar(encode_response(FMT, WRITE_ACK, {"data": 0, "error": False}))
    with pytest.raises(LinkError, match=r"^Expected READ_RESP in response to READ, got "):
        HostClient(mixup, CFG).read_param("weight", 0, 0, 0)


def test_open_serial_without_pyserial(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)
    with pytest.raises(ImportError, match=r"^open_serial needs pyserial: pip install pyserial$"):
        open_serial("/dev/ttyUSB0", 115200)
