"""Fixtures of the analysis tests: one small trained model shared by the package's tests."""

from __future__ import annotations

import pytest

from multidgd import DGD, ModelConfig

from ..conftest import make_mudata


@pytest.fixture(scope="package")
def trained():
    """A small model trained on paired data with cell types and a batch, and that data."""
    data = make_mudata(n_cells=160, seed=3)
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=15, seed=0, progress_bar=False)
    return model, data
