"""P1's batch-online and hybrid loop (Xiong et al., ICML 2024, online GSHF; docs/theory.md §2.4-2.5).

One seed, ``T + 1`` iterations of a ``lax.scan`` over an explicit ``LoopState`` (vmap over seeds outside)::

    D <- D_off (hybrid; empty online)
    for t = 0 .. T:
        theta_t  <- reward learner on D (warm-started from its state at t - 1)
        Sigma_t  <- lam I + sum_{z in D} z z^T,  beta_t <- radius(n_t = |D|)     (sum-normalised Gram)
        pi_t     <- agent(view_t)                   "gibbs": Gibbs(<theta_t, phi>), P1's main agent
                                                    "dpo": DPO(+bonus) on D (iterative DPO / XPO / VPO / SELM)
        record the metrics of pi_t (its data: n_t comparisons, t m of them online)
        (a1, a2) ~ strategy(view_t)                 m comparisons x ~ d0, labels from the true oracle
        D <- D ∪ D_t

The three parts are small bundles of pure functions over their own NamedTuple state (optax-like):

- the reward learner (``RewardLearner``, registry ``REWARD_LEARNERS``, option ``learner``):
  ``state = init(key, instance, hidden)``, ``fit, state = fit(state, instance, data, lam, options)``.
  ``linear``: the BT-MLE of ``algorithms.core.bt_mle`` on ``phi`` (state: ``theta``, the warm start);
  ``neural``: an MLP reward (``algorithms.core.neural_mle``) refitted by ``neural_steps`` warm-started
  Adam steps, whose last hidden layer ``h(x, a)`` serves as the features of a neural-linear world:
  ``theta_t`` is the output weights and ``Sigma_t = lam I + sum (h(a1) - h(a2))(h(a1) - h(a2))^T``, so
  every strategy runs unchanged on ``view.instance.phi = h``. ``auto`` (the default) picks ``neural``
  on a neural reward and ``linear`` otherwise. Only an ``exact`` learner in a linear world has P1's
  confidence set (``bound`` and ``in_confidence_set`` are NaN otherwise).
- the agent (``Agent``; the registry ``algorithms.online.agents.AGENTS``):
  ``state = init(instance, options)``, ``policy, state = act(view, state, hyper)`` with ``view`` an
  ``AgentView`` and ``hyper`` the traced numbers of the algorithm's agent options
  (``hyper(algorithm_options, options, kl_coef)``), so one compiled loop serves several algorithms.
- the strategy (``algorithms.online.strategies``): ``Pair = strategy(StrategyView)``.

The metrics at iteration ``t`` are those of the policy trained on ``t`` online batches, so
``queries = t m`` (iteration ``T``'s batch is drawn but never used). With ``J`` the KL-regularised value
(``bandits.evaluation``), ``P_s`` the pair law of batch ``s`` and ``pi1_s``, ``pi2_s`` its first and second
marginals (the laws of the first and second queried action; ``strategies.first_marginal`` /
``second_marginal``), ``r*`` the true reward and ``r*(x, a*) = max_a r*(x, a)``, per iteration:

- ``subopt = J(pi*) - J(pi_t)``, ``subopt_kl = subopt + eta E_x KL(pi* || pi_t)`` (exact);
- the cumulative regrets over the ``t m`` queries made so far (batches ``s < t``; the offline data of the
  hybrid are not charged), each the exact expectation of the per-query quantity under ``P_s``
  (docs/theory.md §2.4, §9.1 item 15):

  - ``agent_regret_kl = sum_{s<t} m subopt_kl(pi_s)``: the main agent's cumulative KL-regularised
    suboptimality; it charges the queries *as if* both actions came from ``pi_s``, which holds for
    ``self_play`` only;
  - ``query_regret = sum_{s<t} m [J(pi*) - (J(pi1_s) + J(pi2_s)) / 2]``: the KL-regularised regret of
    the queries made, both actions charged (``= sum m (subopt(pi1_s) + subopt(pi2_s)) / 2``);
  - ``query_regret_kl = sum_{s<t} m (subopt_kl(pi1_s) + subopt_kl(pi2_s)) / 2``: the same in P1's form
    (``subopt_kl``), equal to ``agent_regret_kl`` when ``pi1_s = pi2_s = pi_s``;
  - ``avg_regret = sum_{s<t} m E_{x~d0} E_{(a1,a2)~P_s} [r*(x, a*) - (r*(x, a1) + r*(x, a2)) / 2]``:
    the unregularised average regret of the dueling-bandit literature (P3's deployment regret);
  - ``weak_regret = sum_{s<t} m E_{x~d0} E_{(a1,a2)~P_s} min_i [r*(x, a*) - r*(x, a_i)]``: the weak
    regret, the expectation of the smaller of the two actions' regrets under the *joint* law (not the
    smaller of the two expectations);
- the diagnostics of the information gathered: ``identical_pairs = E_{x~d0} sum_a P_t(a, a | x)``, the
  probability that a query of batch ``t`` compares an action with itself (``z = 0``: no information);
  ``log_det_gram = log det Sigma_t``, ``Sigma_t = lam I + sum_{z in D} z z^T`` on the learner's features
  (the Gram of ``C_t``); ``log_det_fisher = log det (lam I + sum_{z in D} sigma'(<theta*, z>) z z^T)``, the
  regularised BT Fisher information at ``theta*`` of the data ``D`` of ``pi_t`` (only for an exact learner
  in a linear world, NaN otherwise);
- ``kl_to_ref`` of ``pi_t`` and ``kl_to_ref_explorer``: ``E_x KL(P(a2 | x) || pi0)`` of the
  strategy's second action;
- ``confidence_width``: ``beta_t ||phi_bar(pi*) - phi_bar(pi0)||_{Sigma_t^{-1}}``, the coverage term of
  P1's online/hybrid bound (docs/theory.md §2.4; the quantity E4 tracks);
- ``bound``: on the event ``theta* in C_t``, ``subopt_kl(Gibbs(theta_t)) <= beta_t
  ||phi_bar(pi*) - phi_bar(pi_t)||_{Sigma_t^{-1}}`` (the plug-in bound of ``algorithms.offline.gshf``,
  which holds for any data-collection rule since it is deterministic given the data), for an agent
  whose entry says the plug-in bound applies (``plug_in_bound``: the Gibbs agent), NaN otherwise;
  ``in_confidence_set``: ``||theta_t - theta*||_{Sigma_t} <= beta_t``;
- ``strategy_info``: the strategy's diagnostic (the enhancer: whether ``Pi_t`` had a non-trivial member).

Randomness: the online comparisons of batch ``t`` are indices ``t m .. t m + m - 1`` of one stream
(``bandits.data``), so strategies run on one seed share contexts and label uniforms (common random
numbers); strategies get their own key per iteration, and so do agents. An independent pair
(``strategies.independent``) is sampled from its factors (``sample_preference_data``), a joint law from
the table (``sample_joint_preference_data``): the same draws up to rounding at the CDF boundaries.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import confidence as conf
from algorithms.core import neural_mle, spd_solve
from algorithms.core.bt_mle import bt_hessian, fit_bt_mle
from algorithms.offline.gshf import plug_in_bound
from algorithms.online import iterative_dpo, strategies
from bandits import (
    Instance,
    LinearReward,
    MLPReward,
    PreferenceData,
    context_mean,
    feature_differences,
    kl_to_reference,
    optimal_policy,
    public_view,
    sample_joint_preference_data,
    sample_preference_data,
    suboptimality,
    suboptimality_kl,
)
from bandits import validation as v
from bandits.rewards import mlp_features


@dataclasses.dataclass(frozen=True)
class OnlineOptions:
    """Static options of the loop (hashable: one compiled program per distinct value), validated on creation.

    iterations: ``T`` (the loop runs ``T + 1`` evaluations, ``>= 0``); batch_size: ``m`` comparisons per
    iteration; newton_steps: the linear learner's Newton iterations per refit; learner: ``auto`` or a
    name in ``REWARD_LEARNERS``; neural_steps, neural_learning_rate: the neural learner's warm-started
    Adam steps per iteration and step size; bonus_coef: ``alpha`` of the DPO agent's likelihood bonus
    (``algorithms.online.iterative_dpo``); dpo_policy: the DPO agent's class (``linear`` | ``tabular``);
    dpo_steps, dpo_learning_rate: its Adam steps per iteration and step size; strategy_options: the
    built-in strategies' options (``k`` draws of the rejection-sampling pairings, the enhancer's search).
    """

    iterations: int = 16
    batch_size: int = 64
    newton_steps: int = 30
    learner: str = "auto"
    neural_steps: int = 30
    neural_learning_rate: float = 0.02
    bonus_coef: float = 0.0
    dpo_policy: str = "linear"
    dpo_steps: int = 100
    dpo_learning_rate: float = 0.05
    strategy_options: strategies.StrategyOptions = strategies.StrategyOptions()

    def __post_init__(self):
        v.check_int("iterations", self.iterations, 0)
        v.check_int("batch_size", self.batch_size, 1)
        v.check_int("newton_steps", self.newton_steps, 1)
        v.check_choice("learner", self.learner, ("auto",) + tuple(REWARD_LEARNERS))
        v.check_int("neural_steps", self.neural_steps, 1)
        v.check_float("neural_learning_rate", self.neural_learning_rate, low=0.0, low_open=True)
        v.check_float("bonus_coef", self.bonus_coef, low=0.0)
        v.check_choice("dpo_policy", self.dpo_policy, iterative_dpo.POLICY_CLASSES)
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)

    def learner_name(self, reward: str) -> str:
        """The reward learner run on a reward of kind ``reward`` (``auto``: ``neural`` for a neural reward)."""
        if self.learner != "auto":
            return self.learner
        return "neural" if reward == "neural" else "linear"


# --- the reward learner ------------------------------------------------------------------------------

class RewardFit(NamedTuple):
    """A reward learner's estimate: a linear model ``<theta, world.phi>`` on its own features."""

    world: Instance       # the public instance with the learner's features as phi (phi itself when linear)
    theta: jax.Array      # [d'] weights on world.phi
    z: jax.Array          # [capacity, d'] feature differences of the buffer's rows (0 on empty rows)


