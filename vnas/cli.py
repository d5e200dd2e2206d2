"""The command line: ``python -m vnas COMMAND``. Every command runs the same code as the chapters.

    python -m vnas search --space darts|nb201 --method M [--config FILE] [--mode M] [--seed N] --out DIR
    python -m vnas resume DIR [--trust-checkpoint]
    python -m vnas derive DIR
    python -m vnas train --genotype FILE|NAME [--config FILE] --out DIR
    python -m vnas describe --genotype FILE|NAME [--config FILE] [--dataset cifar10|imagenet]
    python -m vnas nb201 GENOTYPE
    python -m vnas sweep CONFIG [--seeds N] [--methods M ...] [--out DIR] [--jobs J]
    python -m vnas book [--out _build] [--only NN ...] [--rerun | --from-saved]
    python -m vnas assignments [--out _build/assignments] [--nbgrader [--hidden HIDDEN]]
    python -m vnas grade SUBMISSIONS [--out grades.csv] [--hidden HIDDEN] [--only NN ...] [--timeout S]

Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _set_mode(args) -> None:
    # The mode is read from VNAS_MODE by vnas.config only; --mode just sets it for this process.
    if getattr(args, "mode", None):
        os.environ["VNAS_MODE"] = args.mode
    from vnas import config

    config.mode()  # validate early


def _group(kind: str):
    """The processes torchrun started (one without torchrun), and a print that only rank 0 uses."""
    from vnas import distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and kind != "search":
        raise distributed.DistributedError(
            f"`{kind}` runs in one process; several processes (torchrun, WORLD_SIZE={world}) are for "
            "`python -m vnas search` and for resuming a search. Run it with `python -m vnas ...` instead.")
    group = distributed.Group.from_env()
    return group, (print if group.main else (lambda *a, **k: None))


def _search(args) -> int:
    from vnas import config, search

    _set_mode(args)
    cfg = search.load_search_config(args.space, Path(args.config) if args.config else None, method=args.method,
                                    seed=args.seed, epochs=args.epochs, weights=args.weights,
                                    weight_prior=args.weight_prior)
    group, say = _group("search")
    try:
        say(config.banner())
        run = search.start(cfg, Path(args.out), overwrite=args.overwrite, group=group, progress=group.main)
        say(f"search: {cfg.method} on {cfg.space}, {cfg.epochs} epochs -> {args.out}"
            + (f" ({group.world} processes, {cfg.batch_size // group.world} images each per step)"
               if group.world > 1 else ""))
        run.fit(log=say)
        say(f"genotype: {run.genotype()}")
    finally:
        group.close()
    return 0


def _resume(args) -> int:
    from vnas import runs, search, train

    kind = runs.RunDir(Path(args.dir)).read_json("config.json").get("kind")
    group, say = _group(kind or "search")
    try:
        extra = {"group": group, "progress": group.main} if kind != "train" else {}
        module = train if kind == "train" else search
        job = module.resume(Path(args.dir), trust_checkpoint=args.trust_checkpoint, **extra)
        say(f"resuming {args.dir} after epoch {job.epoch} of {job.cfg.epochs}")
        job.fit(log=say)
        if kind != "train":
            say(f"genotype: {job.genotype()}")
    finally:
        group.close()
    return 0


def _derive(args) -> int:
    from vnas import runs, spaces

    path = Path(args.dir) / "genotype.json"
    if not path.is_file():
        raise runs.RunError(f"{path} does not exist: {args.dir} is not a run folder, or its first epoch has not ended.")
    print(spaces.load_genotype(str(path)))
    return 0


def _train(args) -> int:
    from vnas import config, train

    _set_mode(args)
    _group("train")  # refused under torchrun
    cfg = train.load_train_config(args.genotype, Path(args.config) if args.config else None, seed=args.seed,
                                  epochs=args.epochs, weights=args.weights, weight_prior=args.weight_prior)
    print(config.banner())
    trainer = train.start(cfg, Path(args.out), overwrite=args.overwrite)
    print(f"train: {trainer.genotype} for {cfg.epochs} epochs -> {args.out}")
    trainer.fit()
    return 0


DATASETS = ("cifar10", "imagenet")  # describe: the networks a genotype has


def _describe(args) -> int:
    import difflib

    from vnas import config, networks, spaces, train

    if args.dataset == "imagenet" and not args.mode:
        args.mode = "full"  # "the mobile setting" is a statement about the published network, not a smoke-sized one
    _set_mode(args)
    if args.dataset not in DATASETS:
        close = difflib.get_close_matches(args.dataset, DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown dataset {args.dataset!r}.{hint} Valid datasets: {', '.join(DATASETS)}.")
    if args.dataset == "imagenet":
        return _describe_imagenet(args)
    cfg = train.load_train_config(args.genotype, Path(args.config) if args.config else None)
    genotype = spaces.load_genotype(args.genotype)
    model = train.build_network(cfg, genotype)
    print(f"genotype: {genotype}")
    print(f"network: {cfg.layers} {spaces.space_of(genotype).depth}, C={cfg.channels} (mode {config.mode()})")
    print(f"parameters: {networks.count_parameters(model) / 1e6:.3f} M without the auxiliary head, "
          f"{networks.count_parameters(model, include_auxiliary=True) / 1e6:.3f} M with it")
    print(f"multiply-adds: {networks.count_macs(model) / 1e6:.1f} M per 32x32 image")
    return 0


def _describe_imagenet(args) -> int:
    from vnas import config, imagenet, networks, spaces
    from vnas.spaces import darts_imagenet

    cfg = imagenet.load_imagenet_config(Path(args.config) if args.config else None)
    genotype = spaces.load_genotype(args.genotype)
    model = darts_imagenet.build_imagenet_network(genotype, C=cfg.channels, layers=cfg.layers,
                                                  auxiliary=cfg.auxiliary, drop_path=cfg.drop_path)
    macs = networks.count_macs(model, (1, 3, 224, 224))
    limit = darts_imagenet.MOBILE_MACS
    print(f"genotype: {genotype}")
    print(f"network: ImageNet (1000 classes), {cfg.layers} cells, C={cfg.channels} (mode {config.mode()})")
    print(f"parameters: {networks.count_parameters(model) / 1e6:.3f} M without the auxiliary head, "
          f"{networks.count_parameters(model, include_auxiliary=True) / 1e6:.3f} M with it")
    print(f"multiply-adds: {macs / 1e6:.1f} M per 224x224 image (conv and linear layers): "
          f"{'within' if macs < limit else 'outside'} the mobile setting (< {limit / 1e6:.0f} M)")
    return 0


def _nb201(args) -> int:
    from vnas import spaces

    genotype = spaces.load_genotype(args.genotype)
    acc = spaces.space_of(genotype).score(genotype)
    if acc is None:
        raise ValueError(f"{args.genotype!r} is not a NAS-Bench-201 cell (only NB201 cells have a table of trained "
                         "accuracies); give a string like "
                         "'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'.")
    print(f"{genotype}\nNAS-Bench-201 test accuracy (200 epochs, mean over seeds; NATS-Bench table):")
    for name, value in acc.items():
        print(f"  {name:11s} {value:6.2f} %")
    return 0


def _book(args) -> int:
    from vnas import book

    entries = book.build(Path(args.out), timeout=args.timeout, only=args.only, reuse=not args.rerun,
                         saved_only=args.from_saved)
    print(f"[book] open {Path(args.out) / 'index.html'}")
    missing = [e["stem"] for e in entries if e["status"] == "not executed"]
    if missing:
        print(f"[book] not executed, so not on the site: {', '.join(missing)}")
    failed = [e for e in entries if e["status"] == "failed"]
    for e in failed:  # every chapter was still run and written; the exit status says some failed
        print(f"[book] FAILED {e['error']}", file=sys.stderr)
    return 1 if failed else 0


def _assignments(args) -> int:
    from vnas import book, grade

    if args.nbgrader:
        for path in grade.write_nbgrader(Path(args.out), Path(args.hidden) if args.hidden else None):
            print(f"[assignments] {path} (nbgrader source: solutions kept, cells marked)")
        print(f"[assignments] then, in {args.out}: nbgrader generate_assignment NN_slug")
        return 0
    if args.hidden:
        raise ValueError("--hidden goes with --nbgrader (hidden checks run in nbgrader's hidden test blocks), or "
                         "with `python -m vnas grade`.")
    for path in book.write_assignments(Path(args.out)):
        print(f"[assignments] {path} (+ .ipynb)")
    return 0


def _grade(args) -> int:
    from vnas import grade

    rows = grade.grade(Path(args.submissions), Path(args.hidden) if args.hidden else None, only=args.only,
                       timeout=args.timeout)
    out = grade.write_csv(rows, Path(args.out))
    for student, points in grade.totals(rows).items():
        print(f"{student}: {points:g} points")
    print(f"[grade] {len(rows)} rows -> {out}")
    return 0


def _sweep(args) -> int:
    from vnas import config, robustness, sweep

    path = Path(args.config)
    out = Path(args.out) if args.out else config.RESULTS_DIR / path.stem
    if robustness.is_robustness_config(path):  # an [attack] table: retrain found cells and attack them
        cfg = robustness.load_config(path, seeds=args.seeds, models=args.methods)
        run, summary = robustness.run, robustness.format_summary
    else:
        cfg = sweep.load_sweep_config(path, seeds=args.seeds, methods=args.methods)
        run, summary = sweep.run_sweep, sweep.format_summary
    print(config.banner())
    found = run(cfg, out, jobs=args.jobs)
    print(summary(found))
    print(f"results and manifest: {out}")
    return 0


def _run_options(p: argparse.ArgumentParser, config_help: str) -> None:
    """The options every command that starts a run folder takes."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--mode", help="smoke | quick | full (default: VNAS_MODE, else quick)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--out", required=True, help="the run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--weights", help="point | gaussian (mean-field q(w); default: the config's, point)")
    p.add_argument("--weight-prior", help="gaussian | mixture | coupled (p(w | θ); search only) for --weights gaussian")


