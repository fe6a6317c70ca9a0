"""The fleet web view in a real headless Chromium, against the real kit: a Mosquitto of the test's
own, `ektp-central run` serving the view ([web] listen, refresh_s = 2) and `ektp-agent run
--simulate`, with a fault injected by `ektp-sim` and the agent SIGKILLed (its Last Will).
Beside the real kiosk the store holds a small fleet written through the store's API, so that
filters have something to tell apart, and the real kiosk's last 24 hours of health history
(an outage that built a backlog, a fault of the iris) so that its plots have a past. The pages are never reloaded by the test: what shows
comes through the page's own meta refresh.

Screenshots of the fleet and the kiosk page go to $EKTP_RESULTS_DIR/screenshots (default
results/screenshots); docs/img holds a pair of them for docs/web.md."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from central.store import CentralStore, open_store
from tests.agentkit import Kit, script
from tests.netkit import Broker, free_port
from tests.webkit import browser_missing, chromium, health_doc, public_pem, record, screenshot

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))

REFRESH_S = 2
KIOSK = "320715-01"  # the real, simulated kiosk
# the rest of the fleet, written to the store: (id, status, devices, pending, oldest waiting in s)
OTHERS: list[tuple[str, str, dict[str, tuple[str, str, str]], int, float | None]] = [
    ("320715-02", "online", {}, 0, None),
    ("320715-03", "offline", {}, 4, 5400.0),
    ("320716-01", "online", {"camera": ("degraded", "exposure unstable: 3 of 5 frames dark", "")}, 1, 300.0),
    ("320716-02", "online", {}, 27, 31 * 3600.0),
    (
        "110101-01",
        "online",
        {"iris": ("fault", "no answer on USB 1234:5678", "replug the iris camera's USB cable")},
        2,
        900.0,
    ),
    ("110102-07", "online", {}, 0, None),
]


@dataclass
class Centre:
    kit: Kit
    url: str
    db: str

    def fleet_row(self, kiosk: str) -> dict[str, Any]:
        p = self.kit.central_cli("fleet", "--json")
        rows = {r["kiosk"]: r for r in json.loads(p.stdout)}
        return rows[kiosk]


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    root = tmp_path_factory.mktemp("browser")
    broker = Broker(root / "broker")
    broker.start()
    kit = Kit(root / "kit", broker.port, kiosk_id=KIOSK, health_s=1.0)
    try:
        kit.setup_keys()
        port = free_port()
        with kit.central_conf.open("a") as f:
            f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nrefresh_s = {REFRESH_S}\n')
        db = str(kit.root / "central" / "central.db")
        with open_store(db) as store:
            items: list[tuple[str, str, dict[str, Any]]] = []
            for kiosk, state, devices, pending, oldest in OTHERS:
                store.add_kiosk(kiosk, public_pem())
                items.append((kiosk, "status", {"state": "online", "connection": 1}))
                if state == "offline":
                    items.append((kiosk, "status", {"state": "offline", "connection": 1}))
                doc = health_doc(
                    kiosk, root / "docs" / kiosk, devices=devices, pending=pending,
                    pending_bytes=pending * 360_000, oldest_s=oldest,
                )  # fmt: skip
                items.append((kiosk, "health", doc))
            record(store, items)
            write_history(store, root / "docs" / KIOSK)
        kit.start_central()
        kit.start_agent()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, kit.log("central")[-3000:]
            time.sleep(0.1)
        yield Centre(kit, url, db)
    finally:
        kit.close()
        broker.stop()


def write_history(store: CentralStore, data_dir: Path) -> None:
    """The real kiosk's last day, a health document every 5 minutes: a link outage from 14 to 9
    hours ago (the backlog grows, then drains), the iris in fault from 6 to 5 hours ago, the
    camera degraded from 20 to 19 hours ago."""
    now = datetime.now(UTC)
    for i in range(288, 0, -1):
        h = i / 12  # hours ago
        pending = round((14 - h) * 8) if 9 < h <= 14 else round((h - 8) * 40) if 8 < h <= 9 else i % 3 // 2
        devices: dict[str, tuple[str, str, str]] = {}
        if 5 < h <= 6:
            devices["iris"] = ("fault", "no answer on USB 1234:5678", "replug the iris camera's USB cable")
        if 19 < h <= 20:
            devices["camera"] = ("degraded", "exposure unstable: 3 of 5 frames dark", "")
        oldest = (14 - h) * 3600 if 9 < h <= 14 else 600.0 if pending else None
        doc = health_doc(
            KIOSK,
            data_dir,
            devices=devices,
            pending=pending,
            pending_bytes=pending * 360_000,
            oldest_s=oldest,
        )
        record(store, [(KIOSK, "health", doc)], now=now - timedelta(hours=h))


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def rows(driver: Any) -> list[str]:
    return [tr.get_attribute("data-kiosk") for tr in driver.find_elements("css selector", "tr.kiosk")]


def row_of(driver: Any, kiosk: str) -> Any:
    return driver.find_element("css selector", f'tr.kiosk[data-kiosk="{kiosk}"]')


def wait_until(what: str, cond: Any, timeout: float) -> float:
    """Seconds until ``cond()`` held; the page reloads itself meanwhile (never reloaded here)."""
    started = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - started
        except Exception:  # the page was between two loads
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the page did not show {what} within {timeout:.0f} s")
        time.sleep(0.1)


def just_reloaded(driver: Any, timeout: float = 3 * REFRESH_S + 5) -> None:
    """Wait for the page's next reload to finish: the reader then has about REFRESH_S to look."""
    driver.execute_script("window.ektpNotReloaded = true")
    wait_until(
        "the page reloaded",
        lambda: driver.execute_script(
            "return window.ektpNotReloaded === undefined && document.readyState === 'complete'"
        ),
        timeout,
    )


