"""P1's iterative DPO loop on a JAX tiny LM, with exact evaluation (docs/llm_bridge.md §1.4, §5.4 test 8; docs/theory.md §2.5).

Iteration ``t = 1..T`` (Xiong et al. ICML 2024, P1 §2.5; the RLHFlow recipe):

1. for each prompt ``x`` draw ``n_groups`` groups of ``k`` responses from ``pi_{t-1}`` with the LM's own
   ancestral ``sample``;
2. score every draw with the gold reward ``r*(x, y)``, looked up in the exact instance's reward table at
   ``space.response_index(y)``;
3. pick one pair per group with a selector:

   - ``max_min``: best against worst draw (RLHFlow's default, ``k = 4``);
   - ``max_random``: best against a uniformly random other draw;
   - ``self_play``: the first two draws (law ``pi_{t-1} x pi_{t-1}``, no selection: random pairs).

   Draws are ranked by ``(r*, response index)``, the tie rule of ``algorithms.online.pairings``, so the pair law of
   ``max_min`` / ``max_random`` is exactly ``pairings.pairing_law`` at ``pi_{t-1}`` (checked in the tests);
4. label each pair by Bradley-Terry, ``y ~ Bernoulli(sigmoid(r*(a1) - r*(a2)))`` (``bandits.sample_labels``;
   ``deterministic_labels``: the better one always wins);
5. ``n_steps`` full-batch Adam steps on ``dpo_loss`` (``algorithms.core.preference_losses``, at the instance's ``kl_coef``)
   with the reference fixed at ``pi0`` (its log-probs cached once per pair), from ``pi_{t-1}`` (warm start) or
   from ``pi0`` (``restart``), on this iteration's pairs (fresh data) or on all pairs so far (``history``,
   a fixed-shape buffer with a validity mask); Adam's state starts afresh every iteration.

After every iteration the policy is enumerated over the whole response space
(``exact.enumerated_log_policy``) and the existing evaluators of ``bandits`` give the exact
``J(pi_t) = E_x[E_{pi_t} r* - eta KL(pi_t || pi0)]``, ``E r*``, ``KL(pi_t || pi0)`` and P1's ``subopt_kl``.

No claim is made that ``KL(pi_t || pi0)`` stays near ``KL(pi* || pi0)``: ``max_min`` pairs are not drawn from
``pi0 x pi0``, so DPO's fixed point is not ``Gibbs(r* / eta)``, and the overshoot depends on the data per
iteration, the steps and the labels (docs/llm_bridge.md §5.4 test 8, caveat). It is an output, not an assumption.

Everything is a pure function of ``(key, params0, instance, prompts)`` with the LM, the options and the
space static, so ``jax.vmap`` over seeds (keys, initial LMs and reward tables) equals a loop over seeds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import bandits as b
from algorithms.core.preference_losses import dpo_loss
from bandits import validation as v
from bandits.lm import exact, tiny, tree
from bandits.lm.space import ResponseSpace, response_index

SELECTORS = ("max_min", "max_random", "self_play")
MODELS = {"tiny": tiny, "tree": tree}


@dataclasses.dataclass(frozen=True)
class LMSpec:
    """The policy class and its response space: ``kind`` is ``"tiny"`` (``TinyTransformerLM``,
    misspecified) or ``"tree"`` (``TreeLM``, realizable); ``cfg`` its config; ``space`` the enumerable
    ``ResponseSpace``. Frozen and hashable (a static argument)."""

    kind: str
    cfg: Any
    space: ResponseSpace

    def __post_init__(self):
        v.check_choice("kind", self.kind, tuple(MODELS))
        want = tiny.TinyLMConfig if self.kind == "tiny" else tree.TreeConfig
        if not isinstance(self.cfg, want):
            v.fail("cfg", type(self.cfg).__name__, f"a {want.__name__} for kind={self.kind!r}")
        if not isinstance(self.space, ResponseSpace):
            v.fail("space", type(self.space).__name__, "a bandits.lm.ResponseSpace")

    @property
    def module(self):
        return MODELS[self.kind]


@dataclasses.dataclass(frozen=True)
class IterativeOptions:
    """Static options of the loop (module docstring).

    n_iterations: ``T >= 1``, the sample-label-train rounds (P1's iterative DPO, docs/theory.md §2.5
    item 1); k: draws per group; n_groups: groups (= pairs) per prompt and iteration; n_steps:
    Adam steps per iteration; learning_rate: Adam's step size; selector: the pair selector, one of
    ``SELECTORS``; restart: train from ``pi0`` each
    iteration instead of ``pi_{t-1}`` (the sampler is always ``pi_{t-1}``); history: train on all pairs so
    far instead of the fresh ones; deterministic_labels: the higher-reward response always wins.
    """

    n_iterations: int = 8
    k: int = 4
    n_groups: int = 64
    n_steps: int = 10
    learning_rate: float = 1e-2
    selector: str = "max_min"
    restart: bool = False
    history: bool = False
    deterministic_labels: bool = False

    def __post_init__(self):
        v.check_int("n_iterations", self.n_iterations, 1)
        v.check_int("k", self.k, 2)
        v.check_int("n_groups", self.n_groups, 1)
        v.check_int("n_steps", self.n_steps, 1)
        v.check_float("learning_rate", self.learning_rate, low=0.0, low_open=True)
        v.check_choice("selector", self.selector, SELECTORS)


class IterativeResult(NamedTuple):
    """Exact metrics of ``pi_0 .. pi_T`` (arrays ``[T + 1]``) and of ``pi*`` (scalars), final parameters."""

    value: jax.Array            # J(pi_t)
    reward_mean: jax.Array      # E_x E_{pi_t} r*
    kl_to_ref: jax.Array        # E_x KL(pi_t || pi0)
    subopt_kl: jax.Array        # J(pi*) - J(pi_t) + eta E_x KL(pi* || pi_t)
    chosen_reward: jax.Array    # mean r* of the chosen responses of iteration t (NaN at t = 0)
    rejected_reward: jax.Array  # mean r* of the rejected responses of iteration t (NaN at t = 0)
    value_star: jax.Array       # J(pi*)
    reward_star: jax.Array      # E r* under pi*
    kl_star_to_ref: jax.Array   # E_x KL(pi* || pi0)
    params: Any                 # pi_T


def log_policy(lm: LMSpec, params, prompts: jax.Array) -> jax.Array:
    """Exact ``log pi(y|x) [n_x, A]`` over ``enumerate_responses(lm.space)``."""
    return exact.enumerated_log_policy(lm.module.enumerated_token_logprobs, lm.cfg, params, prompts, lm.space)


def exact_lm_instance(lm: LMSpec, params0, prompts: jax.Array, reward: jax.Array, kl_coef) -> b.Instance:
    """The exact instance of ``pi0 = LM(params0)`` with the gold reward table ``reward [n_x, A]``."""
    return exact.exact_instance(log_policy(lm, params0, prompts), reward, kl_coef=kl_coef)


def response_ranks(reward: jax.Array) -> jax.Array:
    """Rank of each response in the stable ascending sort of ``reward [..., A]`` (ties by index), int32."""
    order = jnp.argsort(reward, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def select_pair(key: jax.Array, selector, ranks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions ``(i1, i2)`` in a group of draws with ranks ``ranks [k]`` (module docstring, step 3).

    ``selector``: a name in ``SELECTORS`` or its (possibly traced) index there.
    """
    if isinstance(selector, str):
        selector = SELECTORS.index(v.check_choice("selector", selector, SELECTORS))
    best = jnp.argmax(ranks)
    other = jax.random.randint(key, (), 0, ranks.shape[0] - 1)
    other = jnp.where(other >= best, other + 1, other)                 # uniform over the k - 1 other positions
    i1 = jnp.where(selector == 2, 0, best)
    i2 = jnp.stack([jnp.argmin(ranks), other, jnp.asarray(1, best.dtype)])[selector]
    return i1.astype(jnp.int32), i2.astype(jnp.int32)


