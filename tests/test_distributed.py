"""Data-parallel training with two gloo processes matches one process on the same minibatches."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from multidgd import DGD, ModelConfig, TrainConfig
from multidgd.io import read

from .conftest import make_mudata

CONFIG = TrainConfig(batch_size=32, early_stopping=False, checkpoint_every=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(path, epochs: int, checkpoint=None, resume=False) -> DGD:
    model = DGD(read(path), cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    return model.train(
        max_epochs=epochs,
        seed=0,
        device="cpu",
        config=CONFIG,
        progress_bar=False,
        checkpoint_path=checkpoint,
        resume=resume,
    )


def _worker(rank: int, world: int, port: int, path: str, out: str, epochs: int, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        model = _train(path, epochs, checkpoint=os.path.join(out, "checkpoint.pt"), resume=resume)
        model.save(os.path.join(out, f"rank{rank}.pt"))
        with open(os.path.join(out, f"world{rank}"), "w") as fh:  # proof the run was distributed
            fh.write(str(dist.get_world_size() if dist.is_initialized() else 1))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(world: int, path, out, epochs: int, resume: bool = False) -> None:
    mp.start_processes(
        _worker,
        args=(world, _free_port(), str(path), str(out), epochs, resume),
        nprocs=world,
        join=True,
        start_method="spawn",
    )


def _compare(a: DGD, b: DGD, rtol: float) -> None:
    for col in ("train_loss", "val_reconstruction", "train_nll_atac", "val_basal_prior"):
        np.testing.assert_allclose(a.history[col].to_numpy(), b.history[col].to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.get_latent_representation(), b.get_latent_representation(), atol=2e-3, rtol=0)
    np.testing.assert_allclose(a.get_covariate_representation(), b.get_covariate_representation(), atol=2e-3)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    for k in sa:
        np.testing.assert_allclose(sa[k].numpy(), sb[k].numpy(), atol=2e-3, rtol=0, err_msg=k)


def test_two_gloo_processes_match_one(tmp_path):
    path = tmp_path / "data.h5mu"
    make_mudata(n_cells=200, seed=5).write(path)
    single = _train(path, 6)
    _spawn(2, path, tmp_path, 6)
    for rank in (0, 1):
        assert (tmp_path / f"world{rank}").read_text() == "2"
        both = DGD.load(tmp_path / f"rank{rank}.pt")
        _compare(single, both, rtol=1e-4)
    # the two processes end with the same whole model
    r0, r1 = DGD.load(tmp_path / "rank0.pt"), DGD.load(tmp_path / "rank1.pt")
    np.testing.assert_array_equal(r0.get_latent_representation(), r1.get_latent_representation())
    assert r0.history.index.tolist() == list(range(1, 7))


def test_resume_with_another_number_of_processes(tmp_path):
    path = tmp_path / "data.h5mu"
    make_mudata(n_cells=200, seed=5).write(path)
    single = _train(path, 6)
    _spawn(2, path, tmp_path, 4)  # checkpoint at epoch 4, written by rank 0 with whole tables
    resumed = _train(path, 6, checkpoint=tmp_path / "checkpoint.pt", resume=True)  # one process
    assert resumed.history.index.tolist() == list(range(1, 7))
    _compare(single, resumed, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_nccl_processes_match_one(tmp_path):
    path = tmp_path / "data.h5mu"
    make_mudata(n_cells=200, seed=5).write(path)
    single = _train(path, 4)
    mp.start_processes(
        _cuda_worker, args=(2, _free_port(), str(path), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    both = DGD.load(tmp_path / "rank0.pt")
    assert (tmp_path / "world0").read_text() == "2"
    _compare(single, both, rtol=1e-3)


def _cuda_worker(rank: int, world: int, port: int, path: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    try:
        model = DGD(read(path), cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
        model.train(max_epochs=4, seed=0, device="cuda", config=CONFIG, progress_bar=False)
        assert dist.get_backend() == "nccl"
        model.save(os.path.join(out, f"rank{rank}.pt"))
        with open(os.path.join(out, f"world{rank}"), "w") as fh:
            fh.write(str(dist.get_world_size()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
