"""Heads against their defining equations, plus a toy training run for each."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reliscale.models.heads import (
    BatchEnsembleHead,
    GPHead,
    HetHead,
    LinearHead,
    Prediction,
    SpectralNormLinear,
    build_head,
)

IN, OUT = 6, 3
TECHNIQUES = ["none", "batchensemble", "gp", "het"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_build_head_dispatch_and_unknown():
    assert isinstance(build_head("none", IN, OUT), LinearHead)
    assert isinstance(build_head("batchensemble", IN, OUT), BatchEnsembleHead)
    assert isinstance(build_head("gp", IN, OUT), GPHead)
    assert isinstance(build_head("het", IN, OUT), HetHead)
    with pytest.raises(ValueError, match=r"allowed: \['batchensemble', 'gp', 'het', 'none'\]"):
        build_head("mc_dropout", IN, OUT)
    with pytest.raises(ValueError, match="unknown head options \\['gp_width'\\]"):
        build_head("gp", IN, OUT, gp_width=3)


def test_build_head_routes_one_flat_option_block():
    opts = dict(
        ensemble_size=4,
        gp_features=32,
        gp_spectral_norm=True,
        gp_mean_field_factor=0.5,
        het_factors=2,
        het_samples=5,
        het_temperature=2.0,
    )
    assert build_head("none", IN, OUT, **opts).linear.out_features == OUT
    assert build_head("batchensemble", IN, OUT, **opts).ensemble_size == 4
    gp = build_head("gp", IN, OUT, **opts)
    assert (gp.output.in_features, gp.mean_field_factor) == (32, 0.5)
    assert isinstance(gp.hidden, SpectralNormLinear)
    het = build_head("het", IN, OUT, **opts)
    assert (het.num_factors, het.num_mc_samples, het.temperature) == (2, 5, 2.0)


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_predict_returns_distributions(technique):
    torch.manual_seed(0)
    head = build_head(technique, IN, OUT).eval()
    with torch.no_grad():
        pred = head.predict(torch.randn(5, IN))
    assert isinstance(pred, Prediction)
    assert pred.probs.shape == (5, OUT)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(5))
    assert (pred.variance is not None) == (technique == "gp")


def test_linear_head():
    head = LinearHead(IN, OUT)
    h = torch.randn(4, IN)
    logits = h @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(head.predict(h).probs, torch.softmax(logits, -1))
    y = torch.tensor([0, 2, 1, 1])
    per_example = -torch.log_softmax(logits, -1)[torch.arange(4), y]
    torch.testing.assert_close(head.loss(h, y, reduction="none"), per_example)
    torch.testing.assert_close(head.loss(h, y), per_example.mean())
    with pytest.raises(ValueError, match="reduction"):
        head.loss(h, y, reduction="sum")
    assert n_params(head) == IN * OUT + OUT


# --- BatchEnsemble ------------------------------------------------------------------------


def test_batchensemble_members_follow_rank1_equation():
    torch.manual_seed(0)
    e, b = 4, 5
    head = BatchEnsembleHead(IN, OUT, ensemble_size=e)
    with torch.no_grad():
        head.members.bias.normal_()  # non-trivial biases
    h = torch.randn(b, IN)
    m = head.members
    logits = head(h)
    assert logits.shape == (e * b, OUT)
    by_hand = [((h * m.s[i]) @ m.weight.T) * m.r[i] + m.bias[i] for i in range(e)]
    torch.testing.assert_close(logits, torch.cat(by_hand))
    mixture = torch.stack([torch.softmax(z, -1) for z in by_hand]).mean(0)
    torch.testing.assert_close(head.predict(h).probs, mixture)
    y = torch.randint(0, OUT, (b,))
    member_losses = torch.stack([F.cross_entropy(z, y, reduction="none") for z in by_hand])
    torch.testing.assert_close(head.loss(h, y), member_losses.mean())
    torch.testing.assert_close(head.loss(h, y, reduction="none"), member_losses.mean(0))


def test_batchensemble_init_and_parameter_count():
    torch.manual_seed(0)
    head = BatchEnsembleHead(256, 64, ensemble_size=3)
    fast = torch.cat([head.members.s.flatten(), head.members.r.flatten()])
    assert fast.mean().item() == pytest.approx(1.0, abs=0.05)
    assert fast.std().item() == pytest.approx(0.5, abs=0.05)
    # shared W, then per member: s (in), r (out), bias (out)
    assert n_params(head) == 256 * 64 + 3 * (256 + 64 + 64)


# --- GP -------------------------------------------------------------------------------------


def test_gp_features_and_variance_match_independent_computation():
    torch.manual_seed(0)
    head = build_head("gp", IN, OUT, gp_features=64, gp_ridge=2.0).eval()
    train_batches = [torch.randn(20, IN) for _ in range(3)]
    head.reset_precision()
    for hb in train_batches:
        head.update_precision(hb)

    def phi(h):
        ln = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
            h.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
        return math.sqrt(2 / 64) * torch.cos(ln @ head.rff_weight + head.rff_bias)

    h = torch.randn(7, IN)
    torch.testing.assert_close(head.features(h), phi(h))
    big_phi = np.concatenate([phi(hb).numpy() for hb in train_batches]).astype(np.float64)
    precision = 2.0 * np.eye(64) + big_phi.T @ big_phi
    np.testing.assert_allclose(head.precision.numpy(), precision, rtol=1e-5, atol=1e-5)
    f = phi(h).numpy().astype(np.float64)
    variance = np.einsum("bd,de,be->b", f, np.linalg.inv(precision), f)
    pred = head.predict(h)
    np.testing.assert_allclose(pred.variance.numpy(), variance, rtol=1e-4, atol=1e-6)
    logits = head.output(phi(h)).detach().numpy()
    scaled = logits / np.sqrt(1 + 5.0 * variance)[:, None]
    expected = np.exp(scaled) / np.exp(scaled).sum(-1, keepdims=True)
    np.testing.assert_allclose(pred.probs.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_gp_reset_precision_and_prior_variance():
    torch.manual_seed(0)
    head = GPHead(IN, OUT, num_features=512).eval()
    head.update_precision(torch.randn(50, IN))
    head.reset_precision()
    torch.testing.assert_close(head.precision, torch.eye(512))
    # prior variance = |phi|^2 = (2/D) sum cos^2, close to 1
    assert head.predict(torch.randn(10, IN)).variance.mean().item() == pytest.approx(1.0, abs=0.1)


def test_gp_variance_grows_away_from_fitted_features():
    torch.manual_seed(0)
    centre = torch.randn(IN)
    near = centre + 0.3 * torch.randn(200, IN)
    head = GPHead(IN, OUT, num_features=256).eval()
    head.reset_precision()
    head.update_precision(near)
    far = torch.randn(200, IN)  # other directions: LayerNorm removes plain scaling
    v_near = head.predict(centre + 0.3 * torch.randn(100, IN)).variance
    v_far = head.predict(far).variance
    assert v_far.mean() > 3 * v_near.mean()


def test_gp_random_features_are_seeded_and_not_parameters():
    torch.manual_seed(1)
    a = GPHead(IN, OUT, num_features=32, feature_seed=7)
    torch.manual_seed(2)
    b = GPHead(IN, OUT, num_features=32, feature_seed=7)
    torch.testing.assert_close(a.rff_weight, b.rff_weight)
    torch.testing.assert_close(a.rff_bias, b.rff_bias)
    assert n_params(a) == 32 * OUT + OUT  # only the output layer trains
    assert {"rff_weight", "rff_bias", "precision"} <= set(dict(a.named_buffers()))
    with_sn = GPHead(IN, OUT, num_features=32, spectral_norm=True)
    assert n_params(with_sn) == 32 * OUT + OUT + IN * IN + IN


def test_spectral_norm_linear_bounds_the_norm():
    torch.manual_seed(0)
    layer = SpectralNormLinear(8, 8, norm_bound=0.95)
    with torch.no_grad():
        layer.weight.mul_(10)
    x = torch.randn(4, 8)
    for _ in range(30):  # power iterations converge
        layer(x)
    layer.eval()
    out = layer(x)
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    effective = layer.weight.detach() * 0.95 / sigma
    torch.testing.assert_close(out, x @ effective.T + layer.bias.detach(), rtol=1e-3, atol=1e-4)


# --- heteroscedastic ------------------------------------------------------------------------


def test_het_sampling_equation():
    torch.manual_seed(0)
    s, r, b = 16, 4, 5
    head = HetHead(IN, OUT, num_factors=r, num_mc_samples=s, temperature=1.5)
    h = torch.randn(b, IN)
    torch.manual_seed(123)
    probs = head.predict(h).probs
    torch.manual_seed(123)
    eps_r, eps_k = torch.randn(s, b, r), torch.randn(s, b, OUT)
    mu = h @ head.loc.weight.T + head.loc.bias
    v = (h @ head.factors.weight.T + head.factors.bias).view(b, OUT, r)
    d = F.softplus(h @ head.diag.weight.T + head.diag.bias) + 1e-3
    u = mu + torch.einsum("bcr,sbr->sbc", v, eps_r) + d * eps_k
    expected = torch.softmax(u / 1.5, -1).mean(0)
    torch.testing.assert_close(probs, expected)
    y = torch.randint(0, OUT, (b,))
    torch.manual_seed(123)
    loss = head.loss(h, y)
    torch.testing.assert_close(loss, -torch.log(expected[torch.arange(b), y]).mean())


def test_het_without_noise_is_plain_softmax():
    torch.manual_seed(0)
    head = HetHead(IN, OUT, num_factors=3, temperature=2.0)
    with torch.no_grad():
        head.factors.weight.zero_()
        head.factors.bias.zero_()
        head.diag.weight.zero_()
        head.diag.bias.fill_(-50.0)  # softplus -> 0, d = 1e-3
    h = torch.randn(8, IN)
    plain = torch.softmax(head.loc(h) / 2.0, -1)
    torch.testing.assert_close(head.predict(h).probs, plain, atol=2e-3, rtol=0)


def test_het_parameter_counts():
    r = 10
    # loc and diag: in*C + C each; factors: in*C*R + C*R
    assert (
        n_params(HetHead(IN, OUT, num_factors=r)) == 2 * (IN * OUT + OUT) + IN * OUT * r + OUT * r
    )
    assert n_params(HetHead(IN, OUT, num_factors=0)) == 2 * (IN * OUT + OUT)


# --- training ---------------------------------------------------------------------------------


def blobs(n: int, generator: torch.Generator, num_classes: int = 4, dim: int = 16):
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, num_classes, (n,), generator=generator)
    return means[y] + 0.8 * torch.randn(n, dim, generator=generator), y


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_each_head_learns_a_separable_problem(technique):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = blobs(2000, gen)
    x_test, y_test = blobs(500, gen)
    head = build_head(technique, 16, 4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for step in range(300):
        idx = slice((step * 64) % 1984, (step * 64) % 1984 + 64)
        loss = head.loss(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    with torch.no_grad():
        if isinstance(head, GPHead):
            head.reset_precision()
            head.update_precision(x)
        probs = head.predict(x_test).probs
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert (probs.argmax(-1) == y_test).float().mean().item() > 0.9
