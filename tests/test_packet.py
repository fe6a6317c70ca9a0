"""The enrollment packet: round trips, every tampering detected, the typed error, the overhead."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import struct
import time
from uuid import UUID, uuid4

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_sim.residents import synthetic_resident
from tests.factories import jp2_gray, png_gray, record_from_resident, small_record
from wire.nik import Sex
from wire.packet import (
    FIXED_HEADER_LEN,
    MAX_BODY_BYTES,
    PacketError,
    PacketFault,
    PacketHeader,
    SealedPacket,
    _Uuid7Source,
    open_packet,
    packet_overhead,
    read_header,
    seal,
    uuid7,
    verify,
)
from wire.record import (
    Demographics,
    EnrollmentRecord,
    FingerException,
    FingerPosition,
    Fingerprint,
    IrisImage,
    Signature,
)

KIOSK = "320715-01"
KIOSK_KEY = Ed25519PrivateKey.generate()
OTHER_KIOSK_KEY = Ed25519PrivateKey.generate()
CENTRAL_KEY = X25519PrivateKey.generate()
OTHER_CENTRAL_KEY = X25519PrivateKey.generate()
WHEN = dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.UTC)
SMALL = small_record()


def _seal(record: EnrollmentRecord = SMALL, **kwargs: object) -> SealedPacket:
    args: dict[str, object] = {
        "kiosk_id": KIOSK,
        "seq": 7,
        "kiosk_key": KIOSK_KEY,
        "central_public": CENTRAL_KEY.public_key(),
        "clock_synced": True,
    }
    args.update(kwargs)
    return seal(record, **args)  # type: ignore[arg-type]


def _open(data: bytes) -> tuple[PacketHeader, EnrollmentRecord]:
    return open_packet(data, kiosk_public=KIOSK_KEY.public_key(), central_private=CENTRAL_KEY)


def _fault(fn: object, *args: object, **kwargs: object) -> PacketError:
    assert callable(fn)
    with pytest.raises(PacketError) as info:
        fn(*args, **kwargs)
    return info.value


SMALL_PACKET = _seal(created_at=WHEN).data


# --- round trips -------------------------------------------------------------------------


def test_round_trip_and_header() -> None:
    pid = uuid7()
    sealed = _seal(seq=42, packet_id=pid, created_at=WHEN, clock_synced=False)
    assert (sealed.packet_id, sealed.seq, sealed.kiosk_id) == (str(pid), 42, KIOSK)
    assert sealed.created_at == "2026-11-27T10:00:00.123Z"
    header = read_header(sealed.data)
    assert header == verify(sealed.data, KIOSK_KEY.public_key())
    opened_header, record = _open(sealed.data)
    assert opened_header == header and record == SMALL
    assert header.format_version == 1
    assert (header.packet_id, header.kiosk_id, header.seq) == (str(pid), KIOSK, 42)
    assert (header.created_at, header.clock_synced) == ("2026-11-27T10:00:00.123Z", False)
    body = SMALL.to_bytes()
    assert header.plaintext_len == len(body)
    assert header.ciphertext_len == len(body) + 16
    assert header.body_sha256 == hashlib.sha256(body).digest()
    assert header.packet_len == len(sealed.data)
    assert read_header(_seal(clock_synced=True).data).clock_synced is True


def test_defaults_are_now_and_a_fresh_uuid7() -> None:
    before = time.time()
    a, b = _seal(), _seal()
    assert a.packet_id != b.packet_id and UUID(a.packet_id).version == 7
    stamp = dt.datetime.fromisoformat(a.created_at.replace("Z", "+00:00")).timestamp()
    assert before - 1 <= stamp <= time.time() + 1
    assert a.created_at.endswith("Z") and len(a.created_at) == len("2026-11-27T10:00:00.123Z")


def test_body_is_encrypted() -> None:
    for blob in (SMALL.face.image, SMALL.right_iris.image, SMALL.signature.png, SMALL.nik.encode()):
        assert blob not in SMALL_PACKET
    assert SMALL.demographics.name.encode() not in SMALL_PACKET


def test_each_packet_has_its_own_ephemeral_key() -> None:
    a = _seal(packet_id=UUID(_seal().packet_id), created_at=WHEN).data
    b = _seal(packet_id=UUID(read_header(a).packet_id), created_at=WHEN).data
    header_len = read_header(a).header_len
    assert a[:header_len] == b[:header_len]
    assert a[header_len : header_len + 32] != b[header_len : header_len + 32]


texts = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(str.strip)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=texts,
    address=texts,
    place=texts,
    religion=texts,
    born=st.dates(dt.date(1930, 1, 1), dt.date(2020, 12, 31)),
    sex=st.sampled_from(Sex),
    region=st.sampled_from(["320715", "317101", "510101", "720801"]),
    serial=st.integers(1, 9999),
    missing=st.sets(st.integers(1, 10), max_size=10),
    sizes=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=13, max_size=13),
    seed=st.integers(0, 2**32),
    kiosk=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    seq=st.integers(0, 2**63 - 1),
    synced=st.booleans(),
)
def test_round_trip_random(
    name: str,
    address: str,
    place: str,
    religion: str,
    born: dt.date,
    sex: Sex,
    region: str,
    serial: int,
    missing: set[int],
    sizes: list[tuple[int, int]],
    seed: int,
    kiosk: str,
    seq: int,
    synced: bool,
) -> None:
    day = born.day + (40 if sex is Sex.FEMALE else 0)
    nik = f"{region}{day:02d}{born.month:02d}{born.year % 100:02d}{serial:04d}"
    fingers = {}
    for pos in FingerPosition:
        w, h = sizes[pos - 1]
        if pos in missing:
            fingers[pos] = Fingerprint(
                pos, None, 0, 0, 0, attempts=seed % 4, exception=FingerException.MISSING
            )
        else:
            fingers[pos] = Fingerprint(pos, png_gray(w, h, seed + pos), w, h, quality=seed % 101, attempts=1)
    rnd = random.Random(seed)
    strokes = [
        [
            (
                rnd.randrange(32768),
                rnd.randrange(32768),
                rnd.randrange(1024),
            )  # X, Y: 19794-7's signed 16 bits
            for _ in range(rnd.randrange(1, 50))
        ]
        for _ in range(rnd.randrange(1, 5))
    ]
    record = small_record(
        nik=nik,
        demographics=Demographics(name, sex, born, place, address, religion, occupation=name[:10]),
        fingerprints=fingers,
        right_iris=IrisImage(jp2_gray(*sizes[10], seed), *sizes[10], 99),  # one size for both eyes (19794-6)
        left_iris=IrisImage(jp2_gray(*sizes[10], seed + 1), *sizes[10], 0),
        signature=Signature(strokes, png_gray(*sizes[12], seed + 2), *sizes[12]),
    )
    assert EnrollmentRecord.from_bytes(record.to_bytes()) == record
    sealed = _seal(record, kiosk_id=kiosk, seq=seq, clock_synced=synced)
    header, opened = _open(sealed.data)
    assert opened == record
    assert (header.kiosk_id, header.seq, header.clock_synced) == (kiosk, seq, synced)


# --- every tampering, truncation, wrong key and wrong version is one typed error ----------


def test_every_single_byte_flip_is_detected() -> None:
    data = bytearray(SMALL_PACKET)
    seen: dict[PacketFault, int] = {}
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            data[i] ^= mask
            flipped = bytes(data)
            data[i] ^= mask
            with pytest.raises(PacketError) as by_verify:
                verify(flipped, KIOSK_KEY.public_key())
            with pytest.raises(PacketError) as by_open:
                _open(flipped)
            assert by_open.value.reason == by_verify.value.reason
            seen[by_verify.value.reason] = seen.get(by_verify.value.reason, 0) + 1
    assert bytes(data) == SMALL_PACKET
    assert {PacketFault.BAD_MAGIC, PacketFault.WRONG_VERSION, PacketFault.BAD_SIGNATURE} <= set(seen)
    assert PacketFault.MALFORMED in seen  # lengths, flags, uuid version, kiosk id
    assert PacketFault.WRONG_KEY not in seen and PacketFault.BODY_MISMATCH not in seen


def test_every_truncation_is_truncated_or_malformed() -> None:
    for n in range(len(SMALL_PACKET)):
        for fn in (read_header, lambda d: verify(d, KIOSK_KEY.public_key()), _open):
            err = _fault(fn, SMALL_PACKET[:n])
            assert err.reason in (PacketFault.TRUNCATED, PacketFault.MALFORMED), (n, err)
    assert _fault(read_header, SMALL_PACKET[:-1]).reason is PacketFault.TRUNCATED
    assert _fault(read_header, b"").reason is PacketFault.TRUNCATED


def test_trailing_bytes_are_malformed() -> None:
    err = _fault(verify, SMALL_PACKET + b"\x00", KIOSK_KEY.public_key())
    assert err.reason is PacketFault.MALFORMED and "1 bytes after the signature" in str(err)


def test_wrong_centre_key() -> None:
    err = _fault(
        open_packet, SMALL_PACKET, kiosk_public=KIOSK_KEY.public_key(), central_private=OTHER_CENTRAL_KEY
    )
    header = read_header(SMALL_PACKET)
    assert err.reason is PacketFault.WRONG_KEY
    assert (err.packet_id, err.kiosk_id) == (header.packet_id, KIOSK)
    assert f"packet {header.packet_id} from kiosk {KIOSK}" in str(err) and "another centre key" in str(err)


def test_wrong_kiosk_key() -> None:
    header = read_header(SMALL_PACKET)
    for fn in (verify, lambda d, k: open_packet(d, kiosk_public=k, central_private=CENTRAL_KEY)):
        err = _fault(fn, SMALL_PACKET, OTHER_KIOSK_KEY.public_key())
        assert err.reason is PacketFault.BAD_SIGNATURE
        assert str(err) == (
            f"packet {header.packet_id}: signature does not verify with kiosk {KIOSK}'s key: "
            "tampered in transit or signed by another kiosk"
        )


def test_signed_by_another_kiosk_key() -> None:
    data = _seal(kiosk_key=OTHER_KIOSK_KEY).data
    assert _fault(verify, data, KIOSK_KEY.public_key()).reason is PacketFault.BAD_SIGNATURE


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    data = bytearray(SMALL_PACKET)
    data[4] = version
    for fn in (read_header, lambda d: verify(d, KIOSK_KEY.public_key()), _open):
        err = _fault(fn, bytes(data))
        assert err.reason is PacketFault.WRONG_VERSION and f"version {version}" in str(err)
    # Even a correctly signed packet of another version is refused before anything else.
    resigned = bytes(data[:-64]) + KIOSK_KEY.sign(bytes(data[:-64]))
    assert _fault(_open, resigned).reason is PacketFault.WRONG_VERSION
    assert _fault(read_header, bytes(data[:5])).reason is PacketFault.WRONG_VERSION


def test_bad_magic() -> None:
    for data in (b"EKTQ" + SMALL_PACKET[4:], b'{"json": 1}', b"\x00"):
        err = _fault(read_header, data)
        assert err.reason is PacketFault.BAD_MAGIC and "not an e-KTP packet" in str(err)


def test_errors_are_value_errors_with_a_reason() -> None:
    err = _fault(read_header, b"EKTP")
    assert isinstance(err, ValueError) and err.reason is PacketFault.TRUNCATED


# --- an independent encoder, written from docs/protocol.md ("The enrollment packet") -----------------------


def _hand_sealed(
    body: bytes,
    *,
    version: int = 1,
    flags: int = 1,
    pid: bytes | None = None,
    plaintext_len: int | None = None,
    sha: bytes | None = None,
    kiosk: bytes = KIOSK.encode(),
    ephemeral: X25519PrivateKey | None = None,
    ephemeral_pub: bytes | None = None,
    centre: X25519PrivateKey = CENTRAL_KEY,
) -> bytes:
    pid = pid if pid is not None else uuid7().bytes
    plen = len(body) if plaintext_len is None else plaintext_len
    header = b"EKTP" + struct.pack(">BB16sQqII32sB", version, flags, pid, 9, 1_795_773_600_123, plen, plen + 16,
                                   sha if sha is not None else hashlib.sha256(body).digest(), len(kiosk)) + kiosk  # fmt: skip
    eph = ephemeral or X25519PrivateKey.generate()
    eph_pub = ephemeral_pub or eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    centre_pub = centre.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    okm = HKDF(hashes.SHA256(), 44, salt=pid, info=b"ektp packet v1 body key" + eph_pub + centre_pub).derive(
        eph.exchange(centre.public_key())
    )
    aad = header + eph_pub
    signed = aad + ChaCha20Poly1305(okm[:32]).encrypt(okm[32:], body, aad)
    return signed + KIOSK_KEY.sign(signed)


def test_documented_construction_opens() -> None:
    header, record = _open(_hand_sealed(SMALL.to_bytes()))
    assert record == SMALL and header.seq == 9 and header.created_at == "2026-11-27T10:00:00.123Z"


def test_body_mismatch() -> None:
    body = SMALL.to_bytes()
    err = _fault(_open, _hand_sealed(body, sha=bytes(32)))
    assert err.reason is PacketFault.BODY_MISMATCH and "SHA-256" in str(err)
    assert verify(_hand_sealed(body, sha=bytes(32)), KIOSK_KEY.public_key())  # signature is fine


def test_garbage_record_in_a_good_packet_is_malformed() -> None:
    err = _fault(_open, _hand_sealed(b"\x01not a record"))
    assert err.reason is PacketFault.MALFORMED and "malformed record" in str(err)


def test_low_order_ephemeral_key_is_malformed() -> None:
    body = SMALL.to_bytes()
    data = bytearray(_hand_sealed(body))
    start = read_header(bytes(data)).header_len
    data[start : start + 32] = bytes(32)  # the identity point
    signed = bytes(data[:-64])
    err = _fault(_open, signed + KIOSK_KEY.sign(signed))
    assert err.reason is PacketFault.MALFORMED and "low-order" in str(err)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"flags": 0x05}, "reserved flag bits"),
        ({"pid": uuid4().bytes}, "not a UUIDv7"),
        ({"kiosk": b""}, "kiosk id length 0"),
        ({"kiosk": b"k" * 65}, "kiosk id length 65"),
        ({"kiosk": b"320715 01"}, "kiosk id '320715 01'"),
        ({"kiosk": b"\xff\xfe"}, "kiosk id"),
    ],
)
def test_malformed_headers(kwargs: dict[str, object], problem: str) -> None:
    err = _fault(read_header, _hand_sealed(b"x", **kwargs))  # type: ignore[arg-type]
    assert err.reason is PacketFault.MALFORMED and problem in str(err)


def test_declared_lengths_are_capped_before_anything_is_allocated() -> None:
    data = bytearray(SMALL_PACKET)
    struct.pack_into(">II", data, 38, MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 17)
    err = _fault(read_header, bytes(data))
    assert err.reason is PacketFault.MALFORMED and "limit" in str(err)
    struct.pack_into(">II", data, 38, 5, 999)
    assert "ciphertext length 999" in str(_fault(read_header, bytes(data)))
    struct.pack_into(">II", data, 38, 2**32 - 17, 2**32 - 1)
    assert _fault(read_header, bytes(data)).reason is PacketFault.MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", b"EKTP", b"EKTP\x01", SMALL_PACKET[:FIXED_HEADER_LEN]]))
def test_random_bytes_only_ever_give_packet_error(tail: bytes, prefix: bytes) -> None:
    with pytest.raises(PacketError):
        _open(prefix + tail)


# --- seal's arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kiosk_id": ""},
        {"kiosk_id": "k" * 65},
        {"kiosk_id": "kios k"},
        {"kiosk_id": "kiosk\n"},
        {"kiosk_id": "kiosé"},
        {"seq": -1},
        {"seq": 2**63},
        {"seq": True},
        {"packet_id": uuid4()},
        {"created_at": dt.datetime(2026, 1, 1)},
        {"created_at": dt.datetime(1969, 12, 31, tzinfo=dt.UTC)},
    ],
)
def test_seal_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        _seal(SMALL, **kwargs)
    assert not isinstance(info.value, PacketError)


def test_created_at_in_another_zone_is_stored_as_utc() -> None:
    wib = dt.timezone(dt.timedelta(hours=7))
    sealed = _seal(created_at=dt.datetime(2026, 11, 27, 17, 0, 0, 5000, tzinfo=wib))
    assert sealed.created_at == "2026-11-27T10:00:00.005Z" == read_header(sealed.data).created_at


# --- uuid7 -------------------------------------------------------------------------------


def test_uuid7_layout() -> None:
    now_ms = time.time_ns() // 1_000_000
    u = uuid7()
    assert u.version == 7 and u.variant == "specified in RFC 4122"
    assert abs((u.int >> 80) - now_ms) < 5_000


def test_uuid7_is_strictly_increasing_even_within_a_millisecond_and_backwards() -> None:
    source = _Uuid7Source()
    ids = [source.next(1_000) for _ in range(5_000)]  # more than the 12-bit counter holds
    ids += [source.next(999) for _ in range(10)]  # the clock stepped back
    ids += [source.next(5_000) for _ in range(10)]
    assert ids == sorted(ids, key=lambda u: u.int) and len({u.int for u in ids}) == len(ids)
    assert all(u.version == 7 for u in ids)
    assert ids[-1].int >> 80 == 5_000


# --- logs, overhead -----------------------------------------------------------------------


def test_repr_shows_no_packet_bytes() -> None:
    sealed = _seal()
    text = repr(sealed) + str(sealed)
    assert "\\x" not in text and f"<{len(sealed.data)} bytes>" in text
    assert sealed.packet_id in text


@pytest.fixture(scope="module")
def resident_records() -> list[EnrollmentRecord]:
    return [record_from_resident(synthetic_resident(seed)) for seed in (1, 3)]  # seed 3 lacks a finger


def test_overhead_at_most_2_percent_for_a_full_record(resident_records: list[EnrollmentRecord]) -> None:
    # a full enrollment is about 90 KB of compressed biometrics (record version 2); the overhead
    # counts the interchange records' headers, the metadata and the packet's header, key and tags
    for record in resident_records:
        assert 60_000 < record.biometric_bytes() < 100_000
        sealed = _seal(record)
        overhead = packet_overhead(sealed, record)
        assert overhead == len(sealed.data) - record.biometric_bytes() == packet_overhead(sealed.data, record)
        assert 0 < overhead <= 0.02 * record.biometric_bytes(), overhead
        _, opened = _open(sealed.data)
        assert opened == record


def test_overhead_with_full_8bit_fingerprints() -> None:
    record = record_from_resident(synthetic_resident(2), finger_bits=8)
    assert packet_overhead(_seal(record), record) <= 0.02 * record.biometric_bytes()


def test_synthetic_mark_is_signed_and_read_back() -> None:
    """The synthetic mark is a signed header bit: readable without keys, and not removable."""
    assert read_header(_seal().data).synthetic is False
    marked = _seal(synthetic=True).data
    assert read_header(marked).synthetic is True
    assert _open(marked)[0].synthetic is True
    stripped = bytearray(marked)
    stripped[5] &= ~0x02  # clearing the mark to pass a test resident off as a real one
    assert _fault(verify, bytes(stripped), KIOSK_KEY.public_key()).reason is PacketFault.BAD_SIGNATURE
