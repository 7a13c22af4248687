"""The host link: framed bytes from the host in, the engine's four streams out, and back.

A byte stream pair (a UART's, ``boards/uart.py``) carries HDLC-style frames
(``docs/host_link.md``; every code and offset comes from :mod:`dfa_engine.link_format`,
the same module the Python host uses). This block checks each frame and runs it on an
:class:`~dfa_engine.hdl.engine.Engine` through the engine's own streams:

``SAMPLE``  buffered whole, then streamed to ``engine.sample``; the ``engine.result`` transfer
            becomes a RESULT frame;
``WRITE``, ``READ``  one ``engine.host_req`` transfer; the ``engine.host_resp`` transfer becomes
            a WRITE_ACK or READ_RESP frame;
``STATUS``  answered here with the link counters.

Why a SAMPLE is buffered: the engine starts training on the first value it is given, and
a sample cannot be taken back. Only a frame whose CRC, type and length are all right may
reach the engine, so the ``n_0`` values wait in a memory until the closing flag has been
checked. The buffer (and every field register) is written while the frame arrives and read
only after it was accepted; a bad frame only leaves stale contents that the next good
frame of the same type overwrites completely, because its length is checked. That is what
makes a bad frame harmless to the next good one.

Flow control is stop and wait: the host sends a frame, then waits for its response. While
a frame executes, ``rx.ready`` is low. A byte stream that can wait (a FIFO, a testbench)
just waits; a UART cannot, and a host that broke stop and wait would overrun the UART
receiver, whose ``overrun`` strobe (``rx_error``) spoils the frame that was arriving so
that it is counted and dropped rather than executed with a missing byte.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from dfa_engine.config import EngineConfig
from dfa_engine.hdl.family import engine_family
from dfa_engine.link_format import (
    CRC_BYTES, CRC_INIT, CRC_POLY, ESCAPE, ESCAPE_XOR, FLAG, HEADER_BYTES, LINK_COUNTERS, READ, READ_RESP,
    RESPONSE_ERROR, RESULT, RESULT_REJECTED, RESULT_TRAINED, SAMPLE, SAMPLE_TRAIN, STATUS, STATUS_RESP,
    TO_BOARD, TO_HOST, WRITE, WRITE_ACK, LinkFormat,
)

__all__ = ["HostLink", "crc16_step"]


def _crc16_terms():
    """For each bit of the next CRC register, the register and data bits it is the XOR of.

    The eight shift-and-conditionally-XOR steps are run symbolically here, over sets of
    bit names (a set's symmetric difference is an XOR), so the logic is one flat XOR per
    bit. Chaining the eight steps as expressions instead would reuse every intermediate
    value twice, and the backend, which does not share subexpressions, would emit
    thousands of cells for them."""
    reg = [{("crc", i)} for i in range(16)]
    for k in range(7, -1, -1):
        feedback = reg[15] ^ {("byte", k)}
        reg = [set()] + reg[:15]
        reg = [bits ^ feedback if (CRC_POLY >> i) & 1 else bits for i, bits in enumerate(reg)]
    return [sorted(bits) for bits in reg]


_CRC16_TERMS = _crc16_terms()


def crc16_step(crc, byte):
    """CRC-16/CCITT-FALSE register after one more byte (MSB first), as combinational logic."""
    operands = {"crc": crc, "byte": byte}
    out = []
    for terms in _CRC16_TERMS:
        value = Const(0, 1)
        for name, i in terms:
            value = value ^ operands[name][i]
        out.append(value)
    return Cat(*out)


class HostLink(wiring.Component):
    """Frame receiver, executor and transmitter between a byte stream pair and an engine.

    Parameters
    ----------
    cfg : EngineConfig
        The engine's configuration: it fixes the fields' widths (:class:`LinkFormat`).

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host (``UARTRx.o``). Not ready while a frame executes.
    rx_error : In(1)
        Strobe: the line lost a byte (``UARTRx.framing_error | UARTRx.overrun``). The frame
        being received, if any, is counted as ``bad_frame`` and dropped.
    tx : Out(stream.Signature(8))
        Bytes to the host (``UARTTx.i``).
    engine : In(the engine's signature, ``hdl/family.py``)
        The engine's four streams, flipped: ``wiring.connect(m, link.engine, engine)``.
    counters : Out(StructLayout{frames_ok, bad_crc, bad_frame, bytes_dropped: 32 each})
        The link counters (``docs/host_link.md``), also sent in STATUS_RESP. They wrap.
    """

    def __init__(self, cfg: EngineConfig):
        self._fmt = LinkFormat(cfg)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "rx_error": In(1),
            "tx": Out(stream.Signature(8)),
            "engine": In(engine_family(cfg).signature(cfg)),
            "counters": Out(data.StructLayout({name: 32 for name in LINK_COUNTERS})),
        })

    @property
    def format(self):
        return self._fmt

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        eng = self.engine
        cnt = self.counters
        max_frame = fmt.max_frame(TO_BOARD)
        n0, ib = fmt.n_inputs, fmt.input_bytes
        x_field = fmt.field(SAMPLE, "x")
        # Scalar payload bytes (all but the sample's values) are kept in one register.
        scal_bytes = max(x_field.offset, *(fmt.payload_length(t) for t in (WRITE, READ, STATUS)))
        resp_bytes = HEADER_BYTES + fmt.max_payload(TO_HOST)

        # ---- receiver -----------------------------------------------------------------
        hunting = Signal(init=1)           # dropping bytes until a FLAG
        escape = Signal()                  # the last byte was ESCAPE
        poisoned = Signal()                # the line lost a byte of this frame
        count = Signal(range(max_frame + 1))
        ftype = Signal(8)
        flen = Signal(16)
        crc = Signal(16, init=CRC_INIT)    # over all bytes but the last two
        last2 = Signal(16)                 # the last two bytes: the CRC field, once the frame ends
        scal = Signal(8 * scal_bytes)
        vbyte = Signal(range(max(ib, 2)))  # byte within the input value being received
        vidx = Signal(range(n0 + 1))       # index of that value
        vacc = Signal(8 * ib)
        # Comparisons of count with constants, kept in registers beside it (set where count
        # is): a byte's field is chosen without a subtraction or a comparison chain after
        # the byte arrives (that path was the UP5K build's critical one).
        crc_on = Signal()                  # count >= 2: the CRC runs two bytes behind
        in_x = Signal()                    # count >= HEADER_BYTES + the sample values' offset

        m.submodules.x_buf = x_buf = memory.Memory(shape=unsigned(fmt.input_format.width), depth=n0, init=[])
        x_wr = x_buf.write_port()
        x_rd = x_buf.read_port()

        # high outside IDLE: a register beside the FSM's state (set where IDLE is left,
        # cleared where it is entered), so that rx.ready is a register output (decoding
        # the state began the UP5K build's critical path, through the receiver)
        busy = Signal()
        # The receiver works on the byte taken the cycle before (and the line error of that
        # cycle), with its FLAG and ESCAPE comparisons already made: from the UART's byte
        # register to the frame's field registers in one cycle was the UP5K build's
        # critical path. While that byte is a FLAG (it may start a frame) nothing is taken.
        ev_valid, ev_flag, ev_escape, ev_error = Signal(), Signal(), Signal(), Signal()
        byte = Signal(8)
        m.d.comb += self.rx.ready.eq(~busy & ~(ev_valid & ev_flag))
        m.d.sync += [ev_valid.eq(self.rx.valid & self.rx.ready), byte.eq(self.rx.payload),
                     ev_flag.eq(self.rx.payload == FLAG), ev_escape.eq(self.rx.payload == ESCAPE),
                     ev_error.eq(self.rx_error)]
        d = Signal(8)                      # a payload byte, unstuffed
        d_valid = Signal()
        start = Signal()                   # a frame passed every check: execute it

        n = count
        crc_ok = crc == last2
        frame_end = Signal(17)             # flen + header + CRC, summed when flen arrives
        # The frame's checks come from registers, so that closing a frame is a few gates
        # (in one cycle with the comparisons it was the UP5K build's critical path):
        # len_ok is set with the byte that makes count == frame_end (frame_end is at least
        # HEADER + CRC, and exact from the third byte on, before any count could reach
        # it); type_ok follows ftype and flen a cycle behind (a frame is checked only
        # when it has HEADER + CRC bytes, two after the length).
        len_ok = Signal()
        type_ok = Signal()
        type_match = Const(0)
        for t in TO_BOARD:
            type_match = type_match | ((ftype == t) & (flen == fmt.payload_length(t)))
        m.d.sync += type_ok.eq(type_match)

        with m.If(ev_error & ~hunting):
            m.d.sync += poisoned.eq(1)
        with m.If(ev_valid):
            with m.If(ev_flag):
                # Close the frame being collected (the order of checks is FrameDecoder's).
                with m.If(~hunting & ((n != 0) | poisoned | escape)):
                    with m.If(poisoned | escape | (n < HEADER_BYTES + CRC_BYTES)):
                        m.d.sync += cnt.bad_frame.eq(cnt.bad_frame + 1)
                    with m.Elif(~crc_ok):
                        m.d.sync += cnt.bad_crc.eq(cnt.bad_crc + 1)
                    with m.Elif(~len_ok | ~type_ok):
                        m.d.sync += cnt.bad_frame.eq(cnt.bad_frame + 1)
                    with m.Else():
                        m.d.sync += cnt.frames_ok.eq(cnt.frames_ok + 1)
                        m.d.comb += start.eq(1)
                # ... and open the next.
                m.d.sync += [hunting.eq(0), escape.eq(0), poisoned.eq(0), count.eq(0), len_ok.eq(0), crc_on.eq(0),
                             in_x.eq(0),
                             crc.eq(CRC_INIT),
                             vbyte.eq(0), vidx.eq(0)]
            with m.Elif(hunting):
                m.d.sync += cnt.bytes_dropped.eq(cnt.bytes_dropped + 1)
            with m.Elif(escape | ~ev_escape):
                m.d.sync += escape.eq(0)
                m.d.comb += [d_valid.eq(1), d.eq(Mux(escape, byte ^ ESCAPE_XOR, byte))]
            with m.Else():
                m.d.sync += escape.eq(1)

        with m.If(d_valid):
            with m.If(count == max_frame):
                # Overlong: no valid frame is this long. Drop the rest up to the next FLAG.
                m.d.sync += [cnt.bad_frame.eq(cnt.bad_frame + 1), hunting.eq(1)]
            with m.Else():
                m.d.sync += [count.eq(count + 1), len_ok.eq(count + 1 == frame_end), last2.eq(Cat(last2[8:], d)),
                             crc_on.eq(count != 0), in_x.eq(count >= HEADER_BYTES + x_field.offset - 1)]
                with m.If(crc_on):
                    m.d.sync += crc.eq(crc16_step(crc, last2[:8]))
                with m.Switch(count):
                    with m.Case(0):
                        m.d.sync += ftype.eq(d)
                    with m.Case(1):
                        m.d.sync += flen[:8].eq(d)
                    with m.Case(2):
                        m.d.sync += [flen[8:].eq(d), frame_end.eq(Cat(flen[:8], d) + (HEADER_BYTES + CRC_BYTES))]
                # Payload bytes go to their field as they arrive, whatever the frame turns
                # out to be (a bad frame's leftovers are never read, see the module docstring).
                # The CRC bytes land here too, past the end of the payload.
                with m.If((ftype == SAMPLE) & in_x):
                    with m.If(vbyte == ib - 1):
                        with m.If(vidx < n0):
                            m.d.comb += [x_wr.en.eq(1), x_wr.addr.eq(vidx),
                                         x_wr.data.eq(Cat(vacc[:8 * (ib - 1)], d))]
                            m.d.sync += vidx.eq(vidx + 1)
                        m.d.sync += vbyte.eq(0)
                    with m.Else():
                        m.d.sync += [vacc.word_select(vbyte, 8).eq(d), vbyte.eq(vbyte + 1)]
                with m.Else():
                    with m.Switch(count):
                        for k in range(scal_bytes):
                            with m.Case(HEADER_BYTES + k):
                                m.d.sync += scal[8 * k:8 * (k + 1)].eq(d)

        def scal_field(ftype_, name):
            fld = fmt.field(ftype_, name)
            return scal[8 * fld.offset:8 * fld.end]

        # ---- responses --------------------------------------------------------------------
        resp = Signal(8 * resp_bytes)      # type, length, payload of the response frame
        resp_len = Signal(range(resp_bytes + 1))

        def header(ftype_):
            length = fmt.payload_length(ftype_)
            return [resp[:8].eq(ftype_), resp[8:24].eq(length), resp_len.eq(HEADER_BYTES + length)]

        def put(ftype_, name, value, index=0):
            fld = fmt.field(ftype_, name)
            start_ = 8 * (HEADER_BYTES + fld.offset + index * fld.size)
            return resp[start_:start_ + 8 * fld.size].eq(value)   # sign-extends signed values

        # WRITE_ACK and READ_RESP share one layout: one set of statements serves both.
        assert fmt.fields(WRITE_ACK) == fmt.fields(READ_RESP)

        def host_response(data_, error):
            return header(READ_RESP) + [resp[:8].eq(Mux(is_write, WRITE_ACK, READ_RESP)),
                                        put(READ_RESP, "data", data_),
                                        put(READ_RESP, "flags", Mux(error, RESPONSE_ERROR, 0))]

        # ---- executor and transmitter -------------------------------------------------------
        is_write = Signal()
        tx_raw = Signal(8)
        x_next = Signal(range(n0 + 1))
        tx_left = Signal(range(resp_bytes + 1))    # body bytes left after the current one
        tx_phase = Signal(2)                        # 0 body, 1 CRC low byte, 2 CRC high byte
        tx_crc = Signal(16)
        tx_esc = Signal()                  # the ESCAPE went out; the escaped byte is next
        tx_loaded = Signal()               # tx_byte holds the next body or CRC byte
        tx_byte = Signal(8)                # ... and whether it must be stuffed
        tx_stuff = Signal()

        # A request the engine must not see: address bits above the engine's address width,
        # or data that does not fit its data word. Truncating them would alias a refused
        # access onto a valid one.
        addr = scal_field(WRITE, "address")
        wdata = scal_field(WRITE, "data")
        assert fmt.field(READ, "address") == fmt.field(WRITE, "address")
        top = wdata[fmt.data_width - 1:]
        req_ok = ((addr[fmt.address_width:] == 0)
                  & (~is_write | (top == 0) | (top == (1 << len(top)) - 1)))

        # The request's payload straight from the frame's registers, whatever the state
        # (only valid depends on it): no path from the state through the engine's checks.
        m.d.comb += [eng.host_req.payload.address.eq(addr),
                     eng.host_req.payload.write.eq(is_write),
                     eng.host_req.payload.data.eq(Mux(is_write, wdata, 0))]

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [x_next.eq(0), is_write.eq(ftype == WRITE)]
                with m.If(start):
                    m.d.sync += busy.eq(1)
                    with m.Switch(ftype):
                        with m.Case(SAMPLE):
                            m.next = "SAMPLE"
                        with m.Case(WRITE, READ):
                            m.next = "REQUEST"
                        with m.Case(STATUS):
                            m.next = "STATUS"

            with m.State("SAMPLE"):
                # The read port is one cycle behind its address: it reads x_next + 1 while
                # x_next is taken (IDLE left the address at 0 for the first value).
                flags = scal_field(SAMPLE, "flags")
                m.d.comb += [eng.sample.valid.eq(1), eng.sample.payload.data.eq(x_rd.data),
                             eng.sample.payload.label.eq(scal_field(SAMPLE, "label")),
                             eng.sample.payload.train.eq((flags & SAMPLE_TRAIN) != 0),
                             x_rd.addr.eq(x_next)]
                with m.If(eng.sample.ready):
                    m.d.comb += x_rd.addr.eq(x_next + 1)
                    m.d.sync += x_next.eq(x_next + 1)
                    with m.If(x_next == n0 - 1):
                        m.next = "RESULT"

            with m.State("RESULT"):
                r = eng.result.payload
                m.d.comb += eng.result.ready.eq(1)
                with m.If(eng.result.valid):
                    m.d.sync += header(RESULT) + [put(RESULT, "prediction", r.prediction)]
                    m.d.sync += [put(RESULT, "e", r.e[c], c) for c in range(fmt.n_classes)]
                    m.d.sync += put(RESULT, "flags",
                                    Mux(r.trained, RESULT_TRAINED, 0) | Mux(r.rejected, RESULT_REJECTED, 0))
                    m.next = "SEND_OPEN"

            with m.State("REQUEST"):
                with m.If(~req_ok):
                    m.d.sync += host_response(0, 1)
                    m.next = "SEND_OPEN"
                with m.Else():
                    m.d.comb += eng.host_req.valid.eq(1)
                    with m.If(eng.host_req.ready):
                        m.next = "RESPONSE"

            with m.State("RESPONSE"):
                m.d.comb += eng.host_resp.ready.eq(1)
                with m.If(eng.host_resp.valid):
                    m.d.sync += host_response(eng.host_resp.payload.data, eng.host_resp.payload.error)
                    m.next = "SEND_OPEN"

            with m.State("STATUS"):
                # frames_ok already counts this STATUS frame.
                m.d.sync += header(STATUS_RESP) + [put(STATUS_RESP, name, cnt[name]) for name in LINK_COUNTERS]
                m.next = "SEND_OPEN"

            with m.State("SEND_OPEN"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(FLAG)]
                with m.If(self.tx.ready):
                    m.d.sync += [tx_left.eq(resp_len - 1), tx_phase.eq(0), tx_crc.eq(CRC_INIT), tx_esc.eq(0),
                                 tx_loaded.eq(0)]
                    m.next = "SEND_BODY"

            with m.State("SEND_BODY"):
                # header and payload from resp (phase 0), then the CRC, low byte first (phases
                # 1, 2); stuffed. Each byte is first loaded into tx_byte with its stuffing
                # decision (a cycle of its own), then sent: what goes out and what advances
                # (the CRC steps, the phase and the bytes left, all registers) then depend on
                # registers only. resp shifts down a byte as its low byte is loaded, so its
                # enable depends on registers only too. The byte select, the FLAG/ESCAPE
                # comparison and the enable of the whole response register in one cycle, and
                # later the stuffing and handshake logic on that enable (the shift was at
                # the send), were the UP5K build's critical path.
                raw = tx_raw
                m.d.comb += raw.eq(Mux(tx_phase == 0, resp[:8], Mux(tx_phase == 1, tx_crc[:8], tx_crc[8:])))
                with m.If(~tx_loaded):
                    m.d.sync += [tx_byte.eq(raw), tx_stuff.eq((raw == FLAG) | (raw == ESCAPE)), tx_loaded.eq(1)]
                    with m.If(tx_phase == 0):
                        m.d.sync += resp.eq(resp >> 8)
                with m.Else():
                    m.d.comb += [self.tx.valid.eq(1),
                                 self.tx.payload.eq(Mux(tx_esc, tx_byte ^ ESCAPE_XOR, Mux(tx_stuff, ESCAPE, tx_byte)))]
                    with m.If(self.tx.ready):
                        with m.If(tx_stuff & ~tx_esc):
                            m.d.sync += tx_esc.eq(1)
                        with m.Else():
                            m.d.sync += [tx_esc.eq(0), tx_loaded.eq(0)]
                            with m.Switch(tx_phase):
                                with m.Case(0):
                                    m.d.sync += [tx_crc.eq(crc16_step(tx_crc, tx_byte)), tx_left.eq(tx_left - 1)]
                                    with m.If(tx_left == 0):
                                        m.d.sync += tx_phase.eq(1)
                                with m.Case(1):
                                    m.d.sync += tx_phase.eq(2)
                                with m.Default():
                                    m.next = "SEND_CLOSE"

            with m.State("SEND_CLOSE"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(FLAG)]
                with m.If(self.tx.ready):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        return m
