"""`python -m agent` is `ektp-agent`."""

from agent.cli import main

main(prog_name="ektp-agent")
