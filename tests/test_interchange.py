"""Record version 2's interchange records, read by the independent validator
(tests/iso19794_validator.py, written from the standards apart from wire/iso19794.py): each
record the kiosk writes conforms, and its fields say what the enrollment says."""

from __future__ import annotations

import dataclasses

import pytest

from hw_sim.residents import synthetic_resident
from tests.factories import record_from_resident, small_fingers, small_record
from tests.iso19794_validator import (
    NonConformance,
    validate_any,
    validate_fac,
    validate_fir,
    validate_iir,
    validate_sdi,
)
from wire.record import EnrollmentRecord, FingerException, FingerPosition, Fingerprint


@pytest.fixture(scope="module")
def residents() -> list[EnrollmentRecord]:
    # seed 3 lacks a finger; 4-bit and 8-bit finger textures
    return [
        record_from_resident(synthetic_resident(1)),
        record_from_resident(synthetic_resident(3)),
        record_from_resident(synthetic_resident(2), finger_bits=8),
    ]


def _all(residents: list[EnrollmentRecord]) -> list[EnrollmentRecord]:
    no_fingers = {p: Fingerprint(p, None, 0, 0, 0, 2, FingerException.MISSING) for p in FingerPosition}
    return [*residents, small_record(), small_record(fingerprints=no_fingers)]


def test_every_record_conforms_and_says_what_the_enrollment_says(residents: list[EnrollmentRecord]) -> None:
    for record in _all(residents):
        parts = record.interchange_records()
        face = validate_fac(parts["face"]).images
        assert len(face) == 1
        assert (face[0].width, face[0].height, face[0].quality) == (
            record.face.width,
            record.face.height,
            record.face.quality,
        )
        assert face[0].gender == {"M": 1, "F": 2}[record.demographics.sex.value]
        assert face[0].image == record.face.image

        captured = {int(p): f for p, f in record.fingerprints.items() if f.image is not None}
        if captured:
            fir = validate_fir(parts["finger"])
            assert fir.num_images == len(captured) == len(fir.views)
            assert (fir.scan_resolution_h, fir.image_resolution_v, fir.pixel_depth) == (500, 500, 8)
            for view in fir.views:
                finger = captured[view.finger_position]
                assert (view.width, view.height, view.quality) == (
                    finger.width,
                    finger.height,
                    finger.quality,
                )
                assert view.image == finger.image
        else:
            assert "finger" not in parts

        iir = validate_iir(parts["iris"])
        eyes = {s.eye_position: s.images for s in iir.subtypes}
        assert set(eyes) == {1, 2} and all(len(images) == 1 for images in eyes.values())
        for eye, iris in ((1, record.right_iris), (2, record.left_iris)):
            assert (eyes[eye][0].quality, eyes[eye][0].image) == (iris.quality, iris.image)
        assert (iir.width, iir.height, iir.intensity_depth) == (
            record.right_iris.width,
            record.right_iris.height,
            8,
        )

        sdi = validate_sdi(parts["signature"])
        assert sdi.channels == ("X", "Y", "F", "S") or [c.upper() for c in sdi.channels] == [
            "X",
            "Y",
            "F",
            "S",
        ]
        pen_down = [sample[:3] for sample in sdi.samples if sample[3] == 1]
        assert pen_down == [point for stroke in record.signature.strokes for point in stroke]
        assert sum(1 for sample in sdi.samples if sample[3] == 0) == len(record.signature.strokes) - 1


def test_full_enrollments_use_the_compressed_codecs(residents: list[EnrollmentRecord]) -> None:
    for record in residents:
        parts = record.interchange_records()
        assert validate_fir(parts["finger"]).compression == 4  # JPEG 2000
        assert validate_iir(parts["iris"]).image_format == 14  # monochrome JPEG 2000
        assert validate_fac(parts["face"]).images[0].image_data_type == 0  # JPEG
        assert all(validate_any(part) for part in parts.values())


def test_the_validator_catches_a_broken_encoding(residents: list[EnrollmentRecord]) -> None:
    # the tests above can fail: the same records, each bent in one field, are refused
    parts = residents[0].interchange_records()
    bent = {
        "finger": parts["finger"][:8] + (len(parts["finger"]) + 1).to_bytes(6, "big") + parts["finger"][14:],
        "face": parts["face"][:12] + b"\x00\x02" + parts["face"][14:],
        "iris": parts["iris"][:-1],
        "signature": parts["signature"] + b"\x00",
    }
    for data in bent.values():
        with pytest.raises(NonConformance):
            validate_any(data)
    small = dataclasses.replace(small_record(), fingerprints=small_fingers(missing=None))
    assert validate_fir(small.interchange_records()["finger"]).compression == 5  # PNG, in tests' tiny records
