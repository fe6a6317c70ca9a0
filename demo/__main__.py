"""`python -m demo` (what `make run` runs)."""

from demo.cli import main

main(prog_name="python -m demo")
