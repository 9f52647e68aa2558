"""K-Net evaluation: evaluators chosen from dataset metadata (see :func:`build_evaluator`)."""
from .build import (  # noqa: F401
    EVALUATOR_REQUIRED_METADATA,
    build_evaluator,
    missing_evaluator_metadata,
    resolve_evaluator_type,
)

__all__ = [
    "EVALUATOR_REQUIRED_METADATA",
    "build_evaluator",
    "missing_evaluator_metadata",
    "resolve_evaluator_type",
]
