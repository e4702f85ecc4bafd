"""`python -m settle` runs the command line."""

from settle.cli import main

main()
