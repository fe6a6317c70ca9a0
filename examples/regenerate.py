"""Write examples/agent.toml, examples/central.toml and the key tables of docs/configuration.md
again from the loaders' own key declarations (agent/config.py, central/config.py).

Run it after changing a key; tests/test_config_init.py fails until the files match:

    .venv/bin/python examples/regenerate.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLES = {
    "ektp-agent": ROOT / "examples" / "agent.toml",
    "ektp-central": ROOT / "examples" / "central.toml",
}
DOCS = ROOT / "docs" / "configuration.md"
TABLE_RE = re.compile(r"(<!-- keys:(agent|central) begin.*?-->\n).*?(<!-- keys:\2 end -->)", re.S)


def tables() -> dict[str, str]:
    """The generated key tables of docs/configuration.md, by name."""
    from agent.config import key_docs as agent_keys
    from central.config import key_docs as central_keys
    from wire.config_file import markdown_table

    return {"agent": markdown_table(agent_keys()), "central": markdown_table(central_keys())}


def with_tables(text: str) -> str:
    """docs/configuration.md's text with its generated tables replaced by the current ones."""
    current = tables()
    return TABLE_RE.sub(lambda m: m.group(1) + current[m.group(2)] + m.group(3), text)


def main() -> None:
    for tool, path in EXAMPLES.items():
        subprocess.run([str(BIN / tool), "config", "init", "--to", str(path), "--force"], check=True)
        path.chmod(0o644)  # an example in the repository, not a live config
    DOCS.write_text(with_tables(DOCS.read_text()))


if __name__ == "__main__":
    main()
