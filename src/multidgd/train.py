"""The training loop: separate Adam optimisers, per-epoch representation steps, validation,
early stopping with best-state restore, and atomic checkpoints for resume.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed
from ._memory import freed_memory_kept
from .checkpoint import TrainingState
from .config import TrainConfig
from .data import MODALITIES, MultiomeData, gather_rows
from .module import DGDModule
from .representation import RepresentationTable
from .settings import settings

__all__ = ["TrainingState", "annealed_basal_sd", "fit", "per_cell_nll", "per_cell_terms", "weighted_loss"]

logger = logging.getLogger(__name__)


def per_cell_terms(
    module: DGDModule,
    basal: torch.Tensor,
    covariate: torch.Tensor,
    counts: dict,
    library_size: torch.Tensor,
    labels: torch.Tensor | None,
    precision: str = "float32",
    absent: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-cell loss terms of a minibatch, each (n,): ``nll_<modality>``, ``basal_prior``,
    ``covariate_prior``. ``labels`` (n, V) selects the supervised covariate term;
    ``library_size`` is (n, n_modalities). ``absent`` (n, n_modalities) bool marks the
    modalities a cell lacks (a mosaic): their term is 0 (the library size given there is
    only a placeholder, e.g. 1).
    """
    log_lib = {m: torch.log(library_size[:, j]) for j, m in enumerate(module.modalities) if m in counts}
    nll = module.representation_nll(basal, covariate, counts, log_lib, precision=precision)
    if absent is not None:
        nll = {m: v.masked_fill(absent[:, module.modalities.index(m)], 0.0) for m, v in nll.items()}
    terms = {f"nll_{m}": v for m, v in nll.items()}
    terms["basal_prior"] = -module.basal.log_prob(basal)
    terms["covariate_prior"] = module.covariate_nll(covariate, labels)
    return terms


def weighted_loss(terms: dict[str, torch.Tensor], atac_weight: float) -> torch.Tensor:
    """(n,) the training loss of each cell: the sum of :func:`per_cell_terms`, the ATAC
    NLL times ``atac_weight`` (:class:`~multidgd.TrainConfig`).
    """
    return sum(atac_weight * v if k == "nll_atac" else v for k, v in terms.items())


@torch.no_grad()
def per_cell_nll(
    module: DGDModule, data: MultiomeData, rows: np.ndarray, basal: np.ndarray, covariate: np.ndarray
) -> np.ndarray:
    """NB negative log-likelihood of each modality for data ``rows`` under their
    representations, (n, 2) float64 (on the CPU, 512 cells at a time).
    """
    module = module.to("cpu").eval()
    out = np.full((len(rows), len(module.modalities)), np.nan)
    lib = torch.from_numpy(data.library_size)
    for start in range(0, len(rows), 512):
        sel = slice(start, start + 512)
        counts = {m: gather_rows(x, rows[sel]) for m, x in data.counts.items()}
        logf = module.decode(torch.from_numpy(basal[sel]), torch.from_numpy(covariate[sel]))
        nll = module.reconstruction_nll(logf, counts, lib[rows[sel]])
        for j, m in enumerate(module.modalities):
            out[sel, j] = nll[m].numpy()
    return out


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _make_optimizers(module: DGDModule, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    # fused Adam: one kernel per parameter instead of a dozen element-wise passes
    kw = {"betas": cfg.betas, "weight_decay": cfg.weight_decay, "fused": True}
    opts = {
        "decoder": torch.optim.Adam(
            [*module.decoder.parameters(), *module.dispersion_rho.parameters()], lr=cfg.lr_decoder, **kw
        ),
        "basal_mixture": torch.optim.Adam(module.basal.parameters(), lr=cfg.lr_basal_mixture, **kw),
    }
    if len(module.covariates):
        opts["covariate_mixture"] = torch.optim.Adam(module.covariates.parameters(), lr=cfg.lr_covariate_mixture, **kw)
    return opts


def _snapshot(module: DGDModule, tables: dict[str, RepresentationTable]) -> dict[str, Any]:
    return {
        "module": copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()}),
        "tables": {k: t.values.detach().cpu().clone() for k, t in tables.items()},
    }


