#!/usr/bin/env python
"""Check a config's train and test datasets for bad files before spending GPU hours on them.

    python tools/check_dataset.py --config-file CONFIG.yaml [--num-workers N] [KEY VALUE ...]
    python tools/check_dataset.py --config-file CONFIG.yaml --register my_datasets.py   # custom datasets

Scans every record of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` with a progress bar: images decode and match
their recorded size, panoptic PNGs decode and their segment ids match ``segments_info``, label PNGs decode and
have the image's size, instance masks lie inside the image, category ids are known to the metadata. Prints a
report naming every bad file and why; exit status 0 when everything is fine, 1 when a problem was found, 2 for
a bad config or an unregistered dataset. The logic lives in ``knet.data.check``.
"""
import sys

from knet.data.check import check_dataset_main

if __name__ == "__main__":
    sys.exit(check_dataset_main())
