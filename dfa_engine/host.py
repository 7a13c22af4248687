"""The host side of the UART link: frame codec, streaming decoder and :class:`HostClient`.

This is the software twin of ``boards/link.py``: both take every type code, field offset
and width from :mod:`dfa_engine.link_format`, and :class:`FrameDecoder` classifies bytes
exactly as the gateware's receiver does (same counters, same order of checks), so a test
can predict the board's link counters from the bytes it sent. ``docs/host_link.md`` is
the written definition of the format.

The protocol is stop-and-wait: :class:`HostClient` sends one frame and reads until its
response arrives before sending the next, so the board never holds more than one frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfa_engine.config import EngineConfig
from dfa_engine.link_format import (
    CRC_BYTES, CRC_INIT, CRC_POLY, ESCAPE, ESCAPE_XOR, FLAG, HEADER_BYTES, LINK_COUNTERS, READ, READ_RESP,
    RESPONSE_ERROR, RESPONSE_TO, RESULT, RESULT_REJECTED, RESULT_TRAINED, SAMPLE, SAMPLE_TRAIN, STATUS,
    STATUS_RESP, TO_HOST, TYPE_NAMES, WRITE, WRITE_ACK, LinkFormat,
)

__all__ = ["crc16", "stuff", "encode_frame", "Frame", "FrameDecoder", "LinkError", "EngineError",
           "encode_sample", "encode_write", "encode_read", "encode_status", "decode_payload",
           "encode_response", "HostClient", "open_serial"]


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, MSB first, no final XOR)."""
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def stuff(body: bytes) -> bytes:
    """Escape every FLAG and ESCAPE byte so that FLAG only marks frame boundaries."""
    out = bytearray()
    for byte in body:
        if byte in (FLAG, ESCAPE):
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def encode_frame(ftype: int, payload: bytes) -> bytes:
    """A whole frame on the wire: FLAG, stuffed(type, length, payload, CRC), FLAG.

    Both flags are always sent: an opening flag ends whatever garbage came before, and the
    empty frame between two adjacent flags is ignored by the receiver."""
    body = bytes((ftype,)) + len(payload).to_bytes(2, "little") + bytes(payload)
    body += crc16(body).to_bytes(CRC_BYTES, "little")
    return bytes((FLAG,)) + stuff(body) + bytes((FLAG,))


@dataclass(frozen=True)
class Frame:
    """A frame whose CRC, type and length were checked."""

    type: int
    payload: bytes

    def __repr__(self):
        return f"Frame({TYPE_NAMES.get(self.type, hex(self.type))}, {self.payload.hex()})"


