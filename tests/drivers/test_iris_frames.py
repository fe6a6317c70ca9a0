"""The iris codec and frame reader: round trips, a transport fault matrix, garbage and bad-CRC tables."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from drivers.errors import DeviceProtocolError
from drivers.iris import frames, messages
from drivers.iris.frames import MAGIC, Frame
from drivers.iris.protocol import FrameReader

REPLIES = [
    Frame(0x81, 1, messages.reply_payload(messages.Status.OK, b"info")),
    Frame(0x83, 2, messages.reply_payload(messages.Status.OK, bytes(8))),
    Frame(
        0x84, 3, messages.reply_payload(messages.Status.OK, bytes(range(256)) * 64 + b"IR\x01IR")
    ),  # 16 KiB
    Frame(0x85, 0xFFFF, b"\x07"),
    Frame(0x02, 4, b""),
]


def _collect(reader: FrameReader) -> list[Frame]:
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    return out


def test_layout_matches_the_documented_bytes() -> None:
    wire = frames.encode(Frame(0x01, 0x0102, b""))
    assert wire[:10] == b"IR\x01\x01\x02\x01\x00\x00\x00\x00"
    assert wire[10:] == struct.pack("<I", zlib.crc32(wire[:10]))
    assert frames.decode(wire) == (Frame(0x01, 0x0102, b""), len(wire))


@pytest.mark.parametrize("frame", REPLIES)
def test_round_trip(frame: Frame) -> None:
    wire = frames.encode(frame)
    assert frames.decode(wire + b"tail") == (frame, len(wire))
    for cut in range(len(wire) if len(wire) < 64 else 64):
        assert frames.decode(wire[:cut]) == (None, 0)  # short input is "need more"


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError):
        frames.encode(Frame(1, 1, bytes(frames.MAX_PAYLOAD + 1)))


def _split_whole(data: bytes, rng: random.Random) -> list[bytes]:
    return [data]


def _split_bytes(data: bytes, rng: random.Random) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _split_random(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _split_packets(data: bytes, rng: random.Random) -> list[bytes]:
    return [data[i : i + 512] for i in range(0, len(data), 512)]  # USB high-speed bulk packets


@pytest.mark.parametrize("split", [_split_whole, _split_bytes, _split_random, _split_packets])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reader_fault_matrix(split: object, seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(frames.encode(f) for f in REPLIES)
    reader = FrameReader()
    got: list[Frame] = []
    for piece in split(stream, rng):  # type: ignore[operator]
        reader.feed(piece)
        got += _collect(reader)  # a pause between pieces: the reader keeps partial frames
    assert got == REPLIES
    assert reader.discarded == 0


GOOD = frames.encode(REPLIES[0])
BAD_CRC = GOOD[:-1] + bytes([GOOD[-1] ^ 1])
WRONG_VERSION = GOOD[:2] + b"\x02" + GOOD[3:]
HUGE_LENGTH = MAGIC + b"\x01\x81\x01\x00" + struct.pack("<I", frames.MAX_PAYLOAD + 1)


@pytest.mark.parametrize(
    ("stream", "frames_out", "errors"),
    [
        pytest.param(b"\x00\xffnoise" + GOOD, [REPLIES[0]], 0, id="leading-garbage"),
        pytest.param(GOOD + b"xyzI" + GOOD, [REPLIES[0]] * 2, 0, id="garbage-between"),
        pytest.param(b"IIIRRR" + GOOD, [REPLIES[0]], 0, id="partial-magics"),
        pytest.param(WRONG_VERSION + GOOD, [REPLIES[0]], 0, id="wrong-version"),
        pytest.param(HUGE_LENGTH + GOOD, [REPLIES[0]], 0, id="declared-length-over-cap"),
        pytest.param(BAD_CRC + GOOD, [REPLIES[0]], 1, id="bad-crc-then-good"),
        pytest.param(BAD_CRC + BAD_CRC, [], 2, id="two-bad-crc"),
        pytest.param(bytes(300), [], 0, id="only-zeros"),
        pytest.param(GOOD[:-3], [], 0, id="truncated"),
    ],
)
def test_reader_garbage_table(stream: bytes, frames_out: list[Frame], errors: int) -> None:
    reader = FrameReader()
    reader.feed(stream)
    got, raised = [], 0
    while True:
        try:
            frame = reader.next_frame()
        except DeviceProtocolError:
            raised += 1
            continue
        if frame is None:
            break
        got.append(frame)
    assert (got, raised) == (frames_out, errors)


def test_reader_keeps_a_trailing_start_byte_and_counts_garbage() -> None:
    reader = FrameReader()
    reader.feed(b"junkI")
    assert reader.next_frame() is None
    assert reader.discarded == 4
    reader.feed(GOOD[1:])
    assert reader.next_frame() == REPLIES[0]


def test_reader_caps_its_buffer() -> None:
    reader = FrameReader(max_buffer=1000)
    reader.feed(HUGE_LENGTH[:10] + bytes(5000))
    assert reader.discarded >= 4010
    assert reader.next_frame() is None


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (messages.StartCapture(messages.Eye.LEFT, 5000, 50), messages.StartCapture),
        (messages.ReadImage(16384, 16384), messages.ReadImage),
        (messages.GetInfo(), messages.GetInfo),
        (messages.Abort(), messages.Abort),
    ],
)
def test_request_messages_round_trip(message: messages.Request, kind: type) -> None:
    assert messages.parse_request(message.OP, message.to_bytes()) == message
    assert isinstance(message, kind)


@pytest.mark.parametrize(
    ("op", "payload"),
    [(0x7F, b""), (messages.Op.START_CAPTURE, b"\x02\x10\x00\x00\x00\x32"), (messages.Op.GET_INFO, b"x")],
)
def test_bad_requests_are_protocol_errors(op: int, payload: bytes) -> None:
    with pytest.raises(DeviceProtocolError):
        messages.parse_request(op, payload)


def test_reply_messages_round_trip_and_reject_short_bodies() -> None:
    info = messages.InfoReply(1, 2, 3, 640, 480, 8, 16384, "SN-1")
    assert messages.InfoReply.from_bytes(info.to_bytes()) == info
    status = messages.StatusReply(messages.CaptureState.READY, 92, 1, 0, 307200)
    assert messages.StatusReply.from_bytes(status.to_bytes()) == status
    for parse, data in [
        (messages.InfoReply.from_bytes, info.to_bytes()[:-1]),
        (messages.StatusReply.from_bytes, b"\x09" + bytes(7)),
        (messages.ImageChunk.from_bytes, b"\x00"),
        (messages.split_reply, b""),
    ]:
        with pytest.raises(DeviceProtocolError):
            parse(data)
