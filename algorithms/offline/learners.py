"""Offline policy learners: one protocol, one registry (docs/theory.md §2.2-2.3, §6, §8.1).

An offline learner turns what is known after ``n`` comparisons, an ``OfflineView``, into a policy. It is a
small bundle of pure functions over an explicit state pytree, in the spirit of optax::

    state = learner.init(view)                   # e.g. the warm start of an optimiser; () when stateless
    log_pi, state = learner.fit(view, state)     # log pi_hat [n_x, K]; the state carries to the next n
    bound = learner.bound(view, log_pi, log_pi_star)   # P1's bound with comparator pi* (None: no bound)

Experiments sweep ``n`` over nested prefixes of one data stream and carry each learner's state from one
size to the next (DPO's warm start), so a learner must accept the state its own ``fit`` returned. The view
holds no true reward (``bandits.public_view`` zeroes it). Each entry carries its metadata: the legend
``label``, the quantity its ``bound`` controls (``bounded``: ``subopt`` or ``subopt_kl``) and whether it
needs the neural reward network fitted on the data (``needs_network``).

A new learner is one function and one registry line::

    def fit(view, state):
        r = view.instance.phi @ view.confidence.center - 0.5 * view.uncertainty   # any reward table
        return bandits.gibbs_policy(view.instance.log_pi0, r, view.instance.kl_coef), state

    register("half_pessimistic", OfflineLearner(fit, label="Gibbs(r_hat - Gamma / 2)"))

Built in: ``mle_gibbs`` (``Gibbs(<theta_hat, phi>)``; plug-in bound on ``subopt_kl``), ``option_i`` and
``option_ii`` (P1's pessimistic offline GSHF, Xiong et al. 2024 §3.1, Algorithm 1; bounds on ``subopt``
and ``subopt_kl``), ``dpo`` and ``pessimistic_dpo`` (a linear-softmax policy trained by (pessimistic) DPO,
P1 §2.3; warm-started across ``n``), and for neural rewards ``neural_gibbs``, ``neural_linear_pess``
(``Gibbs(r_net - neural_beta Gamma_h)`` on last-layer features) and ``ensemble_pess`` (a bootstrap
ensemble's mean minus ``neural_beta`` times its spread).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import bandits as b
from algorithms.core import confidence as conf
from algorithms.core import neural_mle
from algorithms.core.direct_preference import train_linear
from algorithms.offline import gshf
from bandits import validation as v


@dataclasses.dataclass(frozen=True)
class OfflineOptions:
    """Static options of the built-in offline learners, validated on creation.

    dpo_steps, dpo_learning_rate: Adam steps and step size of (pessimistic) DPO per sample size;
    neural_steps, neural_learning_rate: Adam on the neural BT loss (the network and each ensemble member);
    neural_beta: the multiplier of the neural uncertainty (``>= 0``); ensemble_size: bootstrap members (>= 2).
    """

    dpo_steps: int = 200
    dpo_learning_rate: float = 0.05
    neural_steps: int = 300
    neural_learning_rate: float = 0.02
    neural_beta: float = 1.0
    ensemble_size: int = 4

    def __post_init__(self):
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)
        v.check_int("neural_steps", self.neural_steps, 1)
        v.check_float("neural_learning_rate", self.neural_learning_rate, low=0.0, low_open=True)
        v.check_float("neural_beta", self.neural_beta, low=0.0)
        v.check_int("ensemble_size", self.ensemble_size, 2)


class OfflineView(NamedTuple):
    """What an offline learner knows after ``n`` comparisons (built inside the traced per-seed function)."""

    instance: b.Instance           # features, pi0, d0, kl_coef; reward and skew zeroed
    data: b.PreferenceData         # the n comparisons
    confidence: conf.ConfidenceSet  # BT-MLE centre theta_hat, Gram Sigma, Cholesky, radius beta
    nu: jax.Array                  # [n_x, d] reference vector of the uncertainties
    uncertainty: jax.Array         # [n_x, K] Gamma(x, a) = ||phi(x, a) - nu(x)||_{Sigma^{-1}} (no beta)
    network: Any                   # the neural BT-MLE (MLPReward) fitted on the data, or None
    key: jax.Array                 # PRNG key for randomised learners (one per seed and n)
    lam: Any                       # the ridge of the MLE fits
    hidden: int                    # the width of neural reward networks
    options: OfflineOptions


class OfflineLearner(NamedTuple):
    fit: Callable[[OfflineView, Any], tuple[jax.Array, Any]]
    init: Callable[[OfflineView], Any] = lambda view: ()
    label: str = ""
    bound: Callable[[OfflineView, jax.Array, jax.Array], jax.Array] | None = None
    bounded: str | None = None     # "subopt" | "subopt_kl": the quantity ``bound`` controls
    needs_network: bool = False


BOUNDED_QUANTITIES = ("subopt", "subopt_kl")


def _gibbs(view: OfflineView, reward: jax.Array) -> jax.Array:
    return b.gibbs_policy(view.instance.log_pi0, reward, view.instance.kl_coef)


def _stateless(policy: Callable[[OfflineView], jax.Array]):
    return lambda view, state: (policy(view), state)


def _dpo(method: str):
    def fit(view: OfflineView, w):
        gamma = view.confidence.beta * view.uncertainty if method == "pessimistic_dpo" else None
        inst = view.instance
        out = train_linear(view.data, inst.phi, inst.log_pi0, inst.kl_coef, method, gamma=gamma, init_w=w,
                           steps=view.options.dpo_steps, learning_rate=view.options.dpo_learning_rate)
        return out.log_pi, out.params
    return fit


def _dpo_init(view: OfflineView):
    return jnp.zeros(view.instance.dim, view.instance.phi.dtype)


def _neural_linear_pess(view: OfflineView) -> jax.Array:
    gamma = neural_mle.neural_linear_uncertainty(view.instance, view.network, view.data, view.lam)
    return _gibbs(view, b.reward_table(view.network, view.instance.phi) - view.options.neural_beta * gamma)


def _ensemble_pess(view: OfflineView) -> jax.Array:
    o = view.options
    _, mean, spread = neural_mle.bootstrap_ensemble(view.key, view.instance, view.data, view.lam, o.ensemble_size,
                                                    view.hidden, o.neural_steps, o.neural_learning_rate)
    return _gibbs(view, mean - o.neural_beta * spread)


LEARNERS: dict[str, OfflineLearner] = {
    "mle_gibbs": OfflineLearner(
        _stateless(lambda view: gshf.linear_gibbs(view.instance, view.confidence.center)), label="MLE-Gibbs",
        bound=lambda view, log_pi, star: gshf.plug_in_bound(view.instance, view.confidence, star, log_pi),
        bounded="subopt_kl"),
    "option_i": OfflineLearner(
        _stateless(lambda view: gshf.option_i_policy(view.instance, view.confidence, view.nu)),
        label="Option I (pessimistic)",
        bound=lambda view, log_pi, star: gshf.option_i_bound(view.instance, view.confidence, view.nu, star),
        bounded="subopt"),
    "option_ii": OfflineLearner(
        _stateless(lambda view: gshf.option_ii_policy(view.instance, view.confidence, view.nu)),
        label="Option II (pessimistic)",
        bound=lambda view, log_pi, star: gshf.option_ii_bound(view.instance, view.confidence, view.nu, star),
        bounded="subopt_kl"),
    "dpo": OfflineLearner(_dpo("dpo"), _dpo_init, label="DPO (linear softmax)"),
    "pessimistic_dpo": OfflineLearner(_dpo("pessimistic_dpo"), _dpo_init, label="pessimistic DPO"),
    "neural_gibbs": OfflineLearner(
        _stateless(lambda view: _gibbs(view, b.reward_table(view.network, view.instance.phi))),
        label="neural MLE-Gibbs", needs_network=True),
    "neural_linear_pess": OfflineLearner(_stateless(_neural_linear_pess), label="neural-linear pessimistic",
                                         needs_network=True),
    "ensemble_pess": OfflineLearner(_stateless(_ensemble_pess), label="ensemble pessimistic", needs_network=True),
}
BUILTIN_LEARNERS = tuple(LEARNERS)


def register(name: str, learner: OfflineLearner, *, overwrite: bool = False) -> OfflineLearner:
    """Add ``learner`` under ``name`` (a taken name is refused unless ``overwrite``); returns it."""
    v.check_registry_name("offline learner", name, LEARNERS, overwrite=overwrite)
    if not isinstance(learner, OfflineLearner) or not callable(learner.fit):
        v.fail(f"offline learner {name!r}", learner, "an OfflineLearner(fit, init, label, bound, bounded, "
               "needs_network)")
    if learner.bounded is not None:
        v.check_choice(f"offline learner {name!r} bounded", learner.bounded, BOUNDED_QUANTITIES)
    LEARNERS[name] = learner._replace(label=learner.label or name)
    return LEARNERS[name]


def get(name: str) -> OfflineLearner:
    v.check_choice("algorithms", name, tuple(LEARNERS))
    return LEARNERS[name]


def names(neural: bool) -> tuple[str, ...]:
    """The registered learners that can run on a linear (``neural=False``) or neural reward world: those
    needing the network only in the latter."""
    return tuple(n for n, learner in LEARNERS.items() if neural or not learner.needs_network)


def make_view(instance: b.Instance, data: b.PreferenceData, confidence: conf.ConfidenceSet, nu: jax.Array, *,
              network=None, key, lam, hidden: int, options: OfflineOptions) -> OfflineView:
    """The ``OfflineView`` of a fitted confidence set (the uncertainty table computed once for all learners)."""
    public = b.public_view(instance)
    return OfflineView(public, data, confidence, nu, conf.pointwise_uncertainty(public, confidence.chol, nu),
                       network, key, lam, hidden, options)
