"""`python -m chuan.cli`."""

from chuan.cli import main

main()
