"""Dataset metadata checks against the model's config (one place; see also the mapper and preflight checks
that issue 14 merges here)."""
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["check_dataset_metadata"]


def _num_thing_classes(meta):
    """Thing classes of a dataset: ``thing_dataset_id_to_contiguous_id`` when present (detectron2's standard
    panoptic metadata lists all classes in ``thing_classes``), else ``thing_classes``; None if neither."""
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping is not None:
        return len(mapping)
    classes = meta.get("thing_classes", None)
    return None if classes is None else len(classes)


def _num_classes(meta):
    """All classes of a panoptic / semantic dataset: ``stuff_classes`` (for panoptic datasets detectron2 lists
    every class there, things first), else ``stuff_dataset_id_to_contiguous_id``; None if neither."""
    classes = meta.get("stuff_classes", None)
    if classes is not None:
        return len(classes)
    mapping = meta.get("stuff_dataset_id_to_contiguous_id", None)
    return None if mapping is None else len(mapping)


def check_dataset_metadata(cfg, semantic: bool = False) -> None:
    """Fail early when a registered dataset of ``DATASETS.TRAIN``/``DATASETS.TEST`` disagrees with the model's
    class counts (datasets that are not registered, or have no class metadata, are skipped).

    * instance and panoptic models: the dataset's thing classes == ``MODEL.KNET.NUM_THING_CLASSES``;
    * panoptic (``NUM_CLASSES > NUM_THING_CLASSES``) and semantic models, and any model on a panoptic dataset
      (metadata ``panoptic_json``): its classes (``stuff_classes``) == ``MODEL.KNET.NUM_CLASSES``.
    """
    k = cfg.MODEL.KNET
    registered = set(DatasetCatalog.list())
    panoptic = k.NUM_CLASSES > k.NUM_THING_CLASSES
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            if name not in registered:
                continue
            meta = MetadataCatalog.get(name)
            things = None if semantic else _num_thing_classes(meta)
            if things is not None and things != k.NUM_THING_CLASSES:
                raise ValueError(
                    f"MODEL.KNET.NUM_THING_CLASSES = {k.NUM_THING_CLASSES}, but dataset '{name}' "
                    f"(DATASETS.{key}) has {things} thing classes in its metadata; set "
                    f"MODEL.KNET.NUM_THING_CLASSES to {things}."
                )
            panoptic_data = meta.get("panoptic_json", None) is not None
            total = _num_classes(meta) if (semantic or panoptic or panoptic_data) else None
            if total is not None and total != k.NUM_CLASSES:
                raise ValueError(
                    f"MODEL.KNET.NUM_CLASSES = {k.NUM_CLASSES}, but dataset '{name}' (DATASETS.{key}) has "
                    f"{total} classes (stuff_classes; for panoptic datasets it lists all classes, things "
                    "first) "
                    f"in its metadata; set MODEL.KNET.NUM_CLASSES to {total}."
                )
