"""Attacks on the transmitted features: identity (transfer learning, 1-NN) and reconstruction."""
from __future__ import annotations

from privsplit.attacks.base import Attack, AttackResult, Figure, wilson_interval
from privsplit.attacks.common import primary_label_floor, received_features
from privsplit.attacks.transfer import NearestNeighborAttack, TransferAttack, TransferConfig

__all__ = ["Attack", "AttackResult", "Figure", "wilson_interval", "primary_label_floor", "received_features",
           "NearestNeighborAttack", "TransferAttack", "TransferConfig"]

from privsplit.attacks.reconstruction import (  # noqa: E402
    Decoder, ReconConfig, ReconstructionAttack, save_reconstruction_grid,
)

__all__ += ["Decoder", "ReconConfig", "ReconstructionAttack", "save_reconstruction_grid"]
