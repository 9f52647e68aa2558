"""Datasets: the procedural synthetic dataset (generated on first use) and its registration."""
from .register_synthetic import (  # noqa: F401
    SYNTHETIC_DATASET_NAMES,
    get_synthetic_metadata,
    register_all_knet_synthetic,
    register_knet_synthetic,
)
from .synthetic import (  # noqa: F401
    check_synthetic_dataset,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    render_synthetic_image,
)

register_all_knet_synthetic()
from . import register_ade20k  # noqa: F401,E402  (ADE20K-150 semantic: ade20k_sem_seg_{train,val})
from .register_coco_panoptic import register_knet_coco_panoptic  # noqa: F401,E402  (COCO panoptic)
