"""Config loading with readable errors: :func:`load_config` and :class:`KNetConfigError`.

``get_cfg`` + ``add_knet_config`` + ``merge_from_file`` + ``merge_from_list``; an unknown or mistyped key
raises :class:`KNetConfigError` naming the key, where it came from (the yaml file or the command line) and the
closest existing keys. Used by ``train_net.py``, ``demo/demo.py`` and every tool that reads a config.
"""
import difflib
import os
from typing import Iterable, List, Optional

from detectron2.config import CfgNode, get_cfg

from ..config import add_knet_config

__all__ = ["KNetConfigError", "load_config"]


class KNetConfigError(ValueError):
    """A config file or a command-line override is wrong (unknown key, bad value, missing file)."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _bad_key(message: str) -> Optional[str]:
    """The dotted key named in a yacs error message, if any."""
    for marker in ("Non-existent config key: ", "Non-existent key: "):
        if marker in message:
            return message.split(marker, 1)[1].strip().strip("'\"").split()[0]
    return None


def _explain(cfg: CfgNode, err: Exception, source: str) -> KNetConfigError:
    message = str(err.args[0] if err.args else err)
    key = _bad_key(message)
    if key is not None:
        close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return KNetConfigError(
            f"Unknown config key '{key}' in {source}.{hint} Every valid key is defined in detectron2's "
            "defaults or in knet/config.py (add_knet_config); fix or remove that key."
        )
    return KNetConfigError(f"Invalid config in {source}: {message}")


def load_config(config_file: str = "", opts: Optional[Iterable[str]] = None) -> CfgNode:
    """``get_cfg()`` + ``add_knet_config`` + the yaml file (with ``_BASE_`` inheritance) + ``opts``
    (``["KEY", "VALUE", ...]``). Not frozen.

    Raises:
        KNetConfigError: the file is missing, or a key in the file or in ``opts`` does not exist or has a
            value of the wrong type (the message names the key and the file / the command line).
    """
    cfg = get_cfg()
    add_knet_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise KNetConfigError(f"Config file '{config_file}' does not exist (--config-file).")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise _explain(cfg, e, f"config file '{config_file}' (or a _BASE_ file it inherits)") from e
    opts = list(opts or [])
    if opts:
        if len(opts) % 2:
            raise KNetConfigError(
                f"Command-line overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
            )
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise _explain(cfg, e, "the command-line overrides (opts)") from e
    return cfg