class FrameDecoder:
    """Streaming receiver: bytes in, valid frames out, in order; garbage only costs counts.

    The same state machine as the gateware's receiver (``boards/link.py``):

    - Until the first FLAG, and after an overlong frame, bytes are dropped
      (``bytes_dropped``) while hunting for a FLAG.
    - FLAG closes the frame being collected and opens the next. An empty frame (two
      adjacent flags) is ignored. Otherwise, in this order: a frame with an error flagged by
      the line (:meth:`line_error`), one closed right after an ESCAPE, or one shorter than
      header and CRC is ``bad_frame``; a CRC mismatch is ``bad_crc``; a length field that
      disagrees with the bytes received, an unknown type or a length that is not the type's
      is ``bad_frame``; anything else is ``frames_ok`` and is returned.
    - A frame longer than the longest valid one is ``bad_frame`` at once, and the decoder
      hunts for the next FLAG.

    Parameters
    ----------
    fmt : LinkFormat
    types : tuple of int
        The frame types this end accepts: :data:`TO_HOST` for a host, :data:`TO_BOARD` to
        model the board's receiver.
    """

    def __init__(self, fmt: LinkFormat, types=TO_HOST):
        self._lengths = {t: fmt.payload_length(t) for t in types}
        self._max_frame = fmt.max_frame(types)
        self.counters = dict.fromkeys(LINK_COUNTERS, 0)
        self._hunting = True
        self._escape = False
        self._poisoned = False
        self._buf = bytearray()

    def line_error(self):
        """The line lost a byte (UART framing error or overrun): the frame being collected,
        if any, is bad."""
        if not self._hunting:
            self._poisoned = True

    def feed(self, data: bytes) -> list:
        """Decode ``data``; returns the valid frames completed by it, in order."""
        frames = []
        for byte in data:
            if byte == FLAG:
                if not self._hunting:
                    frame = self._close()
                    if frame is not None:
                        frames.append(frame)
                self._hunting = False
                self._escape = self._poisoned = False
                self._buf.clear()
            elif self._hunting:
                self.counters["bytes_dropped"] += 1
            elif self._escape or byte != ESCAPE:
                if len(self._buf) == self._max_frame:
                    self.counters["bad_frame"] += 1
                    self._hunting = True
                else:
                    self._buf.append(byte ^ ESCAPE_XOR if self._escape else byte)
                self._escape = False
            else:
                self._escape = True
        return frames

    def _close(self):
        buf, c = self._buf, self.counters
        if not buf and not self._poisoned and not self._escape:
            return None
        if self._poisoned or self._escape or len(buf) < HEADER_BYTES + CRC_BYTES:
            c["bad_frame"] += 1
            return None
        if crc16(buf[:-CRC_BYTES]) != int.from_bytes(buf[-CRC_BYTES:], "little"):
            c["bad_crc"] += 1
            return None
        ftype, length = buf[0], int.from_bytes(buf[1:3], "little")
        if len(buf) != HEADER_BYTES + length + CRC_BYTES or self._lengths.get(ftype) != length:
            c["bad_frame"] += 1
            return None
        c["frames_ok"] += 1
        return Frame(ftype, bytes(buf[HEADER_BYTES:-CRC_BYTES]))


class LinkError(RuntimeError):
    """The link misbehaved: no response, or a response of the wrong type."""


class EngineError(RuntimeError):
    """The engine refused a host access (an address outside its map, a read-only counter,
    a value outside the parameter's format)."""


# ---- payloads -------------------------------------------------------------------------
def _int_bytes(value: int, size: int, signed: bool, what: str) -> bytes:
    try:
        return int(value).to_bytes(size, "little", signed=signed)
    except OverflowError:
        raise ValueError(f"{what} {value!r} does not fit in {size} byte(s)") from None


def encode_sample(fmt: LinkFormat, x_raw, label: int, train: bool) -> bytes:
    """A SAMPLE frame: ``n_0`` raw input values (checked against the input format)."""
    x = [int(v) for v in np.asarray(x_raw).reshape(-1)]
    f = fmt.input_format
    if len(x) != fmt.n_inputs:
        raise ValueError(f"A sample has {fmt.n_inputs} input values, not {len(x)}")
    bad = [v for v in x if not f.min_raw <= v <= f.max_raw]
    if bad:
        raise ValueError(f"Input value {bad[0]} is outside the input format {f} ({f.min_raw}..{f.max_raw})")
    if not 0 <= int(label) < (1 << (8 * fmt.label_bytes)):
        raise ValueError(f"Label {label!r} does not fit in {fmt.label_bytes} byte(s)")
    payload = bytes((SAMPLE_TRAIN if train else 0,)) + int(label).to_bytes(fmt.label_bytes, "little")
    payload += b"".join(v.to_bytes(fmt.input_bytes, "little", signed=f.signed) for v in x)
    return encode_frame(SAMPLE, payload)


def _check_address(fmt: LinkFormat, address: int):
    if not 0 <= address < (1 << fmt.address_width):
        raise ValueError(f"Address {address!r} is outside the {fmt.address_width}-bit host address space")


def encode_write(fmt: LinkFormat, address: int, data: int) -> bytes:
    _check_address(fmt, address)
    lo, hi = -(1 << (fmt.data_width - 1)), (1 << (fmt.data_width - 1)) - 1
    if not lo <= data <= hi:
        raise ValueError(f"Data {data!r} is outside the signed {fmt.data_width}-bit range {lo}..{hi}")
    return encode_frame(WRITE, address.to_bytes(fmt.address_bytes, "little")
                        + data.to_bytes(fmt.data_bytes, "little", signed=True))


