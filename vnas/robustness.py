"""The robustness comparison of chapter 07: the cells that each method found, retrained under one budget, then
attacked; ``python -m vnas sweep configs/sweeps/robustness_nb201.toml --jobs 2`` -> data/results/robustness_nb201/.

A robustness config is a sweep config with an ``[attack]`` table (``python -m vnas sweep`` sends it here):

    space = "nb201"
    mode = "quick"              # the table of configs/train_<space>.toml that [train] starts from
    seeds = 3                   # seeds 0 .. seeds-1: seed k retrains the cell(s) of seed k of each source
    save_models = 1             # the models of seeds < save_models are kept in OUT/models/ (the chapter attacks them)
    [train]                     # TrainConfig keys, the same for every model and seed
    images_per_class = 1500
    [attack]
    images = 500                # test images attacked: the same ones for every model and seed (paired)
    eps = [1, 2, 4, 8]          # L∞ budgets, in units of 1/255; FGSM and PGD
    l2_eps = 0.5                # one L2 budget (PGD)
    steps = 10                  # PGD steps, step size 2.5 ε / steps
    eot_samples = 4             # posterior draws averaged per EOT step (stochastic models)
    predict_samples = 8         # draws averaged to classify with a stochastic model
    [models.darts]              # each model: where its cell comes from, and TrainConfig overrides
    from = "nb201_comparison"   #   the derived cell of seed k of that sweep's results (``method``, ``point``)
    method = "darts"
    [models.resnet]
    genotype = "|nor_conv_3x3~0|+|..."   #   or a fixed genotype
    [models.bma]
    from = "nb201_comparison"
    method = "variational"
    sampled = 3                 #   an ensemble of 3 cells drawn from seed k's q(θ), each retrained: BMA over cells

A model with Bayesian weights (``weights = "gaussian"``) is stochastic: it is attacked with FGSM, plain PGD and
EOT-PGD, and classifies with the posterior predictive of ``predict_samples`` draws. An ensemble averages its
members' probabilities, log (1/K) Σ_k p_k(y | x), which is deterministic: PGD on it is exact EOT over its members.
Each record is reused when a sweep starts again with the same cells, config and code (a killed sweep resumes).

Place in the flow: train -> metrics/**attacks** -> here -> the chapter's plots.
Introduced in chapters/07_robustness.py.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vnas import attacks, bayes, config, data, metrics, results, runs, spaces, sweep, train

_KEYS = {"space", "mode", "seeds", "save_models", "train", "attack", "models"}
_ATTACK = {"images": 500, "eps": [1, 2, 4, 8], "l2_eps": 0.5, "steps": 10, "eot_samples": 4, "predict_samples": 8,
           "batch_size": 250}
_SOURCE_KEYS = {"from", "method", "point", "sampled", "genotype"}


def is_robustness_config(path: Path) -> bool:
    """Whether a sweep TOML file describes a robustness comparison (it has an [attack] table)."""
    return "attack" in config.read_toml(Path(path))


class Ensemble(nn.Module):
    """Bayesian model averaging over members (cells sampled from q(θ), each retrained): log (1/K) Σ_k p_k(· | x).
    It returns log-probabilities, which are their own log-softmax, so it plugs into the attacks and evaluators
    like any network. Introduced in chapters/07_robustness.py."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        log_p = torch.stack([torch.log_softmax(m(x).float(), -1) for m in self.members])
        return torch.logsumexp(log_p, 0) - math.log(len(self.members))


# --- the config ------------------------------------------------------------------------------------

