"""Every command module imports first in a fresh interpreter: the CLI packages register their
commands from the bottom of agent/cli.py and central/cli.py, and a module that takes a name
from a sibling at import time breaks when that sibling is the one imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    f"{p.parent.name}.{p.stem}"
    for pattern in ("agent/cli*.py", "central/cli*.py")
    for p in ROOT.glob(pattern)
)


def test_the_command_modules_are_found() -> None:
    assert {"agent.cli", "agent.cli_kiosk", "agent.cli_remote", "central.cli", "central.cli_fleet"} <= set(
        MODULES
    )


@pytest.mark.parametrize("module", MODULES)
def test_a_command_module_imports_first(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
