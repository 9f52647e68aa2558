"""Key rules for the K-Net heads of the official checkpoints.

* mmdet K-Net (ZwwWayne/K-Net ``knet/det``): FPN ``neck``, ``rpn_head`` = ``ConvKernelHead`` (with its
  ``localization_fpn`` = ``SemanticFPNWrapper``), ``roi_head.mask_head.{s}`` = ``KernelUpdateHead``
  (the official checkpoints' key names).
* mmseg K-Net (``mmseg/models/decode_heads/knet_head.py``): ``decode_head.kernel_generate_head`` (FCN / PSP /
  ASPP / UPer head), ``decode_head.kernel_update_head.{s}``, ``auxiliary_head``.

Our names (docs/architecture.md): mmcv ``ConvModule``'s ``.conv`` level disappears (a detectron2 ``Conv2d``
holds the weight) and its ``.gn``/``.bn`` become ``.norm``; mmcv ``MultiheadAttention``'s ``.attn`` level
disappears (a bare ``nn.MultiheadAttention``); mmcv ``FFN``'s ``layers.0.0``/``layers.1`` become
``linear1``/``linear2``; ``feat_transform.conv`` becomes a plain ``nn.Conv2d``. Everything else keeps its leaf
name, including ``kernel_update_conv.*`` (whose row splits are part of the algorithm).
"""

from .rules import Rename

__all__ = [
    "update_head_rules",
    "mmdet_neck_rules",
    "mmdet_rpn_head_rules",
    "mmseg_generate_head_rules",
    "mmseg_aux_head_rules",
]

_WB = r"(weight|bias)"


def update_head_rules(src, dst, group="kernel_head"):
    """``{src}{s}.<mmcv leaf>`` -> ``{dst}{s}.<our leaf>`` for the three ``KernelUpdateHead`` stages."""
    s = src.replace(".", r"\.") + r"(\d+)\."
    d = dst + r"\1."
    return [
        Rename(rf"{s}attention\.attn\.(in_proj_weight|in_proj_bias)", rf"{d}attention.\2", group),
        Rename(rf"{s}attention\.attn\.out_proj\.{_WB}", rf"{d}attention.out_proj.\2", group),
        Rename(rf"{s}attention_norm\.{_WB}", rf"{d}attention_norm.\2", group),
        Rename(
            rf"{s}kernel_update_conv\.(dynamic_layer|input_layer|input_gate|update_gate|fc_layer|"
            r"norm_in|norm_out|"
            rf"input_norm_in|input_norm_out|fc_norm)\.{_WB}",
            rf"{d}kernel_update_conv.\2.\3",
            group,
        ),
        Rename(rf"{s}feat_transform\.conv\.{_WB}", rf"{d}feat_transform.\2", group),
        Rename(rf"{s}ffn\.layers\.0\.0\.{_WB}", rf"{d}ffn.linear1.\2", group),
        Rename(rf"{s}ffn\.layers\.1\.{_WB}", rf"{d}ffn.linear2.\2", group),
        Rename(rf"{s}ffn_norm\.{_WB}", rf"{d}ffn_norm.\2", group),
        Rename(rf"{s}(cls_fcs|mask_fcs)\.(\d+)\.{_WB}", rf"{d}\2.\3.\4", group),
        Rename(rf"{s}(fc_cls|fc_mask)\.{_WB}", rf"{d}\2.\3", group),
    ]


def mmdet_neck_rules(src="neck.", dst="backbone.", group="neck"):
    """mmdet ``FPN`` (4 levels from P2, no extra convs) -> detectron2 ``FPN`` ``fpn_lateral{2..5}`` /
    ``fpn_output{2..5}``."""
    s = src.replace(".", r"\.")
    rules = []
    for i in range(4):
        rules += [
            Rename(rf"{s}lateral_convs\.{i}\.conv\.{_WB}", rf"{dst}fpn_lateral{i + 2}.\1", group),
            Rename(rf"{s}fpn_convs\.{i}\.conv\.{_WB}", rf"{dst}fpn_output{i + 2}.\1", group),
        ]
    return rules


