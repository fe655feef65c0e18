"""`python -m fedit.cli` runs the CLI."""

from fedit.cli import main

main()