class RewardLearner(NamedTuple):
    """``state = init(key, instance, hidden)``; ``fit, state = fit(state, instance, data, lam, options)``:
    refit on the buffer ``data`` (warm start from ``state``), return the estimate and the next warm start."""

    fit: Callable[[Any, Instance, PreferenceData, jax.Array, OnlineOptions], tuple[RewardFit, Any]]
    init: Callable[[jax.Array, Instance, int], Any]
    label: str = ""
    exact: bool = False   # a linear world's theta* is a point of the model: the confidence set is P1's


class LinearLearnerState(NamedTuple):
    theta: jax.Array      # the last BT-MLE (the next refit's warm start)


class NeuralLearnerState(NamedTuple):
    network: MLPReward    # the last fitted network (the next refit's warm start)


def _linear_fit(state: LinearLearnerState, instance, data, lam, options):
    """``theta_t``: the ridge-regularised BT-MLE on ``z = phi(x, a1) - phi(x, a2)`` (Newton; docs/theory.md §1.4)."""
    z = feature_differences(instance, data)
    theta = fit_bt_mle(z, data.y, data.mask, lam, theta0=state.theta, max_iter=options.newton_steps).theta
    return RewardFit(instance, theta, z), LinearLearnerState(theta)


def _neural_fit(state: NeuralLearnerState, instance, data, lam, options):
    """The MLP's BT loss by Adam; ``theta_t = w2`` on the last-layer features ``h(x, a)`` (neural-linear)."""
    net = neural_mle.fit_network(state.network, instance.phi, data, lam, options.neural_steps,
                                 options.neural_learning_rate).params
    world = instance._replace(phi=mlp_features(net, instance.phi))
    z = jnp.where(data.mask[:, None], world.phi[data.x, data.a1] - world.phi[data.x, data.a2], 0.0)
    return RewardFit(world, net.w2, z), NeuralLearnerState(net)


