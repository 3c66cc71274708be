"""spearman_gene2peak: sparse ranks and correlations against scipy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import spearmanr

from multidgd import analysis
from multidgd.analysis.baselines import centred_sparse_ranks


def test_sparse_ranks_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.poisson(0.4, (50, 7)).astype(float)
    x[:, 3] = 0  # constant column
    s, ss = centred_sparse_ranks(sp.csc_matrix(x))
    for j in range(7):
        from scipy.stats import rankdata

        r = rankdata(x[:, j])
        np.testing.assert_allclose(ss[j], ((r - r.mean()) ** 2).sum())
        np.testing.assert_allclose(s[:, j].toarray().ravel(), np.where(x[:, j] > 0, r - r[x[:, j] == 0][0], 0))


def test_spearman_matches_scipy(trained):
    _, data = trained
    table = analysis.spearman_gene2peak(data, genes=["g0", "g5"], groupby="cell_type")
    assert list(table.columns) == ["gene", "peak", "group", "rho", "abs_rho", "n_cells"]
    rna = data.mod["rna"].X.toarray()
    atac = data.mod["atac"].X.toarray()
    types = data.obs["cell_type"].astype(str).to_numpy()
    for g, t, p in [("g0", "type0", 0), ("g5", "type1", 7), ("g5", "type2", 33)]:
        sel = types == t
        expr = rna[sel, int(g[1:])] / rna[sel].sum(1)
        acc = atac[sel, p] / atac[sel].sum(1)
        expected = spearmanr(expr, acc).statistic
        row = table[(table["gene"] == g) & (table["group"] == t) & (table["peak"] == data.mod["atac"].var_names[p])]
        np.testing.assert_allclose(row["rho"].iloc[0], expected, rtol=1e-10)
        assert row["n_cells"].iloc[0] == sel.sum()
