"""What a conversion did (:class:`ConversionSummary`) and what it returns (:class:`ConversionResult`)."""

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["ConversionSummary", "ConversionResult"]


@dataclass
class ConversionSummary:
    """What a conversion did. ``mapped``: number of tensors per group; ``dropped``: (key, reason) pairs."""

    source: str
    num_input_keys: int = 0
    mapped: Dict[str, int] = field(default_factory=dict)
    mapped_numel: int = 0
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    dropped_top_level: List[str] = field(default_factory=list)
    transformed: List[Tuple[str, str]] = field(default_factory=list)
    left_to_model: List[str] = field(default_factory=list)
    from_config: List[str] = field(default_factory=list)
    num_classes: Optional[int] = None

    @property
    def num_mapped(self) -> int:
        return sum(self.mapped.values())

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def dropped_by_reason(self) -> Dict[str, int]:
        out: Dict[str, int] = OrderedDict()
        for _, reason in self.dropped:
            out[reason] = out.get(reason, 0) + 1
        return out

    def format(self) -> str:
        """A human-readable multi-line report."""
        lines = [
            f"source: {self.source}; {self.num_input_keys} tensors in the checkpoint",
            f"mapped: {self.num_mapped} tensors ({self.mapped_numel:,} values)"
            + (f"; {self.num_classes} classes" if self.num_classes else ""),
        ]
        lines += [f"  {g}: {n}" for g, n in self.mapped.items()]
        lines.append(f"dropped: {self.num_dropped} tensors")
        lines += [f"  {n} x {reason}" for reason, n in self.dropped_by_reason().items()]
        if self.dropped_top_level:
            lines.append(f"dropped top-level entries: {', '.join(self.dropped_top_level)}")
        for key, what in self.transformed:
            lines.append(f"transformed: {key}: {what}")
        if self.left_to_model:
            lines.append(
                "not in this checkpoint (keep the model's initialisation): "
                f"{len(self.left_to_model)} tensors, "
                f"e.g. {', '.join(self.left_to_model[:3])}"
            )
        if self.from_config:
            lines.append(f"from the config, not the checkpoint: {', '.join(self.from_config)}")
        return "\n".join(lines)


@dataclass
class ConversionResult:
    """``state_dict``: our names -> tensors; ``metadata``: JSON-serialisable info (source, class names,
    ...)."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    metadata: dict
    summary: ConversionSummary

    def to_checkpoint(self) -> dict:
        """The dict to save: detectron2's checkpointer loads ``model`` and returns the rest."""
        return {"model": self.state_dict, "meta": self.metadata}
