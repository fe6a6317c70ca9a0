"""R30x codec and protocol layer: known vectors, a transport matrix (pure and over a real pty), garbage table."""

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
from drivers.fingerprint import frames
from drivers.fingerprint.frames import ChecksumError, Frame, FrameError
from drivers.fingerprint.messages import (
    Ack,
    Command,
    Instruction,
    MessageError,
    PacketId,
    SystemParameters,
    image_dimensions,
    pack_image,
    unpack_image,
)
from drivers.fingerprint.protocol import FingerprintStream
from drivers.serial_link import SerialLink
from hw_sim.pty_link import PtyPort

ADDR = 0xFFFFFFFF
VFY_PWD = bytes.fromhex("EF01FFFFFFFF010007130000000000 1B".replace(" ", ""))
ACK_OK = bytes.fromhex("EF01FFFFFFFF07000300000A")


def test_known_vectors_from_the_datasheet_examples() -> None:
    assert frames.encode(Frame(ADDR, PacketId.COMMAND, Command.verify_password(0).to_bytes())) == VFY_PWD
    assert frames.encode(Frame(ADDR, PacketId.ACK, Ack(0).to_bytes())) == ACK_OK
    assert frames.decode(ACK_OK) == (Frame(ADDR, PacketId.ACK, b"\x00"), 12)


def test_round_trip_and_sizes() -> None:
    params = SystemParameters(0, 9, 1000, 3, 0x12345678, 2, 6)
    raw = frames.encode(Frame(0x12345678, PacketId.ACK, Ack(0, params.to_bytes()).to_bytes()))
    assert len(raw) == 28  # what host libraries read for ReadSysPara
    frame, used = frames.decode(raw + b"\x00\x01")
    assert used == 28 and frame is not None
    ack = Ack.from_bytes(frame.payload)
    decoded = SystemParameters.from_bytes(ack.data)
    assert decoded == params and decoded.packet_size == 128 and decoded.baud == 57600


def test_short_input_is_need_more_not_an_error() -> None:
    for cut in range(len(ACK_OK)):
        assert frames.decode(ACK_OK[:cut]) == (None, 0)


def test_image_nibbles_high_first() -> None:
    assert unpack_image(bytes([0xF0, 0x1E])) == bytes([255, 0, 17, 238])
    gray = bytes(range(256)) * 2
    assert unpack_image(pack_image(gray)) == bytes((g >> 4) * 17 for g in gray)
    assert image_dimensions(36864) == (256, 288)
    with pytest.raises(MessageError):
        image_dimensions(1001)
    with pytest.raises(MessageError):
        SystemParameters.from_bytes(b"\x00" * 15)


GARBAGE_TABLE = [
    # (bytes, frames expected, protocol errors expected)
    (b"\x00\x13\x37" + ACK_OK, 1, 0),  # noise before a frame
    (ACK_OK + b"\xff\xfe" + ACK_OK, 2, 0),  # noise between frames
    (ACK_OK[:-1] + bytes([ACK_OK[-1] ^ 1]), 0, 1),  # bad checksum
    (ACK_OK[:-1] + bytes([ACK_OK[-1] ^ 1]) + ACK_OK, 1, 1),  # bad checksum, then a good frame
    (b"\xef\x01\xff\xff\xff\xff\x05\x00\x03" + ACK_OK, 1, 1),  # unknown packet id
    (b"\xef\x01\xff\xff\xff\xff\x07\xff\xff" + ACK_OK, 1, 1),  # absurd declared length
    (b"\xef\x01\xff\xff\xff\xff\x07\x00\x01" + ACK_OK, 1, 1),  # length below the checksum's two bytes
    (ACK_OK[:5] + ACK_OK, 1, 1),  # a frame cut short by the next one
    (b"\xef" * 7 + ACK_OK, 1, 0),  # false half-starts
]


@pytest.mark.parametrize(("data", "n_frames", "n_errors"), GARBAGE_TABLE)
def test_garbage_and_bad_checksum_table(data: bytes, n_frames: int, n_errors: int) -> None:
    stream = FingerprintStream()
    events = stream.feed(data)
    got_frames = [e for e in events if isinstance(e, Frame)]
    errors = [e for e in events if isinstance(e, DeviceProtocolError)]
    assert len(got_frames) == n_frames and len(errors) == n_errors
    assert all(f == Frame(ADDR, PacketId.ACK, b"\x00") for f in got_frames)


