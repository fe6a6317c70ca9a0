"""Export stored enrollments as ISO/IEC 19794 files an identification system imports.

``ektp-central packets export --format iso19794 --to DIR`` (central/cli_fleet.py) opens each
chosen packet with the centre's key (which also verifies the kiosk's signature), reads its
record (version 2, or version 1 of older kiosks) and writes, per enrollment::

    DIR/KIOSK/PACKET_ID/face.fac        ISO/IEC 19794-5:2005 face image record
    DIR/KIOSK/PACKET_ID/fingers.fir     ISO/IEC 19794-4:2005 finger image record (when a finger was captured)
    DIR/KIOSK/PACKET_ID/irises.iir      ISO/IEC 19794-6:2005 iris image record, both eyes
    DIR/KIOSK/PACKET_ID/signature.sdi   ISO/IEC 19794-7:2007 signature time series
    DIR/KIOSK/PACKET_ID/signature.png   the rendered signature (no 19794 part carries it)
    DIR/manifest.json                   what is in DIR: per enrollment its NIK, files, hashes

A version 1 record's files are made on the way: its PNG irises become lossless JPEG 2000 (the
2005 iris format has no PNG), its PNG fingers stay PNG (19794-4 has a code for PNG).

These are decrypted biometrics: directories are made 0700 and files 0600, each written to a
temporary name and renamed, so an interrupted export leaves whole files; exporting again into
the same DIR rewrites an enrollment's files and merges the manifest (entries by packet id).
Packets of a simulated kit (``synthetic``) are test residents, never exported unless asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.image_codec import as_gray_jp2
from wire.packet import PacketError
from wire.record import EnrollmentRecord, InvalidRecord

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ektp-iso19794-export/1"
FILES = {  # part of interchange_records() -> file name, standard
    "face": ("face.fac", "ISO/IEC 19794-5:2005"),
    "finger": ("fingers.fir", "ISO/IEC 19794-4:2005"),
    "iris": ("irises.iir", "ISO/IEC 19794-6:2005"),
    "signature": ("signature.sdi", "ISO/IEC 19794-7:2007"),
}
SIGNATURE_PNG = "signature.png"


class ExportError(Exception):
    """The export directory cannot be used (not a directory, a symlink, not writable)."""


@dataclass
class ExportReport:
    directory: str
    exported: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # packet_id, kiosk, reason
    skipped_synthetic: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "format": "iso19794",
            "exported": len(self.exported),
            "files": sum(len(e["files"]) for e in self.exported),
            "failed": self.failed,
            "skipped_synthetic": self.skipped_synthetic,
            "manifest": str(Path(self.directory) / MANIFEST),
        }


Opener = Callable[[str, str], tuple[Any, EnrollmentRecord]]  # (kiosk, packet_id) -> (header, record)


def interchange_files(record: EnrollmentRecord) -> dict[str, bytes]:
    """The files of one enrollment, by name. :raises InvalidRecord: the record cannot be expressed"""
    # a version 1 PNG iris becomes lossless JPEG 2000 (the same pixels); JPEG 2000 ones stay as they are
    exportable = dataclasses.replace(
        record,
        right_iris=dataclasses.replace(
            record.right_iris, image=as_gray_jp2(record.right_iris.image, ratio=None)
        ),
        left_iris=dataclasses.replace(
            record.left_iris, image=as_gray_jp2(record.left_iris.image, ratio=None)
        ),
    )
    parts = exportable.interchange_records()
    out = {FILES[part][0]: data for part, data in parts.items()}
    out[SIGNATURE_PNG] = record.signature.png
    return out


def export_packets(
    rows: Iterable[dict[str, Any]],
    open_packet: Opener,
    directory: Path,
    *,
    include_synthetic: bool = False,
    advance: Callable[[int], None] = lambda _n: None,
) -> ExportReport:
    """Write each packet of ``rows`` (``CentralStore.packets`` rows) into ``directory``.

    A packet that does not open or whose record cannot be written is reported in ``failed``
    and the export goes on. :raises ExportError: the directory cannot be used
    """
    root = _prepare(directory)
    report = ExportReport(str(root))
    manifest = _load_manifest(root)
    for row in rows:
        advance(1)
        if row.get("synthetic") and not include_synthetic:
            report.skipped_synthetic += 1
            continue
        kiosk, packet_id = str(row["kiosk"]), str(row["packet_id"])
        try:
            _, record = open_packet(kiosk, packet_id)
            files = interchange_files(record)
        except (PacketError, InvalidRecord, ValueError) as exc:
            report.failed.append({"packet_id": packet_id, "kiosk": kiosk, "reason": str(exc)})
            continue
        target = _mkdir(_mkdir(root / kiosk) / packet_id)
        entry = {
            "packet_id": packet_id,
            "kiosk": kiosk,
            "seq": row["seq"],
            "created_at": row["created_at"],
            "received_at": row["received_at"],
            "synthetic": bool(row.get("synthetic")),
            "nik": record.nik,
            "missing_fingers": {
                str(int(pos)): f.exception.value for pos, f in record.fingerprints.items() if f.exception
            },
            "files": [],
        }
        standards = {name: std for name, std in FILES.values()}
        for name, data in files.items():
            _write(target / name, data)
            entry["files"].append(
                {
                    "path": f"{kiosk}/{packet_id}/{name}",
                    "standard": standards.get(name, "PNG (ISO/IEC 15948)"),
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        manifest[packet_id] = entry
        report.exported.append(entry)
    _write(
        root / MANIFEST,
        json.dumps(
            {"format": MANIFEST_FORMAT, "enrollments": sorted(manifest.values(), key=_order)},
            indent=1,
            ensure_ascii=False,
        ).encode()
        + b"\n",
    )
    return report


def _order(entry: dict[str, Any]) -> tuple[str, int, str]:
    return (str(entry.get("kiosk")), int(entry.get("seq") or 0), str(entry.get("packet_id")))


def _prepare(directory: Path) -> Path:
    if directory.is_symlink():
        raise ExportError(f"{directory} is a symlink: give the real directory")
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a directory")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot make {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(f"{directory} is not writable by this user")
    return directory.resolve()


def _load_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """The entries of an earlier export into the same directory (an unreadable one, or a symlink
    in its place, is replaced)."""
    if (root / MANIFEST).is_symlink():
        return {}
    try:
        doc = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return {}
    entries = doc.get("enrollments")
    if not isinstance(entries, list):
        return {}
    return {str(e["packet_id"]): e for e in entries if isinstance(e, dict) and "packet_id" in e}


def _mkdir(path: Path) -> Path:
    if path.is_symlink():
        raise ExportError(f"{path} is a symlink: the export writes only into real directories")
    path.mkdir(mode=0o700, exist_ok=True)
    if not stat.S_ISDIR(path.lstat().st_mode):
        raise ExportError(f"{path} is not a directory")
    return path


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
