"""``load_config``: an unknown key, a missing file or an odd list of overrides fails naming the key and where
it came from (file or command line), with the closest valid keys."""
import pytest

from knet.engine import KNetConfigError, load_config


def test_wrong_config_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  KNET:\n    NUM_PROPOSAL: 10\n")
    with pytest.raises(KNetConfigError) as e:
        load_config(str(bad))
    msg = str(e.value)
    assert "MODEL.KNET.NUM_PROPOSAL" in msg and str(bad) in msg and "MODEL.KNET.NUM_PROPOSALS" in msg

    with pytest.raises(KNetConfigError) as e:
        load_config("", ["SOLVER.BASE_LRR", "0.1"])
    assert "SOLVER.BASE_LRR" in str(e.value) and "command-line" in str(e.value)
    with pytest.raises(KNetConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(KNetConfigError, match="odd number"):
        load_config("", ["SOLVER.BASE_LR"])
    cfg = load_config("", ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5