REWARD_LEARNERS: dict[str, RewardLearner] = {
    "linear": RewardLearner(_linear_fit, lambda key, inst, hidden: LinearLearnerState(
        jnp.zeros(inst.dim, inst.phi.dtype)), label="linear BT-MLE", exact=True),
    "neural": RewardLearner(_neural_fit, lambda key, inst, hidden: NeuralLearnerState(
        neural_mle.init_network(key, inst.dim, hidden, inst.phi.dtype)), label="neural-linear MLP"),
}


def register_reward_learner(name: str, learner: RewardLearner, *, overwrite: bool = False) -> RewardLearner:
    """Add a reward learner under ``name`` (then ``learner=name`` selects it); a taken name is refused
    unless ``overwrite``."""
    if not isinstance(name, str) or name == "auto" or not name.replace("_", "").replace("-", "").isalnum():
        v.fail("reward learner name", name, "a non-empty name of letters, digits, '_' and '-' other than 'auto'")
    if name in REWARD_LEARNERS and not overwrite:
        v.fail("reward learner name", name, f"a name not yet registered (taken: {', '.join(REWARD_LEARNERS)}), "
               "or overwrite=True")
    if not isinstance(learner, RewardLearner) or not callable(learner.fit) or not callable(learner.init):
        v.fail(f"reward learner {name!r}", learner, "a RewardLearner(fit, init, label, exact)")
    REWARD_LEARNERS[name] = learner._replace(label=learner.label or name)
    return REWARD_LEARNERS[name]


