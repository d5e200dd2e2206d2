"""The command line: ``python -m vnas COMMAND``. Introduced in chapters/00_welcome.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _book(args) -> int:
    from vnas import book

    book.build(Path(args.out), timeout=args.timeout, only=args.only)
    print(f"[book] open {Path(args.out) / 'index.html'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vnas", description="Bayesian neural architecture search (vnas).")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("book", help="execute every chapter and write notebooks + HTML")
    b.add_argument("--out", default="_build")
    b.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    b.add_argument("--only", nargs="*", help="only chapters whose file name contains one of these")
    b.set_defaults(run=_book)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
