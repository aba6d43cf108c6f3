"""The match-graph network: GATv2 message passing over the match graph (needs torch-geometric).

Per node it predicts an inlier logit and a small refinement (dx, dy) of the moving position, bounded to
``±max_shift`` moving pixels by a tanh.

Shapes: x (N, node_dim), edge_index (2, E), edge_attr (E, edge_dim) -> logit (N,), delta (N, 2).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv

from .features import EDGE_DIM, NODE_DIM


@dataclass(frozen=True)
class GraphNetConfig:
    node_dim: int = NODE_DIM
    edge_dim: int = EDGE_DIM
    hidden: int = 48
    layers: int = 3
    heads: int = 2
    max_shift: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> GraphNetConfig:
        return cls(**json.loads(s))


class MatchGraphNet(nn.Module):
    def __init__(self, config: GraphNetConfig = GraphNetConfig()) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.inp = nn.Sequential(nn.Linear(config.node_dim, h), nn.ReLU(), nn.Linear(h, h))
        self.convs = nn.ModuleList(GATv2Conv(h, h, heads=config.heads, concat=False, edge_dim=config.edge_dim,
                                             add_self_loops=True, fill_value="mean")
                                   for _ in range(config.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(config.layers))
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 3))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = self.inp(x)
        h = h0
        for conv, norm in zip(self.convs, self.norms):
            h = norm(h + torch.relu(conv(h, edge_index, edge_attr)))
        out = self.head(torch.cat([h, h0], 1))
        return out[:, 0], self.config.max_shift * torch.tanh(out[:, 1:])
