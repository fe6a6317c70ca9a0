"""The record version 1 layout (before issue 15), written as a kiosk of then wrote it, for the
tests that the centre still reads it: PNG fingers and irises, the camera's JPEG, each image's
size and quality in the metadata (docs/protocol.md, "Record version 1")."""

from __future__ import annotations

import json
import struct

from wire.record import EnrollmentRecord, FingerPosition


def record_v1_bytes(record: EnrollmentRecord) -> bytes:
    """``record`` in the version 1 layout (its images as they are: PNG ones for a true version 1)."""
    d = record.demographics
    fingers = [
        {
            "position": int(pos),
            "width": f.width,
            "height": f.height,
            "quality": f.quality,
            "attempts": f.attempts,
            "exception": f.exception.value if f.exception else None,
        }
        for pos in FingerPosition
        for f in [record.fingerprints[pos]]
    ]
    iris = {
        eye: {"width": i.width, "height": i.height, "quality": i.quality}
        for eye, i in (("right", record.right_iris), ("left", record.left_iris))
    }
    meta = {
        "nik": record.nik,
        "demographics": {
            "name": d.name, "sex": d.sex.value, "birth_date": d.birth_date.isoformat(),
            "birth_place": d.birth_place, "address": d.address, "religion": d.religion,
            "marital_status": d.marital_status, "occupation": d.occupation, "nationality": d.nationality,
        },
        "face": {"width": record.face.width, "height": record.face.height, "quality": record.face.quality},
        "fingerprints": fingers,
        "irises": iris,
        "signature": {"width": record.signature.width, "height": record.signature.height},
    }  # fmt: skip
    if record.capture is not None:
        meta["capture"] = dict(record.capture)
    blobs = [
        record.face.image,
        *(f.image for pos in FingerPosition if (f := record.fingerprints[pos]).image is not None),
        record.right_iris.image,
        record.left_iris.image,
        record.signature.png,
        record.signature.strokes_bytes(),
    ]
    meta_bytes = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    table = struct.pack(f">H{len(blobs)}I", len(blobs), *(len(b) for b in blobs))
    return struct.pack(">BI", 1, len(meta_bytes)) + meta_bytes + table + b"".join(blobs)


class _RecordV1(EnrollmentRecord):
    """An enrollment record that encodes itself in the version 1 layout (an older kiosk's)."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        return record_v1_bytes(self)


def as_version_1(record: EnrollmentRecord) -> EnrollmentRecord:
    """``record`` as an older kiosk sealed it: ``wire.packet.seal`` writes its version 1 bytes."""
    fields = {f: getattr(record, f) for f in record.__dataclass_fields__}
    return _RecordV1(**fields)
