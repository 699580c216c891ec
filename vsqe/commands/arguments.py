"""Argument types shared by the subcommands (argparse `type=` callables)."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer > 0; argparse turns the error into one usage line and exit 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
