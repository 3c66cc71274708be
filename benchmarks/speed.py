"""Training and inference speed against the hardware floor, measured in one run; one JSON line.

The data are ``multidgd.datasets.synthetic`` counts of the requested shape (cluster and batch
structure, RNA 7 % and ATAC 3 % non-zero, log-normal libraries). Training runs with the
default settings (batch 128, no validation split, so an epoch is the training pass and the
per-epoch representation step) for ``--epochs`` epochs; the first (which compiles) is not
counted.

The floor is measured in the same process on the same batch shapes: forward plus backward
(weight and input gradients) of the decoder alone, on dense random input, with a random
output gradient, for every minibatch of an epoch. These are the matmuls any implementation
of the model has to do; everything else (the loss, the optimisers, data handling) is
overhead. A shared machine's speed drifts, so every counted epoch is followed by one floor
pass: ``ratio_to_floor`` is the median of the per-epoch ratios, ``seconds_per_epoch`` and
``floor_seconds_per_epoch`` the medians of each.

Inference: ``--infer-cells`` new cells of the same shape are placed with the best-start
search (every basal component x covariate class) plus ``--infer-steps`` steps (the path
without the start encoder, ``start="search"``), then, in the same run, with the default
(the start encoder fitted after training, its steps, every candidate still scored):
``infer_speedup`` is the ratio of the two times.
Its floor: the decoder forward on the candidates, the candidates' scores as one dense
(cells x features) @ (features x candidates) matmul, and per step a forward plus an input
gradient of the decoder on the new cells; measured right before and right after the
inference, ``infer_floor_seconds`` is the mean of the two.

    python benchmarks/speed.py --cells 5600 --genes 13431 --peaks 116490 --dtype float32
    python benchmarks/speed.py --cells 5600 --dtype bfloat16 --epochs 4
    python benchmarks/speed.py --cells 69249 --device cuda --dtype float32 bfloat16   # one data set, two lines

With several ``--dtype`` values the data are built once and each precision gets its own model
(one JSON line each; on CUDA, ``peak_gpu_mb`` is that model's peak; the RSS peaks are the
process's, so a later precision's include what the earlier ones held).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch


def _peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024.0 if sys.platform != "darwin" else ru / 2**20


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: clear_refs 5); False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _stage(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    # like multidgd.module.autocast, kept here so the script also runs against versions without it
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def decoder_floor(decoder, batch_sizes: list[int], device, dtype: str, *, weight_grad: bool, repeats: int = 2) -> float:
    """Seconds of forward + backward of ``decoder`` over minibatches of the given sizes (best of repeats)."""
    in_dim = decoder.trunk[0].in_features if len(decoder.trunk) else next(iter(decoder.heads.values()))[0].in_features
    gen = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(n, in_dim, generator=gen).to(device) for n in set(batch_sizes)}
    params = list(decoder.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(weight_grad)
    grads = {}
    try:

        def one(n: int) -> None:
            z = inputs[n].detach().requires_grad_(True)
            with _autocast(device, dtype):
                h = decoder.trunk(z)
                outs = [head(h) for head in decoder.heads.values()]
            if n not in grads:
                grads[n] = [torch.randn(o.shape, generator=gen).to(device, o.dtype) for o in outs]
            torch.autograd.backward(outs, grads[n])
            for p in params:
                p.grad = None

        one(batch_sizes[0])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for n in batch_sizes:
                one(n)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def infer_floor(decoder, n_cells, n_candidates, n_features, n_steps, batch_size, device, dtype) -> float:
    """Seconds of the matmuls inference must do (see the module docstring)."""
    in_dim = decoder.trunk[0].in_features
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device, dtype):
            h = decoder.trunk(torch.randn(n_candidates, in_dim, generator=gen).to(device))
            outs = [head(h) for head in decoder.heads.values()]
        x = torch.randn(min(n_cells, batch_size), n_features, generator=gen).to(device)
        cand = torch.randn(n_features, n_candidates, generator=gen).to(device)
        for start in range(0, n_cells, batch_size):
            n = min(batch_size, n_cells - start)
            with _autocast(device, dtype):
                _ = x[:n] @ cand
        _sync(device)
        search = time.perf_counter() - t0
        del outs, x, cand
    sizes = [min(batch_size, n_cells - s) for s in range(0, n_cells, batch_size)]
    steps = decoder_floor(decoder, sizes, device, dtype, weight_grad=False, repeats=1) if n_steps else 0.0
    return search + n_steps * steps


def main(argv=None) -> list[dict]:
    """Parse the arguments, build the data once and measure each precision (one JSON line each)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=5600, help="training cells")
    p.add_argument("--genes", type=int, default=13431)
    p.add_argument("--peaks", type=int, default=116490)
    p.add_argument(
        "--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32"], help="one result line per precision"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (the first is not counted)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--infer-cells", type=int, default=700, help="new cells to place (0: skip inference)")
    p.add_argument("--infer-steps", type=int, default=50)
    p.add_argument("--clusters", type=int, default=22, help="cell types = basal components")
    p.add_argument("--batches", type=int, default=4, help="batch classes = covariate candidates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--floor-repeats", type=int, default=1, help="floor passes after each epoch (best is kept)")
    p.add_argument("--stack-dump-seconds", type=float, default=0, help="print every thread's stack this often (0: off)")
    args = p.parse_args(argv)
    if args.stack_dump_seconds > 0:  # where a long run spends its time, without a profiler
        import faulthandler

        faulthandler.dump_traceback_later(args.stack_dump_seconds, repeat=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from multidgd.datasets import synthetic

    device = torch.device(args.device)
    t0 = time.perf_counter()
    total = args.cells + args.infer_cells
    mdata = synthetic(total, args.genes, args.peaks, n_clusters=args.clusters, n_batches=args.batches, seed=args.seed)
    build_seconds = time.perf_counter() - t0
    _stage(f"synthetic data built in {build_seconds:.1f} s")
    if args.infer_cells:
        train, new = mdata[: args.cells].copy(), mdata[args.cells :].copy()
    else:
        train, new = mdata, None  # no copy of the whole data set
    del mdata
    results = []
    for dtype in args.dtype:  # one data set, one model per precision
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = measure(train, new, dtype, device, args)
        out["synthetic_seconds"] = round(build_seconds, 2)
        print(json.dumps(out), flush=True)
        results.append(out)
    return results


def measure(train, new, dtype: str, device: torch.device, args) -> dict:
    """Train ``train`` for ``args.epochs`` epochs in ``dtype`` beside floor passes; then place ``new``."""
    from multidgd import DGD, TrainConfig
    from multidgd.inference import DEFAULT_STEPS
    from multidgd.train import fit

    model = DGD(train, cell_type_key="cell_type", covariate_keys="batch")
    extra = {} if dtype == "float32" else {"precision": dtype}
    cfg = TrainConfig(batch_size=args.batch_size, validation_fraction=0.0, early_stopping=False, **extra)
    t0 = time.perf_counter()
    model.train(1, seed=args.seed, device=device, config=cfg, progress_bar=False)
    _stage(f"{dtype}: first epoch (with the start) in {time.perf_counter() - t0:.1f} s")
    # counted epochs continue the training (the optimisers' moments restart after the first)
    kw = {"config": cfg, "device": device, "seed": args.seed, "progress_bar": False, "keep_training_state": True}
    decoder = model.module.decoder
    sizes = [min(args.batch_size, args.cells - s) for s in range(0, args.cells, args.batch_size)]
    epoch_s, floor_s = [], []
    for epoch in range(2, args.epochs + 1):  # each counted epoch beside its own floor pass
        fit(model.state, model.data, max_epochs=epoch, **kw)
        epoch_s.append(float(model.history["seconds"].iloc[-1]))
        floor_s.append(decoder_floor(decoder, sizes, device, dtype, weight_grad=True, repeats=args.floor_repeats))
        _stage(f"{dtype}: epoch {epoch} {epoch_s[-1]:.2f} s, floor {floor_s[-1]:.2f} s")
    model.state.optimizer_states = model.state.best_snapshot = None  # as after DGD.train
    if args.infer_cells:
        model.fit_encoder()  # as DGD.train does at its end, for the decoder as it is now
    first = float(model.history["seconds"].iloc[0])
    steady = statistics.median(epoch_s) if epoch_s else first
    floor = statistics.median(floor_s) if floor_s else None  # None: only the first epoch was run
    ratio = statistics.median(e / f for e, f in zip(epoch_s, floor_s, strict=True)) if epoch_s else None

    out = {
        "cells": args.cells,
        "genes": args.genes,
        "peaks": args.peaks,
        "dtype": dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seconds_per_epoch": round(steady, 3),
        "first_epoch_seconds": round(first, 3),
        "floor_seconds_per_epoch": None if floor is None else round(floor, 3),
        "ratio_to_floor": None if ratio is None else round(ratio, 3),
        "epoch_seconds": [round(x, 3) for x in epoch_s],
        "floor_seconds": [round(x, 3) for x in floor_s],
        "cells_per_second": round(args.cells / steady, 1),
        "final_train_loss": float(model.history["train_loss"].iloc[-1]),
    }
    out["train_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    if device.type == "cuda":
        out["train_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(out), file=sys.stderr, flush=True)  # the training part, before inference
    peaks = []
    if new is not None:
        kw = {"device": device, "progress_bar": False, "n_steps": args.infer_steps, "start": "search"}
        n_cand = model.module.basal.n_components * int(np.prod([m.n_components for m in model.module.covariates]))
        floor_args = (decoder, args.infer_cells, n_cand, args.genes + args.peaks, args.infer_steps, 512, device)
        before = infer_floor(*floor_args, dtype)
        peaks = [_peak_rss_mb()]
        windowed = _reset_peak_rss()
        t0 = time.perf_counter()
        model.infer(new, **kw)
        _sync(device)
        infer_s = time.perf_counter() - t0
        if windowed:  # the inference alone (with the model and both data sets held)
            out["infer_peak_rss_mb"] = round(_peak_rss_mb(), 1)
        peaks.append(_peak_rss_mb())
        after = infer_floor(*floor_args, dtype)
        ifloor = (before + after) / 2
        t0 = time.perf_counter()  # the default: start encoder (fitted after training) and its steps
        model.infer(new, device=device, progress_bar=False)
        _sync(device)
        fast_s = time.perf_counter() - t0
        out.update(
            {
                "infer_cells": args.infer_cells,
                "infer_candidates": n_cand,
                "infer_steps": args.infer_steps,
                "infer_seconds": round(infer_s, 3),
                "infer_floor_seconds": round(ifloor, 3),
                "infer_floor_before_after_seconds": [round(before, 3), round(after, 3)],
                "infer_ratio_to_floor": round(infer_s / ifloor, 3),
                "infer_default_seconds": round(fast_s, 3),
                "infer_default_steps": DEFAULT_STEPS["encoder"],
                "infer_speedup": round(infer_s / fast_s, 2),
                "encoder_fit_seconds": model.encoder_record["seconds"],
            }
        )
    out["peak_rss_mb"] = round(max([_peak_rss_mb(), *peaks]), 1)
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


if __name__ == "__main__":
    main()
