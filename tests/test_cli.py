import json

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd.cli import main
from multidgd.io import read

from .conftest import shared_file

EXPECTED_FILES = {"model.pt", "checkpoint.pt", "history.csv", "training_curves.png", "umap.png", "summary.json"}


def _run(args):
    return main([*args, "--max-epochs", "3", "--quiet", "--device", "cpu"])


def test_train_bmmc_with_batch(tmp_path, capsys):
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    out = tmp_path / "bmmc"
    assert (
        _run(["train", str(path), "--out", str(out), "--cell-type-key", "cell_type", "--covariate-keys", "batch"]) == 0
    )
    files = {p.name for p in out.iterdir()}
    assert EXPECTED_FILES | {"multidgd.h5mu", "covariate_batch.png"} <= files
    result = read(out / "multidgd.h5mu")
    assert result.obsm["X_multidgd"].shape == (500, 20)
    assert result.obsm["X_multidgd_batch"].shape == (500, 2)
    assert result.obs["multidgd_cluster"].notna().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["components"] == 21
    assert 0 <= summary["components_used"] <= 21
    assert "ARI clusters vs cell types" in capsys.readouterr().out


def test_train_10x_layout_without_labels(tmp_path):
    path = shared_file("muon_test_pbmc_multiome", "test_rna_atac.h5mu")
    out = tmp_path / "pbmc"
    assert _run(["train", str(path), "--out", str(out)]) == 0
    result = read(out / "multidgd.h5mu")
    z = result.obsm["X_multidgd"]
    # 19 cells have no ATAC counts over these 174 peaks: dropped, NaN outputs
    assert np.isnan(z).any(axis=1).sum() == 19
    assert result.obs["multidgd_cluster"].isna().sum() == 19
    assert json.loads((out / "summary.json").read_text())["components"] == 1


def test_train_single_anndata_with_feature_types(tmp_path):
    m = read(shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu"))
    rna, atac = m["rna"], m["atac"]
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * rna.n_vars + ["Peaks"] * atac.n_vars},
        index=list(rna.var_names) + list(atac.var_names),
    )
    adata = ad.AnnData(sp.hstack([rna.X, atac.X]).tocsr(), obs=m.obs[["cell_type", "batch"]].copy(), var=var)
    adata.write_h5ad(tmp_path / "combined.h5ad")
    out = tmp_path / "combined"
    assert _run(["train", str(tmp_path / "combined.h5ad"), "--out", str(out), "--covariate-keys", "batch"]) == 0
    result = ad.read_h5ad(out / "multidgd.h5ad")
    assert result.obsm["X_multidgd"].shape == (500, 20)
    assert result.obsm["X_multidgd_batch"].shape == (500, 2)


def test_resume_flag(tmp_path):
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    out = tmp_path / "r"
    assert _run(["train", str(path), "--out", str(out)]) == 0
    assert (
        main(["train", str(path), "--out", str(out), "--max-epochs", "5", "--resume", "--quiet", "--device", "cpu"])
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["epochs"] == 5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rna-mod", "gex"], "RNA modality 'gex' not in the MuData"),
        (["--layer", "counts"], "layer 'counts' not in the layers"),
        (["--covariate-keys", "donor_id"], "obs key 'donor_id' not found"),
    ],
)
def test_bad_input_exits_with_message(tmp_path, capsys, args, message):
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    assert _run(["train", str(path), "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_file_type(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a,b\n")
    assert _run(["train", str(tmp_path / "data.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "unknown file type" in capsys.readouterr().err


def test_demo_data_is_bundled():
    from multidgd.datasets import demo

    m = demo()
    assert isinstance(m, md.MuData)
    assert m["rna"].shape == (1723, 1677) and m["atac"].shape == (1723, 25734)
    assert {"cell_type", "sample"} <= set(m.obs.columns)
