"""Reliability techniques as last layers over features ``h`` of shape [B, F].

Every head offers ``forward(h)`` (what the training loss consumes), ``loss(h, y)`` and
``predict(h) -> Prediction``. Parameters are only touched inside a module's own
``forward`` (reached through ``__call__``), so DeepSpeed ZeRO-3 gathers them for
``loss``/``predict`` too; state that is not trained (random features, the GP precision)
lives in buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reliscale.worker.ranks import several_ranks


@dataclass(frozen=True)
class Prediction:
    """Predictive class probabilities [B, C] and, where the head has one, a per-example
    predictive variance [B] (higher = less certain; usable as an OOD score)."""

    probs: torch.Tensor
    variance: torch.Tensor | None = None


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


class Head(nn.Module):
    """A last layer. Subclasses define ``forward(h)`` returning logits [B, C]."""

    def loss(self, h: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy; ``reduction="none"`` gives the per-example losses [B]."""
        return _reduce(F.cross_entropy(self(h), y, reduction="none"), reduction)

    def predict(self, h: torch.Tensor) -> Prediction:
        return Prediction(self(h).softmax(-1))


class LinearHead(Head):
    """Plain linear softmax classifier (technique ``"none"``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)


# --- BatchEnsemble ------------------------------------------------------------------------


class BatchEnsembleLinear(nn.Module):
    """Member i computes ``((x * s_i) @ W.T) * r_i + b_i``: one shared weight W, rank-1
    fast weights ``s_i`` (input side), ``r_i`` (output side) and a bias per member.

    Input rows are member-major: rows ``[i*B, (i+1)*B)`` belong to member i.
    """

    def __init__(self, in_features: int, out_features: int, ensemble_size: int) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        # fast weights ~ N(1, 0.5) as Plex (random_sign_init = -0.5)
        self.s = nn.Parameter(1 + 0.5 * torch.randn(ensemble_size, in_features))
        self.r = nn.Parameter(1 + 0.5 * torch.randn(ensemble_size, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.ensemble_size:
            raise ValueError(
                f"batch of {x.shape[0]} rows is not a multiple of ensemble_size "
                f"{self.ensemble_size}"
            )
        per_member = x.shape[0] // self.ensemble_size
        s, r, b = (t.repeat_interleave(per_member, dim=0) for t in (self.s, self.r, self.bias))
        return F.linear(x * s, self.weight) * r + b


class BatchEnsembleHead(Head):
    """BatchEnsemble last layer. ``forward`` tiles the batch over members and returns the
    members' logits stacked [E*B, C]; ``loss`` trains every member on the same batch;
    ``predict`` mixes members by averaging their probabilities."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int = 3) -> None:
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self.ensemble_size = ensemble_size
        self.members = BatchEnsembleLinear(in_features, out_features, ensemble_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.members(h.repeat(self.ensemble_size, 1))

    def loss(self, h: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Members' cross-entropy; per example (``reduction="none"``) it is the members' mean."""
        losses = F.cross_entropy(self(h), y.repeat(self.ensemble_size), reduction="none")
        return _reduce(losses.view(self.ensemble_size, -1).mean(0), reduction)

    def predict(self, h: torch.Tensor) -> Prediction:
        logits = self(h).view(self.ensemble_size, h.shape[0], -1)
        return Prediction(logits.softmax(-1).mean(0))


# --- Gaussian process (SNGP) ----------------------------------------------------------------


class SpectralNormLinear(nn.Module):
    """Linear layer whose spectral norm is kept <= ``norm_bound`` (SNGP's soft bound
    ``W / max(1, sigma / c)``), sigma from one power iteration per training forward."""

    def __init__(self, in_features: int, out_features: int, norm_bound: float = 0.95) -> None:
        super().__init__()
        self.norm_bound = norm_bound
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        bound = 1 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u = self.u.clone()
            v = F.normalize(self.weight.t() @ u, dim=0)
            if self.training:
                u = F.normalize(self.weight @ v, dim=0)
                self.u.copy_(u)
        sigma = u @ self.weight @ v
        scale = torch.clamp(sigma / self.norm_bound, min=1.0)
        return F.linear(x, self.weight / scale, self.bias)


class GPHead(Head):
    """Random-feature GP last layer with a Laplace posterior (SNGP, Liu et al. 2020).

    ``phi(h) = sqrt(2/D) cos(LN(h) W + b)`` with a parameter-free LayerNorm, fixed
    ``W ~ N(0, 1/ell^2)`` and ``b ~ U(0, 2 pi)``; logits = ``Linear(phi)``. The kernel is
    RBF with length-scale ``ell = lengthscale * sqrt(F)``: LayerNorm'd inputs have norm
    sqrt(F), so ``lengthscale`` is relative to that norm.

    Posterior: ``reset_precision()`` sets ``P = ridge * I``; ``update_precision(h)`` adds
    ``phi^T phi`` (call both with the head in eval mode over one pass of training features,
    then ``sync_precision()`` when ranks saw different shards); ``predict`` returns variance
    ``phi P^-1 phi^T`` and probabilities ``softmax(logits / sqrt(1 + mean_field_factor *
    variance))`` (``mean_field_factor=0``: plain softmax of the logits).

    Random features come from their own generator (``feature_seed``) so every rank and every
    rebuild of the head gets the same features. The precision is accumulated and solved in
    float32 whatever the module's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_features: int = 1024,
        lengthscale: float = 1.0,
        ridge: float = 1.0,
        mean_field_factor: float = 5.0,
        spectral_norm: bool = False,
        norm_bound: float = 0.95,
        feature_seed: int = 0,
    ) -> None:
        super().__init__()
        if num_features < 1 or lengthscale <= 0 or ridge <= 0:
            raise ValueError("num_features must be >= 1, lengthscale and ridge > 0")
        self.ridge = ridge
        self.mean_field_factor = mean_field_factor
        self.hidden = (
            SpectralNormLinear(in_features, in_features, norm_bound) if spectral_norm else None
        )
        gen = torch.Generator().manual_seed(feature_seed)
        ell = lengthscale * math.sqrt(in_features)
        self.register_buffer(
            "rff_weight", torch.randn(in_features, num_features, generator=gen) / ell
        )
        self.register_buffer("rff_bias", 2 * math.pi * torch.rand(num_features, generator=gen))
        self.register_buffer("precision", ridge * torch.eye(num_features))
        self.output = nn.Linear(num_features, out_features)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """Random Fourier features phi(h) [B, D]."""
        if self.hidden is not None:
            h = self.hidden(h)
        h = F.layer_norm(h, h.shape[-1:])
        num_features = self.rff_bias.shape[0]
        return math.sqrt(2.0 / num_features) * torch.cos(h @ self.rff_weight + self.rff_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(h))

    @torch.no_grad()
    def reset_precision(self) -> None:
        eye = torch.eye(self.precision.shape[0], device=self.precision.device)
        self.precision.copy_(self.ridge * eye)

    @torch.no_grad()
    def update_precision(self, h: torch.Tensor) -> None:
        phi = self.features(h).float()
        self.precision.add_((phi.t() @ phi).to(self.precision.dtype))

    @torch.no_grad()
    def sync_precision(self) -> None:
        """Sum the accumulated ``phi^T phi`` over all ranks of the default process group."""
        if not several_ranks():
            return
        prior = self.ridge * torch.eye(self.precision.shape[0], device=self.precision.device)
        data = self.precision - prior
        dist.all_reduce(data)
        self.precision.copy_(data + prior)

    def predict(self, h: torch.Tensor) -> Prediction:
        phi = self.features(h)
        logits = self.output(phi)
        phi32 = phi.float()
        solved = torch.linalg.solve(self.precision.float(), phi32.t())  # P^-1 phi^T [D, B]
        variance = (phi32 * solved.t()).sum(-1)
        scale = torch.sqrt(1 + self.mean_field_factor * variance).to(logits.dtype)
        return Prediction((logits / scale.unsqueeze(-1)).softmax(-1), variance)


# --- heteroscedastic --------------------------------------------------------------------------


class HetHead(Head):
    """Heteroscedastic last layer (Collier et al. 2021).

    Logit samples ``u = mu(h) + V(h) eps_R + d(h) * eps_K`` with ``V`` [C, R] low-rank
    factors (``num_factors=0``: diagonal only) and ``d = softplus(.) + 1e-3``; probabilities
    ``mean_s softmax(u_s / T)`` over ``num_mc_samples`` draws, in training and evaluation.
    ``forward`` returns the log of those probabilities, so cross-entropy on it is the MC
    loss ``-log mean_s softmax(u_s / T)[y]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_factors: int = 10,
        num_mc_samples: int = 16,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if num_factors < 0 or num_mc_samples < 1 or temperature <= 0:
            raise ValueError("need num_factors >= 0, num_mc_samples >= 1, temperature > 0")
        self.num_classes = out_features
        self.num_factors = num_factors
        self.num_mc_samples = num_mc_samples
        self.temperature = temperature
        self.loc = nn.Linear(in_features, out_features)
        self.diag = nn.Linear(in_features, out_features)
        self.factors = nn.Linear(in_features, out_features * num_factors) if num_factors else None

    def logit_samples(self, h: torch.Tensor) -> torch.Tensor:
        """Samples of the noisy logits, [S, B, C]. Draws ``eps_R`` [S, B, R] then
        ``eps_K`` [S, B, C] from the global torch generator."""
        mu = self.loc(h)
        d = F.softplus(self.diag(h)) + 1e-3
        batch, samples = h.shape[0], self.num_mc_samples
        u = mu
        if self.factors is not None:
            v = self.factors(h).view(batch, self.num_classes, self.num_factors)
            eps_r = torch.randn(samples, batch, self.num_factors, device=h.device, dtype=mu.dtype)
            u = u + torch.einsum("bcr,sbr->sbc", v, eps_r)
        eps_k = torch.randn(samples, batch, self.num_classes, device=h.device, dtype=mu.dtype)
        return u + d * eps_k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(self.logit_samples(h) / self.temperature, dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.num_mc_samples)

    def predict(self, h: torch.Tensor) -> Prediction:
        return Prediction(self(h).exp())


# --- factory ------------------------------------------------------------------------------

HEADS: dict[str, type[Head]] = {
    "none": LinearHead,
    "batchensemble": BatchEnsembleHead,
    "gp": GPHead,
    "het": HetHead,
}


# build_head's options form one flat namespace over all techniques (a study's
# technique_options block): each is routed to the constructor argument of its technique's
# head, and ignored when another technique is built.
OPTIONS: dict[str, tuple[str, str]] = {
    "ensemble_size": ("batchensemble", "ensemble_size"),
    "gp_features": ("gp", "num_features"),
    "gp_lengthscale": ("gp", "lengthscale"),
    "gp_ridge": ("gp", "ridge"),
    "gp_mean_field_factor": ("gp", "mean_field_factor"),
    "gp_spectral_norm": ("gp", "spectral_norm"),
    "gp_norm_bound": ("gp", "norm_bound"),
    "gp_feature_seed": ("gp", "feature_seed"),
    "het_factors": ("het", "num_factors"),
    "het_samples": ("het", "num_mc_samples"),
    "het_temperature": ("het", "temperature"),
}


def build_head(technique: str, in_features: int, out_features: int, **opts: object) -> Head:
    """The last layer for a reliability ``technique``, configured by the ``OPTIONS`` that
    belong to it (options of other techniques are ignored)."""
    if technique not in HEADS:
        raise ValueError(f"unknown technique {technique!r}; allowed: {sorted(HEADS)}")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown head options {unknown}; allowed: {sorted(OPTIONS)}")
    kwargs = {arg: opts[key] for key, (t, arg) in OPTIONS.items() if t == technique and key in opts}
    return HEADS[technique](in_features, out_features, **kwargs)
