"""A grid of searches, with paired seeds, summarised: ``python -m vnas sweep CONFIG --seeds N --methods ...``.

A sweep config is a TOML file (``configs/sweeps/*.toml``):

    space = "nb201"          # the search space
    mode = "quick"           # which table of configs/search_<space>.toml the runs start from
    methods = ["darts", "variational"]
    seeds = 3                # seeds 0 .. seeds-1, the same for every method and grid point (paired)
    samples = 200            # cells drawn from each run's q for the posterior over genotypes
    [base]                   # SearchConfig fields set for every run ("posterior.c0" sets a method option)
    image_size = 16
    [grid]                   # every combination of these values is one grid point
    arch_lr = [3e-3, 3e-2]

A method option in [base] or [grid] (``"posterior.c0"``) applies to the methods that have it and is left
out for the others (each record holds its own config). Every run writes ``OUT/runs/<point>__<method>__seed<k>.json``
as soon as it ends; a sweep started again skips the runs whose record holds the same config and was made by
the same code (vnas/ unchanged since the record's commit), so a killed sweep resumes. At the end
``OUT/results.json`` (every record and the summary) and ``OUT/manifest.json``
are written (``vnas.results``).

The summary, per grid point and method: the mean of the space's score of the derived cell with a 95%
Student-t interval over seeds; how far the distribution moved (the largest mean op weight and the entropy
of the mean per edge, at the start and the end; the total-variation distance from the uniform start); how
much it still moved over the last quarter of the epochs (has it converged?); and the collapse diagnostics.

Place in the flow: above ``search`` (it runs searches); below the chapters, which read its results.
Introduced in chapters/04_bayesian_structure_posterior.py.
"""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import json
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from vnas import config, data, posteriors, results, runs, search, train

# Student-t quantiles t_{0.975, df}: a 95% interval from a handful of seeds needs them, not 1.96
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table; 1.96 beyond 30)."""
    if df < 1:
        return math.nan
    return _T975.get(df) or (_T975[max(k for k in _T975 if k <= df)] if df <= 30 else 1.96)


def mean_interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval) of the values; half-width nan for fewer than two.

    Introduced in chapters/04_bayesian_structure_posterior.py."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


# --- the config ------------------------------------------------------------------------------------

_KEYS = {"space", "mode", "methods", "seeds", "samples", "base", "grid", "points", "retrain"}


def load_sweep_config(path: Path, seeds: int | None = None, methods: list[str] | None = None) -> dict:
    """The sweep config of a TOML file, with ``seeds`` and ``methods`` from the command line taking
    precedence, checked: every run it describes is built (not run) so that a bad key fails now, not after
    an hour.
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    path = Path(path)
    cfg = raw = config.read_toml(path)
    unknown = set(cfg) - _KEYS
    if unknown:
        raise config.ConfigError(f"Unknown key(s) {sorted(unknown)} in sweep config {path}; "
                                 f"valid: {sorted(_KEYS)}.")
    cfg = {"space": cfg.get("space"), "mode": cfg.get("mode", "quick"),
           "methods": list(methods or cfg.get("methods", [])),
           "seeds": seeds if seeds is not None else cfg.get("seeds", 1), "samples": cfg.get("samples", 200),
           "base": dict(cfg.get("base", {})), "grid": {k: list(v) if isinstance(v, list) else [v]
                                                      for k, v in cfg.get("grid", {}).items()}}
    # optional tables, kept out of the dict when absent (a results folder's config is compared with its file)
    if "points" in raw:
        points = raw["points"]
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
            raise config.ConfigError(f"`points` in {path} must be a non-empty list of tables, e.g. "
                                     "points = [{weights = \"point\"}, {weights = \"gaussian\"}].")
        cfg["points"] = [dict(p) for p in points]
    if "retrain" in raw:
        cfg["retrain"] = _check_retrain(dict(raw["retrain"]), path)
    if cfg["space"] is None:
        raise config.ConfigError(f"Sweep config {path} has no `space = \"nb201\"` (or \"darts\").")
    if not cfg["methods"]:
        raise config.ConfigError(f"Sweep config {path} names no methods: add `methods = [...]` or pass --methods.")
    for name, low in (("seeds", 1), ("samples", 1)):
        if not isinstance(cfg[name], int) or isinstance(cfg[name], bool) or cfg[name] < low:
            raise config.ConfigError(f"{name} = {cfg[name]!r} in {path} must be an integer >= {low}.")
    if any(len(v) == 0 for v in cfg["grid"].values()):
        raise config.ConfigError(f"A [grid] key of {path} has no values.")
    for point in grid_points(cfg):
        for method in cfg["methods"]:
            search_config(cfg, point, method, seed=0)  # raises with the bad key's name
    return cfg


