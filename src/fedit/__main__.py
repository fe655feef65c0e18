"""`python -m fedit ...`: the `fedit` command, run by this interpreter (e.g. against a source tree on PYTHONPATH)."""

from fedit.cli import main

if __name__ == "__main__":
    main()