def fresh(driver: Any) -> None:
    """Make sure the page loaded under a second ago, so that a few clicks land before its reload."""
    if driver.execute_script("return performance.now()") > 800:
        just_reloaded(driver)


def sim(kit: Kit, *args: str) -> None:
    p = subprocess.run(
        [script("ektp-sim"), "--dir", str(kit.data_dir / "sim"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_fault_injected_with_ektp_sim_shows_with_its_hint(centre: Centre, browser: Any) -> None:
    browser.get(centre.url + "/")
    wait_until("the kiosk online", lambda: row_of(browser, KIOSK).get_attribute("data-online") == "yes", 30)
    assert browser.find_elements("css selector", 'meta[http-equiv="refresh"][content="2"]')
    sim(centre.kit, "fault", "fingerprint", "unplug")
    chip = f'tr.kiosk[data-kiosk="{KIOSK}"] [data-device="fingerprint"][data-state="fault"]'
    took = wait_until("the fingerprint in fault", lambda: browser.find_elements("css selector", chip), 30)
    row = centre.fleet_row(KIOSK)
    hint = row["devices"]["fingerprint"]["hint"]
    assert hint, row
    just_reloaded(browser)
    shown = browser.execute_script(
        """
        const row = document.querySelector(`tr.kiosk[data-kiosk="${arguments[0]}"]`);
        return {
          hint: row.querySelector('[data-device-detail="fingerprint"] .hint').innerText,
          problem: row.classList.contains("problem"),
          rows: [...document.querySelectorAll("tr.kiosk")].map((r) => r.dataset.kiosk),
        };
        """,
        KIOSK,
    )
    assert shown["hint"] == hint
    assert shown["problem"] and shown["rows"].index(KIOSK) < 4  # among the four that need someone, first
    print(f"fault shown {took:.1f} s after `ektp-sim fault`")
    just_reloaded(browser)
    screenshot(browser, "fleet")
    sim(centre.kit, "clear", "fingerprint")
    ok = f'tr.kiosk[data-kiosk="{KIOSK}"] [data-device="fingerprint"][data-state="ok"]'
    wait_until("the fingerprint ok again", lambda: browser.find_elements("css selector", ok), 30)


def test_filters_sort_and_region_links_work_in_the_browser(centre: Centre, browser: Any) -> None:
    browser.get(centre.url + "/")
    every = set(rows(browser))
    assert every == {KIOSK, *(k for k, *_ in OTHERS)}

    def click(*selectors: str) -> None:
        """Click these in turn on one load of the page (not across its next reload)."""
        fresh(browser)
        for selector in selectors:
            by = "link text" if selector.startswith("=") else "css selector"
            browser.find_element(by, selector.lstrip("=")).click()

    click('input[name="faulty"]', 'form.filters button[type="submit"]')
    wait_until("only the faulty kiosk", lambda: rows(browser) == ["110101-01"], 10)
    assert "faulty=1" in browser.current_url
    click("#clear")
    wait_until("every kiosk again", lambda: set(rows(browser)) == every, 10)
    click('input[name="offline"]', 'form.filters button[type="submit"]')
    wait_until("the offline kiosk", lambda: rows(browser) == ["320715-03"], 10)
    click("#clear")
    fresh(browser)
    hours = browser.find_element("css selector", 'input[name="backlog_hours"]')
    hours.send_keys("1")
    hours.submit()
    wait_until("backlogs older than 1 h", lambda: set(rows(browser)) == {"320715-03", "320716-02"}, 10)
    click("#clear")
    click('#regions tr[data-region="11"] a')  # province 11 in the summary: its kiosks, by regency
    wait_until("province 11", lambda: set(rows(browser)) == {"110101-01", "110102-07"}, 10)
    regions = browser.execute_script(
        'return [...document.querySelectorAll("#regions tr[data-region]")].map((r) => r.dataset.region)'
    )
    assert regions == ["1101"]
    click("#clear")
    click("=backlog")  # the column's header sorts by it, the most first
    wait_until("sorted by backlog", lambda: rows(browser)[:2] == ["320716-02", "320715-03"], 10)


def test_the_kiosk_page_plots_its_history(centre: Centre, browser: Any) -> None:
    kit = centre.kit
    receipts = kit.enroll(1)  # a synthetic resident through the simulated devices (Kit.instant_pen)
    p = kit.agent_cli("sync", "--wait", "--timeout", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    browser.get(centre.url + "/")
    browser.find_element("link text", KIOSK).click()
    assert browser.current_url == f"{centre.url}/kiosk/{KIOSK}"
    wait_until(
        "a delivery bar", lambda: browser.find_elements("css selector", 'svg[data-kind="bar"] rect.bar'), 20
    )
    just_reloaded(browser)  # what follows reads one load of the page, before the next reload
    page = browser.execute_script(
        """
        const all = (q) => [...document.querySelectorAll(q)];
        return {
          kinds: all("#plots svg.plot").map((s) => s.dataset.kind),
          sizes: all("#plots svg.plot").map((s) => [s.getBoundingClientRect().width, s.getBoundingClientRect().height]),
          backlog: all('svg[data-kind="line"]')[0].querySelectorAll("circle.point").length,
          peak: Math.max(...all('svg[data-kind="line"]')[0].querySelectorAll("circle.point").values().map((c) => +c.dataset.value)),
          bars: all('svg[data-kind="bar"] rect.bar').map((b) => +b.dataset.value),
          states: all("rect.state").map((r) => r.dataset.device + " " + r.dataset.state),
          packets: document.getElementById("packets").innerText,
        };
        """
    )
    assert page["kinds"] == ["line", "line", "bar", "timeline"]
    assert all(w > 500 and h > 60 for w, h in page["sizes"]), page["sizes"]  # drawn, not collapsed
    assert page["backlog"] >= 288 and page["peak"] == 40  # a point per step of the day; the outage's top
    assert sum(page["bars"]) == 1  # the packet stored just now
    states = set(page["states"])
    assert {"iris fault", "camera degraded", "fingerprint ok", "signature ok"} <= states
    assert "fingerprint fault" in states  # the first test's fault, in this 5-minute step
    for r in receipts:
        assert r["packet_id"] in page["packets"]
    just_reloaded(browser)
    screenshot(browser, "kiosk")


def test_a_sigkilled_agent_shows_offline_within_one_refresh(centre: Centre, browser: Any) -> None:
    browser.get(centre.url + "/")
    wait_until("the kiosk online", lambda: row_of(browser, KIOSK).get_attribute("data-online") == "yes", 30)
    browser.execute_script("window.ektpNotReloaded = true")  # gone once the page reloads itself
    assert centre.kit.agent is not None
    centre.kit.kill(centre.kit.agent)  # SIGKILL: no clean offline, only the broker's Last Will
    took = wait_until(
        "the kiosk offline",
        lambda: row_of(browser, KIOSK).get_attribute("data-online") == "no",
        3 * REFRESH_S + 5,
    )
    assert browser.execute_script("return window.ektpNotReloaded === undefined"), (
        "the page did not reload itself"
    )
    # the Will comes at once; the page reloads every REFRESH_S and its reading is at most REFRESH_S / 2 old
    assert took <= REFRESH_S + REFRESH_S / 2 + 1.5, f"offline showed {took:.1f} s after the kill"
    assert "offline" in row_of(browser, KIOSK).find_element("css selector", "td.link").text
    print(f"offline shown {took:.1f} s after the SIGKILL (refresh every {REFRESH_S} s)")
