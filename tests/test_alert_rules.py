"""docs/alerts.yml: promtool accepts the rules, its unit tests (docs/alerts.test.yml) fire each
alert when it should and not before, and every metric a rule reads is one the centre serves.

promtool comes with Debian's `prometheus` package, which `make setup` installs beside Mosquitto.
On a Debian machine without it these tests fail and say so (a silent skip would let a broken
rule pass); on a machine without Debian packages (no apt-get) they are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from central.fleet import FleetRow, apply_health, empty_row
from central.metrics import CentreMetrics, render_metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULES = DOCS / "alerts.yml"
RULE_TESTS = DOCS / "alerts.test.yml"
ALERT_RE = re.compile(r"^\s*- alert: (\w+)$", re.M)


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip(
            "promtool is not installed and this machine has no apt-get: install Prometheus's promtool"
        )
    pytest.fail("promtool is not installed: `make setup` installs it (Debian package prometheus)")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=DOCS)


def test_promtool_accepts_the_rules() -> None:
    p = run_promtool("check", "rules", RULES.name)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in p.stdout, p.stdout


def test_each_alert_fires_when_it_should_and_not_before() -> None:
    p = run_promtool("test", "rules", RULE_TESTS.name)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout, p.stdout


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired = set()
    for case in RULE_TESTS.read_text().split("- eval_time:")[1:]:
        if "exp_labels:" in case:
            fired.add(re.search(r"alertname: (\w+)", case).group(1))  # type: ignore[union-attr]
    assert set(alert_rules()) == fired


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: the offline threshold moved from 30 to 60 minutes is caught."""
    text = RULES.read_text()
    assert "ektp_kiosk_status_age_seconds > 1800" in text
    (tmp_path / RULES.name).write_text(text.replace("status_age_seconds > 1800", "status_age_seconds > 3600"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    p = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode != 0, p.stdout
    assert "EktpKioskOffline" in p.stdout + p.stderr


def test_every_alert_names_its_kiosk_and_what_to_do() -> None:
    monitoring = (DOCS / "monitoring.md").read_text()
    for alert, rule in alert_rules().items():
        rule = " ".join(rule.split())  # a description folds over lines
        assert "summary:" in rule and "description:" in rule, alert
        assert f"docs/monitoring.md, {alert})" in rule, alert
        assert re.search(r"severity: (warning|critical)\b", rule), alert
        if alert.startswith("EktpKiosk"):
            summary = re.search(r'summary: "([^"]*)"', rule).group(1)  # type: ignore[union-attr]
            assert "{{ $labels.kiosk }}" in summary, alert
        assert f"### {alert}" in monitoring, f"docs/monitoring.md has no section {alert}"


class RowStore:
    """A store of one kiosk with every figure known (the metric names, not the store, are tested here)."""

    def fleet(self, kiosk: str | None = None, *, backlog_problem_hours: float = 24.0) -> list[FleetRow]:
        row = empty_row("320715-01")
        row.update(online=True, status_ts="2026-11-27T10:00:00.000Z", health_age_s=3.0, gaps=[[2, 2]])
        apply_health(
            row,
            {
                "devices": {"iris": {"state": "fault", "detail": "no answer"}},
                "queue": {
                    "pending": 1,
                    "pending_bytes": 9,
                    "oldest_pending_age_s": 5.0,
                    "rejected": 0,
                    "damaged": 0,
                },
                "host": {"clock_synchronised": True},
            },
        )
        return [row]

    def totals(self) -> dict[str, int]:
        return {"kiosks": 1, "packets": 1, "synthetic": 0, "quarantine_rows": 0, "quarantine_bytes": 0}


def test_rules_read_only_metrics_the_centre_serves() -> None:
    """A renamed metric would leave its alert silent for good: each name a rule reads is served."""
    body, _ = render_metrics(RowStore(), CentreMetrics())
    served = {
        line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if not line.startswith("#")
    }
    assert "ektp_kiosk_online" in served and "ektp_central_store_errors_total" in served
    for alert, rule in alert_rules().items():
        (expr,) = re.findall(r"^\s*expr: (.+)$", rule, re.M)
        for name in re.findall(r"\bektp_\w+", expr):
            assert name in served, f"{alert} reads {name}, which /metrics does not serve"


def alert_rules() -> dict[str, str]:
    """Each rule of docs/alerts.yml by its alert name: its text."""
    text = RULES.read_text()
    starts = [(m.group(1), m.start()) for m in ALERT_RE.finditer(text)]
    ends = [start for _, start in starts[1:]] + [len(text)]
    return {name: text[start:end] for (name, start), end in zip(starts, ends, strict=True)}
