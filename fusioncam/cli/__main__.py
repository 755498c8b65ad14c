"""`python -m fusioncam.cli`: the `fusioncam` command without its console script."""

from fusioncam.cli import main

main()