def encode_read(fmt: LinkFormat, address: int) -> bytes:
    _check_address(fmt, address)
    return encode_frame(READ, address.to_bytes(fmt.address_bytes, "little"))


def encode_status(fmt: LinkFormat) -> bytes:
    return encode_frame(STATUS, b"")


def decode_payload(fmt: LinkFormat, frame: Frame) -> dict:
    """The fields of a response frame, as Python ints (signed where the field is)."""
    p = frame.payload

    def get(name, signed=False, index=0):
        fld = fmt.field(frame.type, name)
        start = fld.offset + index * fld.size
        return int.from_bytes(p[start:start + fld.size], "little", signed=signed)

    if frame.type == RESULT:
        flags = get("flags")
        return {"prediction": get("prediction"),
                "e": [get("e", fmt.error_format.signed, c) for c in range(fmt.n_classes)],
                "trained": bool(flags & RESULT_TRAINED), "rejected": bool(flags & RESULT_REJECTED)}
    if frame.type in (WRITE_ACK, READ_RESP):
        return {"data": get("data", signed=True), "error": bool(get("flags") & RESPONSE_ERROR)}
    if frame.type == STATUS_RESP:
        return {name: get(name) for name in LINK_COUNTERS}
    raise ValueError(f"Frame type {frame.type:#04x} is not a response")


def encode_response(fmt: LinkFormat, ftype: int, fields: dict) -> bytes:
    """A board-to-host frame from the fields :func:`decode_payload` returns (for models of
    the board in tests)."""
    out = bytearray(fmt.payload_length(ftype))

    def put(name, value, signed=False, index=0):
        fld = fmt.field(ftype, name)
        start = fld.offset + index * fld.size
        out[start:start + fld.size] = int(value).to_bytes(fld.size, "little", signed=signed)

    if ftype == RESULT:
        put("prediction", fields["prediction"])
        for c, v in enumerate(fields["e"]):
            put("e", v, fmt.error_format.signed, c)
        put("flags", (RESULT_TRAINED if fields["trained"] else 0) | (RESULT_REJECTED if fields["rejected"] else 0))
    elif ftype in (WRITE_ACK, READ_RESP):
        put("data", fields["data"], signed=True)
        put("flags", RESPONSE_ERROR if fields["error"] else 0)
    elif ftype == STATUS_RESP:
        for name in LINK_COUNTERS:
            put(name, fields[name])
    else:
        raise ValueError(f"Frame type {ftype:#04x} is not a response")
    return encode_frame(ftype, bytes(out))


