"""A tiny rule language for renaming checkpoint keys.

A layout is an ordered list of :class:`Drop` and :class:`Rename` rules. Every source key must match exactly
one rule (the first whose regular expression matches the *whole* key); a key that matches none is "unknown"
and the conversion is refused. A :class:`Rename` may carry a tensor transform (e.g. the Swin patch-merging
un-permutation or a colour flip) and may be ``optional``: an optional key is dropped, not refused, when the
target model has no such parameter (e.g. the auxiliary head of a semantic model built without one).
"""

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["Drop", "Rename", "apply_rules", "compile_rules"]


@dataclass(frozen=True)
class Drop:
    """Source keys matching ``pattern`` are dropped, with ``reason`` in the summary."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class Rename:
    """Source keys matching ``pattern`` become ``re.sub(pattern, repl, key)``.

    ``group``: the summary group (``backbone``, ``neck``, ...). ``transform``: optional tensor function.
    ``optional``: when validating against a target model, drop (do not refuse) a result absent from it.
    """

    pattern: str
    repl: str
    group: str
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    optional: bool = False
    optional_reason: str = ""


def compile_rules(rules):
    """Pre-compile the regular expressions of a rule list (anchored at both ends)."""
    return [(re.compile(r.pattern + r"\Z"), r) for r in rules]


def apply_rules(key, compiled):
    """Return ``(rule, new_key)`` for the first rule matching ``key`` (``new_key`` None for drops), or
    ``(None, None)`` when no rule matches."""
    for regex, rule in compiled:
        m = regex.match(key)
        if m is None:
            continue
        if isinstance(rule, Drop):
            return rule, None
        return rule, m.expand(rule.repl)
    return None, None
