"""`python -m ragvl.cli`: the same as the `ragvl` command."""

from . import main

main()
