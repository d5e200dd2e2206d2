"""Checkers for the exercises of chapters/04_bayesian_structure_posterior.py."""

import torch

from vnas import posteriors, spaces
from vnas.checks._common import call, passed, require

__all__ = ["check_architecture_kl", "check_genotype_from_posterior"]


def check_architecture_kl(fn) -> None:
    """``fn(betas, c0, num_data)`` must return sum over cell types and edges of KL(Dir(beta_e) || Dir(c0)),
    divided by num_data: the architecture term of the ELBO per data point."""
    gen = torch.Generator().manual_seed(3)
    betas = {ct: torch.exp(torch.randn(14, 8, generator=gen, dtype=torch.float64)) for ct in ("normal", "reduce")}
    n = 25_000
    want = sum(posteriors.dirichlet_kl(b, 2.0).sum() for b in betas.values()) / n
    out = call(fn, betas, 2.0, n)
    require(torch.is_tensor(out) and out.dim() == 0, "Return one number (a 0-dim tensor): the whole KL term.")
    if torch.isclose(out, want * n, rtol=1e-6):
        require(False, "Divide by num_data: the likelihood term is a mean over data points, so the KL is too.")
    if torch.isclose(out, want * n / 14 / 2, rtol=1e-6) or torch.isclose(out, want / 28, rtol=1e-6):
        require(False, "Sum the KLs over the edges; averaging them changes the weight of the prior.")
    only_one = posteriors.dirichlet_kl(betas["normal"], 2.0).sum() / n
    if torch.isclose(out, only_one, rtol=1e-6):
        require(False, "Only one cell type is counted: every cell type has its own posterior and its own KL.")
    if torch.isclose(out, -want, rtol=1e-6):
        require(False, "The sign is flipped: a KL is never negative.")
    require(torch.isclose(out, want, rtol=1e-6), f"Expected {want.item():.6f}, got {out.item():.6f}.")
    passed("architecture KL: summed over edges and cell types, per data point.")


def check_genotype_from_posterior(fn) -> None:
    """``fn(beta)`` for an NB201 cell (beta: [6, 5] Dirichlet concentrations) must return the cell from the
    posterior mean beta / sum(beta): the argmax op of every edge (``none`` included), as a genotype or string."""
    gen = torch.Generator().manual_seed(4)
    for case in range(5):
        beta = torch.exp(2 * torch.randn(6, 5, generator=gen))
        if case == 0:
            beta[:, 0] = 50.0  # 'none' wins everywhere: NB201 keeps it (an edge may be absent)
        want = spaces.nb201.derive({"cell": beta / beta.sum(-1, keepdim=True)})
        out = call(fn, beta.clone())
        try:
            got = out if isinstance(out, spaces.nb201.Genotype) else spaces.load_genotype(str(out))
        except ValueError as err:
            require(False, f"Return an NB201 genotype or its string; {out!r} is neither ({err}).")
        if case == 0 and got != want:
            require(False, "In NAS-Bench-201 'none' is an ordinary choice (the edge is absent): do not exclude it.")
        require(got == want, "Rows are edges (in spaces.nb201.EDGES order), columns ops; take the argmax over "
                             f"the last dimension. For concentrations {beta.round(decimals=2).tolist()} "
                             f"expected {want}, got {got}.")
    passed("genotype from the posterior mean: argmax op per edge of beta / sum(beta).")
