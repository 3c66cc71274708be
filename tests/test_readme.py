"""The README's Python code blocks run as written, in order, on the bundled demo data
(training shortened to a few epochs)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    matplotlib.use("Agg")  # this test's own process: no display
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    code = "\n".join(blocks)
    assert "max_epochs=1000" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace("max_epochs=1000", "max_epochs=3"), str(README), "exec"), namespace)
    # what the blocks promise
    assert namespace["mdata"].obsm["X_multidgd"].shape == (namespace["mdata"].n_obs, 20)
    assert np.isfinite(namespace["emb"].latent).all()
    assert namespace["atac"].shape == (100, namespace["mdata"]["atac"].n_vars)
    assert namespace["model"].learned_classes == {"sample": ["new_sample"]}
    assert (tmp_path / "model_with_new_batch.pt").is_file() and (tmp_path / "de.png").is_file()
    assert set(namespace["table"]["group1"]) == set(namespace["model"].cell_type_categories)
