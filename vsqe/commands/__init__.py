"""Sub-commands of `vsqe`: one module each, with `register(subparsers)` (see vsqe/cli.py)."""
