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
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_semantic_config(cfg)  # last: it adds keys to MODEL.KNET.TEST and TEST.AUG
    _add_export_config(cfg)
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
    k.CONV_KERNEL_SIZE = 1  # K of the dynamic K x K kernels (1 in every released config)
    k.ZERO_INIT_RESIDUAL = False  # from-scratch ResNet: each residual block's last norm weight starts at 0
    # the backbone in channels-last memory format, its features handed on contiguous (knet.modeling.meta_arch
    # .common): on CPU a float32 ResNet-10 training step 0.95x; the same model, other float rounding
    k.BACKBONE_CHANNELS_LAST = False  # run the backbone's weights and activations in channels-last layout
    # a process setting (knet.engine.allocator), applied by train_net.py and the demo on CPU; without it a
    # R-50 pass at 800x1216 takes 1.34x the time
    k.CPU_RETAIN_FREED_MEMORY = True  # CPU: glibc keeps freed memory for reuse, not paging in each tensor

    # the feature decoder: KNet's pixel decoder (NAME) or KNetSemantic's decode head
    # (SEMANTIC.DECODE_HEAD_NAME); IN_FEATURES, CONV_DIM and NORM apply to both
    k.PIXEL_DECODER = CN()
    k.PIXEL_DECODER.NAME = "KNetLocalizationFPN"  # KNet: registered in KNET_PIXEL_DECODER_REGISTRY
    k.PIXEL_DECODER.IN_FEATURES = ["p2", "p3", "p4", "p5"]  # backbone features the decoder reads
    k.PIXEL_DECODER.OUTPUT_STRIDE = 8  # feature stride: 8 (official) or 4 (with MASK_UPSAMPLE_STRIDE 1)
    k.PIXEL_DECODER.CONV_DIM = 256  # channels of the decoder towers
    k.PIXEL_DECODER.NORM = "GN"  # norm of the decoder convs (GN with 32 groups in the official model)

    k.KERNEL_HEAD = CN()
    # KNet: KNET_KERNEL_HEAD_REGISTRY; KNetSemantic: KNET_SEMANTIC_KERNEL_HEAD_REGISTRY
    k.KERNEL_HEAD.NAME = "KNetKernelHead"  # "KNetSemanticKernelHead" for KNetSemantic
    k.KERNEL_HEAD.NUM_LOC_CONVS = 1  # 1x1 conv-GN-ReLU layers on the localization feature
    k.KERNEL_HEAD.NUM_SEG_CONVS = 1  # 1x1 conv-GN-ReLU layers on the semantic feature
    k.KERNEL_HEAD.NORM = "GN"  # norm of those convs (GroupNorm(32) officially)

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
    """Keys of the semantic models (``KNetSemantic``: kernel-generating FCN/PSP/ASPP/UPerNet heads, deep-stem
    ResNet)."""
    k = cfg.MODEL.KNET
    k.SEMANTIC = CN()
    k.SEMANTIC.DECODE_HEAD_NAME = "KNetUPerHead"  # KNetSemantic: registered in KNET_DECODE_HEAD_REGISTRY
    k.SEMANTIC.AUX_LOSS_WEIGHT = 0.4  # weight of the auxiliary FCN head's cross-entropy (0 disables the head)
    k.SEMANTIC.CE_WEIGHT = 1.0  # cross-entropy weight of each of the 4 logit maps
    k.SEMANTIC.DROPOUT = 0.1  # Dropout2d ratio before conv_seg (generating and auxiliary heads)
    k.SEMANTIC.FCN_NUM_CONVS = 2  # KNetFCNHead: number of 3x3 convs
    k.SEMANTIC.FCN_KERNEL_SIZE = 3  # KNetFCNHead: kernel size of those convs
    k.SEMANTIC.FCN_CONCAT_INPUT = True  # KNetFCNHead: conv_cat over [input, convs(input)]
    k.SEMANTIC.POOL_SCALES = [1, 2, 3, 6]  # KNetPSPHead / KNetUPerHead: pyramid pooling bins
    k.SEMANTIC.ASPP_DILATIONS = [1, 12, 24, 36]  # KNetASPPHead: dilations of the ASPP branches
    k.SEMANTIC.AUX_IN_FEATURE = "res4"  # backbone feature read by the auxiliary FCN head
    k.SEMANTIC.AUX_CHANNELS = 256  # channels of the auxiliary FCN head
    k.SEMANTIC.AUX_NUM_CONVS = 1  # convs of the auxiliary FCN head (no concat_input)

    k.RESNET_V1C = CN()
    k.RESNET_V1C.OUT_STRIDE = 8  # 8: dilated (strides 1,2,1,1, dilations 1,1,2,4); 32: undilated (UPerNet)
    k.RESNET_V1C.CONTRACT_DILATION = True  # first block of a dilated stage uses half the dilation (mmseg)

    k.SWIN = CN()  # build_knet_swin_backbone: dense-prediction Swin, outputs MODEL.RESNETS.OUT_FEATURES
    k.SWIN.EMBED_DIM = 96  # channels of res2 (96 Swin-T, 192 Swin-L); doubled at every stage
    k.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage ([2, 2, 18, 2] for Swin-L)
    k.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage ([6, 12, 24, 48] for Swin-L)
    k.SWIN.WINDOW_SIZE = 7  # attention window (tokens per side)
    k.SWIN.MLP_RATIO = 4.0  # hidden width of the block MLPs, relative to the stage width
    k.SWIN.QKV_BIAS = True  # bias of the qkv projection
    k.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth, linear over all blocks (0.4 for the Swin-L 640 model)
    k.SWIN.PATCH_NORM = True  # LayerNorm after the 4x4 patch embedding

    t = k.TEST
    t.SEMANTIC_MODE = "whole"  # semantic inference: "whole" image or "slide" (sliding window)
    t.SLIDE_CROP_SIZE = [512, 512]  # sliding window (h, w); images smaller than it are run whole
    t.SLIDE_STRIDE = [341, 341]  # sliding window stride (h, w); overlaps are averaged (logits)
    # KNetSemanticTTA scales (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST) by each ratio; TEST.AUG.FLIP: flips
    cfg.TEST.AUG.RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # semantic TTA scale ratios (mmseg ms+flip)


