"""Several processes, one search (vnas.distributed): two gloo processes on the CPU through torchrun, against one
process that averages the gradients of the same two shards; a killed two-process run resumed; a rank that dies;
and the refusals (a world size that does not divide the batch, a resume by another number of processes)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vnas import config, distributed, runs, search

SMOKE = ["--space", "darts", "--method", "darts", "--mode", "smoke"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {**os.environ, "VNAS_MODE": "smoke", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(nproc: int, *args, **popen):
    """``torchrun --nproc-per-node=nproc -m vnas ARGS`` on a free local port (gloo: no GPU here)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "vnas", *args]
    return subprocess.Popen(cmd, env=_env(), cwd=config.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **popen)


def _workers(proc) -> list[int]:
    """The worker processes of a torchrun process."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def _first_epoch(folder: Path, timeout_s: float = 600) -> Path:
    """The run folder's history.jsonl, once its first epoch is written (or the timeout has passed)."""
    history = folder / "history.jsonl"
    deadline = time.time() + timeout_s
    while time.time() < deadline and (not history.exists() or not history.read_text().strip()):
        time.sleep(0.05)
    return history


def _one(*args):
    return subprocess.run([sys.executable, "-m", "vnas", *args], env=_env(), cwd=config.ROOT, capture_output=True,
                          text=True, timeout=600)


def _config(path: Path, **keys) -> Path:
    path.write_text("".join(f"{k} = {v}\n" for k, v in keys.items()))
    return path


def _state(folder: Path) -> dict:
    return torch.load(folder / runs.CHECKPOINT, weights_only=True)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One uninterrupted 2-process search (3 epochs of 2 steps, 8 images per process per step), shared by the
    tests that compare with it."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = _config(root / "two.toml", epochs=3)
    start = time.perf_counter()
    proc = _torchrun(2, "search", *SMOKE, "--config", str(cfg), "--out", str(root / "two"))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return root, cfg, out, time.perf_counter() - start


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_that_averages_their_shards(two_process_run, tmp_path):
    root, _, out, seconds = two_process_run
    print(f"2-process torchrun search: {seconds:.1f} s wall")
    assert "2 processes, 8 images each per step" in out and out.count("epoch ") >= 3, out
    one = _one("search", *SMOKE, "--config", str(_config(tmp_path / "one.toml", epochs=3, accumulate=2)),
               "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = _state(root / "two"), _state(tmp_path / "one")
    for part in ("supernet", "posterior"):
        for key, value in b[part].items():
            if "running" in key or "num_batches" in key:
                continue  # BN statistics: per shard in both, averaged over the ranks at the epoch end in one
            assert torch.allclose(a[part][key], value, rtol=1e-4, atol=1e-6), (part, key,
                                                                               (a[part][key] - value).abs().max())
    # the logged training loss is the mean over the shards in both
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-5, (ra["train_loss"], rb["train_loss"])
        assert ra["genotype"] == rb["genotype"]
    # only rank 0 wrote: one manifest that records the processes, one history
    manifest = runs.RunDir(root / "two").read_json("manifest.json")
    assert manifest["processes"] == 2 and len(a["rng_ranks"]) == 2


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(two_process_run, tmp_path):
    root, cfg, _, _ = two_process_run
    slow = _config(tmp_path / "slow.toml", epochs=3)
    killed = _torchrun(2, "search", *SMOKE, "--config", str(slow), "--out", str(tmp_path / "killed"))
    history = _first_epoch(tmp_path / "killed")
    for pid in _workers(killed):  # both workers (torchrun starts them in sessions of their own), then torchrun
        os.kill(pid, signal.SIGKILL)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    done = len(history.read_text().splitlines())
    assert 1 <= done < 3, f"the run ended before it could be killed ({done} epochs)"
    resumed = _torchrun(2, "resume", str(tmp_path / "killed"))
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out
    assert f"resuming {tmp_path / 'killed'} after epoch {done}" in out
    a, b = _state(tmp_path / "killed"), _state(root / "two")
    assert a["epoch"] == b["epoch"] == 3
    for part in ("supernet", "posterior"):
        for key in b[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert len(history.read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_and_keeps_what_was_saved(tmp_path):
    slow = _config(tmp_path / "slow.toml", epochs=50)
    proc = _torchrun(2, "search", *SMOKE, "--config", str(slow), "--out", str(tmp_path / "run"))
    history = _first_epoch(tmp_path / "run")
    rank1 = [pid for pid in _workers(proc) if b"\0RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    # torchrun names the rank that died; rank 0, when it sees the broken collective before torchrun stops it, says
    # what to do (a race: either may come first)
    assert "local_rank: 1" in out and "SIGKILL" in out, out[-3000:]
    if "Another process of this run probably stopped" in out:
        assert "continue with `torchrun --nproc-per-node=2 -m vnas resume RUN_FOLDER`" in out
    # what was saved is whole and resumable by two processes
    state = runs.RunDir(tmp_path / "run").load_checkpoint()
    assert state["epoch"] >= 1 and len(history.read_text().splitlines()) >= 1
    assert len(state["rng_ranks"]) == 2


def test_a_world_that_does_not_divide_the_batch_is_refused(tiny_data_cpu):
    cfg = search.load_search_config("darts", run_mode="smoke", epochs=1)  # batch 16
    with pytest.raises(distributed.DistributedError, match=r"batch_size=16 is not divisible by the world size 3.*"
                                                           r"--nproc-per-node 2 or 4 or 8"):
        search.Search(cfg, dataset=tiny_data_cpu, progress=False, group=distributed.Group(0, 3))
    with pytest.raises(distributed.DistributedError, match="accumulate=4 micro-batches do not divide"):
        search.Search(search.load_search_config("darts", run_mode="smoke", accumulate=4), dataset=tiny_data_cpu,
                      progress=False, group=distributed.Group(0, 8))
    with pytest.raises(ValueError, match="accumulate=3 must divide batch_size=16"):
        search.load_search_config("darts", run_mode="smoke", accumulate=3)


def test_a_run_resumed_by_another_number_of_processes_is_refused(tmp_path, tiny_data_cpu):
    cfg = search.load_search_config("darts", run_mode="smoke", epochs=1)
    search.start(cfg, tmp_path / "run", dataset=tiny_data_cpu, progress=False).fit(log=None)
    with pytest.raises(runs.RunError, match=r"made by 1 process\(es\) and is resumed by 2.*python -m vnas resume"):
        search.resume(tmp_path / "run", dataset=tiny_data_cpu, progress=False, group=distributed.Group(0, 2))


def test_train_and_other_commands_refuse_torchrun(monkeypatch, capsys):
    from vnas import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "--genotype", "DARTS_V2", "--mode", "smoke", "--out", "unused"]) == 2
    assert "`train` runs in one process" in capsys.readouterr().err


def test_one_process_group_is_a_no_op():
    group = distributed.Group()
    t = torch.tensor([1.0, 2.0])
    group.mean_([t])
    assert group.main and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert group.shard((t,), 1) == (t,) and group.broadcast("x") == "x" and group.gather(3) == [3]
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != 7


@pytest.fixture(scope="module")
def tiny_data_cpu():
    from vnas import data

    return data.load_cifar10(tiny=True)
