"""``KNetAMPTrainer``: the mixed-precision training step (``SOLVER.AMP.ENABLED``), on CUDA and on CPU.

detectron2's ``AMPTrainer`` (v0.6 and main) asserts CUDA. :class:`KNetAMPTrainer` keeps its logic on CUDA
(float16 autocast + ``GradScaler``) and uses bfloat16 autocast on CPU (bfloat16 has float32's range, so no
loss scaling is needed). The matcher and the losses leave autocast themselves and run in float32 (inside the
model).
"""
import time

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .devices import model_device_type

__all__ = ["KNetAMPTrainer"]


class KNetAMPTrainer(SimpleTrainer):
    """Like detectron2's ``AMPTrainer``, with a CPU path.

    Args:
        model, data_loader, optimizer: as in ``SimpleTrainer``.
        grad_scaler: a ``torch.amp.GradScaler`` for CUDA (default: a new one); unused on CPU.
    """

    def __init__(self, model, data_loader, optimizer, grad_scaler=None):
        if isinstance(model, DataParallel) or (
            isinstance(model, DistributedDataParallel) and model.device_ids and len(model.device_ids) > 1
        ):
            raise ValueError("KNetAMPTrainer does not support single-process multi-device training.")
        super().__init__(model, data_loader, optimizer)
        self.device_type = model_device_type(model)
        if self.device_type == "cuda":
            self.autocast_dtype = torch.float16
            self.grad_scaler = grad_scaler if grad_scaler is not None else torch.amp.GradScaler("cuda")
        elif self.device_type == "cpu":
            self.autocast_dtype = torch.bfloat16
            self.grad_scaler = None
        else:
            raise ValueError(
                f"SOLVER.AMP.ENABLED is supported on 'cuda' and 'cpu' models, not on '{self.device_type}'."
            )

    def run_step(self):
        assert self.model.training, "[KNetAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self._after_backward()
            self._write_metrics(loss_dict, data_time)
            # step() unscales first, so the optimizer's (full-model) clipping sees the true gradients
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            self._after_backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()

    def _after_backward(self):
        """The ``after_backward`` hook stage of detectron2 main's ``SimpleTrainer``/``AMPTrainer`` (called at
        the same point of the step); detectron2 v0.6 has no such stage (feature-detected)."""
        after_backward = getattr(self, "after_backward", None)
        if after_backward is not None:
            after_backward()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
