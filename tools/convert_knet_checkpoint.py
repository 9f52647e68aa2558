#!/usr/bin/env python
"""Convert a published K-Net checkpoint (or ImageNet backbone weights) for this package.

    python tools/convert_knet_checkpoint.py --source mmdet-knet \\
        --config-file configs/model_zoo/knet_R50_1x_coco_panoptic_inference.yaml \\
        --input knet_s3_r50_fpn_1x_coco-panoptic_20211017_151750-395fbcba.pth \\
        --output weights/knet_R50_1x_coco_panoptic.pth

The target model is built from the config (names and shapes only: on the "meta" device) and the converted
weights must fit it exactly: every checkpoint tensor has a place in the model with the same shape and, for
full K-Net checkpoints, every model tensor comes from the checkpoint. Otherwise nothing is written and the
reason is printed. The output (``.pth`` or ``.safetensors``) is written atomically and loads with
``MODEL.WEIGHTS``. Sources: ``mmdet-knet``, ``mmseg-knet``, ``torchvision-resnet``, ``swin``,
``mmcv-resnet-v1c`` (see ``knet.checkpoint.layouts``).
Trailing ``KEY VALUE`` pairs override config options, as in ``train_net.py``.
"""

import argparse
import os
import sys
import time


def parse_args(argv=None):
    from knet.checkpoint import SOURCES

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--source",
        required=True,
        choices=SOURCES,
        help="layout of the input checkpoint",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config of the target model")
    parser.add_argument(
        "--input", required=True, metavar="IN", help="checkpoint to convert (.pth/.pt/.safetensors)"
    )
    parser.add_argument(
        "--output", required=True, metavar="OUT", help="converted checkpoint (.pth or .safetensors)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def build_target_state_dict(cfg):
    """The names and shapes of the model built from ``cfg``: built on PyTorch's "meta" device (no memory, no
    initialisation time); if a module cannot be built there, on the CPU with random weights."""
    import torch
    from detectron2.modeling import META_ARCH_REGISTRY, build_model

    try:
        with torch.device("meta"):
            model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except (NotImplementedError, RuntimeError):
        with torch.no_grad():
            model = build_model(cfg)
    return model.state_dict()


def load_cfg(config_file, opts):
    """The target model's config (``knet.engine.load_config``: a wrong key is named, with the closest ones),
    on the CPU and without initial weights, frozen."""
    from knet.engine import load_config

    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if not (args.output.endswith(".pth") or args.output.endswith(".safetensors")):
        sys.exit(f"error: --output must end with .pth or .safetensors, got '{args.output}'")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        sys.exit("error: --output must differ from --input")
    if os.path.exists(args.output) and not args.force:
        sys.exit(f"error: '{args.output}' exists; pass --force to overwrite it")
    if not os.path.isfile(args.input):
        sys.exit(f"error: input checkpoint '{args.input}' does not exist")

    from knet.checkpoint import (
        CheckpointLoadError,
        CheckpointMismatchError,
        check_normalization,
        convert_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    from knet.engine import KNetConfigError

    start = time.perf_counter()
    try:
        cfg = load_cfg(args.config_file, args.opts)
    except KNetConfigError as e:
        sys.exit(f"error: {e}")
    input_format = cfg.INPUT.FORMAT
    if input_format not in ("RGB", "BGR"):
        sys.exit(f"error: INPUT.FORMAT must be RGB or BGR for these weights, the config has '{input_format}'")
    try:
        check_normalization(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, input_format)
    except ValueError as e:
        sys.exit(f"error: {args.config_file}: {e}")
    if args.source == "torchvision-resnet" and cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        sys.exit(
            "error: torchvision ResNets put the stride in the 3x3 conv; the config must set "
            "MODEL.RESNETS.STRIDE_IN_1X1 False"
        )
    print(f"[convert] building the target model from {args.config_file} ...", flush=True)
    try:
        target = build_target_state_dict(cfg)
    except Exception as e:  # the checkpoint cannot be validated without the model: refuse
        sys.exit(
            f"error: cannot build the model of {args.config_file} to check the conversion against it "
            f"({type(e).__name__}: {e}); nothing was converted"
        )
    try:
        checkpoint = load_checkpoint(args.input)
        result = convert_checkpoint(
            checkpoint, args.source, target, input_format=input_format, where=args.input
        )
    except (CheckpointLoadError, CheckpointMismatchError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    result.metadata["config_file"] = os.path.basename(args.config_file)
    result.metadata["converted_from"] = os.path.basename(args.input)
    print(result.summary.format())
    save_checkpoint(result.to_checkpoint(), args.output)
    print(
        f"[convert] wrote {args.output} ({len(result.state_dict)} tensors) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return result


if __name__ == "__main__":
    main()
