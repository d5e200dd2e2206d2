"""Derive data/nb201_table.csv from the NATS-Bench topology table (NAS-Bench-201's 15,625 cells).

    python data/make_nb201_table.py [--source nats_bench.csv] [--out data/nb201_table.csv]

The source CSV has one row per cell, row number = NAS-Bench-201 index, with columns
CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs, ImageNetTestAccuracy200Epochs,
ArchitectureString, UniqueString (test accuracy %, 200 epochs, mean over seeds). The output keeps
that row order and, per row, the 6 ops as PRIMITIVES indices in EDGES order plus the three
accuracies rounded to 2 decimals. Numbers: NATS-Bench (MIT licence, X. Dong); cite NAS-Bench-201
(Dong & Yang, ICLR 2020) and NATS-Bench (Dong et al., TPAMI 2021).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from vnas.spaces import nb201, nb201_table  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "nb201" / "nats_bench.csv"
COLUMNS = ("CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs")
# Published optima (NAS-Bench-201 paper) and the all-skip_connect cell DARTS collapses to.
CHECKS = {"cifar10": 94.37, "cifar100": 73.51, "imagenet16": 47.31}
ALL_SKIP = 54.30


def convert(source: Path, out: Path, check: bool = True) -> str:
    """Write the compact table from the NATS-Bench CSV; return its sha256."""
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [["ops", *nb201_table.DATASETS]]
    for row in rows:
        ops = nb201.Genotype.parse(row["ArchitectureString"]).ops()
        digits = "".join(str(nb201.PRIMITIVES.index(op)) for op in ops)
        lines.append([digits, *(f"{float(row[c]):.2f}" for c in COLUMNS)])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(lines)
    if check:
        _check(lines[1:])
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _check(rows: list[list[str]]) -> None:
    """Stop if the table does not reproduce the published figures."""
    if len(rows) != nb201_table.TABLE_SIZE or len({r[0] for r in rows}) != nb201_table.TABLE_SIZE:
        raise SystemExit(f"expected {nb201_table.TABLE_SIZE} distinct cells, got {len(rows)}")
    for col, (name, want) in enumerate(CHECKS.items(), start=1):
        best = max(float(r[col]) for r in rows)
        if best != want:
            raise SystemExit(f"best {name} is {best}, expected {want}")
    skip = str(nb201.PRIMITIVES.index("skip_connect")) * len(nb201.EDGES)
    got = next(float(r[1]) for r in rows if r[0] == skip)
    if got != ALL_SKIP:
        raise SystemExit(f"all-skip_connect cell scores {got} on CIFAR-10, expected {ALL_SKIP}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the NATS-Bench topology CSV")
    parser.add_argument("--out", type=Path, default=nb201_table.TABLE_PATH)
    args = parser.parse_args()
    if not args.source.is_file():
        raise SystemExit(f"{args.source} does not exist; pass --source PATH/TO/nats_bench.csv")
    digest = convert(args.source, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes), checks passed\nsha256 {digest}")


if __name__ == "__main__":
    main()
