"""Reading data robustly: a bad file costs one sample, not the run.

:class:`RobustMapper` wraps any mapper (a callable on one dataset dict). When the mapper raises, the record's
files are checked (:func:`knet.data.check.check_record`: the image decodes and has the recorded size, the
panoptic PNG decodes and its ids match ``segments_info``, the label PNG decodes and has the image's size):

* a problem is found: the sample is skipped with **one warning** naming the file and the reason;
* nothing is wrong with the files: the error is a bug (or a transient I/O error), not bad data, and is
  re-raised unchanged. Skipping only what a re-read confirms keeps skipping deterministic, so a resumed run
  skips the same samples at the same iterations.

A skipped sample becomes, in training, ``None`` (detectron2's convention; ``SeededMapDataset`` takes the next
item deterministically and carries the :class:`SkippedSample` with the batch to the main process), and in
evaluation a *placeholder* input (``file_name``, ``image_id``, ``height``, ``width`` and :data:`SKIPPED_KEY`):
detectron2's test loader would otherwise replace a ``None`` by another image. The placeholder is not run
through the model (:class:`knet.evaluation.coverage.SkipBadInputs`) and the evaluator reports it
(:class:`knet.evaluation.coverage.KNetDatasetEvaluators`).

In evaluation the annotation files are also checked after mapping (a broken ground-truth PNG would otherwise
fail inside the evaluator, or compare against a wrongly sized map).
"""
import dataclasses
import logging
from typing import Optional, Tuple

from .check import DataProblem, check_annotation_files, check_record

__all__ = ["SKIPPED_KEY", "SkippedSample", "RobustMapper", "is_skipped", "skipped_placeholder"]

logger = logging.getLogger(__name__)

# Key of the skip records in a mapped dict: a list of (file, reason) in training (the samples skipped before
# this one was produced), one (file, reason) in an evaluation placeholder.
SKIPPED_KEY = "_knet_skipped"


@dataclasses.dataclass(frozen=True)
class SkippedSample:
    """A sample that was skipped: ``file_name`` is the bad file, ``reason`` what is wrong with it, ``image``
    the image of the record."""

    file_name: str
    reason: str
    image: str = ""

    def as_tuple(self) -> Tuple[str, str]:
        return self.file_name, self.reason


def is_skipped(data) -> bool:
    """Whether a mapped evaluation input is the placeholder of a skipped sample."""
    return isinstance(data, dict) and SKIPPED_KEY in data and "image" not in data


def skipped_placeholder(record: dict, skip: SkippedSample) -> dict:
    """The evaluation input that stands for a skipped record (no image)."""
    out = {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}
    out[SKIPPED_KEY] = skip.as_tuple()
    return out


class RobustMapper:
    """Wrap ``mapper`` so that a sample whose files are bad is skipped (see the module docstring).

    Args:
        mapper: any callable on one dataset dict (a K-Net mapper, detectron2's ``DatasetMapper``, ...).
        is_train: training (a skipped sample is ``None``) or evaluation (a placeholder); default: the mapper's
            ``is_train`` attribute, else True.
        check_annotations: after a successful mapping, also check the record's annotation files (default: in
            evaluation only; the training mappers read them anyway).
    """

    def __init__(self, mapper, *, is_train: Optional[bool] = None, check_annotations: Optional[bool] = None):
        if isinstance(mapper, RobustMapper):
            mapper = mapper.mapper
        self.mapper = mapper
        self.is_train = bool(getattr(mapper, "is_train", True)) if is_train is None else bool(is_train)
        self.check_annotations = (not self.is_train) if check_annotations is None else bool(check_annotations)

    def __repr__(self):
        return f"RobustMapper({self.mapper!r})"

    def _skip(self, record: dict, problem: DataProblem) -> SkippedSample:
        skip = SkippedSample(problem.file_name, problem.reason, record.get("file_name", ""))
        what = "replaced by the next sample" if self.is_train else "left out of the evaluation"
        logger.warning(f"Bad data file {skip.file_name}: {skip.reason}. The sample is {what}.")
        return skip

    def map_or_skip(self, record: dict) -> Tuple[Optional[dict], Optional[SkippedSample]]:
        """``(mapped dict, None)``, or ``(None, SkippedSample)`` when the record's files are bad."""
        try:
            data = self.mapper(record)
        except Exception:
            problems = check_record(record)
            if not problems:
                raise  # the files are fine: a bug or a transient error, not bad data
            return None, self._skip(record, problems[0])
        if self.check_annotations and isinstance(data, dict):
            size = (data.get("height"), data.get("width"))
            problems = check_annotation_files(record, None if None in size else size)
            if problems:
                return None, self._skip(record, problems[0])
        return data, None

    def __call__(self, record: dict):
        data, skip = self.map_or_skip(record)
        if skip is None:
            return data
        return None if self.is_train else skipped_placeholder(record, skip)
