"""float32 against bfloat16 training on the same data, seed and epochs; one JSON line.

Both runs use the default settings with early stopping off, so they take the same number
of epochs; the result is each run's final validation NLL (RNA + ATAC, per cell) and their
relative difference, with seconds per epoch (median over the epochs after the first).

    python benchmarks/precision.py                     # the bundled demo file
    python benchmarks/precision.py DATA.h5mu --cell-type-key cell_type --batch-key sample --epochs 100
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def main(argv=None) -> dict:
    """Parse the arguments, train in each precision and print the comparison as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="h5mu file (default: the bundled demo)")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--batch-key", default="sample")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from multidgd import DGD, TrainConfig, datasets
    from multidgd.io import read

    mdata = datasets.demo() if args.data is None else read(args.data)
    out: dict = {"data": args.data or "demo", "epochs": args.epochs, "seed": args.seed, "device": args.device}
    for precision in ("float32", "bfloat16"):
        model = DGD(mdata, cell_type_key=args.cell_type_key, covariate_keys=args.batch_key)
        cfg = TrainConfig(early_stopping=False, precision=precision)
        model.train(args.epochs, seed=args.seed, device=args.device, config=cfg, progress_bar=False)
        h = model.history
        out[f"{precision}_val_nll"] = round(float(h["val_reconstruction"].iloc[-1]), 3)
        out[f"{precision}_best_val_nll"] = round(float(h["val_reconstruction"].min()), 3)
        out[f"{precision}_seconds_per_epoch"] = round(float(statistics.median(h["seconds"].iloc[1:])), 3)
    out["relative_difference"] = round(out["bfloat16_val_nll"] / out["float32_val_nll"] - 1.0, 5)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
