import numpy as np
import pytest
import scipy.sparse as sp

from multidgd.metrics import auprc, mae, rmse


def test_rmse_and_mae_by_hand():
    obs = np.array([[0.0, 2.0], [1.0, 1.0]])
    pred = np.array([[1.0, 0.0], [1.0, 4.0]])
    # per cell squared error means: (1 + 4) / 2 = 2.5 and (0 + 9) / 2 = 4.5 -> sqrt(3.5)
    assert rmse(obs, pred) == pytest.approx(np.sqrt(3.5))
    assert rmse(sp.csr_matrix(obs), pred) == pytest.approx(np.sqrt(3.5))
    # absolute: (1 + 2) / 2 = 1.5 and (0 + 3) / 2 = 1.5
    assert mae(obs, pred) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="shape"):
        rmse(obs, pred[:, :1])


def test_auprc_by_hand():
    obs = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 3.0]]))
    # ranking 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2
    pred = np.array([[0.9, 0.8], [0.1, 0.7]])
    assert auprc(obs, pred) == pytest.approx((1 + 2 / 3) / 2)
    assert auprc(obs, np.array([[0.9, 0.1], [0.2, 0.8]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="undefined"):
        auprc(np.zeros((2, 2)), pred)
