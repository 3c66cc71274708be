import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import multidgd
import multidgd.train as train_module
from multidgd import DGD, ModelConfig, TrainConfig
from multidgd.checkpoint import SettingMismatch
from multidgd.initialization import initial_state

FAST = TrainConfig(batch_size=32, min_epochs=2, patience=2, checkpoint_every=1)


def _model(mdata, **kw):
    kw.setdefault("cell_type_key", "cell_type")
    kw.setdefault("covariate_keys", ["batch"])
    return DGD(mdata, config=ModelConfig(hidden_dim=16), **kw)


def _trained(mdata, epochs=4, seed=0, **kw):
    return _model(mdata, **kw).train(max_epochs=epochs, seed=seed, device="cpu", config=FAST, progress_bar=False)


def test_same_seed_same_embedding(mdata):
    a, b, c = _trained(mdata), _trained(mdata), _trained(mdata, seed=1)
    np.testing.assert_array_equal(a.get_latent_representation(), b.get_latent_representation())
    np.testing.assert_array_equal(a.get_covariate_representation("batch"), b.get_covariate_representation("batch"))
    assert not np.allclose(a.get_latent_representation(), c.get_latent_representation())


def test_outputs_shapes_and_history(mdata):
    model = _trained(mdata, epochs=3)
    z = model.get_latent_representation()
    assert z.shape == (160, 20) and np.isfinite(z).all()
    assert model.get_covariate_representation().shape == (160, 2)
    h = model.history
    assert list(h.index) == [1, 2, 3]
    for col in [
        "train_nll_rna",
        "train_nll_atac",
        "train_basal_prior",
        "train_covariate_prior",
        "val_nll_rna",
        "val_nll_atac",
        "val_reconstruction",
        "seconds",
    ]:
        assert col in h.columns and np.isfinite(h[col]).all()
    np.testing.assert_allclose(h["val_reconstruction"], h["val_nll_rna"] + FAST.atac_weight * h["val_nll_atac"])
    # 10 % validation, stratified by cell type
    nll = model.reconstruction_nll()
    assert set(nll["split"]) == {"train", "validation"}
    assert (nll["split"] == "validation").sum() == 16
    frac = model.decode("atac")
    np.testing.assert_allclose(frac.sum(1), 1.0, rtol=1e-5)
    assert model.n_components == 3


def test_training_lowers_loss(mdata):
    model = _model(mdata).train(
        max_epochs=30,
        seed=0,
        device="cpu",
        progress_bar=False,
        config=TrainConfig(batch_size=32, early_stopping=False, representation_update="batch"),
    )
    h = model.history
    assert h["train_nll_rna"].iloc[-1] < h["train_nll_rna"].iloc[0]
    assert h["val_reconstruction"].iloc[-1] < h["val_reconstruction"].iloc[0]


