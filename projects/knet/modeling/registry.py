"""K-Net's own registries and their builders.

Each meta-architecture has registries whose members share one interface:

* ``KNet`` (instance / panoptic): ``KNET_PIXEL_DECODER_REGISTRY`` (backbone features -> ``{"loc_feat",
  "sem_feat"}``, ``MODEL.KNET.PIXEL_DECODER.NAME``) and ``KNET_KERNEL_HEAD_REGISTRY`` (those features ->
  initial kernels and update stages, ``MODEL.KNET.KERNEL_HEAD.NAME``).
* ``KNetSemantic`` (ADE20K): ``KNET_DECODE_HEAD_REGISTRY`` (backbone features -> ``{"feat", "init_logits",
  "init_kernels"}``, ``MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME``) and ``KNET_SEMANTIC_KERNEL_HEAD_REGISTRY`` (the
  class kernels' update stages, ``MODEL.KNET.KERNEL_HEAD.NAME``).

A name from the other meta-architecture's registry fails at build time with an error that names the key and
the value to use. Registered names carry a ``KNet`` prefix so they never clash with other detectron2 add-ons
imported in the same process (fvcore registries reject duplicates).
"""
from detectron2.utils.registry import Registry

__all__ = [
    "KNET_PIXEL_DECODER_REGISTRY",
    "KNET_KERNEL_HEAD_REGISTRY",
    "KNET_DECODE_HEAD_REGISTRY",
    "KNET_SEMANTIC_KERNEL_HEAD_REGISTRY",
    "RENAMED_COMPONENTS",
    "build_pixel_decoder",
    "build_kernel_head",
    "build_decode_head",
    "build_semantic_kernel_head",
    "check_knet_components",
    "check_knet_semantic_components",
]

KNET_PIXEL_DECODER_REGISTRY = Registry("KNET_PIXEL_DECODER")
KNET_PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders of ``KNet`` (instance / panoptic): backbone features -> ``{"loc_feat", "sem_feat"}``, the
localisation and segmentation features the kernels convolve (e.g. ``KNetLocalizationFPN``).
Built by ``build_pixel_decoder(cfg, input_shape)`` from ``MODEL.KNET.PIXEL_DECODER.NAME``.
"""

KNET_KERNEL_HEAD_REGISTRY = Registry("KNET_KERNEL_HEAD")
KNET_KERNEL_HEAD_REGISTRY.__doc__ = """
Kernel heads of ``KNet`` (instance / panoptic): initial kernels plus the iterative kernel update stages, on
the pixel decoder's ``{"loc_feat", "sem_feat"}``. Built by ``build_kernel_head(cfg)`` from
``MODEL.KNET.KERNEL_HEAD.NAME``.
"""

KNET_DECODE_HEAD_REGISTRY = Registry("KNET_DECODE_HEAD")
KNET_DECODE_HEAD_REGISTRY.__doc__ = """
Kernel-generating decode heads of ``KNetSemantic`` (FCN / PSP / ASPP / UPerNet): backbone features ->
``{"feat", "init_logits", "init_kernels"}``. Built by ``build_decode_head(cfg, input_shape)`` from
``MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME``.
"""

KNET_SEMANTIC_KERNEL_HEAD_REGISTRY = Registry("KNET_SEMANTIC_KERNEL_HEAD")
KNET_SEMANTIC_KERNEL_HEAD_REGISTRY.__doc__ = """
Kernel heads of ``KNetSemantic``: the update stages of the decode head's class kernels
(``feat, init_kernels, init_logits`` -> logits). Built by ``build_semantic_kernel_head(cfg)`` from
``MODEL.KNET.KERNEL_HEAD.NAME``.
"""

# config values of earlier releases -> their replacement (a clear error instead of a KeyError)
RENAMED_COMPONENTS = {"KNetSemanticFPN": "KNetLocalizationFPN"}

_SEMANTIC_FIX = "semantic models use MODEL.META_ARCHITECTURE 'KNetSemantic'"
_KNET_FIX = "instance / panoptic models use MODEL.META_ARCHITECTURE 'KNet'"


def _names(registry):
    return sorted(name for name, _ in registry)


def _lookup(registry, key: str, name: str, wrong_registry, wrong_hint: str):
    """The class registered as ``name``, or a ValueError naming ``key`` and the value to use."""
    if name in RENAMED_COMPONENTS:
        raise ValueError(f"{key} = {name!r} was renamed: set {key} to {RENAMED_COMPONENTS[name]!r}")
    if name in _names(wrong_registry):
        raise ValueError(f"{key} = {name!r}: {wrong_hint} (this meta-architecture takes {_names(registry)})")
    if name not in _names(registry):
        raise ValueError(f"{key} = {name!r} is not registered; choose one of {_names(registry)}")
    return registry.get(name)


def _pixel_decoder_class(cfg):
    name = cfg.MODEL.KNET.PIXEL_DECODER.NAME
    hint = f"{name} is a semantic decode head; {_SEMANTIC_FIX} with MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME"
    key = "MODEL.KNET.PIXEL_DECODER.NAME"
    return _lookup(KNET_PIXEL_DECODER_REGISTRY, key, name, KNET_DECODE_HEAD_REGISTRY, hint)


def _kernel_head_class(cfg):
    name = cfg.MODEL.KNET.KERNEL_HEAD.NAME
    hint = f"{name} is the kernel head of semantic models; {_SEMANTIC_FIX}"
    key = "MODEL.KNET.KERNEL_HEAD.NAME"
    return _lookup(KNET_KERNEL_HEAD_REGISTRY, key, name, KNET_SEMANTIC_KERNEL_HEAD_REGISTRY, hint)


def _decode_head_class(cfg):
    name = cfg.MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME
    hint = f"{name} is the pixel decoder of instance / panoptic models; {_KNET_FIX}"
    key = "MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME"
    return _lookup(KNET_DECODE_HEAD_REGISTRY, key, name, KNET_PIXEL_DECODER_REGISTRY, hint)


def _semantic_kernel_head_class(cfg):
    name = cfg.MODEL.KNET.KERNEL_HEAD.NAME
    hint = (
        f"{name} is the kernel head of instance / panoptic models; set MODEL.KNET.KERNEL_HEAD.NAME to one of "
        f"{_names(KNET_SEMANTIC_KERNEL_HEAD_REGISTRY)} ({_KNET_FIX})"
    )
    key = "MODEL.KNET.KERNEL_HEAD.NAME"
    return _lookup(KNET_SEMANTIC_KERNEL_HEAD_REGISTRY, key, name, KNET_KERNEL_HEAD_REGISTRY, hint)


def build_pixel_decoder(cfg, input_shape):
    """``KNet``'s pixel decoder named by ``MODEL.KNET.PIXEL_DECODER.NAME``."""
    return _pixel_decoder_class(cfg)(cfg, input_shape)


