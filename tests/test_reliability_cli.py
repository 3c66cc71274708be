"""The command line never loses the user's work and never shows a traceback for a user error.

One parametrised test per category (input files, destinations, options, Ctrl-C) runs the
command line on each bad input or fault and checks: exit status 2 (130 when interrupted),
no traceback, one ``multidgd`` line on stderr holding the key words of the message, nothing
on stdout, and every file under the test's folder (the inputs and the earlier run's
folder) byte-identical afterwards, with no file or folder added or removed.
"""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multidgd.cli import cli_text, main

from .conftest import make_mudata

FLAGS = ["--quiet", "--device", "cpu"]
KEYS = ["--cell-type-key", "cell_type", "--covariate-keys", "batch"]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """Tiny data and an earlier training run of it (2 epochs): ``data.h5mu`` and ``run/``."""
    root = tmp_path_factory.mktemp("earlier")
    make_mudata(n_cells=200, seed=3).write(root / "data.h5mu")
    argv = ["train", str(root / "data.h5mu"), "--out", str(root / "run"), "--max-epochs", "2", *KEYS, *FLAGS]
    assert main(argv) == 0
    return root


@pytest.fixture
def ws(earlier, tmp_path):
    """This test's copy of the data and of the earlier run, and a text file."""
    shutil.copy(earlier / "data.h5mu", tmp_path / "data.h5mu")
    shutil.copytree(earlier / "run", tmp_path / "run")
    (tmp_path / "notes.txt").write_text("not a data file\n")
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file and every folder under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run the command line here; an exception escaping ``main`` is the traceback a user would see."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_one_message(err: str, words) -> None:
    lines = [line for line in err.splitlines() if line.startswith("multidgd")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def check_refused(ws, capsys, argv, words, *, code=2) -> None:
    """Run ``argv`` (built after any set-up); the files under ``ws`` must not change."""
    before = snapshot(ws)
    status, out, err = run_cli(argv, capsys)
    assert status == code, err
    assert_one_message(err, words)
    if code == 2:
        assert out == ""
    assert snapshot(ws) == before


# ----------------------------------------------------------------------------- command lines


def train(ws, data="data.h5mu", out="new", *extra):
    return ["train", ws / data, "--out", ws / out, "--max-epochs", "1", *FLAGS, *extra]


def embed(ws, model="run/model.pt", data="data.h5mu", out="emb.h5mu", *extra, command="embed"):
    return [command, ws / model, ws / data, "--out", ws / out, "--steps", "1", *FLAGS, *extra]


def gene2peak(ws, *extra, out="table.csv", model="run/model.pt"):
    return ["gene2peak", ws / model, ws / "data.h5mu", "--out", ws / out, *FLAGS, *extra]


def evaluate(ws, *extra, out="ev"):
    argv = ["evaluate", ws / "data.h5mu", "--out", ws / out, "--cell-type-key", "cell_type", "--max-epochs", "1"]
    return [*argv, *FLAGS, *extra]


def cut(ws, src: str, dst: str) -> str:
    """Write the first half of ``src`` to ``dst`` (a file cut short by a full disk or a kill)."""
    data = (ws / src).read_bytes()
    (ws / dst).write_bytes(data[: len(data) // 2])
    return dst


def put(ws, name: str, content: bytes) -> str:
    (ws / name).write_bytes(content)
    return name


def model_without(ws, section: str) -> str:
    payload = torch.load(ws / "run" / "model.pt", weights_only=True)
    del payload[section]
    torch.save(payload, ws / "broken.pt")
    return "broken.pt"


def other_torch_file(ws) -> str:
    torch.save({"weights": torch.zeros(2)}, ws / "other.pt")
    return "other.pt"


# ----------------------------------------------------------------------------- input files

#: case -> (command line built in the test's folder, key words of the message)
FILE_CASES = {
    "data missing": (lambda ws: train(ws, "nope.h5mu"), ["DATA", "nope.h5mu", "no such file", ".h5mu"]),
    "data is a folder": (lambda ws: train(ws, "run"), ["DATA", "is a folder", ".h5ad"]),
    "data not hdf5": (
        lambda ws: train(ws, put(ws, "text.h5mu", b"cell,gene\n1,2\n")),
        ["DATA", "text.h5mu", "not an HDF5 file"],
    ),
    "data empty": (lambda ws: train(ws, put(ws, "empty.h5ad", b"")), ["DATA", "empty.h5ad", "empty"]),
    "data truncated": (lambda ws: train(ws, cut(ws, "data.h5mu", "cut.h5mu")), ["DATA", "cut.h5mu", "truncated"]),
    "data truncated for embed": (
        lambda ws: embed(ws, data=cut(ws, "data.h5mu", "cut.h5mu")),
        ["DATA", "cut.h5mu", "truncated"],
    ),
    "data of unknown type": (lambda ws: train(ws, "notes.txt"), ["notes.txt", "unknown file type", ".h5mu"]),
    "model missing": (lambda ws: embed(ws, model="none.pt"), ["MODEL", "none.pt", "no such file", "model.pt"]),
    "model is a folder": (lambda ws: embed(ws, model="run"), ["MODEL", "is a folder"]),
    "model is a checkpoint": (
        lambda ws: embed(ws, model="run/checkpoint.pt"),
        ["MODEL", "checkpoint.pt", "multidgd-training-checkpoint", "give the model.pt"],
    ),
    "model truncated": (
        lambda ws: embed(ws, model=cut(ws, "run/model.pt", "cut.pt")),
        ["MODEL", "cut.pt", "not a readable multidgd file"],
    ),
    "model lacks a section": (
        lambda ws: embed(ws, model=model_without(ws, "tables")),
        ["MODEL", "broken.pt", "lacks its 'tables' section"],
    ),
    "model of another program": (
        lambda ws: embed(ws, model=other_torch_file(ws)),
        ["MODEL", "other.pt", "expected 'multidgd-model'"],
    ),
    "model is text": (lambda ws: embed(ws, model="notes.txt"), ["MODEL", "notes.txt", "not a readable"]),
    "gene2peak model missing": (
        lambda ws: gene2peak(ws, "--genes", "g1", model="none.pt"),
        ["MODEL", "none.pt", "no such file"],
    ),
    "genes file missing": (
        lambda ws: gene2peak(ws, "--genes", f"@{ws / 'genes.txt'}"),
        ["--genes", "genes.txt", "no such file"],
    ),
    "genes file is binary": (
        lambda ws: gene2peak(ws, "--genes", f"@{ws / put(ws, 'genes.txt', bytes(range(128, 256)))}"),
        ["--genes", "genes.txt", "cannot be read as text"],
    ),
    "tss file missing": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--tss", ws / "tss.gtf"),
        ["--tss", "tss.gtf", "no such file"],
    ),
    "split csv missing": (
        lambda ws: evaluate(ws, "--split-csv", ws / "split.csv"),
        ["--split-csv", "split.csv", "no such file", "obs_name,split"],
    ),
    "split csv is a folder": (lambda ws: evaluate(ws, "--split-csv", ws / "run"), ["--split-csv", "is a folder"]),
    "split csv is binary": (
        lambda ws: evaluate(ws, "--split-csv", ws / put(ws, "split.csv", bytes(range(128, 256)))),
        ["--split-csv", "split.csv"],
    ),
    "evaluate model truncated": (
        lambda ws: evaluate(ws, "--model", ws / cut(ws, "run/model.pt", "cut.pt")),
        ["--model", "cut.pt", "not a readable"],
    ),
    "resume from a truncated checkpoint": (
        lambda ws: train(ws, "data.h5mu", cut(ws, "run/checkpoint.pt", "run/checkpoint.pt").split("/")[0], "--resume"),
        ["checkpoint.pt", "not a readable"],
    ),
}


@pytest.mark.parametrize("case", list(FILE_CASES), ids=lambda c: c.replace(" ", "_"))
def test_bad_input_files(ws, capsys, case):
    build, words = FILE_CASES[case]
    check_refused(ws, capsys, build(ws), words)


def test_a_user_error_prints_no_traceback_in_a_real_process(ws):
    cut(ws, "data.h5mu", "cut.h5mu")
    before = snapshot(ws)
    argv = [sys.executable, "-m", "multidgd", *map(str, train(ws, "cut.h5mu"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert_one_message(done.stderr, ["DATA", "cut.h5mu", "truncated"])
    assert snapshot(ws) == before


# ----------------------------------------------------------------------------- destinations


def unwritable(monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def no_space(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=4096))


def data_inside_out(ws) -> list:
    (ws / "inner").mkdir()
    shutil.copy(ws / "data.h5mu", ws / "inner" / "multidgd.h5mu")
    return train(ws, "inner/multidgd.h5mu", "inner", "--overwrite")


def new_batch_data(ws) -> str:
    data = make_mudata(n_cells=200, seed=3)
    for frame in (data.obs, *(m.obs for m in data.mod.values())):
        frame["batch"] = "b9"
    data.write(ws / "new_batch.h5mu")
    return "new_batch.h5mu"


#: case -> (command line, key words, fault to inject or None)
OUTPUT_CASES = {
    "train into an earlier run": (
        lambda ws: train(ws, out="run"),
        ["--out", "holds an earlier run", "model.pt", "--overwrite", "--resume"],
        None,
    ),
    "demo into an earlier run": (
        lambda ws: ["demo", "--out", ws / "run", "--max-epochs", "1", *FLAGS],
        ["holds an earlier run", "--overwrite"],
        None,
    ),
    "evaluate into an earlier run": (
        lambda ws: evaluate(ws, out="run"),
        ["--out", "holds an earlier run", "--overwrite"],
        None,
    ),
    "train out is a file": (lambda ws: train(ws, out="notes.txt"), ["--out", "notes.txt", "is a file"], None),
    "train out below a file": (
        lambda ws: train(ws, out="notes.txt/sub"),
        ["--out", "notes.txt is a file", "no folder"],
        None,
    ),
    "evaluate out is a file": (lambda ws: evaluate(ws, out="notes.txt"), ["--out", "is a file"], None),
    "train out not writable": (
        lambda ws: train(ws, out="new/deeper"),
        ["--out", "cannot write", "Permission denied"],
        unwritable,
    ),
    "resume out not writable": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", *KEYS),
        ["--out", "cannot write"],
        unwritable,
    ),
    "train out without space": (lambda ws: train(ws), ["--out", "4 KiB free", "writes about"], no_space),
    "evaluate out without space": (lambda ws: evaluate(ws), ["--out", "free", "writes about"], no_space),
    "embed out without space": (lambda ws: embed(ws), ["--out", "free"], no_space),
    "train data inside out": (data_inside_out, ["writes multidgd.h5mu there", "the input DATA"], None),
    "embed out is the input": (lambda ws: embed(ws, out="data.h5mu"), ["--out", "is the input DATA"], None),
    "embed out becomes the input": (lambda ws: embed(ws, out="data.h5ad"), ["--out", "is the input DATA"], None),
    "embed model-out is the model": (
        lambda ws: (
            embed(ws, "run/model.pt", new_batch_data(ws), "x.h5mu", "--new-classes", "learn")
            + ["--model-out", ws / "run" / "model.pt"]
        ),
        ["--model-out", "is the input MODEL"],
        None,
    ),
    "embed out is a folder": (lambda ws: embed(ws, out="run"), ["--out", "is a folder"], None),
    "embed out exists": (
        lambda ws: embed(ws, out=put(ws, "old.h5mu", b"an earlier result")),
        ["--out", "old.h5mu", "exists", "--overwrite"],
        None,
    ),
    "predict out exists": (
        lambda ws: embed(ws, out=put(ws, "old.h5mu", b"an earlier result"), command="predict"),
        ["--out", "exists", "--overwrite"],
        None,
    ),
    "embed out not writable": (lambda ws: embed(ws, out="sub/emb.h5mu"), ["--out", "cannot write"], unwritable),
    "gene2peak out exists": (
        lambda ws: gene2peak(ws, "--genes", "g1", out=put(ws, "old.csv", b"gene,peak\n")),
        ["--out", "old.csv", "exists", "--overwrite"],
        None,
    ),
    "gene2peak out is a folder": (
        lambda ws: (ws / "tables.csv").mkdir() or gene2peak(ws, "--genes", "g1", out="tables.csv"),
        ["--out", "is a folder"],
        None,
    ),
    "gene2peak plot is the table": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--plot", ws / "t.csv", out="t.csv"),
        ["--plot and --out", "t.csv"],
        None,
    ),
    "gene2peak spearman is the data": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--spearman", ws / "data.h5mu"),
        ["--spearman", "is the input DATA"],
        None,
    ),
    "gene2peak earlier tss profile": (
        lambda ws: gene2peak(
            ws, "--genes", "g1", "--tss", "GRCh38", out=put(ws, "t_tss_profile.csv", b"x") and "t.csv"
        ),
        ["--tss", "t_tss_profile.csv", "--overwrite"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES), ids=lambda c: c.replace(" ", "_"))
def test_bad_destinations(ws, capsys, monkeypatch, case):
    build, words, fault = OUTPUT_CASES[case]
    argv = build(ws)
    if fault is not None:
        fault(monkeypatch)
    check_refused(ws, capsys, argv, words)


def test_stale_temporary_checkpoint_is_removed_on_resume(ws, capsys):
    (ws / "run" / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    status, _, err = run_cli(train(ws, "data.h5mu", "run", "--resume", *KEYS, "--max-epochs", "2"), capsys)
    assert status == 0, err
    assert not (ws / "run" / "checkpoint.pt.tmp").exists()
    assert not list(ws.rglob(".multidgd-*"))


def test_overwrite_replaces_the_earlier_run_and_removes_its_stale_files(ws, capsys):
    (ws / "run" / "my_notes.txt").write_text("the user's own file")
    old_model = (ws / "run" / "model.pt").read_bytes()
    status, _, err = run_cli(train(ws, "data.h5mu", "run", "--overwrite", "--cell-type-key", "cell_type"), capsys)
    assert status == 0, err
    files = {p.name for p in (ws / "run").iterdir()}
    assert "covariate_batch.png" not in files  # the earlier run's figure of a covariate not trained now
    assert {"model.pt", "checkpoint.pt", "umap.png", "summary.json", "my_notes.txt"} <= files
    assert (ws / "run" / "model.pt").read_bytes() != old_model
    assert (ws / "run" / "my_notes.txt").read_text() == "the user's own file"


# ----------------------------------------------------------------------------- options

#: case -> (command line, key words)
OPTION_CASES = {
    "batch size zero": (lambda ws: train(ws, "data.h5mu", "new", "--batch-size", "0"), ["--batch-size must be >= 1"]),
    "batch size above the cells": (
        lambda ws: train(ws, "data.h5mu", "new/deeper", "--batch-size", "1000"),
        ["--batch-size 1000", "give --batch-size no larger than the number of cells"],
    ),
    "max epochs zero": (lambda ws: train(ws, "data.h5mu", "new", "--max-epochs", "0"), ["--max-epochs must be >= 1"]),
    "seed differs on resume": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", "--seed", "7", *KEYS),
        ["--seed 7", "checkpoint's --seed 0", "--overwrite"],
    ),
    "batch size differs on resume": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", "--batch-size", "64", *KEYS),
        ["--batch-size 64", "--batch-size 128"],
    ),
    "precision differs on resume": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", "--precision", "bfloat16", *KEYS),
        ["--precision bfloat16", "float32"],
    ),
    "max epochs below the checkpoint": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", *KEYS, "--max-epochs", "1"),
        ["--max-epochs 1", "2 epochs", "--max-epochs 2 or more"],
    ),
    "resume from other data": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume"),
        ["checkpoint", "other data", "--overwrite"],
    ),
    "resume and overwrite": (
        lambda ws: train(ws, "data.h5mu", "run", "--resume", "--overwrite"),
        ["--overwrite", "--resume", "not allowed"],
    ),
    "unknown precision": (
        lambda ws: train(ws, "data.h5mu", "new", "--precision", "float16"),
        ["--precision", "float16"],
    ),
    "epochs not a number": (lambda ws: train(ws, "data.h5mu", "new", "--max-epochs", "many"), ["--max-epochs", "many"]),
    "repeated covariate": (
        lambda ws: train(ws, "data.h5mu", "new", "--covariate-keys", "batch", "batch"),
        ["--covariate-keys", "duplicates"],
    ),
    "unknown rna modality": (lambda ws: train(ws, "data.h5mu", "new", "--rna-mod", "gex"), ["'gex'", "--rna-mod"]),
    "unknown cell type column": (
        lambda ws: train(ws, "data.h5mu", "new", "--cell-type-key", "nope"),
        ["'nope' not found", "cell_type"],
    ),
    "backed with a layer": (
        lambda ws: train(ws, "data.h5mu", "new", "--backed", "--layer", "counts"),
        ["--layer", "--backed"],
    ),
    "negative embedding steps": (lambda ws: embed(ws) + ["--steps", "-1"], ["--steps must be an integer >= 0"]),
    "zero threshold": (lambda ws: embed(ws, command="predict") + ["--threshold", "0"], ["--threshold must be > 0"]),
    "gene2peak min cells zero": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--min-cells", "0"),
        ["--min-cells must be > 0"],
    ),
    "gene2peak min cells above the cells": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--min-cells", "100000"),
        ["--min-cells 100000"],
    ),
    "gene2peak top n zero": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--top-n", "0"),
        ["--top-n must be a positive integer, got 0"],
    ),
    "gene2peak negative lr": (lambda ws: gene2peak(ws, "--genes", "g1", "--lr", "-1"), ["--lr must be >= 0"]),
    "gene2peak negative step size": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--step-size", "-1"),
        ["--step-size must be >= 0, got"],
    ),
    "gene2peak unknown groupby": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--groupby", "nope"),
        ["--groupby", "'nope'"],
    ),
    "gene2peak repeated gene": (lambda ws: gene2peak(ws, "--genes", "g1", "g1"), ["--genes repeat"]),
    "gene2peak unknown gene": (lambda ws: gene2peak(ws, "--genes", "NOPE"), ["NOPE", "not genes of the model"]),
    "evaluate holdout without batch key": (
        lambda ws: evaluate(ws, "--holdout-batch", "b0"),
        ["--holdout-batch needs --batch-key"],
    ),
    "evaluate train fraction zero": (
        lambda ws: evaluate(ws, "--train-fraction", "0"),
        ["--train-fraction must be in (0, 1]"],
    ),
    "evaluate max epochs zero": (lambda ws: evaluate(ws, "--max-epochs", "0"), ["--max-epochs must be >= 1"]),
}


