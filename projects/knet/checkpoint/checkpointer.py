"""``KNetCheckpointer``: detectron2's ``DetectionCheckpointer`` with safe loading and atomic saving.

* Loading goes through :func:`knet.checkpoint.io.load_checkpoint`: ``torch.load(weights_only=True)`` for
  ``.pth``/``.pyth``, the ``safetensors`` reader for ``.safetensors``, a numpy-only unpickler for detectron2
  ``.pkl`` weight files. Nothing in a checkpoint can execute code; a file that needs that is refused with a
  clear message (detectron2 itself calls ``pickle.load`` on ``.pkl`` files).
* An unconverted mmdet/mmseg checkpoint (``{"state_dict": ..., "meta": ...}``) is refused with a pointer to
  ``tools/convert_knet_checkpoint.py`` instead of being loaded as a pile of unexpected keys.
* ``save`` writes ``<name>.pth`` (or ``.safetensors`` when the name ends with it) and the ``last_checkpoint``
  tag atomically (temporary file in the same folder, then ``os.replace``): a crash mid-save never leaves a
  truncated checkpoint under the final name, nor a tag pointing at one.

The constructor is ``DetectionCheckpointer``'s, unchanged: ``KNetCheckpointer(model, save_dir="", *,
save_to_disk=None, **checkpointables)``.
"""

import os

from detectron2.checkpoint import DetectionCheckpointer

from .io import CheckpointLoadError, atomic_write, load_checkpoint, save_checkpoint

__all__ = ["KNetCheckpointer"]


class KNetCheckpointer(DetectionCheckpointer):
    """A :class:`detectron2.checkpoint.DetectionCheckpointer` that never unpickles code and saves
    atomically."""

    def _load_file(self, filename):
        data = load_checkpoint(filename)
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            if "blobs" in data:  # Caffe2 / Detectron1 detection model
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            if "model_state" not in data:
                raise CheckpointLoadError(
                    f"Cannot load .pyth file {filename}: pycls checkpoints contain 'model_state'."
                )
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in data:
            if "state_dict" in data and ("meta" in data or "optimizer" in data):
                raise CheckpointLoadError(
                    f"'{filename}' is an mmdet/mmseg (OpenMMLab) checkpoint, whose names do not match this "
                    "package. Convert it first: python tools/convert_knet_checkpoint.py --source "
                    "{mmdet-knet,mmseg-knet} --config-file <config> --input "
                    f"{filename} --output <converted.pth> (see docs/MODEL_ZOO.md)."
                )
            data = {"model": data}
        return data

    def save(self, name: str, **kwargs) -> None:
        """Dump the model and checkpointables to ``<save_dir>/<name>.pth`` atomically, then tag it as the last
        checkpoint (also atomically). A name ending in ``.safetensors`` saves the model weights in that format
        (extra entries must then be JSON-serialisable, so optimizer state cannot go there)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = name if name.endswith(".safetensors") else f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info("Saving checkpoint to {}".format(save_file))
        save_checkpoint(data, self.path_manager.get_local_path(save_file))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``<save_dir>/last_checkpoint`` atomically."""
        save_file = self.path_manager.get_local_path(os.path.join(self.save_dir, "last_checkpoint"))
        with atomic_write(save_file, "w") as f:
            f.write(last_filename_basename)