def build_kernel_head(cfg):
    """``KNet``'s kernel head named by ``MODEL.KNET.KERNEL_HEAD.NAME``."""
    return _kernel_head_class(cfg)(cfg)


def build_decode_head(cfg, input_shape):
    """``KNetSemantic``'s decode head named by ``MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME``."""
    return _decode_head_class(cfg)(cfg, input_shape)


def build_semantic_kernel_head(cfg):
    """``KNetSemantic``'s kernel head named by ``MODEL.KNET.KERNEL_HEAD.NAME``."""
    return _semantic_kernel_head_class(cfg)(cfg)


def check_knet_components(cfg) -> None:
    """Before anything is built: ``KNet``'s component names belong to its registries (else a ValueError naming
    the key and the value to use, e.g. a semantic config run with ``MODEL.META_ARCHITECTURE 'KNet'``)."""
    _kernel_head_class(cfg)
    _pixel_decoder_class(cfg)


def check_knet_semantic_components(cfg) -> None:
    """Before anything is built: ``KNetSemantic``'s component names belong to its registries, and
    ``MODEL.KNET.PIXEL_DECODER.NAME`` (which it does not read) names no semantic decode head, as configs of
    earlier releases did; else a ValueError naming the key and the value to use."""
    name = cfg.MODEL.KNET.PIXEL_DECODER.NAME
    if name in _names(KNET_DECODE_HEAD_REGISTRY):
        raise ValueError(
            f"MODEL.KNET.PIXEL_DECODER.NAME = {name!r}: semantic decode heads are now named by "
            f"MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME; set MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME {name!r} and "
            "leave MODEL.KNET.PIXEL_DECODER.NAME at its default"
        )
    _semantic_kernel_head_class(cfg)
    _decode_head_class(cfg)
