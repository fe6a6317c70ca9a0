"""The enrollment record: validation naming the field, the binary round trip (record version 2,
and version 1 still read), no biometrics in repr."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.factories import jp2_gray, jpeg_of, png_gray, small_demographics, small_fingers, small_record
from tests.record_v1 import record_v1_bytes
from wire.nik import Sex
from wire.record import (
    MAX_COORD,
    RECORD_VERSION,
    EnrollmentRecord,
    FaceImage,
    FingerException,
    FingerPosition,
    Fingerprint,
    InvalidRecord,
    IrisImage,
    Signature,
)


def _raises(field: str, fn: object, *args: object, **kwargs: object) -> InvalidRecord:
    assert callable(fn)
    with pytest.raises(InvalidRecord) as info:
        fn(*args, **kwargs)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    return info.value


# --- validation ------------------------------------------------------------------------


def test_small_record_is_valid_and_counts_its_biometrics() -> None:
    record = small_record()
    assert record.captured_fingers() == 9
    expected = (
        len(record.face.image)
        + sum(len(f.image) for f in record.fingerprints.values() if f.image)
        + len(record.right_iris.image)
        + len(record.left_iris.image)
        + len(record.signature.png)
        + len(record.signature.strokes_bytes())
    )
    assert record.biometric_bytes() == expected


def test_fingerprints_need_exactly_ten_positions() -> None:
    fingers = small_fingers()
    del fingers[FingerPosition.LEFT_LITTLE]
    err = _raises("fingerprints", small_record, fingerprints=fingers)
    assert "missing [10]" in str(err)
    fingers = small_fingers()
    fingers[11] = fingers[1]
    _raises("fingerprints", small_record, fingerprints=fingers)


def test_finger_under_the_wrong_key() -> None:
    fingers = small_fingers()
    fingers[1], fingers[2] = fingers[2], fingers[1]
    err = _raises("fingerprints[1]", small_record, fingerprints=fingers)
    assert "position 2" in str(err)


def test_missing_finger_needs_an_exception_reason() -> None:
    _raises("fingerprints[3].exception", Fingerprint, 3, None, 0, 0, 0, attempts=2)


def test_finger_with_an_image_cannot_have_an_exception() -> None:
    png = png_gray(4, 4)
    _raises("fingerprints[3].exception", Fingerprint, 3, png, 4, 4, 50, 1, FingerException.UNUSABLE)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"position": 0}, "fingerprints[0]"),
        ({"position": 11}, "fingerprints[11]"),
        ({"position": True}, "fingerprints[True]"),
        ({"quality": 101}, "fingerprints[1].quality"),
        ({"quality": -1}, "fingerprints[1].quality"),
        ({"attempts": 0}, "fingerprints[1].attempts"),
        ({"attempts": 256}, "fingerprints[1].attempts"),
        ({"width": 5}, "fingerprints[1].image"),  # the PNG says 4x4
        ({"width": 0}, "fingerprints[1].width"),
        ({"image": b"\x89PNG not really"}, "fingerprints[1].image"),
        ({"image": "text"}, "fingerprints[1].image"),
        ({"image": jpeg_of(Image.new("L", (4, 4)))}, "fingerprints[1].image"),  # JPEG: not for fingers here
        ({"exception": "lost"}, "fingerprints[1].exception"),
    ],
)
def test_fingerprint_fields(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"position": 1, "image": png_gray(4, 4), "width": 4, "height": 4}
    values |= {"quality": 50, "attempts": 1}
    if kwargs.get("exception") is not None:
        values["image"] = None
        values["width"] = values["height"] = values["quality"] = 0
    values.update(kwargs)
    _raises(field, Fingerprint, **values)


def test_png_must_be_8bit_grayscale() -> None:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    err = _raises("iris.image", IrisImage, buf.getvalue(), 4, 4, 50)
    assert "8-bit grayscale" in str(err)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG2000")
    assert "8-bit grayscale" in str(_raises("iris.image", IrisImage, buf.getvalue(), 4, 4, 50))
    assert IrisImage(jp2_gray(4, 4), 4, 4, 50).width == 4
    assert "is 4x4 but the record says 5x4" in str(_raises("iris.image", IrisImage, jp2_gray(4, 4), 5, 4, 50))
    buf = io.BytesIO()
    Image.new("1", (4, 4)).save(buf, format="PNG")
    _raises("signature.png", Signature, [[(1, 1, 1)]], buf.getvalue(), 4, 4)
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="PNG")  # 8-bit, but a palette: not grayscale
    _raises("signature.png", Signature, [[(1, 1, 1)]], buf.getvalue(), 4, 4)


def test_face_must_be_a_jpeg_of_the_declared_size() -> None:
    jpeg = jpeg_of(Image.new("RGB", (8, 6)))
    assert FaceImage(jpeg, 8, 6, 90).width == 8
    assert "jpeg image is 8x6" in str(_raises("face.image", FaceImage, jpeg, 6, 8, 90))
    _raises("face.image", FaceImage, png_gray(8, 6), 8, 6, 90)
    _raises("face.image", FaceImage, b"\xff\xd8\xff\xe0\x00\x10JFIF", 8, 6, 90)  # no SOF
    _raises("face.quality", FaceImage, jpeg, 8, 6, 200)


@pytest.mark.parametrize(
    ("strokes", "field"),
    [
        ([], "signature.strokes"),
        ([[]], "signature.strokes[0]"),
        ([[(1, 2)]], "signature.strokes[0][0]"),
        ([[(1, 2, 3)], [(1, 2, -1)]], "signature.strokes[1][0]"),
        ([[(1, 2, MAX_COORD + 1)]], "signature.strokes[0][0]"),
        ([[(1, 2, 3.0)]], "signature.strokes[0][0]"),
        ("abc", "signature.strokes"),
    ],
)
def test_signature_strokes(strokes: object, field: str) -> None:
    _raises(field, Signature, strokes, png_gray(2, 2), 2, 2)


def test_signature_strokes_are_stored_as_tuples() -> None:
    sig = Signature([[[1, 2, 3], (4, 5, 6)]], png_gray(2, 2), 2, 2)  # type: ignore[list-item]
    assert sig.strokes == (((1, 2, 3), (4, 5, 6)),)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "demographics.name"),
        ({"name": "   "}, "demographics.name"),
        ({"name": "Siti\nRahmawati"}, "demographics.name"),
        ({"address": "x" * 501}, "demographics.address"),
        ({"religion": None}, "demographics.religion"),
        ({"sex": "X"}, "demographics.sex"),
        ({"birth_date": "2001-01-05"}, "demographics.birth_date"),
        ({"birth_date": dt.datetime(2001, 1, 5)}, "demographics.birth_date"),
        ({"occupation": "\x85"}, "demographics.occupation"),
        ({"birth_place": "Bandung\ud800"}, "demographics.birth_place"),
    ],
)
def test_demographics_fields(overrides: dict[str, object], field: str) -> None:
    _raises(field, small_demographics, **overrides)


def test_nik_must_agree_with_demographics() -> None:
    err = _raises("nik", small_record, nik="3171011708450001")  # a man born 1945
    assert "does not match" in str(err)
    _raises("nik", small_record, nik="31710145010100")
    _raises("nik", small_record, nik="9971014501010001")
    male = small_demographics(sex=Sex.MALE)
    err = _raises("demographics.sex", small_record, demographics=male)
    assert "the NIK says 'F'" in str(err)


def test_future_birth_date_is_refused() -> None:
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    nik = f"317101{tomorrow.day + 40:02d}{tomorrow.month:02d}{tomorrow.year % 100:02d}0001"
    err = _raises("nik", small_record, nik=nik, demographics=small_demographics(birth_date=tomorrow))
    assert "in the future" in str(err)


def test_a_kiosk_clock_in_1970_does_not_make_birth_dates_future(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wire.nik._system_date", lambda: dt.date(1970, 1, 1))
    assert small_record().demographics.birth_date == dt.date(2001, 1, 5)


def test_record_parts_must_have_their_types() -> None:
    _raises("face", small_record, face=b"jpeg")
    _raises("right_iris", small_record, right_iris=None)


# --- binary round trip -------------------------------------------------------------------


V1_RECORD = small_record(
    right_iris=IrisImage(png_gray(6, 4, 11), 6, 4, 80), left_iris=IrisImage(png_gray(6, 4, 12), 6, 4, 81)
)


def test_version_1_is_still_read() -> None:
    data = record_v1_bytes(V1_RECORD)
    assert data[0] == 1
    assert EnrollmentRecord.from_bytes(data) == V1_RECORD
    no_fingers = {p: Fingerprint(p, None, 0, 0, 0, 1, FingerException.MISSING) for p in FingerPosition}
    bare = dataclasses.replace(V1_RECORD, fingerprints=no_fingers)
    assert EnrollmentRecord.from_bytes(record_v1_bytes(bare)) == bare


def test_version_2_refuses_what_its_formats_cannot_carry() -> None:
    err = _raises("iir.image_format", V1_RECORD.to_bytes)
    assert "png" in str(err) and "JPEG 2000" in str(err)
    fingers = small_fingers()
    fingers[1] = Fingerprint(1, jp2_gray(4, 4), 4, 4, 70, 1)  # one JPEG 2000 finger among PNG ones
    err = _raises("fir.compression", small_record(fingerprints=fingers).to_bytes)
    assert "one codec" in str(err)
    far = Signature([[(40_000, 2, 3)]], png_gray(2, 2), 2, 2)
    assert "signed 16-bit" in str(_raises("sdi.samples", small_record(signature=far).to_bytes))


def test_version_2_blobs_are_interchange_records() -> None:
    record = small_record()
    data = record.to_bytes()
    (meta_len,) = struct.unpack_from(">I", data, 1)
    (count,) = struct.unpack_from(">H", data, 5 + meta_len)
    lengths = struct.unpack_from(f">{count}I", data, 7 + meta_len)
    pos, blobs = 7 + meta_len + 4 * count, []
    for n in lengths:
        blobs.append(data[pos : pos + n])
        pos += n
    assert [b[:4] for b in blobs] == [b"FAC\x00", b"FIR\x00", b"IIR\x00", b"SDI\x00", b"\x89PNG"]
    assert blobs == [*record.interchange_records().values(), record.signature.png]
    meta = json.loads(data[5 : 5 + meta_len])
    assert set(meta) == {"nik", "demographics", "fingerprints"}  # sizes and qualities live in the records
    no_fingers = {p: Fingerprint(p, None, 0, 0, 0, 1, FingerException.MISSING) for p in FingerPosition}
    bare = small_record(fingerprints=no_fingers)
    assert "finger" not in bare.interchange_records()
    assert EnrollmentRecord.from_bytes(bare.to_bytes()) == bare


def test_round_trip_small() -> None:
    record = small_record()
    data = record.to_bytes()
    assert EnrollmentRecord.from_bytes(data) == record
    assert data[0] == RECORD_VERSION


def test_no_base64_the_blobs_are_raw() -> None:
    record = small_record()
    data = record.to_bytes()
    assert record.face.image in data
    assert record.right_iris.image in data
    (meta_len,) = struct.unpack_from(">I", data, 1)
    meta = json.loads(data[5 : 5 + meta_len])
    assert meta["nik"] == record.nik
    assert [f["exception"] for f in meta["fingerprints"]].count("unusable") == 1


def test_round_trip_without_missing_fingers() -> None:
    record = small_record(fingerprints=small_fingers(missing=None))
    assert EnrollmentRecord.from_bytes(record.to_bytes()) == record


def _meta_edit(data: bytes, edit: object) -> bytes:
    (meta_len,) = struct.unpack_from(">I", data, 1)
    meta = json.loads(data[5 : 5 + meta_len])
    assert callable(edit)
    edit(meta)
    new = json.dumps(meta).encode()
    return data[:1] + struct.pack(">I", len(new)) + new + data[5 + meta_len :]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("nik"), "metadata.nik"),
        (lambda m: m["demographics"].update(birth_date="5 Jan 2001"), "metadata.demographics.birth_date"),
        (lambda m: m["fingerprints"].pop(), "metadata.fingerprints"),
        (lambda m: m["fingerprints"][2].update(position=7), "metadata.fingerprints[2].position"),
        (lambda m: m["fingerprints"][3].update(exception=None), "fir"),  # the finger record lacks it
        (lambda m: m["fingerprints"][3].update(attempts="3"), "metadata.fingerprints[3].attempts"),
        (
            lambda m: [
                m["fingerprints"][0].update(exception="missing"),
                m["fingerprints"][3].update(exception=None),
            ],
            "fir",
        ),
        (lambda m: [f.update(exception="missing") for f in m["fingerprints"]], "encoding"),  # a blob too many
    ],
)
def test_metadata_errors_name_the_field(edit: object, field: str) -> None:
    data = _meta_edit(small_record().to_bytes(), edit)
    with pytest.raises(InvalidRecord) as info:
        EnrollmentRecord.from_bytes(data)
    assert info.value.field.startswith(field), str(info.value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "too short"),
        (b"\x03" + bytes(10), "record version 3, this code reads 1 and 2"),
        (b"\x01\xff\xff\xff\xff" + bytes(10), "metadata length"),
        (b"\x01\x00\x00\x00\x02{}\xff\xff", "blob table"),
        (b"\x01\x00\x00\x00\x02[]\x00\x00", "must be a JSON object"),
        (b"\x01\x00\x00\x00\x03NaN\x00\x00", "not valid UTF-8 JSON"),
        (b"\x01\x00\x00\x00\x02\xff\xfe\x00\x00", "not valid UTF-8 JSON"),
        (b"\x01\x00\x00\x00\x02{}\x00\x01\x00\x00\x00\x05abc", "blob lengths"),
    ],
)
def test_bad_encodings(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidRecord, match=problem):
        EnrollmentRecord.from_bytes(data)


def test_trailing_bytes_after_blobs_are_refused() -> None:
    with pytest.raises(InvalidRecord, match="blob lengths"):
        EnrollmentRecord.from_bytes(small_record().to_bytes() + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_invalid_record_only(data: bytes) -> None:
    for version in (b"\x01", b"\x02"):
        with pytest.raises(InvalidRecord):
            EnrollmentRecord.from_bytes(version + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_encodings_give_invalid_record_or_a_record(data: st.DataObject) -> None:
    good = bytearray(data.draw(st.sampled_from([small_record().to_bytes(), record_v1_bytes(V1_RECORD)])))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidRecord):
        EnrollmentRecord.from_bytes(bytes(good))


# --- logs never see biometrics -----------------------------------------------------------


def test_repr_shows_no_biometrics_and_no_personal_data() -> None:
    record = small_record()
    text = repr(record) + str(record)
    parts = [
        record.face,
        record.right_iris,
        record.signature,
        record.demographics,
        *record.fingerprints.values(),
    ]
    text += "".join(repr(p) + str(p) for p in parts)
    for blob in (
        record.face.image,
        record.right_iris.image,
        record.signature.png,
        record.fingerprints[1].image,
    ):
        assert blob is not None
        assert repr(blob)[2:40] not in text
        assert repr(blob[:8]) not in text
    assert "\\x" not in text and "b'" not in text and 'b"' not in text
    assert record.nik not in text
    assert record.demographics.name not in text
    assert record.demographics.address not in text
    assert "300, (3" not in text  # stroke points
    assert "9/10 captured" in text


def test_records_are_frozen() -> None:
    record = small_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.nik = "3171011708450001"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.fingerprints[1] = record.fingerprints[2]  # type: ignore[index]


def test_finger_positions_follow_iso_19794_4() -> None:
    assert FingerPosition(1).name == "RIGHT_THUMB"
    assert FingerPosition(5).name == "RIGHT_LITTLE"
    assert FingerPosition(6).name == "LEFT_THUMB"
    assert FingerPosition(10).name == "LEFT_LITTLE"


def test_strokes_round_trip_extremes() -> None:
    rnd = random.Random(3)
    strokes = [
        [(rnd.randrange(MAX_COORD + 1), 0, MAX_COORD) for _ in range(rnd.randrange(1, 300))] for _ in range(5)
    ]
    sig = Signature(strokes, png_gray(2, 2), 2, 2)
    assert Signature.strokes_from_bytes(sig.strokes_bytes()) == sig.strokes


def test_the_capture_block_is_optional_bounded_and_checked() -> None:
    record = small_record()
    data = record.to_bytes()
    (meta_len,) = struct.unpack_from(">I", data, 1)
    assert record.capture is None and "capture" not in json.loads(data[5 : 5 + meta_len])
    scores = {"finger_scores": {"2": [{"against": 1, "score": 17}]}}
    kept = dataclasses.replace(record, capture=scores)
    assert EnrollmentRecord.from_bytes(kept.to_bytes()).capture == scores
    assert EnrollmentRecord.from_bytes(record.to_bytes()).capture is None  # an older kiosk's record
    for bad in (
        ["not", "an", "object"],
        {"finger_scores": {"11": []}},
        {"finger_scores": {"2": [{"against": 1, "score": -1}]}},
        {"finger_scores": {"2": [{"against": 1, "score": 1, "extra": 0}]}},
        {"blob": "x" * 20000},
    ):
        with pytest.raises(InvalidRecord) as caught:
            dataclasses.replace(record, capture=bad)  # type: ignore[arg-type]
        assert caught.value.field.startswith("capture")
