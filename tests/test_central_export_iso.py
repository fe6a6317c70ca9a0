"""`ektp-central packets export --format iso19794`: stored enrollments, of record version 2 and
of version 1 (an older kiosk's), written as ISO/IEC 19794 files with a manifest; each file read
back by the independent validator (tests/iso19794_validator.py); decrypted biometrics kept
0600/0700; a packet that does not open named, the rest exported."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from pathlib import Path

import pytest
from PIL import Image

from central.export_iso import export_packets, interchange_files
from hw_sim.residents import synthetic_resident
from tests import centralkit
from tests.factories import record_from_resident
from tests.iso19794_validator import validate_fac, validate_fir, validate_iir, validate_sdi
from tests.record_v1 import as_version_1
from tests.test_central_cli import Centre, init_keys
from wire.image_codec import gray_pixels
from wire.keys import public_path
from wire.packet import PacketError, PacketFault, seal
from wire.record import EnrollmentRecord

NEW = record_from_resident(synthetic_resident(7))  # record version 2, compressed
OLD = record_from_resident(synthetic_resident(8), compressed=False)  # PNG fingers and irises: version 1


def _seal(kiosk: centralkit.Kiosk, record: EnrollmentRecord, seq: int, *, synthetic: bool = False) -> bytes:
    return seal(
        record,
        kiosk_id=kiosk.kiosk_id,
        seq=seq,
        kiosk_key=kiosk.key,
        central_public=kiosk.central.encryption.public_key(),
        clock_synced=True,
        synthetic=synthetic,
    ).data


@pytest.fixture
def centre(tmp_path: Path) -> tuple[Centre, list[str]]:
    """A centre holding three packets of kiosk 320715-01: version 2, version 1, and a synthetic one."""
    centre = Centre(tmp_path, tmp_path / "central.toml")
    centre.config.write_text(
        '[store]\nurl = "data/central.db"\n\n[keys]\ncentral_private_key = "keys/central.key"\n'
    )
    kiosk = init_keys(centre)
    assert (
        centre.run(
            "kiosk", "add", kiosk.kiosk_id, "--public-key", str(public_path(tmp_path / "kiosk" / "kiosk.key"))
        ).returncode
        == 0
    )
    usb = tmp_path / "usb"
    usb.mkdir()
    datas = [_seal(kiosk, NEW, 1), _seal(kiosk, as_version_1(OLD), 2), _seal(kiosk, NEW, 3, synthetic=True)]
    for i, data in enumerate(datas):
        (usb / f"{i}.ektp").write_bytes(data)
    report = centre.json("import", str(usb))
    assert report["stored"] == 3
    ids = [p["packet_id"] for p in centre.json("packets")]
    return centre, ids


def test_export_writes_standard_files_and_a_manifest(
    centre: tuple[Centre, list[str]], tmp_path: Path
) -> None:
    c, ids = centre
    out = tmp_path / "abis"
    done = c.run(
        "packets", "export", "--format", "iso19794", "--kiosk", "320715-01", "--since", "1h", "--to", str(out)
    )
    assert done.returncode == 0, done.stderr
    files = sum(len(interchange_files(r)) for r in (NEW, OLD))
    assert f"exported 2 enrollments ({files} files)" in done.stdout
    assert "skipped 1 synthetic" in done.stdout
    assert OLD.nik not in done.stdout + done.stderr and NEW.nik not in done.stdout + done.stderr

    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["seq"]: e for e in manifest["enrollments"]}
    assert set(entries) == {1, 2} and manifest["format"] == "ektp-iso19794-export/1"
    for seq, record in ((1, NEW), (2, OLD)):
        entry = entries[seq]
        assert entry["nik"] == record.nik and entry["kiosk"] == "320715-01" and entry["packet_id"] in ids
        names = {Path(f["path"]).name: f for f in entry["files"]}
        for f in entry["files"]:
            data = (out / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
            assert stat.S_IMODE((out / f["path"]).stat().st_mode) == 0o600
        folder = out / entry["kiosk"] / entry["packet_id"]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        face = validate_fac((folder / "face.fac").read_bytes()).images[0]
        assert face.image == record.face.image and face.quality == record.face.quality
        captured = {int(p): f for p, f in record.fingerprints.items() if f.image is not None}
        if captured:
            fir = validate_fir((folder / "fingers.fir").read_bytes())
            assert {v.finger_position: v.image for v in fir.views} == {
                p: f.image for p, f in captured.items()
            }
            assert entry["missing_fingers"] == {
                str(int(p)): f.exception.value for p, f in record.fingerprints.items() if f.exception
            }
        else:
            assert "fingers.fir" not in names
        iir = validate_iir((folder / "irises.iir").read_bytes())
        assert iir.image_format == 14  # JPEG 2000, for version 1's PNG irises too
        for subtype, iris in zip(iir.subtypes, (record.right_iris, record.left_iris), strict=True):
            # version 1's PNG became lossless JPEG 2000: the very same pixels
            assert gray_pixels(subtype.images[0].image) == gray_pixels(iris.image)
        pen_down = [s[:3] for s in validate_sdi((folder / "signature.sdi").read_bytes()).samples if s[3]]
        assert pen_down == [p for stroke in record.signature.strokes for p in stroke]
        assert Image.open(io.BytesIO((folder / "signature.png").read_bytes())).size == (
            record.signature.width,
            record.signature.height,
        )

    # again, with the synthetic one: the two written before are rewritten, the manifest merged
    again = c.json("packets", "export", "--to", str(out), "--include-synthetic")
    assert (again["exported"], again["failed"], again["skipped_synthetic"]) == (3, [], 0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(e["seq"] for e in manifest["enrollments"]) == [1, 2, 3]
    assert [e["synthetic"] for e in sorted(manifest["enrollments"], key=lambda e: e["seq"])] == [
        False,
        False,
        True,
    ]


def test_export_refuses_what_it_cannot_use(centre: tuple[Centre, list[str]], tmp_path: Path) -> None:
    c, _ = centre
    (tmp_path / "afile").write_text("x")
    done = c.run("packets", "export", "--to", str(tmp_path / "afile"))
    assert done.returncode == 2 and "--to" in done.stderr
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    done = c.run("packets", "export", "--to", str(tmp_path / "link"))
    assert done.returncode == 2 and "symlink" in done.stderr
    done = c.run("packets", "export", "--format", "wsq", "--to", str(tmp_path / "x"))
    assert done.returncode == 2 and "iso19794" in done.stderr
    (tmp_path / "keys" / "central.key").rename(tmp_path / "keys" / "moved.key")
    done = c.run("packets", "export", "--to", str(tmp_path / "y"))
    assert done.returncode == 1 and "private key" in done.stderr and not (tmp_path / "y").exists()


def test_a_packet_that_does_not_open_is_named_and_the_rest_exported(tmp_path: Path) -> None:
    rows = [
        {"packet_id": f"p{i}", "kiosk": "320715-01", "seq": i, "created_at": "t", "received_at": "t"}
        for i in (1, 2)
    ]

    def opener(kiosk: str, packet_id: str) -> tuple[None, EnrollmentRecord]:
        if packet_id == "p1":
            raise PacketError(PacketFault.BAD_SIGNATURE, "bad signature: the body was altered")
        return None, NEW

    report = export_packets(rows, opener, tmp_path / "out")
    assert [e["packet_id"] for e in report.exported] == ["p2"]
    assert report.failed == [
        {"packet_id": "p1", "kiosk": "320715-01", "reason": "bad signature: the body was altered"}
    ]
    assert set(interchange_files(NEW)) == {p.name for p in (tmp_path / "out" / "320715-01" / "p2").iterdir()}