def test_cluster_probabilities(mdata):
    model = _trained(mdata)
    cl = model.cluster()
    assert cl.probabilities.shape == (160, 3)
    np.testing.assert_allclose(cl.probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(cl.labels, cl.probabilities.argmax(1))
    z = torch.from_numpy(model.get_latent_representation())
    brute = model.module.basal.joint_log_prob(z).detach()
    np.testing.assert_array_equal(cl.labels, brute.argmax(1).numpy())


def test_cluster_probabilities_from_the_counts(mdata):
    from multidgd.prediction import CLUSTER_TEMPERATURES, component_posterior

    model = _trained(mdata)
    latent = model.cluster()
    cl = model.cluster(mdata)
    np.testing.assert_array_equal(cl.labels, latent.labels)  # the clusters do not change
    assert cl.temperature in CLUSTER_TEMPERATURES
    ok = cl.labels >= 0
    np.testing.assert_allclose(cl.probabilities[ok].sum(1), 1.0, rtol=1e-5)
    assert np.isnan(cl.probabilities[~ok]).all()
    # brute force: the candidates' NLL at each (component, own class) and the tempered posterior
    emb = model.infer(
        mdata[model.obs_names[ok]], covariate_start="label", start="search", n_steps=0, progress_bar=False
    )
    c = emb.candidates
    nll = c.nll.reshape(len(c.nll), model.n_components, -1)
    logw = -nll / cl.temperature + c.log_prior.reshape(model.n_components, -1)[None]
    m = np.where(np.isfinite(logw), logw, -np.inf).max(axis=(1, 2), keepdims=True)
    w = np.exp(logw - m).sum(2)
    np.testing.assert_allclose(cl.probabilities[ok], w / w.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    fixed = model.cluster(mdata, temperature=3.0)
    assert fixed.temperature == 3.0
    np.testing.assert_allclose(
        fixed.probabilities[ok], component_posterior(c.nll, c.log_prior, model.n_components, 3.0), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match="lacks 1 of the model's trained cells"):
        model.cluster(mdata[mdata.obs_names[1:]])
    with pytest.raises(ValueError, match="temperature"):
        model.cluster(mdata, temperature=0.0)


def test_save_load_identical(mdata, tmp_path):
    model = _trained(mdata)
    model.save(tmp_path / "m.pt")
    loaded = DGD.load(tmp_path / "m.pt")
    assert loaded.data is None
    np.testing.assert_array_equal(model.get_latent_representation(), loaded.get_latent_representation())
    np.testing.assert_array_equal(model.get_covariate_representation(), loaded.get_covariate_representation())
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(model.decode(mod), loaded.decode(mod))
    np.testing.assert_array_equal(model.cluster().labels, loaded.cluster().labels)
    pd.testing.assert_frame_equal(model.history, loaded.history)
    assert loaded.obs_names.equals(model.obs_names)
    assert loaded.config == model.config
    with pytest.raises(RuntimeError, match="without data"):
        loaded.train(max_epochs=1)


def test_load_rejects_other_files(tmp_path):
    torch.save({"kind": "something"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="expected 'multidgd-model'"):
        DGD.load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        DGD.load(tmp_path / "missing.pt")


def test_resume_after_interruption_matches_uninterrupted(mdata, tmp_path, monkeypatch):
    full = _model(mdata).train(
        max_epochs=6, seed=3, device="cpu", config=FAST, progress_bar=False, checkpoint_path=tmp_path / "a.pt"
    )
    calls = {"n": 0}
    original = train_module._validation_epoch

    def interrupt_in_epoch_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "_validation_epoch", interrupt_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        _model(mdata).train(
            max_epochs=6, seed=3, device="cpu", config=FAST, progress_bar=False, checkpoint_path=tmp_path / "b.pt"
        )
    monkeypatch.setattr(train_module, "_validation_epoch", original)
    assert not (tmp_path / "b.pt.tmp").exists()
    resumed = _model(mdata).train(
        max_epochs=6,
        seed=3,
        device="cpu",
        config=FAST,
        progress_bar=False,
        checkpoint_path=tmp_path / "b.pt",
        resume=True,
    )
    np.testing.assert_array_equal(full.get_latent_representation(), resumed.get_latent_representation())
    for (k, v), (k2, v2) in zip(full.module.state_dict().items(), resumed.module.state_dict().items(), strict=False):
        assert k == k2 and torch.equal(v, v2), k
    cols = [c for c in full.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(full.history[cols], resumed.history[cols])


def test_resume_rejects_other_data(mdata, tmp_path):
    _trained(mdata).train(
        max_epochs=2, seed=0, device="cpu", config=FAST, progress_bar=False, checkpoint_path=tmp_path / "c.pt"
    )
    other = _model(mdata, covariate_keys=[])
    with pytest.raises(ValueError, match="written for other data"):
        other.train(max_epochs=3, config=FAST, checkpoint_path=tmp_path / "c.pt", resume=True, progress_bar=False)


def test_no_covariates_no_validation(mdata):
    model = DGD(mdata, config=ModelConfig(hidden_dim=16)).train(
        max_epochs=2, device="cpu", progress_bar=False, config=TrainConfig(batch_size=32, validation_fraction=0.0)
    )
    assert model.n_components > 1 and model.n_components_choice.startswith(f"K = {model.n_components} chosen")
    assert np.isfinite(model.get_latent_representation()).all()
    assert "val_reconstruction" not in model.history.columns
    with pytest.raises(ValueError, match="no covariates"):
        model.get_covariate_representation()


def test_several_covariates(mdata):
    obs = mdata.obs.copy()
    obs["donor"] = pd.Categorical(np.where(np.arange(160) % 3 == 0, "d1", "d2"))
    mdata.obs = obs
    model = _trained(mdata, epochs=2, covariate_keys=["batch", "donor"])
    assert model.module.decoder.trunk[0].in_features == 20 + 2 * 2
    assert model.get_covariate_representation("donor").shape == (160, 2)
    with pytest.raises(ValueError, match="several covariates"):
        model.get_covariate_representation()


def test_fewer_cells_than_batch(mdata):
    with pytest.raises(ValueError, match="fewer than one minibatch"):
        _model(mdata).train(max_epochs=1, config=TrainConfig(batch_size=500), progress_bar=False)


def test_untrained_and_bad_arguments(mdata):
    model = _model(mdata)
    with pytest.raises(RuntimeError, match="not trained"):
        model.get_latent_representation()
    with pytest.raises(ValueError, match="device must be"):
        model.train(max_epochs=1, device="tpu")
    with pytest.raises(ValueError, match="max_epochs"):
        model.train(max_epochs=0)
    with pytest.raises(ValueError, match="representation_update"):
        TrainConfig(representation_update="sometimes")


def test_test_split_cells_are_nan(mdata):
    obs = mdata.obs.copy()
    obs["split"] = ["train"] * 130 + ["validation"] * 15 + ["test"] * 15
    mdata.obs = obs
    model = _trained(mdata, epochs=2, split_key="split")
    z = model.get_latent_representation()
    assert np.isnan(z[145:]).all() and np.isfinite(z[:145]).all()
    assert (model.cluster().labels[145:] == -1).all()


def test_public_api():
    assert set(multidgd.__all__) >= {"DGD", "ModelConfig", "TrainConfig"}


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_l1_gradient_matches_autograd(chunk):
    from multidgd.decoder import Decoder

    torch.manual_seed(0)
    dec = Decoder(5, {"rna": 30, "atac": 50}, hidden_dim=8, n_trunk=2, n_head=3)
    expected = torch.autograd.grad(0.3 * dec.weight_l1(), [m.weight for m in dec.modules() if hasattr(m, "weight")])
    for m in dec.modules():
        if hasattr(m, "weight"):
            m.weight.grad = torch.zeros_like(m.weight)
    dec.add_l1_grad(0.3, chunk_elements=chunk)
    got = [m.weight.grad for m in dec.modules() if hasattr(m, "weight")]
    assert len(got) == len(expected) == 8
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    # the value without gradients: in blocks, against a float64 sum
    exact = sum(float(m.weight.detach().double().abs().sum()) for m in dec.modules() if hasattr(m, "weight"))
    with torch.no_grad():
        value = dec.weight_l1(chunk_elements=chunk)
    assert value.dtype == torch.float64 and float(value) == pytest.approx(exact, rel=1e-6)


def test_training_state_is_dropped_after_training_and_results_unchanged(mdata):
    """Optimiser moments and the best-epoch snapshot are only needed to continue (checkpoints
    hold them): DGD.train drops them; keeping them gives the same model, which is the best epoch."""
    model = _trained(mdata, epochs=8)
    assert model.state.optimizer_states is None and model.state.best_snapshot is None

    other = _model(mdata)
    state = initial_state(other.data, other.config, FAST, other.n_components, 0)
    train_module.fit(
        state,
        other.data,
        config=FAST,
        max_epochs=8,
        device=torch.device("cpu"),
        seed=0,
        progress_bar=False,
        keep_training_state=True,
    )
    assert set(state.optimizer_states) >= {"decoder", "basal_mixture"} and state.best_snapshot is not None
    for name, value in state.module.state_dict().items():
        torch.testing.assert_close(value, model.module.state_dict()[name], rtol=0, atol=0)
        torch.testing.assert_close(value, state.best_snapshot["module"][name].to(value.device), rtol=0, atol=0)
    assert state.best_epoch == model.state.best_epoch


@pytest.mark.parametrize("width", [1, 3])
def test_covariate_width_other_than_two(mdata, tmp_path, width):
    """A covariate space of 1 or 3 dimensions trains, saves, loads and places new cells."""
    model = DGD(
        mdata,
        cell_type_key="cell_type",
        covariate_keys=["batch"],
        config=ModelConfig(hidden_dim=16, covariate_dim=width),
    ).train(max_epochs=3, seed=0, device="cpu", config=FAST, progress_bar=False)
    cov = model.get_covariate_representation("batch")
    assert cov.shape == (160, width) and np.isfinite(cov).all()
    # training cells start at their class's mean: every coordinate differs between classes
    start = initial_state(model.data, model.config, FAST, model.n_components, 0)
    first = start.tables["train_covariate"].values.numpy()
    codes = model.data.covariate_codes[start.train_index, 0]
    means = start.module.covariates[0].mean.detach().numpy()
    np.testing.assert_array_equal(first, means[codes])
    model.save(tmp_path / "m.pt")
    loaded = DGD.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.get_covariate_representation("batch"), cov)
    emb = loaded.infer(mdata[:20].copy(), n_steps=3, device="cpu", progress_bar=False)
    assert emb.covariate.shape == (20, width) and np.isfinite(emb.latent).all()
    assert emb.covariate_representation("batch").shape == (20, width)
    split = model.split
    assert split.index.equals(model.obs_names)
    assert (split == "validation").sum() == 16 and (split == "train").sum() == 144


def _checkpointed(mdata, path, epochs=3, seed=3):
    return _model(mdata).train(
        max_epochs=epochs, seed=seed, device="cpu", config=FAST, progress_bar=False, checkpoint_path=path
    )


@pytest.mark.parametrize(
    ("change", "setting", "given", "stored"),
    [
        ({"seed": 4}, "seed", 4, 3),
        ({"config": dataclasses.replace(FAST, batch_size=16)}, "batch_size", 16, 32),
        ({"config": dataclasses.replace(FAST, precision="bfloat16")}, "precision", "bfloat16", "float32"),
        ({"max_epochs": 2}, "max_epochs", 2, 3),
    ],
)
def test_resume_refuses_other_settings(mdata, tmp_path, change, setting, given, stored):
    """The checkpoint's settings win: a different one is an error naming both values, and
    the checkpoint is left as it was."""
    path = tmp_path / "c.pt"
    _checkpointed(mdata, path)
    before = path.read_bytes()
    kw = {"max_epochs": 3, "device": "cpu", "progress_bar": False, "checkpoint_path": path, "resume": True}
    with pytest.raises(SettingMismatch) as err:
        _model(mdata).train(**{**kw, **change})
    assert (err.value.setting, err.value.given, err.value.stored) == (setting, given, stored)
    assert str(given) in str(err.value) and str(stored) in str(err.value)
    assert path.read_bytes() == before


def test_resume_keeps_the_checkpoint_settings_and_extends(mdata, tmp_path):
    """Without seed/config the checkpoint's are used; a larger max_epochs trains on to it and
    ends where an uninterrupted run of that length ends."""
    full = _checkpointed(mdata, tmp_path / "full.pt", epochs=5)
    _checkpointed(mdata, tmp_path / "c.pt", epochs=3)
    (tmp_path / "c.pt.tmp").write_bytes(b"left by a killed write")
    resumed = _model(mdata).train(
        max_epochs=5, device="cpu", progress_bar=False, checkpoint_path=tmp_path / "c.pt", resume=True
    )
    assert resumed.seed == 3 and resumed.train_config == FAST
    assert list(resumed.history.index) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(full.get_latent_representation(), resumed.get_latent_representation())
    assert not (tmp_path / "c.pt.tmp").exists()
    same = _model(mdata).train(
        max_epochs=5,
        seed=3,
        config=FAST,
        device="cpu",
        progress_bar=False,
        checkpoint_path=tmp_path / "c.pt",
        resume=True,
    )
    np.testing.assert_array_equal(same.get_latent_representation(), resumed.get_latent_representation())


def test_load_names_a_missing_section(mdata, tmp_path):
    model = _trained(mdata, epochs=2)
    model.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["tables"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt: the model file lacks its 'tables' section"):
        DGD.load(tmp_path / "broken.pt")


def test_training_without_a_terminal_logs_progress_lines(mdata, caplog):
    import logging

    from multidgd import train as train_module

    with caplog.at_level(logging.INFO, logger="multidgd.train"):  # pytest's output is not a terminal
        model = DGD(mdata, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16))
        model.train(max_epochs=23, seed=0, progress_bar=True, config=TrainConfig(batch_size=32, patience=100))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 10/23", "epoch 20/23", "epoch 23/23"]
    history = model.history
    best = int(history["val_reconstruction"].loc[:20].idxmin())
    assert f"best {best}, wait {20 - best}/100" in lines[1] and "s/epoch" in lines[1]
    assert train_module.LOG_EVERY == 10
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="multidgd.train"):
        DGD(mdata, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16)).train(
            max_epochs=12, seed=0, progress_bar=False, config=TrainConfig(batch_size=32)
        )
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]