def _add_data_config(cfg):
    """Keys of the data pipeline (mappers, augmentation)."""
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic"  # registered in KNET_MAPPER_REGISTRY
    cfg.INPUT.SIZE_DIVISIBILITY = 32  # images (and targets) are padded to a multiple of this
    cfg.INPUT.IMAGE_SIZE = 1024  # large-scale-jitter mappers: output crop size
    cfg.INPUT.MIN_SCALE = 0.1  # large-scale-jitter mappers: smallest scale
    cfg.INPUT.MAX_SCALE = 2.0  # large-scale-jitter mappers: largest scale
    cfg.INPUT.COPY_PASTE_PROB = 0.0  # panoptic mappers: chance a training image gets another's things; 0: off
    # knet_semantic mapper: the mmseg ADE20K recipe (resize by a random ratio, crop, flip, photometric, pad)
    cfg.INPUT.SEMANTIC = CN()
    cfg.INPUT.SEMANTIC.SCALE = (2048, 512)  # (long, short) edge limits of the resize, before the ratio
    cfg.INPUT.SEMANTIC.RATIO_RANGE = (0.5, 2.0)  # SCALE is multiplied by r ~ U[low, high] (keeps the aspect)
    cfg.INPUT.SEMANTIC.CROP_SIZE = (512, 512)  # (h, w) random crop; smaller images are padded up to it
    cfg.INPUT.SEMANTIC.CAT_MAX_RATIO = 0.75  # a crop may be covered by one class at most this much (1.0: off)
    cfg.INPUT.SEMANTIC.PHOTOMETRIC = True  # mmseg PhotoMetricDistortion (brightness/contrast/saturation/hue)
    cfg.DATALOADER.MAX_SKIPPED_FRACTION = 0.01  # stop training when more of the train set has bad files
    cfg.DATALOADER.DECODED_CACHE_MB = 0  # training: MB of decoded files (and one-size resizes) kept; 0: off


def _add_solver_config(cfg):
    """Keys of the optimizer."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" (official) or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.25  # lr factor of the backbone trunk (bottom_up of an FPN backbone)


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
    # panoptic post-processing: "exact" = the official full-resolution result, pixel for pixel (computed at
    # border pixels only); opt-in approximations deciding on the stride-4 cells: "stride4" (bool upsampling,
    # 4-pixel border steps) and "soft" (bilinear upsampling of the kept segments' maps)
    t.PANOPTIC_MODE = "exact"  # panoptic: "exact" (default), "stride4" or "soft" (see above)
    t.SOFT_BOUNDARIES = False  # panoptic, legacy: True selects PANOPTIC_MODE "soft"
    t.FUSE_BN = True  # inference (eval mode): fold the frozen BatchNorms into the preceding convs
    t.CHANNELS_LAST = True  # inference: the folded convs run in channels-last memory format (needs FUSE_BN)
    t.FUSE_EVAL_BN = False  # with FUSE_BN also fold trainable BatchNorm in eval mode (not mmseg's arithmetic)


def _add_export_config(cfg):
    """Keys of the onnxruntime-backed meta-architecture ``KNetONNX`` (knet.export; tools/export_model.py)."""
    o = cfg.MODEL.KNET.ONNX = CN()
    o.MODEL = ""  # KNetONNX: the .onnx file written by tools/export_model.py (MODEL.WEIGHTS must be "")
    o.PROVIDERS = ["CPUExecutionProvider"]  # KNetONNX: onnxruntime execution providers, preferred first
    o.NUM_THREADS = 0  # KNetONNX: onnxruntime intra-op threads (0: onnxruntime's default)