def mmdet_rpn_head_rules(src="rpn_head.", pixel_decoder="pixel_decoder.", kernel_head="kernel_head."):
    """``ConvKernelHead``: its ``localization_fpn`` goes to our pixel decoder, the rest to the kernel head."""
    s = src.replace(".", r"\.")
    fpn = s + r"localization_fpn\."
    return [
        Rename(
            rf"{fpn}convs_all_levels\.(\d+)\.conv(\d+)\.conv\.weight",
            rf"{pixel_decoder}convs_all_levels.\1.conv\2.weight",
            "pixel_decoder",
        ),
        Rename(
            rf"{fpn}convs_all_levels\.(\d+)\.conv(\d+)\.gn\.{_WB}",
            rf"{pixel_decoder}convs_all_levels.\1.conv\2.norm.\3",
            "pixel_decoder",
        ),
        Rename(
            rf"{fpn}(conv_pred|aux_convs\.\d+)\.conv\.weight", rf"{pixel_decoder}\1.weight", "pixel_decoder"
        ),
        Rename(
            rf"{fpn}(conv_pred|aux_convs\.\d+)\.gn\.{_WB}", rf"{pixel_decoder}\1.norm.\2", "pixel_decoder"
        ),
        Rename(
            rf"{s}(loc_convs|seg_convs)\.(\d+)\.conv\.weight", rf"{kernel_head}\1.\2.weight", "kernel_head"
        ),
        Rename(rf"{s}(loc_convs|seg_convs)\.(\d+)\.gn\.{_WB}", rf"{kernel_head}\1.\2.norm.\3", "kernel_head"),
        Rename(rf"{s}init_kernels\.weight", rf"{kernel_head}init_kernels.weight", "kernel_head"),
        Rename(rf"{s}conv_seg\.{_WB}", rf"{kernel_head}conv_seg.\1", "kernel_head"),
    ]


def _conv_module_rules(src_leaf, dst_leaf, s, d, group, **kw):
    """mmcv ConvModule ``{src_leaf}.conv.weight`` / ``.bn.*`` -> detectron2 Conv2d ``{dst_leaf}.weight`` /
    ``.norm.*``. ``src_leaf``/``dst_leaf`` are regex / replacement fragments (may hold groups)."""
    return [
        Rename(rf"{s}{src_leaf}\.conv\.weight", rf"{d}{dst_leaf}.weight", group, **kw),
        Rename(
            rf"{s}{src_leaf}\.bn\.(?P<bn>weight|bias|running_mean|running_var)",
            rf"{d}{dst_leaf}.norm.\g<bn>",
            group,
            **kw,
        ),
    ]


def mmseg_generate_head_rules(
    src="decode_head.kernel_generate_head.", dst="pixel_decoder.", group="pixel_decoder"
):
    """mmseg FCN / PSP / ASPP / UPer heads -> our heads (same leaf names; ConvModule -> Conv2d with norm;
    PSP's and ASPP's ``Sequential(pool, ConvModule)`` lose the pool's index)."""
    s = src.replace(".", r"\.")
    rules = []
    for src_leaf, dst_leaf in [
        (
            r"(?P<m>convs\.\d+|conv_cat|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck|"
            r"aspp_modules\.\d+)",
            r"\g<m>",
        ),
        (r"(?P<m>psp_modules\.\d+)\.1", r"\g<m>"),
        (r"image_pool\.1", "image_pool"),
    ]:
        rules += _conv_module_rules(src_leaf, dst_leaf, s, dst, group)
    rules.append(Rename(rf"{s}conv_seg\.{_WB}", rf"{dst}conv_seg.\1", group))
    return rules


def mmseg_aux_head_rules(src="auxiliary_head.", dst="auxiliary_head.", group="auxiliary_head"):
    """mmseg auxiliary ``FCNHead`` -> ``KNetSemantic.auxiliary_head``; optional (inference-only models may be
    built without it)."""
    s = src.replace(".", r"\.")
    reason = "auxiliary FCN head (training only; the target model has none)"
    rules = _conv_module_rules(
        r"(?P<m>convs\.\d+)", r"\g<m>", s, dst, group, optional=True, optional_reason=reason
    )
    rules.append(
        Rename(rf"{s}conv_seg\.{_WB}", rf"{dst}conv_seg.\1", group, optional=True, optional_reason=reason)
    )
    return rules