def load_config(path: Path, seeds: int | None = None, models: list[str] | None = None) -> dict:
    """The robustness config of a TOML file, checked: every model's training config is built (not run) and
    every source results folder is read, so that a bad key or a missing sweep fails now, not after an hour.
    ``models`` keeps only those models. Introduced in chapters/07_robustness.py."""
    path = Path(path)
    raw = config.read_toml(path)
    unknown = set(raw) - _KEYS
    if unknown:
        raise config.ConfigError(f"Unknown key(s) {sorted(unknown)} in robustness config {path}; "
                                 f"valid: {sorted(_KEYS)}.")
    attack = dict(raw.get("attack", {}))
    bad = set(attack) - set(_ATTACK)
    if bad:
        raise config.ConfigError(f"Unknown key(s) {sorted(bad)} in [attack] of {path}; valid: {sorted(_ATTACK)}.")
    attack = {**_ATTACK, **attack}
    for key in ("images", "steps", "eot_samples", "predict_samples", "batch_size"):
        if isinstance(attack[key], bool) or not isinstance(attack[key], int) or attack[key] < 1:
            raise config.ConfigError(f"[attack] {key} = {attack[key]!r} in {path} must be an integer >= 1.")
    if not attack["eps"] or any(not isinstance(e, (int, float)) or not 0 < e <= 255 for e in attack["eps"]):
        raise config.ConfigError(f"[attack] eps = {attack['eps']!r} in {path} must be a list of L∞ budgets in "
                                 "units of 1/255, each in (0, 255], e.g. [1, 2, 4, 8].")
    if not isinstance(attack["l2_eps"], (int, float)) or attack["l2_eps"] <= 0:
        raise config.ConfigError(f"[attack] l2_eps = {attack['l2_eps']!r} in {path} must be a number > 0 (e.g. 0.5).")
    cfg = {"space": raw.get("space"), "mode": raw.get("mode", "quick"),
           "seeds": seeds if seeds is not None else raw.get("seeds", 1), "save_models": raw.get("save_models", 1),
           "train": dict(raw.get("train", {})), "attack": attack, "models": dict(raw.get("models", {}))}
    if cfg["space"] not in spaces.SPACES:
        raise config.ConfigError(f"space = {cfg['space']!r} in {path}: use one of {sorted(spaces.SPACES)}.")
    for name, low in (("seeds", 1), ("save_models", 0)):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] < low:
            raise config.ConfigError(f"{name} = {cfg[name]!r} in {path} must be an integer >= {low}.")
    if models:
        unknown = set(models) - set(cfg["models"])
        if unknown:
            raise config.ConfigError(f"No model(s) {sorted(unknown)} in {path}; it has {sorted(cfg['models'])}.")
        cfg["models"] = {k: v for k, v in cfg["models"].items() if k in models}
    if not cfg["models"]:
        raise config.ConfigError(f"Robustness config {path} has no [models.NAME] tables.")
    for name, spec in cfg["models"].items():
        if not isinstance(spec, dict):
            raise config.ConfigError(f"models.{name} in {path} must be a table, e.g. [models.{name}] with "
                                     "from = \"nb201_comparison\" and method = \"darts\", or genotype = \"...\".")
        if ("from" in spec) == ("genotype" in spec):
            raise config.ConfigError(f"[models.{name}] in {path} needs exactly one of `from` (a sweep's results "
                                     "folder, with `method`) and `genotype`.")
        if "from" in spec and "method" not in spec:
            raise config.ConfigError(f"[models.{name}] in {path} reads {spec['from']!r}: say which `method`'s cells.")
        sampled = spec.get("sampled", 0)
        if isinstance(sampled, bool) or not isinstance(sampled, int) or sampled < 0:
            raise config.ConfigError(f"[models.{name}] sampled = {sampled!r} in {path} must be an integer >= 0 "
                                     "(cells drawn from q(θ) and ensembled; 0: the derived cell).")
        for seed in range(cfg["seeds"]):
            for cell in cells(cfg, name, seed):
                train_config(cfg, name, cell, seed)  # raises with the bad key's name
    return cfg


_SOURCES: dict = {}


def _source(name: str) -> dict:
    """The results of sweep ``name``, read once per process (checking a sweep against its config file takes
    seconds) and again only when its results file changes."""
    path = Path(config.RESULTS_DIR) / name / "results.json"
    key = (name, path.stat().st_mtime_ns if path.is_file() else None)
    if key not in _SOURCES:
        loaded = results.load_sweep(name)
        if loaded is None:
            raise config.ConfigError(results.missing(name) + " The robustness comparison retrains its cells.")
        _SOURCES[key] = loaded.results
    return _SOURCES[key]


def cells(cfg: dict, name: str, seed: int) -> list[str]:
    """The genotype(s) of model ``name`` for ``seed``: its fixed genotype, the derived cell of that seed's run
    in its source sweep, or the first ``sampled`` cells that run drew from q(θ)."""
    spec = cfg["models"][name]
    if "genotype" in spec:
        return [str(spaces.load_genotype(spec["genotype"]))]
    found = _source(spec["from"])
    point = spec.get("point", 0)
    run = next((r for r in found["runs"] if r["method"] == spec["method"] and r["seed"] == seed
                and r["point"] == point), None)
    if run is None:
        raise config.ConfigError(f"data/results/{spec['from']} has no run of method {spec['method']!r}, point "
                                 f"{point}, seed {seed} (models.{name}); rerun that sweep with enough seeds.")
    if spec.get("sampled", 0):
        if len(run["sampled_cells"]) < spec["sampled"]:
            raise config.ConfigError(f"models.{name} asks for {spec['sampled']} sampled cells; the run holds "
                                     f"{len(run['sampled_cells'])}.")
        return list(run["sampled_cells"][:spec["sampled"]])
    return [run["genotype"]]