def test_checksum_error_is_typed() -> None:
    with pytest.raises(ChecksumError) as info:
        frames.decode(ACK_OK[:-1] + b"\x00")
    assert isinstance(info.value, DeviceProtocolError) and info.value.consumed == 2


def _stream_bytes() -> tuple[bytes, list[Frame]]:
    rnd = random.Random(7)
    sent = [
        Frame(ADDR, PacketId.ACK, b"\x00"),
        Frame(ADDR, PacketId.DATA, rnd.randbytes(128)),
        Frame(ADDR, PacketId.END_OF_DATA, rnd.randbytes(256)),
        Frame(ADDR, PacketId.COMMAND, Command(Instruction.UP_IMAGE).to_bytes()),
    ]
    return b"".join(frames.encode(f) for f in sent), sent


def _chunks(data: bytes, mode: str, seed: int = 0) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), 12))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("mode", ["whole", "bytewise", "split-1", "split-2", "split-3"])
def test_protocol_layer_transport_matrix(mode: str) -> None:
    data, sent = _stream_bytes()
    stream = FingerprintStream()
    got = [
        e
        for chunk in _chunks(data, mode, seed=int(mode[-1]) if mode.startswith("split") else 0)
        for e in stream.feed(chunk)
    ]
    assert got == sent


@pytest.fixture
def pty_port() -> Iterator[PtyPort]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-fp-"))
    port = PtyPort(tmp / "fingerprint")
    port.plug()
    yield port
    port.unplug()
    shutil.rmtree(tmp)


@pytest.mark.parametrize("mode", ["whole", "bytewise", "split", "delayed"])
def test_link_transport_matrix_over_a_real_pty(pty_port: PtyPort, mode: str) -> None:
    data, sent = _stream_bytes()
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 57600, device="fingerprint", decoder=FingerprintStream()
    )
    chunks = _chunks(data, "split" if mode == "delayed" else mode, seed=3)
    delay = 0.02 if mode == "delayed" else 0.0

    def device() -> None:
        for chunk in chunks:
            pty_port.write(chunk)
            if delay:
                time.sleep(delay)

    try:
        with link.request():
            writer = threading.Thread(target=device)
            writer.start()
            got = [link.receive(2.0) for _ in sent]
            writer.join()
            with pytest.raises(DeviceTimeout):
                link.receive(0.05)
    finally:
        link.close()
    assert got == sent


def test_link_paused_then_unplugged_and_replugged(pty_port: PtyPort) -> None:
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 57600, device="fingerprint", decoder=FingerprintStream()
    )
    try:
        with link.request():
            pty_port.write(ACK_OK[:6])  # half a frame, then the device pauses
            with pytest.raises(DeviceTimeout):
                link.receive(0.1)
            pty_port.write(ACK_OK[6:])
            assert link.receive(1.0) == Frame(ADDR, PacketId.ACK, b"\x00")
            pty_port.unplug()
            with pytest.raises(DeviceDisconnected) as info:
                link.receive(2.0)
            assert info.value.port == str(pty_port.link)
            assert isinstance(info.value.__cause__, Exception)
        with pytest.raises(DeviceDisconnected), link.request():  # symlink gone: cannot reopen
            pass
        pty_port.plug()
        with link.request():  # same path, new pty: the link reopens by itself
            link.send(VFY_PWD)
            pty_port.write(ACK_OK)
            assert link.receive(1.0).pid == PacketId.ACK
        assert pty_port.read(1.0) == VFY_PWD
    finally:
        link.close()


def test_stale_frames_are_dropped_between_requests(pty_port: PtyPort) -> None:
    link: SerialLink[Frame] = SerialLink(
        str(pty_port.link), 57600, device="fingerprint", decoder=FingerprintStream()
    )
    try:
        with link.request():
            pty_port.write(ACK_OK)  # a late reply to a request that already timed out
            time.sleep(0.1)
        with link.request(), pytest.raises(DeviceTimeout):
            link.receive(0.05)
    finally:
        link.close()


def test_frame_error_is_a_protocol_error() -> None:
    err = FrameError("x", consumed=3)
    assert isinstance(err, DeviceProtocolError) and err.device == "fingerprint"
