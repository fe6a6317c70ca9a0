"""Compress an enrollment's images to what the record's interchange formats carry.

The capture session builds the record from the drivers' lossless images (PNG fingers and
irises, the camera's JPEG); this makes them what record version 2 sends: fingers and irises
as JPEG 2000 at the ratios of ``wire.image_codec``, the face as a JPEG of quality
``FACE_JPEG_QUALITY``. The ratios were chosen by ``bench/record_size.py``, which measures each
modality's quality measure before and after (docs/benchmarks.md, "Record size"). The
qualities in the record stay those the drivers measured on the lossless capture.
Images already compressed are left as they are, so compressing twice changes nothing.
"""

from __future__ import annotations

import dataclasses

from wire.image_codec import FINGER_J2K_RATIO, IRIS_J2K_RATIO, Codec, as_gray_jp2, face_jpeg, image_info
from wire.record import EnrollmentRecord, FaceImage, Fingerprint, IrisImage


def compress_record(record: EnrollmentRecord) -> EnrollmentRecord:
    """The same enrollment with its images compressed for record version 2."""
    fingers = {pos: _finger(f) for pos, f in record.fingerprints.items()}
    return dataclasses.replace(
        record,
        face=_face(record.face),
        fingerprints=fingers,
        right_iris=_iris(record.right_iris),
        left_iris=_iris(record.left_iris),
    )


def _finger(finger: Fingerprint) -> Fingerprint:
    if finger.image is None:
        return finger
    return dataclasses.replace(finger, image=as_gray_jp2(finger.image, ratio=FINGER_J2K_RATIO))


def _iris(iris: IrisImage) -> IrisImage:
    return dataclasses.replace(iris, image=as_gray_jp2(iris.image, ratio=IRIS_J2K_RATIO))


def _face(face: FaceImage) -> FaceImage:
    if image_info(face.image).codec is not Codec.JPEG:
        return face
    return dataclasses.replace(face, image=face_jpeg(face.image))