class _Run:
    """One call of :func:`fit`: the module, tables and optimisers on the device, and the
    steps of an epoch (minibatches, the representation steps, best-state tracking,
    checkpoints).
    """

    def __init__(self, state: TrainingState, data: MultiomeData, config: TrainConfig, device, seed: int) -> None:
        self.state, self.data, self.config, self.device, self.seed = state, data, config, device, seed
        self.ctx = distributed.current()
        self.main = self.ctx is None or self.ctx.rank == 0
        self.module = state.module.to(device)
        self.sizes = {k: t.n for k, t in state.tables.items()}
        tables = {k: t.to(device) for k, t in state.tables.items()}
        if self.ctx is None:
            state.tables = tables  # the state follows training (e.g. after an interruption)
        else:
            tables = {k: distributed.shard_table(t, self.ctx) for k, t in tables.items()}
        self.tables = tables
        self.params = list(self.module.parameters())
        self.optimizers = _make_optimizers(self.module, config)
        if state.optimizer_states is not None:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state.optimizer_states[name])
        self.shuffle = torch.Generator().manual_seed(seed)
        if state.shuffle_rng_state is not None:
            self.shuffle.set_state(state.shuffle_rng_state)
        # a mosaic's cells lacking a modality: their term is masked, their library size a placeholder
        self.absent = None if data.present is None else torch.from_numpy(~data.present).to(device)
        library = data.library_size if data.present is None else np.where(data.present, data.library_size, 1.0)
        self.library = torch.from_numpy(library.astype(np.float32, copy=False)).to(device)
        self.codes = torch.from_numpy(data.covariate_codes).to(device)
        # per modality, the training and validation cells that have it: the NLL means' denominators
        self.n_with = {"train": self._modality_cells(state.train_index), "val": self._modality_cells(state.val_index)}
        self.has_val = len(state.val_index) > 0
        self.rep_kw = {"lr": config.lr_representation, "betas": config.betas, "weight_decay": config.weight_decay}

    def whole_tables(self) -> dict[str, RepresentationTable]:
        """The whole tables (gathered from every process in a distributed run)."""
        if self.ctx is None:
            return self.tables
        return {k: distributed.gather_table(t, self.sizes[k], self.ctx) for k, t in self.tables.items()}

    def batch_inputs(self, rows: np.ndarray):
        """Counts, library sizes, covariate codes and absent modalities (None: all present)
        of data ``rows`` on the device.
        """
        counts = {m: gather_rows(x, rows, self.device) for m, x in self.data.counts.items()}
        g = torch.from_numpy(rows).to(self.device)
        return counts, self.library[g], self.codes[g], None if self.absent is None else self.absent[g]

    def _modality_cells(self, rows: np.ndarray) -> dict[str, int] | None:
        """Per modality, how many of data ``rows`` have it (None for paired data)."""
        if self.data.present is None:
            return None
        return {m: int(self.data.present[rows, j].sum()) for j, m in enumerate(MODALITIES)}

    def save_checkpoint(self, path, extra: Callable[[], dict[str, Any]] | None) -> None:
        """Write the training checkpoint (rank 0; every process takes part in gathering)."""
        if path is None:
            return
        whole = self.whole_tables()  # collective: every process takes part
        if not self.main:
            return
        payload = checkpoint.training_payload(
            self.state,
            module_state=self.module.state_dict(),
            tables=whole,
            optimizers=self.optimizers,
            shuffle_rng_state=self.shuffle.get_state(),
            train_config=self.config.to_dict(),
            seed=self.seed,
            extra=extra() if extra else None,
        )
        checkpoint.write_atomic(payload, path)

    def _minibatch(self, local: np.ndarray, n_train: int, sums: dict[str, float]) -> float:
        """One optimiser step of the decoder and mixtures on a minibatch; returns its loss."""
        config, tables, device = self.config, self.tables, self.device
        hyper_scale = len(local) if config.hyperprior_per_cell else len(local) / n_train
        # the rows of this process (all of them without distribution) and their table rows
        mine, own = (local, local) if self.ctx is None else self.ctx.mine(local)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss = hyper_scale * self.module.hyperprior_nll() if self.main else None  # counted once
        if len(mine):
            counts, lib, labels, absent = self.batch_inputs(self.state.train_index[mine])
            idx = torch.from_numpy(own).to(device)
            zb = tables["train_basal"].rows(idx)
            zc = tables["train_covariate"].rows(idx)
            terms = per_cell_terms(self.module, zb, zc, counts, lib, labels, config.precision, absent)
            per_cell = weighted_loss(terms, config.atac_weight).sum()
            loss = per_cell if loss is None else loss + per_cell
        if loss is not None:
            loss.backward()
        if self.ctx is not None:
            distributed.all_reduce_grads(self.params)
        if config.l1_decoder:
            # the L1 term's gradient, added directly: cheaper than differentiating |W|
            self.module.decoder.add_l1_grad(config.l1_decoder)
        for opt in self.optimizers.values():
            opt.step()
        if len(mine):
            tables["train_basal"].accumulate(idx, zb.grad)
            tables["train_covariate"].accumulate(idx, zc.grad)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().sum())
        if config.representation_update == "batch":
            tables["train_basal"].step(**self.rep_kw)
            tables["train_covariate"].step(**self.rep_kw)
        return float(loss.detach()) if loss is not None else 0.0

    def train_epoch(self) -> dict[str, float]:
        """Every minibatch once, then the training representations' step; per-cell means."""
        config = self.config
        self.module.train()
        sums: dict[str, float] = {}
        total = 0.0
        n_train = len(self.state.train_index)
        batches = _batches(n_train, config.batch_size, self.shuffle)
        for local in batches:
            total += self._minibatch(local, n_train, sums)
        if config.representation_update == "epoch":
            self.tables["train_basal"].step(**self.rep_kw)
            self.tables["train_covariate"].step(**self.rep_kw)
        if self.ctx is not None:
            sums = distributed.all_reduce_sums({**sums, "\0total": total}, self.device)
            total = sums.pop("\0total")
        if config.l1_decoder:
            with torch.no_grad():
                total += len(batches) * config.l1_decoder * float(self.module.decoder.weight_l1())
        row: dict[str, float] = {"train_loss": total / n_train}
        row.update({f"train_{k}": v for k, v in _means(sums, n_train, self.n_with["train"]).items()})
        return row

    def track_best(self, epoch: int, metric: float) -> None:
        """Keep a snapshot of the best validation epoch; flag early stopping."""
        state, config = self.state, self.config
        if self.has_val and metric < state.best_metric:
            state.best_metric, state.best_epoch = metric, epoch
            state.best_snapshot = _snapshot(self.module, self.whole_tables())
        if (
            self.has_val
            and config.early_stopping
            and epoch >= config.min_epochs
            and epoch - state.best_epoch >= config.patience
        ):
            state.stopped_early = True

    def finish(self, keep_training_state: bool) -> None:
        """Restore the best epoch, hand the whole tables to the state, drop what is not kept."""
        state = self.state
        tables = self.whole_tables()
        if self.has_val and self.config.early_stopping and state.best_snapshot is not None:
            self.module.load_state_dict(state.best_snapshot["module"])
            for k, values in state.best_snapshot["tables"].items():
                tables[k].values.copy_(values.to(self.device))
        state.tables = tables
        opts = self.optimizers
        state.optimizer_states = {k: o.state_dict() for k, o in opts.items()} if keep_training_state else None
        if not keep_training_state:
            state.best_snapshot = None
        state.shuffle_rng_state = self.shuffle.get_state()


