"""`python -m settle.cli` runs the command line (used by tests to start workers)."""

from settle.cli import main

main()