def train_config(cfg: dict, name: str, cell: str, seed: int) -> train.TrainConfig:
    """The training config of one model's cell: the mode's protocol, then [train], then the model's overrides."""
    overrides = {k: v for k, v in cfg["models"][name].items() if k not in _SOURCE_KEYS}
    try:
        return train.load_train_config(cell, run_mode=cfg["mode"], seed=seed, **{**cfg["train"], **overrides})
    except (TypeError, ValueError) as err:
        raise config.ConfigError(f"[models.{name}] / [train]: {err}") from None


# --- one model ----------------------------------------------------------------------------------------

def attack_images(dataset: data.Cifar10, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The attacked test images: ``n`` of them, ceil(n / 10) per class (cut to n), the same for every model and
    seed (paired). Each class's images are taken in one fixed random order, so for multiples of 10 a smaller
    ``n`` (the chapter's live slice) attacks a subset of the images of a larger one (the sweep's)."""
    rng = np.random.default_rng(0)
    orders = [rng.permutation(np.flatnonzero(dataset.y_test == c)) for c in range(10)]
    idx = np.sort(np.concatenate([order[:-(-n // 10)] for order in orders]))[:n]
    return dataset.x_test[idx], dataset.y_test[idx]


def evaluate_robustness(model: nn.Module, x: np.ndarray, y: np.ndarray, attack: dict, seed: int = 0,
                        device=None) -> dict:
    """FGSM and PGD (L∞) at every ε, PGD at the L2 budget, and on a stochastic model plain PGD against EOT-PGD;
    all classified with the posterior predictive of ``predict_samples`` draws (1 for a deterministic model).
    Returns the accuracies per ε, the sanity checks and their warnings."""
    device = device or next(model.parameters()).device
    batches = data.Batches(x, y, attack["batch_size"], device=device, train=False)
    stochastic = attacks.is_stochastic(model)
    samples = attack["predict_samples"] if stochastic else 1
    eps = [0.0] + [e / 255 for e in attack["eps"]]
    common = dict(steps=attack["steps"], generator=torch.Generator(device=device).manual_seed(seed))
    out = {"eps": eps, "eps_255": [0, *attack["eps"]]}  # the budgets as configured, for keys that do not round
    if stochastic:  # EOT-PGD, with plain PGD and FGSM as its references (the checks compute them)
        linf = _robust(model, batches, "eot_pgd", eps, samples, dict(common, samples=attack["eot_samples"]))
        out.update(eot_pgd=linf["acc"], pgd=linf["pgd"], fgsm=linf["fgsm"])
        l2 = _robust(model, batches, "eot_pgd", [attack["l2_eps"]], samples,
                     dict(common, samples=attack["eot_samples"], norm="l2"), masking_eps=8.0)
        out.update(eot_pgd_l2=l2["acc"][0], pgd_l2=l2["pgd"][0])
    else:
        linf = _robust(model, batches, "pgd", eps, samples, common)
        out.update(pgd=linf["acc"], fgsm=linf["fgsm"])
        l2 = _robust(model, batches, "pgd", [attack["l2_eps"]], samples, dict(common, norm="l2"), masking_eps=8.0)
        out.update(pgd_l2=l2["acc"][0])
    out["clean"] = linf["clean"]
    out["checks"] = {"linf": linf["checks"], "l2": l2["checks"]}
    out["warnings"] = linf["warnings"] + l2["warnings"]
    return out


def _robust(model, batches, attack, eps, samples, kwargs, masking_eps=0.25):
    import warnings

    with warnings.catch_warnings():  # recorded in the results instead of printed from a worker
        warnings.simplefilter("ignore", attacks.AttackWarning)
        return attacks.robust_accuracy(model, batches, attack, eps, predict_samples=samples, masking_eps=masking_eps,
                                       **kwargs)


def train_model(cfg: dict, name: str, seed: int, dataset: data.Cifar10) -> tuple[nn.Module, list[dict]]:
    """Retrain model ``name``'s cell(s) for ``seed``; returns the network (an ``Ensemble`` for several cells)
    and each member's training summary."""
    members, summaries = [], []
    for cell in cells(cfg, name, seed):
        trainer = train.Trainer(train_config(cfg, name, cell, seed), dataset=dataset, progress=False)
        trainer.fit(log=None)
        last = trainer.history[-1]
        summaries.append({"cell": cell, "train_acc": last["train_acc"], "test_acc": last["test_acc"],
                          "seconds": float(sum(r["seconds"] for r in trainer.history))})
        members.append(trainer.model)
    return (members[0] if len(members) == 1 else Ensemble(members)), summaries


def run_one(cfg: dict, name: str, seed: int, models_dir: Path | None = None) -> dict:
    """Retrain, evaluate (clean: accuracy, NLL, ECE, Brier on the whole test set) and attack one model.
    Introduced in chapters/07_robustness.py."""
    start = time.perf_counter()
    dataset = sweep._dataset()
    model, members = train_model(cfg, name, seed, dataset)
    model.eval()
    device = next(model.parameters()).device
    test = data.Batches(dataset.x_test, dataset.y_test, 500, device=device, train=False)
    stochastic = attacks.is_stochastic(model)
    clean = metrics.evaluate(model, test, samples=cfg["attack"]["predict_samples"] if stochastic else 1)
    x, y = attack_images(dataset, cfg["attack"]["images"])
    record = {"model": name, "seed": seed, "cells": cells(cfg, name, seed), "stochastic": stochastic,
              "members": members, "clean": {k: clean[k] for k in ("acc", "nll", "ece", "brier", "entropy")},
              "attacked": evaluate_robustness(model, x, y, cfg["attack"], seed, device),
              "config": _record_config(cfg, name), "data": dataset.describe()}
    if models_dir is not None and seed < cfg["save_models"]:
        save_model(models_dir / f"{name}__seed{seed}.pt", model, cfg, name, seed)
    record["seconds"] = time.perf_counter() - start
    record["git_commit"] = results.code_commit()
    return sweep._round(record)


def _record_config(cfg: dict, name: str) -> dict:
    return {"space": cfg["space"], "mode": cfg["mode"], "train": cfg["train"], "attack": cfg["attack"],
            "model": cfg["models"][name]}


def save_model(path: Path, model: nn.Module, cfg: dict, name: str, seed: int) -> None:
    """The trained model (each member's state and the training config that rebuilds it), written atomically."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    state = {"name": name, "seed": seed,
             "members": [{"config": config.config_dict(train_config(cfg, name, cell, seed)),
                          "state": {k: v.cpu() for k, v in m.state_dict().items()}}
                         for cell, m in zip(cells(cfg, name, seed), members, strict=True)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    runs._atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_model(path: Path, device=None) -> nn.Module:
    """A model saved by a robustness sweep (``OUT/models/NAME__seedK.pt``), rebuilt and in eval mode; an
    ``Ensemble`` when it has several members. Introduced in chapters/07_robustness.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model {path}: the robustness sweep keeps the models of seeds < "
                                "save_models in OUT/models/; rerun it (python -m vnas sweep CONFIG).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        members = []
        for member in state["members"]:
            tcfg = train.TrainConfig(**member["config"])
            net = train.build_network(tcfg)
            if tcfg.weights == "gaussian":
                bayes.make_bayesian(net, tcfg.weight_sigma_init)
            net.load_state_dict(member["state"])
            members.append(net)
    except Exception as err:  # a truncated or foreign file: say which and what to do (torch's advice to load it
        # with weights_only=False would run arbitrary code from the file, so only its first line is kept)
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise runs.RunError(f"{path} is not a model saved by a robustness sweep ({type(err).__name__}: {first}). "
                            "Delete it and rerun the sweep that makes it.") from None
    model = members[0] if len(members) == 1 else Ensemble(members)
    return model.to(device or config.device()).eval()


def _run_job(job: tuple) -> tuple[str, dict]:
    path, cfg, name, seed, models_dir = job
    record = run_one(cfg, name, seed, Path(models_dir))
    runs._atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(record)))
    return path, record


