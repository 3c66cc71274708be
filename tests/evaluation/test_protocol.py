"""run_evaluation's input checks (the whole protocol runs in tests/test_cli.py::test_evaluate_bmmc)."""

import numpy as np
import pytest

from multidgd.evaluation import check_evaluation_inputs, stratified_split

from ..conftest import make_mudata


def test_inputs_read_labels_and_make_the_split():
    data = make_mudata(n_cells=120, seed=1)
    inputs = check_evaluation_inputs(data, cell_type_key="cell_type", batch_key="batch", seed=4, train_fraction=0.5)
    cell_types = data.obs["cell_type"].astype(str).to_numpy()
    np.testing.assert_array_equal(inputs.cell_types, cell_types)
    np.testing.assert_array_equal(inputs.batches, data.obs["batch"].astype(str).to_numpy())
    np.testing.assert_array_equal(inputs.split, stratified_split(cell_types, 4))
    assert inputs.fractions == [0.5] and inputs.compare == []
    assert check_evaluation_inputs(data, cell_type_key="cell_type").batches is None


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"cell_type_key": "nope"}, "'nope' not found"),
        ({"batch_key": "donor"}, "'donor' not found"),
        ({"holdout_batch": "b0"}, "holdout_batch needs batch_key"),
        ({"batch_key": "batch", "holdout_batch": "b9"}, "not among"),
        ({"train_fraction": [0.5, 1.5]}, r"train_fraction must be in \(0, 1\]"),
        ({"compare": ["scglue"]}, "unknown tool"),
        ({"split": np.array(["train"] * 10, dtype=object)}, "split has 10 entries"),
        ({"split": np.array(["train"] * 110 + ["test"] * 10, dtype=object)}, "no validation cells"),
    ],
)
def test_inputs_refused_before_training(kw, message):
    data = make_mudata(n_cells=120, seed=1)
    with pytest.raises(ValueError, match=message):
        check_evaluation_inputs(data, **{"cell_type_key": "cell_type", **kw})