def test_scvi_habits_save_to_a_directory_and_latents_of_other_cells(mdata, tmp_path):
    from .conftest import make_mudata

    model = _trained(mdata, epochs=2)
    written = model.save(tmp_path / "run")  # a path without a suffix is a directory
    assert written == tmp_path / "run" / "model.pt" and written.is_file()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "run")
    model.save(tmp_path / "run", overwrite=True)
    loaded = DGD.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    # indices, and other data: the model's own cells keep theirs, new cells are placed by infer
    z = model.get_latent_representation()
    np.testing.assert_array_equal(model.get_latent_representation(indices=[3, 1]), z[[3, 1]])
    np.testing.assert_array_equal(loaded.get_latent_representation(mdata[:10].copy()), z[:10])
    new = make_mudata(n_cells=30, seed=9)
    new.obs_names = [f"new{i}" for i in range(30)]
    for m in new.mod.values():
        m.obs_names = new.obs_names
    expected = model.infer(new, progress_bar=False, n_steps=5).latent
    got = model.get_latent_representation(new, indices=np.arange(30) % 2 == 0, progress_bar=False, n_steps=5)
    np.testing.assert_allclose(got, expected[::2], atol=1e-5)  # 15 cells placed instead of 30: float rounding


def test_getters_with_transform_batch_and_library_size(mdata):
    from multidgd.profiles import FeatureBlocks

    model = _trained(mdata, epochs=2)
    z = model.get_latent_representation()
    for c, name in enumerate(model.covariate_categories[0]):
        mean = model.module.covariates[0].mean.detach().numpy()[c]
        expected = FeatureBlocks(model.module, z, np.tile(mean, (len(z), 1)).astype(np.float32), "rna")
        got = model.get_normalized_expression(transform_batch=name, return_type="array")
        np.testing.assert_allclose(got, expected.fractions(np.arange(30)), rtol=1e-5)
    assert not np.allclose(
        model.get_normalized_expression(transform_batch="b0", return_type="array"),
        model.get_normalized_expression(transform_batch="b1", return_type="array"),
    )
    per10k = model.get_normalized_accessibility(library_size=1e4, return_type="array")
    np.testing.assert_allclose(per10k.sum(axis=1), 1e4, rtol=1e-4)
    for bad, match in (({"transform_batch": "b9"}, r"batch has no class 'b9'; classes: \['b0', 'b1'\]"),
                       ({"library_size": 1e4, "scale": "counts"}, "goes with scale='fraction'")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            model.get_normalized_expression(**bad)


def test_annealing_schedule_reaches_its_end_value():
    from multidgd.train import annealed_basal_sd

    cfg = TrainConfig(basal_sd_start=0.4, basal_sd_anneal_epochs=4)
    values = [annealed_basal_sd(cfg, 0.025, e) for e in range(1, 9)]
    assert values[0] == pytest.approx(0.4)
    np.testing.assert_allclose(values[4:], 0.025, rtol=1e-12)  # epoch 5 on: the end value, held
    np.testing.assert_allclose(values[2], np.sqrt(0.4 * 0.025), rtol=1e-12)  # geometric: half-way at epoch 3
    assert all(a > b for a, b in zip(values[:4], values[1:5], strict=True))
    assert annealed_basal_sd(TrainConfig(basal_sd_start=None), 0.025, 3) is None
    for bad in ({"basal_sd_start": 0.0}, {"basal_sd_start": float("inf")}, {"basal_sd_anneal_epochs": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="basal_init_clip"):
        TrainConfig(basal_init_clip=1.5)


def test_training_follows_the_annealing_schedule(mdata, monkeypatch):
    seen = []
    original = train_module._Run.train_epoch

    def recording(self):
        seen.append(float(self.module.basal.sd.detach().mean()))
        return original(self)

    monkeypatch.setattr(train_module._Run, "train_epoch", recording)
    cfg = dataclasses.replace(FAST, early_stopping=False, basal_sd_start=0.5, basal_sd_anneal_epochs=3)
    model = _model(mdata).train(max_epochs=5, seed=0, device="cpu", config=cfg, progress_bar=False)
    sd0 = model.module.basal.sd_init
    np.testing.assert_allclose(seen, [0.5 * (sd0 / 0.5) ** min(1, e / 3) for e in range(5)], rtol=1e-6)
    # learning moves the sd a little within the last epoch, from sigma_0
    assert float(model.module.basal.sd.detach().mean()) == pytest.approx(sd0, rel=0.1)


def test_configs_written_before_the_mixture_options_load_with_them_off():
    old = TrainConfig().to_dict()
    del old["basal_sd_start"], old["basal_init_clip"], old["basal_sd_anneal_epochs"]
    cfg = TrainConfig.from_dict(old)
    assert cfg.basal_sd_start is None and cfg.basal_init_clip is None and cfg.basal_sd_anneal_epochs == 30
    assert TrainConfig().basal_sd_start is None and TrainConfig().basal_init_clip is None  # options, off by default


def test_atac_weight_scales_the_atac_term_of_the_training_loss(mdata, monkeypatch):
    from multidgd.train import weighted_loss

    terms = {
        k: torch.tensor(v)
        for k, v in {"nll_rna": [1.0, 2.0], "nll_atac": [4.0, 8.0], "basal_prior": [0.5, 0.5]}.items()
    }
    np.testing.assert_allclose(weighted_loss(terms, 0.25).numpy(), [2.5, 4.5])
    np.testing.assert_allclose(weighted_loss(terms, 1.0).numpy(), [5.5, 10.5])
    first = {}
    per_cell_terms, minibatch = train_module.per_cell_terms, train_module._Run._minibatch

    def recording_terms(*args, **kwargs):
        out = per_cell_terms(*args, **kwargs)
        first.setdefault("atac", float(out["nll_atac"].detach().sum()))
        return out

    def recording_loss(self, *args):
        loss = minibatch(self, *args)
        first.setdefault("loss", loss)
        return loss

    monkeypatch.setattr(train_module, "per_cell_terms", recording_terms)
    monkeypatch.setattr(train_module._Run, "_minibatch", recording_loss)
    losses, atac, histories = {}, {}, {}
    for w in (1.0, 0.5):
        first.clear()
        model = _model(mdata).train(
            max_epochs=2, seed=0, device="cpu", config=dataclasses.replace(FAST, atac_weight=w), progress_bar=False
        )
        losses[w], atac[w], histories[w] = first["loss"], first["atac"], model.history
    # the same first minibatch (same seed and start): the losses differ by half its ATAC NLL
    assert atac[1.0] == pytest.approx(atac[0.5], rel=1e-6)
    assert losses[1.0] - losses[0.5] == pytest.approx(0.5 * atac[1.0], rel=1e-4)
    h = histories[0.5]  # early stopping follows the weighted validation loss; the logged NLLs are not weighted
    np.testing.assert_allclose(h["val_reconstruction"], h["val_nll_rna"] + 0.5 * h["val_nll_atac"], rtol=1e-6)
    assert not np.allclose(h["train_nll_atac"], histories[1.0]["train_nll_atac"])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="atac_weight"):
            TrainConfig(atac_weight=bad)
    old = TrainConfig(atac_weight=0.5).to_dict()
    del old["atac_weight"]
    assert TrainConfig.from_dict(old).atac_weight == 1.0  # files written before the option: unweighted
