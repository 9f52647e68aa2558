"""Checks of a dataset's files against its records, shared by the training/evaluation loaders
(:mod:`knet.data.robust`) and ``tools/check_dataset.py``.

One record (a detectron2 dataset dict) is checked by :func:`check_record`:

* ``file_name``: the image exists and decodes completely; its size (after EXIF orientation, as
  ``detection_utils.read_image`` sees it) equals the record's ``height``/``width`` when they are given;
* ``pan_seg_file_name``: the panoptic PNG decodes, has the image's size, and its segment ids
  (``R + 256 G + 256^2 B``, 0 = void) are exactly the ids of ``segments_info`` (an id in the PNG but not in
  the JSON breaks the training mapper; an id in the JSON but not in the PNG breaks panopticapi's PQ);
* ``sem_seg_file_name``: the label PNG decodes, is single-channel and has the image's size;
* ``annotations``: every polygon lies inside the image, every RLE has the image's size;
* with a :class:`DatasetSpec` (built from the dataset's metadata): category ids are known to the metadata and
  label values are class ids or the ignore value.

Every problem is a :class:`DataProblem` naming the file at fault and the reason. :func:`scan_datasets` checks
whole registered datasets (optionally with several processes) and :func:`format_report` prints the result.
"""
import dataclasses
import logging
import os
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataProblem",
    "DatasetSpec",
    "DatasetReport",
    "check_record",
    "check_annotation_files",
    "dataset_spec",
    "scan_datasets",
    "format_report",
    "problems_by_file",
    "check_dataset_main",
]

logger = logging.getLogger(__name__)

