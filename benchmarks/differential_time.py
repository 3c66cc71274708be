"""Seconds and peak memory of one-against-rest tests over every group, per modality. One JSON line.

The model's own cells keep their representations; cells of the file the model lacks are
placed with :meth:`multidgd.DGD.infer` first (timed apart). Peak memory is the process's
resident-set high-water mark (``VmHWM``) after loading and after the test.

    python benchmarks/differential_time.py DATA.h5mu MODEL.pt --groupby cell_type --modality atac
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Run the test once and print its time and memory as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("model")
    parser.add_argument("--groupby", required=True)
    parser.add_argument("--modality", choices=["rna", "atac"], default="rna")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-cells", type=int, default=1000)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from multidgd import DGD, io

    data = io.read(args.data)
    model = DGD.load(args.model)
    out = {"data": Path(args.data).name, "modality": args.modality, "threads": args.threads, "cells": data.n_obs}
    out["peak_mb_loaded"] = round(_peak_mb())
    known = data.obs_names.isin(model.obs_names[(model.split != "none").to_numpy()])
    embedding = None
    t0 = time.perf_counter()
    if not known.all():
        embedding = model.infer(data[~known].copy(), progress_bar=False)
    out["infer_s"] = round(time.perf_counter() - t0, 1)
    out["cells_placed"] = int((~known).sum())
    t0 = time.perf_counter()
    table = (model.differential_expression if args.modality == "rna" else model.differential_accessibility)(
        data, groupby=args.groupby, embedding=embedding, n_cells=args.n_cells, progress_bar=False
    )
    out["test_s"] = round(time.perf_counter() - t0, 1)
    out["peak_mb"] = round(_peak_mb())
    out["comparisons"] = int(table["comparison"].nunique())
    out["features"] = int(len(table) // out["comparisons"])
    out["called_median"] = float(np.median(table.groupby("comparison")["is_de_fdr"].sum()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