@freed_memory_kept()
def fit(
    state: TrainingState,
    data: MultiomeData,
    *,
    config: TrainConfig,
    max_epochs: int,
    device: torch.device,
    seed: int,
    checkpoint_path: str | Path | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    progress_bar: bool = True,
    keep_training_state: bool = False,
) -> TrainingState:
    """Train ``state`` in place up to ``max_epochs`` (continuing from ``state.epoch``).

    The optimisers' moments and the best epoch's snapshot (at the peaks head's size, about
    three copies of the decoder) are written to checkpoints and dropped at the end, unless
    ``keep_training_state``, which a later call needs to continue exactly where this one ended.

    Each epoch: every minibatch steps the decoder and mixture optimisers; the training
    representations step once per epoch (or per minibatch, see ``TrainConfig``); the
    validation representations take one step with everything else frozen, and their
    reconstruction loss drives early stopping. At the end the best epoch's parameters and
    representations are restored.

    In a distributed run (see :mod:`multidgd.distributed`) each process trains the cells it
    owns; ``state`` holds whole tables before and after.
    """
    from tqdm.auto import tqdm

    _check_precision(config.precision, device)
    run = _Run(state, data, config, device, seed)
    bar = tqdm(
        range(state.epoch + 1, max_epochs + 1),
        initial=state.epoch,
        total=max_epochs,
        desc="Training",
        unit="epoch",
        disable=None if settings.shows_progress(progress_bar) and run.main else True,
    )
    for epoch in bar:
        if state.stopped_early:
            break
        t0 = time.perf_counter()
        sd = annealed_basal_sd(config, run.module.basal.sd_init, epoch)
        if sd is not None:
            with torch.no_grad():
                run.module.basal.log_precision.fill_(-2.0 * math.log(sd))
        row: dict[str, float] = {"epoch": epoch, **run.train_epoch()}
        if run.has_val:
            row.update(
                _validation_epoch(
                    run.module,
                    run.tables,
                    state.val_index,
                    run.batch_inputs,
                    config,
                    run.rep_kw,
                    device,
                    run.ctx,
                    run.n_with["val"],
                )
            )
        row["seconds"] = time.perf_counter() - t0
        state.history.append(row)
        state.epoch = epoch
        metric = row.get("val_reconstruction", float("nan"))
        run.track_best(epoch, metric)
        _show_progress(
            bar,
            row,
            state,
            config,
            max_epochs,
            log_lines=settings.shows_progress(progress_bar) and run.main and bar.disable,
        )
        if epoch % config.checkpoint_every == 0 or state.stopped_early or epoch == max_epochs:
            run.save_checkpoint(checkpoint_path, checkpoint_extra)
    bar.close()
    if state.stopped_early:
        logger.info("early stopping at epoch %d; best epoch %d", state.epoch, state.best_epoch)
    run.finish(keep_training_state)
    return state


