#!/usr/bin/env python
"""Export a K-Net model to ONNX and check it against PyTorch with onnxruntime.

    python tools/export_model.py --config-file CFG --output model.onnx [--sample-size H W] [KEY VALUE ...]

``KEY VALUE`` are config overrides (``MODEL.WEIGHTS weights.pth`` for a trained model). Writes ``model.onnx``
(image in; class and stride-4 mask logits, or semantic logits, out; dynamic image size; see
``knet.export.onnx_export``), checks it with ``onnx.checker``, prints the largest difference from PyTorch
on two image sizes, and writes ``model.yaml``: the same config switched to the onnxruntime-backed
``KNetONNX``, for ``demo/demo.py --config-file model.yaml`` and ``train_net.py --config-file model.yaml
--eval-only``. Needs the export extra (``pip install .[export]``).
"""
import argparse
import os
import sys
import warnings


def get_parser():
    parser = argparse.ArgumentParser(description="Export a K-Net model to ONNX (onnxruntime-checked)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--sample-size", type=int, nargs=2, default=(320, 480), metavar=("H", "W"),
                        help="size of the tracing input (any size works at run time)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: knet.export's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger

    import knet  # noqa: F401  (registers the model)
    from knet.checkpoint.checkpointer import KNetCheckpointer
    from knet.engine import KNetConfigError, load_config
    from knet.export.onnx_export import OPSET, compare_with_pytorch, export_onnx, onnx_config

    logger = setup_logger(name="knet")
    try:
        cfg = load_config(args.config_file, args.opts)
    except KNetConfigError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 2
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"  # exported on CPU; the file runs wherever onnxruntime does
    if cfg.MODEL.META_ARCHITECTURE not in ("KNet", "KNetSemantic"):
        print(f"export_model.py: error: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r} in "
              f"{args.config_file}; only 'KNet' and 'KNetSemantic' models can be exported", file=sys.stderr)
        return 2
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        KNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a model with random weights")
    try:
        meta = export_onnx(model, cfg, args.output, sample_size=args.sample_size, opset=args.opset or OPSET)
    except ImportError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 2
    print(f"export_model.py: wrote {args.output} ({meta['task']}; onnx.checker passed)")
    if not args.no_verify:
        h, w = args.sample_size
        stats = compare_with_pytorch(model, args.output, sizes=[(h, w), (h + 64, w - 32)])
        print("export_model.py: max abs difference from PyTorch (onnxruntime, CPU): " + ", ".join(
            f"{k} {v['max_abs_diff']:.2e} (values up to {v['max_abs_value']:.3g})" for k, v in stats.items()))
    yaml_path = os.path.splitext(args.output)[0] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(onnx_config(cfg, args.output).dump())
    print(f"export_model.py: wrote {yaml_path} (runs the .onnx file: demo/demo.py or train_net.py "
          "--eval-only --config-file it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
