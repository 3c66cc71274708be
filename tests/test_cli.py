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
    from multidgd import DGD
    from multidgd.prediction import DENOISE_WEIGHTS

    model = DGD.load(out / "model.pt")
    assert model.denoise_record["cells"] > 0 and summary["denoise_own_weight"] == model.denoise_weights
    assert set(summary["denoise_own_weight"].values()) <= set(DENOISE_WEIGHTS)
    assert "ARI clusters vs cell types" in capsys.readouterr().out


def test_train_10x_layout_without_labels(tmp_path, capsys):
    path = shared_file("muon_test_pbmc_multiome", "test_rna_atac.h5mu")
    out = tmp_path / "pbmc"
    assert _run(["train", str(path), "--out", str(out)]) == 0
    result = read(out / "multidgd.h5mu")
    z = result.obsm["X_multidgd"]
    # 19 cells have no ATAC counts over these 174 peaks: left out of training, placed afterwards from their RNA
    assert not np.isnan(z).any()
    assert result.obs["multidgd_cluster"].notna().all()
    assert result.uns["multidgd"]["run"] == "train" and "train_config" in result.uns["multidgd"]
    split = result.obs["multidgd_split"].astype(str)
    assert (split == "placed").sum() == 19 and set(split) == {"train", "validation", "placed"}
    placed = result.obs_names[split == "placed"]
    assert (np.asarray(result["atac"][placed].X.sum(axis=1)).ravel() == 0).all()
    # the cluster probability: p(k | counts) of the written cluster, at the fitted temperature
    from multidgd import DGD

    model = DGD.load(out / "model.pt")
    cl = model.cluster(read(path))
    trained = model.obs_names[cl.labels >= 0]
    pos = model.obs_names.get_indexer(trained)
    written = result.obs.loc[trained]
    np.testing.assert_array_equal(written["multidgd_cluster"].astype(int), cl.labels[pos])
    np.testing.assert_allclose(
        written["multidgd_cluster_probability"], cl.probabilities[pos, cl.labels[pos]], rtol=1e-5, atol=1e-7
    )
    prob = result.obs["multidgd_cluster_probability"].to_numpy()
    assert np.isfinite(prob).all() and (prob > 0).all() and (prob <= 1 + 1e-6).all()
    # placed cells: p(k | counts) from their candidates at the same temperature
    from multidgd.prediction import component_posterior

    emb = model.infer(read(path)[placed].copy(), progress_bar=False)
    post = component_posterior(emb.candidates.nll, emb.candidates.log_prior, model.n_components, cl.temperature)
    written = result.obs.loc[emb.obs_names, "multidgd_cluster_probability"]
    np.testing.assert_allclose(written, post[np.arange(len(post)), emb.cluster], rtol=1e-4)
    assert (prob < 0.999).any()  # not all hard
    # scanpy runs on the written latent
    import scanpy as sc

    sc.pp.neighbors(result, use_rep="X_multidgd")
    sc.tl.umap(result)
    assert np.isfinite(result.obsm["X_umap"]).all()
    sc.tl.leiden(result, flavor="igraph", n_iterations=2, directed=False)
    rna = result["rna"].copy()
    rna.obs["leiden"] = result.obs["leiden"].to_numpy()
    sc.pp.normalize_total(rna)
    sc.pp.log1p(rna)
    sc.tl.rank_genes_groups(rna, "leiden", method="wilcoxon")
    assert len(sc.get.rank_genes_groups_df(rna, group=None)) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cluster_probability"].endswith(f"tempered by {cl.temperature:.3g}")
    assert summary["components"] > 1  # chosen from the data, and said how
    assert summary["components_chosen"].startswith(f"K = {summary['components']} chosen from the data: Leiden")
    assert "chosen from the data: Leiden" in capsys.readouterr().out
    out4 = tmp_path / "pbmc4"
    assert _run(["train", str(path), "--out", str(out4), "--n-components", "4"]) == 0
    summary = json.loads((out4 / "summary.json").read_text())
    assert summary["components"] == 4 and "components_chosen" not in summary
    assert _run(["train", str(path), "--out", str(tmp_path / "bad"), "--n-components", "0"]) == 2
    assert "--n-components must be >= 1" in capsys.readouterr().err


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


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from multidgd import DGD, ModelConfig, TrainConfig

    from .conftest import make_mudata

    data = make_mudata(n_cells=200, n_batches=3, seed=5)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    seen = data[data.obs["batch"].isin(["b0", "b1"]).to_numpy()].copy()
    model = DGD(seen, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=3, device="cpu", config=TrainConfig(batch_size=32), progress_bar=False)
    model.save(path)
    return path, data


