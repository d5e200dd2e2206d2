"""Search spaces: genotypes, their text forms, derivation, and the NAS-Bench-201 table."""

import csv
import hashlib
import importlib.util
import json
import re

import pytest
import torch

from vnas.config import DATA_DIR
from vnas.spaces import SPACES, darts, get_space, load_genotype, nb201, nb201_table, space_of

# Published text of the DARTS (2nd order) cell, as printed in the DARTS repository's genotypes.py.
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), "
    "('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), "
    "('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)
NB201_TEXT = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
V2 = darts.DARTS_V2.normal
SOURCE = DATA_DIR.parent.parent / "shared" / "data" / "nb201" / "nats_bench.csv"


def cell(*pairs):
    return [(op, src) for op, src in pairs]


def darts_genotype(normal=None, reduce=None, normal_concat=(2, 3, 4, 5)):
    return darts.Genotype(normal=normal or darts.DARTS_V2.normal, normal_concat=normal_concat,
                          reduce=reduce or darts.DARTS_V2.reduce, reduce_concat=[2, 3, 4, 5])


# --- the spaces as data ---------------------------------------------------------------------------

def test_edges_follow_the_cell_structure():
    assert len(darts.EDGES) == 14 and len(set(darts.EDGES)) == 14
    assert all(src < dst and 2 <= dst <= 5 for src, dst in darts.EDGES)
    assert [dst for _, dst in darts.EDGES] == sorted(dst for _, dst in darts.EDGES)  # grouped by node
    assert nb201.EDGES == tuple((s, d) for d in (1, 2, 3) for s in range(d))
    assert nb201.PRIMITIVES[0] == darts.PRIMITIVES[0] == "none"


def test_get_space_and_its_properties():
    for name, module in [("darts", darts), ("nb201", nb201)]:
        space = get_space(name.upper())
        assert space is SPACES[name] and space.Genotype is module.Genotype
        assert (space.num_edges, space.num_ops) == (len(module.EDGES), len(module.PRIMITIVES))
    with pytest.raises(ValueError, match=r"Unknown search space 'nb-201'.*'nb201'.*darts, nb201"):
        get_space("nb-201")
    with pytest.raises(ValueError, match="Valid spaces: darts, nb201"):
        get_space("resnet")


# --- text forms and round trips ----------------------------------------------------------------------

def test_darts_v2_prints_the_published_text():
    assert str(darts.DARTS_V2) == DARTS_V2_TEXT
    assert darts.parse(DARTS_V2_TEXT) == darts.DARTS_V2
    assert darts.NAMED["DARTS_V1"] != darts.DARTS_V2


@pytest.mark.parametrize("name", ["darts", "nb201"])
def test_round_trips(name):
    space, gen = get_space(name), torch.Generator().manual_seed(0)
    for _ in range(20):
        g = space.random_genotype(gen)
        assert space.parse(str(g)) == g and str(space.parse(str(g))) == str(g)
        text = json.dumps(g.to_json())
        assert space.Genotype.from_json(json.loads(text)) == g
        assert space.parse(text) == g and load_genotype(text) == g
        assert load_genotype(str(g)) == g and space_of(g) is space


def test_darts_parse_accepts_range_concat_and_module_prefix():
    text = DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)")
    assert darts.parse(text) == darts.DARTS_V2
    assert darts.parse("genotypes." + DARTS_V2_TEXT) == darts.DARTS_V2


