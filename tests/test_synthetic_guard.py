"""Synthetic residents only on a simulated kit: a production service (no --simulate) refuses
synthetic enrollments, `direct` or not, whoever asks, so none reaches the centre looking like
a real resident. (That every packet of a simulated kit carries the signed synthetic mark is
tested on the simulated kiosk of tests/test_api_limits.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.api import ApiError, call, request
from agent.outbox import Outbox
from tests.agentkit import Kit
from tests.netkit import free_port

NO_DEVICES = "".join(
    f"[devices.{d}]\nenabled = false\n" for d in ("fingerprint", "signature", "iris", "camera")
)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """A kiosk service with real peripherals (here: none enabled) and no broker to reach."""
    kit = Kit(tmp_path_factory.mktemp("production") / "kit", free_port(), extra_agent=NO_DEVICES)
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
