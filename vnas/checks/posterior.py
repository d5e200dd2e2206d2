"""Checkers for the exercises of chapters/04_bayesian_structure_posterior.py."""

import torch

from vnas import posteriors, spaces
from vnas.checks._common import call, checker, require

__all__ = ["check_architecture_kl", "check_genotype_from_posterior"]


def _kl_cases():
    """(betas, c0, num_data) cases: DARTS- and NB201-shaped posteriors, several priors and data sizes."""
    gen = torch.Generator().manual_seed(3)
    cases = []
    for cell_types, shape, c0, n in ((("normal", "reduce"), (14, 8), 2.0, 25_000), (("cell",), (6, 5), 0.5, 500),
                                     (("normal", "reduce"), (14, 8), 1.0, 1_000), (("cell",), (6, 5), 3.0, 7)):
        betas = {ct: torch.exp(torch.randn(*shape, generator=gen, dtype=torch.float64)) for ct in cell_types}
        cases.append((betas, c0, n))
    return cases


@checker
def check_architecture_kl(fn) -> str:
    """``fn(betas, c0, num_data)`` must return sum over cell types and edges of KL(Dir(beta_e) || Dir(c0)),
    divided by num_data: the architecture term of the ELBO per data point (chapter 04, Eq. (4.2))."""
    for k, (betas, c0, n) in enumerate(_kl_cases()):
        total = sum(posteriors.dirichlet_kl(b, c0).sum() for b in betas.values())
        want = total / n
        out = call(fn, {ct: b.clone() for ct, b in betas.items()}, c0, n)
        require(torch.is_tensor(out) and out.dim() == 0, "Return one number (a 0-dim tensor): the whole KL term.")
        if torch.isclose(out, want, rtol=1e-6):
            continue
        n_edges = sum(b.shape[0] for b in betas.values())
        first = next(iter(betas))
        hints = [(total, "Divide by num_data: the likelihood term is a mean over data points, so the KL is too."),
                 (want / len(betas), "Sum over the cell types; averaging them halves the prior's weight when there "
                                     "are two."),
                 (want / n_edges, "Sum the KLs over the edges; averaging them changes the weight of the prior."),
                 (posteriors.dirichlet_kl(betas[first], c0).sum() / n,
                  "Only one cell type is counted: every cell type has its own posterior and its own KL."),
                 (-want, "The sign is flipped: a KL is never negative."),
                 (sum(posteriors.dirichlet_kl(b, 1.0).sum() for b in betas.values()) / n,
                  f"Use the prior concentration c0 (here {c0}), not the flat Dir(1).")]
        for wrong, message in hints:
            if len(betas) == 1 and ("one cell type" in message or "cell types" in message):
                continue  # with a single cell type these slips cannot be told apart
            if torch.isclose(out, wrong, rtol=1e-6):
                require(False, f"Case {k}: {message}")
        require(False, f"Case {k} ({', '.join(betas)}, c0 = {c0}, num_data = {n}): expected {want.item():.6g}, "
                       f"got {out.item():.6g}.")
    return "architecture KL: summed over edges and cell types, with the prior c0, per data point."


@checker
def check_genotype_from_posterior(fn) -> str:
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
        by_edges = spaces.nb201.derive({"cell": beta / beta.sum(0, keepdim=True)})
        require(got == want or got != by_edges, "Normalise each edge's concentrations over its ops, "
                                                "beta / beta.sum(-1, keepdim=True), not over the edges.")
        excluded_none = "none" in want.ops() and "none" not in got.ops()
        require(got == want or not excluded_none,
                "In NAS-Bench-201 'none' is an ordinary choice (the edge is absent): do not exclude it.")
        require(got == want, "Rows are edges (in spaces.nb201.EDGES order), columns ops; take the argmax over "
                             f"the last dimension. For concentrations {beta.round(decimals=2).tolist()} "
                             f"expected {want}, got {got}.")
    return "genotype from the posterior mean: argmax op per edge of beta / sum(beta)."
