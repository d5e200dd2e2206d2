"""The NAS-Bench-201 table: the trained test accuracy of all 5^6 = 15,625 cells of the NB201 space.

Every cell was trained for 200 epochs on CIFAR-10, CIFAR-100 and ImageNet16-120, so a searched cell can
be scored by a look-up instead of a training run. The numbers come from NATS-Bench (topology search
space, MIT licence, X. Dong); cite
  X. Dong, Y. Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search",
  ICLR 2020;
  X. Dong, L. Liu, K. Musial, B. Gabrys, "NATS-Bench: Benchmarking NAS Algorithms for Architecture
  Topology and Size", IEEE TPAMI 2021.
How the shipped table was made: data/make_nb201_table.py and data/README.md.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from vnas.config import DATA_DIR
from vnas.spaces.nb201 import EDGES, PRIMITIVES, Genotype

DATASETS = ("cifar10", "cifar100", "imagenet16")
TABLE_PATH = DATA_DIR / "nb201_table.csv"
TABLE_SIZE = len(PRIMITIVES) ** len(EDGES)


class TableError(ValueError):
    """The shipped NB201 table is missing or damaged; the message says how to rebuild it."""


@functools.lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> dict[tuple[str, ...], tuple[float, float, float]]:
    """The table as {ops in EDGES order: (cifar10, cifar100, imagenet16) test accuracy %}, read once.

    Row i of the file is NAS-Bench-201 index i; ``ops`` there are 6 digits, PRIMITIVES indices.

    Introduced in chapters/02_darts.py.
    """
    path = Path(path)
    fix = ("Rebuild it with `python data/make_nb201_table.py --source PATH/TO/nats_bench.csv` "
           "(see data/README.md, section 'nb201 table').")
    if not path.is_file():
        raise TableError(f"The NAS-Bench-201 table {path} is missing. {fix}")
    table = {}
    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header != ["ops", *DATASETS]:
                raise ValueError(f"header {header} is not {['ops', *DATASETS]}")
            for row in rows:
                ops, *accs = row
                if len(ops) != len(EDGES) or len(accs) != len(DATASETS):
                    raise ValueError(f"row {row} is not 6 op digits and 3 accuracies")
                accs = tuple(float(a) for a in accs)
                if not all(0.0 <= a <= 100.0 for a in accs):
                    raise ValueError(f"row {row} has an accuracy outside 0..100")
                table[tuple(PRIMITIVES[int(d)] for d in ops)] = accs
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise TableError(f"The NAS-Bench-201 table {path} is damaged ({err}). {fix}") from None
    if len(table) != TABLE_SIZE:
        raise TableError(f"The NAS-Bench-201 table {path} has {len(table)} distinct cells, "
                         f"not {TABLE_SIZE}. {fix}")
    return table


def table_accuracy(genotype: Genotype | str) -> dict[str, float]:
    """Test accuracy % of a cell after 200 epochs (mean over seeds) on CIFAR-10, CIFAR-100, ImageNet16-120.

    Source: NAS-Bench-201 / NATS-Bench (Dong & Yang, ICLR 2020; Dong et al., TPAMI 2021).

    Introduced in chapters/02_darts.py.
    """
    if isinstance(genotype, str):
        genotype = Genotype.parse(genotype)
    if not isinstance(genotype, Genotype):
        raise ValueError(f"table_accuracy needs an NB201 Genotype (or its string); got "
                         f"{type(genotype).__module__}.{type(genotype).__name__}. The table covers only "
                         f"NB201 cells.")
    return dict(zip(DATASETS, load_table(TABLE_PATH)[genotype.ops()], strict=True))


def table_best(dataset: str = "cifar10") -> tuple[Genotype, dict[str, float]]:
    """The cell with the highest test accuracy on ``dataset`` (CIFAR-10 by default) and its accuracies.

    Ties go to the lower NAS-Bench-201 index (two cells share the CIFAR-10 optimum, 94.37).

    Introduced in chapters/02_darts.py.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; the table has {', '.join(DATASETS)}.")
    col = DATASETS.index(dataset)
    table = load_table(TABLE_PATH)
    ops = max(table, key=lambda k: table[k][col])  # max keeps the first (lowest index) of equal values
    return Genotype.from_ops(ops), dict(zip(DATASETS, table[ops], strict=True))
