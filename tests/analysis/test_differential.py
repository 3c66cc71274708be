"""Differential expression and accessibility: statistics, decoding in blocks, planted changes,
identical groups, batch correction, new cells, scanpy's form and refused input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from multidgd import DGD, ModelConfig, analysis
from multidgd.analysis.differential import change_statistics, expected_fdr_calls
from multidgd.profiles import FeatureBlocks

from ..conftest import make_mudata


def _copy(model: DGD, tmp_path, name: str = "m.pt") -> DGD:
    path = tmp_path / name
    model.save(path)
    return DGD.load(path)


# ----------------------------------------------------------------------------- statistics
def test_change_statistics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    m1, m2 = rng.gamma(1.0, 1e-3, (201, 7)), rng.gamma(1.0, 1e-3, (201, 7))
    eps, delta = 1e-4, 0.5
    out = change_statistics(m1, m2, delta=delta, epsilon=eps)
    for f in range(7):
        lfc = [np.log2(m1[b, f] + eps) - np.log2(m2[b, f] + eps) for b in range(201)]
        boot = np.array(lfc[1:])
        k = sum(abs(v) >= delta for v in boot)
        assert out["lfc_mean"][f] == pytest.approx(lfc[0], rel=1e-12)
        assert out["proba_de"][f] == k / 200
        assert out["proba_not_de"][f] == 1 - k / 200
        assert out["bayes_factor"][f] == pytest.approx(np.log((k + 0.5) / (200 - k + 0.5)))
        assert out["lfc_median"][f] == pytest.approx(np.median(boot))
        assert out["lfc_std"][f] == pytest.approx(np.std(boot, ddof=1))
        assert out["lfc_low"][f] == pytest.approx(np.quantile(boot, 0.025))
        assert out["lfc_high"][f] == pytest.approx(np.quantile(boot, 0.975))


def test_expected_fdr_calls_are_the_largest_prefix_within_the_bound():
    rng = np.random.default_rng(1)
    for trial in range(50):
        p = rng.choice([rng.random(), 1.0, 0.99, 0.5], 12) if trial % 2 else rng.random(12)
        fdr = 0.05 if trial % 3 else 0.2
        calls = expected_fdr_calls(p, fdr)
        # brute force: among all sets closed under "higher proba is called first", the largest
        order = np.argsort(-p, kind="stable")
        best = 0
        for k in range(len(p) + 1):
            if k == 0 or np.mean(1 - p[order[:k]]) <= fdr:
                best = k
        assert calls.sum() == best
        if best:
            assert p[calls].min() >= p[~calls].max(initial=0)
            assert np.mean(1 - p[calls]) <= fdr
    assert not expected_fdr_calls(np.array([0.9, 0.5]), 0.05).any()
    assert expected_fdr_calls(np.array([1.0, 1.0, 0.9]), 0.05).tolist() == [True, True, True]


def test_feature_blocks_equal_the_decoder(trained):
    model, _ = trained
    z, c = model.get_latent_representation(), model.get_covariate_matrix()
    for modality in ("rna", "atac"):
        full = model.decode(modality)
        blocks = FeatureBlocks(model.module, z, c, modality, batch_size=50, block_features=7)
        cols = np.array([5, 0, 17, 3])
        np.testing.assert_allclose(blocks.fractions(cols), full[:, cols], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(blocks.fractions(np.arange(full.shape[1])).sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- the table
def test_table_schema_and_brute_force_values(trained):
    model, data = trained
    table = model.differential_expression(groupby="cell_type", batch_correction=False, progress_bar=False)
    assert list(table.columns) == analysis.DIFFERENTIAL_COLUMNS
    assert table.index.name == "feature"
    groups = model.cell_type_categories
    assert list(dict.fromkeys(table["comparison"])) == [f"{g} vs rest" for g in groups]
    assert len(table) == len(groups) * len(model.var_names["rna"])
    assert table.attrs["modality"] == "rna" and table.attrs["batch_correction"] == "none"
    # brute force: every cell decoded (groups are below n_cells), the groups' mean profiles
    decoded = model.decode("rna")
    labels = data.obs["cell_type"].astype(str).to_numpy()
    counts = data["rna"].X.toarray()
    eps = table.attrs["epsilon"]
    library = model.get_library_size()[:, 0]
    assert eps == pytest.approx(0.1 / np.median(library))
    for g in groups:
        part = table[table["group1"] == g].loc[model.var_names["rna"]]
        one, rest = labels == g, labels != g
        sizes = pd.Series(labels).value_counts()
        others = [h for h in groups if h != g]
        rest_mean = sum(sizes[h] * decoded[labels == h].mean(axis=0) for h in others) / sizes[others].sum()
        np.testing.assert_allclose(part["scale1"], decoded[one].mean(axis=0), rtol=1e-4)
        np.testing.assert_allclose(part["scale2"], rest_mean, rtol=1e-4)
        expected = np.log2(decoded[one].mean(axis=0) + eps) - np.log2(rest_mean + eps)
        np.testing.assert_allclose(part["lfc_mean"], expected, atol=1e-4)
        np.testing.assert_allclose(part["raw_mean1"], counts[one].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(part["non_zeros_proportion2"], (counts[rest] > 0).mean(axis=0), rtol=1e-6)
        normalised = counts / counts.sum(axis=1, keepdims=True) * 1e4
        np.testing.assert_allclose(part["raw_normalized_mean1"], normalised[one].mean(axis=0), rtol=1e-5)
        # rows sorted by decreasing proba_de, then decreasing |lfc|
        whole = table[table["group1"] == g]
        key = list(zip(-whole["proba_de"], -whole["lfc_mean"].abs(), strict=True))
        assert key == sorted(key)


def test_planted_tenfold_change_is_found_with_its_sign(trained, tmp_path):
    model, data = trained
    model = _copy(model, tmp_path)
    labels = data.obs["cell_type"].astype(str).to_numpy()
    z, c = model.get_latent_representation(), model.get_covariate_matrix()
    hidden = FeatureBlocks(model.module, z, c, "rna").hidden
    mean0, mean1 = hidden[labels == "type0"].mean(dim=0), hidden[labels == "type1"].mean(dim=0)
    direction = (mean0 - mean1) * np.log(10) / ((mean0 - mean1) @ (mean0 - mean1))
    gene = int(np.argmin(model.decode("rna").mean(axis=0)))  # a rare gene: the others barely move
    last = model.module.decoder.heads["rna"][-1]
    with torch.no_grad():  # gene's logit: unchanged at type1's mean cell, log(10) higher at type0's
        last.weight[gene] += direction
        last.bias[gene] -= direction @ mean1
    table = model.differential_expression(data, groupby="cell_type", group1="type0", group2="type1", progress_bar=False)
    top = table.iloc[0]
    assert top.name == model.var_names["rna"][gene]
    assert abs(top["lfc_mean"] - np.log2(10)) < 1 and top["proba_de"] == 1.0 and top["is_de_fdr"]
    swapped = model.differential_expression(
        data, groupby="cell_type", group1="type1", group2="type0", progress_bar=False
    )
    assert swapped.iloc[0].name == top.name and swapped.iloc[0]["lfc_mean"] == pytest.approx(-top["lfc_mean"])
    # without batch correction the value is the brute-force ratio of the groups' mean decoded profiles
    own = model.differential_expression(
        data, groupby="cell_type", group1="type0", group2="type1", batch_correction=False, progress_bar=False
    )
    decoded = model.decode("rna")[:, gene]
    eps = own.attrs["epsilon"]
    expected = np.log2(decoded[labels == "type0"].mean() + eps) - np.log2(decoded[labels == "type1"].mean() + eps)
    assert own.loc[top.name, "lfc_mean"] == pytest.approx(expected, abs=1e-4)
    assert own.loc[top.name, "lfc_mean"] > 2


def test_identical_groups_give_no_calls(trained):
    model, data = trained
    rng = np.random.default_rng(0)
    for modality in ("rna", "atac"):
        # the cells of one type, split at random into two halves: the same population twice
        one = np.flatnonzero(data.obs["cell_type"].to_numpy() == "type0")
        halves = pd.Series(np.where(rng.random(data.n_obs) < 0.5, "x", "y"), index=data.obs_names)
        halves[~data.obs_names.isin(data.obs_names[one])] = None
        table = analysis.differential_test(
            model, data, groupby=halves, group1="x", group2="y", modality=modality, progress_bar=False
        )
        assert not table["is_de_fdr"].any()
        assert table["proba_de"].max() < 0.5


def test_blocks_and_budget_do_not_change_the_result(trained):
    model, data = trained
    kwargs = {"groupby": "cell_type", "progress_bar": False, "n_bootstrap": 50}
    small = model.differential_accessibility(memory_budget_mb=1e-3, **kwargs)  # 64 peaks per block
    large = model.differential_accessibility(memory_budget_mb=1e4, **kwargs)
    pd.testing.assert_frame_equal(small, large, check_exact=False, rtol=1e-5, atol=1e-6)
    subset = model.differential_accessibility(features=large.index[:5], **kwargs)
    pd.testing.assert_frame_equal(
        subset.sort_index().drop(columns="is_de_fdr"),
        large.loc[large.index[:5]].sort_index().drop(columns="is_de_fdr"),
        check_exact=False,
        rtol=1e-5,
        atol=1e-6,
    )


def test_batch_correction_decodes_at_the_class_means(tmp_path):
    data = make_mudata(n_cells=160, n_batches=1, seed=5)
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=3, seed=0, progress_bar=False)
    table = model.differential_expression(groupby="cell_type", group1="type0", progress_bar=False)
    means = model.module.covariates[0].mean.detach().numpy()
    z = model.get_latent_representation()
    at_mean = np.repeat(means, len(z), axis=0).astype(np.float32)
    decoded = FeatureBlocks(model.module, z, at_mean, "rna").fractions(np.arange(30))
    one = data.obs["cell_type"].to_numpy() == "type0"
    part = table.loc[model.var_names["rna"]]
    np.testing.assert_allclose(part["scale1"], decoded[one].mean(axis=0), rtol=1e-5)
    # the cells' own covariate representations do not enter a batch-corrected test
    tables = model.state.tables
    with torch.no_grad():
        for name in ("train_covariate", "val_covariate"):
            tables[name].values.add_(3.0)
    again = model.differential_expression(groupby="cell_type", group1="type0", progress_bar=False)
    pd.testing.assert_frame_equal(table, again)
    own = model.differential_expression(groupby="cell_type", group1="type0", batch_correction=False, progress_bar=False)
    assert not np.allclose(own["scale1"].sort_index(), table["scale1"].sort_index())


def test_new_cells_are_placed_and_tested(trained):
    model, _ = trained
    new = make_mudata(n_cells=60, seed=11)
    new.obs_names = [f"new{i}" for i in range(new.n_obs)]
    for m in new.mod.values():
        m.obs_names = new.obs_names
    emb = model.infer(new, progress_bar=False)
    given = model.differential_expression(new, groupby="cell_type", embedding=emb, progress_bar=False)
    auto = model.differential_expression(
        new, groupby="cell_type", progress_bar=False, infer_kwargs={"progress_bar": False}
    )
    pd.testing.assert_frame_equal(given, auto)
    counts = new["rna"].X.toarray()
    one = new.obs["cell_type"].to_numpy() == "type1"
    part = given[given["group1"] == "type1"].loc[model.var_names["rna"]]
    np.testing.assert_allclose(part["non_zeros_proportion1"], (counts[one] > 0).mean(axis=0))
    assert given.attrs["n_cells"]["type1"] == one.sum()


def test_scanpy_reads_the_one_against_rest_table(trained):
    import anndata as ad
    import scanpy as sc

    model, data = trained
    table = model.differential_expression(groupby="cell_type", progress_bar=False)
    adata = ad.AnnData(data["rna"].X.copy(), obs=data.obs[["cell_type"]].copy(), var=data["rna"].var.copy())
    adata.uns["multidgd_de"] = analysis.rank_genes_groups(table)
    for g in model.cell_type_categories:
        got = sc.get.rank_genes_groups_df(adata, group=g, key="multidgd_de")
        part = table[table["group1"] == g]
        score = (part["lfc_mean"] * part["proba_de"]).sort_values(ascending=False, kind="stable")
        assert got["names"].tolist() == score.index.tolist()
        np.testing.assert_allclose(got["scores"], score.to_numpy(), rtol=1e-6)
    sc.pl.rank_genes_groups_dotplot(adata, key="multidgd_de", n_genes=3, dendrogram=False, show=False)
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ValueError, match="one-against-rest"):
        analysis.rank_genes_groups(
            model.differential_expression(groupby="cell_type", group1="type0", group2="type1", progress_bar=False)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groupby": "cell_type", "group1": "nope"}, r"no group 'nope'; groups: \['type0', 'type1', 'type2'\]"),
        ({"groupby": "cell_type", "group1": "type0", "group2": "type0"}, "the same group"),
        ({"groupby": "cell_type", "delta": -1}, "delta must be >= 0"),
        ({"groupby": "cell_type", "fdr": 1.5}, r"fdr must be in \(0, 1\)"),
        ({"groupby": "cell_type", "n_bootstrap": 5}, "n_bootstrap must be an integer >= 20"),
        ({"groupby": "donor"}, r"knows the labels of \['cell_type', 'batch'\] only"),
        ({"groupby": ["a", "b"]}, r"labels have shape \(2,\)"),
    ],
)
def test_bad_arguments_are_refused(trained, kwargs, match):
    model, _ = trained
    with pytest.raises(ValueError, match=match):
        model.differential_expression(progress_bar=False, **kwargs)


def test_refusals_needing_data(trained, tmp_path):
    model, data = trained
    loaded = _copy(model, tmp_path)
    with pytest.raises(ValueError, match="loaded without its data: pass data="):
        loaded.differential_expression(groupby="cell_type")
    with pytest.raises(ValueError, match="groupby: no obs column 'donor'; available"):
        loaded.differential_expression(data, groupby="donor")
    same = loaded.differential_expression(data, groupby="cell_type", progress_bar=False)
    pd.testing.assert_frame_equal(same, model.differential_expression(groupby="cell_type", progress_bar=False))


def test_command_line_writes_what_the_api_gives(trained, tmp_path, capsys):
    from multidgd.cli import main

    model, data = trained
    model_path = tmp_path / "model.pt"
    model.save(model_path)
    data_path = tmp_path / "data.h5mu"
    data.write(data_path)
    out, plot = tmp_path / "de.csv", tmp_path / "de.png"
    args = ["differential", str(model_path), str(data_path), "--groupby", "cell_type", "--modality", "atac"]
    assert main([*args, "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert '"modality": "atac"' in summary and plot.stat().st_size > 0
    written = pd.read_csv(out)
    expected = model.differential_accessibility(data, groupby="cell_type", progress_bar=False).reset_index()
    assert list(written.columns) == ["feature", *analysis.DIFFERENTIAL_COLUMNS]
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=1e-6)
    assert main([*args, "--out", str(out), "--quiet"]) == 2  # an existing output needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x.csv"), "--group1", "nope", "--quiet"]) == 2
    assert "--group1: no group 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_within_batch_comparison_weights_batches_alike(trained):
    model, data = trained
    table = model.differential_expression(groupby="cell_type", batch_correction="within", progress_bar=False)
    decoded = model.decode("rna")
    labels = data.obs["cell_type"].astype(str).to_numpy()
    batches = data.obs["batch"].astype(str).to_numpy()
    for g in model.cell_type_categories:
        one, rest = labels == g, labels != g
        n1 = np.array([(one & (batches == b)).sum() for b in ("b0", "b1")])
        n2 = np.array([(rest & (batches == b)).sum() for b in ("b0", "b1")])
        w = n1 * n2 / (n1 + n2)
        w = w / w.sum()
        side1 = sum(w[k] * decoded[one & (batches == b)].mean(axis=0) for k, b in enumerate(("b0", "b1")))
        side2 = sum(w[k] * decoded[rest & (batches == b)].mean(axis=0) for k, b in enumerate(("b0", "b1")))
        part = table[table["group1"] == g].loc[model.var_names["rna"]]
        np.testing.assert_allclose(part["scale1"], side1, rtol=1e-4)
        np.testing.assert_allclose(part["scale2"], side2, rtol=1e-4)
    # a side with no cells in any batch of the other is refused
    only_b0 = pd.Series(np.where(data.obs["batch"].to_numpy() == "b0", "x", "y"), index=data.obs_names)
    with pytest.raises(ValueError, match="no batch .* holds cells of both sides"):
        model.differential_expression(groupby=only_b0, group1="x", batch_correction="within", progress_bar=False)
    with pytest.raises(ValueError, match="batch_correction must be True, False or one of"):
        model.differential_expression(groupby="cell_type", batch_correction="some", progress_bar=False)
