#!/usr/bin/env python
"""Generate the K-Net synthetic segmentation dataset (COCO panoptic, COCO instances, semantic PNGs).

    python tools/generate_synthetic.py                       # $DETECTRON2_DATASETS/knet_synthetic, defaults
    python tools/generate_synthetic.py --num-train 1000 --size 320 --force

An existing complete dataset with the same parameters is kept (use --force to regenerate); an incomplete or
corrupt one is replaced. The dataset is written atomically (temporary folder, completion marker, rename).
"""
import argparse
import logging
import os
import sys
import time


def parse_size(text: str):
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW (e.g. 256 or 240x320), got {text!r}")
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"--size must be N or HxW, got {text!r}")


def main(argv=None):
    from knet.data.datasets.synthetic import (
        DEFAULT_IMAGE_SIZE,
        DEFAULT_NUM_TRAIN,
        DEFAULT_NUM_VAL,
        DEFAULT_SEED,
        default_synthetic_root,
        ensure_synthetic_dataset,
    )

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None,
                        help=f"dataset folder (default: {default_synthetic_root()}, "
                             f"from $DETECTRON2_DATASETS)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="number of training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="number of validation images")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_IMAGE_SIZE, help="image size: N or HxW")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete dataset exists")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    try:
        root = ensure_synthetic_dataset(
            args.root, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
            image_size=args.size, force=args.force, progress=True,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"K-Net synthetic dataset ready at {root} ({time.perf_counter() - start:.1f} s)")
    for sub in ("images", "panoptic", "semantic", "annotations"):
        print(f"  {os.path.join(root, sub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
