"""The Makefile as a user meets it: `make run ARGS=...` hands the options to the demo, and
`make setup` keeps pip's output in a log, shown only when pip fails. pip itself is a
stand-in here (a script that prints noise and fails when told to), so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_hands_args_to_the_demo() -> None:
    p = make("-n", "run", "ARGS=--duration 7 --cut-after 3")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == ".venv/bin/python -m demo --duration 7 --cut-after 3"


def _fake_venv(tmp_path: Path, fail_on: str) -> tuple[Path, Path]:
    """A venv whose python prints pip-like noise for every command and exits 1 on ``fail_on``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        'echo "SetuptoolsDeprecationWarning: noise from $*"\n'
        f'case "$*" in *"{fail_on}"*) echo "ERROR: pip could not do $*"; exit 1;; esac\n'
    )
    python.chmod(0o755)
    return venv, python


@pytest.mark.parametrize("fail_on", ["no such step", "-e .[dev]"], ids=["pip-works", "pip-fails"])
def test_setup_shows_pips_output_only_when_pip_fails(tmp_path: Path, fail_on: str) -> None:
    venv, python = _fake_venv(tmp_path, fail_on)
    stamp = venv / ".installed"
    p = make(str(stamp), f"VENV={venv}", f"PY={python}")
    log = venv / "pip.log"
    assert "noise from -m pip install --upgrade pip" in log.read_text()
    if fail_on == "no such step":
        assert p.returncode == 0, p.stdout + p.stderr
        assert "noise" not in p.stdout + p.stderr
        assert stamp.exists()
    else:
        assert p.returncode != 0
        assert "ERROR: pip could not do -m pip install -e .[dev]" in p.stdout
        assert f"all of it in {log}" in p.stdout
        assert not stamp.exists()  # the next make tries again
