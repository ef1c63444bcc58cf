"""The command line every benchmark script shares: its options, a run, the table printed and saved."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path


def run(main_async: Callable[[argparse.Namespace], Awaitable[str]], **defaults: float) -> None:
    """Parse ``--<name>`` options (from ``defaults``, typed like them) and ``--out``, run, report."""
    parser = argparse.ArgumentParser()
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default)
    parser.add_argument("--out", type=Path, default=None, help="also write the result table here")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(result)
    if args.out:
        args.out.write_text(result)
