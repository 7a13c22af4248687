"""The host link's frame format: type codes, byte layouts and counters, in one place.

Both ends of the link import this module: the gateware (``boards/link.py``) slices its
receive registers and builds its responses from these offsets, and the Python host
(``dfa_engine/host.py``) packs and unpacks the same fields. A layout changed here changes
on both sides at once; nothing else spells a type code or a field width.
``docs/host_link.md`` is the written definition.

A frame on the wire::

    FLAG  stuffed( type | length (2, LE) | payload (length bytes) | CRC-16 (2, LE) )  FLAG

``FLAG`` (0x7E) only ever appears as a frame boundary: inside a frame, 0x7E and 0x7D are
sent as ``ESCAPE, byte ^ ESCAPE_XOR``. The CRC is CRC-16/CCITT-FALSE over type, length
and payload (unstuffed). Every multi-byte field is little-endian; signed fields are two's
complement, sign-extended to their byte width.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfa_engine.config import EngineConfig
# the engine's ports are defined once, in hdl/engine.py; re-exported here for the host side
from dfa_engine.hdl.engine import LABEL_BITS, engine_signature, host_data_width

__all__ = [
    "FLAG", "ESCAPE", "ESCAPE_XOR", "CRC_POLY", "CRC_INIT", "HEADER_BYTES", "CRC_BYTES",
    "SAMPLE", "WRITE", "READ", "STATUS", "RESULT", "WRITE_ACK", "READ_RESP", "STATUS_RESP",
    "TO_BOARD", "TO_HOST", "RESPONSE_TO", "TYPE_NAMES",
    "SAMPLE_TRAIN", "RESULT_TRAINED", "RESULT_REJECTED", "RESPONSE_ERROR",
    "LABEL_BITS", "COUNTER_BYTES", "LINK_COUNTERS",
    "Field", "LinkFormat", "host_data_width", "engine_signature",
]

# ---- framing --------------------------------------------------------------------------
FLAG = 0x7E
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
CRC_POLY = 0x1021          # CRC-16/CCITT-FALSE: not reflected, no final XOR
CRC_INIT = 0xFFFF
HEADER_BYTES = 3           # type, length (2)
CRC_BYTES = 2

# ---- frame types ----------------------------------------------------------------------
# Host to board. A response's type is its request's type with bit 7 set.
SAMPLE = 0x01
WRITE = 0x02
READ = 0x03
STATUS = 0x04
# Board to host.
RESULT = 0x81
WRITE_ACK = 0x82
READ_RESP = 0x83
STATUS_RESP = 0x84

TO_BOARD = (SAMPLE, WRITE, READ, STATUS)
TO_HOST = (RESULT, WRITE_ACK, READ_RESP, STATUS_RESP)
RESPONSE_TO = {SAMPLE: RESULT, WRITE: WRITE_ACK, READ: READ_RESP, STATUS: STATUS_RESP}
TYPE_NAMES = {SAMPLE: "SAMPLE", WRITE: "WRITE", READ: "READ", STATUS: "STATUS", RESULT: "RESULT",
              WRITE_ACK: "WRITE_ACK", READ_RESP: "READ_RESP", STATUS_RESP: "STATUS_RESP"}

# ---- flag bits in the payloads ----------------------------------------------------------
SAMPLE_TRAIN = 0x01        # SAMPLE flags: train on this sample (else infer)
RESULT_TRAINED = 0x01      # RESULT flags
RESULT_REJECTED = 0x02
RESPONSE_ERROR = 0x01      # WRITE_ACK / READ_RESP flags: the engine refused the access

#: Width of the engine's label field (``Engine.sample.payload.label``).
COUNTER_BYTES = 4
#: The link's own counters, in STATUS_RESP order (``docs/host_link.md`` defines each).
LINK_COUNTERS = ("frames_ok", "bad_crc", "bad_frame", "bytes_dropped")


def _bytes(width: int) -> int:
    return -(-width // 8)


def _bits(n: int) -> int:
    """Bits to hold 0 .. n - 1 (at least 1), as the engine sizes its prediction."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class Field:
    """``count`` elements of ``size`` bytes each, starting ``offset`` bytes into the payload."""

    name: str
    offset: int
    size: int
    count: int = 1

    @property
    def end(self) -> int:
        return self.offset + self.size * self.count


class LinkFormat:
    """The byte layout of every frame type for one :class:`EngineConfig`.

    The widths come from the configuration: an input value takes ``ceil(input_width / 8)``
    bytes, an error ``ceil(error_width / 8)``, an address and a data word as many bytes as
    the engine's host port needs.

    Parameters
    ----------
    cfg : EngineConfig
    """

    def __init__(self, cfg: EngineConfig):
        from dfa_engine.hdl.family import check_engine_config_type, engine_family

        check_engine_config_type(cfg)
        fam = engine_family(cfg)

        f = cfg.formats
        self.cfg = cfg
        self.n_inputs = fam.n_inputs(cfg)
        self.n_classes = cfg.n_classes
        self.input_format = f.input
        self.error_format = f.error
        self.address_width = fam.signature(cfg).members["host_req"].signature.members["payload"].shape["address"].width
        self.data_width = host_data_width(cfg)
        self.prediction_width = _bits(cfg.n_classes)
        self.input_bytes = _bytes(f.input.width)
        self.error_bytes = _bytes(f.error.width)
        self.label_bytes = _bytes(LABEL_BITS)
        self.address_bytes = _bytes(self.address_width)
        self.data_bytes = _bytes(self.data_width)
        self.prediction_bytes = _bytes(self.prediction_width)

        def layout(*fields):
            out, offset = [], 0
            for name, size, count in fields:
                out.append(Field(name, offset, size, count))
                offset += size * count
            return tuple(out)

        self._fields = {
            SAMPLE: layout(("flags", 1, 1), ("label", self.label_bytes, 1), ("x", self.input_bytes, self.n_inputs)),
            WRITE: layout(("address", self.address_bytes, 1), ("data", self.data_bytes, 1)),
            READ: layout(("address", self.address_bytes, 1)),
            STATUS: (),
            RESULT: layout(("prediction", self.prediction_bytes, 1), ("e", self.error_bytes, self.n_classes),
                           ("flags", 1, 1)),
            WRITE_ACK: layout(("data", self.data_bytes, 1), ("flags", 1, 1)),
            READ_RESP: layout(("data", self.data_bytes, 1), ("flags", 1, 1)),
            STATUS_RESP: layout(*((name, COUNTER_BYTES, 1) for name in LINK_COUNTERS)),
        }

    def fields(self, ftype: int) -> tuple:
        """The payload fields of frame type ``ftype``, in order."""
        return self._fields[ftype]

    def field(self, ftype: int, name: str) -> Field:
        for fld in self._fields[ftype]:
            if fld.name == name:
                return fld
        raise KeyError(f"{TYPE_NAMES[ftype]} has no field {name!r}")

    def payload_length(self, ftype: int) -> int:
        """The only payload length a frame of type ``ftype`` may have."""
        fields = self._fields[ftype]
        return fields[-1].end if fields else 0

    def max_payload(self, types) -> int:
        return max(self.payload_length(t) for t in types)

    def max_frame(self, types) -> int:
        """Unstuffed bytes of the longest frame of ``types`` (header, payload, CRC): a frame
        with more bytes is overlong and dropped before its closing flag."""
        return HEADER_BYTES + self.max_payload(types) + CRC_BYTES


