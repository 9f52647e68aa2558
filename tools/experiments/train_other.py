#!/usr/bin/env python
"""Register the knet_other dataset (other_dataset.py), then run train_net.py's command line with it.

The wrapper docs/custom_datasets.md asks for: the registration runs at module level, so every process that
``--num-gpus N`` starts (each imports the main module again) sees the datasets. Arguments are train_net.py's.

    .venv/bin/python tools/experiments/train_other.py --config-file configs/synthetic/knet_panoptic_R10.yaml \
        DATASETS.TRAIN "('knet_other_panoptic_train',)" DATASETS.TEST "('knet_other_panoptic_val',)" \
        MODEL.KNET.NUM_CLASSES 7 MODEL.KNET.NUM_THING_CLASSES 4 MODEL.KNET.NUM_PROPOSALS 12 \
        OUTPUT_DIR output/knet_other
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
for _path in (_HERE, _REPO):  # other_dataset.py next to this file; train_net.py in the repository root
    if _path not in sys.path:
        sys.path.insert(0, _path)

import other_dataset  # noqa: E402,F401  (registers knet_other_panoptic_{train,val})

import train_net  # noqa: E402

if __name__ == "__main__":
    train_net.invoke_main()
