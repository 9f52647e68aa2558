"""The synthetic dataset's classes: six "thing" shapes, then five "stuff" textures (contiguous ids, things
first: the detectron2 panoptic convention), their visualisation colours and COCO categories."""

from typing import List

THING_CLASSES = ["disc", "square", "triangle", "star", "ring", "cross"]
STUFF_CLASSES = ["sky", "grass", "sand", "water", "brick"]
# Visualisation colours (RGB); the things are drawn with random colours, these only serve the Visualizer.
THING_COLORS = [[220, 20, 60], [0, 130, 200], [255, 180, 0], [145, 30, 180], [60, 180, 75], [240, 50, 230]]
STUFF_COLORS = [[135, 206, 235], [34, 139, 34], [210, 180, 140], [0, 105, 148], [178, 34, 34]]
NUM_THING_CLASSES = len(THING_CLASSES)
NUM_CLASSES = len(THING_CLASSES) + len(STUFF_CLASSES)
IGNORE_LABEL = 255


def synthetic_categories() -> List[dict]:
    """COCO panoptic categories: dataset ids 1..6 are things, 7..11 stuff (contiguous id = dataset id - 1)."""
    cats = []
    for i, (name, color) in enumerate(zip(THING_CLASSES, THING_COLORS)):
        cats.append({"id": i + 1, "name": name, "supercategory": "shape", "isthing": 1, "color": color})
    for i, (name, color) in enumerate(zip(STUFF_CLASSES, STUFF_COLORS)):
        cats.append(
            {
                "id": NUM_THING_CLASSES + i + 1,
                "name": name,
                "supercategory": "texture",
                "isthing": 0,
                "color": color,
            }
        )
    return cats