def annealed_basal_sd(config: TrainConfig, sd_end: float, epoch: int) -> float | None:
    """The basal components' standard deviation at the start of ``epoch`` (from 1) under
    ``config.basal_sd_start`` (None: not annealed); see :class:`~multidgd.TrainConfig`.
    """
    if config.basal_sd_start is None:
        return None
    f = min(1.0, (epoch - 1) / config.basal_sd_anneal_epochs)
    return config.basal_sd_start * (sd_end / config.basal_sd_start) ** f


#: Without a terminal (batch jobs), training logs a line every this many epochs.
LOG_EVERY = 10


def _show_progress(bar, row: dict, state: TrainingState, config: TrainConfig, max_epochs: int, *, log_lines: bool):
    """Update the bar (loss, best epoch, epochs without improvement); log a line when there is no terminal.

    When early stopping ends training, the bar's total becomes the last epoch, so it ends full.
    """
    shown = {"loss": f"{row['train_loss']:.4g}"}
    if "val_reconstruction" in row:
        shown["val_rec"] = f"{row['val_reconstruction']:.4g}"
        shown["best"] = str(state.best_epoch)
        if config.early_stopping:
            shown["wait"] = f"{state.epoch - state.best_epoch}/{config.patience}"
    bar.set_postfix(shown, refresh=False)
    if state.stopped_early and not bar.disable:
        bar.total = state.epoch
        bar.refresh()
    if log_lines and (state.epoch % LOG_EVERY == 0 or state.stopped_early or state.epoch == max_epochs):
        text = ", ".join(f"{k} {v}" for k, v in shown.items())
        stop = "; stopping early" if state.stopped_early else ""
        logger.info("epoch %d/%d: %s (%.2f s/epoch)%s", state.epoch, max_epochs, text, row["seconds"], stop)


def _check_precision(precision: str, device: torch.device) -> None:
    """Warn when bfloat16 matmuls would be emulated (far slower than float32) on ``device``."""
    if precision != "bfloat16":
        return
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    if not supported:
        logger.warning(
            "precision='bfloat16': this %s has no bfloat16 matmul support, so the matmuls are "
            "emulated and much slower than float32; precision='float32' is faster here",
            "GPU" if device.type == "cuda" else "CPU",
        )


def _means(sums: dict[str, float], n: int, n_with: dict[str, int] | None) -> dict[str, float]:
    """Per-cell means of summed terms; a modality's NLL over the cells that have it (``n_with``)."""
    out = {}
    for k, v in sums.items():
        m = k[4:] if k.startswith("nll_") else None
        out[k] = v / max(n_with[m], 1) if n_with is not None and m in n_with else v / n
    return out


def _validation_epoch(
    module, tables, val_index, batch_inputs, config, rep_kw, device, ctx=None, n_with=None
) -> dict[str, float]:
    """One pass over validation cells: grads reach only their representations, then one step.

    Each validation cell's terms depend only on its own rows, so a distributed process
    takes the cells it owns in any grouping; the sums are then added over processes.
    """
    module.eval()
    sums: dict[str, float] = {}
    owned = val_index if ctx is None else val_index[ctx.owned(len(val_index))]
    for local in _batches(len(owned), config.batch_size, None):
        counts, lib, _, absent = batch_inputs(owned[local])
        idx = torch.from_numpy(local).to(device)
        zb = tables["val_basal"].rows(idx)
        zc = tables["val_covariate"].rows(idx)
        terms = per_cell_terms(module, zb, zc, counts, lib, None, config.precision, absent)
        loss = weighted_loss(terms, config.atac_weight).sum()
        inputs = [zb, zc] if zc.shape[1] else [zb]
        grads = torch.autograd.grad(loss, inputs)
        tables["val_basal"].accumulate(idx, grads[0])
        if zc.shape[1]:
            tables["val_covariate"].accumulate(idx, grads[1])
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach().sum())
    tables["val_basal"].step(**rep_kw)
    tables["val_covariate"].step(**rep_kw)
    if ctx is not None:
        sums = distributed.all_reduce_sums(sums, device)
    out = {f"val_{k}": v for k, v in _means(sums, len(val_index), n_with).items()}
    weights = {"val_nll_atac": config.atac_weight}
    out["val_reconstruction"] = sum(weights.get(k, 1.0) * v for k, v in out.items() if k.startswith("val_nll_"))
    return out
