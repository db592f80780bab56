"""`python -m rt` is the `rt` command."""

from rt.cli import main

main()
