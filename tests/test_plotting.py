import subprocess
import sys

SCRIPT = """
import matplotlib
matplotlib.use("svg")
import pandas as pd
from multidgd.plotting import plot_certainty
table = pd.DataFrame({"prediction": ["rna_from_atac"] * 2, "metric": ["RNA Pearson per cell"] * 2,
                      "bin": [1, 2], "cells": [5, 5], "certainty": [0.1, 0.9], "model": [0.6, 0.7],
                      "baseline": [0.5, 0.6]})
path = plot_certainty(table, sys.argv[1])
print(matplotlib.get_backend(), path.stat().st_size > 0)
"""


def test_figures_leave_the_backend_as_chosen(tmp_path):
    # a notebook's inline backend stands for any backend the user chose before
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + SCRIPT, str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["svg", "True"]


def test_category_colors_are_distinct_like_scanpy():
    from scanpy.plotting import palettes

    from multidgd.plotting import category_colors

    for n in (3, 20, 21, 28, 29, 102):
        colors = category_colors(n)
        assert len(colors) == n and len(set(colors)) == n  # no colour repeats up to 102 categories
    assert category_colors(15) == list(palettes.default_20[:15])
    assert category_colors(25) == list(palettes.default_28[:25])
    assert category_colors(110)[102:] == ["#d3d3d3"] * 8
