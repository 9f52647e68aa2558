"""Per-class scores of a panoptic K-Net (its semantic output)."""

from support.postprocessing import STRIDE, panoptic_case

from knet.modeling.postprocessing import semantic_inference


def test_semantic_scores():
    cls, masks = panoptic_case()
    sem = semantic_inference(
        cls, masks, (24, 32), (24, 32), num_proposals=3, num_thing_classes=2, stride=STRIDE
    )
    assert sem.shape == (4, 24, 32)
    seg = sem.argmax(0)
    assert (seg[:12, :8] == 1).all()  # kernel 0, class 1
    assert (seg[:, 24:] == 2).all()  # stuff kernel of class 2 (cells 6-7; kernel 2 reaches cell 4)
    # stuff kernels only contribute to their own class
    assert sem[3].max() < 1e-3
