"""Pair-selection strategies of the online loop: one signature, one registry (docs/theory.md §2.4, §6).

At iteration ``t`` the loop (``algorithms.online.loop``) hands a strategy a ``StrategyView`` of what the
learner knows and the strategy returns a ``Pair``: the joint law ``[n_x, K, K]`` (log) of the
compared actions ``(a1, a2)`` given the context. Independent choices use ``independent(log_pi1,
log_pi2)``. The view holds no true reward: ``view.instance`` has its reward and skew zeroed.

Writing a new strategy is one function and one registry line::

    def my_strategy(view):                       # view: StrategyView
        bonus = view.uncertainty ** 2             # any [n_x, K] table
        explorer = bandits.gibbs_policy(view.instance.log_pi0, view.reward_hat + bonus, view.instance.kl_coef)
        return independent(view.log_pi, explorer)

    register("my_strategy", my_strategy)

and a new exploration *bonus* is even shorter: ``register_bonus("sq_bonus", lambda view: view.uncertainty ** 2)``
pairs the main agent with the Gibbs policy of ``reward_hat + bonus`` (``optimism`` is
``beta * uncertainty``).

Built-in strategies:

- ``enhancer``: P1's enhancer, ``argmax_{pi' in Pi_t} Gamma_t(pi1_t, pi')`` (``algorithms.online.enhancer``);
- ``pi0``: ``(pi_t, pi0)``, the pair of P1's hybrid analysis; ``self_play``: ``(pi_t, pi_t)``;
  ``uniform``: both actions uniform; ``pi_uniform``: ``(pi_t, uniform)``;
- ``optimism``: ``(pi_t, Gibbs(r_hat + beta Gamma))``, the upper-confidence reward;
- ``thompson``: ``(pi_t, Gibbs(<theta~, phi>))``, ``theta~ ~ N(theta_hat, H^{-1})`` with ``H`` the
  Hessian of the regularised BT negative log-likelihood at ``theta_hat`` (Laplace posterior);
- ``max_min``, ``max_random``, ``best_second``, ``best_quartile``: ``k`` draws from ``pi_t`` ranked
  by ``r_hat`` (``algorithms.online.pairings``, exact laws);
- ``calibration``: ``(pi_t, pi_cal)`` with ``pi_cal`` the agent's calibration policy, the pair of
  XPO / VPO (``pi_cal = pi0``) and SELM (``pi_cal = pi_{t-1}``) (docs/theory.md §6).

The ``distinct`` modifier (a variant, not in P1): ``get("NAME+distinct")`` is strategy ``NAME`` with its pair
law conditioned on ``a1 != a2`` (``distinct_law``), for any registered strategy, so "which policies are
compared" and "never spend a query on an action against itself" can be separated (docs/theory.md §2.4).
P1 draws ``a1 ~ pi1_t`` and ``a2 ~ pi2_t`` independently, identical pairs included (they carry no
information, ``z = 0``). Conditioning changes both marginals: the variant's ``(a1, a2)`` are no longer
draws of ``pi1_t`` and ``pi2_t``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.online import enhancer as enhancer_module
from algorithms.core import spd_solve
from algorithms.core.confidence import ConfidenceSet
from algorithms.online.pairings import PAIRINGS, pairing_law
from bandits import Instance, gibbs_policy, uniform_policy
from bandits import validation as v


@dataclasses.dataclass(frozen=True)
class StrategyOptions:
    """Static options of the built-in strategies (the enhancer's: ``algorithms.online.enhancer``).

    k: draws per context of the rejection-sampling pairings (>= 2); enhancer_search: ``ascent`` (fixed-point
    ascent over tilt directions with bisection on the boundary ``eta KL = Gamma``) | ``grid`` (the earlier
    eigenvector/random-direction grid); enhancer_fallback: the enhancer when ``Pi_t`` has no member with
    ``Gamma_t > enhancer_min_gamma``, ``pi0`` | ``main`` (``pi_t``); enhancer_min_gamma: the ``Gamma_t`` a
    member must exceed to be used (>= 0); enhancer_random_directions: random start directions besides the
    eigenvectors of ``Sigma_t`` (each with its negative, >= 0); enhancer_ascent_steps: ascent rounds per start (>= 1);
    enhancer_root_steps: bisection halvings per direction (>= 1); enhancer_scale_cap: the ascent's largest
    tilt scale (> 0); enhancer_scales: the grid's number of scales (>= 1); enhancer_max_scale: the grid's
    largest scale (> 0).
    """

    k: int = 4
    enhancer_search: str = "ascent"
    enhancer_fallback: str = "pi0"
    enhancer_min_gamma: float = 0.0
    enhancer_random_directions: int = 4
    enhancer_ascent_steps: int = 6
    enhancer_root_steps: int = 14
    enhancer_scale_cap: float = 1e4
    enhancer_scales: int = 12
    enhancer_max_scale: float = 30.0

    def __post_init__(self):
        v.check_int("k", self.k, 2)
        v.check_choice("enhancer_search", self.enhancer_search, enhancer_module.SEARCHES)
        v.check_choice("enhancer_fallback", self.enhancer_fallback, enhancer_module.FALLBACKS)
        v.check_float("enhancer_min_gamma", self.enhancer_min_gamma, low=0.0)
        v.check_int("enhancer_random_directions", self.enhancer_random_directions, 0)
        v.check_int("enhancer_ascent_steps", self.enhancer_ascent_steps, 1)
        v.check_int("enhancer_root_steps", self.enhancer_root_steps, 1)
        v.check_float("enhancer_scale_cap", self.enhancer_scale_cap, low=0.0, low_open=True)
        v.check_int("enhancer_scales", self.enhancer_scales, 1)
        v.check_float("enhancer_max_scale", self.enhancer_max_scale, low=0.0, low_open=True)


class StrategyView(NamedTuple):
    """What the learner knows at iteration ``t`` (built inside the traced loop, never a jit argument)."""

    instance: Instance        # features, pi0, d0, kl_coef; reward and skew zeroed
    theta: jax.Array          # [d] BT-MLE on the data so far
    confidence: ConfidenceSet  # centre theta, Gram Sigma_t, Cholesky, radius beta_t
    nu: jax.Array             # [n_x, d] reference vector of the uncertainties
    log_pi: jax.Array         # [n_x, K] main agent pi_t
    log_pi_cal: jax.Array     # [n_x, K] the agent's calibration policy (pi0, or pi_{t-1} for SELM)
    reward_hat: jax.Array     # [n_x, K] <theta, phi>
    uncertainty: jax.Array    # [n_x, K] Gamma(x, a) = ||phi(x, a) - nu(x)||_{Sigma^{-1}} (no beta)
    hessian: jax.Array        # [d, d] Hessian of the regularised BT NLL at theta
    iteration: jax.Array      # scalar int, t = 0, 1, ...
    key: jax.Array            # PRNG key for randomised strategies
    options: StrategyOptions


class Pair(NamedTuple):
    """A strategy's pair law. ``log_joint [n_x, K, K]``: ``log P(a1, a2 | x)``; ``info``: a scalar diagnostic
    (the enhancer: 1 if ``Pi_t`` had a non-trivial member), else NaN. An independent pair also carries its
    factors ``log_pi1, log_pi2 [n_x, K]`` (``P = pi1 x pi2``): the loop then samples, marginalises and
    prices the pair from them in ``O(n_x K)`` per context (``O(n_x K^2)`` for the weak regret), and the
    ``[n_x, K, K]`` table is never built; ``None`` for a law that is not a product. ``product``: ``None``
    when that is known when tracing; a traced boolean where ``select`` mixes product and joint laws in one
    program (the factors are then the two marginals, and the loop branches on it with ``lax.cond``)."""

    log_joint: jax.Array
    info: jax.Array
    log_pi1: jax.Array | None = None
    log_pi2: jax.Array | None = None
    product: jax.Array | None = None

    @property
    def factored(self) -> bool:
        return self.log_pi1 is not None and self.log_pi2 is not None


def by_law(pair: Pair, product_fn: Callable, table_fn: Callable):
    """``product_fn(pair)`` for a product law (from its factors), ``table_fn(pair)`` for a joint table; decided
    when tracing where possible, else by ``lax.cond`` on ``pair.product`` (only the chosen branch runs
    when the flag is not batched, as for a traced strategy index shared by all seeds)."""
    if not pair.factored:
        return table_fn(pair)
    if pair.product is None:
        return product_fn(pair)
    return jax.lax.cond(pair.product, product_fn, table_fn, pair)


Strategy = Callable[[StrategyView], Pair]


def independent(log_pi1: jax.Array, log_pi2: jax.Array, info=jnp.nan) -> Pair:
    """``a1 ~ pi1(.|x)`` and ``a2 ~ pi2(.|x)`` independently (the factors are kept, ``Pair``)."""
    return Pair(log_pi1[:, :, None] + log_pi2[:, None, :], jnp.asarray(info, log_pi1.dtype), log_pi1, log_pi2)


def first_marginal(pair: Pair) -> jax.Array:
    """``log P(a1 | x) = log sum_b P(a1, b | x)``, ``[n_x, K]`` (the first queried action's law)."""
    if pair.factored:
        return pair.log_pi1 + jax.scipy.special.logsumexp(pair.log_pi2, axis=-1, keepdims=True)
    return jax.scipy.special.logsumexp(pair.log_joint, axis=2)


def second_marginal(pair: Pair) -> jax.Array:
    """``log P(a2 | x) = log sum_a P(a, a2 | x)``, ``[n_x, K]`` (the explorer's policy)."""
    if pair.factored:
        return pair.log_pi2 + jax.scipy.special.logsumexp(pair.log_pi1, axis=-1, keepdims=True)
    return jax.scipy.special.logsumexp(pair.log_joint, axis=1)


def _flagged(pair: Pair) -> Pair:
    """The pair with a traced ``product`` flag and factors in every case (a table's are its marginals)."""
    if pair.factored:
        return pair._replace(product=jnp.asarray(True) if pair.product is None else pair.product)
    return Pair(pair.log_joint, pair.info, first_marginal(pair), second_marginal(pair), jnp.asarray(False))


def select(index, branches: list[Strategy]) -> Strategy:
    """The strategy ``branches[index]`` for a traced ``index`` (``lax.switch``: one compiled program, only the
    chosen branch runs). ``lax.switch`` needs one output structure: where product and joint laws are mixed,
    every branch's pair carries factors and a traced ``product`` flag (``Pair``), so a product law is
    still sampled and priced from its factors; where all are factored (or none), they are kept as they are."""
    def chosen(view: StrategyView) -> Pair:
        shapes = [jax.eval_shape(lambda f=f: f(view)) for f in branches]
        same = len({jax.tree.structure(p) for p in shapes}) == 1
        chosen_branches = branches if same else [lambda v, f=f: _flagged(f(v)) for f in branches]
        return jax.lax.switch(index, [functools.partial(f, view) for f in chosen_branches])
    return chosen


def pair_identical_mass(pair: Pair) -> jax.Array:
    """``identical_mass`` of a pair, ``sum_a pi1(a | x) pi2(a | x)`` for a product law, ``[n_x]``."""
    return by_law(pair, lambda p: jnp.sum(jnp.exp(p.log_pi1 + p.log_pi2), axis=-1),
                  lambda p: identical_mass(p.log_joint))


def identical_mass(log_joint: jax.Array) -> jax.Array:
    """``P(a1 = a2 | x) = sum_a P(a, a | x)``, ``[n_x]``: the probability of a pair that carries no information."""
    return jnp.sum(jnp.exp(jnp.diagonal(log_joint, axis1=-2, axis2=-1)), axis=-1)


DISTINCT = "+distinct"


def distinct_law(log_joint: jax.Array) -> jax.Array:
    """The pair law conditioned on ``a1 != a2`` (the ``distinct`` modifier; a departure from P1), ``[n_x, K, K]``:

        P'(a1, a2 | x) = P(a1, a2 | x) 1[a1 != a2] / sum_{a != b} P(a, b | x).

    The off-diagonal mass is summed in log space, so a tiny but positive mass is renormalised exactly.
    Where it is exactly zero (the law of context ``x`` sits on the diagonal: a point mass, or self-play
    of a deterministic policy), conditioning is undefined; we keep the first action's law and draw the
    second uniformly among the other ``K - 1`` actions, ``P'(a1, a2 | x) = P1(a1 | x) / (K - 1)`` for
    ``a2 != a1``. With ``K = 1`` no distinct pair exists and the law is returned unchanged.
    """
    n_actions = log_joint.shape[-1]
    if n_actions == 1:
        return log_joint
    diagonal = jnp.eye(n_actions, dtype=bool)
    off = jnp.where(diagonal, -jnp.inf, log_joint)
    log_off = jax.scipy.special.logsumexp(off, axis=(-2, -1), keepdims=True)
    has_off = jnp.isfinite(log_off)
    conditioned = off - jnp.where(has_off, log_off, 0.0)
    log_first = jax.scipy.special.logsumexp(log_joint, axis=-1, keepdims=True)
    log_first = log_first - jax.scipy.special.logsumexp(log_first, axis=-2, keepdims=True)
    fallback = jnp.where(diagonal, -jnp.inf, log_first - jnp.log(n_actions - 1.0))
    return jnp.where(has_off, conditioned, fallback)


def distinct(strategy: Strategy) -> Strategy:
    """``strategy`` with its pair law conditioned on ``a1 != a2`` (``distinct_law``); its ``info`` is kept."""
    def conditioned(view: StrategyView) -> Pair:
        pair = strategy(view)
        return Pair(distinct_law(pair.log_joint), pair.info)
    return conditioned


def _gibbs(view: StrategyView, reward: jax.Array) -> jax.Array:
    return gibbs_policy(view.instance.log_pi0, reward, view.instance.kl_coef)


def _enhancer(view: StrategyView) -> Pair:
    log_pi2, nontrivial = enhancer_module.enhancer_policy(view)
    return independent(view.log_pi, log_pi2, nontrivial)


def _thompson(view: StrategyView) -> Pair:
    chol = spd_solve.cholesky(view.hessian)
    noise = jax.random.normal(view.key, view.theta.shape, view.theta.dtype)
    sample = view.theta + spd_solve.solve_upper_transposed(chol, noise)
    return independent(view.log_pi, _gibbs(view, view.instance.phi @ sample))


def _uniform(view: StrategyView) -> Pair:
    u = uniform_policy(view.instance.n_contexts, view.instance.n_actions, view.log_pi.dtype)
    return independent(u, u)


def _pi_uniform(view: StrategyView) -> Pair:
    return independent(view.log_pi, uniform_policy(view.instance.n_contexts, view.instance.n_actions,
                                                   view.log_pi.dtype))


def _pairing(name: str) -> Strategy:
    return lambda view: Pair(pairing_law(name, view.log_pi, view.reward_hat, view.options.k),
                             jnp.asarray(jnp.nan, view.log_pi.dtype))


def bonus_strategy(bonus: Callable[[StrategyView], jax.Array]) -> Strategy:
    """``(pi_t, Gibbs(r_hat + bonus(view)))`` for a bonus table ``[n_x, K]`` (optimism when the bonus is
    ``beta Gamma``)."""
    return lambda view: independent(view.log_pi, _gibbs(view, view.reward_hat + bonus(view)))


STRATEGIES: dict[str, Strategy] = {
    "enhancer": _enhancer,
    "pi0": lambda view: independent(view.log_pi, view.instance.log_pi0),
    "self_play": lambda view: independent(view.log_pi, view.log_pi),
    "uniform": _uniform,
    "pi_uniform": _pi_uniform,
    "optimism": bonus_strategy(lambda view: view.confidence.beta * view.uncertainty),
    "thompson": _thompson,
    "calibration": lambda view: independent(view.log_pi, view.log_pi_cal),
    **{name: _pairing(name) for name in PAIRINGS},
}
BUILTIN_STRATEGIES = tuple(STRATEGIES)


def register(name: str, strategy: Strategy, *, overwrite: bool = False) -> Strategy:
    """Add a strategy under ``name`` (a built-in name is refused unless ``overwrite``)."""
    v.check_registry_name("strategy", name, STRATEGIES, overwrite=overwrite)
    if not callable(strategy):
        v.fail(f"strategy {name!r}", strategy, "a function StrategyView -> Pair")
    STRATEGIES[name] = strategy
    return strategy


def register_bonus(name: str, bonus: Callable[[StrategyView], jax.Array], *, overwrite: bool = False) -> Strategy:
    """Register ``bonus_strategy(bonus)`` under ``name``."""
    return register(name, bonus_strategy(bonus), overwrite=overwrite)


def split_modifier(name: str) -> tuple[str, bool]:
    """``("NAME", True)`` for ``"NAME+distinct"``, ``(name, False)`` otherwise."""
    if isinstance(name, str) and name.endswith(DISTINCT):
        return name[: -len(DISTINCT)], True
    return name, False


def check_name(field: str, name: str) -> str:
    """``name`` must be a registered strategy, optionally with the suffix ``+distinct``."""
    base, _ = split_modifier(name)
    if base not in STRATEGIES:
        v.fail(field, name, f"one of {', '.join(repr(c) for c in STRATEGIES)}, optionally with the suffix "
               f"'{DISTINCT}'")
    return name


def get(name: str) -> Strategy:
    """The strategy ``name``; ``NAME+distinct`` is ``distinct(get(NAME))``."""
    check_name("strategy", name)
    base, modified = split_modifier(name)
    return distinct(STRATEGIES[base]) if modified else STRATEGIES[base]

