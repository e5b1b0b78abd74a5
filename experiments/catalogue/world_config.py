"""The fields the linear-world experiments share: the instance and the confidence set.

``offline-rate`` and ``online-explore`` (and the online experiments built on it) derive their
configs from ``WorldConfig``, ``reward-kl`` (a ``kl_coef`` grid) from ``ConfidenceFields``, so each field has one name, one validation and one meaning
(``bandits.InstanceConfig`` for the instance; ``algorithms.core.confidence`` for ``lam``, ``beta_mode``,
``c_beta``, ``delta`` and ``reference_vector``; docs/theory.md §1.4). A derived config may redeclare a field
to change its default only.
"""
from __future__ import annotations

import dataclasses

import bandits as b
from algorithms.core import confidence as conf
from bandits import validation as v


@dataclasses.dataclass(frozen=True)
class ConfidenceFields:
    """The BT-MLE ridge and the confidence set (sum-normalised Gram; ``algorithms.core.confidence``)."""

    lam: float = 1.0
    beta_mode: str = "sqrt_d"
    c_beta: float = 1.0
    delta: float = 0.05
    reference_vector: str = "pi0"

    def __post_init__(self):
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_choice("beta_mode", self.beta_mode, conf.BETA_MODES)
        v.check_float("c_beta", self.c_beta, low=0.0, low_open=True)
        v.check_float("delta", self.delta, low=0.0, high=1.0, low_open=True)
        v.check_choice("reference_vector", self.reference_vector, conf.REFERENCE_VECTORS)


@dataclasses.dataclass(frozen=True)
class WorldConfig(ConfidenceFields):
    """Instance fields (``bandits.InstanceConfig``) plus ``ConfidenceFields``."""

    n_contexts: int = 128
    n_actions: int = 32
    dim: int = 8
    reward_norm: float = 2.0
    kl_coef: float = 1.0
    reward: str = "linear"
    hidden: int = 32

    def __post_init__(self):
        super().__post_init__()
        self.instance  # validates the instance fields

    @property
    def instance(self) -> b.InstanceConfig:
        return b.InstanceConfig(n_contexts=self.n_contexts, n_actions=self.n_actions, dim=self.dim,
                                reward_norm=self.reward_norm, kl_coef=self.kl_coef, reward=self.reward,
                                hidden=self.hidden)
