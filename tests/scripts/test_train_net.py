"""``train_net.py``'s command line: a wrong config key fails before anything runs (exit status 2, naming the
key and the closest valid one); ``--eval-only`` loads MODEL.WEIGHTS, evaluates and verifies
TEST.EXPECTED_RESULTS."""
import os

import pytest
from detectron2.engine import default_argument_parser
from support.models import register_tiny_synthetic
from support.scripts import REPO

from knet.checkpoint.checkpointer import KNetCheckpointer
from knet.engine import Trainer

CONFIG = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syn")
    return register_tiny_synthetic(folder, "knet_test_train_net", num_train=2, num_val=2)


def test_train_net_wrong_key_fails_before_anything_runs(tmp_path, capsys, train_net):
    out = tmp_path / "never_created"
    with pytest.raises(SystemExit) as e:
        train_net.invoke_main(["--config-file", "", "OUTPUT_DIR", str(out), "MODEL.KNET.HIDEN_DIM", "8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL.KNET.HIDEN_DIM" in err and "MODEL.KNET.HIDDEN_DIM" in err
    assert not out.exists()


def test_eval_only_loads_weights_and_verifies_results(tmp_path, train_net, tiny_dataset, monkeypatch):
    """``--eval-only`` loads MODEL.WEIGHTS with KNetCheckpointer, evaluates, and checks TEST.EXPECTED_RESULTS
    (exit status 1 when they are not met)."""
    from knet.engine import load_config

    cfg = load_config(CONFIG)
    model = Trainer.build_model(cfg)
    KNetCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    loaded = []
    original_load = KNetCheckpointer.load
    monkeypatch.setattr(KNetCheckpointer, "load",
                        lambda self, path, *a, **k: loaded.append(path) or original_load(self, path, *a, **k))

    def eval_only(expected):
        argv = ["--config-file", CONFIG, "--eval-only",
                "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(tmp_path / "weights.pth"),
                "DATASETS.TEST", f"('{tiny_dataset}_panoptic_val',)", "TEST.EXPECTED_RESULTS", expected,
                "MODEL.KNET.TEST.INSTANCE_ON", "False", "MODEL.KNET.TEST.SEMANTIC_ON", "False"]
        return train_net.main(default_argument_parser().parse_args(argv))

    res = eval_only("[['panoptic_seg', 'PQ', 50.0, 50.0]]")  # any PQ in [0, 100] passes
    assert loaded == [str(tmp_path / "weights.pth")]
    assert set(res) == {"panoptic_seg"}
    with pytest.raises(SystemExit) as e:
        eval_only("[['panoptic_seg', 'PQ', 1000.0, 1.0]]")
    assert e.value.code == 1