# Polygon vertices may lie this many pixels outside the image (rounding of exported coordinates).
POLYGON_TOLERANCE = 1.0
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class DataProblem:
    """One problem of one record: ``file_name`` is the file at fault (or the image of the record)."""

    file_name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file_name}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the metadata of a dataset allows (all ``None``: nothing is checked)."""

    segment_classes: Optional[FrozenSet[int]] = None  # contiguous ids allowed in panoptic segments_info
    instance_classes: Optional[FrozenSet[int]] = None  # contiguous ids allowed in instance annotations
    num_label_classes: Optional[int] = None  # label PNG values must be < this ...
    ignore_label: Optional[int] = None  # ... or equal to this


class _Bad(Exception):
    """Internal: a file cannot be used (carries the DataProblem)."""

    def __init__(self, problem: DataProblem):
        super().__init__(str(problem))
        self.problem = problem


def _describe(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):  # its message repeats the path (as a file object's repr)
        return f"{type(err).__name__}: cannot identify image file: not an image, or a format PIL cannot read"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _open_decoded(path: str, what: str) -> Image.Image:
    """Open and fully decode an image file, or raise :class:`_Bad` saying why not."""
    if not PathManager.exists(path):
        raise _Bad(DataProblem(path, f"the {what} does not exist"))
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decodes everything: truncated files fail here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors ...
        raise _Bad(DataProblem(path, f"cannot decode the {what} ({_describe(e)})"))
    return img


def _oriented_size(img: Image.Image) -> Tuple[int, int]:
    """(height, width) after the EXIF orientation that ``detection_utils.read_image`` applies."""
    w, h = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _hw(shape) -> str:
    return f"{shape[1]}x{shape[0]} (width x height)"


def _check_image(record: dict) -> Tuple[int, int]:
    path = record["file_name"]
    size = _oriented_size(_open_decoded(path, "image"))
    expected = (record.get("height"), record.get("width"))
    if None not in expected and tuple(expected) != size:
        raise _Bad(DataProblem(path, f"the image is {_hw(size)} but its record says {_hw(expected)}"))
    return size


def _panoptic_problems(record: dict, size: Optional[Tuple[int, int]], spec: Optional[DatasetSpec]):
    path = record["pan_seg_file_name"]
    try:
        rgb = np.asarray(_open_decoded(path, "panoptic PNG").convert("RGB"), dtype=np.int64)
    except _Bad as bad:
        return [bad.problem]
    if size is not None and rgb.shape[:2] != size:  # the annotation defines the size: the image is at fault
        return [DataProblem(record["file_name"], f"the image is {_hw(size)} but its panoptic PNG {path} is "
                                                 f"{_hw(rgb.shape)}")]
    ids = set(np.unique(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).tolist()) - {0}
    segments = record.get("segments_info", [])
    listed = {int(s["id"]) for s in segments}
    problems = []
    extra, missing = sorted(ids - listed), sorted(listed - ids)
    if extra:
        problems.append(DataProblem(path, f"the panoptic PNG contains segment id(s) {extra[:10]} that its "
                                          "segments_info (JSON) does not list"))
    if missing:
        problems.append(DataProblem(path, f"segments_info (JSON) lists segment id(s) {missing[:10]} that the "
                                          "panoptic PNG does not contain"))
    if spec is not None and spec.segment_classes is not None:
        unknown = sorted({int(s["category_id"]) for s in segments} - spec.segment_classes)
        if unknown:
            problems.append(DataProblem(path, f"segments_info uses category id(s) {unknown[:10]} "
                                              "(contiguous) unknown to the dataset's metadata"))
    return problems


def _label_problems(record: dict, size: Optional[Tuple[int, int]], spec: Optional[DatasetSpec]):
    path = record["sem_seg_file_name"]
    try:
        label = np.asarray(_open_decoded(path, "label PNG"))
    except _Bad as bad:
        return [bad.problem]
    if label.ndim != 2:
        return [DataProblem(path, f"the label PNG must have one channel, it has shape {label.shape}")]
    if size is not None and label.shape != size:
        return [DataProblem(record["file_name"], f"the image is {_hw(size)} but its label PNG {path} is "
                                                 f"{_hw(label.shape)}")]
    if spec is not None and spec.num_label_classes is not None:
        values = np.unique(label)
        bad = values[(values != spec.ignore_label) & ((values < 0) | (values >= spec.num_label_classes))]
        if len(bad):
            return [DataProblem(path, f"the label PNG contains value(s) {bad[:10].tolist()}, neither a class "
                                      f"id 0..{spec.num_label_classes - 1} nor the ignore value "
                                      f"{spec.ignore_label}")]
    return []


def _annotation_problems(record: dict, size: Optional[Tuple[int, int]], spec: Optional[DatasetSpec]):
    path = record["file_name"]
    problems = []
    h, w = size if size is not None else (record.get("height"), record.get("width"))
    for i, anno in enumerate(record.get("annotations", [])):
        segm = anno.get("segmentation")
        if isinstance(segm, list) and h is not None and w is not None:
            for poly in segm:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                tol = POLYGON_TOLERANCE
                if len(xy) and (xy[:, 0].min() < -tol or xy[:, 1].min() < -tol or xy[:, 0].max() > w + tol
                                or xy[:, 1].max() > h + tol):
                    problems.append(DataProblem(path, f"annotation {i}: a polygon reaches outside the "
                                                      f"{w}x{h} image"))
                    break
        elif isinstance(segm, dict) and h is not None and w is not None:
            if [int(v) for v in segm.get("size", (h, w))] != [h, w]:
                problems.append(DataProblem(path, f"annotation {i}: its RLE mask has size (height, width) "
                                                  f"{list(segm['size'])}, the image is {[h, w]}"))
        if spec is not None and spec.instance_classes is not None and "category_id" in anno:
            if int(anno["category_id"]) not in spec.instance_classes:
                problems.append(DataProblem(path, f"annotation {i}: category id {anno['category_id']} "
                                                  "(contiguous) is unknown to the dataset's metadata"))
    return problems


def check_annotation_files(record: dict, size: Optional[Tuple[int, int]],
                           spec: Optional[DatasetSpec] = None) -> List[DataProblem]:
    """The problems of the annotation files of ``record`` (panoptic PNG, label PNG, instance annotations)
    for an image of ``size`` = (height, width) (``None``: sizes are not compared)."""
    problems = []
    if "pan_seg_file_name" in record:
        problems += _panoptic_problems(record, size, spec)
    if "sem_seg_file_name" in record:
        problems += _label_problems(record, size, spec)
    if "annotations" in record:
        problems += _annotation_problems(record, size, spec)
    return problems


def check_record(record: dict, spec: Optional[DatasetSpec] = None) -> List[DataProblem]:
    """Every problem of one dataset record (empty list: the record's files are fine). Never raises for bad
    files; a record without ``file_name`` is itself a problem."""
    if "file_name" not in record:
        return [DataProblem(str(record.get("image_id", "?")), "the record has no 'file_name'")]
    try:
        size = _check_image(record)
    except _Bad as bad:
        return [bad.problem]  # annotation sizes cannot be compared with an unreadable image
    return check_annotation_files(record, size, spec)


def dataset_spec(dataset_name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a registered dataset, from its metadata (keys that are absent are not
    checked)."""
    meta = MetadataCatalog.get(dataset_name)
    things = meta.get("thing_dataset_id_to_contiguous_id", None)
    stuff = meta.get("stuff_dataset_id_to_contiguous_id", None)
    thing_ids = frozenset(things.values()) if things else None
    if thing_ids is None and meta.get("thing_classes", None):
        thing_ids = frozenset(range(len(meta.thing_classes)))
    segment_ids = None
    if things is not None or stuff is not None:
        segment_ids = frozenset((things or {}).values()) | frozenset((stuff or {}).values())
    stuff_classes = meta.get("stuff_classes", None)
    return DatasetSpec(
        segment_classes=segment_ids,
        instance_classes=thing_ids,
        num_label_classes=len(stuff_classes) if stuff_classes else None,
        ignore_label=meta.get("ignore_label", 255),
    )


@dataclasses.dataclass
class DatasetReport:
    """The result of scanning one dataset."""

    name: str
    role: str  # "DATASETS.TRAIN" / "DATASETS.TEST"
    num_records: int = 0
    problems: List[DataProblem] = dataclasses.field(default_factory=list)
    bad_records: int = 0  # records with at least one problem
    load_error: Optional[str] = None  # the dataset could not be loaded at all

    @property
    def ok(self) -> bool:
        return self.load_error is None and not self.problems


def _check_one(args):
    record, spec = args
    return check_record(record, spec)


def scan_datasets(datasets: Sequence[Tuple[str, str]], num_workers: int = 0,
                  progress: bool = True) -> List[DatasetReport]:
    """Check every record of the registered datasets ``[(name, role), ...]``.

    Args:
        datasets: dataset names with the config key they come from (a name listed twice is scanned once).
        num_workers: processes that decode in parallel (0: in this process).
        progress: show a tqdm progress bar per dataset.
    """
    from tqdm import tqdm

    reports, seen = [], set()
    for name, role in datasets:
        if name in seen:
            continue
        seen.add(name)
        report = DatasetReport(name, role)
        reports.append(report)
        try:
            records = DatasetCatalog.get(name)
        except Exception as e:
            report.load_error = f"the dataset cannot be loaded ({_describe(e)})"
            continue
        spec = dataset_spec(name)
        report.num_records = len(records)
        jobs = ((r, spec) for r in records)
        bar = dict(total=len(records), desc=f"checking {name}", unit="img", disable=not progress)
        if num_workers > 0 and len(records) > 1:
            import multiprocessing as mp

            with mp.get_context().Pool(num_workers) as pool:
                results = list(tqdm(pool.imap(_check_one, jobs, chunksize=8), **bar))
        else:
            results = [_check_one(job) for job in tqdm(jobs, **bar)]
        for problems in results:
            if problems:
                report.bad_records += 1
                report.problems.extend(problems)
    return reports


def format_report(reports: Sequence[DatasetReport], max_listed: int = 50) -> str:
    """A human-readable report of :func:`scan_datasets`, ending with a one-line verdict."""
    lines = []
    for rep in reports:
        if rep.load_error is not None:
            lines.append(f"{rep.name} ({rep.role}): FAILED: {rep.load_error}")
            continue
        status = "OK" if rep.ok else f"{rep.bad_records} with problems ({len(rep.problems)} problem(s))"
        lines.append(f"{rep.name} ({rep.role}): {rep.num_records} records, {status}")
        for p in rep.problems[:max_listed]:
            lines.append(f"  {p}")
        if len(rep.problems) > max_listed:
            lines.append(f"  ... and {len(rep.problems) - max_listed} more")
    bad = sum(r.bad_records for r in reports)
    total = sum(r.num_records for r in reports)
    failed = [r.name for r in reports if r.load_error is not None]
    if bad or failed:
        verdict = f"FAILED: {bad} of {total} records have problems"
        if failed:
            verdict += f"; {len(failed)} dataset(s) could not be loaded ({', '.join(failed)})"
        verdict += (". Fix or remove these files (or their records) before training; in training a bad "
                    "sample is skipped (DATALOADER.MAX_SKIPPED_FRACTION), in evaluation it is left out of "
                    "the metrics.")
    else:
        verdict = f"OK: {total} records in {len(reports)} dataset(s), no problems found."
    lines.append(verdict)
    return "\n".join(lines)


def problems_by_file(problems: Sequence[DataProblem]) -> Dict[str, List[str]]:
    """``{file: [reasons]}`` (for reports and tests)."""
    out: Dict[str, List[str]] = {}
    for p in problems:
        out.setdefault(p.file_name, []).append(p.reason)
    return out


def _import_registration(spec: str) -> None:
    """Import a module (``pkg.mod``) or run a Python file (``path/to/file.py``) that registers datasets."""
    import importlib
    import runpy
    import sys

    # as when that file is run: its folder and the working directory are importable (e.g. `import train_net`)
    added = [p for p in (os.path.dirname(os.path.abspath(spec)), os.getcwd()) if p not in sys.path]
    sys.path[:0] = added
    try:
        if spec.endswith(".py"):
            if not os.path.isfile(spec):
                raise FileNotFoundError(f"--register: file '{spec}' does not exist.")
            runpy.run_path(spec, run_name="knet_check_dataset_registration")
        else:
            importlib.import_module(spec)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ImportError(f"--register {spec}: registering failed ({_describe(e)})") from e
    finally:
        for p in added:
            sys.path.remove(p)


def check_dataset_main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line of ``tools/check_dataset.py``; returns the exit status (0: no problem, 1: problems found,
    2: bad config or datasets that are not registered)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="check_dataset.py",
        description="Check the files of the train and test datasets of a K-Net config before training: "
                    "images decode and match their recorded size, panoptic PNGs decode and their segment ids "
                    "match segments_info, label PNGs decode, instance masks lie inside the image, category "
                    "ids are known to the metadata. Exit status 1 when something is wrong.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config to check")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes that decode files in parallel (0: none; default %(default)s)")
    parser.add_argument("--register", action="append", default=[], metavar="MODULE_OR_FILE.py",
                        help="import this module / run this file first (registers custom datasets); "
                             "repeatable")
    parser.add_argument("--only", choices=("train", "test"), default=None, help="check one side only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, as for train_net.py")
    args = parser.parse_args(argv)

    import knet  # noqa: F401  (registers the built-in datasets)
    from knet.data.metadata import DatasetMetadataError, check_registered
    from knet.engine import KNetConfigError, load_config

    try:
        for spec in args.register:
            _import_registration(spec)
        cfg = load_config(args.config_file, args.opts)
        datasets = []
        if args.only in (None, "train"):
            datasets += [(n, "DATASETS.TRAIN") for n in cfg.DATASETS.TRAIN]
        if args.only in (None, "test"):
            datasets += [(n, "DATASETS.TEST") for n in cfg.DATASETS.TEST]
        for name, role in datasets:
            check_registered(name, role)
    except (KNetConfigError, DatasetMetadataError, ImportError, FileNotFoundError) as e:
        print(f"check_dataset.py: error: {e}", file=sys.stderr)
        return 2
    if not datasets:
        print("check_dataset.py: error: the config lists no dataset in DATASETS.TRAIN / DATASETS.TEST",
              file=sys.stderr)
        return 2
    reports = scan_datasets(datasets, num_workers=max(0, args.num_workers), progress=not args.no_progress)
    print(format_report(reports))
    return 0 if all(r.ok for r in reports) else 1