def grid_points(cfg: dict) -> list[dict]:
    """Every combination of the grid's values, as {key: value} (one empty point for an empty grid), crossed
    with the explicit ``points`` (arms that a product cannot express, e.g. a prior that needs Bayesian weights)."""
    keys = list(cfg["grid"])
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*cfg["grid"].values())]
    return [{**arm, **g} for arm in cfg.get("points", [{}]) for g in grid]


_RETRAIN_KEYS = {"shifts", "severities", "eval_samples_bayesian"}


def _check_retrain(table: dict, path) -> dict:
    """[retrain]: TrainConfig keys for retraining each run's derived cell, plus the shifted test sets."""
    fields = {f for f in train.TrainConfig.__dataclass_fields__} - {"genotype", "seed"}
    unknown = set(table) - fields - _RETRAIN_KEYS
    if unknown:
        raise config.ConfigError(f"Unknown key(s) {sorted(unknown)} in [retrain] of {path}; valid: TrainConfig "
                                 f"fields and {sorted(_RETRAIN_KEYS)}.")
    for kind in table.get("shifts", []):
        data.shift(np.zeros((1, 4, 4, 3), np.uint8), kind, 1)  # raises for an unknown kind
    for severity in table.get("severities", []):
        if severity not in range(1, 6):
            raise config.ConfigError(f"[retrain] severities in {path} must lie in 1..5, got {severity!r}.")
    return table


def retrain(cfg: dict, genotype, seed: int) -> dict:
    """Retrain a derived cell under the sweep's [retrain] budget (the same for every arm and seed) and evaluate
    it on the test images, clean and under each shift and severity: accuracy, NLL, ECE, Brier.
    Introduced in chapters/05_bayesian_weights.py."""
    table = dict(cfg["retrain"])
    shifts, severities = table.pop("shifts", []), table.pop("severities", [1, 3, 5])
    table.pop("eval_samples_bayesian", None)
    tcfg = train.load_train_config(str(genotype), run_mode=cfg["mode"], seed=seed, **table)
    trainer = train.Trainer(tcfg, dataset=_dataset(), progress=False)
    trainer.fit(log=None)
    keep = ("acc", "nll", "ece", "brier", "entropy")
    clean = trainer.evaluate()
    out = {"config": config.config_dict(tcfg), "clean": {k: clean[k] for k in keep}, "shifted": {}}
    for kind in shifts:
        out["shifted"][kind] = [{k: r[k] for k in keep} for r in
                                (trainer.evaluate(shift=(kind, severity)) for severity in severities)]
    out["severities"] = list(severities)
    return out


def search_config(cfg: dict, point: dict, method: str, seed: int) -> search.SearchConfig:
    """The SearchConfig of one run: the mode's protocol, then [base], then the grid point. A method option
    (``posterior.X``) is passed to the methods that have it."""
    entry = posteriors.get_method(method)
    overrides, options = {}, {}
    for key, value in {**cfg["base"], **point}.items():
        if key.startswith("posterior."):
            option = key.removeprefix("posterior.")
            if option in entry.defaults:
                options[option] = value
            elif not any(option in m.defaults for m in posteriors.METHODS.values()):
                raise config.ConfigError(f"{key!r}: no method has an option {option!r}.")
        else:
            overrides[key] = value
    scfg = search.load_search_config(cfg["space"], run_mode=cfg["mode"], method=method, seed=seed,
                                     posterior=options, **overrides)
    # a bad option value (c0 <= 0, a negative KL weight) fails here, not an hour into the sweep
    posteriors.build_posterior(method, scfg.space, generator=torch.Generator().manual_seed(0), **options)
    return scfg


# --- one run -----------------------------------------------------------------------------------------

_ROW_KEYS = ("epoch", "steps", "train_loss", "val_loss", "val_acc", "architecture", "structure_kl_edge", "score",
             "genotype", "parameter_free_share", "hessian_eigenvalue", "tau", "seconds", "edges", "weights",
             "weight_posterior", "op_weight_rms")


def _round(x, digits: int = 6):
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v, digits) for v in x]
    return x


_DATASET = None


def _dataset() -> data.Cifar10:
    global _DATASET
    if _DATASET is None:
        _DATASET = data.load_cifar10()
    return _DATASET


