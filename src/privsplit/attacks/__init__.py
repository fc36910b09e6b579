"""Attacks on what the server receives: who is this person?

Threat model (the one every privacy figure in privsplit is measured under)
-------------------------------------------------------------------------
The attacker is the **service provider**, and it is strong. It has

* the **server bundle** (reconstruction layer + analyzer, labels);
* the **client bundle**: the app ships the feature extractor, the PCA basis and the noise spec (sigma
  and the per-feature std are public), so the attacker runs its own copy of the client and can compute
  *clean* features of any photo it owns;
* **auxiliary face data of other people** (in our experiments: the primary training split);
* **enrolment photos of its targets** (15 per target identity by default);
* the ability to receive **the same photo many times** (each with fresh device noise, today).

It never had the target identities in the defender's training, Siamese fine-tuning, PCA fitting or
noise calibration. A privacy figure is the **worst case over every attack** registered in
:data:`ATTACKS` (see :mod:`privsplit.audit`), reported with a 95% interval against chance and the
primary-label floor (an attacker who knows only the primary label, e.g. gender).

Attacks register by name in :data:`ATTACKS` (``privsplit.registry.Registry``); users add their own with
``@ATTACKS.register("my-attack")`` on an :class:`Attack` subclass.
"""
from __future__ import annotations

from privsplit.attacks.base import ATTACKS, Attack, AttackResult, Figure, IdentityAttack, identity_result, wilson_interval
from privsplit.attacks.common import primary_label_floor, received_features
from privsplit.attacks.data import AttackData, attack_data, identity_attacks
from privsplit.attacks.evidence import combine_evidence
from privsplit.attacks.metric import MetricAttack, verification_figures
from privsplit.attacks.neighbors import LikelihoodAttack, NearestNeighborAttack, noise_variance
from privsplit.attacks.transfer import TransferAttack, TransferConfig

__all__ = ["ATTACKS", "Attack", "IdentityAttack", "AttackResult", "Figure", "identity_result", "wilson_interval",
           "primary_label_floor", "received_features", "NearestNeighborAttack", "LikelihoodAttack", "MetricAttack",
           "noise_variance", "verification_figures", "combine_evidence", "AttackData", "attack_data",
           "identity_attacks", "TransferAttack", "TransferConfig"]

from privsplit.attacks.reconstruction import (  # noqa: E402
    Decoder, ReconConfig, ReconstructionAttack, ReconstructionIdentityAttack, save_reconstruction_grid,
)
from privsplit.attacks.inversion import InversionAttack, InversionConfig  # noqa: E402

__all__ += ["Decoder", "ReconConfig", "ReconstructionAttack", "ReconstructionIdentityAttack",
            "save_reconstruction_grid", "InversionAttack", "InversionConfig"]
