"""Offline policy learners on general-preference data, by name: the methods P2's experiments compare.

Each entry is ``fit(instance, data, options, payoff) -> log_pi [n_x, K]``, a pure function of one seed's
instance and data (``jax.vmap``-able), plus its legend label. ``options`` is any object with the fields
the method reads (an experiment's config): ``lam``; ``dpo_steps``, ``dpo_learning_rate`` (``dpo``);
``beta_mode``, ``c_beta``, ``reward_norm`` (``p2_pessimistic``). Built in (docs/theory.md §3.2, §6):

- ``bt_gibbs``: reward-based RLHF, the Gibbs policy of the Bradley-Terry MLE (misspecified when the
  preference is intransitive);
- ``dpo``: DPO of a linear-softmax policy on the same pairs;
- ``nash_mle``: the equilibrium of the estimated game ``P_hat`` (plug-in Nash);
- ``p2_pessimistic``: P2's pessimistic max-min policy over the confidence set of the preference model.

``register_offline(name, fit, label)`` adds a method; ``fit_offline`` runs the ones an experiment names.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import bandits as b
from algorithms.core import confidence as conf
from algorithms.core.direct_preference import train_linear
from algorithms.nash import offline as no
from algorithms.nash import preference_model as gp


class OfflineMethod(NamedTuple):
    fit: Callable        # (instance, data, options, payoff) -> log_pi [n_x, K]
    label: str


def _bt_gibbs(instance, data, options, payoff):
    return no.bt_gibbs_policy(instance, data, options.lam)[0]


def _dpo(instance, data, options, payoff):
    return train_linear(data, instance.phi, instance.log_pi0, instance.kl_coef, "dpo",
                        steps=options.dpo_steps, learning_rate=options.dpo_learning_rate).log_pi


def _nash_mle(instance, data, options, payoff):
    theta = gp.fit_general_preference(instance, data, options.lam).theta
    return no.plug_in_nash(instance, theta, payoff).log_pi


def _p2_pessimistic(instance, data, options, payoff):
    theta = gp.fit_general_preference(instance, data, options.lam).theta
    beta = conf.confidence_radius(options.beta_mode, gp.psi_dim(instance.dim), data.capacity, options.lam,
                                  options.reward_norm, c_beta=options.c_beta)
    cs = gp.confidence_set(instance, data, theta, options.lam, beta)
    return no.pessimistic_policy(instance, cs, payoff).log_pi


OFFLINE: dict[str, OfflineMethod] = {
    "bt_gibbs": OfflineMethod(_bt_gibbs, "BT-MLE + Gibbs (reward RLHF)"),
    "dpo": OfflineMethod(_dpo, "DPO (linear softmax)"),
    "nash_mle": OfflineMethod(_nash_mle, "Nash of estimated game"),
    "p2_pessimistic": OfflineMethod(_p2_pessimistic, "P2 pessimistic max-min"),
}


def register_offline(name: str, fit: Callable, label: str | None = None, *, replace: bool = False) -> Callable:
    """Add an offline method ``fit(instance, data, options, payoff) -> log_pi``; returns ``fit``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"method name={name!r} is not allowed: use a Python identifier.")
    if name in OFFLINE and not replace:
        raise ValueError(f"method name={name!r} is already registered (pass replace=True to replace it).")
    OFFLINE[name] = OfflineMethod(fit, label or name)
    return fit


def fit_offline(instance: b.Instance, data: b.PreferenceData, options, names, payoff: str) -> dict:
    """``{name: log_pi}`` for each offline method of ``names`` (other names are skipped)."""
    return {name: OFFLINE[name].fit(instance, data, options, payoff) for name in names if name in OFFLINE}
