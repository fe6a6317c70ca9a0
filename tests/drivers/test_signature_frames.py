"""ISDV4 codec and protocol layer: bit layout, a transport matrix (pure and over a real pty), garbage table."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from drivers.serial_link import SerialLink
from drivers.signature import frames
from drivers.signature.frames import Frame, FrameError
from drivers.signature.messages import MessageError, PenReport, QueryReply
from drivers.signature.protocol import SignatureStream
from hw_sim.pty_link import PtyPort


def test_pen_packet_bit_layout_as_the_kernel_reads_it() -> None:
    x, y, p = 0b1010101_0110011_01, 0b0001111_1110000_10, 0b101_1100110
    raw = PenReport(x, y, p, proximity=True, tip=True, side=True).to_bytes()
    assert len(raw) == 9 and raw[0] == 0x80 | 0x20 | 0x02 | 0x01
    assert all(b < 0x80 for b in raw[1:])
    # wacom_w8001.c parse_pen_data, written out independently of our _unpack
    assert (raw[1] << 9 | raw[2] << 2 | (raw[6] & 0x60) >> 5) == x
    assert (raw[3] << 9 | raw[4] << 2 | (raw[6] & 0x18) >> 3) == y
    assert (raw[5] | (raw[6] & 0x07) << 7) == p
    assert PenReport.from_frame(Frame(raw)) == PenReport(x, y, p, True, True, True, False)


def test_query_reply_round_trip_and_version() -> None:
    reply = QueryReply(8000, 6000, 1023, 0x0213)
    raw = reply.to_bytes()
    assert len(raw) == 11 and raw[0] == 0xC0
    assert (raw[9] << 7 | raw[10]) == 0x0213
    frame, used = frames.decode(raw)
    assert used == 11 and frame is not None and frame.is_control
    assert QueryReply.from_frame(frame) == reply
    with pytest.raises(MessageError):
        PenReport.from_frame(frame)


def test_encode_refuses_non_packets() -> None:
    with pytest.raises(ValueError):
        frames.encode(Frame(b"\x80\x01"))
    with pytest.raises(ValueError):
        frames.encode(Frame(b"\x80" + b"\x81" * 8))
    with pytest.raises(ValueError):
        PenReport(70000, 0, 0, True, True).to_bytes()


PEN = PenReport(1234, 567, 89, proximity=True, tip=True).to_bytes()
QUERY = QueryReply(8000, 6000, 1023, 7).to_bytes()

GARBAGE_TABLE = [
    (b"\x01\x02\x7f" + PEN, 1, 0),  # 7-bit noise before a packet is skipped
    (PEN + b"\x33" * 5 + QUERY, 2, 0),  # noise between packets
    (PEN[:4] + PEN, 1, 1),  # a packet cut short by the next lead byte
    (QUERY[:6] + QUERY, 1, 1),
    (PEN[:3] + bytes([PEN[3] | 0x80]) + PEN[4:], 0, 1),  # "bad checksum": bit 7 set inside the body
    (b"\x90\x01\x02\x03\x04" + PEN, 1, 1),  # a touch packet from a pen-only pad
    (b"\xc5\x01\x02" + PEN, 1, 1),  # false control lead
]


@pytest.mark.parametrize(("data", "n_frames", "n_errors"), GARBAGE_TABLE)
def test_garbage_table(data: bytes, n_frames: int, n_errors: int) -> None:
    events = SignatureStream().feed(data)
    got = [e for e in events if isinstance(e, Frame)]
    errors = [e for e in events if isinstance(e, DeviceProtocolError)]
    assert (len(got), len(errors)) == (n_frames, n_errors)
    assert all(f.data in (PEN, QUERY) for f in got)
    assert all(isinstance(e, FrameError) and e.consumed >= 1 for e in errors)


def _stream() -> tuple[bytes, list[Frame]]:
    rnd = random.Random(11)
    sent = [Frame(QUERY)] + [
        PenReport(
            rnd.randrange(8000), rnd.randrange(6000), rnd.randrange(1024), True, rnd.random() < 0.8
        ).to_frame()
        for _ in range(40)
    ]
    return b"".join(f.data for f in sent), sent


def _chunks(data: bytes, mode: str, seed: int) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), 25))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize(
    ("mode", "seed"), [("whole", 0), ("bytewise", 0), ("split", 1), ("split", 2), ("split", 3)]
)
def test_protocol_layer_transport_matrix(mode: str, seed: int) -> None:
    data, sent = _stream()
    stream = SignatureStream()
    assert [e for c in _chunks(data, mode, seed) for e in stream.feed(c)] == sent


@pytest.fixture
def pty_port() -> Iterator[PtyPort]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    port = PtyPort(tmp / "signature")
    port.plug()
    yield port
    port.unplug()
    shutil.rmtree(tmp)


@pytest.mark.parametrize("mode", ["whole", "bytewise", "split", "delayed"])
def test_link_transport_matrix_over_a_real_pty(pty_port: PtyPort, mode: str) -> None:
    data, sent = _stream()
    chunks = _chunks(data, "split" if mode == "delayed" else mode, seed=5)
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 19200, device="signature", decoder=SignatureStream()
    )

    def device() -> None:
        for chunk in chunks:
            pty_port.write(chunk)
            if mode == "delayed":
                time.sleep(0.01)

    try:
        with link.request():
            writer = threading.Thread(target=device)
            writer.start()
            got = [link.receive(2.0) for _ in sent]
            writer.join()
    finally:
        link.close()
    assert got == sent


def test_link_sets_the_baud_the_device_sees(pty_port: PtyPort) -> None:
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 19200, device="signature", decoder=SignatureStream()
    )
    try:
        link.open()
        assert pty_port.line_baud() == 19200
        link.set_baud(38400)
        assert pty_port.line_baud() == 38400
        pty_port.unplug()
        with link.request():
            link.send(b"*")  # the write (or the reader's EIO) tells the port is gone
            link.receive(1.0)
    except DeviceDisconnected as exc:
        assert "signature" in str(exc)
    else:
        pytest.fail("a request on an unplugged port must raise DeviceDisconnected")
    finally:
        link.close()


def test_receive_times_out_with_the_port_and_baud_in_the_message(pty_port: PtyPort) -> None:
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 19200, device="signature", decoder=SignatureStream()
    )
    try:
        with link.request(), pytest.raises(DeviceTimeout, match="19200 baud"):
            link.receive(0.05)
    finally:
        link.close()
