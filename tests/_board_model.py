"""A model of a board for host-side tests: the link's receiver (``FrameDecoder`` with the
board's frame types) and the golden model in place of the engine.

:class:`BoardModel` is a transport (``write``/``read``) that answers like a board;
:func:`serve_pty` runs one on the master side of a pseudo-terminal, so that a real
``serial.Serial`` (``dfa-engine train --port``) can talk to it.
"""

from __future__ import annotations

import os
import select
import threading

import numpy as np

from dfa_engine.hdl.engine import COUNTERS, address_layout
from dfa_engine.host import FrameDecoder, encode_response
from dfa_engine.link_format import READ, READ_RESP, RESULT, SAMPLE, STATUS_RESP, TO_BOARD, WRITE, WRITE_ACK, LinkFormat
from dfa_engine.sim.golden import GoldenModel


class BoardModel:
    """Answers every valid request as the engine behind ``boards/link.py`` does (the
    engine's refusals and counters included). ``corrupt`` damages the next response on its
    way back."""

    def __init__(self, cfg):
        self.cfg, self.fmt = cfg, LinkFormat(cfg)
        self.golden = GoldenModel(cfg)
        self.rx = FrameDecoder(self.fmt, TO_BOARD)
        self.out = bytearray()
        self.corrupt = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.fields = address_layout(cfg, cfg.lanes)

    def _field(self, frame, name, signed=False, index=0):
        fld = self.fmt.field(frame.type, name)
        start = fld.offset + index * fld.size
        return int.from_bytes(frame.payload[start:start + fld.size], "little", signed=signed)

    def _decode_address(self, address):
        """(kind, layer, row, column) of a weight or bias; (2, counter index) of a counter."""
        vals, off = {}, 0
        for name, width in self.fields.items():
            vals[name] = (address >> off) & ((1 << width) - 1)
            off += width
        if vals["kind"] == 2:
            return 2, address & ((1 << (off - self.fields["kind"])) - 1)
        return vals["kind"], vals["layer"], vals["group"] * self.cfg.lanes + vals["lane"], vals["column"]

    def _sample(self, frame):
        cfg, c = self.cfg, self.counters
        x = [self._field(frame, "x", self.fmt.input_format.signed, j) for j in range(self.fmt.n_inputs)]
        label, train = self._field(frame, "label"), bool(self._field(frame, "flags") & 1)
        c["samples_received"] += 1
        label_ok = label < cfg.n_classes
        if train and label_ok:
            pred = self.golden.train_step(x, label)
            e = self.golden.last_error
            c["samples_trained"] += 1
        else:
            y = self.golden.forward(x)[0][-1]
            pred, e = int(np.argmax(y)), self.golden.output_error(y, 0)
            c["samples_inferred" if label_ok else "rejected_labels"] += 1
        return encode_response(self.fmt, RESULT, {"prediction": pred, "e": [int(v) for v in e],
                                                  "trained": train and label_ok, "rejected": not label_ok})

    def _access(self, frame):
        cfg, c = self.cfg, self.counters
        where = self._decode_address(self._field(frame, "address"))
        write = frame.type == WRITE
        value, error = 0, False
        if where[0] == 2:
            if write or where[1] >= len(COUNTERS):
                error = True
            else:
                value = c[COUNTERS[where[1]]]
        elif where[0] == 3:
            error = True
        else:
            kind, layer, row, col = where
            if layer >= cfg.n_layers or row >= cfg.layers[layer + 1] or (kind == 0 and col >= cfg.layers[layer]) \
                    or (kind == 1 and col != 0):
                error = True
            elif write:
                value = self._field(frame, "data", signed=True)
                # write_parameter keeps the golden model's float copy in step
                error = not self.golden.write_parameter("weight" if kind == 0 else "bias", layer, row, col, value)
            else:
                value = int(self.golden.W[layer][row, col] if kind == 0 else self.golden.b[layer][row])
        if error:
            c["rejected_addresses"] += 1
            value = 0
        return encode_response(self.fmt, WRITE_ACK if write else READ_RESP, {"data": value, "error": error})

    def write(self, data):
        for frame in self.rx.feed(data):
            if frame.type == SAMPLE:
                resp = self._sample(frame)
            elif frame.type in (WRITE, READ):
                resp = self._access(frame)
            else:
                resp = encode_response(self.fmt, STATUS_RESP, self.rx.counters)
            if self.corrupt:
                resp = resp[:3] + bytes([resp[3] ^ 1]) + resp[4:]
                self.corrupt = False
            self.out += resp
        return len(data)

    def read(self, n):
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data


def serve_pty(board: BoardModel | None):
    """Open a pseudo-terminal pair and serve ``board`` on its master side in a thread
    (``None``: a board that never answers). Returns ``(path of the slave side, stop)``;
    call ``stop()`` to end the thread and close both sides."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    done = threading.Event()

    def serve():
        while not done.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:          # the other side closed: wait for stop()
                done.wait(0.05)
                continue
            if board is not None:
                board.write(data)
                reply = board.read(len(board.out))
                while reply:
                    reply = reply[os.write(master, reply):]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join()
        os.close(master)
        os.close(slave)

    return path, stop