def run_one(cfg: search.SearchConfig, samples: int, sweep_cfg: dict | None = None) -> dict:
    """One search, and what the summary needs from it: its history (without per-step detail), the derived
    cell and its score, and the posterior over cells: ``samples`` cells drawn from q, their scores, and per
    edge the probability of each op being the argmax of θ_e.
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    start = time.perf_counter()
    s = search.Search(cfg, dataset=_dataset(), progress=False)
    history = s.fit(log=None)
    genotype = s.genotype()
    cells = s.sample_genotypes(samples)
    rows = [{k: r[k] for k in _ROW_KEYS if k in r} for r in history]
    record = {"config": config.config_dict(cfg), "history": rows,
              "genotype": str(genotype), "score": s.space.score(genotype),
              "argmax_probabilities": {k: v.cpu().tolist()
                                       for k, v in s.posterior.argmax_probabilities(samples).items()},
              "sampled_cells": [str(g) for g in cells]}
    scores = [s.space.score(g) for g in cells]
    if scores and scores[0] is not None:
        record["sampled_scores"] = {k: [sc[k] for sc in scores] for k in scores[0]}
    if sweep_cfg is not None and "retrain" in sweep_cfg:
        record["retrain"] = sweep_cfg["retrain"]
        record["retrained"] = retrain(sweep_cfg, genotype, cfg.seed)
    record["data"] = _dataset().describe()
    record["seconds"] = time.perf_counter() - start
    record["git_commit"] = results.code_commit()  # the code; the config is in the record itself
    return _round(record)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per run: two small runs side by side beat one run on two cores


def _run_job(job: tuple) -> tuple[str, dict]:
    path, cfg, samples, sweep_cfg = job
    record = run_one(cfg, samples, sweep_cfg)
    runs._atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(record)))
    return path, record


# --- the sweep -----------------------------------------------------------------------------------------

def run_sweep(cfg: dict, out: Path, jobs: int = 1, log=print) -> dict:
    """Run every (grid point, method, seed) of ``cfg`` not already recorded in ``out/runs``, then write
    the summary and the manifest into ``out``; returns the results.
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    out = Path(out)
    log = log or (lambda *a: None)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo, records = [], {}
    for i, point in enumerate(grid_points(cfg)):
        for method in cfg["methods"]:
            for seed in range(cfg["seeds"]):
                scfg = search_config(cfg, point, method, seed)
                path = out / "runs" / f"p{i:02d}__{method}__seed{seed}.json"
                key = (i, method, seed)
                if path.is_file():
                    try:
                        record = json.loads(path.read_text())
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        record = None  # a half-written or damaged record: run it again
                    # reused only when made by the same code (vnas/) from the same config; else run again
                    if (record is not None and record.get("config") == _round(config.config_dict(scfg))
                            and record.get("retrain") == cfg.get("retrain")
                            and record.get("data") == _dataset().describe()
                            and results.code_changed_since(record.get("git_commit", "unknown")) is None):
                        records[key] = record
                        continue
                todo.append((key, (str(path), scfg, cfg["samples"], cfg)))
    log(f"sweep: {len(records)} runs recorded, {len(todo)} to run with {jobs} job(s) -> {out}")
    if todo:
        if jobs == 1:
            for key, job in todo:
                records[key] = _run_job(job)[1]
                log(f"  {Path(job[0]).stem}: {records[key]['genotype']} {records[key]['score']} "
                    f"({records[key]['seconds']:.0f}s)")
        else:
            ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch state forked mid-use
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
                futures = {pool.submit(_run_job, job): key for key, job in todo}
                for future in concurrent.futures.as_completed(futures):
                    key = futures[future]
                    records[key] = future.result()[1]
                    log(f"  p{key[0]:02d} {key[1]} seed {key[2]}: {records[key]['score']} "
                        f"({records[key]['seconds']:.0f}s)")
    ordered = [dict(records[k], point=k[0], method=k[1], seed=k[2]) for k in sorted(records)]
    found = {"points": grid_points(cfg), "summary": summarise(cfg, ordered), "runs": ordered}
    results.write(out, found, copy.deepcopy(cfg), cfg["mode"], time.perf_counter() - start,
                  command=_command(cfg, out, jobs), compute_seconds=sum(r["seconds"] for r in ordered),
                  data=_dataset().describe())
    return found


def _command(cfg: dict, out: Path, jobs: int) -> str:
    import sys

    if Path(sys.argv[0]).name in ("__main__.py", "vnas") and len(sys.argv) > 1 and sys.argv[1] == "sweep":
        return "python -m vnas " + " ".join(sys.argv[1:])
    return f"vnas.sweep.run_sweep(<{cfg['space']} sweep>, out={out}, jobs={jobs})"


# --- the summary ---------------------------------------------------------------------------------------

def _categorical_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


