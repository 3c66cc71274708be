"""scIB metrics of saved latents on evaluate's split: a multidgd model, a plain PCA, MultiVI's latent.

The same table as ``multidgd evaluate --scib`` (:func:`multidgd.evaluation.scib_scores` on
the training cells), for a model saved by ``evaluate`` and, optionally, MultiVI latents of
the training cells saved by ``--train-multivi`` (MultiVI trained on the same seeded split
with ``max_epochs`` 150, as in docs/benchmarks.md), so the slow MultiVI runs are kept apart.

    python benchmarks/scib_latents.py DATA.h5mu --seed S --train-multivi DIR        # MultiVI latent -> DIR
    python benchmarks/scib_latents.py DATA.h5mu --seed S --model sS/model.pt [--multivi DIR]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Run from the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--multivi", default=None, help="folder of multivi_latent_sS.npy")
    p.add_argument("--train-multivi", default=None, help="train MultiVI and save its latent into this folder")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--batch-key", default="sample")
    args = p.parse_args()

    import mudata as md

    from multidgd import DGD
    from multidgd.data import read_multiome
    from multidgd.evaluation import check_evaluation_inputs
    from multidgd.evaluation.scib import PLAIN, plain_embedding, scib_scores

    md.set_options(pull_on_update=False)
    data = md.read_h5mu(args.data)
    compare = ["multivi"] if args.train_multivi else []
    inputs = check_evaluation_inputs(
        data, cell_type_key=args.cell_type_key, batch_key=args.batch_key, seed=args.seed, compare=compare
    )
    is_train = inputs.split == "train"
    if args.train_multivi:
        from multidgd.evaluation.multivi import multivi_metrics

        t0 = time.perf_counter()
        kw = {"cell_types": inputs.cell_types, "batches": inputs.batches, "seed": args.seed, "max_epochs": 150}
        mv = multivi_metrics(data, inputs.split, **kw)
        np.save(Path(args.train_multivi, f"multivi_latent_s{args.seed}.npy"), mv.latent)
        print(json.dumps({"seed": args.seed, "multivi_seconds": round(time.perf_counter() - t0, 1)}))
        return
    model = DGD.load(args.model)
    if not np.array_equal((model.split == "train").to_numpy(), is_train):
        raise ValueError("the model's training cells are not those of evaluate's split for this seed")
    counts = read_multiome(data)
    rows = counts.obs_names.get_indexer(inputs.obs_names[is_train])
    embeddings = {
        "multidgd": model.get_latent_representation()[is_train],
        PLAIN: plain_embedding(counts, rows, seed=args.seed),
    }
    if args.multivi:
        embeddings["multivi"] = np.load(Path(args.multivi, f"multivi_latent_s{args.seed}.npy"))
    t0 = time.perf_counter()
    table = scib_scores(embeddings, inputs.cell_types[is_train], inputs.batches[is_train], pre_integrated=PLAIN)
    out = {"data": Path(args.data).name, "seed": args.seed, "cells": int(is_train.sum()), "scib": table}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
