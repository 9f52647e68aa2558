"""Key rules for ResNet backbones: torchvision / mmdet ``ResNet`` (7x7 stem, stride in the 3x3 conv, optional
DCN on the 3x3 conv) and mmseg ``ResNetV1c`` (deep 3x3 stem) to detectron2's ``ResNet`` names.

torchvision (``torchvision/models/resnet.py``) and mmdet (``mmdet/models/backbones/resnet.py``, pytorch style)
share one naming: ``conv1``/``bn1`` stem, ``layer{1..4}.{b}.conv{1,2,3}``/``bn{1,2,3}``, ``downsample.{0,1}``.
detectron2 (``detectron2/modeling/backbone/resnet.py``) names the stem ``stem.conv1`` with ``.norm``, the
stages ``res{2..5}``, the projection ``shortcut``, and a deformable block's offset conv ``conv2_offset``
(``DeformBottleneckBlock``; mmcv's ``DeformConv2dPack`` calls it ``conv2.conv_offset``). The 3x3 stride
placement (torchvision style) is detectron2's ``MODEL.RESNETS.STRIDE_IN_1X1 = False``. mmseg's deep stem
``stem.{0,1,3,4,6,7}`` (conv, BN, ReLU, conv, BN, ReLU, conv, BN, ReLU) becomes detectron2's ``DeepLabStem``
``stem.conv{1,2,3}``.
"""

from .rules import Drop, Rename

__all__ = ["resnet_rules", "NUM_BATCHES_TRACKED"]

# BatchNorm's step counter: not a weight, not used in eval mode nor by FrozenBatchNorm2d.
NUM_BATCHES_TRACKED = Drop(r".*\.num_batches_tracked", "BatchNorm step counter (num_batches_tracked)")

_BN = r"(weight|bias|running_mean|running_var)"


def resnet_rules(src_prefix, dst_prefix, deep_stem=False, group="backbone"):
    """Rules mapping ``{src_prefix}conv1 / layer{L}...`` to ``{dst_prefix}stem.conv1 / res{L+1}...``.

    Args:
        src_prefix: prefix of the source keys, e.g. ``"backbone."`` (mmdet/mmseg) or ``""`` (torchvision).
        dst_prefix: prefix of our keys, ``"backbone.bottom_up."`` (ResNet-FPN) or ``"backbone."`` (semantic).
        deep_stem: the mmseg ResNetV1c stem (``stem.{0,1,3,4,6,7}``) instead of ``conv1``/``bn1``.
    """
    s = src_prefix.replace(".", r"\.")
    d = dst_prefix
    rules = []
    if deep_stem:
        for i, (conv, bn) in enumerate([(0, 1), (3, 4), (6, 7)], start=1):
            rules += [
                Rename(rf"{s}stem\.{conv}\.weight", rf"{d}stem.conv{i}.weight", group),
                Rename(rf"{s}stem\.{bn}\.{_BN}", rf"{d}stem.conv{i}.norm.\1", group),
            ]
    else:
        rules += [
            Rename(rf"{s}conv1\.weight", rf"{d}stem.conv1.weight", group),
            Rename(rf"{s}bn1\.{_BN}", rf"{d}stem.conv1.norm.\1", group),
        ]

    for L in range(1, 5):
        rules += [
            Rename(rf"{s}layer{L}\.(\d+)\.conv([123])\.weight", rf"{d}res{L + 1}.\1.conv\2.weight", group),
            Rename(rf"{s}layer{L}\.(\d+)\.bn([123])\.{_BN}", rf"{d}res{L + 1}.\1.conv\2.norm.\3", group),
            Rename(
                rf"{s}layer{L}\.(\d+)\.downsample\.0\.weight", rf"{d}res{L + 1}.\1.shortcut.weight", group
            ),
            Rename(
                rf"{s}layer{L}\.(\d+)\.downsample\.1\.{_BN}", rf"{d}res{L + 1}.\1.shortcut.norm.\2", group
            ),
            # DCN (mmcv DeformConv2dPack): the offset-predicting conv; conv2.weight stays conv2.weight.
            Rename(
                rf"{s}layer{L}\.(\d+)\.conv2\.conv_offset\.(weight|bias)",
                rf"{d}res{L + 1}.\1.conv2_offset.\2",
                group,
            ),
        ]
    return rules
