"""Stitching layers: a linear map between the token widths of two anchors, in low-rank (LoRA) form."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StitchingLayer(nn.Module):
    """``y = x (W + s B A)^T + b`` with ``s = alpha / rank`` (SPEC section 3).

    With ``rank > 0`` the least-squares solution ``W`` is frozen and ``A``, ``B``, ``b`` train;
    ``A`` starts Kaiming-uniform and ``B`` at zero, so training starts from ``W``. ``rank = 0`` is a
    plain linear layer.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 0, alpha: float = 1.0,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scaling = alpha / rank if rank > 0 else 0.0
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device))
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device))
            self.lora_B = nn.Parameter(torch.empty(out_features, rank, device=device))
            self.weight.requires_grad_(False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.rank > 0:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def effective_weight(self) -> torch.Tensor:
        """``W + s B A``: the weight the layer applies."""
        if self.rank == 0:
            return self.weight
        return self.weight + self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def set_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install a least-squares ``[W b]``; the low-rank update restarts from zero."""
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        if self.rank > 0:
            nn.init.zeros_(self.lora_B)

    @torch.no_grad()
    def merge_(self) -> None:
        """Fold the low-rank update into ``W`` and become a plain linear layer (same outputs)."""
        if self.rank == 0:
            return
        merged = self.effective_weight()
        del self.lora_A, self.lora_B
        self.weight = nn.Parameter(merged, requires_grad=True)
        self.rank, self.scaling = 0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, in) -> (B, N, out)
        # merging before the matmul costs out x rank x in once, instead of per token
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, rank={self.rank}"
