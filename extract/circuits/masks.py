"""Node masks: a Heaviside gate per node with a sigmoid straight-through gradient, and mean ablation.

Forward: gate = 1 if tau > 0 else 0. Backward: d gate / d tau is taken as the derivative of
sigmoid(tau / T) / T (METHOD.md section 3). A masked node's value is x * gate + mean * (1 - gate),
so a kept node is exactly untouched and a removed one is held at its mean activation.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from extract.circuits.sites import Site, hooked


class _HeavisideSTE(torch.autograd.Function):
    # A Function rather than `hard + soft - soft.detach()`: that sum is 0.99999994, not 1, and a
    # kept node must be exactly untouched.
    @staticmethod
    def forward(ctx, tau, temperature):
        ctx.save_for_backward(tau)
        ctx.temperature = temperature
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad):
        (tau,) = ctx.saved_tensors
        soft = torch.sigmoid(tau / ctx.temperature)
        return grad * soft * (1 - soft) / ctx.temperature, None


def heaviside_ste(tau: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exactly 0 or 1 forward; the derivative of sigmoid(tau / T) backward."""
    return _HeavisideSTE.apply(tau, temperature)


class NodeMask(torch.nn.Module):
    """One learnable tau per node of every site, plus the cached mean of each node."""

    def __init__(self, sites: list[Site], means: dict[str, torch.Tensor], init_mean: float = 0.1,
                 init_std: float = 0.01, temperature: float = 1.0):
        super().__init__()
        self.sites = sites
        self.temperature = temperature
        self.taus = torch.nn.ParameterDict({
            s.key.replace(".", "_"): torch.nn.Parameter(torch.randn(s.width) * init_std + init_mean) for s in sites})
        for s in sites:
            self.register_buffer(f"mean_{s.key.replace('.', '_')}", means[s.key].clone())
        self.override: dict[str, torch.Tensor] | None = None  # fixed 0/1 gates, for evaluation

    def tau(self, site: Site) -> torch.Tensor:
        return self.taus[site.key.replace(".", "_")]

    def gate(self, site: Site) -> torch.Tensor:
        if self.override is not None:
            return self.override[site.key]
        return heaviside_ste(self.tau(site), self.temperature)

    def mean_of(self, site: Site) -> torch.Tensor:
        """The value a removed node of `site` is held at."""
        return getattr(self, f"mean_{site.key.replace('.', '_')}")

    def edit(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(site).to(x.dtype)
        mean = self.mean_of(site).to(x.dtype)
        return x * gate + mean * (1 - gate)

    def kept(self) -> torch.Tensor:
        """Number of kept nodes, differentiable through the surrogate (the sparsity penalty)."""
        return sum(self.gate(s).sum() for s in self.sites)

    @torch.no_grad()
    def clamp_(self) -> None:
        for tau in self.taus.values():
            tau.clamp_(-1.0, 1.0)

    def flat_taus(self) -> torch.Tensor:
        """All taus in site order, detached: the ranking used to discretise the mask."""
        return torch.cat([self.tau(s).detach() for s in self.sites])

    def applied(self, model):
        """Context manager: the model runs with this mask inside the block."""
        return hooked(model, self.sites, self.edit)

    @contextmanager
    def with_gates(self, model, gates: dict[str, torch.Tensor]):
        """Context manager: the model runs with fixed 0/1 `gates` (a discrete circuit) instead of the taus."""
        device = next(iter(self.taus.values())).device
        self.override = {key: gate.to(device) for key, gate in gates.items()}
        try:
            with self.applied(model):
                yield
        finally:
            self.override = None
