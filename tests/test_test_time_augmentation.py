"""Multi-scale + flip test-time augmentation of semantic K-Net (``KNetSemanticTTA``, mmseg ``aug_test``)."""
import numpy as np
import torch
from PIL import Image
from support.semantic import NUM_CLASSES, image, tiny_semantic_knet

from knet.test_time_augmentation import KNetSemanticTTA


def test_tta_equals_average_of_individual_scaled_and_flipped_predictions():
    model = tiny_semantic_knet("fcn").eval()
    img = image(32, 48)
    tta = KNetSemanticTTA(model, ratios=[0.5, 1.0, 1.5], min_size=32, max_size=64, flip=True)
    with torch.no_grad():
        got = tta([{"image": img, "height": 32, "width": 48}])[0]["sem_seg"]
        preds = []
        for size in [(16, 24), (32, 48), (48, 72)]:  # short side r*32 (long side <= r*64)
            np_img = img.permute(1, 2, 0).numpy()
            resized = np.asarray(Image.fromarray(np_img).resize((size[1], size[0]), Image.BILINEAR))
            t = torch.from_numpy(resized.copy()).permute(2, 0, 1)
            preds.append(model([{"image": t, "height": 32, "width": 48}])[0]["sem_seg"])
            flipped = model([{"image": t.flip(2), "height": 32, "width": 48}])[0]["sem_seg"]
            preds.append(flipped.flip(2))
    expected = torch.stack(preds).mean(0)
    assert got.shape == (NUM_CLASSES, 32, 48)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, preds[2], atol=1e-4)  # differs from the single-scale prediction
    assert model.training is False
