"""Synthetic residents only on a simulated kit: a production service (no --simulate) refuses
synthetic enrollments, `direct` or not, whoever asks, so none reaches the centre looking like
a real resident; every packet a simulated kit commits carries the signed synthetic mark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api import ApiError, call, request
from agent.outbox import Outbox
from tests.agentkit import Kit
from tests.netkit import Broker, free_port
from wire.packet import read_header

NO_DEVICES = "".join(
    f"[devices.{d}]\nenabled = false\n" for d in ("fingerprint", "signature", "iris", "camera")
)


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Kit]:
    """A kiosk service with real peripherals (here: none enabled) and no broker to reach."""
    kit = Kit(tmp_path / "kit", free_port(), extra_agent=NO_DEVICES)
    kit.setup_keys()
    try:
        kit.start_agent(simulate=False)
        yield kit
    finally:
        kit.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "captured"])
def test_a_production_service_refuses_synthetic_enrollments(production: Kit, direct: bool) -> None:
    sock = production.data_dir / "api.sock"
    with pytest.raises(ApiError) as refused:
        list(request(sock, "enroll", synthetic=True, direct=direct, count=100_000, seed=1, timeout=60))
    assert refused.value.code == "not-simulated"
    assert "`ektp-agent run --simulate`" in str(refused.value)
    p = production.agent_cli("enroll", "--synthetic", "--count", "5")
    assert p.returncode == 1 and p.stdout == ""
    assert "synthetic enrollments need simulated peripherals" in p.stderr and "Traceback" not in p.stderr
    assert call(sock, "status")[0]["enrollments"]["total"] == 0
    with Outbox.open_readonly(production.data_dir / "outbox.db") as ob:
        assert ob.stats().last_seq == 0 and ob.undelivered() == []


def test_every_packet_of_a_simulated_kit_carries_the_synthetic_mark(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    k.start_agent()
    receipts = k.enroll(1)
    receipts += [
        item["receipt"]
        for item in request(k.data_dir / "api.sock", "enroll", synthetic=True, direct=True, count=2, seed=9)
    ]
    with Outbox.open_readonly(k.data_dir / "outbox.db") as ob:
        headers = [read_header(ob.get(r["packet_id"]) or b"") for r in receipts]
    assert [h.packet_id for h in headers] == [r["packet_id"] for r in receipts]
    assert all(h.synthetic for h in headers)