def test_embed_naive_and_learn(saved_model, tmp_path, capsys):
    from multidgd import DGD

    model_path, data = saved_model
    query = data[data.obs["batch"].isin(["b1", "b2"]).to_numpy()].copy()
    query.write(tmp_path / "q.h5mu")
    out = tmp_path / "emb.h5mu"
    args = ["embed", str(model_path), str(tmp_path / "q.h5mu"), "--out", str(out), "--steps", "5", "--quiet"]
    assert main([*args, "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cells"] == query.n_obs and "learned_classes" not in summary
    result = read(out)
    assert result.obsm["X_multidgd"].shape == (query.n_obs, 20)
    assert result.obsm["X_multidgd_batch"].shape == (query.n_obs, 2)
    for col in ("multidgd_cluster", "multidgd_nll_rna", "multidgd_nll_atac"):
        assert result.obs[col].notna().all()
    assert main([*args, "--new-classes", "learn", "--device", "cpu"]) == 2  # the earlier output stays
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--new-classes", "learn", "--device", "cpu", "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["learned_classes"] == {"batch": ["b2"]}
    updated = DGD.load(summary["model_out"])
    assert updated.covariate_categories == [["b0", "b1", "b2"]]
    assert DGD.load(model_path).covariate_categories == [["b0", "b1"]]  # the input model is untouched


def test_predict_missing_modality(saved_model, tmp_path, capsys):
    model_path, data = saved_model
    rna = data.mod["rna"][:25].copy()
    rna.obs["batch"] = data.obs["batch"].iloc[:25].to_numpy()
    rna.write(tmp_path / "rna.h5ad")
    out = tmp_path / "pred.h5mu"
    code = main(
        ["predict", str(model_path), str(tmp_path / "rna.h5ad"), "--out", str(out), "--quiet", "--device", "cpu"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predicted_modalities"] == ["atac_predicted"]
    result = read(out)
    assert set(result.mod) == {"rna", "atac_predicted"}
    pred = result.mod["atac_predicted"]
    assert pred.shape == (25, 60)
    # by default predicted ATAC is sparse: the peaks above a flat profile (share >= 1/60)
    assert sp.issparse(pred.X)
    x = pred.X.toarray()
    assert (pred.obs["library_size_source"] == "estimated").all()
    assert result.obs["multidgd_nll_atac"].isna().all()
    # the peaks' coordinates, from their names (chr1:100j-100j+50)
    assert pred.var["chrom"].eq("chr1").all() and pred.var["start"].tolist() == [100 * j for j in range(60)]
    assert (pred.var["end"] - pred.var["start"] == 50).all()
    record = result.uns["multidgd"]
    import multidgd

    assert record["version"] == multidgd.__version__ and record["run"] == "predict"
    assert json.loads(record["settings"])["prediction"] == "posterior"
    assert json.loads(record["model_config"])["latent_dim"] == 20
    # the default prediction is the posterior one, the same as the Python API's
    assert summary["prediction"] == "posterior"
    from multidgd import DGD

    model = DGD.load(model_path)
    emb = model.infer(read(tmp_path / "rna.h5ad"), device="cpu", progress_bar=False)
    posterior = model.get_normalized_accessibility(emb, scale="counts", return_type="array")
    lib = pred.obs["library_size"].to_numpy()[:, None]
    kept = posterior / lib >= 1 / 60
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(x, np.where(kept, posterior, 0), rtol=1e-4)
    # --dense keeps every value: counts = fractions x library size, each row sums to its library size
    args = ["predict", str(model_path), str(tmp_path / "rna.h5ad"), "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "dense.h5mu"), "--dense"]) == 0
    dense = read(tmp_path / "dense.h5mu").mod["atac_predicted"]
    assert not sp.issparse(dense.X)
    np.testing.assert_allclose(dense.X, posterior, rtol=1e-4)
    np.testing.assert_allclose(dense.X.sum(1), dense.obs["library_size"], rtol=1e-4)
    capsys.readouterr()
    for bad, message in (
        (["--dense", "--threshold", "uniform"], "exclude each other"),
        (["--threshold", "x"], "uniform"),
    ):
        assert main([*args, "--out", str(tmp_path / "bad.h5mu"), *bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.h5mu").exists()
    np.testing.assert_allclose(result.obs["multidgd_prediction_certainty"], emb.prediction_certainty, rtol=1e-6)
    assert summary["median_prediction_certainty"] == pytest.approx(np.median(emb.prediction_certainty), abs=1e-4)
    # --prediction point decodes each cell's own representation; a bad temperature is refused
    assert main([*args, "--out", str(tmp_path / "point.h5mu"), "--prediction", "point", "--dense"]) == 0
    point = read(tmp_path / "point.h5mu").mod["atac_predicted"].X
    expected = model.get_normalized_accessibility(emb, scale="counts", return_type="array", prediction="point")
    np.testing.assert_allclose(point.toarray() if sp.issparse(point) else point, expected, rtol=1e-4)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "t.h5mu"), "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err and not (tmp_path / "t.h5mu").exists()


def test_embed_bad_input_exits_with_a_message(saved_model, tmp_path, capsys):
    model_path, data = saved_model
    q = data[:20].copy()
    q.obs = q.obs.drop(columns="batch")
    for m in q.mod.values():
        m.obs = m.obs.drop(columns="batch")
    q.write(tmp_path / "q.h5mu")
    args = ["embed", str(model_path), str(tmp_path / "q.h5mu"), "--out", str(tmp_path / "o.h5mu"), "--quiet"]
    assert main([*args, "--new-classes", "learn"]) == 2  # learning classes needs the labels
    assert "no obs column 'batch'" in capsys.readouterr().err
    assert not (tmp_path / "o.h5mu").exists()
    assert main(args) == 0  # placing cells does not


EVAL_KEYS = {
    "rna_rmse",
    "rna_mae",
    "atac_auprc",
    "nll_rna",
    "nll_atac",
    "rna_from_atac_rmse",
    "atac_from_rna_auprc",
    "ari",
    "batch_1_minus_asw",
    "epochs",
    "seconds_per_epoch",
    "peak_rss_mb",
    "components_used",
    "baseline_rna_rmse",
    "baseline_atac_auprc",
}


def test_evaluate_bmmc(tmp_path, capsys):
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    out = tmp_path / "ev"
    args = ["evaluate", str(path), "--out", str(out), "--cell-type-key", "cell_type", "--batch-key", "batch"]
    data = read(path)
    batch = str(data.obs["batch"].astype(str).iloc[0])
    assert main([*args, "--max-epochs", "2", "--quiet", "--device", "cpu", "--holdout-batch", batch]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert EVAL_KEYS <= set(metrics)
    assert (
        metrics["epochs"] == 2 and metrics["cells_test"] == 500 - metrics["cells_train"] - metrics["cells_validation"]
    )
    assert 0 < metrics["atac_auprc"] <= 1 and metrics["rna_rmse"] > 0
    assert metrics["holdout_loss_ratio_naive"] > 0 and metrics["holdout_loss_ratio_learned"] > 0
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "umap.png", "confusion.png", "training_curves.png", "covariate_batch.png"} <= files
    assert "holdout_covariate_space.png" in files
    assert "| ATAC AUPRC (test) |" in (out / "report.md").read_text()
    capsys.readouterr()
    # the saved model evaluated again: the same test metrics without training
    again = tmp_path / "again"
    assert main([*args[:3], str(again), *args[4:], "--quiet", "--device", "cpu", "--model", str(out / "model.pt")]) == 0
    metrics_again = json.loads((again / "metrics.json").read_text())
    for key in ("rna_rmse", "atac_auprc", "nll_rna", "ari", "epochs", "batch_1_minus_asw"):
        assert metrics_again[key] == pytest.approx(metrics[key], rel=1e-6), key
    assert not (again / "model.pt").exists()
    wrong = main(
        [*args[:3], str(tmp_path / "w"), *args[4:], "--quiet", "--seed", "5", "--model", str(out / "model.pt")]
    )
    assert wrong == 2 and "not trained on these cells with this split" in capsys.readouterr().err
    # a split from a CSV: the same cells as written there
    split = pd.DataFrame({"obs_name": data.obs_names, "split": ["train"] * 400 + ["validation"] * 50 + ["test"] * 50})
    split.to_csv(tmp_path / "split.csv", index=False)
    out2 = tmp_path / "ev2"
    code = main(
        [
            "evaluate",
            str(path),
            "--out",
            str(out2),
            "--cell-type-key",
            "cell_type",
            "--split-csv",
            str(tmp_path / "split.csv"),
        ]
        + ["--max-epochs", "1", "--quiet", "--device", "cpu", "--train-fraction", "0.5", "1"]
    )
    assert code == 0
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["cells_test"] == 50 and metrics["batch_1_minus_asw"] is None
    half, full = metrics["data_fraction"]
    assert full == {
        "train_fraction": 1.0,
        "cells_train": 400,
        "loss_ratio": 1.0,
        "loss_ratio_rna": 1.0,
        "loss_ratio_atac": 1.0,
    }
    # stratified halves: each of the 21 cell types rounds on its own
    assert half["train_fraction"] == 0.5 and abs(half["cells_train"] - 200) <= 21 and half["loss_ratio"] > 0
    assert (out2 / "data_fraction.png").exists() and "| 0.5 |" in (out2 / "report.md").read_text()
    bad = main(["evaluate", str(path), "--out", str(tmp_path / "x"), "--cell-type-key", "nope", "--quiet"])
    assert bad == 2 and "'nope' not found" in capsys.readouterr().err
    bad = main(
        ["evaluate", str(path), "--out", str(tmp_path / "x"), "--cell-type-key", "cell_type", "--quiet"]
        + ["--train-fraction", "0"]
    )
    assert bad == 2 and "--train-fraction must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_evaluate_compare_without_scvi_says_how_to_install(tmp_path, capsys):
    try:
        import scvi  # noqa: F401

        pytest.skip("scvi-tools is installed")
    except ImportError:
        pass
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    out = tmp_path / "ev"
    args = ["evaluate", str(path), "--out", str(out), "--cell-type-key", "cell_type", "--compare", "multivi"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "multidgd[compare]"' in err and "scvi-tools" in err
    assert not out.exists()


def _human_data(seed: int = 0) -> md.MuData:
    """Tiny paired data with real human gene names and peaks around their TSSs."""
    from multidgd.analysis.genome import gene_tss

    genes = ["GAPDH", "ACTB", "CD19", "PTPRC", "SPI1", "CD3E", "MS4A1", "LYZ", "NKG7", "HBB"]
    tss = gene_tss(genes)
    rng = np.random.default_rng(seed)
    peaks = []
    for g in genes:
        row = tss[g].iloc[0]
        for offset in (-4_000, -300, 2_500):
            start = int(row["tss"]) + offset
            peaks.append(f"{row['chrom']}:{start}-{start + 500}")
    n = 200
    types = rng.integers(0, 2, n)
    x_rna = rng.poisson(rng.gamma(2, 1, (2, len(genes)))[types] * 3).astype(np.float32) + (np.arange(len(genes)) == 0)
    x_atac = rng.poisson(rng.gamma(1, 1, (2, len(peaks)))[types]).astype(np.float32) + (np.arange(len(peaks)) == 0)
    obs = pd.DataFrame({"cell_type": [f"t{t}" for t in types]}, index=[f"c{i}" for i in range(n)])
    m = md.MuData(
        {
            "rna": ad.AnnData(sp.csr_matrix(x_rna), obs=obs.copy(), var=pd.DataFrame(index=genes)),
            "atac": ad.AnnData(sp.csr_matrix(x_atac), obs=obs.copy(), var=pd.DataFrame(index=peaks)),
        }
    )
    m.obs = obs.copy()
    return m


def test_gene2peak_command(tmp_path, capsys, monkeypatch):
    import multidgd
    from multidgd import analysis

    data = _human_data()
    path = tmp_path / "human.h5mu"
    data.write(path)
    assert _run(["train", str(path), "--out", str(tmp_path / "m"), "--cell-type-key", "cell_type"]) == 0
    capsys.readouterr()
    (tmp_path / "genes.txt").write_text("GAPDH\nCD19\n")
    out = tmp_path / "g2p" / "table.csv"
    args = ["gene2peak", str(tmp_path / "m" / "model.pt"), str(path), "--genes", "@" + str(tmp_path / "genes.txt")]
    args += ["ACTB", "--out", str(out), "--spearman", str(tmp_path / "g2p" / "rho.csv"), "--tss", "GRCh38"]
    args += ["--plot", str(tmp_path / "g2p" / "top.png"), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["genes"] == 3 and summary["rows"] == 3 * 30 and summary["tss_genes_with_peaks"] == 3
    table = pd.read_csv(out)
    model = multidgd.DGD.load(tmp_path / "m" / "model.pt")
    expected = analysis.gene2peak(model, read(path), genes=["GAPDH", "CD19", "ACTB"], progress_bar=False)
    np.testing.assert_allclose(table["mean_delta"], expected["mean_delta"], rtol=1e-5, atol=1e-12)
    assert (table["peak"] == expected["peak"]).all()
    profile = pd.read_csv(tmp_path / "g2p" / "table_tss_profile.csv")
    # each gene has peaks at -4,000 (bin [-5000, -4000) on +, mirrored on -), -300 and +2,500
    assert profile.loc[profile["set"] == "silenced", "n_pairs"].sum() == 9
    for name in ("rho.csv", "top.png", "table_tss_profile.png"):
        assert (tmp_path / "g2p" / name).exists()
    bad = ["gene2peak", str(tmp_path / "m" / "model.pt"), str(path), "--genes", "NOPE", "--out", str(out)]
    assert main([*bad, "--overwrite"]) == 2
    assert "not genes of the model" in capsys.readouterr().err
    # without --tss the table keeps the top GENE2PEAK_TOP_N features per gene and group, unless asked for all
    import multidgd.cli

    monkeypatch.setattr(multidgd.cli, "GENE2PEAK_TOP_N", 5)
    short = ["gene2peak", str(tmp_path / "m" / "model.pt"), str(path), "--genes", "GAPDH", "CD19", "--quiet"]
    assert main([*short, "--out", str(tmp_path / "top.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2 * 5
    assert main([*short, "--out", str(tmp_path / "all.csv"), "--all-features"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2 * 30
    assert main([*short, "--out", str(tmp_path / "x.csv"), "--all-features", "--top-n", "3"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # links: the model-based score within 5 kb of each TSS, as the library gives it; baselines without a model
    links = ["links", str(tmp_path / "m" / "model.pt"), str(path), "--genes", "GAPDH", "CD19", "--quiet"]
    links += ["--tss", "GRCh38", "--window", "5000", "--all-features", "--plot", str(tmp_path / "links.png")]
    assert main([*links, "--out", str(tmp_path / "links.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "hybrid" and summary["rows"] == 2 * 3 and summary["genes_without_tss"] == []
    table = pd.read_csv(tmp_path / "links.csv")
    expected = analysis.link_peaks(model, read(path), genes=["GAPDH", "CD19"], tss="GRCh38", window=5000, top_n=None)
    np.testing.assert_allclose(table["score"], expected["score"], rtol=1e-6)
    assert (table["peak"] == expected["peak"]).all() and (table["tss_distance"].abs() <= 5000).all()
    assert (tmp_path / "links.png").exists()
    baseline = ["links", "none", str(path), "--genes", "GAPDH", "--quiet", "--out", str(tmp_path / "rho.csv")]
    assert main([*baseline, "--method", "spearman"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    assert main([*baseline, "--overwrite"]) == 2
    assert "needs a model file" in capsys.readouterr().err


def test_interrupted_training_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import multidgd.workflows

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(multidgd.workflows, "train_and_report", interrupted)
    path = shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu")
    assert _run(["train", str(path), "--out", str(tmp_path / "x")]) == 130
    assert f"continue from {tmp_path / 'x' / 'checkpoint.pt'}" in capsys.readouterr().err


def test_every_command_takes_device_and_quiet():
    from multidgd.cli import build_parser

    parser = build_parser()
    for argv in (
        ["demo"],
        ["train", "d.h5mu"],
        ["evaluate", "d.h5mu", "--out", "o", "--cell-type-key", "c"],
        ["embed", "m.pt", "d.h5mu", "--out", "o.h5mu"],
        ["predict", "m.pt", "d.h5mu", "--out", "o.h5mu"],
        ["gene2peak", "m.pt", "d.h5mu", "--genes", "G", "--out", "t.csv"],
        ["links", "m.pt", "d.h5mu", "--genes", "G", "--out", "t.csv"],
    ):
        args = parser.parse_args([*argv, "--device", "cpu", "--quiet"])
        assert args.device == "cpu" and args.quiet


def test_version(capsys):
    import multidgd

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"multidgd {multidgd.__version__}"


def test_every_option_is_described_with_its_default():
    import argparse

    from multidgd.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, name
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings or action.dest)
            valued = action.option_strings and action.nargs != 0 and action.default not in (None, [])
            if valued:
                assert "default" in sub._get_formatter()._get_help_string(action), (name, action.option_strings)
        assert "--quiet" in text
