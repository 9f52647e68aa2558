"""A toy model with K-Net's top-level layout and a solver config, for the engine tests (optimizer groups,
gradient clipping, the mixed-precision step, the trainer's test-time-augmentation dispatch)."""
import torch
from detectron2.config import get_cfg
from torch import nn

from knet.config import add_knet_config


class ToyModel(nn.Module):
    """A stand-in with the K-Net top-level layout: ``backbone.*`` and head modules; ``forward`` takes a list
    of ``{"x": (3, H, W) tensor}`` and returns ``{"loss": scalar}``."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.kernel_head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone_like_name = nn.Linear(4, 2)  # not under "backbone.": no multiplier

    def forward(self, batch):
        x = torch.stack([b["x"] for b in batch])
        y = self.backbone(x).mean((2, 3))
        return {"loss": self.backbone_like_name(self.kernel_head(y)).pow(2).mean()}


def solver_cfg(**solver):
    """detectron2 + K-Net defaults with AdamW at lr 1e-4, weight decay 0.05 (none on norms), and ``solver``
    (``SOLVER.<key> = value``) on top."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg
