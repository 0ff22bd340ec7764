"""`python -m stackwise.cli`: the console entry point."""

from . import main

main()