# --- the agent ---------------------------------------------------------------------------------------

class AgentView(NamedTuple):
    """What the agent knows at iteration ``t`` (built inside the traced loop)."""

    instance: Instance         # features phi, pi0, d0, kl_coef; reward and skew zeroed
    data: PreferenceData       # the buffer: every comparison so far (fixed capacity, masked)
    world: Instance            # the reward learner's world (its features as phi)
    theta: jax.Array           # [d'] the learner's weights on world.phi
    reward_hat: jax.Array      # [n_x, K] <theta, world.phi>
    confidence: conf.ConfidenceSet  # centre theta, Gram Sigma_t, Cholesky, radius beta_t
    nu: jax.Array              # [n_x, d'] reference vector of the uncertainties
    uncertainty: jax.Array     # [n_x, K] Gamma(x, a) = ||h(x, a) - nu(x)||_{Sigma_t^{-1}} (no beta)
    iteration: jax.Array       # scalar int t
    key: jax.Array             # PRNG key for randomised agents
    options: OnlineOptions


class AgentPolicy(NamedTuple):
    """What ``Agent.act`` returns besides its next state."""

    log_pi: jax.Array                 # [n_x, K] pi_t: evaluated, and the strategy's main agent
    log_pi_cal: jax.Array | None = None  # the calibration policy of the ``calibration`` strategy (None: pi0)


class Agent(NamedTuple):
    """An online agent: ``state = init(instance, options)``; ``policy, state = act(view, state, hyper)``,
    ``hyper = hyper(algorithm_options, options, kl_coef)`` (numbers; plain floats for float arguments, so a
    table of algorithms is static). Registry: ``algorithms.online.agents``."""

    act: Callable[[AgentView, Any, Any], tuple[AgentPolicy, Any]]
    init: Callable[[Instance, OnlineOptions], Any] = lambda instance, options: NoState()
    hyper: Callable[[Any, OnlineOptions, Any], Any] = lambda algorithm_options, options, kl_coef: ()
    label: str = ""
    plug_in_bound: bool = False   # pi_t = Gibbs(theta_t): P1's plug-in bound applies
    linestyle: str = "-"          # the line style of the agent's family in figures
    options: tuple[str, ...] = ()  # the names of the algorithm options ``hyper`` reads


class NoState(NamedTuple):
    """The state of an agent without memory across iterations."""


# --- the loop ----------------------------------------------------------------------------------------

class Regrets(NamedTuple):
    """The cumulative regrets of the module docstring (sums over the batches ``s < t``), or one batch's
    per-query costs (``query_costs``)."""

    agent_regret_kl: jax.Array   # subopt_kl(pi_s)
    query_regret: jax.Array      # J(pi*) - (J(pi1_s) + J(pi2_s)) / 2
    query_regret_kl: jax.Array   # (subopt_kl(pi1_s) + subopt_kl(pi2_s)) / 2
    avg_regret: jax.Array        # E_x E_{P_s} [r*(x, a*) - (r*(x, a1) + r*(x, a2)) / 2]
    weak_regret: jax.Array       # E_x E_{P_s} [r*(x, a*) - max(r*(x, a1), r*(x, a2))]


