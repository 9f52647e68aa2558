"""tools/prepare_ade20k_sem_seg.py on a tiny fake ADEChallengeData2016."""
import numpy as np
from PIL import Image
from support.scripts import load_script


def test_prepare_ade20k_script(tmp_path):
    ann = tmp_path / "ADEChallengeData2016" / "annotations"
    for split in ("training", "validation"):
        (ann / split).mkdir(parents=True)
        Image.fromarray(np.array([[0, 3], [150, 1]], dtype=np.uint8)).save(ann / split / "a.png")
    mod = load_script("tools/prepare_ade20k_sem_seg.py")
    assert mod.main(["--root", str(tmp_path)]) == 0
    converted = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "a.png"
    out = np.asarray(Image.open(converted))
    assert out.tolist() == [[255, 2], [149, 0]]
    assert mod.main(["--root", str(tmp_path / "missing")]) == 1