@pytest.mark.parametrize("case", list(OPTION_CASES), ids=lambda c: c.replace(" ", "_"))
def test_bad_options(ws, capsys, case):
    build, words = OPTION_CASES[case]
    check_refused(ws, capsys, build(ws), words)


@pytest.mark.parametrize(
    "message,expected",
    [
        ("lower batch_size or validation_fraction", "lower --batch-size"),
        ("pass TrainConfig(batch_size=...) no larger than the number of cells", "give --batch-size no larger"),
        ("Pass rna_mod=/atac_mod= (CLI: --rna-mod/--atac-mod).", "Pass --rna-mod/--atac-mod."),
        ("at least 50% must match (min_feature_fraction)", "at least 50% must match"),
        ("n_steps must be an integer >= 0, got -1", "--steps must be an integer >= 0, got -1"),
        ("device 'cuda' asked for", "--device 'cuda' asked for"),
        ("file /data/max_epochs/batch_size.h5mu", "file /data/max_epochs/batch_size.h5mu"),
        ("genes of the model absent", "genes of the model absent"),
    ],
)
def test_library_messages_name_the_options(message, expected):
    assert cli_text(message).startswith(expected)


# ----------------------------------------------------------------------------- Ctrl-C


def interrupt(monkeypatch, owner, name, *, partial: bool = False):
    """Replace ``owner.name`` by a function raising KeyboardInterrupt (after writing half a file)."""

    def stop(*args, **kwargs):
        if partial:
            path = next(a for a in (*args, *kwargs.values()) if isinstance(a, str | Path))
            Path(path).write_bytes(b"half an output")
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, stop)


