"""``KNetAMPTrainer`` on CPU: one step under bfloat16 autocast, float32 parameters, no grad scaler."""
import torch
from detectron2.utils.events import EventStorage
from support.toy import ToyModel

from knet.engine import KNetAMPTrainer


def test_amp_trainer_runs_bf16_autocast_on_cpu():
    model = ToyModel()
    seen = []
    model.kernel_head[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loader = iter([[{"x": torch.randn(3, 8, 8)} for _ in range(2)] for _ in range(2)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = KNetAMPTrainer(model, loader, opt)
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0):
        trainer.run_step()
    assert trainer.grad_scaler is None and seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
