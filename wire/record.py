"""The enrollment record: NIK, demographics and biometrics, with its binary encoding.

Every class validates itself on construction and raises ``InvalidRecord`` naming the
field at fault. ``EnrollmentRecord.to_bytes()`` is the packet's plaintext body: a small
JSON metadata block followed by the binary blobs with their lengths (never base64),
drawn in docs/protocol.md ("The enrollment packet")::

    u8 record_version | u32 meta_len | meta (UTF-8 JSON) | u16 blob_count
    | blob_count x u32 blob_len | blobs, concatenated          (all big-endian)

Version 2 (written since issue 15) carries the biometrics as ISO/IEC 19794 interchange
records (``wire.iso19794``): a face record, a finger record, an iris record of both eyes and a
signature time series, then the rendered signature PNG; the metadata keeps what those formats
have no field for (NIK, demographics, each finger's attempts and exception, the capture
block). Version 1 (the kiosk's own layout: PNG fingers and irises, the camera's JPEG, each
with its size and quality in the metadata) is still read, so a kiosk's older packets and
exports keep opening at the centre.

No ``repr`` here ever shows biometric bytes or strokes (they must never reach logs), and
personal data (NIK, name, address) is masked too.

Error tree::

    ValueError
     +-- InvalidRecord
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

from wire import iso19794
from wire.image_codec import BadImage, Codec, image_info
from wire.iso19794 import ImageView, InterchangeError
from wire.nik import InvalidNik, Sex, validate_nik

RECORD_VERSION = 2  # what to_bytes writes
READ_VERSIONS = (1, 2)
MAX_RECORD_BYTES = 64 * 1024 * 1024
MAX_BLOB_BYTES = 16 * 1024 * 1024
MAX_META_BYTES = 1024 * 1024
MAX_IMAGE_SIDE = 10_000
MAX_TEXT = 500
MAX_ATTEMPTS = 255
MAX_STROKES = 10_000
MAX_STROKE_POINTS = 65_535
MAX_COORD = 65_535


Point = tuple[int, int, int]  # x, y, pressure in the pad's units


class InvalidRecord(ValueError):
    """An enrollment record (or its encoding) is invalid; ``field`` names what is at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid enrollment record: {field}: {problem}")
        self.field = field
        self.problem = problem


class FingerPosition(IntEnum):
    """Finger position codes of ISO/IEC 19794-4 (table 2)."""

    RIGHT_THUMB = 1
    RIGHT_INDEX = 2
    RIGHT_MIDDLE = 3
    RIGHT_RING = 4
    RIGHT_LITTLE = 5
    LEFT_THUMB = 6
    LEFT_INDEX = 7
    LEFT_MIDDLE = 8
    LEFT_RING = 9
    LEFT_LITTLE = 10


class FingerException(StrEnum):
    """Why a finger has no image: absent (amputated) or present but not capturable."""

    MISSING = "missing"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True, repr=False)
class Demographics:
    """What the resident declares (from the Kartu Keluarga); free text is bounded."""

    name: str
    sex: Sex
    birth_date: dt.date
    birth_place: str
    address: str
    religion: str
    marital_status: str = ""
    occupation: str = ""
    nationality: str = "WNI"

    def __post_init__(self) -> None:
        for name in ("name", "birth_place", "address", "religion"):
            _check_text(f"demographics.{name}", getattr(self, name), required=True)
        for name in ("marital_status", "occupation", "nationality"):
            _check_text(f"demographics.{name}", getattr(self, name), required=False)
        try:
            object.__setattr__(self, "sex", Sex(self.sex))
        except (ValueError, TypeError):
            raise InvalidRecord("demographics.sex", f"must be 'M' or 'F', got {self.sex!r}") from None
        if type(self.birth_date) is not dt.date:
            raise InvalidRecord("demographics.birth_date", f"must be a date, got {self.birth_date!r}")

    def __repr__(self) -> str:
        return f"Demographics(name=<{len(self.name)} chars>, sex={self.sex.value!r}, birth_year={self.birth_date.year})"


