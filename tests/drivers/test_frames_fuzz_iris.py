"""Fuzz the iris frame parser: arbitrary bytes yield frames or DeviceProtocolError, nothing else, no hang."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DeviceProtocolError
from drivers.iris import frames
from drivers.iris.frames import Frame
from drivers.iris.protocol import FrameReader

VALID = frames.encode(Frame(0x83, 7, b"\x00" + bytes(8)))

chunks = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.just(VALID),
        st.just(VALID[:-1] + b"\x00"),
        st.just(b"IR\x01"),
        st.builds(lambda n: b"IR\x01\x83\x07\x00" + n.to_bytes(4, "little"), st.integers(0, 2**32 - 1)),
    ),
    max_size=20,
)


@settings(max_examples=400, deadline=None)
@given(chunks)
def test_reader_only_yields_frames_or_protocol_errors(pieces: list[bytes]) -> None:
    reader = FrameReader(max_buffer=4 * frames.MAX_FRAME)
    fed = 0
    for piece in pieces:
        reader.feed(piece)
        fed += len(piece)
        for _ in range(fed + 2):  # each call consumes bytes or returns: bounded, never a hang
            try:
                frame = reader.next_frame()
            except DeviceProtocolError:
                continue
            if frame is None:
                break
            assert isinstance(frame, Frame)
        else:
            raise AssertionError("the reader did not settle")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_decode_only_returns_or_raises_protocol_error(data: bytes) -> None:
    try:
        frame, used = frames.decode(data)
    except DeviceProtocolError:
        return
    assert (frame is None and used == 0) or (frame is not None and 0 < used <= len(data))
