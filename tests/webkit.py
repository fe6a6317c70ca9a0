"""Helpers of the web view's tests: health documents as the agent writes them, a fleet in a real
store, the app served by real uvicorn on a free loopback port, the page's rows read back, and
headless Chromium (Debian's chromium and chromedriver, through selenium) with full-page
screenshots saved under $EKTP_RESULTS_DIR (default results/) in screenshots/."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from agent.health import HealthReporter
from central.config import CentralConfig, CentralWeb
from central.store import CentralStore, open_store
from central.web.app import create_app
from central.web.server import WebServer, listen_socket

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1600, 1000)


def health_doc(
    kiosk: str,
    data_dir: Path,
    *,
    devices: Mapping[str, tuple[str, str, str]] | None = None,
    pending: int | None = 0,
    pending_bytes: int = 0,
    oldest_s: float | None = None,
    rejected: int = 0,
    damaged: int = 0,
) -> dict[str, Any]:
    """A health document from the agent's own HealthReporter; ``devices``: {name: (state, detail, hint)},
    the others ok."""
    states = {name: ("ok", "", "") for name in ("fingerprint", "signature", "iris", "camera")}
    states.update(devices or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    reporter = HealthReporter(
        kiosk_id=kiosk,
        data_dir=data_dir,
        outbox_path=data_dir / "outbox.db",
        devices=lambda: {
            name: {"state": s, "detail": d, **({"hint": h} if h else {})}
            for name, (s, d, h) in states.items()
        },
    )
    queue = {
        "pending": pending,
        "pending_bytes": pending_bytes,
        "oldest_pending_age_s": oldest_s,
        "rejected": rejected,
        "damaged": damaged,
    }
    return reporter.snapshot(
        queue=queue, link={"connected": True, "reconnects": 2, "refused_pubacks": 0}, total=0
    )


def public_pem() -> bytes:
    """A kiosk's public key (PEM), of a key thrown away: for kiosks that only need registering."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def web_config(db: str, **web: Any) -> CentralConfig:
    return CentralConfig(store_url=db, web=CentralWeb(**web))


@contextlib.contextmanager
def served(
    config: CentralConfig, *, opener: Callable[[], CentralStore] | None = None, **kwargs: Any
) -> Iterator[httpx.Client]:
    """The app of ``config`` on real uvicorn (127.0.0.1, a free port), and an HTTP client for it."""
    app = create_app(config, opener or (lambda: open_store(config.store_url)), **kwargs)
    server = WebServer(app, listen_socket("127.0.0.1", 0))
    server.start()
    try:
        with httpx.Client(base_url=server.url.rstrip("/"), timeout=10) as client:
            yield client
    finally:
        server.stop()


class _Rows(HTMLParser):
    """The kiosk ids of the fleet table's rows, in order, and the group headers between them."""

    def __init__(self) -> None:
        super().__init__()
        self.kiosks: list[str] = []
        self.groups: list[str] = []
        self._in_group = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "tr":
            return
        a = dict(attrs)
        if a.get("data-kiosk"):
            self.kiosks.append(str(a["data-kiosk"]))
        self._in_group = a.get("class") == "group"
        if self._in_group:
            self.groups.append("")

    def handle_data(self, data: str) -> None:
        if self._in_group and self.groups:
            self.groups[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._in_group = False


def fleet_rows(html: str) -> list[str]:
    """The kiosk ids the fleet page lists, in its order."""
    p = _Rows()
    p.feed(html)
    return p.kiosks


def fleet_groups(html: str) -> list[str]:
    p = _Rows()
    p.feed(html)
    return [g.strip() for g in p.groups]


def record(
    store: CentralStore, items: list[tuple[str, str, dict[str, Any]]], now: datetime | None = None
) -> None:
    assert all(store.record_fleet_docs(items, now=now)), "a status was stale"


# ----------------------------------------------------------------------------- the browser


def results_dir() -> Path:
    return Path(os.environ.get("EKTP_RESULTS_DIR") or REPO / "results")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.access(path, os.X_OK) or shutil.which(Path(path).name)):
            return f"{path} is missing: `make test` installs Debian's chromium and chromium-driver"
    return None


def chromium() -> Any:
    """A headless Chromium driven by chromedriver (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if os.access(CHROMIUM, os.X_OK) else str(shutil.which("chromium"))
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in a container there is no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    driver_path = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else str(shutil.which("chromedriver"))
    return webdriver.Chrome(service=Service(driver_path), options=options)


def screenshot(driver: Any, name: str) -> Path:
    """The whole page (not only the window) as results/screenshots/NAME.png."""
    import base64

    width = int(driver.execute_script("return document.documentElement.scrollWidth"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": max(width, WINDOW[0]), "height": min(height, 6000), "scale": 1},
        },
    )
    out = results_dir() / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return out