def query_costs(instance: Instance, log_pi: jax.Array, pair) -> Regrets:
    """The expected cost of one query drawn from the pair law (a ``strategies.Pair``, or its ``log_joint
    [n_x, K, K]``) while the main agent is ``log_pi``, exactly (finite sums; module docstring): ``Regrets``
    of one query. A factored pair is priced from its factors: ``E[r(a1) + r(a2)] / 2`` from the marginals,
    ``E max(r(a1), r(a2)) = sum_{a,b} pi1(a) pi2(b) max(r_a, r_b)``."""
    if not isinstance(pair, strategies.Pair):
        pair = strategies.Pair(pair, jnp.asarray(jnp.nan, pair.dtype))
    log_pi1, log_pi2 = strategies.first_marginal(pair), strategies.second_marginal(pair)
    reward = instance.reward
    best = jnp.max(reward, axis=-1)
    best_of_two = jnp.maximum(reward[:, :, None], reward[:, None, :])
    mean_of_two = 0.5 * (jnp.sum(jnp.exp(log_pi1) * reward, -1) + jnp.sum(jnp.exp(log_pi2) * reward, -1))
    max_of_two = strategies.by_law(
        pair, lambda p: jnp.einsum("xa,xab,xb->x", jnp.exp(log_pi1), best_of_two, jnp.exp(log_pi2)),
        lambda p: jnp.sum(jnp.exp(p.log_joint) * best_of_two, axis=(1, 2)))
    return Regrets(
        agent_regret_kl=suboptimality_kl(instance, log_pi),
        query_regret=0.5 * (suboptimality(instance, log_pi1) + suboptimality(instance, log_pi2)),
        query_regret_kl=0.5 * (suboptimality_kl(instance, log_pi1) + suboptimality_kl(instance, log_pi2)),
        avg_regret=context_mean(instance, best - mean_of_two),
        weak_regret=context_mean(instance, best - max_of_two))


def log_det(chol: jax.Array) -> jax.Array:
    """``log det A = 2 sum_i log L_ii`` from the lower Cholesky factor ``L`` of ``A``."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


class LoopState(NamedTuple):
    """The carry of the loop's ``lax.scan``."""

    buffer: PreferenceData     # offline data, then each online batch written at its offset
    reward_learner: Any        # the reward learner's state (e.g. ``LinearLearnerState``)
    agent: Any                 # the agent's state (e.g. ``NoState``; the DPO agent's parameters)
    regret: Regrets            # the cumulative regrets over the batches s < t (module docstring)


class OnlineTrace(NamedTuple):
    """Per-iteration metrics, each ``[T + 1]`` (module docstring)."""

    queries: jax.Array
    subopt: jax.Array
    subopt_kl: jax.Array
    agent_regret_kl: jax.Array
    query_regret: jax.Array
    query_regret_kl: jax.Array
    avg_regret: jax.Array
    weak_regret: jax.Array
    identical_pairs: jax.Array
    log_det_gram: jax.Array
    log_det_fisher: jax.Array
    kl_to_ref: jax.Array
    kl_to_ref_explorer: jax.Array
    confidence_width: jax.Array
    bound: jax.Array
    in_confidence_set: jax.Array
    strategy_info: jax.Array


def empty_data(capacity: int) -> PreferenceData:
    zeros = jnp.zeros((capacity,), jnp.int32)
    return PreferenceData(zeros, zeros, zeros, zeros, jnp.zeros((capacity,), bool))


def _write(buffer: PreferenceData, batch: PreferenceData, offset) -> PreferenceData:
    return PreferenceData(*(jax.lax.dynamic_update_slice(b, n, (offset,)) for b, n in zip(buffer, batch)))


