"""Fuzzing the two UART frame parsers: arbitrary bytes yield frames or DeviceProtocolError, always progress."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DeviceProtocolError
from drivers.fingerprint import frames as fp_frames
from drivers.fingerprint.frames import Frame as FpFrame
from drivers.fingerprint.protocol import FingerprintStream
from drivers.signature import frames as sig_frames
from drivers.signature.frames import Frame as SigFrame
from drivers.signature.messages import PenReport
from drivers.signature.protocol import SignatureStream

FUZZ = settings(max_examples=300, deadline=timedelta(milliseconds=500))


@FUZZ
@given(st.binary(max_size=2000))
def test_fingerprint_decode_only_frames_or_protocol_errors(data: bytes) -> None:
    try:
        frame, used = fp_frames.decode(data)
    except DeviceProtocolError as err:
        assert 1 <= getattr(err, "consumed", 0) <= len(data)
        return
    assert 0 <= used <= len(data)
    if frame is not None:
        assert used >= fp_frames.HEADER_LEN + 2 and fp_frames.encode(frame) == data[:used]


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_fingerprint_stream_never_hangs_or_raises(chunks: list[bytes]) -> None:
    stream = FingerprintStream()
    for chunk in chunks:
        for event in stream.feed(chunk):
            assert isinstance(event, FpFrame | DeviceProtocolError)
    assert len(stream._buf) < fp_frames.MAX_FRAME


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=256), st.sampled_from([0x01, 0x02, 0x07, 0x08]))
def test_fingerprint_frame_after_garbage_is_found(garbage: bytes, payload: bytes, pid: int) -> None:
    frame = FpFrame(0xFFFFFFFF, pid, payload)
    padding = b"\x00" * fp_frames.MAX_FRAME  # flushes a false start that waits for more bytes
    events = FingerprintStream().feed(garbage + fp_frames.encode(frame) + padding)
    assert frame in events


@FUZZ
@given(st.binary(max_size=2000))
def test_signature_decode_only_frames_or_protocol_errors(data: bytes) -> None:
    try:
        frame, used = sig_frames.decode(data)
    except DeviceProtocolError as err:
        assert 1 <= getattr(err, "consumed", 0) <= len(data)
        return
    assert 0 <= used <= len(data)
    if frame is not None:
        assert sig_frames.encode(frame) == data[:used]


@FUZZ
@given(st.lists(st.binary(max_size=100), max_size=20))
def test_signature_stream_never_hangs_or_raises(chunks: list[bytes]) -> None:
    stream = SignatureStream()
    for chunk in chunks:
        for event in stream.feed(chunk):
            assert isinstance(event, SigFrame | DeviceProtocolError)


@FUZZ
@given(
    st.binary(max_size=100),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 1023),
    st.booleans(),
)
def test_signature_packet_after_garbage_is_found(
    garbage: bytes, x: int, y: int, pressure: int, tip: bool
) -> None:
    report = PenReport(x, y, pressure, proximity=True, tip=tip)
    events = SignatureStream().feed(garbage + report.to_bytes())
    assert report.to_frame() in events
    assert PenReport.from_frame(report.to_frame()) == report
