"""All K-Net config keys, in one place (call :func:`add_knet_config` after ``get_cfg()``).

Defaults follow the official recipe (ZwwWayne/K-Net, ``configs/det/_base_/models/knet_s3_r50_fpn*.py``;
mmsegmentation ``configs/knet``). Every key carries a one-line comment.
"""
from detectron2.config import CfgNode as CN


def add_knet_config(cfg):
    """Add the K-Net keys to a detectron2 config (idempotent)."""
    if hasattr(cfg.MODEL, "KNET"):
        return cfg
    _add_model_config(cfg)
    _add_semantic_config(cfg)
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    return cfg


def _add_model_config(cfg):
    """Keys of the K-Net model shared by all tasks (kernel head, update heads, losses, matcher)."""
    cfg.MODEL.KNET = CN()
    k = cfg.MODEL.KNET
    k.NUM_CLASSES = 133  # all classes the kernels predict (things + stuff); 80 for COCO instance
    k.NUM_THING_CLASSES = 80  # the first NUM_THING_CLASSES contiguous ids are things
    k.NUM_PROPOSALS = 100  # number of learned thing ("instance") kernels
    k.NUM_STAGES = 3  # kernel update stages, each with its own weights
    k.HIDDEN_DIM = 256  # kernel / feature channels C of the update heads
    k.UPDATOR_DIM = 256  # channels of the KernelUpdator (256 even in 512-wide semantic heads)
    k.NUM_HEADS = 8  # heads of the kernel self-attention
    k.FFN_DIM = 2048  # hidden width of the FFN after the kernel attention
    k.NUM_CLS_FCS = 1  # Linear-LN-ReLU blocks before the classifier
    k.NUM_MASK_FCS = 1  # Linear-LN-ReLU blocks before the dynamic mask weights
    k.DROPOUT = 0.0  # dropout in attention and FFN
    k.HARD_MASK_THRESHOLD = 0.5  # sigmoid threshold of the masks used for group feature assembling
    k.MASK_UPSAMPLE_STRIDE = 2  # stride-8 masks are upsampled by this factor for matching, losses, output

    k.PIXEL_DECODER = CN()
    k.PIXEL_DECODER.NAME = "KNetSemanticFPN"  # registered in KNET_PIXEL_DECODER_REGISTRY
    k.PIXEL_DECODER.IN_FEATURES = ["p2", "p3", "p4", "p5"]  # backbone features the decoder reads
    k.PIXEL_DECODER.CONV_DIM = 256  # channels of the decoder towers
    k.PIXEL_DECODER.NORM = "GN"  # norm of the decoder convs (GN with 32 groups in the official model)

    k.KERNEL_HEAD = CN()
    k.KERNEL_HEAD.NAME = "KNetKernelHead"  # registered in KNET_KERNEL_HEAD_REGISTRY

    k.LOSS = CN()
    k.LOSS.CLS_WEIGHT = 2.0  # sigmoid focal classification loss weight (per stage)
    k.LOSS.MASK_WEIGHT = 1.0  # mask BCE weight
    k.LOSS.DICE_WEIGHT = 4.0  # squared-denominator dice weight
    k.LOSS.RANK_WEIGHT = 0.1  # panoptic rank loss weight (0 disables it)
    k.LOSS.SEG_WEIGHT = 1.0  # focal loss of the kernel head's semantic branch
    k.LOSS.FOCAL_ALPHA = 0.25  # focal loss alpha
    k.LOSS.FOCAL_GAMMA = 2.0  # focal loss gamma

    k.MATCHER = CN()
    k.MATCHER.COST_CLASS = 2.0  # focal class cost weight of the Hungarian matcher
    k.MATCHER.COST_MASK = 1.0  # mask (pixel-wise BCE-like) cost weight
    k.MATCHER.COST_DICE = 4.0  # squared-denominator dice cost weight


def _add_semantic_config(cfg):
    """Keys of the semantic mode (kernel-generating FCN/PSP/ASPP/UPerNet heads, deep-stem ResNet)."""
    k = cfg.MODEL.KNET
    k.SEMANTIC = CN()
    k.SEMANTIC.AUX_LOSS_WEIGHT = 0.4  # weight of the auxiliary FCN head's cross-entropy (0 disables the head)
    k.SEMANTIC.CE_WEIGHT = 1.0  # cross-entropy weight of each of the 4 logit maps


def _add_data_config(cfg):
    """Keys of the data pipeline (mappers, augmentation)."""
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic"  # registered in KNET_MAPPER_REGISTRY
    cfg.INPUT.SIZE_DIVISIBILITY = 32  # images (and targets) are padded to a multiple of this
    cfg.INPUT.IMAGE_SIZE = 1024  # large-scale-jitter mappers: output crop size
    cfg.INPUT.MIN_SCALE = 0.1  # large-scale-jitter mappers: smallest scale
    cfg.INPUT.MAX_SCALE = 2.0  # large-scale-jitter mappers: largest scale


def _add_solver_config(cfg):
    """Keys of the optimizer."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" (official) or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.25  # learning-rate factor of every backbone parameter


def _add_test_config(cfg):
    """Keys of inference and post-processing."""
    t = cfg.MODEL.KNET.TEST = CN()
    t.PANOPTIC_ON = True  # output "panoptic_seg"
    t.INSTANCE_ON = False  # output "instances"
    t.SEMANTIC_ON = False  # output "sem_seg"
    t.MAX_PER_IMAGE = 100  # instance output: top (kernel, class) pairs kept per image
    t.MASK_THRESHOLD = 0.5  # probability above which a mask pixel is foreground
    t.INSTANCE_SCORE_THRESHOLD = 0.0  # instance output: drop detections scoring below this
    t.PANOPTIC_THING_SCORE_THRESHOLD = 0.3  # panoptic: things need at least this class score
    t.OVERLAP_THRESHOLD = 0.6  # panoptic: keep a segment if this fraction of its mask survives the argmax