def _metrics(instance: b.Instance, log_pi: jax.Array) -> tuple[jax.Array, ...]:
    return (b.value(instance, log_pi), b.expected_reward(instance, log_pi), b.kl_to_reference(instance, log_pi),
            b.suboptimality_kl(instance, log_pi))


def _collect(key, lm: LMSpec, options: IterativeOptions, selector, params, params0, instance, prompts, ranks):
    """One iteration's pairs: chosen/rejected tokens and masks ``[n_x * n_groups, L]``, the reference
    log-probs, and the chosen/rejected rewards."""
    n_x, g, k = prompts.shape[0], options.n_groups, options.k
    k_sample, k_select, k_label = jax.random.split(key, 3)
    sample = lambda kk, prompt: lm.module.sample(kk, lm.cfg, params, prompt, lm.space, g * k)
    tokens, mask = jax.vmap(sample)(jax.random.split(k_sample, n_x), prompts)      # [n_x, g k, L]
    L = lm.space.length
    tokens, mask = tokens.reshape(n_x, g, k, L), mask.reshape(n_x, g, k, L)
    idx = response_index(lm.space, tokens, mask)                                   # [n_x, g, k]
    draw_ranks = jnp.take_along_axis(ranks[:, None, :], idx.reshape(n_x, 1, g * k), axis=-1).reshape(n_x, g, k)
    sel_keys = jax.random.split(k_select, n_x * g).reshape(n_x, g)
    i1, i2 = jax.vmap(jax.vmap(lambda kk, r: select_pair(kk, selector, r)))(sel_keys, draw_ranks)
    pick = lambda arr, i: jnp.take_along_axis(arr, i[..., None], axis=2)[:, :, 0]
    a1, a2 = pick(idx, i1), pick(idx, i2)                                          # [n_x, g] response rows
    x = jnp.broadcast_to(jnp.arange(n_x)[:, None], (n_x, g))
    uniforms = jax.random.uniform(k_label, (n_x, g), instance.reward.dtype)
    y = b.sample_labels(uniforms, instance, x, a1, a2, options.deterministic_labels).astype(bool)
    pick_tok = lambda arr, i: jnp.take_along_axis(arr, i[:, :, None, None], axis=2)[:, :, 0]
    t1, t2, m1, m2 = pick_tok(tokens, i1), pick_tok(tokens, i2), pick_tok(mask, i1), pick_tok(mask, i2)
    yy = y[..., None]
    chosen = (jnp.where(yy, t1, t2), jnp.where(yy, m1, m2))
    rejected = (jnp.where(yy, t2, t1), jnp.where(yy, m2, m1))
    r_w = jnp.where(y, instance.reward[x, a1], instance.reward[x, a2])
    r_l = jnp.where(y, instance.reward[x, a2], instance.reward[x, a1])
    flat = lambda a: a.reshape((n_x * g,) + a.shape[2:])
    prompt_rows = flat(jnp.broadcast_to(prompts[:, None, :], (n_x, g, prompts.shape[1])))
    chosen, rejected = jax.tree.map(flat, chosen), jax.tree.map(flat, rejected)
    ref_w = _pair_logps(lm, params0, prompt_rows, *chosen)
    ref_l = _pair_logps(lm, params0, prompt_rows, *rejected)
    return (prompt_rows, chosen, rejected, ref_w, ref_l), (jnp.mean(r_w), jnp.mean(r_l))


