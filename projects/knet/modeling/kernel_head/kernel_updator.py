"""The gated adaptive kernel update of K-Net.

Zhang et al., "K-Net: Towards Unified Image Segmentation", NeurIPS 2021, §3.2 ("adaptive kernel update",
Eq. 3-5); reference code ``ZwwWayne/K-Net:knet/kernel_updator.py`` (``KernelUpdator``) and the same class in
mmsegmentation ``mmseg/models/decode_heads/knet_head.py``. Leaf names follow the reference so checkpoints
convert by renaming prefixes only.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["KernelUpdator"]


class KernelUpdator(nn.Module):
    """Gated fusion of the assembled group feature ``F^K`` with the previous kernel ``K``.

    With ``C' = feat_channels`` (paper notation in brackets):

    * ``dynamic_layer(F^K)`` -> ``[param_in (phi_1) | param_out (psi_3)]`` (first / last ``C'`` outputs);
    * ``input_layer(K)`` -> ``[input_in (phi_2) | input_out (psi_4)]``;
    * ``F^G = input_in * param_in``; gates ``G_K = sigmoid(LN_input_norm_in(input_gate(F^G)))`` and
      ``G_F = sigmoid(LN_norm_in(update_gate(F^G)))``;
    * ``K~ = G_F * LN_norm_out(param_out) + G_K * LN_input_norm_out(input_out)``;
    * output ``ReLU(LN_fc_norm(fc_layer(K~)))``.

    **Width quirk** (mmseg ``knet_head.py::KernelUpdator``): the inputs are viewed as rows of ``in_channels``
    values, exactly like
    the reference's ``reshape(-1, in_channels)``. When the head that owns this updator is wider than
    ``in_channels`` (the 512-wide semantic heads use a 256-wide updator), every kernel is therefore split
    into ``head_width / in_channels`` consecutive channel groups; group ``g`` of the assembled feature is
    fused with group ``g`` of the kernel by the same weights, and the groups are concatenated back in order.
    For the det heads (``in_channels`` == head width) this is the plain per-kernel update.
    """

    def __init__(self, in_channels=256, feat_channels=64, out_channels=None):
        """
        Args:
            in_channels (int): width of one row of the inputs (256 in every released config).
            feat_channels (int): ``C'``, width of the gates (256 in every released config). The gate
                Linears read ``F^G`` (``C'`` wide) with ``in_channels`` inputs, so both must be equal,
                as in the reference.
            out_channels (int or None): width of the output rows; ``None`` means ``in_channels``.
        """
        super().__init__()
        if feat_channels != in_channels:
            raise ValueError(
                f"KernelUpdator: feat_channels ({feat_channels}) must equal in_channels ({in_channels}); "
                "the reference gates read the feat_channels-wide gate feature with in_channels inputs."
            )
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.out_channels = out_channels if out_channels else in_channels

        self.dynamic_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_gate = nn.Linear(in_channels, feat_channels)
        self.update_gate = nn.Linear(in_channels, feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(feat_channels)
        self.input_norm_in = nn.LayerNorm(feat_channels)
        self.input_norm_out = nn.LayerNorm(feat_channels)
        self.fc_layer = nn.Linear(feat_channels, self.out_channels)
        self.fc_norm = nn.LayerNorm(self.out_channels)

    def forward(self, update_feature: torch.Tensor, input_feature: torch.Tensor) -> torch.Tensor:
        """
        Args:
            update_feature: assembled group features ``F^K``, shape (..., C) with C a multiple of
                ``in_channels`` (e.g. (B, N, C)).
            input_feature: the previous kernels, shape (..., K*K, C) with the same leading dims.

        Returns:
            Tensor (..., K*K, C * out_channels / in_channels): the updated kernels. With C == in_channels
            this is the reference output reshaped back to the input layout; with C a multiple of
            ``in_channels`` the channel groups are updated independently (see the class docstring).
        """
        lead = input_feature.shape[:-2]
        if update_feature.shape[-1] % self.in_channels != 0:
            raise ValueError(
                f"KernelUpdator: feature width {update_feature.shape[-1]} is not a multiple of "
                f"in_channels={self.in_channels}"
            )
        rows = update_feature.reshape(-1, self.in_channels)  # (R, in)
        num_rows = rows.shape[0]
        params = self.dynamic_layer(rows)
        param_in = params[:, : self.feat_channels]
        param_out = params[:, self.feat_channels :]

        # like the reference: the kernels are viewed as (R, L, feat_channels) rows matching `rows`
        kernels = input_feature.reshape(num_rows, -1, self.feat_channels)
        inputs = self.input_layer(kernels)
        input_in = inputs[..., : self.feat_channels]
        input_out = inputs[..., self.feat_channels :]

        gate_feats = input_in * param_in.unsqueeze(-2)
        input_gate = self.input_norm_in(self.input_gate(gate_feats)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate_feats)).sigmoid()
        param_out = self.norm_out(param_out)
        input_out = self.input_norm_out(input_out)

        features = update_gate * param_out.unsqueeze(-2) + input_gate * input_out
        features = F.relu(self.fc_norm(self.fc_layer(features)))  # (R, L, out)
        # back to (..., K*K, C_out): the reference head flattens (R, L, out) per kernel in this order
        kk = input_feature.shape[-2]
        return features.reshape(*lead, kk, -1)
