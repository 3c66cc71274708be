"""Peak memory of training from a backed file at several cell counts; one JSON line.

For each ``--cells`` value: a separate process writes ``multidgd.datasets.synthetic`` counts
of that shape to an ``.h5mu`` file (X as CSR), then another process opens it backed
(``multidgd.io.read(path, backed=True)``), trains ``--epochs`` epochs with the defaults
(batch 128, 10 % validation, PCA start), and reports its peak RSS (ru_maxrss). With
``--in-memory`` the same training also runs on the file read into memory, for comparison.
Count rows are read per minibatch, so what grows with the cells is only what is kept per
cell: representation tables with their Adam state (``table_mb``), and the cell names,
library sizes, label codes and row pointers (``cell_metadata_mb``); peak RSS without
those (``rss_beyond_cell_state_mb``) should not depend on the number of cells.

    python benchmarks/backed_memory.py --cells 50000 200000 --genes 1000 --peaks 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write(path: str, cells: int, genes: int, peaks: int, seed: int) -> None:
    from multidgd.datasets import synthetic

    t0 = time.perf_counter()
    synthetic(cells, genes, peaks, seed=seed).write(path)
    print(json.dumps({"write_seconds": round(time.perf_counter() - t0, 1)}))


def _train(path: str, backed: bool, epochs: int, threads: int) -> None:
    import torch

    from multidgd import DGD, TrainConfig
    from multidgd.io import read

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = read(path, backed=backed)
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"])
    t_read = time.perf_counter() - t0
    model.train(max_epochs=epochs, seed=0, device="cpu", config=TrainConfig(early_stopping=False), progress_bar=False)
    tables = model.state.tables
    table_mb = sum(t.values.numel() * 4 * 5 + t.steps.numel() * 8 for t in tables.values()) / 2**20
    cell_mb = _cell_metadata_bytes(model) / 2**20
    seconds = model.history["seconds"].tolist()
    print(
        json.dumps(
            {
                "backed": backed,
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "read_and_check_seconds": round(t_read, 1),
                "seconds_per_epoch": round(seconds[-1], 1),
                "total_seconds": round(time.perf_counter() - t0, 1),
                "table_mb": round(table_mb, 1),
                "cell_metadata_mb": round(cell_mb, 1),
                "rss_beyond_cell_state_mb": round(_peak_rss_mb() - table_mb - cell_mb, 1),
            }
        )
    )


def _cell_metadata_bytes(model) -> int:
    """Bytes of what is kept per cell besides the tables: the cell names (one copy of the
    strings, a pointer per index that holds them), library sizes, label codes and the row
    pointers, row order and row sums of each backed matrix.
    """
    from multidgd._backed import BackedCSR

    d = model.data
    names = sum(sys.getsizeof(s) for s in d.obs_names) + 8 * 4 * d.n_cells  # MuData, modality, data, model
    arrays = [d.library_size, d.covariate_codes, d.kept]
    arrays += [a for a in (d.cell_type_codes, d.split) if a is not None]
    index = sum(x.index_nbytes for x in d.counts.values() if isinstance(x, BackedCSR))
    return names + index + sum(a.nbytes for a in arrays)


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    """Parse the arguments; run one child per measurement (or be that child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--peaks", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="backed_bench")
    p.add_argument("--in-memory", action="store_true", help="also train on the file read into memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child-write", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--child-train", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_write:
        path, cells, genes, peaks, seed = args.child_write
        return _write(path, int(cells), int(genes), int(peaks), int(seed))
    if args.child_train:
        path, backed, epochs, threads = args.child_train
        return _train(path, backed == "1", int(epochs), int(threads))

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result = {"genes": args.genes, "peaks": args.peaks, "epochs": args.epochs, "threads": args.threads, "runs": []}
    for cells in args.cells:
        path = work / f"synthetic_{cells}x{args.genes}x{args.peaks}.h5mu"
        run = {"cells": cells}
        if not path.exists():
            run.update(_child("--child-write", str(path), str(cells), str(args.genes), str(args.peaks), str(args.seed)))
        run["file_mb"] = round(path.stat().st_size / 2**20, 1)
        run["backed"] = _child("--child-train", str(path), "1", str(args.epochs), str(args.threads))
        if args.in_memory:
            run["in_memory"] = _child("--child-train", str(path), "0", str(args.epochs), str(args.threads))
        result["runs"].append(run)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
