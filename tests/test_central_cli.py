"""`ektp-central` as an operator runs it: keys init, kiosk add, import of an export
directory, quarantine and its retry, partial transfers, packets, fleet, each with --json;
the console script as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import centralkit
from tests.centralkit import Kiosk
from wire.keys import create_kiosk_key, load_central_private, public_path

CENTRAL = Path(sys.executable).parent / "ektp-central"


@dataclass
class Centre:
    dir: Path
    config: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "EKTP_CENTRAL_CONFIG"}
        return subprocess.run(
            [str(CENTRAL), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=self.dir,
        )

    def json(self, *args: str, code: int = 0) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == code, done.stderr
        return json.loads(done.stdout)  # one JSON document and nothing else


def make_centre(tmp_path: Path, store_url: str) -> Centre:
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n\n[keys]\ncentral_private_key = "keys/central.key"\n')
    return Centre(tmp_path, config)


@pytest.fixture
def centre(tmp_path: Path) -> Centre:
    return make_centre(tmp_path, "data/central.db")


def init_keys(centre: Centre) -> Kiosk:
    """`keys init` at the centre, and a kiosk key pair sealing for that centre."""
    done = centre.run("keys", "init")
    assert done.returncode == 0, done.stderr
    pub = Path(done.stdout.strip().splitlines()[-1])
    assert (centre.dir / pub).exists() if not pub.is_absolute() else pub.exists()
    central = load_central_private(centre.dir / "keys" / "central.key")
    key_path = centre.dir / "kiosk" / "kiosk.key"
    return Kiosk("320715-01", create_kiosk_key(key_path), central)


def export_dir(kiosk: Kiosk, path: Path, seqs: list[int]) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    ids = []
    for seq in seqs:
        packet = kiosk.seal(seq)
        (path / f"{seq:08d}-{packet.packet_id}.ektp").write_bytes(packet.data)
        ids.append(packet.packet_id)
    return ids


def test_keys_init_kiosk_add_import_packets_fleet(centre: Centre, tmp_path: Path) -> None:
    kiosk = init_keys(centre)
    pub = public_path(centre.dir / "kiosk" / "kiosk.key")

    done = centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", str(pub))
    assert done.returncode == 0, done.stderr
    assert "registered" in done.stdout
    again = centre.json("kiosk", "add", kiosk.kiosk_id, "--public-key", str(pub))
    assert again["kiosk"] == kiosk.kiosk_id and again["changed"] is False

    export = tmp_path / "usb"
    ids = export_dir(kiosk, export, [1, 2, 5, 6, 9])
    first = next(export.glob("00000001-*"))
    (export / "copy-of-1.ektp").write_bytes(first.read_bytes())  # the same packet exported twice
    (export / "garbage.ektp").write_bytes(b"\x00\x01 not a packet")
    stranger = centralkit.kiosk("320715-99", kiosk.central)
    (export / "stranger.ektp").write_bytes(stranger.seal(1).data)
    (export / ".hidden").write_bytes(b"skipped")
    (export / "subdir").mkdir()

    report = centre.json("import", str(export), code=1)  # rejected and damaged files: exit 1
    counts = ("stored", "duplicate", "rejected", "damaged", "conflict")
    assert tuple(report[k] for k in counts) == (5, 1, 1, 1, 0)
    by_file = {f["file"]: f for f in report["files"]}
    assert ".hidden" not in by_file and "subdir" not in by_file
    (skipped,) = report["skipped"]  # dotfiles are ignored; a subdirectory is named, not entered
    assert (skipped["file"], skipped["kind"]) == ("subdir", "directory")
    assert f"ektp-central import {export / 'subdir'}" in skipped["reason"]
    assert by_file["copy-of-1.ektp"]["status"] == "duplicate"
    assert by_file["garbage.ektp"]["status"] == "damaged"
    assert by_file["stranger.ektp"]["status"] == "rejected"
    assert by_file["stranger.ektp"]["reason"].startswith("unknown_kiosk: kiosk 320715-99 is not registered")

    again_report = centre.json("import", str(export), code=1)
    assert tuple(again_report[k] for k in counts) == (0, 6, 1, 1, 0)

    packets = centre.json("packets")
    assert [p["packet_id"] for p in packets] == ids
    assert [p["seq"] for p in packets] == [1, 2, 5, 6, 9]
    assert all({"packet_id", "kiosk", "seq", "received_at", "created_at", "bytes"} <= set(p) for p in packets)
    assert centre.json("packets", "--kiosk", "320715-99") == []

    row, stranger = centre.json("fleet")  # a kiosk known only from its quarantined packet shows too
    assert (stranger["kiosk"], stranger["registered"], stranger["stored"]) == ("320715-99", False, 0)
    assert stranger["quarantined"] == 1 and stranger["quarantine_bytes"] > 0
    assert row["kiosk"] == kiosk.kiosk_id and row["registered"] is True
    assert row["stored"] == 5 and row["synthetic"] == 0 and row["last_seq"] == 9
    assert row["duplicate_deliveries"] == 7  # a copy in the first import, then all six files again
    assert row["gaps"] == [[3, 4], [7, 8]]
    assert row["online"] is None and row["faulty"] == [] and row["backlog"] is None

    quarantine = centre.json("quarantine")
    assert sorted(q["kiosk_hint"] or "" for q in quarantine) == ["", "320715-99"]
    assert all(q["times"] == 2 for q in quarantine)  # imported twice, kept once
    (listed,) = centre.json("kiosks")
    assert listed["kiosk"] == kiosk.kiosk_id and listed["fingerprint"]

    # readable tables without --json
    for args in (["packets"], ["fleet"], ["kiosks"], ["quarantine"]):
        done = centre.run(*args)
        assert done.returncode == 0, done.stderr
        assert kiosk.kiosk_id in done.stdout or "320715-99" in done.stdout
    fleet_text = centre.run("fleet").stdout
    assert "3-4,7-8" in fleet_text


def test_import_of_only_good_packets_exits_0_and_prints_counts(centre: Centre, tmp_path: Path) -> None:
    kiosk = init_keys(centre)
    assert (
        centre.run(
            "kiosk", "add", kiosk.kiosk_id, "--public-key", str(centre.dir / "kiosk/kiosk.key.pub")
        ).returncode
        == 0
    )
    export_dir(kiosk, tmp_path / "usb", [1, 2, 3])
    done = centre.run("import", str(tmp_path / "usb"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "stored 3, duplicate 0, rejected 0, damaged 0, conflict 0"
    again = centre.run("import", str(tmp_path / "usb"))
    assert again.stdout.strip() == "stored 0, duplicate 3, rejected 0, damaged 0, conflict 0"


def test_kiosk_add_errors(centre: Centre, tmp_path: Path) -> None:
    kiosk = init_keys(centre)
    pub = str(centre.dir / "kiosk" / "kiosk.key.pub")

    done = centre.run("kiosk", "add", "bad id!", "--public-key", pub)
    assert done.returncode == 2 and "kiosk id 'bad id!' is invalid" in done.stderr
    done = centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", str(tmp_path / "missing.pub"))
    assert done.returncode == 2 and "missing.pub" in done.stderr
    done = centre.run(
        "kiosk", "add", kiosk.kiosk_id, "--public-key", str(centre.dir / "keys/central.key.pub")
    )
    assert (
        done.returncode == 2 and "expected 1" in done.stderr
    )  # the centre's two-key file is not a kiosk key
    done = centre.run("kiosk", "add", kiosk.kiosk_id)
    assert done.returncode == 2 and "--public-key" in done.stderr

    assert centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", pub).returncode == 0
    other = tmp_path / "other.key"
    create_kiosk_key(other)
    done = centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", str(public_path(other)))
    assert done.returncode == 2 and "--replace" in done.stderr
    replaced = centre.json(
        "kiosk", "add", kiosk.kiosk_id, "--public-key", str(public_path(other)), "--replace"
    )
    assert replaced["changed"] is True


def test_import_errors_and_empty_store(centre: Centre, tmp_path: Path) -> None:
    done = centre.run("import", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    (tmp_path / "empty").mkdir()
    assert centre.json("import", str(tmp_path / "empty")) == {
        "directory": str(tmp_path / "empty"),
        "stored": 0,
        "duplicate": 0,
        "rejected": 0,
        "damaged": 0,
        "conflict": 0,
        "files": [],
        "skipped": [],
    }
    assert centre.json("packets") == [] and centre.json("fleet") == [] and centre.json("kiosks") == []


def test_unreachable_store_is_a_problem_and_a_bad_config_a_usage_error(tmp_path: Path) -> None:
    centre = make_centre(tmp_path, "postgresql://ektp:pw@127.0.0.1:1/ektp?connect_timeout=2")
    done = centre.run("packets", "--json")
    assert done.returncode == 1 and "cannot connect" in done.stderr and "pw@" not in done.stderr
    assert done.stdout == ""
    (tmp_path / "bad.toml").write_text("[store]\nurl = 5\n")
    done = subprocess.run(
        [str(CENTRAL), "--config", str(tmp_path / "bad.toml"), "fleet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "store.url" in done.stderr


def register(centre: Centre, kiosk: Kiosk, tmp_path: Path) -> None:
    pub = tmp_path / f"{kiosk.kiosk_id}.key.pub"
    pub.write_bytes(kiosk.public_pem)
    done = centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", str(pub))
    assert done.returncode == 0, done.stderr


def test_quarantine_retry_after_kiosk_add(centre: Centre, tmp_path: Path) -> None:
    kiosk = init_keys(centre)
    stranger = centralkit.kiosk("320715-99", kiosk.central)
    export = tmp_path / "usb"
    export.mkdir()
    (export / "a.ektp").write_bytes(stranger.seal(1).data)
    (export / "b.ektp").write_bytes(stranger.seal(2).data)
    (export / "garbage.ektp").write_bytes(b"\x00\x01 not a packet")
    report = centre.json("import", str(export), code=1)
    assert (report["rejected"], report["damaged"]) == (2, 1)

    done = centre.run("quarantine", "retry")
    assert done.returncode == 2 and "--all" in done.stderr and done.stdout == ""
    done = centre.run("quarantine", "retry", "424242")
    assert done.returncode == 1 and "424242" in done.stderr
    assert len(centre.json("quarantine")) == 3  # nothing retried

    before = centre.json("quarantine", "retry", "--all")  # not registered yet: all stay
    assert {k: before[k] for k in ("stored", "duplicate", "rejected", "damaged", "conflict")} == {
        "stored": 0,
        "duplicate": 0,
        "rejected": 2,
        "damaged": 1,
        "conflict": 0,
    }
    assert len(centre.json("quarantine")) == 3

    register(centre, stranger, tmp_path)
    ids = sorted(q["id"] for q in centre.json("quarantine", "--kiosk", stranger.kiosk_id))
    one = centre.json("quarantine", "retry", str(ids[0]))
    assert (one["stored"], one["rejected"], one["damaged"]) == (1, 0, 0)
    assert [(r["id"], r["status"], r["seq"]) for r in one["results"]] == [(ids[0], "stored", 1)]
    done = centre.run("quarantine", "retry", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "stored 1, duplicate 0, rejected 0, damaged 1, conflict 0"
    (left,) = centre.json("quarantine")
    assert left["kiosk_hint"] is None and "damaged" in left["reason"]
    assert [p["seq"] for p in centre.json("packets", "--kiosk", stranger.kiosk_id)] == [1, 2]
    again = centre.json("import", str(export), code=1)  # the same files again: stored once, ever
    assert (again["stored"], again["duplicate"], again["damaged"]) == (0, 2, 1)
    assert len(centre.json("packets")) == 2


def test_partials_lists_and_expires_transfers(tmp_path: Path) -> None:
    from central.store import open_store
    from wire.chunk import chunk_of

    centre = make_centre(tmp_path, "data/central.db")
    assert centre.json("partials") == []
    data = b"\x42" * 5000
    digest = hashlib.sha256(data).hexdigest()
    pid = "01890a5d-ac96-774b-bcce-b302099a8057"
    with open_store(str(tmp_path / "data" / "central.db")) as store:
        store.add_chunks(
            [
                ("320715-01", chunk_of(pid, digest, data, 0, 2000)),
                ("320715-02", chunk_of(pid, digest, data, 0, 100)),
            ]
        )
    rows = centre.json("partials")
    assert [(r["kiosk"], r["packet_id"], r["have"], r["total"], r["chunks"]) for r in rows] == [
        ("320715-01", pid, 2000, 5000, 1),
        ("320715-02", pid, 100, 5000, 1),
    ]
    assert set(rows[0]) == {
        "kiosk",
        "packet_id",
        "sha256",
        "total",
        "have",
        "chunks",
        "first_received_at",
        "last_received_at",
    }
    assert [r["kiosk"] for r in centre.json("partials", "--kiosk", "320715-02")] == ["320715-02"]
    table = centre.run("partials")
    assert table.returncode == 0 and "320715-01" in table.stdout and "2000" in table.stdout

    kept = centre.run("partials", "--expire", "--json")  # the default expiry is 7 days: nothing goes
    assert kept.returncode == 0 and len(json.loads(kept.stdout)) == 2 and "dropped 0" in kept.stderr
    centre.config.write_text(
        centre.config.read_text().replace("[store]\n", "[store]\npartial_expiry_s = 0.001\n")
    )
    gone = centre.run("partials", "--expire", "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout) == [] and "dropped 2" in gone.stderr


@pytest.mark.parametrize(
    "command",
    ["kiosk add", "kiosks", "packets", "fleet", "import", "quarantine", "quarantine retry", "partials"],
)
def test_help_has_an_example(centre: Centre, command: str) -> None:
    done = centre.run(*command.split(), "--help")
    assert done.returncode == 0 and "Example" in done.stdout and "ektp-central --config" in done.stdout


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    yield from centralkit.store_url("postgres", tmp_path)


@pytest.mark.postgres
def test_import_and_fleet_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    centre = make_centre(tmp_path, pg_url)
    kiosk = init_keys(centre)
    assert (
        centre.run(
            "kiosk", "add", kiosk.kiosk_id, "--public-key", str(centre.dir / "kiosk/kiosk.key.pub")
        ).returncode
        == 0
    )
    export_dir(kiosk, tmp_path / "usb", [2, 3, 7])
    report = centre.json("import", str(tmp_path / "usb"))
    assert (report["stored"], report["duplicate"], report["rejected"]) == (3, 0, 0)
    (row,) = centre.json("fleet")
    assert row["gaps"] == [[1, 1], [4, 6]] and row["stored"] == 3
    assert [p["seq"] for p in centre.json("packets", "--kiosk", kiosk.kiosk_id)] == [2, 3, 7]
