#!/usr/bin/env python
"""K-Net demo: segment images, a video or the webcam and draw the result.

Examples::

    python demo/demo.py --config-file CONFIG.yaml --input photos/ --output out/ \\
        --opts MODEL.WEIGHTS model.pth MODEL.DEVICE cpu
    python demo/demo.py --config-file CONFIG.yaml --input "imgs/*.jpg" a.png --output out/ --task instance \\
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --config-file CONFIG.yaml --video-input clip.mp4 --output clip_seg.mp4 --opts ...

``--input`` takes files, globs (quote them) and folders (every image inside, sorted). ``--output`` is a file
for a single input image or a video, otherwise a folder (created when missing). An image that cannot be read
is reported with its path and skipped; the exit status is 1 when anything failed, 0 otherwise.
"""
import argparse
import glob
import os
import sys
import time

import cv2
import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
WINDOW_NAME = "K-Net"


def get_parser():
    parser = argparse.ArgumentParser(description="K-Net demo (detectron2)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a K-Net config file")
    parser.add_argument("--webcam", action="store_true", help="segment the webcam stream")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument("--input", nargs="+", help="image files, globs (quoted) or folders")
    parser.add_argument(
        "--output",
        help="where to write the drawings: a file (single image or video) or a folder; "
        "if omitted they are shown in a window",
    )
    parser.add_argument("--task", choices=["panoptic", "instance", "semantic"], default="panoptic")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="instances / thing segments scoring below it are not drawn (semantic: pixels whose top "
        "probability is below it)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu",
    )
    return parser


def setup_cfg(args):
    """Config from ``--config-file`` and ``--opts``; the output of ``--task`` is switched on."""
    from knet.engine import apply_cpu_allocator_config, load_config, use_cpu_without_cuda

    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    test = cfg.MODEL.KNET.TEST
    test.PANOPTIC_ON = args.task == "panoptic"
    test.INSTANCE_ON = args.task == "instance"
    test.SEMANTIC_ON = args.task == "semantic"
    cfg.freeze()
    apply_cpu_allocator_config(cfg)
    return cfg


def expand_inputs(items):
    """Files, globs and folders → (image paths, list of (item, reason) for the items matching nothing)."""
    paths, problems = [], []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                problems.append((item, "the folder holds no image"))
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(os.path.expanduser(item)) if os.path.isfile(p))
            if not found:
                problems.append((item, "the pattern matches no file"))
            paths.extend(found)
        else:
            problems.append((item, "no such file or folder"))
    return paths, problems


def output_path(output, path, single):
    """Where the drawing of ``path`` goes: ``output`` itself for one input when it names an image file,
    else ``output/<basename>``."""
    if single and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS and not os.path.isdir(output):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, os.path.basename(path))


def _show(image_bgr, wait_ms=0):
    """Show in a window; returns the key pressed (27 = esc)."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image_bgr)
        return cv2.waitKey(wait_ms)
    except cv2.error as e:
        raise SystemExit(f"demo.py: cannot open a window ({e.__class__.__name__}); pass --output instead.")


def run_images(demo, paths, output, logger):
    """Segment and draw every image; returns (number processed, number of failures)."""
    from detectron2.data.detection_utils import read_image

    processed = failures = 0
    single = len(paths) == 1
    for path in tqdm.tqdm(paths, desc="images", unit="img", disable=single or not output):
        try:
            img = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for corrupt / non-image files
            print(f"demo.py: cannot read image {path}: {e.__class__.__name__}: {e}; skipped", file=sys.stderr)
            failures += 1
            continue
        start = time.time()
        predictions, drawn, vis = demo.run_on_image(img)
        what = {"instance": f"{len(drawn)} instances", "panoptic": f"{len(drawn[1])} segments"}
        logger.info(f"{path}: {what.get(demo.task, 'semantic map')} drawn in {time.time() - start:.2f}s")
        out_img = vis.get_image()[:, :, ::-1]
        if output:
            dst = output_path(output, path, single)
            if not cv2.imwrite(dst, out_img):
                print(f"demo.py: cannot write {dst}", file=sys.stderr)
                failures += 1
                continue
        elif _show(out_img) == 27:  # esc
            break
        processed += 1
    return processed, failures


def run_video(demo, video_path, output):
    video = cv2.VideoCapture(video_path)
    if not video.isOpened():
        print(f"demo.py: cannot open video {video_path}; skipped", file=sys.stderr)
        return 1
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    if output:
        dst = output
        if os.path.isdir(output) or not os.path.splitext(output)[1]:
            os.makedirs(output, exist_ok=True)
            dst = os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")
        writer = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height), True)
    for frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames, desc="frames", unit="frame"):
        if writer is not None:
            writer.write(frame)
        elif _show(frame, 1) == 27:
            break
    video.release()
    if writer is not None:
        writer.release()
    return 0


def main(argv=None):
    args = get_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    import knet  # noqa: F401  (registers the model and datasets)
    from knet.data.metadata import DatasetMetadataError
    from knet.demo import VisualizationDemo
    from knet.engine import KNetConfigError

    setup_logger(name="fvcore")
    logger = setup_logger(name="knet.demo")
    logger.info("Arguments: " + str(args))
    sources = [bool(args.input), bool(args.video_input), args.webcam]
    if sum(sources) != 1:
        print("demo.py: give exactly one of --input, --video-input, --webcam", file=sys.stderr)
        return 2
    try:
        cfg = setup_cfg(args)
        demo = VisualizationDemo(cfg, task=args.task, confidence_threshold=args.confidence_threshold)
    except (KNetConfigError, DatasetMetadataError) as e:  # the model checks the datasets' class counts
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2

    failures = 0
    if args.input:
        paths, problems = expand_inputs(args.input)
        for item, reason in problems:
            print(f"demo.py: --input {item}: {reason}", file=sys.stderr)
        failures += len(problems)
        if len(paths) > 1 and args.output and os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS:
            print(f"demo.py: --output {args.output} names a file but there are {len(paths)} images; "
                  "give a folder", file=sys.stderr)
            return 2
        processed, failed = run_images(demo, paths, args.output, logger)
        failures += failed
        summary = f"{processed} of {len(paths)} images processed, {failures} problem(s)"
        print(f"demo.py: {summary}", file=sys.stderr)
    elif args.video_input:
        failures += run_video(demo, args.video_input, args.output)
    else:
        cam = cv2.VideoCapture(0)
        for frame in demo.run_on_video(cam):
            if _show(frame, 1) == 27:
                break
        cam.release()
        cv2.destroyAllWindows()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