def parser() -> argparse.ArgumentParser:
    from vnas.posteriors import METHODS

    p = argparse.ArgumentParser(prog="python -m vnas", description="Bayesian neural architecture search (vnas).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="search a cell; writes a run folder")
    s.add_argument("--space", required=True, help="darts | nb201")
    s.add_argument("--method", required=True, help=" | ".join(METHODS))
    _run_options(s, "a TOML file overriding configs/search_<space>.toml")
    s.set_defaults(run=_search)

    r = sub.add_parser("resume", help="continue a killed search or training run")
    r.add_argument("dir")
    r.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that safe loading refuses (only one you wrote yourself: it can run code)")
    r.set_defaults(run=_resume)

    d = sub.add_parser("derive", help="print a run's genotype")
    d.add_argument("dir")
    d.set_defaults(run=_derive)

    t = sub.add_parser("train", help="train a final network from a genotype; writes a run folder")
    t.add_argument("--genotype", required=True, help="DARTS_V1 | DARTS_V2 | a genotype.json | a genotype string")
    _run_options(t, "a TOML file overriding configs/train_<space>.toml")
    t.set_defaults(run=_train)

    x = sub.add_parser("describe", help="parameters and multiply-adds of a genotype's final network")
    x.add_argument("--genotype", required=True)
    x.add_argument("--config", help="a TOML file overriding configs/train_<space>.toml (imagenet: train_imagenet)")
    x.add_argument("--mode")
    x.add_argument("--dataset", default="cifar10", help=" | ".join(DATASETS) + " (default cifar10); imagenet: the "
                   "224x224 network of the mobile setting (DARTS space only)")
    x.set_defaults(run=_describe)

    n = sub.add_parser("nb201", help="a NAS-Bench-201 cell's accuracies from the shipped table")
    n.add_argument("genotype")
    n.set_defaults(run=_nb201)

    w = sub.add_parser("sweep", help="a grid of searches over paired seeds, or a robustness comparison (a config "
                       "with an [attack] table), summarised into data/results/")
    w.add_argument("config", help="a sweep TOML file, e.g. configs/sweeps/nb201_comparison.toml")
    w.add_argument("--seeds", type=int, help="seeds 0..N-1 for every method and grid point (default: the file's)")
    w.add_argument("--methods", nargs="+", help=" | ".join(METHODS) + " (default: the file's); for a robustness "
                   "config, the names of its [models.NAME] tables")
    w.add_argument("--out", help="the results folder (default: data/results/<config file name>)")
    w.add_argument("--jobs", type=int, default=1, help="runs side by side, one CPU thread each")
    w.set_defaults(run=_sweep)

    b = sub.add_parser("book", help="execute every chapter and write notebooks + HTML",
                       description="Executes each chapter in the current mode (VNAS_MODE) into OUT/notebooks/, "
                       "reusing a saved notebook that ran clean in this mode from the same source, and writes an "
                       "offline HTML site into OUT (OUT/index.html). A failing chapter does not stop the others; "
                       "the exit status is 1 when any failed.")
    b.add_argument("--out", default="_build")
    b.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    b.add_argument("--only", nargs="*", help="only chapters whose file name contains one of these")
    again = b.add_mutually_exclusive_group()
    again.add_argument("--rerun", action="store_true", help="execute even when a saved notebook matches")
    again.add_argument("--from-saved", action="store_true", help="execute nothing: render the saved notebooks "
                       "(e.g. those `make test` executed in smoke mode)")
    b.set_defaults(run=_book)

    a = sub.add_parser("assignments", help="the chapters with their solutions stripped, for a class")
    a.add_argument("--out", default="_build/assignments")
    a.add_argument("--nbgrader", action="store_true", help="write nbgrader's source notebooks instead: solutions "
                   "kept between the markers, answer and test cells marked (OUT/source/NN_slug/NN_slug.ipynb)")
    a.add_argument("--hidden", help="a folder of hidden checks, HIDDEN/NN_slug.py (with --nbgrader)")
    a.set_defaults(run=_assignments)

    g = sub.add_parser("grade", help="grade a class: SUBMISSIONS/<student>/NN_slug.py|.ipynb -> a CSV",
                       description="Runs each submission in a fresh kernel in smoke mode and calls every exercise's "
                       "checker on the student's function. Hidden checks: HIDDEN/NN_slug.py holds "
                       "@vnas.checks.checker functions named check_..., whose first parameter is named after the "
                       "student's function; an optional POINTS = {'exercise': points} sets points (default 1).")
    g.add_argument("submissions", help="a folder with one folder per student")
    g.add_argument("--out", default="grades.csv", help="the CSV: student, chapter, exercise, points, status, reason")
    g.add_argument("--hidden", help="a folder of hidden checks, HIDDEN/NN_slug.py")
    g.add_argument("--only", nargs="*", help="grade only chapters whose name contains one of these (default: "
                   "every chapter someone handed in; students without the file get 'not attempted')")
    g.add_argument("--timeout", type=int, default=120, help="per-cell timeout in seconds (default 120)")
    g.set_defaults(run=_grade)
    return p


def main(argv: list[str] | None = None) -> int:
    from vnas.book import ChapterError
    from vnas.distributed import DistributedError
    from vnas.runs import RunError

    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, RunError, ChapterError, FloatingPointError, DistributedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch's checkpoint is kept (python -m vnas resume DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