@dataclass(frozen=True, slots=True, repr=False)
class FaceImage:
    """The face photo: JPEG (or JPEG 2000) bytes, with size and quality (0..100)."""

    image: bytes
    width: int
    height: int
    quality: int

    def __post_init__(self) -> None:
        _check_dims("face", self.width, self.height)
        _check_int("face.quality", self.quality, 0, 100)
        _check_image("face.image", self.image, self.width, self.height, FACE_CODECS, gray=False)

    def __repr__(self) -> str:
        return (
            f"FaceImage({self.width}x{self.height}, quality={self.quality}, image=<{len(self.image)} bytes>)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class Fingerprint:
    """One finger: an 8-bit grayscale image (JPEG 2000, or PNG in version 1) or, when there is
    none, the exception reason."""

    position: FingerPosition
    image: bytes | None
    width: int
    height: int
    quality: int
    attempts: int
    exception: FingerException | None = None

    def __post_init__(self) -> None:
        field = f"fingerprints[{self.position!r}]"
        if not isinstance(self.position, int) or isinstance(self.position, bool):
            raise InvalidRecord(field, "position must be an ISO/IEC 19794-4 code 1..10")
        try:
            object.__setattr__(self, "position", FingerPosition(self.position))
        except ValueError:
            raise InvalidRecord(field, "position must be an ISO/IEC 19794-4 code 1..10") from None
        field = f"fingerprints[{int(self.position)}]"
        if self.exception is not None:
            try:
                object.__setattr__(self, "exception", FingerException(self.exception))
            except (ValueError, TypeError):
                raise InvalidRecord(
                    f"{field}.exception", f"must be 'missing' or 'unusable', got {self.exception!r}"
                ) from None
        _check_int(f"{field}.attempts", self.attempts, 0, MAX_ATTEMPTS)
        _check_int(f"{field}.quality", self.quality, 0, 100)
        if self.image is None:
            if self.exception is None:
                raise InvalidRecord(
                    f"{field}.exception", "a finger without an image needs an exception reason"
                )
            if (self.width, self.height, self.quality) != (0, 0, 0):
                raise InvalidRecord(field, "a finger without an image must have width, height, quality 0")
        else:
            if self.exception is not None:
                raise InvalidRecord(f"{field}.exception", "a finger with an image cannot have an exception")
            if self.attempts < 1:
                raise InvalidRecord(f"{field}.attempts", "a captured finger took at least one attempt")
            _check_dims(field, self.width, self.height)
            _check_image(f"{field}.image", self.image, self.width, self.height, GRAY_CODECS, gray=True)

    def __repr__(self) -> str:
        if self.image is None:
            what = f"exception={self.exception.value if self.exception else None!r}"
        else:
            what = f"{self.width}x{self.height}, quality={self.quality}, image=<{len(self.image)} bytes>"
        return f"Fingerprint({self.position.name}, {what}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True, repr=False)
class IrisImage:
    """One eye: 8-bit grayscale (JPEG 2000, or PNG in version 1) with its size and quality (0..100)."""

    image: bytes
    width: int
    height: int
    quality: int

    def __post_init__(self) -> None:
        _check_dims("iris", self.width, self.height)
        _check_int("iris.quality", self.quality, 0, 100)
        _check_image("iris.image", self.image, self.width, self.height, GRAY_CODECS, gray=True)

    def __repr__(self) -> str:
        return (
            f"IrisImage({self.width}x{self.height}, quality={self.quality}, image=<{len(self.image)} bytes>)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class Signature:
    """The signature: pen strokes of (x, y, pressure) in pad units and the rendered PNG."""

    strokes: Sequence[Sequence[Point]]  # stored as tuples
    png: bytes
    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "strokes", _normalise_strokes(self.strokes))
        _check_dims("signature", self.width, self.height)
        _check_image("signature.png", self.png, self.width, self.height, {Codec.PNG}, gray=True)

    def strokes_bytes(self) -> bytes:
        """The strokes' binary encoding: u16 count, then per stroke u16 n and n x (x, y, p) u16."""
        out = bytearray(struct.pack(">H", len(self.strokes)))
        for stroke in self.strokes:
            out += struct.pack(">H", len(stroke))
            for point in stroke:
                out += struct.pack(">HHH", *point)
        return bytes(out)

    @classmethod
    def strokes_from_bytes(cls, data: bytes) -> tuple[tuple[Point, ...], ...]:
        """Decode ``strokes_bytes``; raises InvalidRecord on anything but an exact encoding."""
        if len(data) < 2:
            raise InvalidRecord("signature.strokes", "encoding too short")
        (count,) = struct.unpack_from(">H", data, 0)
        pos, strokes = 2, []
        for _ in range(count):
            if pos + 2 > len(data):
                raise InvalidRecord("signature.strokes", "encoding truncated")
            (n,) = struct.unpack_from(">H", data, pos)
            pos += 2
            end = pos + 6 * n
            if end > len(data):
                raise InvalidRecord("signature.strokes", "encoding truncated")
            strokes.append(tuple(struct.iter_unpack(">HHH", data[pos:end])))
            pos = end
        if pos != len(data):
            raise InvalidRecord("signature.strokes", f"{len(data) - pos} trailing bytes after the strokes")
        return _normalise_strokes(strokes)

    def __repr__(self) -> str:
        points = sum(len(s) for s in self.strokes)
        return (
            f"Signature({len(self.strokes)} strokes, {points} points, {self.width}x{self.height}, "
            f"png=<{len(self.png)} bytes>)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class EnrollmentRecord:
    """One resident's enrollment: validated NIK, demographics and all biometrics."""

    nik: str
    demographics: Demographics
    face: FaceImage
    fingerprints: Mapping[int, Fingerprint]
    right_iris: IrisImage
    left_iris: IrisImage
    signature: Signature
    # what the capture session measured besides the biometrics (e.g. the fingerprint module's
    # match scores between the ten fingers: {"finger_scores": {"2": [{"against": 1, "score": 12}]}}),
    # None for a record made without a session (synthetic, or an older kiosk)
    capture: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, cls in (
            ("demographics", Demographics),
            ("face", FaceImage),
            ("right_iris", IrisImage),
            ("left_iris", IrisImage),
            ("signature", Signature),
        ):
            if not isinstance(getattr(self, name), cls):
                raise InvalidRecord(
                    name, f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}"
                )
        try:
            info = validate_nik(self.nik, birth_date=self.demographics.birth_date)
        except InvalidNik as exc:
            raise InvalidRecord("nik", exc.problem) from exc
        if info.sex is not self.demographics.sex:
            raise InvalidRecord(
                "demographics.sex", f"is {self.demographics.sex.value!r} but the NIK says {info.sex.value!r}"
            )
        object.__setattr__(self, "fingerprints", _check_fingerprints(self.fingerprints))
        if self.capture is not None:
            object.__setattr__(self, "capture", _check_capture(self.capture))

    def biometric_bytes(self) -> int:
        """Size of the raw biometric data: all image blobs plus the encoded strokes."""
        return sum(len(blob) for blob in self._blobs())

    def captured_fingers(self) -> int:
        """How many of the ten fingers have an image."""
        return sum(1 for f in self.fingerprints.values() if f.image is not None)

    def to_bytes(self) -> bytes:
        """The binary encoding (the packet's plaintext body), record version 2.

        :raises InvalidRecord: an image in a codec its interchange format has no code for (a
            PNG iris, fingers in two codecs): compress the record first (agent.compression)
        """
        blobs = self._interchange_blobs()
        meta = json.dumps(self._metadata(), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        meta_bytes = meta.encode("utf-8")
        parts = [
            struct.pack(">BI", RECORD_VERSION, len(meta_bytes)),
            meta_bytes,
            struct.pack(f">H{len(blobs)}I", len(blobs), *(len(b) for b in blobs)),
            *blobs,
        ]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EnrollmentRecord:
        """Decode ``to_bytes`` of version 2, or of version 1; raises InvalidRecord (never anything
        else) on bad input."""
        return _decode(bytes(data))

    def interchange_records(self) -> dict[str, bytes]:
        """The ISO/IEC 19794 records of this enrollment, by part: "face" (19794-5), "finger"
        (19794-4, absent when no finger was captured), "iris" (19794-6), "signature" (19794-7).

        :raises InvalidRecord: as ``to_bytes``
        """
        views = [
            ImageView(int(pos), f.quality, f.width, f.height, f.image)
            for pos, f in self.fingerprints.items()
            if f.image is not None
        ]
        face = ImageView(0, self.face.quality, self.face.width, self.face.height, self.face.image)
        right, left = (
            ImageView(eye, i.quality, i.width, i.height, i.image)
            for eye, i in ((iso19794.EYE_RIGHT, self.right_iris), (iso19794.EYE_LEFT, self.left_iris))
        )
        try:
            out = {"face": iso19794.face_record(face, sex=self.demographics.sex.value)}
            if views:
                out["finger"] = iso19794.finger_record(views)
            out["iris"] = iso19794.iris_record(
                right, left, device_id=iso19794.iris_device_id(self._iris_serial())
            )
            out["signature"] = iso19794.signature_record(self.signature.strokes)
        except InterchangeError as exc:
            raise InvalidRecord(exc.field, exc.problem) from None
        return out

    def _iris_serial(self) -> str | None:
        """The iris camera's serial from the capture block (``devices.iris.serial``), if any."""
        devices = (self.capture or {}).get("devices")
        iris = devices.get("iris") if isinstance(devices, Mapping) else None
        serial = iris.get("serial") if isinstance(iris, Mapping) else None
        return serial if isinstance(serial, str) else None

    def _interchange_blobs(self) -> list[bytes]:
        # The blob table of version 2 (docs/protocol.md, "Record version 2").
        records = self.interchange_records()
        blobs = [records["face"]]
        if "finger" in records:
            blobs.append(records["finger"])
        return [*blobs, records["iris"], records["signature"], self.signature.png]

    def _blobs(self) -> Iterator[bytes]:
        yield self.face.image
        for pos in FingerPosition:
            image = self.fingerprints[pos].image
            if image is not None:
                yield image
        yield self.right_iris.image
        yield self.left_iris.image
        yield self.signature.png
        yield self.signature.strokes_bytes()

    def _metadata(self) -> dict[str, Any]:
        d = self.demographics
        fingers = [
            {
                "position": int(pos),
                "attempts": self.fingerprints[pos].attempts,
                "exception": (e.value if (e := self.fingerprints[pos].exception) else None),
            }
            for pos in FingerPosition
        ]
        return {
            "nik": self.nik,
            "demographics": {
                "name": d.name,
                "sex": d.sex.value,
                "birth_date": d.birth_date.isoformat(),
                "birth_place": d.birth_place,
                "address": d.address,
                "religion": d.religion,
                "marital_status": d.marital_status,
                "occupation": d.occupation,
                "nationality": d.nationality,
            },
            "fingerprints": fingers,
        } | ({} if self.capture is None else {"capture": dict(self.capture)})

    def __repr__(self) -> str:
        return (
            f"EnrollmentRecord(nik={self.nik[:6]}**********, fingers={self.captured_fingers()}/10 captured, "
            f"biometric_bytes={self.biometric_bytes()})"
        )


# --- validation helpers -----------------------------------------------------------------

MAX_CAPTURE_JSON = 16 * 1024


def _check_capture(capture: object) -> dict[str, Any]:
    """The capture block: a JSON object of at most 16 KiB whose ``finger_scores``, if any, map a
    finger position to [{"against": position, "score": 0-65535}]. :raises InvalidRecord:"""
    if not isinstance(capture, Mapping):
        raise InvalidRecord("capture", "must be a JSON object")
    try:
        size = len(json.dumps(capture, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord("capture", f"not plain JSON: {exc}") from None
    if size > MAX_CAPTURE_JSON:
        raise InvalidRecord("capture", f"{size} bytes of JSON, more than {MAX_CAPTURE_JSON}")
    scores = capture.get("finger_scores", {})
    if not isinstance(scores, Mapping):
        raise InvalidRecord("capture.finger_scores", "must be a JSON object")
    for position, pairs in scores.items():
        if str(position) not in {str(int(p)) for p in FingerPosition} or not isinstance(pairs, list):
            raise InvalidRecord(
                f"capture.finger_scores.{str(position)[:8]}", "not a finger position with a list"
            )
        for pair in pairs:
            ok = isinstance(pair, Mapping) and set(pair) == {"against", "score"}
            if not ok or not all(
                type(pair[k]) is int and 0 <= pair[k] <= 65535 for k in ("against", "score")
            ):
                raise InvalidRecord(
                    f"capture.finger_scores.{position}",
                    'each entry is {"against": position, "score": 0-65535}',
                )
    return dict(capture)


def _check_int(field: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRecord(field, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidRecord(field, f"must be in {lo}..{hi}, got {value}")


def _check_dims(field: str, width: object, height: object) -> None:
    _check_int(f"{field}.width", width, 1, MAX_IMAGE_SIDE)
    _check_int(f"{field}.height", height, 1, MAX_IMAGE_SIDE)


def _check_text(field: str, value: object, *, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidRecord(field, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRecord(field, "must not be empty")
    if len(value) > MAX_TEXT:
        raise InvalidRecord(field, f"longer than {MAX_TEXT} characters ({len(value)})")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise InvalidRecord(field, "contains control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidRecord(field, "contains a lone surrogate (not encodable as UTF-8)")


def _check_blob(field: str, blob: object) -> bytes:
    if not isinstance(blob, bytes):
        raise InvalidRecord(field, f"must be bytes, got {type(blob).__name__}")
    if len(blob) > MAX_BLOB_BYTES:
        raise InvalidRecord(field, f"larger than {MAX_BLOB_BYTES} bytes ({len(blob)})")
    return blob


GRAY_CODECS = frozenset({Codec.PNG, Codec.JPEG2000})
FACE_CODECS = frozenset({Codec.JPEG, Codec.JPEG2000})


def _check_image(
    field: str, blob: object, width: int, height: int, codecs: frozenset[Codec] | set[Codec], *, gray: bool
) -> None:
    """The image's headers (nothing is decoded): a codec of ``codecs`` and the declared size; when
    ``gray``, one component of 8 bits."""
    data = _check_blob(field, blob)
    try:
        info = image_info(data)
    except BadImage as exc:
        raise InvalidRecord(field, str(exc)) from None
    if info.codec not in codecs:
        allowed = " or ".join(sorted(c.value for c in codecs))
        raise InvalidRecord(field, f"a {info.codec.value} image where {allowed} is expected")
    if gray and (info.components, info.bits) != (1, 8):
        raise InvalidRecord(
            field, f"must be 8-bit grayscale, got {info.components} components of {info.bits} bits"
        )
    if (info.width, info.height) != (width, height):
        raise InvalidRecord(
            field,
            f"the {info.codec.value} image is {info.width}x{info.height} but the record says {width}x{height}",
        )


def _normalise_strokes(strokes: object) -> tuple[tuple[Point, ...], ...]:
    field = "signature.strokes"
    if not isinstance(strokes, Sequence) or isinstance(strokes, str | bytes):
        raise InvalidRecord(field, "must be a list of strokes")
    if not 1 <= len(strokes) <= MAX_STROKES:
        raise InvalidRecord(field, f"must have 1..{MAX_STROKES} strokes, got {len(strokes)}")
    out = []
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, Sequence) or not 1 <= len(stroke) <= MAX_STROKE_POINTS:
            raise InvalidRecord(f"{field}[{i}]", f"must be a list of 1..{MAX_STROKE_POINTS} points")
        points: list[Point] = []
        for j, point in enumerate(stroke):
            values = tuple(point) if isinstance(point, Sequence) and len(point) == 3 else ()
            ints = [v for v in values if type(v) is int and 0 <= v <= MAX_COORD]
            if len(ints) != 3:
                raise InvalidRecord(f"{field}[{i}][{j}]", f"must be (x, y, pressure) integers 0..{MAX_COORD}")
            points.append((ints[0], ints[1], ints[2]))
        out.append(tuple(points))
    return tuple(out)


def _check_fingerprints(fingers: object) -> Mapping[int, Fingerprint]:
    if not isinstance(fingers, Mapping):
        raise InvalidRecord("fingerprints", "must be a mapping of finger position to Fingerprint")
    keys = set(fingers)
    expected = set(FingerPosition)
    if keys != expected or len(fingers) != 10:
        missing = sorted(int(k) for k in expected - keys if isinstance(k, int))
        extra = sorted(repr(k) for k in keys - expected)
        raise InvalidRecord(
            "fingerprints",
            f"must have exactly the ten positions 1..10 (missing {missing}, unexpected {extra})",
        )
    out: dict[int, Fingerprint] = {}
    for pos in FingerPosition:
        finger = fingers[pos]
        if not isinstance(finger, Fingerprint):
            raise InvalidRecord(
                f"fingerprints[{int(pos)}]", f"must be a Fingerprint, got {type(finger).__name__}"
            )
        if finger.position != pos:
            raise InvalidRecord(
                f"fingerprints[{int(pos)}]", f"holds the finger of position {int(finger.position)}"
            )
        out[pos] = finger
    return MappingProxyType(out)


# --- decoding ---------------------------------------------------------------------------


class _Reader:
    """Typed access to the decoded metadata JSON; every mismatch is an InvalidRecord."""

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, dict):
            raise InvalidRecord(path, "must be a JSON object")
        self.obj: dict[str, object] = obj
        self.path = path

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.path}.{key}")

    def get_int(self, key: str) -> int:
        value = self._get(key)
        if type(value) is not int:
            raise InvalidRecord(f"{self.path}.{key}", f"must be an integer, got {value!r}")
        return value

    def get_str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise InvalidRecord(f"{self.path}.{key}", f"must be a string, got {type(value).__name__}")
        return value

    def get_opt_str(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(f"{self.path}.{key}", f"must be a string or null, got {type(value).__name__}")
        return value

    def get_list(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise InvalidRecord(f"{self.path}.{key}", "must be a JSON array")
        return value

    def _get(self, key: str) -> object:
        if key not in self.obj:
            raise InvalidRecord(f"{self.path}.{key}", "missing")
        return self.obj[key]


def _decode(data: bytes) -> EnrollmentRecord:
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidRecord("encoding", f"larger than {MAX_RECORD_BYTES} bytes")
    if len(data) < 5:
        raise InvalidRecord("encoding", "too short for the record header")
    version, meta_len = struct.unpack_from(">BI", data, 0)
    if version not in READ_VERSIONS:
        raise InvalidRecord(
            "encoding", f"record version {version}, this code reads {' and '.join(map(str, READ_VERSIONS))}"
        )
    if meta_len > MAX_META_BYTES or 5 + meta_len + 2 > len(data):
        raise InvalidRecord("encoding", f"metadata length {meta_len} exceeds the data")
    try:
        meta = json.loads(data[5 : 5 + meta_len].decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidRecord("metadata", f"not valid UTF-8 JSON: {exc}") from None
    pos = 5 + meta_len
    (count,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if pos + 4 * count > len(data):
        raise InvalidRecord("encoding", f"blob table of {count} entries exceeds the data")
    lengths = struct.unpack_from(f">{count}I", data, pos)
    pos += 4 * count
    if pos + sum(lengths) != len(data):
        raise InvalidRecord(
            "encoding", f"blob lengths add up to {sum(lengths)}, {len(data) - pos} bytes remain"
        )
    blobs = []
    for n in lengths:
        blobs.append(data[pos : pos + n])
        pos += n
    if version == 1:
        return _from_metadata_v1(_Reader(meta, "metadata"), blobs)
    return _from_interchange(_Reader(meta, "metadata"), blobs)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _demographics(meta: _Reader) -> Demographics:
    dm = meta.sub("demographics")
    try:
        birth = dt.date.fromisoformat(dm.get_str("birth_date"))
    except ValueError:
        raise InvalidRecord("metadata.demographics.birth_date", "not an ISO date (YYYY-MM-DD)") from None
    demographics = Demographics(
        name=dm.get_str("name"),
        sex=dm.get_str("sex"),  # type: ignore[arg-type]  # checked and converted by Demographics
        birth_date=birth,
        birth_place=dm.get_str("birth_place"),
        address=dm.get_str("address"),
        religion=dm.get_str("religion"),
        marital_status=dm.get_str("marital_status"),
        occupation=dm.get_str("occupation"),
        nationality=dm.get_str("nationality"),
    )
    return demographics


def _from_interchange(meta: _Reader, blobs: list[bytes]) -> EnrollmentRecord:
    """Version 2: the face, finger, iris and signature records, then the signature PNG."""
    entries = meta.get_list("fingerprints")
    if len(entries) != 10:
        raise InvalidRecord("metadata.fingerprints", f"must list ten fingers, got {len(entries)}")
    readers = [_Reader(entry, f"metadata.fingerprints[{i}]") for i, entry in enumerate(entries)]
    captured = {i + 1 for i, fr in enumerate(readers) if fr.get_opt_str("exception") is None}
    expected = 5 if captured else 4
    if len(blobs) != expected:
        raise InvalidRecord(
            "encoding", f"the metadata describes {expected} blobs, the table has {len(blobs)}"
        )
    demographics = _demographics(meta)
    try:
        face_view = iso19794.read_face_record(blobs[0])
        finger_views = iso19794.read_finger_record(blobs[1]) if captured else []
        right_view, left_view = iso19794.read_iris_record(blobs[-3])
        strokes = iso19794.read_signature_record(blobs[-2])
    except InterchangeError as exc:
        raise InvalidRecord(exc.field, exc.problem) from None
    by_position = {v.position: v for v in finger_views}
    if len(by_position) != len(finger_views) or set(by_position) != captured:
        raise InvalidRecord(
            "fir",
            f"holds fingers {sorted(v.position for v in finger_views)}, the metadata captured {sorted(captured)}",
        )
    fingers: dict[int, Fingerprint] = {}
    for i, fr in enumerate(readers):
        position = fr.get_int("position")
        if position != i + 1:
            raise InvalidRecord(f"metadata.fingerprints[{i}].position", f"must be {i + 1}, got {position}")
        view = by_position.get(position)
        fingers[position] = Fingerprint(
            position=FingerPosition(position),
            image=None if view is None else view.image,
            width=0 if view is None else view.width,
            height=0 if view is None else view.height,
            quality=0 if view is None else view.quality,
            attempts=fr.get_int("attempts"),
            exception=fr.get_opt_str("exception"),  # type: ignore[arg-type]  # checked by Fingerprint
        )
    sig_png = blobs[-1]
    try:
        sig_info = image_info(sig_png)
    except BadImage as exc:
        raise InvalidRecord("signature.png", str(exc)) from None
    return EnrollmentRecord(
        nik=meta.get_str("nik"),
        demographics=demographics,
        face=FaceImage(face_view.image, face_view.width, face_view.height, face_view.quality),
        fingerprints=fingers,
        right_iris=IrisImage(right_view.image, right_view.width, right_view.height, right_view.quality),
        left_iris=IrisImage(left_view.image, left_view.width, left_view.height, left_view.quality),
        signature=Signature(strokes, sig_png, sig_info.width, sig_info.height),
        capture=meta.obj.get("capture"),  # type: ignore[arg-type]  # checked by EnrollmentRecord
    )


def _from_metadata_v1(meta: _Reader, blobs: list[bytes]) -> EnrollmentRecord:
    """Version 1: sizes and qualities in the metadata, the raw image blobs in the table."""
    queue = iter(blobs)

    def take(field: str) -> bytes:
        try:
            return next(queue)
        except StopIteration:
            raise InvalidRecord(field, "its blob is missing from the blob table") from None

    demographics = _demographics(meta)
    entries = meta.get_list("fingerprints")
    if len(entries) != 10:
        raise InvalidRecord("metadata.fingerprints", f"must list ten fingers, got {len(entries)}")
    readers = [_Reader(entry, f"metadata.fingerprints[{i}]") for i, entry in enumerate(entries)]
    described = 5 + sum(1 for fr in readers if fr.get_opt_str("exception") is None)
    if described != len(blobs):
        raise InvalidRecord(
            "encoding", f"the metadata describes {described} blobs, the table has {len(blobs)}"
        )
    fm = meta.sub("face")
    face = FaceImage(take("face"), fm.get_int("width"), fm.get_int("height"), fm.get_int("quality"))
    fingers: dict[int, Fingerprint] = {}
    for i, fr in enumerate(readers):
        position = fr.get_int("position")
        if position != i + 1:
            raise InvalidRecord(f"metadata.fingerprints[{i}].position", f"must be {i + 1}, got {position}")
        exception = fr.get_opt_str("exception")
        image = None if exception is not None else take(f"fingerprints[{position}]")
        fingers[position] = Fingerprint(
            position=FingerPosition(position),
            image=image,
            width=fr.get_int("width"),
            height=fr.get_int("height"),
            quality=fr.get_int("quality"),
            attempts=fr.get_int("attempts"),
            exception=exception,  # type: ignore[arg-type]  # checked and converted by Fingerprint
        )
    irises = meta.sub("irises")
    ir, il = irises.sub("right"), irises.sub("left")
    right = IrisImage(take("right_iris"), ir.get_int("width"), ir.get_int("height"), ir.get_int("quality"))
    left = IrisImage(take("left_iris"), il.get_int("width"), il.get_int("height"), il.get_int("quality"))
    sm = meta.sub("signature")
    sig_png = take("signature.png")
    strokes = Signature.strokes_from_bytes(take("signature.strokes"))
    signature = Signature(
        strokes=strokes, png=sig_png, width=sm.get_int("width"), height=sm.get_int("height")
    )
    if next(queue, None) is not None:
        raise InvalidRecord("encoding", "more blobs than the metadata describes")
    return EnrollmentRecord(
        nik=meta.get_str("nik"),
        demographics=demographics,
        face=face,
        fingerprints=fingers,
        right_iris=right,
        left_iris=left,
        signature=signature,
        capture=meta.obj.get("capture"),  # type: ignore[arg-type]  # checked by EnrollmentRecord
    )