# ---- the client -------------------------------------------------------------------------
class HostClient:
    """Train, infer and read or write parameters of a board over its host link.

    Parameters
    ----------
    transport
        Any object with ``write(bytes)`` and ``read(n) -> bytes`` (a ``serial.Serial``; see
        :func:`open_serial`). ``read`` returning ``b""`` means a timeout.
    cfg : EngineConfig
        The configuration the board was built from (it fixes every field width).
    """

    def __init__(self, transport, cfg: EngineConfig):
        self._transport = transport
        self.cfg = cfg
        self.fmt = LinkFormat(cfg)
        self._decoder = FrameDecoder(self.fmt, TO_HOST)

    @property
    def decoder_counters(self) -> dict:
        """This end's receive counters (responses damaged on the way back)."""
        return dict(self._decoder.counters)

    def transact(self, ftype: int, frame: bytes) -> dict:
        """Send one encoded request of type ``ftype`` and return its decoded response
        (stop and wait).

        Raises :class:`LinkError` when the transport times out (the request or its response
        was damaged: resending is safe except for a SAMPLE, see ``docs/host_link.md``) or
        when something other than the one expected response arrives. A response that
        arrives after its timeout would be taken for the next request's, so after a
        ``LinkError`` empty the transport (``serial.Serial.reset_input_buffer``) first."""
        want = RESPONSE_TO[ftype]
        self._transport.write(frame)
        while True:
            waiting = getattr(self._transport, "in_waiting", 0) or 1
            data = self._transport.read(waiting)
            if not data:
                raise LinkError(f"No response to {TYPE_NAMES[ftype]} (transport read timed out)")
            frames = self._decoder.feed(data)
            if frames:
                # Stop and wait: one request in flight, so one frame answers it.
                if len(frames) > 1 or frames[0].type != want:
                    raise LinkError(f"Expected {TYPE_NAMES[want]} in response to {TYPE_NAMES[ftype]}, got {frames}")
                return decode_payload(self.fmt, frames[0])

    # ---- samples ------------------------------------------------------------------
    def train(self, x_raw, label: int) -> dict:
        """Train on one sample; returns ``{prediction, e, trained, rejected}`` (``e`` raw)."""
        return self.transact(SAMPLE, encode_sample(self.fmt, x_raw, label, train=True))

    def infer(self, x_raw) -> dict:
        """Forward pass only; the result's ``e`` is computed against label 0."""
        return self.transact(SAMPLE, encode_sample(self.fmt, x_raw, 0, train=False))

    # ---- host port ---------------------------------------------------------------
    def request(self, address: int, write: bool = False, data: int = 0) -> dict:
        """One raw host-port access: ``{data, error}``."""
        if write:
            return self.transact(WRITE, encode_write(self.fmt, address, data))
        return self.transact(READ, encode_read(self.fmt, address))

    def _address(self, kind, layer, row, col):
        from dfa_engine.hdl.engine import host_address

        if kind not in ("weight", "bias"):
            raise ValueError(f"Parameter kind must be 'weight' or 'bias', not {kind!r}")
        return host_address(self.cfg, kind, layer, row, col)

    def write_param(self, kind: str, layer: int, row: int, col: int, value: int) -> None:
        """Write one raw weight (``kind="weight"``) or bias (``"bias"``, ``col`` 0)."""
        resp = self.request(self._address(kind, layer, row, col), True, int(value))
        if resp["error"]:
            raise EngineError(f"The engine refused writing {value} to {kind} layer {layer} [{row}, {col}]")

    def read_param(self, kind: str, layer: int, row: int, col: int = 0) -> int:
        resp = self.request(self._address(kind, layer, row, col))
        if resp["error"]:
            raise EngineError(f"The engine refused reading {kind} layer {layer} [{row}, {col}]")
        return resp["data"]

    def read_counters(self) -> dict:
        """The engine's counters (``dfa_engine.hdl.engine.COUNTERS``)."""
        from dfa_engine.hdl.engine import COUNTERS, host_address

        return {name: self.request(host_address(self.cfg, "counter", counter=name))["data"] for name in COUNTERS}

    def link_status(self) -> dict:
        """The board's link counters (``LINK_COUNTERS``); ``frames_ok`` counts this request."""
        return self.transact(STATUS, encode_status(self.fmt))

    def read_all_params(self) -> list:
        """Every weight and bias, as ``[(W, b)]`` int64 arrays shaped like the golden model's."""
        out = []
        for layer in range(self.cfg.n_layers):
            n_out, n_in = self.cfg.layers[layer + 1], self.cfg.layers[layer]
            W = np.zeros((n_out, n_in), dtype=np.int64)
            b = np.zeros(n_out, dtype=np.int64)
            for i in range(n_out):
                for j in range(n_in):
                    W[i, j] = self.read_param("weight", layer, i, j)
                b[i] = self.read_param("bias", layer, i)
            out.append((W, b))
        return out

    def write_all_params(self, params) -> None:
        """Load ``[(W, b)]`` (e.g. a golden model's initial parameters) into the board."""
        for layer, (W, b) in enumerate(params):
            for i in range(W.shape[0]):
                for j in range(W.shape[1]):
                    self.write_param("weight", layer, i, j, int(W[i, j]))
                self.write_param("bias", layer, i, 0, int(b[i]))


def open_serial(port: str, baud: int = 115200, timeout: float = 1.0):
    """Open a serial port for :class:`HostClient` (``pyserial``, imported only here)."""
    try:
        import serial
    except ImportError:
        raise ImportError("open_serial needs pyserial: pip install pyserial") from None
    return serial.Serial(port, baudrate=baud, timeout=timeout)

