"""Build-time errors of the two meta-architectures: a component of the other one, or a config value of an
earlier release, fails before anything is built, naming the key and the value to use."""
import pytest
from detectron2.modeling import build_model
from support.models import tiny_knet_cfg
from support.semantic import tiny_semantic_cfg

from knet.modeling.registry import RENAMED_COMPONENTS


def _fails(cfg, *fragments):
    with pytest.raises(ValueError) as info:
        build_model(cfg)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_fcn_head_with_knet_names_knet_semantic():
    cfg = tiny_knet_cfg()
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = "KNetFCNHead"
    _fails(cfg, "MODEL.KNET.PIXEL_DECODER.NAME", "'KNetFCNHead'", "'KNetSemantic'",
           "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME")


def test_semantic_kernel_head_with_knet_names_knet_semantic():
    cfg = tiny_knet_cfg()
    cfg.MODEL.KNET.KERNEL_HEAD.NAME = "KNetSemanticKernelHead"
    _fails(cfg, "MODEL.KNET.KERNEL_HEAD.NAME", "'KNetSemanticKernelHead'", "'KNetSemantic'")


@pytest.mark.parametrize("head", ["KNetFCNHead", "KNetUPerHead"])
def test_semantic_config_with_meta_architecture_knet_names_knet_semantic(head):
    cfg = tiny_semantic_cfg(head)
    cfg.MODEL.META_ARCHITECTURE = "KNet"
    _fails(cfg, "MODEL.KNET.KERNEL_HEAD.NAME", "MODEL.META_ARCHITECTURE 'KNetSemantic'")


def test_semantic_config_of_an_earlier_release_names_knet_semantic():
    """META_ARCHITECTURE "KNet", the decode head in PIXEL_DECODER.NAME: the layout before KNetSemantic."""
    cfg = tiny_semantic_cfg()
    cfg.MODEL.META_ARCHITECTURE = "KNet"
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = "KNetUPerHead"
    cfg.MODEL.KNET.KERNEL_HEAD.NAME = "KNetKernelHead"
    _fails(cfg, "MODEL.KNET.PIXEL_DECODER.NAME", "'KNetSemantic'", "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME")


def test_knet_semantic_with_the_decode_head_in_pixel_decoder_name_names_the_new_key():
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = "KNetPSPHead"
    _fails(cfg, "MODEL.KNET.PIXEL_DECODER.NAME", "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME 'KNetPSPHead'")


def test_knet_semantic_with_the_instance_kernel_head_names_the_semantic_one():
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.KERNEL_HEAD.NAME = "KNetKernelHead"
    _fails(cfg, "MODEL.KNET.KERNEL_HEAD.NAME", "'KNetKernelHead'", "KNetSemanticKernelHead", "'KNet'")


def test_knet_semantic_with_the_localization_fpn_as_decode_head_names_knet():
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME = "KNetLocalizationFPN"
    _fails(cfg, "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME", "'KNetLocalizationFPN'", "'KNet'")


def test_renamed_localization_fpn_names_the_new_value():
    assert RENAMED_COMPONENTS == {"KNetSemanticFPN": "KNetLocalizationFPN"}
    cfg = tiny_knet_cfg()
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = "KNetSemanticFPN"
    _fails(cfg, "MODEL.KNET.PIXEL_DECODER.NAME", "'KNetSemanticFPN' was renamed", "'KNetLocalizationFPN'")


def test_unknown_names_list_the_choices():
    cfg = tiny_knet_cfg()
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = "KNetNoSuchDecoder"
    _fails(cfg, "MODEL.KNET.PIXEL_DECODER.NAME", "'KNetNoSuchDecoder' is not registered",
           "KNetLocalizationFPN")
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME = "KNetNoSuchHead"
    _fails(cfg, "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME", "not registered", "KNetASPPHead", "KNetUPerHead")
