"""multidgd.settings: defaults set once for the whole package."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import multidgd
from multidgd import DGD, ModelConfig, TrainConfig


def test_settings_set_seed_threads_verbosity_and_progress(mdata, caplog):
    s = multidgd.settings
    kept = (s.seed, s.progress_bar, s.n_threads)
    try:
        fast = TrainConfig(batch_size=32)
        s.seed = 1
        default = DGD(mdata, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16))
        default.train(max_epochs=2, progress_bar=False, config=fast)
        explicit = DGD(mdata, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16))
        explicit.train(max_epochs=2, seed=1, progress_bar=False, config=fast)
        assert default.seed == 1
        np.testing.assert_array_equal(default.get_latent_representation(), explicit.get_latent_representation())
        s.n_threads = 2
        assert torch.get_num_threads() == 2 and s.n_threads == 2
        s.verbosity = "warning"
        assert logging.getLogger("multidgd").getEffectiveLevel() == logging.WARNING
        s.progress_bar = False  # no per-epoch log lines either, though the call asks for progress
        s.verbosity = "info"
        with caplog.at_level(logging.INFO, logger="multidgd.train"):
            DGD(mdata, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16)).train(
                max_epochs=10, progress_bar=True, config=fast
            )
        assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]
        assert "seed=1" in repr(s)
        with pytest.raises(ValueError, match="verbosity must be one of"):
            s.verbosity = "loud"
        with pytest.raises(ValueError, match="n_threads must be a positive integer"):
            s.n_threads = 0
    finally:
        s.seed, s.progress_bar, s.n_threads = kept
        logging.getLogger("multidgd").setLevel(logging.NOTSET)
