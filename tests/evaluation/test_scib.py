"""scIB metrics in evaluate: the option is checked before any work, the table and its arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

import multidgd.evaluation.scib
from multidgd.evaluation import run_evaluation
from multidgd.evaluation.report import _scib_lines

from ..conftest import make_mudata


def test_scib_needs_a_batch_key_and_the_extra_before_any_work(tmp_path, monkeypatch):
    data = make_mudata(n_cells=160)
    with pytest.raises(ValueError, match="scib needs batch_key"):
        run_evaluation(data, tmp_path / "a", cell_type_key="cell_type", scib=True)

    def missing():
        raise ImportError("scIB metrics need scib-metrics: pip install")

    monkeypatch.setattr(multidgd.evaluation.scib, "require_scib", missing)
    with pytest.raises(ImportError, match="scib-metrics"):
        run_evaluation(data, tmp_path / "b", cell_type_key="cell_type", batch_key="batch", scib=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_report_lists_every_latent_and_metric():
    scib = {"multidgd": {"KBET": 0.5, "Total": 0.61}, "pca_plain": {"KBET": 0.8, "Total": 0.58}}
    text = "\n".join(_scib_lines(scib))
    assert "| metric | multidgd | pca_plain |" in text
    assert "| KBET | 0.500 | 0.800 |" in text and "| Total | 0.610 | 0.580 |" in text


def test_scib_scores_reward_mixed_batches_and_separated_labels():
    pytest.importorskip("scib_metrics")
    from multidgd.evaluation.scib import scib_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 100)
    batches = np.tile(["b0", "b1"], 150)
    centres = {"a": [0, 0, 0, 0], "b": [10, 0, 0, 0], "c": [0, 10, 0, 0]}
    mixed = np.array([centres[k] for k in labels], dtype=float) + rng.normal(size=(300, 4))
    shifted = mixed + 6.0 * (batches == "b1")[:, None] * np.array([0, 0, 1, 0])
    table = scib_scores({"mixed": mixed, "shifted": shifted}, labels, batches, pre_integrated="shifted")
    assert table["mixed"]["Batch correction"] > table["shifted"]["Batch correction"]
    assert table["mixed"]["Bio conservation"] > 0.8
    for row in table.values():
        assert row["Total"] == pytest.approx(0.6 * row["Bio conservation"] + 0.4 * row["Batch correction"])