def test_darts_equality_ignores_order_within_a_node():
    normal = list(darts.DARTS_V2.normal)
    normal[0], normal[1] = normal[1], normal[0]
    swapped = darts_genotype(normal=normal)
    assert swapped == darts.DARTS_V2 and hash(swapped) == hash(darts.DARTS_V2)
    assert str(swapped) != str(darts.DARTS_V2)  # the text keeps the order given
    a = cell(("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("avg_pool_3x3", 1))
    b = cell(("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("avg_pool_3x3", 1))
    rest = list(darts.DARTS_V2.normal[4:])
    assert darts_genotype(normal=a + rest) != darts_genotype(normal=b + rest)  # same pairs, other nodes


def test_load_genotype_names_files_and_strings(tmp_path):
    assert load_genotype("darts_v2") is darts.DARTS_V2 and load_genotype(" DARTS_V1 ") is darts.DARTS_V1
    for g in [darts.DARTS_V1, nb201.parse(NB201_TEXT)]:
        path = tmp_path / f"{type(g).__module__}.json"
        path.write_text(json.dumps(g.to_json()))
        assert load_genotype(str(path)) == g and load_genotype(path) == g
        assert type(load_genotype(path)) is type(g)
    assert load_genotype(NB201_TEXT) == nb201.parse(NB201_TEXT)


# --- malformed genotypes say what is wrong -----------------------------------------------------------

@pytest.mark.parametrize("normal, message", [
    (cell(("sep_conv_3x4", 0), ("sep_conv_3x3", 1)) + list(darts.DARTS_V2.normal[2:]),
     r"node 2 \(pair 0\): op 'sep_conv_3x4' is not a DARTS op. Did you mean 'sep_conv_3x3'\?"),
    (list(V2[:2]) + cell(("sep_conv_3x3", 3), ("sep_conv_3x3", 1)) + list(V2[4:]),
     r"node 3 \(pair 2\): input 3 is not a node before 3; node 3 may read nodes 0..2"),
    (list(darts.DARTS_V2.normal[:7]), r"normal cell has 7 \(op, input\) pairs; a DARTS cell has 8"),
    (cell(("sep_conv_3x3", 1), ("skip_connect", 1)) + list(darts.DARTS_V2.normal[2:]),
     r"node 2: both inputs are node 1.*one edge \(1, 2\)"),
    (cell(("none", 0), ("sep_conv_3x3", 1)) + list(darts.DARTS_V2.normal[2:]), r"'none' is not allowed"),
    (["sep_conv_3x3"] + list(darts.DARTS_V2.normal[1:]), r"not an \(op, input\) pair"),
    (list(darts.DARTS_V2.normal[:7]) + [("dil_conv_3x3", -1)], r"node 5 \(pair 7\): input -1 is not a node"),
])
def test_malformed_darts_genotypes(normal, message):
    with pytest.raises(ValueError, match=message):
        darts_genotype(normal=normal)


@pytest.mark.parametrize("concat", [[1, 2, 3], [], [2, 2, 3]])
def test_bad_concat(concat):
    with pytest.raises(ValueError, match=r"normal_concat .* distinct nodes from \[2, 3, 4, 5\]"):
        darts_genotype(normal_concat=concat)


@pytest.mark.parametrize("nodes, message", [
    ([[("nor_conv_3x3", 0)], [("nor_conv_3x3", 0), ("avg_pool_3x3", 1)]], r"has 3 nodes \(1, 2, 3\); got 2"),
    ([[("nor_conv_3x3", 0)], [("nor_conv_3x3", 0)], [("none", 0), ("none", 1), ("none", 2)]],
     r"node 2 has 1 incoming edges; it must have 2"),
    ([[("conv_3x3", 0)], [("none", 0), ("none", 1)], [("none", 0), ("none", 1), ("none", 2)]],
     r"node 1, edge \(0, 1\): op 'conv_3x3' is not an NB201 op.*Valid ops: none, skip_connect"),
    ([[("none", 0)], [("none", 1), ("none", 0)], [("none", 0), ("none", 1), ("none", 2)]],
     r"node 2: edge 0 comes from node 1.*in that order"),
])
def test_malformed_nb201_genotypes(nodes, message):
    with pytest.raises(ValueError, match=message):
        nb201.Genotype(nodes=nodes)


@pytest.mark.parametrize("text, message", [
    ("hello world", r"Cannot read a genotype from 'hello world'.*published name"),
    ("DARTS_V3", r"Did you mean 'DARTS_V\d'\?"),
    ("Genotype(normal=[('sep_conv_3x3', 0)]", "Not a DARTS genotype string"),
    ("Genotype(normal=[], normal_concat=[2])", "lacks reduce, reduce_concat"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=__import__('os'))",
     "not a literal list"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=1)", "'extra' is unknown"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "3 nodes separated by '\\+'"),
    ("|nor_conv_3x3|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|none~1|none~2|", "'nor_conv_3x3' is not op~src"),
    ("{'space': 'darts'}", "not valid JSON"),
    ('{"normal": []}', 'no "space" key'),
    ('{"space": "nasbench101", "nodes": []}', "Unknown search space 'nasbench101'"),
    ('{"space": "darts", "normal": [], "normal_contact": [2]}', r"unknown keys \['normal_contact'\]"),
    ("missing/genotype.json", "does not exist"),
])
def test_malformed_strings(text, message):
    with pytest.raises(ValueError, match=message):
        load_genotype(text)


def test_bad_genotype_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON.*to_json"):
        load_genotype(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"nothere.json does not exist"):
        load_genotype(tmp_path / "nothere.json")
    (tmp_path / "old.json").write_text(json.dumps({"normal": []}))
    with pytest.raises(ValueError, match=r'old.json has no "space" key'):
        load_genotype(tmp_path / "old.json")
    with pytest.raises(ValueError, match="not an NB201 one"):
        nb201.Genotype.from_json({"space": "darts", "nodes": []})


# --- derivation ------------------------------------------------------------------------------------

def edge(src, dst, space=darts):
    return space.EDGES.index((src, dst))


def test_darts_derive_ranks_edges_by_strongest_non_none_op():
    theta = torch.full((14, 8), 0.01)
    op = darts.PRIMITIVES.index
    # node 2: edge (0,2) is mostly 'none' (0.9) but its best real op (0.06) is the only one offered
    theta[edge(0, 2), op("none")], theta[edge(0, 2), op("sep_conv_5x5")] = 0.9, 0.06
    theta[edge(1, 2), op("max_pool_3x3")] = 0.5
    # node 3: (0,3) has the largest 'none' weight of all, yet loses to edges with stronger real ops
    theta[edge(0, 3), op("none")], theta[edge(0, 3), op("skip_connect")] = 0.95, 0.03
    theta[edge(1, 3), op("dil_conv_3x3")] = 0.2
    theta[edge(2, 3), op("sep_conv_3x3")] = 0.3
    # node 4: (3,4) strongest, then (0,4); (1,4), (2,4) left at the base level
    theta[edge(3, 4), op("avg_pool_3x3")], theta[edge(0, 4), op("dil_conv_5x5")] = 0.4, 0.2
    # node 5: (4,5) then (2,5)
    theta[edge(4, 5), op("skip_connect")], theta[edge(2, 5), op("sep_conv_3x3")] = 0.7, 0.6
    want = cell(("max_pool_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 2), ("dil_conv_3x3", 1),
                ("avg_pool_3x3", 3), ("dil_conv_5x5", 0), ("skip_connect", 4), ("sep_conv_3x3", 2))
    g = darts.derive({"normal": theta, "reduce": theta.flip(0)})
    assert list(g.normal) == want  # strongest edge first, as in DARTS
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert all(op != "none" for op, _ in g.reduce)


def test_nb201_derive_can_choose_none():
    theta = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    theta[edge(1, 3, nb201)] = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    theta[edge(0, 1, nb201)] = torch.tensor([0.3, 0.0, 0.0, 0.7, 0.0])
    ops = nb201.derive({"cell": theta}).ops()
    assert ops[edge(1, 3, nb201)] == "none" and ops[edge(0, 1, nb201)] == "nor_conv_3x3"
    assert list(ops) == [nb201.PRIMITIVES[i] for i in theta.argmax(1)]


@pytest.mark.parametrize("name", ["darts", "nb201"])
def test_derive_inverts_one_hot(name):
    space, gen = get_space(name), torch.Generator().manual_seed(2)
    for _ in range(50):
        g = space.random_genotype(gen)
        theta = space.one_hot(g)
        assert set(theta) == set(space.cell_types)
        for ct in space.cell_types:
            assert theta[ct].shape == (space.num_edges, space.num_ops)
            per_cell = 8 if name == "darts" else 6  # DARTS keeps 2 of the node's edges, NB201 all 6
            assert theta[ct].sum() == per_cell and (theta[ct].sum(1) <= 1).all()
        assert space.derive(theta) == g
    assert darts.derive(darts.one_hot(darts.DARTS_V2)) == darts.DARTS_V2


def test_derive_of_softmax_weights_is_valid_and_never_none():
    gen = torch.Generator().manual_seed(3)
    theta = {ct: torch.softmax(3 * torch.randn(14, 8, generator=gen), dim=1) for ct in darts.CELL_TYPES}
    g = darts.derive(theta)
    assert all(op != "none" for op, _ in g.normal + g.reduce)


@pytest.mark.parametrize("weights, message", [
    ({"normal": torch.ones(14, 8)}, r"cell types \['normal'\]; expected exactly normal, reduce"),
    ({"normal": torch.ones(14, 7), "reduce": torch.ones(14, 8)}, r"theta\['normal'\] has shape \[14, 7\]"),
    ({"normal": -torch.ones(14, 8), "reduce": torch.ones(14, 8)},
     r"theta\['normal'\] must be .*non-negative"),
    (torch.ones(14, 8), "must be a dict"),
])
def test_derive_rejects_bad_theta(weights, message):
    with pytest.raises(ValueError, match=message):
        darts.derive(weights)
    with pytest.raises(ValueError, match=r"NB201 theta\['cell'\] has shape \[6, 4\]"):
        nb201.derive({"cell": torch.ones(6, 4)})


def test_random_genotypes_are_reproducible_and_cover_the_ops():
    for space in SPACES.values():
        a = [space.random_genotype(torch.Generator().manual_seed(5)) for _ in range(2)]
        assert a[0] == a[1]
    gen = torch.Generator().manual_seed(6)
    seen = {op for _ in range(40) for op, _ in darts.random_genotype(gen).normal}
    assert seen == set(darts.PRIMITIVES[1:])
    seen = {op for _ in range(40) for op in nb201.random_genotype(gen).ops()}
    assert seen == set(nb201.PRIMITIVES)


def test_one_hot_refuses_the_other_space():
    with pytest.raises(ValueError, match="one_hot expects a DARTS Genotype"):
        darts.one_hot(nb201.parse(NB201_TEXT))
    with pytest.raises(ValueError, match="not a genotype of any space"):
        space_of("|none~0|")


# --- the NAS-Bench-201 table -------------------------------------------------------------------------

def test_table_reproduces_the_published_optima():
    # Published in NAS-Bench-201 (Dong & Yang, 2020): best test accuracies on the three datasets.
    for dataset, published in [("cifar10", 94.37), ("cifar100", 73.51), ("imagenet16", 47.31)]:
        g, acc = nb201_table.table_best(dataset)
        assert acc[dataset] == pytest.approx(published, abs=0.005)
        assert nb201_table.table_accuracy(g) == acc and nb201_table.table_accuracy(str(g)) == acc
        assert all(nb201_table.table_accuracy(nb201.random_genotype(torch.Generator().manual_seed(s)))[dataset]
                   <= acc[dataset] for s in range(20))


def test_all_skip_cell_scores_the_published_darts_collapse():
    g = nb201.Genotype.from_ops(["skip_connect"] * 6)
    assert str(g) == ALL_SKIP
    assert nb201_table.table_accuracy(g)["cifar10"] == pytest.approx(54.30, abs=0.005)
    with pytest.raises(ValueError, match="table_accuracy needs an NB201 Genotype"):
        nb201_table.table_accuracy(darts.DARTS_V2)
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        nb201_table.table_best("imagenet")


@pytest.mark.skipif(not SOURCE.is_file(), reason="the NATS-Bench source CSV is not on this machine")
def test_table_agrees_with_its_source():
    with open(SOURCE, newline="") as f:
        rows = list(csv.DictReader(f))
    for i in torch.randint(len(rows), (30,), generator=torch.Generator().manual_seed(7)).tolist():
        acc = nb201_table.table_accuracy(nb201.parse(rows[i]["ArchitectureString"]))
        assert acc["cifar100"] == pytest.approx(float(rows[i]["CIFAR100TestAccuracy200Epochs"]), abs=0.005)


def test_readme_checksum_matches_the_shipped_table():
    readme = (DATA_DIR / "README.md").read_text().split("## nb201 table", 1)[1]
    digest = re.search(r"sha256: `([0-9a-f]{64})`", readme).group(1)
    assert hashlib.sha256(nb201_table.TABLE_PATH.read_bytes()).hexdigest() == digest


def test_missing_or_damaged_table_says_how_to_rebuild(tmp_path):
    with pytest.raises(nb201_table.TableError, match=r"missing.*make_nb201_table.py"):
        nb201_table.load_table(tmp_path / "none.csv")
    lines = nb201_table.TABLE_PATH.read_text().splitlines()
    for name, text in [("short.csv", lines[:100]), ("bad.csv", lines[:5] + ["93x111,1,2,3"] + lines[6:]),
                       ("header.csv", ["ops,c10"] + lines[1:])]:
        (tmp_path / name).write_text("\n".join(text) + "\n")
        with pytest.raises(ValueError, match=r"(damaged|distinct cells).*make_nb201_table.py"):
            nb201_table.load_table(tmp_path / name)


def test_make_script_converts_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("make_nb201_table", DATA_DIR / "make_nb201_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source, out = tmp_path / "src.csv", tmp_path / "out.csv"
    source.write_text(",".join(script.COLUMNS) + ",ArchitectureString,UniqueString\n"
                      f"54.29666,15.6,16.32,{ALL_SKIP},x\n91.004,70.0,40.5,{NB201_TEXT},y\n")
    digest = script.convert(source, out, check=False)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    rows = out.read_text().splitlines()
    assert rows[1] == "111111,54.30,15.60,16.32"
    assert nb201.Genotype.from_ops([int(d) for d in rows[2].split(",")[0]]) == nb201.parse(NB201_TEXT)
