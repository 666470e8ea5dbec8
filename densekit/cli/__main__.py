"""`python -m densekit.cli`."""

from densekit.cli import main

main()
