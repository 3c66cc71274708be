"""bfloat16 training, the malloc setting, and the CUDA path (skipped without a GPU)."""

import os
import sys

import numpy as np
import pytest
import torch

from multidgd import DGD, ModelConfig, TrainConfig
from multidgd._memory import freed_memory_kept
from multidgd.distributions import nb_nll_from_logits

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _train(mdata, device="cpu", precision="float32", epochs=4):
    model = DGD(mdata, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    cfg = TrainConfig(batch_size=32, early_stopping=False, precision=precision)
    return model.train(max_epochs=epochs, seed=0, device=device, config=cfg, progress_bar=False)


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")


def test_bfloat16_training_tracks_float32(mdata, caplog):
    a = _train(mdata, precision="float32", epochs=6)
    with caplog.at_level("WARNING", logger="multidgd.train"):
        b = _train(mdata, precision="bfloat16", epochs=6)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert "emulated" in caplog.text  # this CPU: the user is told it will be slow
    va, vb = a.history["val_reconstruction"].to_numpy(), b.history["val_reconstruction"].to_numpy()
    assert np.all(np.isfinite(vb))
    assert not np.array_equal(va, vb)  # the matmuls really ran in bfloat16
    np.testing.assert_allclose(vb, va, rtol=0.02)
    assert b.module.decoder.heads["atac"][-1].weight.dtype == torch.float32  # parameters stay float32


def test_freed_memory_kept_nests_and_restores():
    import resource

    with freed_memory_kept() as outer:
        with freed_memory_kept() as inner:
            block = torch.ones(50_000_000 // 4)  # a 50 MB block, above glibc's mmap threshold
            del block
        assert inner == outer
        if sys.platform.startswith("linux") and os.environ.get("MULTIDGD_KEEP_FREED_MEMORY") != "0":
            assert outer  # glibc: in effect
    # after the block a large allocation is served and freed again without error
    torch.ones(50_000_000 // 4).sum()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


@needs_cuda
def test_fused_loss_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(16, 300, generator=gen) * 2) * (torch.rand(16, 300, generator=gen) < 0.2)
    rows, cols = x.nonzero(as_tuple=True)
    logits = torch.randn(16, 300, generator=gen)
    rho, lib = torch.randn(300, generator=gen), torch.rand(16, generator=gen) * 3 + 2
    out = {}
    for dev in ("cpu", "cuda"):
        y = logits.to(dev).requires_grad_(True)
        p = rho.to(dev).requires_grad_(True)
        nll = nb_nll_from_logits(y, lib.to(dev), p, rows.to(dev), cols.to(dev), x[rows, cols].to(dev))
        gy, gp = torch.autograd.grad(nll.sum(), [y, p])
        out[dev] = [t.cpu() for t in (nll, gy, gp)]
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_and_inference_on_cuda(mdata, precision):
    cpu = _train(mdata, "cpu", precision)
    gpu = _train(mdata, "cuda", precision)
    rtol = 1e-3 if precision == "float32" else 0.02
    np.testing.assert_allclose(
        gpu.history["val_reconstruction"].to_numpy(), cpu.history["val_reconstruction"].to_numpy(), rtol=rtol
    )
    emb_gpu = gpu.infer(mdata, device="cuda", progress_bar=False)
    emb_cpu = gpu.infer(mdata, device="cpu", progress_bar=False)
    np.testing.assert_allclose(emb_gpu.nll.to_numpy(), emb_cpu.nll.to_numpy(), rtol=1e-3)


@needs_cuda
def test_gene2peak_on_cuda_matches_cpu(mdata):
    from multidgd import analysis

    model = _train(mdata, "cpu")
    kw = {"genes": ["g0", "g1"], "groupby": "cell_type", "step_size": 0.1, "progress_bar": False}
    by = ["gene", "group", "peak"]
    a = analysis.gene2peak(model, mdata, device="cpu", **kw).sort_values(by).reset_index(drop=True)
    b = analysis.gene2peak(model, mdata, device="cuda", **kw).sort_values(by).reset_index(drop=True)
    assert (a[by] == b[by]).all().all()
    for col in ("mean_delta", "mean_abs_delta", "mean_logfc"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-3, atol=1e-7)
