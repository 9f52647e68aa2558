#!/usr/bin/env python
"""Convert ADE20K (ADEChallengeData2016) labels to detectron2's semantic format.

Reads ``<root>/ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = "other", 1..150 = classes)
and writes ``annotations_detectron2/{training,validation}/*.png`` with 0 -> 255 (ignore) and class k -> k - 1
(mmsegmentation's ``reduce_zero_label=True``), which ``ade20k_sem_seg_{train,val}`` read.

Usage: python tools/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS] [--overwrite]
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

from knet.data.datasets.register_ade20k import convert_ade20k_label


def convert_split(src_dir: str, dst_dir: str, overwrite: bool = False) -> int:
    """Convert every ``*.png`` of ``src_dir`` into ``dst_dir``; returns the number of files written."""
    os.makedirs(dst_dir, exist_ok=True)
    written = 0
    for fname in sorted(os.listdir(src_dir)):
        if not fname.endswith(".png"):
            continue
        dst = os.path.join(dst_dir, fname)
        if os.path.exists(dst) and not overwrite:
            continue
        label = np.asarray(Image.open(os.path.join(src_dir, fname)))
        Image.fromarray(convert_ade20k_label(label)).save(dst)
        written += 1
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing converted files")
    args = parser.parse_args(argv)

    base = os.path.join(args.root, "ADEChallengeData2016")
    for split in ("training", "validation"):
        src = os.path.join(base, "annotations", split)
        if not os.path.isdir(src):
            print(
                f"error: {src} does not exist; download ADEChallengeData2016.zip from "
                "http://sceneparsing.csail.mit.edu/ and unzip it under --root",
                file=sys.stderr,
            )
            return 1
        n = convert_split(src, os.path.join(base, "annotations_detectron2", split), args.overwrite)
        print(f"{split}: wrote {n} label maps to {os.path.join(base, 'annotations_detectron2', split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