def movement(record: dict) -> dict:
    """How far a run's distribution moved, from its history: per cell type, averaged over edges, the largest
    mean op weight and the entropy (nats) of the mean, at the uniform start and at the end; the total-variation
    distance of the end from uniform; and the drift, the total-variation distance between the mean at 3/4 of
    the epochs and at the end (near 0: the end state no longer changes).
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    history = record["history"]
    if not history:
        return {}
    out = {}
    last = history[-1]["edges"]
    quarter = history[min(len(history) - 1, max(0, math.ceil(0.75 * len(history)) - 1))]["edges"]
    for cell_type, stats in last.items():
        end = np.asarray(stats["mean"])
        mid = np.asarray(quarter[cell_type]["mean"])
        uniform = np.full_like(end, 1 / end.shape[-1])
        out[cell_type] = {
            "max_weight_start": float(uniform.max(-1).mean()), "max_weight_end": float(end.max(-1).mean()),
            "entropy_start": float(_categorical_entropy(uniform).mean()),
            "entropy_end": float(_categorical_entropy(end).mean()),
            "tv_from_uniform": float(0.5 * np.abs(end - uniform).sum(-1).mean()),
            "drift_last_quarter": float(0.5 * np.abs(end - mid).sum(-1).mean())}
    return out


def summarise(cfg: dict, records: list[dict], key: str | None = None) -> list[dict]:
    """One row per (grid point, method): the score of the derived cell (mean ± 95% interval over seeds, and
    the per-seed values, paired by seed), the posterior-expected score, how the distribution moved, and the
    collapse diagnostics of the last epoch. ``key`` picks the score (default: the first one, e.g. 'cifar10')."""
    rows = []
    points = grid_points(cfg)
    for i, point in enumerate(points):
        for method in cfg["methods"]:
            runs_ = sorted((r for r in records if r["point"] == i and r["method"] == method), key=lambda r: r["seed"])
            if not runs_:
                continue
            row = {"point": i, **point, "method": method, "seeds": [r["seed"] for r in runs_]}
            if runs_[0].get("score"):
                k = key or next(iter(runs_[0]["score"]))
                values = [r["score"][k] for r in runs_]
                row.update(score_key=k, scores=values)
                row["score_mean"], row["score_ci95"] = mean_interval(values)
                expected = [float(np.mean(r["sampled_scores"][k])) for r in runs_ if "sampled_scores" in r]
                if expected:
                    row["expected_score"], row["expected_score_ci95"] = mean_interval(expected)
            moves = [movement(r) for r in runs_]
            if moves and moves[0]:
                row["movement"] = {c: {m: float(np.mean([mv[c][m] for mv in moves])) for m in moves[0][c]}
                                   for c in moves[0]}
            lasts = [r["history"][-1] for r in runs_ if r["history"]]
            if lasts and "parameter_free_share" in lasts[0]:
                row["parameter_free_share"] = {c: float(np.mean([h["parameter_free_share"][c] for h in lasts]))
                                               for c in lasts[0]["parameter_free_share"]}
            eig = [h["hessian_eigenvalue"] for h in lasts if h.get("hessian_eigenvalue") is not None]
            if eig:
                row["hessian_eigenvalue"] = float(np.mean(eig))
            if "retrained" in runs_[0]:
                row["retrained"] = {m: mean_interval([r["retrained"]["clean"][m] for r in runs_])
                                    for m in runs_[0]["retrained"]["clean"]}
                row["retrained_shifted"] = {
                    kind: [{m: float(np.mean([r["retrained"]["shifted"][kind][i][m] for r in runs_])) for m in level}
                           for i, level in enumerate(levels)]
                    for kind, levels in runs_[0]["retrained"]["shifted"].items()}
            row["seconds"] = float(np.mean([r["seconds"] for r in runs_]))
            rows.append(row)
    return rows


def format_summary(found: dict) -> str:
    """The summary as a plain-text table."""
    lines = []
    for row in found["summary"]:
        point = ", ".join(f"{k}={row[k]}" for k in found["points"][row["point"]]) or "-"
        score = (f"{row['score_mean']:6.2f} ± {row['score_ci95']:5.2f}" if "score_mean" in row else "   n/a")
        move = ""
        for c, m in row.get("movement", {}).items():
            move += (f" | {c}: max w {m['max_weight_start']:.2f}->{m['max_weight_end']:.2f}, "
                     f"drift {m['drift_last_quarter']:.3f}")
        lines.append(f"p{row['point']:02d} {point:40s} {row['method']:12s} n={len(row['seeds'])} {score}{move}")
    return "\n".join(lines)


__all__ = ["format_summary", "grid_points", "load_sweep_config", "mean_interval", "movement", "run_one", "run_sweep",
           "search_config", "summarise", "t975"]