# --- the comparison ------------------------------------------------------------------------------------

def run(cfg: dict, out: Path, jobs: int = 1, log=print) -> dict:
    """Run every (model, seed) of ``cfg`` not already recorded in ``out/runs``, then write the summary and the
    manifest into ``out``; returns the results. Introduced in chapters/07_robustness.py."""
    out = Path(out)
    log = log or (lambda *a: None)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo, records = [], {}
    for name in cfg["models"]:
        for seed in range(cfg["seeds"]):
            path = out / "runs" / f"{name}__seed{seed}.json"
            try:
                record = json.loads(path.read_text()) if path.is_file() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None  # a half-written or damaged record: run it again
            if (record is not None and record.get("cells") == cells(cfg, name, seed)
                    and record.get("config") == sweep._round(_record_config(cfg, name))
                    and record.get("data") == sweep._dataset().describe()
                    and (seed >= cfg["save_models"] or (out / "models" / f"{name}__seed{seed}.pt").is_file())
                    and results.code_changed_since(record.get("git_commit", "unknown")) is None):
                records[(name, seed)] = record
                continue
            todo.append(((name, seed), (str(path), cfg, name, seed, str(out / "models"))))
    log(f"robustness: {len(records)} runs recorded, {len(todo)} to run with {jobs} job(s) -> {out}")
    if jobs == 1:
        for key, job in todo:
            records[key] = _run_job(job)[1]
            log(f"  {key[0]} seed {key[1]}: {_line(records[key])}")
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=sweep._init_worker) as pool:
            futures = {pool.submit(_run_job, job): key for key, job in todo}
            for future in concurrent.futures.as_completed(futures):
                key = futures[future]
                records[key] = future.result()[1]
                log(f"  {key[0]} seed {key[1]}: {_line(records[key])}")
    ordered = [records[(name, seed)] for name in cfg["models"] for seed in range(cfg["seeds"])]
    found = {"summary": summarise(cfg, ordered), "runs": ordered}
    results.write(out, found, copy.deepcopy(cfg), cfg["mode"], time.perf_counter() - start,
                  command=sweep._command(cfg, out, jobs), compute_seconds=sum(r["seconds"] for r in ordered),
                  data=sweep._dataset().describe())
    return found


