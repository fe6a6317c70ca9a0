"""Back to back with host software nobody here wrote: pyfingerprint drives the simulated module.

pyfingerprint (bastianraschke/pyfingerprint on PyPI) has its own codec: it writes every
byte with its own write call, parses headers and checks checksums itself, and reads
images as 256 x 288 nibbles. Run against the simulator over a real pty, it checks what a
codec shared by our driver and our simulator could not: that both speak the module's
protocol as others read it. The scenario is the one our driver runs: handshake, template
count, an image, features, a match, the library, char files both ways, random code,
and a repeated finger found on the module.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from drivers.fingerprint import FingerprintScanner
from hw_sim.residents import synthetic_resident
from hw_sim.server import SimServer

pyfingerprint = pytest.importorskip("pyfingerprint.pyfingerprint")

SEED = 4


@pytest.fixture
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-pyfp-"))
    server = SimServer(tmp, ("fingerprint",), seed=SEED)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp)


@pytest.fixture
def host(sim: SimServer) -> Iterator[Any]:
    fp = pyfingerprint.PyFingerprint(str(sim.sim_dir / "fingerprint"), 57600, 0xFFFFFFFF, 0x00000000)
    yield fp
    fp._PyFingerprint__serial.close()  # its own __del__ closes it only when collected


def _take_image(fp: Any) -> None:
    for _ in range(20):
        if fp.readImage():
            return
    raise AssertionError("no finger on the glass")


def test_connect_as_host_libraries_do(host: Any) -> None:
    assert host.verifyPassword() is True
    assert host.getTemplateCount() == 0  # where widely used hosts failed
    status, _system_id, capacity, security, address, packet_size, baud = host.getSystemParameters()
    assert (capacity, security, address, packet_size, baud) == (1000, 3, 0xFFFFFFFF, 2, 6)
    assert host.getMaxPacketSize() == 128 and host.getBaudRate() == 57600
    assert status & 0x4  # PWD: the password was verified
    assert host.getTemplateIndex(0) == [False] * 256
    first, second = host.generateRandomNumber(), host.generateRandomNumber()
    assert first != second and 0 <= first < 2**32
    host.setSecurityLevel(4)
    assert host.getSecurityLevel() == 4


def test_enroll_search_and_library_as_a_host_library(host: Any) -> None:
    fp = host
    fp.verifyPassword()
    _take_image(fp)
    fp.convertImage(0x01)
    assert fp.searchTemplate() == (-1, -1)  # an empty library
    _take_image(fp)  # the same finger again: a second impression
    fp.convertImage(0x02)
    assert fp.compareCharacteristics() >= 50
    fp.createTemplate()
    assert fp.storeTemplate() == 0  # the first free page, from the index table
    assert fp.getTemplateCount() == 1 and fp.getTemplateIndex(0)[0] is True
    chars = fp.downloadCharacteristics(0x01)
    assert len(chars) == 512
    assert fp.uploadCharacteristics(0x02, chars) is True  # it reads them back
    _take_image(fp)
    fp.convertImage(0x01)
    position, score = fp.searchTemplate()
    assert position == 0 and score >= 50
    assert fp.loadTemplate(0, 0x02) is True
    assert fp.deleteTemplate(0) is True
    assert fp.getTemplateCount() == 0
    assert fp.storeTemplate(5) == 5
    assert fp.clearDatabase() is True
    assert fp.getTemplateCount() == 0


def test_the_image_pyfingerprint_reads_is_the_one_our_driver_reads(
    sim: SimServer, host: Any, tmp_path: Path
) -> None:
    host.verifyPassword()
    _take_image(host)
    host.downloadImage(str(tmp_path / "finger.png"))  # UpImage
    theirs = Image.open(tmp_path / "finger.png").convert("L").tobytes()
    host._PyFingerprint__serial.close()
    sim.handle({"op": "present", "seed": SEED, "finger": 1})
    scanner = FingerprintScanner(str(sim.sim_dir / "fingerprint"))
    try:
        ours = scanner.capture_finger(1)
    finally:
        scanner.close()
    assert ours.pixels == theirs


def test_a_repeated_finger_is_found_on_the_module(sim: SimServer, host: Any) -> None:
    sim.desk.present_resident(synthetic_resident(SEED).with_repeated_finger(2, 1))
    sim.devices["fingerprint"].on_present(SEED)
    fp = host
    fp.verifyPassword()
    _take_image(fp)  # finger 1
    fp.convertImage(0x01)
    fp.storeTemplate(900)
    fp.verifyPassword()  # the next capture session: finger 2 asked, 1 placed
    _take_image(fp)
    fp.convertImage(0x01)
    position, score = fp.searchTemplate()
    assert position == 900 and score >= 50
    sim.desk.present(SEED)  # the same resident, placing the right fingers
    sim.devices["fingerprint"].on_present(SEED, 2)
    fp.verifyPassword()
    _take_image(fp)
    fp.convertImage(0x01)
    assert fp.searchTemplate() == (-1, -1)
