"""The generative network: decoder, NB dispersions and mixture priors, with the per-cell loss."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .config import PRECISIONS, ModelConfig
from .decoder import Decoder
from .distributions import nb_log_prob_sparse, nb_nll_from_logits
from .mixture import GaussianMixture

__all__ = ["DGDModule", "SparseCounts", "autocast", "decoder_input", "frozen"]


def decoder_input(basal: torch.Tensor, covariate: torch.Tensor | None) -> torch.Tensor:
    """(n, L + 2V) decoder input: basal rows, then covariate rows when there are any."""
    return basal if covariate is None or covariate.shape[1] == 0 else torch.cat([basal, covariate], dim=1)


def autocast(device_type: str, precision: str):
    """Autocast context for the decoder's matmuls: off for ``"float32"``, bfloat16 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=torch.bfloat16)


#: Non-zeros of a minibatch: (rows, cols, values), as returned by ``data.gather_rows``.
SparseCounts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DGDModule(nn.Module):
    """Decoder + dispersions + basal mixture + one supervised mixture per covariate.

    Parameters
    ----------
    n_features
        Modality -> number of features (in decoder order).
    n_covariate_classes
        Number of classes of each covariate.
    n_components
        Basal mixture components K.
    config
        Model configuration.
    seed
        Seed of every random initial value.
    """

    def __init__(
        self,
        n_features: dict[str, int],
        n_covariate_classes: list[int],
        n_components: int,
        config: ModelConfig,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.modalities = list(n_features)
        gen = torch.Generator().manual_seed(seed)
        input_dim = config.latent_dim + config.covariate_dim * len(n_covariate_classes)
        # nn.Linear initialises from the global generator: fork it so the caller's state is untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder = Decoder(
                input_dim,
                n_features,
                hidden_dim=config.hidden_dim,
                n_trunk=config.n_trunk,
                n_head=config.n_head,
            )
        self.dispersion_rho = nn.ParameterDict(
            {m: nn.Parameter(torch.full((f,), float(config.dispersion_init))) for m, f in n_features.items()}
        )
        self.basal = GaussianMixture(
            n_components,
            config.latent_dim,
            sd_init=config.basal_sd_init / n_components,
            radius=config.basal_radius,
            sharpness=config.softball_sharpness,
            dirichlet_alpha=config.basal_dirichlet_alpha,
            logprecision_prior_sd=config.logprecision_prior_sd,
            covariance="diagonal",
            generator=gen,
        )
        self.covariates = nn.ModuleList(
            GaussianMixture(
                n_classes,
                config.covariate_dim,
                sd_init=config.covariate_sd_init / n_classes,
                radius=config.covariate_radius,
                sharpness=config.softball_sharpness,
                dirichlet_alpha=config.covariate_dirichlet_alpha,
                logprecision_prior_sd=config.logprecision_prior_sd,
                covariance="isotropic",
                generator=gen,
            )
            for n_classes in n_covariate_classes
        )

    def dispersion(self, modality: str) -> torch.Tensor:
        """(F_m,) NB dispersion ``r = 1 + exp(rho)``."""
        return 1.0 + torch.exp(self.dispersion_rho[modality])

    def decode(
        self, basal: torch.Tensor, covariate: torch.Tensor | None, modalities: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Log-fractions per modality, (n, F_m), from (n, L) basal and (n, 2V) covariate rows."""
        z = decoder_input(basal, covariate)
        return self.decoder(z, modalities)

    def reconstruction_nll(
        self,
        log_fraction: dict[str, torch.Tensor],
        counts: dict[str, SparseCounts],
        library_size: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-cell NB negative log-likelihood of each modality.

        Parameters
        ----------
        log_fraction
            Modality -> (n, F_m) decoder output.
        counts
            Modality -> non-zero coordinates of the minibatch counts.
        library_size
            (n, n_modalities) totals, columns in ``self.modalities`` order.

        Returns
        -------
        Modality -> (n,) negative log-likelihood.
        """
        out = {}
        for j, m in enumerate(self.modalities):
            if m not in counts:
                continue
            log_mu = log_fraction[m] + torch.log(library_size[:, j : j + 1])
            out[m] = -nb_log_prob_sparse(log_mu, self.dispersion(m), *counts[m])
        return out

    def representation_nll(
        self,
        basal: torch.Tensor,
        covariate: torch.Tensor | None,
        counts: dict[str, SparseCounts],
        log_library: dict[str, torch.Tensor],
        *,
        observed: dict[str, torch.Tensor | None] | None = None,
        precision: str = "float32",
    ) -> dict[str, torch.Tensor]:
        """Per-cell NB negative log-likelihood of each modality in ``counts``, decoded from
        representations, through the fused loss (:func:`~multidgd.distributions.nb_nll_from_logits`).

        Parameters
        ----------
        basal, covariate
            (n, L) and (n, 2V) representations.
        counts
            Modality -> non-zero coordinates of the counts.
        log_library
            Modality -> (n,) log library size.
        observed
            Modality -> indices of the features present (the softmax is renormalised over
            them), or None for all.
        precision
            ``"bfloat16"`` runs the decoder's matmuls under autocast; the loss is float32.

        Returns
        -------
        Modality -> (n,) negative log-likelihood.
        """
        z = decoder_input(basal, covariate)
        mods = [m for m in self.modalities if m in counts]
        with autocast(z.device.type, precision):
            logits = self.decoder.logits(z, mods)
        out = {}
        for m in mods:
            obs = None if observed is None else observed.get(m)
            y, rho = logits[m], self.dispersion_rho[m]
            if obs is not None:
                y, rho = y[:, obs], rho[obs]
            out[m] = nb_nll_from_logits(y, log_library[m], rho, *counts[m])
        return out

    @torch.no_grad()
    def covariate_means(self, codes) -> torch.Tensor:
        """(n, d * V) covariate rows at the means of the classes ``codes`` (n, V) names (on
        the CPU, float32).
        """
        codes = torch.as_tensor(codes, dtype=torch.int64)
        parts = [mix.mean.detach().cpu()[codes[:, v]] for v, mix in enumerate(self.covariates)]
        return torch.cat(parts, 1) if parts else torch.zeros(codes.shape[0], 0)

    def covariate_nll(self, covariate: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per-cell covariate prior term, (n,).

        With labels (training cells), each covariate representation is scored under its own
        class's component, times the number of classes when configured. Without labels
        (validation and new cells), under the whole mixture.
        """
        total = torch.zeros(covariate.shape[0], device=covariate.device)
        d = self.config.covariate_dim
        for v, mixture in enumerate(self.covariates):
            c = covariate[:, v * d : (v + 1) * d]
            if labels is None:
                total = total - mixture.log_prob(c)
            else:
                weight = mixture.n_components if self.config.covariate_weight_by_classes else 1.0
                total = total - weight * mixture.class_log_prob(c, labels[:, v])
        return total

    def hyperprior_nll(self) -> torch.Tensor:
        """-log p(phi) of every mixture's parameters (a scalar)."""
        total = -self.basal.hyperprior_log_prob()
        for mixture in self.covariates:
            total = total - mixture.hyperprior_log_prob()
        return total


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters do not require grad inside the block (so no gradient is built for them)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
