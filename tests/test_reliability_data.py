"""Bad data through the command line: each case fails with a clear message (exit status 2) or is
handled with a warning (exit status 0), never with a traceback, and the input file is left as it was."""

from __future__ import annotations

import logging
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd.cli import main

from .conftest import make_mudata
from .test_data import matrix_with_duplicates

N_CELLS = 160


def _with_obs(m: md.MuData, name: str, values) -> md.MuData:
    obs = m.obs.copy()
    obs[name] = values
    m.obs = obs
    return m


def _duplicates(fmt: str = "csr") -> md.MuData:
    m = make_mudata(n_cells=N_CELLS, seed=11)
    m.mod["rna"].X = matrix_with_duplicates(m["rna"].X, fmt)[0]
    return m


def _large_counts() -> md.MuData:
    m = make_mudata(n_cells=N_CELLS, seed=11)
    x = m["atac"].X.toarray().astype(np.float64)
    x[3, 4] = 2**24 + 1
    m.mod["atac"].X = sp.csr_matrix(x)
    return m


def _tiny_classes() -> md.MuData:
    m = make_mudata(n_cells=N_CELLS, seed=11)
    batch = m.obs["batch"].astype(str).to_numpy().copy()
    batch[0] = "rare"
    return _with_obs(m, "batch", pd.Categorical(batch))


def _continuous(name: str, values) -> md.MuData:
    return _with_obs(make_mudata(n_cells=N_CELLS, seed=11), name, values)


AGE = np.random.default_rng(0).normal(40.0, 10.0, N_CELLS)

#: id -> (build the file's data, suffix, command-line arguments, exit status, words of the message)
CASES = {
    "duplicate-entries": (_duplicates, "h5mu", ["train"], 0, ["'rna' (X)", "3 stored entries", "in 2 cells"]),
    "duplicate-entries-csc": (lambda: _duplicates("csc"), "h5mu", ["train"], 0, ["3 stored entries", "summed"]),
    "duplicate-entries-backed": (
        _duplicates,
        "h5mu",
        ["train", "--backed"],
        0,
        ["3 stored entries", "each time rows are read", "sum_duplicates()"],
    ),
    "duplicate-entries-new-cells": (_duplicates, "h5mu", ["embed"], 0, ["3 stored entries", "sum_duplicates()"]),
    "counts-above-2**24": (_large_counts, "h5mu", ["train"], 0, ["'atac' (X)", "1 counts exceed 2**24", "16777217"]),
    "tiny-classes": (
        _tiny_classes,
        "h5mu",
        ["train", "--covariate-keys", "batch"],
        0,
        ["'batch'", "fewer than 3 cells", "'rare' (1 cell)"],
    ),
    "continuous-covariate": (
        lambda: _continuous("age", AGE),
        "h5mu",
        ["train", "--covariate-keys", "age"],
        2,
        ["'age'", "160 distinct values in 160 cells", "continuous", "pd.cut", "astype('category')"],
    ),
    "continuous-cell-type": (
        lambda: _continuous("age", AGE),
        "h5mu",
        ["train", "--cell-type-key", "age"],
        2,
        ["'age'", "160 distinct values", "categorical"],
    ),
    "integer-ids-as-covariate": (
        lambda: _continuous("cell_number", np.arange(N_CELLS)),
        "h5mu",
        ["train", "--covariate-keys", "cell_number"],
        2,
        ["'cell_number'", "int64", "160 distinct values"],
    ),
    "not-an-hdf5-file": (None, "h5mu", ["train"], 2, ["cannot be read as a MuData", "not an HDF5 file"]),
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from multidgd import DGD, ModelConfig, TrainConfig

    model = DGD(make_mudata(n_cells=N_CELLS, seed=11), config=ModelConfig(hidden_dim=8, latent_dim=4))
    model.train(max_epochs=1, device="cpu", config=TrainConfig(batch_size=64), progress_bar=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    model.save(path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_through_the_cli(case, tmp_path, capsys, caplog, request):
    build, suffix, command, status, words = CASES[case]
    path = tmp_path / f"data.{suffix}"
    if build is None:
        path.write_bytes(b"this is not an HDF5 file\n" * 10)
    else:
        build().write(path)
    raw = path.read_bytes()
    if command[0] == "embed":
        args = ["embed", str(request.getfixturevalue("model_path")), str(path), "--out", str(tmp_path / "e.h5mu")]
        args += ["--steps", "1"]
    else:
        args = [*command[:1], str(path), *command[1:], "--out", str(tmp_path / "out"), "--max-epochs", "1"]
        args += ["--batch-size", "32"]
    with caplog.at_level(logging.WARNING):
        code = main([*args, "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert code == status, text
    assert "Traceback" not in text
    if status == 2:
        assert captured.err.startswith("multidgd: error: ")
        message = captured.err
    else:
        message = caplog.text
    for word in words:
        assert word in message, (word, message)
    assert path.read_bytes() == raw  # the input file is left as it was


def test_duplicates_file_holds_duplicates(tmp_path):
    """The duplicate cases really store repeated entries on disk (anndata keeps them as given)."""
    path = tmp_path / "d.h5mu"
    _duplicates().write(path)
    x = md.read_h5mu(path)["rna"].X
    assert x.nnz == make_mudata(n_cells=N_CELLS, seed=11)["rna"].X.nnz + 3


def test_no_ari_when_every_cell_type_has_one_cell(tmp_path, caplog):
    """With one cell per cell type the ARI would be 1.000 by construction: it is not reported."""
    import json

    m = make_mudata(n_cells=40, n_batches=1, seed=2)
    m = _with_obs(m, "cell_type", pd.Categorical([f"c{i}" for i in range(40)]))
    path = tmp_path / "unique.h5mu"
    m.write(path)
    args = ["train", str(path), "--out", str(tmp_path / "out"), "--cell-type-key", "cell_type"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--max-epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "ari_clusters_vs_cell_type" not in summary
    assert "ARI against cell types is not reported" in caplog.text