def _pair_logps(lm: LMSpec, params, prompt_rows, tokens, mask) -> jax.Array:
    return jax.vmap(lambda p, t, m: lm.module.sequence_logprob(lm.cfg, params, p, t, m))(prompt_rows, tokens, mask)


def _train(lm: LMSpec, options: IterativeOptions, params, batch, valid, kl_coef):
    """``n_steps`` full-batch Adam steps on the (masked) DPO loss with the cached reference log-probs."""
    prompt_rows, chosen, rejected, ref_w, ref_l = batch
    optimizer = optax.adam(options.learning_rate)

    def loss(p):
        return dpo_loss(_pair_logps(lm, p, prompt_rows, *chosen), _pair_logps(lm, p, prompt_rows, *rejected),
                        ref_w, ref_l, kl_coef, mask=valid)

    def step(carry, _):
        p, state = carry
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), length=options.n_steps)
    return params, losses


def iterative_dpo(key: jax.Array, params0, instance: b.Instance, prompts: jax.Array, lm: LMSpec,
                  options: IterativeOptions, *, selector=None, restart=None) -> IterativeResult:
    """Run the loop of the module docstring from ``pi0 = LM(params0)``; pure, ``vmap``-able over seeds.

    ``instance``: the exact instance of ``pi0`` on ``prompts int32 [n_x, P]`` (``exact_lm_instance``): its
    ``reward [n_x, A]`` is the gold reward, its ``kl_coef`` that of the DPO loss and the ``eta`` of ``J``, its
    ``log_pi0`` the reference of every KL. ``jit`` with ``lm`` and ``options`` static. ``selector`` (index
    into ``SELECTORS``) and ``restart`` (bool) override ``options`` and may be traced, so one compiled loop
    can be ``vmap``-ed over variants as well as seeds.
    """
    if not isinstance(lm, LMSpec):
        v.fail("lm", type(lm).__name__, "an LMSpec")
    if not isinstance(options, IterativeOptions):
        v.fail("options", type(options).__name__, "an IterativeOptions")
    prompts = jnp.asarray(prompts)
    n_x, a = instance.log_pi0.shape
    if prompts.ndim != 2 or prompts.shape[0] != n_x or a != lm.space.n_responses:
        raise ValueError(f"prompts {tuple(prompts.shape)} and instance [n_x, A] = {(n_x, a)} are not allowed: "
                         f"prompts must be int32 [n_x, P] and A = lm.space.n_responses = {lm.space.n_responses}.")
    T, n_pairs = options.n_iterations, n_x * options.n_groups
    ranks = response_ranks(instance.reward)
    kl_coef = instance.kl_coef
    selector = SELECTORS.index(options.selector) if selector is None else selector
    restart = options.restart if restart is None else restart

    if options.history:
        # Fixed-shape buffer of every iteration's pairs; rows of future iterations are masked out.
        dummy, _ = jax.eval_shape(lambda: _collect(key, lm, options, selector, params0, params0, instance,
                                                   prompts, ranks))
        buffer = jax.tree.map(lambda s: jnp.zeros((T,) + s.shape, s.dtype), dummy)
    else:
        buffer = None

    def iteration(carry, t):
        params, key, buffer = carry
        key, k_iter = jax.random.split(key)
        batch, (r_w, r_l) = _collect(k_iter, lm, options, selector, params, params0, instance, prompts, ranks)
        start = jax.tree.map(lambda p0, p: jnp.where(restart, p0, p), params0, params)
        if options.history:
            buffer = jax.tree.map(lambda buf, new: buf.at[t].set(new), buffer, batch)
            flat = jax.tree.map(lambda buf: buf.reshape((T * n_pairs,) + buf.shape[2:]), buffer)
            valid = jnp.repeat(jnp.arange(T) <= t, n_pairs)
            params, _ = _train(lm, options, start, flat, valid, kl_coef)
        else:
            params, _ = _train(lm, options, start, batch, None, kl_coef)
        metrics = _metrics(instance, log_policy(lm, params, prompts)) + (r_w, r_l)
        return (params, key, buffer), metrics

    (params, _, _), per_iter = jax.lax.scan(iteration, (params0, key, buffer), jnp.arange(T))
    nan = jnp.asarray(jnp.nan, instance.reward.dtype)
    first = _metrics(instance, instance.log_pi0) + (nan, nan)
    series = [jnp.concatenate([jnp.reshape(f, (1,)), s]) for f, s in zip(first, per_iter)]
    star = b.optimal_policy(instance)
    return IterativeResult(*series, value_star=b.optimal_value(instance),
                           reward_star=b.expected_reward(instance, star),
                           kl_star_to_ref=b.kl_to_reference(instance, star), params=params)
