"""The optimizer on a toy model: parameter groups (backbone lr x0.25, no weight decay on norms), AdamW / SGD,
full-model gradient clipping and detectron2's per-parameter clipping."""
import pytest
import torch
from support.toy import ToyModel, solver_cfg

from knet.engine import build_knet_optimizer


def _group_of(optimizer):
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def _set_grads(model, scale):
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return [p.grad.clone() for p in model.parameters()]


def _clipping_cfg(clip_type, value):
    cfg = solver_cfg()
    clip = cfg.SOLVER.CLIP_GRADIENTS
    clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE = True, clip_type, value
    return cfg


def test_optimizer_groups_backbone_multiplier_adamw():
    model = ToyModel()
    opt = build_knet_optimizer(solver_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = _group_of(opt)
    assert len(groups) == len(list(model.parameters()))  # every trainable parameter, once
    for name, p in model.named_parameters():
        g = groups[id(p)]
        expected_lr = 0.25e-4 if name.startswith("backbone.") else 1e-4
        assert g["lr"] == pytest.approx(expected_lr), name
        is_norm = name.startswith(("backbone.1.", "kernel_head.1."))
        assert g["weight_decay"] == pytest.approx(0.0 if is_norm else 0.05), name


def test_optimizer_sgd_and_bad_name():
    opt = build_knet_optimizer(solver_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), ToyModel())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_knet_optimizer(solver_cfg(OPTIMIZER="LAMB"), ToyModel())


def test_full_model_gradient_clipping():
    model = ToyModel()
    opt = build_knet_optimizer(_clipping_cfg("full_model", 1.0), model)
    assert isinstance(opt, torch.optim.AdamW) and "FullModel" in type(opt).__name__
    before = _set_grads(model, 10.0)
    total_before = torch.linalg.vector_norm(torch.stack([g.norm() for g in before]))
    assert total_before > 10
    opt.step()
    after = [p.grad for p in model.parameters()]
    total_after = torch.linalg.vector_norm(torch.stack([g.norm() for g in after]))
    assert total_after == pytest.approx(1.0, rel=1e-4)
    # one factor for the whole model (per-parameter clipping would scale each tensor differently)
    factors = torch.stack([(a.norm() / b.norm()) for a, b in zip(after, before)])
    assert torch.allclose(factors, factors[0].expand_as(factors), rtol=1e-5)

    # small gradients are left alone
    before = _set_grads(model, 1e-4)
    opt.step()
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


def test_per_parameter_clipping_still_available():
    cfg = _clipping_cfg("value", 0.5)
    model = ToyModel()
    opt = build_knet_optimizer(cfg, model)
    _set_grads(model, 10.0)
    opt.step()
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.5
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_knet_optimizer(cfg, model)


def test_adamw_on_cpu_is_fused_and_updates_as_the_reference():
    """On CPU the AdamW is torch's fused kernel; its update equals the per-tensor reference implementation's
    (with the full-model clipping in front), step after step."""
    cfg = _clipping_cfg("full_model", 1.0)
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    model, ref_model = ToyModel(), ToyModel()
    ref_model.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    opt = build_knet_optimizer(cfg, model)
    assert opt.defaults["fused"] is True
    ref_groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [dict(ref_model.named_parameters())[n] for n, p in model.named_parameters()
                              if any(p is q for q in g["params"])]} for g in opt.param_groups]
    ref = torch.optim.AdamW(ref_groups, foreach=False)
    for step in range(3):
        grads = _set_grads(model, 3.0 if step == 0 else 0.01)  # the first step is clipped
        for p, g in zip(ref_model.parameters(), grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), 1.0)
        opt.step()
        ref.step()
    for (name, p), q, p0 in zip(model.named_parameters(), ref_model.parameters(), start):
        assert (p - p0).abs().max() > 1e-5, name  # it moved
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
