"""The fleet web view over HTTP: real uvicorn on a free loopback port, a real SQLite store filled
through the store's API with health documents from the agent's own HealthReporter.

What an operator relies on: problems first and grouped by region, the filters and sorts
selecting exactly the kiosks they name, pages of 200, a kiosk page with its plots, packets
and quarantine, 404 for an unknown kiosk, kiosk-sent markup shown as text, the fleet
reading shared by refreshes and /metrics, a login (HTTP basic, scrypt) whenever a users file
is set, and the console scripts `ektp-central web` and `run` with [web] listen."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from central.metrics import CentreMetrics
from central.store import CentralStore, open_store
from central.web import store_reader
from central.web.auth import (
    ExposedWithoutLogin,
    UsersFileError,
    check_exposure,
    hash_password,
    read_users,
    verify_password,
)
from central.web.fleet_view import PAGE_ROWS
from tests.agentkit import Kit, script
from tests.centralkit import central_keys, kiosk
from tests.netkit import Broker, free_port
from tests.test_central_store import item
from tests.webkit import REPO, fleet_groups, fleet_rows, health_doc, public_pem, record, served, web_config

WELL, OFFLINE, FAULTY, OLD_BACKLOG = "320715-01", "320715-02", "320716-01", "320716-02"
DEGRADED, NEVER, NO_REGION = "110101-01", "110102-01", "lab-kiosk"
SCRIPT = '<script>alert("kiosk")</script>'
HINT = "<img src=x onerror=alert(1)> replug the iris camera's USB cable"


@pytest.fixture
def fleet_db(tmp_path: Path) -> str:
    """Seven kiosks: well, offline, a device in fault (its detail and hint are markup), a backlog
    older than 24 h, a degraded device, one registered but never heard, one without a region code."""
    db = str(tmp_path / "central.db")
    docs = tmp_path / "kiosks"
    with open_store(db) as store:
        for k in (WELL, NEVER):
            store.add_kiosk(k, public_pem())
        online = {"state": "online", "connection": 1}
        record(
            store,
            [
                (WELL, "status", online),
                (WELL, "health", health_doc(WELL, docs / WELL)),
                (OFFLINE, "status", online),
                (OFFLINE, "status", {"state": "offline", "connection": 1}),
                (FAULTY, "status", online),
                (
                    FAULTY,
                    "health",
                    health_doc(FAULTY, docs / FAULTY, devices={"iris": ("fault", SCRIPT, HINT)}),
                ),
                (OLD_BACKLOG, "status", online),
                (
                    OLD_BACKLOG,
                    "health",
                    health_doc(
                        OLD_BACKLOG,
                        docs / OLD_BACKLOG,
                        pending=5,
                        pending_bytes=1_800_000,
                        oldest_s=30 * 3600,
                    ),
                ),
                (DEGRADED, "status", online),
                (
                    DEGRADED,
                    "health",
                    health_doc(
                        DEGRADED,
                        docs / DEGRADED,
                        devices={"fingerprint": ("degraded", "image quality low: clean the sensor", "")},
                        pending=3,
                        pending_bytes=900_000,
                        oldest_s=2 * 3600,
                    ),
                ),
                (NO_REGION, "status", online),
                (NO_REGION, "health", health_doc(NO_REGION, docs / NO_REGION)),
            ],
        )
    return db


def get(client: httpx.Client, path: str, code: int = 200) -> str:
    r = client.get(path)
    assert r.status_code == code, (path, r.status_code, r.text[-2000:])
    return r.text


# ----------------------------------------------------------------------------- the fleet page


def test_fleet_page_lists_problems_first_in_region_groups(fleet_db: str) -> None:
    with served(web_config(fleet_db, refresh_s=7)) as client:
        html = get(client, "/")
    assert fleet_rows(html) == [OFFLINE, FAULTY, OLD_BACKLOG, DEGRADED, NEVER, WELL, NO_REGION]
    groups = fleet_groups(html)
    assert [g.rsplit(":", 1)[0] for g in groups] == [
        "Needs someone: district 320715 (province 32, regency 3207)",
        "Needs someone: district 320716 (province 32, regency 3207)",
        "Well: district 110101 (province 11, regency 1101)",
        "Well: district 110102 (province 11, regency 1101)",
        "Well: district 320715 (province 32, regency 3207)",
        "Well: (no region code)",
    ]
    assert groups[1].endswith("2 kiosks, 2 need someone")
    assert '<meta http-equiv="refresh" content="7">' in html
    row = _row_html(html, OFFLINE)
    assert "chip offline" in row and "since " in row and "offline since" in row  # the problem says since when
    row = _row_html(html, FAULTY)
    assert 'data-device="iris" data-state="fault"' in row
    assert "&lt;img src=x onerror=alert(1)&gt; replug the iris camera&#39;s USB cable" in row  # the hint
    row = _row_html(html, DEGRADED)
    assert "image quality low: clean the sensor" in row and "3 packets" in row and "900.0 kB" in row
    assert "2 h" in row  # the age of the oldest waiting packet
    row = _row_html(html, OLD_BACKLOG)
    assert "backlog: oldest undelivered packet 30.0 h old (limit 24 h)" in row
    assert "chip never" in _row_html(html, NEVER)
    # the summary by province: 11 has two kiosks, 32 four, and one has no region code
    regions = dict(re.findall(r'<tr data-region="(\d*)"><td>.*?</td>\s*<td class="num">(\d+)</td>', html))
    assert regions == {"11": "2", "32": "4", "": "1"}


def _row_html(html: str, kiosk_id: str) -> str:
    m = re.search(rf'<tr class="kiosk[^"]*" data-kiosk="{re.escape(kiosk_id)}".*?</tr>', html, re.S)
    assert m, f"no row of {kiosk_id}"
    return m.group(0)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("offline=1", {OFFLINE}),
        ("faulty=1", {FAULTY}),
        ("problems=1", {OFFLINE, FAULTY, OLD_BACKLOG}),
        ("backlog_hours=24", {OLD_BACKLOG}),
        ("backlog_hours=1", {OLD_BACKLOG, DEGRADED}),
        ("region=32", {WELL, OFFLINE, FAULTY, OLD_BACKLOG}),
        ("region=3207", {WELL, OFFLINE, FAULTY, OLD_BACKLOG}),
        ("region=320716", {FAULTY, OLD_BACKLOG}),
        ("region=11&problems=1", set()),
        ("region=32&faulty=1&offline=1", set()),
        ("region=32&backlog_hours=1", {OLD_BACKLOG}),
        (
            "offline=&faulty=&backlog_hours=&region=&sort=",
            {WELL, OFFLINE, FAULTY, OLD_BACKLOG, DEGRADED, NEVER, NO_REGION},
        ),
    ],
)
def test_filters_keep_exactly_the_kiosks_they_name(fleet_db: str, query: str, expected: set[str]) -> None:
    with served(web_config(fleet_db)) as client:
        html = get(client, f"/?{query}")
    assert set(fleet_rows(html)) == expected
    if expected == set():
        assert "no kiosk matches these filters" in html


def test_sorts_put_the_worst_first_and_rev_turns_them_round(fleet_db: str) -> None:
    with served(web_config(fleet_db)) as client:
        by_backlog = fleet_rows(get(client, "/?sort=backlog"))
        reversed_backlog = fleet_rows(get(client, "/?sort=backlog&rev=1"))
        by_kiosk = fleet_rows(get(client, "/?sort=kiosk"))
        by_devices = fleet_rows(get(client, "/?sort=devices"))
        by_link = fleet_rows(get(client, "/?sort=link"))
    # 5 packets, 3, then the kiosks with none waiting, then those whose backlog is unknown
    assert by_backlog == [OLD_BACKLOG, DEGRADED, WELL, FAULTY, NO_REGION, NEVER, OFFLINE]
    assert reversed_backlog == by_backlog[::-1]
    assert by_kiosk == sorted(by_kiosk)
    assert by_devices[:2] == [FAULTY, DEGRADED]
    assert by_link[:2] == [NEVER, OFFLINE]  # never heard, then offline, before every online kiosk


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("sort=colour", "sort='colour'"),
        ("page=0", "page='0'"),
        ("backlog_hours=soon", "backlog_hours='soon'"),
        ("backlog_hours=-1", "backlog_hours='-1'"),
        ("region=32a", "region='32a'"),
        ("offline=yes", "offline='yes'"),
    ],
)
def test_a_bad_query_parameter_is_a_400_naming_it(fleet_db: str, query: str, named: str) -> None:
    with served(web_config(fleet_db)) as client:
        html = get(client, f"/?{query}", 400)
    assert named.replace("'", "&#39;") in html


def test_pages_of_200_with_region_counts_across_all_pages(tmp_path: Path) -> None:
    db = str(tmp_path / "central.db")
    ids = [f"32{p:02d}{d:02d}-{n:02d}" for p in range(1, 4) for d in range(1, 4) for n in range(50)]  # 450
    with open_store(db) as store:
        record(
            store,
            [
                (k, "status", {"state": "offline" if k.endswith("-07") else "online", "connection": 1})
                for k in ids
            ],
        )
    with served(web_config(db)) as client:
        first = get(client, "/?sort=kiosk")
        third = get(client, "/?sort=kiosk&page=3")
        past_the_end = get(client, "/?sort=kiosk&page=99")
        regencies = get(client, "/?region=32")
    assert fleet_rows(first) == sorted(ids)[:PAGE_ROWS]
    assert fleet_rows(third) == sorted(ids)[2 * PAGE_ROWS :]
    assert fleet_rows(past_the_end) == fleet_rows(third)
    assert "page 1 of 3" in first and 'href="?sort=kiosk&amp;page=2" rel="next"' in first
    assert "page 3 of 3" in third and 'rel="next"' not in third
    # the regency summary counts all 150 kiosks of each regency, 3 of them offline
    cells = re.findall(
        r'<tr data-region="(\d+)"><td>.*?</td>\s*<td class="num">(\d+)</td><td class="num">(\d+)</td>\s*'
        r'<td class="num[^"]*">(\d+)</td>',
        regencies,
    )
    assert cells == [("3201", "150", "147", "3"), ("3202", "150", "147", "3"), ("3203", "150", "147", "3")]


# ----------------------------------------------------------------------------- the kiosk page


def test_kiosk_page_plots_its_history_and_lists_packets_and_quarantine(tmp_path: Path) -> None:
    db = str(tmp_path / "central.db")
    k = kiosk(WELL, central_keys(tmp_path))
    now = datetime.now(UTC)
    backlogs = [4, 7, 2, 0, 5, 9]
    with open_store(db) as store:
        store.add_kiosk(WELL, k.public_pem)
        # one health document in each of six 5-minute steps of the last hour, the iris in fault in the 3rd
        for i, pending in enumerate(backlogs):
            when = now - timedelta(minutes=5 * (len(backlogs) - i))
            devices = {"iris": ("fault", "no answer on USB 1234:5678", "")} if i == 2 else {}
            doc = health_doc(WELL, tmp_path / "k", devices=devices, pending=pending, oldest_s=60.0 * pending)
            record(store, [(WELL, "health", doc)], now=when)
        record(store, [(WELL, "status", {"state": "online", "connection": 3})])
        packets = [item(k, seq) for seq in (1, 2, 4)]
        store.store_packets(packets)
        store.quarantine(
            b"not a packet", kiosk_hint=WELL, reason="bad_magic: <b>not a packet</b>", source="import"
        )
    with served(web_config(db)) as client:
        html = get(client, f"/kiosk/{WELL}")
        short = get(client, f"/kiosk/{WELL}?hours=1")
        get(client, f"/kiosk/{WELL}?hours=0", 400)
        get(client, f"/kiosk/{WELL}?hours=soon", 400)
    plots = re.findall(r'<svg class="plot".*?</svg>', html, re.S)
    kinds = [re.search(r'data-kind="(\w+)"', p).group(1) for p in plots]  # type: ignore[union-attr]
    assert kinds == ["line", "line", "bar", "timeline"]
    backlog = [float(v) for v in re.findall(r'<circle class="point"[^>]*data-value="([\d.]+)"', plots[0])]
    assert backlog == backlogs
    assert re.findall(r'<rect class="bar"[^>]*data-value="(\d+)"', plots[2]) == ["3"]  # 3 packets stored now
    faults = re.findall(r'data-device="iris" data-state="fault"', plots[3])
    assert len(faults) == 1
    assert len(re.findall(r'data-device="camera" data-state="ok"', plots[3])) == len(backlogs)
    assert "History: the last 1 h" in short and "History: the last 24 h" in html
    for header, data, _source in packets:
        assert header.packet_id in html
        assert data.hex()[:32] not in html  # ids, sizes, times: never content
    assert "seq gaps" in html and "1 missing: 3" in html
    assert "bad_magic: &lt;b&gt;not a packet&lt;/b&gt;" in html  # the quarantine entry, its reason as text
    assert "connection 3" in html and 'content="15"' in html


@pytest.mark.parametrize(
    "path", ["/kiosk/999999-99", "/kiosk/%3Cscript%3Ex", "/kiosk/" + "7" * 65, "/nowhere"]
)
def test_unknown_or_invalid_kiosk_ids_are_404_and_never_reach_the_store(fleet_db: str, path: str) -> None:
    opened: list[CentralStore] = []

    def opener() -> CentralStore:
        opened.append(open_store(fleet_db))
        return opened[-1]

    with served(web_config(fleet_db), opener=opener) as client:
        html = get(client, path, 404)
    assert "<script>" not in html
    if path == "/kiosk/999999-99":  # a valid id: the store is asked, and knows nothing of it
        assert "The centre knows no kiosk 999999-99" in html and len(opened) == 1
    elif path.startswith("/kiosk/"):  # an invalid id is refused before the store is even opened
        assert "is not a kiosk id" in html and opened == []
    else:
        assert "There is no page at /nowhere" in html and opened == []


def test_kiosk_sent_markup_is_shown_as_text_and_no_script_may_run(fleet_db: str) -> None:
    with served(web_config(fleet_db)) as client:
        r = client.get("/")
        pages = [r.text, get(client, f"/kiosk/{FAULTY}")]
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script from anywhere
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    for html in pages:
        assert "<script" not in html and "<img" not in html
        assert "&lt;script&gt;alert(&#34;kiosk&#34;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


# ----------------------------------------------------------------------------- store, metrics, health


class CountingStore:
    """A real store that counts its whole-fleet readings."""

    def __init__(self, store: CentralStore, counts: list[str]) -> None:
        self._store, self._counts = store, counts

    def fleet(self, *args: Any, **kwargs: Any) -> Any:
        self._counts.append("fleet")
        return self._store.fleet(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize(("cache_s", "readings"), [(60.0, 1), (0.0, 3)])
def test_refreshes_and_metrics_share_one_fleet_reading(
    fleet_db: str, monkeypatch: pytest.MonkeyPatch, cache_s: float, readings: int
) -> None:
    monkeypatch.setattr(store_reader, "FLEET_CACHE_S", cache_s)
    counts: list[str] = []
    with served(web_config(fleet_db), opener=lambda: CountingStore(open_store(fleet_db), counts)) as client:  # type: ignore[arg-type, return-value]
        get(client, "/")
        get(client, "/?faulty=1")
        get(client, "/metrics")
    assert counts == ["fleet"] * readings


def test_metrics_carry_the_kiosks_and_the_centres_counters(fleet_db: str) -> None:
    centre = CentreMetrics()
    centre.count("stored", 3)
    with served(web_config(fleet_db), centre_metrics=centre) as client:
        r = client.get("/metrics")
        assert get(client, "/healthz") == "ok\n"
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    online = {s.labels["kiosk"]: s.value for s in families["ektp_kiosk_online"].samples}
    assert online == {WELL: 1, OFFLINE: 0, FAULTY: 1, OLD_BACKLOG: 1, DEGRADED: 1, NO_REGION: 1}
    stored = [s for s in families["ektp_central_packets"].samples if s.name.endswith("_total")]
    assert {s.labels["status"]: s.value for s in stored}["stored"] == 3


def test_a_store_that_cannot_be_read_is_a_503_page_that_tries_again(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "sub"
    (tmp_path / "no-such-dir").write_text("a file where a directory should be")
    with served(web_config(str(missing / "central.db"))) as client:
        html = get(client, "/", 503)
    assert "The store cannot be read" in html and 'http-equiv="refresh"' in html


# ----------------------------------------------------------------------------- logins


def passwd(users: Path, name: str, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("ektp-central"), "web", "passwd", name, "--users-file", str(users), *extra],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_users_file_asks_every_page_for_a_login(fleet_db: str, tmp_path: Path) -> None:
    users = tmp_path / "web-users"
    p = passwd(users, "alice", "correct horse battery")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"added alice in {users}"
    assert stat.S_IMODE(users.stat().st_mode) == 0o640
    (line,) = users.read_text().splitlines()
    assert line.startswith("alice:scrypt$16384$8$1$") and "correct horse" not in line
    assert passwd(users, "bob", "another long one").returncode == 0
    with served(web_config(fleet_db, users_file=users)) as client:
        for path in ("/", f"/kiosk/{WELL}", "/metrics", "/kiosk/999999-99"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == 'Basic realm="ektp-central fleet", charset="UTF-8"'
            assert WELL not in r.text
        assert client.get("/", auth=("alice", "wrong horse battery")).status_code == 401
        assert client.get("/", auth=("mallory", "correct horse battery")).status_code == 401
        assert client.get("/", auth=("alice", "correct horse battery")).status_code == 200
        assert client.get("/metrics", auth=("bob", "another long one")).status_code == 200
        assert client.get("/healthz").status_code == 200  # says "ok" and nothing else
        # a new password works at once, and the old one no more (the file is read again)
        p = passwd(users, "alice", "a brand new password")
        assert p.returncode == 0 and p.stdout.startswith("changed the password of alice"), p.stderr
        assert client.get("/", auth=("alice", "correct horse battery")).status_code == 401
        assert client.get("/", auth=("alice", "a brand new password")).status_code == 200
    assert [line.split(":")[0] for line in users.read_text().splitlines()] == ["alice", "bob"]


def test_passwd_refuses_a_short_password_and_a_file_open_to_others(tmp_path: Path, fleet_db: str) -> None:
    users = tmp_path / "web-users"
    p = passwd(users, "alice", "short")
    assert p.returncode == 2 and "shorter than 8 characters: nothing written" in p.stderr
    assert not users.exists()
    assert passwd(users, "alice", "long enough now").returncode == 0
    users.chmod(0o644)
    p = passwd(users, "bob", "long enough too")
    assert p.returncode == 2 and f"has mode 0644, open to other users; run: chmod 640 {users}" in p.stderr
    with pytest.raises(UsersFileError, match="open to other users"):
        read_users(users)
    users.chmod(0o640)
    users.write_text(users.read_text() + "bob:plaintext\n")
    with pytest.raises(UsersFileError, match="line 2 is not NAME:scrypt"):
        read_users(users)


def test_hashes_are_salted_and_checked_in_full() -> None:
    a, b = hash_password("the same password"), hash_password("the same password")
    assert a != b  # a random salt each
    assert verify_password("the same password", a) and verify_password("the same password", b)
    assert not verify_password("the same passwore", a)
    assert not verify_password("the same password", a[:-4] + "AAA=")
    assert not verify_password("x", "scrypt$3$8$1$AAAA$AAAA")  # not a power of two: refused, not run


def test_a_non_loopback_listen_needs_a_users_file(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, None)
    check_exposure("0.0.0.0", tmp_path / "users")
    with pytest.raises(ExposedWithoutLogin, match="not loopback"):
        check_exposure("0.0.0.0", None)
    conf = tmp_path / "central.toml"
    conf.write_text(f'[store]\nurl = "{tmp_path / "central.db"}"\n')
    p = subprocess.run(
        [script("ektp-central"), "--config", str(conf), "web", "--listen", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "which is not loopback, without a login" in p.stderr, p.stderr
    assert not (tmp_path / "central.db").exists()  # refused before anything was opened


# ----------------------------------------------------------------------------- the console scripts


def test_web_command_prints_its_url_serves_and_stops_on_sigterm(fleet_db: str, tmp_path: Path) -> None:
    conf = tmp_path / "central.toml"
    conf.write_text(f'[store]\nurl = "{fleet_db}"\n[web]\nrefresh_s = 3\n')
    port = free_port()
    proc = subprocess.Popen(
        [script("ektp-central"), "--config", str(conf), "web", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"serving the fleet view on http://127.0.0.1:{port}/ (no login)"), first
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            html = get(client, "/")
        assert set(fleet_rows(html)) >= {WELL, FAULTY} and 'content="3"' in html
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_web_command_names_a_port_in_use(fleet_db: str, tmp_path: Path) -> None:
    conf = tmp_path / "central.toml"
    conf.write_text(f'[store]\nurl = "{fleet_db}"\n')
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        p = subprocess.run(
            [script("ektp-central"), "--config", str(conf), "web", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 2, p.stderr
    assert f"cannot listen on 127.0.0.1:{port}: port {port} is already in use" in p.stderr
    assert "--listen 127.0.0.1:PORT or [web] listen" in p.stderr


def test_run_serves_the_web_view_with_the_consumers_counters(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    kit = Kit(tmp_path / "kit", broker.port)
    try:
        kit.setup_keys()
        port = free_port()
        with kit.central_conf.open("a") as f:
            f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nrefresh_s = 2\n')
        central = kit.start_central()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert central.poll() is None and time.monotonic() < deadline, kit.log("central")[-3000:]
            time.sleep(0.1)
        assert fleet_rows(get(client, "/")) == [kit.kiosk_id]  # registered, not heard from yet
        metrics = get(client, "/metrics")
        assert "ektp_central_packets_total" in metrics or "# TYPE ektp_central_packets counter" in metrics
        # a second centre on the same port: it says so and stops (exit 2), the first serves on
        second = kit.start_central("second")
        assert second.wait(60) == 2
        assert f"port {port} is already in use" in kit.log("second")
        central.send_signal(signal.SIGTERM)
        assert central.wait(30) == 0, kit.log("central")[-3000:]
        client.close()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        kit.close()
        broker.stop()


def test_the_user_file_mode_and_owner_are_kept_on_update(tmp_path: Path) -> None:
    users = tmp_path / "web-users"
    assert passwd(users, "alice", "correct horse battery").returncode == 0
    before = users.stat()
    assert passwd(users, "alice", "correct horse battery 2").returncode == 0
    after = users.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640 and after.st_ino != before.st_ino  # replaced, not rewritten
    assert (after.st_uid, after.st_gid) == (os.getuid(), tmp_path.stat().st_gid)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("su") is None, reason="needs root to act as another user"
)
def test_make_names_a_missing_browser_it_cannot_install() -> None:
    """`make test` installs Chromium, its driver and promtool like Mosquitto; a user who cannot
    install them is told which command is missing and the apt-get line (exit 2)."""
    p = subprocess.run(
        ["su", "nobody", "-s", "/bin/sh", "-c",
         f"make --no-print-directory -C {REPO} system-packages SYSTEM_COMMANDS='strace no-such-chromedriver'"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert "missing and this user cannot install their packages: no-such-chromedriver" in p.stdout
    assert (
        "sudo apt-get install mosquitto mosquitto-clients strace chromium chromium-driver prometheus"
        in p.stdout
    )
