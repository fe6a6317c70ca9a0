"""Ten distinct fingers in one enrollment: the agent's capture session over the four simulated devices.

The fingerprint module extracts each finger's features and matches them against the
fingers already taken; a resident who places finger 1 again when asked for finger 3 is
refused with a message that tells the operator what to do, and the device stays healthy
(it is the operator's slip, not the device's fault).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import drivers.fingerprint.device as fp_device
import hw_sim.signature as sim_signature
from agent.capture import Applicant, CaptureError, CaptureMetadata, capture_enrollment_with_metadata
from agent.devices import Devices
from drivers.camera import FaceCamera
from drivers.fingerprint import FingerprintScanner
from drivers.iris import IrisCamera
from drivers.signature import SignaturePad
from hw_sim.camera import SimCameraBackend
from hw_sim.residents import Resident, synthetic_resident
from hw_sim.server import SimServer
from hw_sim.usb_backend import SimUsbBackend
from tests.iso19794_validator import validate_fac, validate_fir, validate_iir, validate_sdi
from wire.record import Demographics, EnrollmentRecord


@pytest.fixture(autouse=True)
def fast_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp_device, "FINGER_POLL_S", 0.01)
    monkeypatch.setattr(sim_signature, "SIM_PEN_INTERVAL_S", 0.0)  # the pad's pace is tested on its own


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-ten-"))
    server = SimServer(tmp)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def devices(sim: SimServer) -> Iterator[Devices]:
    d = sim.sim_dir
    kit = Devices(
        {
            "camera": FaceCamera(SimCameraBackend(d)),
            "fingerprint": FingerprintScanner(str(d / "fingerprint"), finger_timeout_s=0.3),
            "iris": IrisCamera(backend=SimUsbBackend(d)),
            "signature": SignaturePad(str(d / "signature"), 19200, quiet_s=0.1),
        }
    )
    yield kit
    kit.close()


def _applicant(resident: Resident) -> Applicant:
    demographics = Demographics(
        name=resident.name,
        sex=resident.sex,  # type: ignore[arg-type]
        birth_date=resident.birth_date,
        birth_place=resident.birth_place,
        address=resident.address,
        religion=resident.religion,
    )
    return Applicant(resident.nik, demographics)


def _present(sim: SimServer, resident: Resident) -> None:
    assert sim.handle({"op": "present", "seed": resident.seed, "finger": None})["ok"]
    sim.desk.present_resident(resident)


def _enroll(devices: Devices, resident: Resident) -> tuple[EnrollmentRecord, CaptureMetadata]:
    return asyncio.run(capture_enrollment_with_metadata(devices, _applicant(resident)))


def _seed_with_ten_fingers() -> int:
    return next(s for s in range(2, 200) if synthetic_resident(s).missing_finger is None)


def test_ten_distinct_fingers_are_enrolled_with_their_scores(sim: SimServer, devices: Devices) -> None:
    resident = synthetic_resident(_seed_with_ten_fingers())
    _present(sim, resident)
    record, metadata = _enroll(devices, resident)
    assert record.captured_fingers() == 10
    assert [len(metadata.finger_scores[p]) for p in range(1, 11)] == list(range(10))
    assert metadata.finger_scores[3] == tuple((e, s) for e, s in metadata.finger_scores[3])
    closest = metadata.highest_finger_score()
    assert closest is not None and closest[0] < 30  # well below the module's threshold (50 at level 3)
    assert metadata.to_json()["finger_scores"]["2"] == [
        {"against": 1, "score": metadata.finger_scores[2][0][1]}
    ]  # type: ignore[index]
    # the scores travel in the record (inside the packet's encryption) and survive its encoding
    assert record.capture == metadata.to_json()
    assert EnrollmentRecord.from_bytes(record.to_bytes()).capture == metadata.to_json()
    # the capture path's record, read by the independent validator: the iris record names the
    # camera by its serial (GET_INFO), the fingers are JPEG 2000, every part conforms
    parts = record.interchange_records()
    assert metadata.iris_serial and metadata.to_json()["devices"] == {
        "iris": {"serial": metadata.iris_serial}
    }
    iir = validate_iir(parts["iris"])
    assert iir.device_unique_id == (b"D" + metadata.iris_serial.encode()[:15]).ljust(16, b"\x00")
    assert validate_fir(parts["finger"]).compression == 4 and len(validate_fir(parts["finger"]).views) == 10
    assert validate_fac(parts["face"]).images[0].quality == record.face.quality
    assert validate_sdi(parts["signature"]).sample_count >= 1


def test_a_repeated_finger_is_refused_and_the_device_stays_healthy(sim: SimServer, devices: Devices) -> None:
    resident = synthetic_resident(_seed_with_ten_fingers()).with_repeated_finger(3, 1)
    _present(sim, resident)
    with pytest.raises(CaptureError) as info:
        _enroll(devices, resident)
    assert str(info.value) == "finger 3 looks like finger 1: place the right middle finger"
    assert (info.value.code, info.value.device) == ("repeated-finger", "fingerprint")
    health = devices.slots["fingerprint"].health
    assert health.passed, health
