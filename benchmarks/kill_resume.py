"""kill -9 during training at random moments, then resume: is nothing lost? One JSON line.

A child process trains on the bundled demo data with a checkpoint every epoch
(``DGD.train(resume=True)``); once the child has written a checkpoint, the parent waits a
random time and kills it with SIGKILL, ``--kills`` times in a row, every other time as soon
as the next checkpoint write is under way (its ``checkpoint.pt.tmp`` exists). After each
kill the checkpoint must load. Then the run is resumed to the end and compared with an
uninterrupted run of the same seed and threads: latents, covariate representations and
the loss history must be identical (max difference 0), and no temporary file may be left
beside the checkpoint.

    python benchmarks/kill_resume.py --kills 10 --epochs 60 --workdir kill_bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def _child(checkpoint: str, epochs: int, seed: int, threads: int, out: str) -> None:
    """Train (resuming when the checkpoint exists) and save the latents and history to ``out``."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from multidgd import DGD, TrainConfig, datasets

    model = DGD(datasets.demo(), cell_type_key="cell_type", covariate_keys="sample")
    config = TrainConfig(checkpoint_every=1, early_stopping=False)
    print("ready", flush=True)  # the parent's clock starts here
    model.train(
        epochs, seed=seed, device="cpu", config=config, checkpoint_path=checkpoint, resume=True, progress_bar=False
    )
    history = model.history.drop(columns="seconds")
    np.savez(
        out,
        latent=model.get_latent_representation(),
        covariate=model.get_covariate_matrix(),
        history=history.to_numpy(),
    )


def _start(args, checkpoint: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(checkpoint), str(args.epochs), str(args.seed), str(args.threads)]
    return subprocess.Popen([*cmd, str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _kill_once(args, checkpoint: Path, during_write: bool, rng: random.Random) -> dict:
    """Start a (resuming) child, kill it with SIGKILL; then check that the checkpoint loads."""
    from multidgd import checkpoint as ckpt

    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    proc = _start(args, checkpoint, checkpoint.parent / "unused.npz")
    t0 = time.perf_counter()
    proc.stdout.readline()  # "ready": the data are read, training (or resuming) starts now
    ready = time.time()
    while proc.poll() is None and not _written_since(checkpoint, ready):  # this child's first checkpoint
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, args.max_wait))
    caught_write = False
    while during_write and proc.poll() is None:  # the next checkpoint write this child begins
        if _written_since(tmp, ready):
            caught_write = True
            break
        time.sleep(0.0005)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = None
    if not checkpoint.exists():
        loads = "no checkpoint yet"  # killed while the first one was written: resume starts afresh
    else:
        try:
            epoch = int(ckpt.read(checkpoint, kind=ckpt.CHECKPOINT_KIND)["epoch"])
            loads = True
        except Exception as err:  # noqa: BLE001 - reported, not raised
            loads, epoch = False, repr(err)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "aimed_at_write": during_write,
        "killed_during_a_write": caught_write,
        "finished_before_kill": finished,
        "checkpoint_loads": loads,
        "checkpoint_epoch": epoch,
    }


def _run_to_end(args, checkpoint: Path, out: Path) -> None:
    proc = _start(args, checkpoint, out)
    proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"training child failed with status {proc.returncode}")


def main(argv=None) -> dict:
    """Parse the arguments, run the kills and the comparison, and print the result as JSON."""
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-wait", type=float, default=4.0, help="longest random wait before a kill (s)")
    p.add_argument("--workdir", default="kill_bench")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        path, epochs, seed, threads, out = args.child
        _child(path, int(epochs), int(seed), int(threads), out)
        return {}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("reference.pt", "killed.pt", "killed.pt.tmp", "reference.pt.tmp"):
        (work / name).unlink(missing_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    _run_to_end(args, work / "reference.pt", work / "reference.npz")
    reference_seconds = time.perf_counter() - t0
    kills = [_kill_once(args, work / "killed.pt", during_write=i % 2 == 1, rng=rng) for i in range(args.kills)]
    _run_to_end(args, work / "killed.pt", work / "resumed.npz")
    ref, res = np.load(work / "reference.npz"), np.load(work / "resumed.npz")
    diff = {k: float(np.nanmax(np.abs(ref[k] - res[k]))) if ref[k].shape == res[k].shape else None for k in ref}
    result = {
        "data": "demo",
        "epochs": args.epochs,
        "threads": args.threads,
        "reference_seconds": round(reference_seconds, 1),
        "kills": kills,
        "every_checkpoint_loads": all(k["checkpoint_loads"] is not False for k in kills),
        "kills_during_a_write": sum(k["killed_during_a_write"] and not k["finished_before_kill"] for k in kills),
        "max_abs_difference": diff,
        "temporary_files_left": sorted(p.name for p in work.glob("*.tmp")),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
