"""P1's batch-online and hybrid loop (Xiong et al., ICML 2024, online GSHF; docs/theory.md §2.4-2.5).

One seed, ``T + 1`` iterations of a ``lax.scan`` with fixed-shape buffers (vmap over seeds outside)::

    D <- D_off (hybrid; empty online)
    for t = 0 .. T:
        theta_t  <- BT-MLE on D (warm-started from theta_{t-1})
        Sigma_t  <- lam I + sum_{z in D} z z^T,  beta_t <- radius(n_t = |D|)     (sum-normalised Gram)
        pi_t     <- Gibbs(<theta_t, phi>)          agent "gibbs": P1's main agent
                    DPO(+bonus) on D                agent "dpo": iterative DPO / XPO / VPO / SELM
        record the metrics of pi_t (its data: n_t comparisons, t m of them online)
        (a1, a2) ~ strategy(view_t)                 m comparisons x ~ d0, labels from the true oracle
        D <- D ∪ D_t

Reward learner (``learner``): ``linear``, the BT-MLE above; or ``neural``, an MLP reward
(``algorithms.core.neural_mle``) refitted by ``neural_steps`` warm-started Adam steps per iteration, whose
last hidden layer ``h(x, a)`` serves as the features of a neural-linear world: ``theta_t`` is the output
weights, ``Sigma_t = lam I + sum (h(a1) - h(a2))(h(a1) - h(a2))^T``, so every strategy runs unchanged on
``view.instance.phi = h`` (its ``bound`` and ``in_confidence_set`` are NaN: no exact confidence set).

The metrics at iteration ``t`` are those of the policy trained on ``t`` online batches, so
``queries = t m`` (iteration ``T``'s batch is drawn but never used). Per iteration:

- ``subopt = J(pi*) - J(pi_t)``, ``subopt_kl = subopt + eta E_x KL(pi* || pi_t)`` (exact);
- ``regret_kl``: the cumulative KL-regularised regret of the queries made so far,
  ``sum_{s < t} m subopt_kl(pi_s)`` (each of the ``m`` queries of batch ``s`` is made with ``pi_s``);
- ``kl_to_ref`` of ``pi_t`` and ``kl_to_ref_explorer``: ``E_x KL(P(a2 | x) || pi0)`` of the
  strategy's second action;
- ``confidence_width``: ``beta_t ||phi_bar(pi*) - phi_bar(pi0)||_{Sigma_t^{-1}}``, the coverage term of
  P1's online/hybrid bound (docs/theory.md §2.4; the quantity E4 tracks);
- ``bound``: on the event ``theta* in C_t``, ``subopt_kl(Gibbs(theta_t)) <= beta_t
  ||phi_bar(pi*) - phi_bar(pi_t)||_{Sigma_t^{-1}}`` (the plug-in bound of ``algorithms.offline.gshf``,
  which holds for any data-collection rule since it is deterministic given the data); NaN for the
  DPO agent; ``in_confidence_set``: ``||theta_t - theta*||_{Sigma_t} <= beta_t``;
- ``strategy_info``: the strategy's diagnostic (the enhancer: whether ``Pi_t`` had a non-trivial member).

Randomness: the online comparisons of batch ``t`` are indices ``t m .. t m + m - 1`` of one stream
(``bandits.data``), so strategies run on one seed share contexts and label uniforms (common random
numbers); strategies get their own key per iteration.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from algorithms.core import confidence as conf
from algorithms.online import iterative_dpo, strategies
from algorithms.core import neural_mle
from algorithms.core.bt_mle import bt_hessian, fit_bt_mle
from algorithms.offline.gshf import linear_gibbs, plug_in_bound
from bandits import (Instance, LinearReward, PreferenceData, feature_differences, kl_to_reference,
                     optimal_policy, sample_joint_preference_data, suboptimality, suboptimality_kl)
from bandits import validation as v
from bandits.rewards import mlp_features

AGENTS = ("gibbs", "dpo")
LEARNERS = ("linear", "neural")


@dataclasses.dataclass(frozen=True)
class OnlineSettings:
    """Static settings of the loop (hashable: one compiled program per distinct value)."""

    iterations: int = 16            # T (the loop runs T + 1 evaluations)
    batch_size: int = 64            # m
    lam: float = 1.0
    beta_mode: str = "sqrt_d"
    c_beta: float = 1.0
    delta: float = 0.05
    reward_norm: float = 2.0        # B in the theory radius
    reference_vector: str = "pi0"
    newton_steps: int = 30
    agent: str = "gibbs"
    bonus: str = "none"             # dpo agent: none | xpo | vpo | selm
    bonus_coef: float = 0.0         # alpha
    restart: bool = False           # dpo agent: restart from pi0 each iteration instead of warm start
    dpo_policy: str = "linear"      # dpo agent's policy class: linear | tabular
    dpo_steps: int = 100
    dpo_learning_rate: float = 0.05
    learner: str = "linear"         # reward model: linear BT-MLE, or an MLP (neural-linear uncertainty)
    neural_hidden: int = 32
    neural_steps: int = 30          # warm-started Adam steps per iteration
    neural_learning_rate: float = 0.02
    options: strategies.StrategyOptions = strategies.StrategyOptions()

    def __post_init__(self):
        v.check_int("iterations", self.iterations, 0)
        v.check_int("batch_size", self.batch_size, 1)
        v.check_float("lam", self.lam, low=0.0, low_open=True)
        v.check_choice("beta_mode", self.beta_mode, conf.BETA_MODES)
        v.check_float("c_beta", self.c_beta, low=0.0, low_open=True)
        v.check_float("delta", self.delta, low=0.0, high=1.0, low_open=True)
        v.check_float("reward_norm", self.reward_norm, low=0.0, low_open=True)
        v.check_choice("reference_vector", self.reference_vector, conf.REFERENCE_VECTORS)
        v.check_int("newton_steps", self.newton_steps, 1)
        v.check_choice("agent", self.agent, AGENTS)
        v.check_choice("learner", self.learner, LEARNERS)
        v.check_int("neural_hidden", self.neural_hidden, 1)
        v.check_int("neural_steps", self.neural_steps, 1)
        v.check_float("neural_learning_rate", self.neural_learning_rate, low=0.0, low_open=True)
        v.check_choice("bonus", self.bonus, iterative_dpo.BONUSES)
        if self.agent == "gibbs" and self.bonus != "none":
            v.fail("bonus", self.bonus, "'none' for agent='gibbs' (a likelihood bonus needs agent='dpo')")
        v.check_float("bonus_coef", self.bonus_coef, low=0.0)
        v.check_choice("dpo_policy", self.dpo_policy, iterative_dpo.POLICY_CLASSES)
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)


class OnlineTrace(NamedTuple):
    """Per-iteration metrics, each ``[T + 1]`` (module docstring)."""

    queries: jax.Array
    subopt: jax.Array
    subopt_kl: jax.Array
    regret_kl: jax.Array
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


def run_online(key: jax.Array, instance: Instance, strategy: strategies.Strategy, settings: OnlineSettings,
               offline: PreferenceData | None = None,
               agent: iterative_dpo.AgentParams | None = None) -> OnlineTrace:
    """Run the loop on one instance (module docstring); ``offline``: the hybrid's initial data.

    ``agent`` (DPO agent only) overrides ``settings.bonus``, ``bonus_coef`` and ``restart`` with traced
    numbers, so that one compiled program serves several bonuses (``iterative_dpo.AgentParams``).
    """
    s = settings
    dtype = instance.phi.dtype
    m, n_iter = s.batch_size, s.iterations + 1
    n_off = 0 if offline is None else offline.capacity
    buffer = empty_data(n_off + n_iter * m)
    if offline is not None:
        buffer = _write(buffer, offline, 0)
    k_data, k_strategy, k_net = jax.random.split(key, 3)
    public = strategies.public_view(instance)
    pi_star = optimal_policy(instance)
    linear_world = isinstance(instance.params, LinearReward)
    theta_star = instance.theta_star if linear_world else None
    lam = jnp.asarray(s.lam, dtype)

    def learn_reward(buf, learner_prev):
        """(features world, linear weights on its features, feature differences, learner state)."""
        if s.learner == "linear":
            z = feature_differences(instance, buf)
            theta = fit_bt_mle(z, buf.y, buf.mask, lam, theta0=learner_prev, max_iter=s.newton_steps).theta
            return public, theta, z, theta
        net = neural_mle.fit_network(learner_prev, instance.phi, buf, lam, s.neural_steps,
                                     s.neural_learning_rate).params
        world = public._replace(phi=mlp_features(net, instance.phi))
        z = jnp.where(buf.mask[:, None], world.phi[buf.x, buf.a1] - world.phi[buf.x, buf.a2], 0.0)
        return world, net.w2, z, net

    def iteration(carry, t):
        buf, learner_prev, params_prev, log_pi_prev, regret = carry
        world, theta, z, learner = learn_reward(buf, learner_prev)
        dim = world.phi.shape[-1]
        gram = conf.gram_matrix(z, buf.mask, lam)
        n_t = jnp.sum(buf.mask)
        beta = conf.confidence_radius(s.beta_mode, dim, n_t, lam, s.reward_norm, s.delta, s.c_beta)
        cs = conf.confidence_set(theta, gram, beta.astype(dtype))
        nu = conf.reference_vector(world, s.reference_vector)
        if s.agent == "gibbs":
            params, log_pi = params_prev, linear_gibbs(world, theta)
            log_pi_cal = instance.log_pi0
        else:
            log_pi_cal = jnp.where(agent.previous_calibration > 0, log_pi_prev, instance.log_pi0)
            init = jax.tree.map(lambda a, b_: jnp.where(agent.restart > 0, a, b_), dpo_init, params_prev)
            params = iterative_dpo.train_dpo_agent_with(s.dpo_policy, init, instance, buf, log_pi_cal,
                                                        agent.coef, agent.ref_coef, s.dpo_steps,
                                                        s.dpo_learning_rate)
            log_pi = iterative_dpo.policy_log_probs(s.dpo_policy, params, instance)
        view = strategies.StrategyView(
            instance=world, theta=theta, confidence=cs, nu=nu, log_pi=log_pi, log_pi_cal=log_pi_cal,
            reward_hat=world.phi @ theta, uncertainty=conf.pointwise_uncertainty(world, cs.chol, nu),
            hessian=bt_hessian(theta, z, buf.mask, lam), iteration=t,
            key=jax.random.fold_in(k_strategy, t), options=s.options)
        pair = strategy(view)
        batch = sample_joint_preference_data(k_data, instance, pair.log_joint, m, start=t * m)
        new_buf = _write(buf, batch, n_off + t * m)

        subopt = suboptimality(instance, log_pi)
        subopt_kl = suboptimality_kl(instance, log_pi)
        coverage = conf.expected_feature(world, pi_star) - conf.expected_feature(world, instance.log_pi0)
        exact = s.agent == "gibbs" and s.learner == "linear" and linear_world
        bound = plug_in_bound(world, cs, pi_star, log_pi) if exact else jnp.asarray(jnp.nan, dtype)
        in_cs = (conf.contains(cs, theta_star).astype(dtype) if s.learner == "linear" and linear_world
                 else jnp.asarray(jnp.nan, dtype))
        record = OnlineTrace(
            queries=(t * m).astype(dtype), subopt=subopt, subopt_kl=subopt_kl, regret_kl=regret,
            kl_to_ref=kl_to_reference(instance, log_pi),
            kl_to_ref_explorer=kl_to_reference(instance, strategies.second_marginal(pair)),
            confidence_width=beta * conf.dual_norm(cs.chol, coverage),
            bound=bound, in_confidence_set=in_cs, strategy_info=pair.info.astype(dtype))
        return (new_buf, learner, params, log_pi, regret + m * subopt_kl), record

    dpo_init = iterative_dpo.initial_params(s.dpo_policy, instance)
    if agent is None:
        agent = iterative_dpo.AgentParams(*(jnp.asarray(x, dtype) for x in iterative_dpo.agent_params(
            s.bonus, 1.0, 1.0, s.restart)))
        coef, _ = iterative_dpo.bonus_coefficients(s.bonus, jnp.asarray(s.bonus_coef, dtype), instance.kl_coef)
        agent = agent._replace(coef=jnp.asarray(coef, dtype))
    if s.learner == "linear":
        learner0 = jnp.zeros(instance.dim, dtype)
    else:
        learner0 = neural_mle.init_network(k_net, instance.dim, s.neural_hidden, dtype)
    init = (buffer, learner0, dpo_init, instance.log_pi0, jnp.asarray(0.0, dtype))
    _, trace = jax.lax.scan(iteration, init, jnp.arange(n_iter))
    return trace