def _module(name: str):
    import importlib

    return importlib.import_module(name)


#: case -> (command line, what is interrupted: (module, attribute, writes half a file), key words)
INTERRUPT_CASES = {
    "embed while writing": (
        lambda ws: embed(ws),
        ("multidgd.io", "write", True),
        ["interrupted", "no output"],
    ),
    "embed learn while writing": (
        lambda ws: embed(ws, "run/model.pt", new_batch_data(ws), "emb.h5mu", "--new-classes", "learn"),
        ("multidgd.io", "write", True),
        ["interrupted"],
    ),
    "predict while inferring": (
        lambda ws: embed(ws, command="predict"),
        ("multidgd.model", "DGD.infer", False),
        ["interrupted"],
    ),
    "gene2peak while plotting": (
        lambda ws: gene2peak(ws, "--genes", "g1", "g2", "--plot", ws / "top.png", "--spearman", ws / "rho.csv"),
        ("multidgd.analysis", "plot_gene2peak", True),
        ["interrupted"],
    ),
    "gene2peak overwrite while plotting": (
        lambda ws: gene2peak(ws, "--genes", "g1", "--plot", ws / "top.png", "--overwrite", out=put(ws, "t.csv", b"x")),
        ("multidgd.analysis", "plot_gene2peak", True),
        ["interrupted"],
    ),
    "evaluate while scoring": (
        lambda ws: evaluate(ws),
        ("multidgd.evaluation.protocol", "heldout_metrics", False),
        ["interrupted", "no output"],
    ),
    "evaluate over an earlier run while drawing": (
        lambda ws: evaluate(ws, "--overwrite", out="run"),
        ("multidgd.evaluation.report", "draw_figures", False),
        ["interrupted"],
    ),
    "train before the first checkpoint": (
        lambda ws: train(ws, "data.h5mu", "new/deeper"),
        ("multidgd.model", "DGD.train", False),
        ["interrupted before this run wrote a checkpoint", "nothing to resume"],
    ),
    "train overwrite before the first checkpoint": (
        lambda ws: train(ws, "data.h5mu", "run", "--overwrite"),
        ("multidgd.model", "DGD.train", False),
        ["nothing to resume", "earlier run", "as it was"],
    ),
}


@pytest.mark.parametrize("case", list(INTERRUPT_CASES), ids=lambda c: c.replace(" ", "_"))
def test_interrupt(ws, capsys, monkeypatch, case):
    build, (module, attribute, partial), words = INTERRUPT_CASES[case]
    argv = build(ws)
    owner = _module(module)
    if "." in attribute:
        cls, attribute = attribute.split(".")
        owner = getattr(owner, cls)
    interrupt(monkeypatch, owner, attribute, partial=partial)
    check_refused(ws, capsys, argv, words, code=130)