def _line(record: dict) -> str:
    a = record["attacked"]
    return (f"clean {record['clean']['acc']:.3f}, PGD at {a['eps'][-1] * 255:.0f}/255 {a['pgd'][-1]:.3f} "
            f"({record['seconds']:.0f}s)")


def summarise(cfg: dict, records: list[dict]) -> list[dict]:
    """One row per model: each measure's mean and 95% t interval over seeds, and the per-seed values (paired
    by seed across models). Introduced in chapters/07_robustness.py."""
    rows = []
    for name in cfg["models"]:
        rs = sorted((r for r in records if r["model"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        row = {"model": name, "seeds": [r["seed"] for r in rs], "stochastic": rs[0]["stochastic"],
               "eps_255": rs[0]["attacked"]["eps_255"], "values": {}}
        measures = {f"clean_{k}": [r["clean"][k] for r in rs] for k in ("acc", "nll", "ece", "brier")}
        for attack in ("fgsm", "pgd", "eot_pgd"):  # keys "pgd@2": PGD at ε = 2/255
            if attack in rs[0]["attacked"]:
                for i, eps in enumerate(rs[0]["attacked"]["eps_255"]):
                    measures[f"{attack}@{eps:g}"] = [r["attacked"][attack][i] for r in rs]
        for attack in ("pgd_l2", "eot_pgd_l2"):
            if attack in rs[0]["attacked"]:
                measures[attack] = [r["attacked"][attack] for r in rs]
        for key, values in measures.items():
            mean, ci = sweep.mean_interval(values)
            row["values"][key] = {"mean": mean, "ci95": ci, "per_seed": values}
        row["warnings"] = sorted({w for r in rs for w in r["attacked"]["warnings"]})
        row["seconds"] = float(np.mean([r["seconds"] for r in rs]))
        rows.append(row)
    return rows


def format_summary(found: dict) -> str:
    """The summary as a plain-text table: clean accuracy, PGD accuracy at every ε, L2 PGD."""
    lines = []
    for row in found["summary"]:
        v = row["values"]
        pgd = " ".join(f"{v[k]['mean']:.3f}" for k in v if k.startswith("pgd@"))
        eot = " ".join(f"{v[k]['mean']:.3f}" for k in v if k.startswith("eot_pgd@"))
        lines.append(f"{row['model']:14s} n={len(row['seeds'])} clean {v['clean_acc']['mean']:.3f} ± "
                     f"{v['clean_acc']['ci95']:.3f} | PGD {pgd} | L2 {v['pgd_l2']['mean']:.3f}"
                     + (f" | EOT {eot}" if eot else "") + (" | WARNINGS" if row["warnings"] else ""))
    return "\n".join(lines)


__all__ = ["Ensemble", "attack_images", "cells", "evaluate_robustness", "format_summary", "is_robustness_config",
           "load_config", "load_model", "run", "run_one", "save_model", "summarise", "train_config"]