def run_online(key: jax.Array, instance: Instance, strategy: strategies.Strategy, agent: Agent,
               options: OnlineOptions, confidence: conf.ConfidenceConfig, *, reward_norm, hidden: int = 32,
               hyper=None, offline: PreferenceData | None = None) -> OnlineTrace:
    """Run the loop on one instance (module docstring).

    ``confidence``: the ridge ``lam``, radius and reference vector of ``C_t``; ``reward_norm``: ``B`` of
    the ``theory`` radius; ``hidden``: the neural learner's width (both from the ``InstanceConfig``);
    ``hyper``: the agent's numbers (default ``agent.hyper({}, options, kl_coef)``: its default options),
    traced, so that one compiled program serves several algorithms of one agent; ``offline``: the
    hybrid's initial data.
    """
    dtype = instance.phi.dtype
    m, n_iter = options.batch_size, options.iterations + 1
    n_off = 0 if offline is None else offline.capacity
    buffer = empty_data(n_off + n_iter * m)
    if offline is not None:
        buffer = _write(buffer, offline, 0)
    k_data, k_strategy, k_net = jax.random.split(key, 3)
    k_agent = jax.random.fold_in(key, 3)
    public = public_view(instance)
    pi_star = optimal_policy(instance)
    linear_world = isinstance(instance.params, LinearReward)
    learner = REWARD_LEARNERS[options.learner_name("linear" if linear_world else "neural")]
    exact = learner.exact and linear_world
    theta_star = instance.theta_star if exact else None
    lam = jnp.asarray(confidence.lam, dtype)
    if hyper is None:
        hyper = agent.hyper({}, options, instance.kl_coef)
    hyper = jax.tree.map(lambda x: jnp.asarray(x, dtype), hyper)

    def iteration(state: LoopState, t):
        buf = state.buffer
        fit, learner_state = learner.fit(state.reward_learner, public, buf, lam, options)
        world, theta, z = fit
        gram = conf.gram_matrix(z, buf.mask, lam)
        beta = confidence.radius(world.phi.shape[-1], jnp.sum(buf.mask), reward_norm, z=z, mask=buf.mask, theta=theta,
                                 gram=gram)
        cs = conf.confidence_set(theta, gram, beta.astype(dtype))
        nu = conf.reference_vector(world, confidence.reference_vector)
        uncertainty = conf.pointwise_uncertainty(world, cs.chol, nu)
        reward_hat = world.phi @ theta
        policy, agent_state = agent.act(
            AgentView(instance=public, data=buf, world=world, theta=theta, reward_hat=reward_hat, confidence=cs,
                      nu=nu, uncertainty=uncertainty, iteration=t, key=jax.random.fold_in(k_agent, t),
                      options=options),
            state.agent, hyper)
        log_pi = policy.log_pi
        view = strategies.StrategyView(
            instance=world, theta=theta, confidence=cs, nu=nu, log_pi=log_pi,
            log_pi_cal=instance.log_pi0 if policy.log_pi_cal is None else policy.log_pi_cal,
            reward_hat=reward_hat, uncertainty=uncertainty, hessian=bt_hessian(theta, z, buf.mask, lam),
            iteration=t, key=jax.random.fold_in(k_strategy, t), options=options.strategy_options)
        pair = strategy(view)
        batch = strategies.by_law(
            pair, lambda p: sample_preference_data(k_data, instance, p.log_pi1, p.log_pi2, m, start=t * m),
            lambda p: sample_joint_preference_data(k_data, instance, p.log_joint, m, start=t * m))

        costs = query_costs(instance, log_pi, pair)
        coverage = conf.expected_feature(world, pi_star) - conf.expected_feature(world, instance.log_pi0)
        nan = jnp.asarray(jnp.nan, dtype)
        fisher = (log_det(spd_solve.cholesky(bt_hessian(theta_star, z, buf.mask, lam))) if exact else nan)
        record = OnlineTrace(
            queries=(t * m).astype(dtype), subopt=suboptimality(instance, log_pi), subopt_kl=costs.agent_regret_kl,
            **state.regret._asdict(),
            identical_pairs=context_mean(instance, strategies.pair_identical_mass(pair)),
            log_det_gram=log_det(cs.chol), log_det_fisher=fisher, kl_to_ref=kl_to_reference(instance, log_pi),
            kl_to_ref_explorer=kl_to_reference(instance, strategies.second_marginal(pair)),
            confidence_width=beta * conf.dual_norm(cs.chol, coverage),
            bound=plug_in_bound(world, cs, pi_star, log_pi) if exact and agent.plug_in_bound else nan,
            in_confidence_set=conf.contains(cs, theta_star).astype(dtype) if exact else nan,
            strategy_info=pair.info.astype(dtype))
        regret = jax.tree.map(lambda total, cost: total + m * cost, state.regret, costs)
        return LoopState(_write(buf, batch, n_off + t * m), learner_state, agent_state, regret), record

    zero = jnp.asarray(0.0, dtype)
    init = LoopState(buffer, learner.init(k_net, public, hidden), agent.init(public, options),
                     Regrets(*(zero,) * len(Regrets._fields)))
    _, trace = jax.lax.scan(iteration, init, jnp.arange(n_iter))
    return trace
