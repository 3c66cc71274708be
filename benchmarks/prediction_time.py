"""Seconds to embed held-out cells and predict the modality they lack. One JSON line.

The test cells of a seeded 80/10/10 split (stratified by cell type) are embedded into a
saved model three ways, as ``multidgd evaluate`` does: paired, RNA only and ATAC only;
for the single-modality ones the other modality is then predicted for all cells, once as
the posterior-weighted mean of the candidates' profiles (the default) and once from each
cell's own representation (``prediction="point"``, the earlier behaviour); for the paired
ones both modalities are decoded, blended with the posterior mean (the default) and from
the own representation alone.

    python benchmarks/prediction_time.py DATA.h5mu MODEL.pt --cell-type-key cell_type --seed 0
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    """Time the embeddings and predictions and print them as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("model")
    parser.add_argument("--cell-type-key", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import mudata as md
    import torch

    torch.set_num_threads(args.threads)
    from multidgd import DGD
    from multidgd.evaluation import single_modality, stratified_split

    data = md.read_h5mu(args.data)
    split = stratified_split(data.obs[args.cell_type_key].astype(str).to_numpy(), args.seed)
    test = data[split == "test"].copy()
    model = DGD.load(args.model)
    out = {"data": args.data.split("/")[-1], "test_cells": int(test.n_obs), "threads": args.threads}

    t0 = time.perf_counter()
    paired = model.infer(test, progress_bar=False)
    out["paired_embed_s"] = round(time.perf_counter() - t0, 2)
    for m, getter in (("rna", model.get_normalized_expression), ("atac", model.get_normalized_accessibility)):
        for prediction in ("posterior", "point"):
            t0 = time.perf_counter()
            getter(paired, scale="counts", return_type="array", prediction=prediction)
            out[f"paired_denoise_{m}_{prediction}_s"] = round(time.perf_counter() - t0, 2)
    for present, hidden, getter in (
        ("rna", "atac", model.get_normalized_accessibility),
        ("atac", "rna", model.get_normalized_expression),
    ):
        t0 = time.perf_counter()
        emb = model.infer(single_modality(test, present, hidden), progress_bar=False)
        out[f"{present}_only_embed_s"] = round(time.perf_counter() - t0, 2)
        for prediction in ("posterior", "point"):
            t0 = time.perf_counter()
            getter(emb, scale="counts", return_type="array", prediction=prediction)
            out[f"{present}_only_predict_{hidden}_{prediction}_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
