"""Evaluation with bad data files: the bad files are named and the metrics say which images they cover.

The test loader maps with a :class:`knet.data.robust.RobustMapper`: an image (or ground-truth file) that
cannot be read becomes a placeholder input. :class:`SkipBadInputs` keeps placeholders away from the model, and
:class:`KNetDatasetEvaluators` (what :func:`knet.evaluation.build_evaluator` returns):

* gathers the skipped files of all processes and logs them, each with its reason;
* evaluates on the images that were read: ``COCOEvaluator`` gets their image ids, ``COCOPanopticEvaluator``
  a copy of the ground-truth JSON restricted to them (panopticapi requires a prediction for every image of
  its JSON), ``SemSegEvaluator`` only ever sees the images it is given;
* adds to every task's metrics ``num_images`` (images evaluated, all processes) and ``num_skipped_images``.
"""
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterable, List

import torch
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.robust import SKIPPED_KEY, is_skipped

__all__ = ["SkipBadInputs", "KNetDatasetEvaluators", "as_knet_evaluators"]

logger = logging.getLogger(__name__)


class SkipBadInputs(torch.nn.Module):
    """Runs ``model`` on the inputs that are not placeholders of skipped images; a placeholder gets ``{}`` as
    its output (so inputs and outputs still pair up for the evaluator)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        flags = [is_skipped(x) for x in inputs]
        if not any(flags):
            return self.model(inputs)
        good = [x for x, bad in zip(inputs, flags) if not bad]
        outputs = iter(self.model(good) if good else [])
        return [{} if bad else next(outputs) for bad in flags]


class _MetadataOverride:
    """A metadata object with some keys replaced (detectron2's ``Metadata`` refuses to change a key)."""

    def __init__(self, meta, **overrides):
        self._meta, self._overrides = meta, overrides

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._meta, name)

    def get(self, key, default=None):
        return self._overrides[key] if key in self._overrides else self._meta.get(key, default)


def _restricted_panoptic_json(src: str, image_ids: set, folder: str) -> str:
    """Write a copy of the COCO panoptic JSON ``src`` with only the images ``image_ids`` into ``folder``."""
    with PathManager.open(src, "r") as f:
        gt = json.load(f)
    gt["images"] = [im for im in gt.get("images", []) if im["id"] in image_ids]
    gt["annotations"] = [a for a in gt.get("annotations", []) if a["image_id"] in image_ids]
    path = os.path.join(folder, "panoptic_gt_evaluated_images.json")
    with open(path, "w") as f:
        json.dump(gt, f)
    return path


def _flatten(evaluators: Iterable[DatasetEvaluator]) -> List[DatasetEvaluator]:
    out = []
    for ev in evaluators:
        if isinstance(ev, DatasetEvaluators):
            out.extend(_flatten(ev._evaluators))
        else:
            out.append(ev)
    return out


class KNetDatasetEvaluators(DatasetEvaluators):
    """``DatasetEvaluators`` that handles the placeholders of skipped images (see the module docstring).

    Args:
        evaluators: the evaluators to combine (nested ``DatasetEvaluators`` are flattened).
        dataset_name: named in the log lines.
    """

    def __init__(self, evaluators, dataset_name: str = ""):
        super().__init__(_flatten(evaluators))
        self.dataset_name = dataset_name
        self._skipped: List[tuple] = []
        self._image_ids: List = []

    def reset(self):
        super().reset()
        self._skipped, self._image_ids = [], []

    def process(self, inputs, outputs):
        good_in, good_out = [], []
        for inp, out in zip(inputs, outputs):
            if is_skipped(inp):
                self._skipped.append(tuple(inp[SKIPPED_KEY]))
            else:
                good_in.append(inp)
                good_out.append(out)
                self._image_ids.append(inp.get("image_id"))
        if good_in:
            super().process(good_in, good_out)

    def _evaluate_children(self, image_ids: set, skipped: bool) -> Dict:
        results = OrderedDict()
        with tempfile.TemporaryDirectory() as tmp:
            for ev in self._evaluators:
                if skipped and isinstance(ev, COCOEvaluator):
                    result = ev.evaluate(img_ids=sorted(image_ids))
                elif skipped and isinstance(ev, COCOPanopticEvaluator) and comm.is_main_process():
                    meta = ev._metadata
                    gt_json = _restricted_panoptic_json(meta.panoptic_json, image_ids, tmp)
                    ev._metadata = _MetadataOverride(meta, panoptic_json=gt_json)
                    try:
                        result = ev.evaluate()
                    finally:
                        ev._metadata = meta
                else:
                    result = ev.evaluate()
                if comm.is_main_process() and result is not None:
                    for k, v in result.items():
                        if k in results:
                            raise KeyError(f"Two evaluators produce results with the same key '{k}'.")
                        results[k] = v
        return results

    def evaluate(self):
        if comm.get_world_size() > 1:
            parts = comm.all_gather((self._skipped, self._image_ids))
            skipped = [s for part in parts for s in part[0]]
            image_ids = [i for part in parts for i in part[1]]
        else:
            skipped, image_ids = list(self._skipped), list(self._image_ids)
        name = f"'{self.dataset_name}'" if self.dataset_name else "the test set"
        if skipped and comm.is_main_process():
            listed = "".join(f"\n  {f}: {r}" for f, r in skipped)
            logger.error(
                f"{len(skipped)} image(s) of {name} have bad data files and are NOT evaluated; the metrics "
                f"cover the other {len(image_ids)} of {len(image_ids) + len(skipped)} images "
                f"(num_images / num_skipped_images in the results). tools/check_dataset.py lists every bad "
                f"file:{listed}"
            )
        results = self._evaluate_children(set(image_ids), bool(skipped))
        for task, metrics in results.items():
            if isinstance(metrics, dict) and metrics:
                metrics["num_images"] = float(len(image_ids))
                metrics["num_skipped_images"] = float(len(skipped))
        return results


def as_knet_evaluators(evaluator, dataset_name: str = "") -> KNetDatasetEvaluators:
    """``evaluator`` (one, a list, or ``DatasetEvaluators``) as a :class:`KNetDatasetEvaluators`."""
    if isinstance(evaluator, KNetDatasetEvaluators):
        return evaluator
    if isinstance(evaluator, DatasetEvaluator):
        evaluator = [evaluator]
    return KNetDatasetEvaluators(list(evaluator), dataset_name)
