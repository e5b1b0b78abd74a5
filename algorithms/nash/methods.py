"""P2's general-preference (Nash) methods: one protocol, one registry (docs/theory.md §3, §6).

A method turns what one seed of an experiment hands it, a ``NashView``, into a policy; it is a pure
function of the view (``jax.vmap``-able over seeds)::

    out = method.policy(view)    # offline, exact: log pi [n_x, K]
                                 # dynamics, online: the trajectory [iterations, n_x, K], entry t after
                                 # (t + 1) * batch queries

Its ``kind`` says what the view holds:

- ``offline``: ``view.data`` (``n`` comparisons), ``view.confidence`` (the general-preference MLE
  ``theta_hat`` and its set ``{||theta - theta_hat||_Sigma <= beta}`` on them, built once by the experiment
  with ``preference_model.mle_confidence_set`` when a chosen method ``needs_fit``), ``view.lam`` (the
  ridge of the fits) and an instance without its true reward and skew;
- ``dynamics`` (tabular Nash dynamics) and ``online`` (P2's agent, an MLE on all data so far):
  ``view.key`` and the true instance, whose oracle answers the ``iterations x batch`` queries (the
  method reads only their labels);
- ``exact``: the true instance, no data and no queries (the equilibrium itself, a reference row).

Each entry carries its metadata: the legend ``label`` and ``color`` (``None``: a free colour of
matplotlib's cycle in the figures), the ``payoffs`` it supports (the sampled methods learn from binary
labels, so they target the identity-payoff equilibrium only), the ``NashOptions`` fields it ``reads``
(an experiment refuses, with ``experiments.engine.config.check_unused``, the fields that no registered
method of its kinds reads), ``needs_fit`` and ``queries(options, n)``, the comparisons it uses (default
by kind: ``n`` offline, ``iterations * batch`` dynamics and online, 0 exact).

A new method is one function and one registry line (a plugin file: README's worked example)::

    def slow_nash_md(view):   # sampled Nash-MD at half the step, so the mixture weight eta tau / 2
        o = view.options
        return dynamics.run_sampled(view.key, view.instance, "nash_md", o.step / 2, o.iterations, o.batch,
                                    o.ridge)

    register("slow_nash_md", NashMethod(slow_nash_md, "dynamics", label="Nash-MD (half step)",
                                        payoffs=("identity",), reads=("step", "iterations", "batch", "ridge")))

Built in (docs/theory.md §3.2-3.4, §6):

- offline: ``bt_gibbs`` (reward-based RLHF: the Bradley-Terry MLE's Gibbs policy, misspecified when
  the preference is intransitive), ``dpo`` (DPO of a linear-softmax policy), ``nash_mle`` (the
  equilibrium of the estimated game ``P_theta_hat``), ``p2_pessimistic`` (P2's policy-level pessimistic
  max-min policy, ``algorithms.nash.pessimism``), ``p2_pessimistic_pointwise`` (the variant that lowers each
  pair's payoff separately, ``algorithms.nash.offline.pessimistic_policy``), ``ipo`` (IPO's exact tabular
  minimiser on the comparisons);
- dynamics: ``nash_md``, ``inpo``, ``sppo`` (sampled, loss-based: ``dynamics.run_sampled``),
  ``online_ipo`` (iterative IPO: each round the sampled best response to the current policy) and the
  exact updates on the true payoff ``nash_md_exact``, ``inpo_exact``, ``sppo_exact`` (no queries);
- online: ``enhancer`` (P2's main agent with P2's max-uncertainty enhancer; ``p2_online`` is the same agent
  under nash-kl-sweep's name), ``enhancer_optimistic`` (the variant with the optimistic best response),
  ``self_play``, ``uniform`` (the main agent with self-play or uniform pairs); their ``extras``:
  ``pair_kl``, ``E_x KL(pi2_t || pi1_t)`` per round;
- exact: ``nash`` (the equilibrium ``pi*`` of the true game).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, NamedTuple

import jax

import bandits as b
from algorithms.core import confidence as conf
from algorithms.core.direct_preference import train_linear
from algorithms.nash import dynamics as nd
from algorithms.nash import offline as no
from algorithms.nash import online as non
from algorithms.nash import pessimism as ps
from bandits import validation as v

KINDS = ("offline", "exact", "dynamics", "online")
TRAJECTORY_KINDS = ("dynamics", "online")   # their policy returns [iterations, n_x, K]


@dataclasses.dataclass(frozen=True)
class NashOptions:
    """Static options of the built-in methods, validated on creation (which method reads which: the
    entries' ``reads``).

    dpo_steps, dpo_learning_rate: Adam steps and step size of ``dpo``; iterations, batch: rounds and
    comparisons per round of the dynamics and online methods; step: the mirror-descent step ``eta`` of
    the dynamics (``eta * kl_coef <= 1`` for Nash-MD and INPO, checked by the experiments, which know
    ``kl_coef``); step_rule: ``'stable'`` caps the step at the contraction condition's largest step,
    ``'fixed'`` is the papers' constant step (``algorithms.nash.dynamics``, module docstring); ridge: the ridge of the dynamics' tabular regressions (and of ``ipo``'s); beta: the
    radius of the online confidence set (``>= 0``): the plausible worlds of ``enhancer``, the
    lower-confidence payoff of ``enhancer_optimistic`` (0: both are the estimated game's best response).
    """

    dpo_steps: int = 200
    dpo_learning_rate: float = 0.05
    iterations: int = 32
    batch: int = 128
    step: float = 1.0
    step_rule: str = "stable"
    ridge: float = 1e-3
    beta: float = 1.0

    def __post_init__(self):
        v.check_int("dpo_steps", self.dpo_steps, 1)
        v.check_float("dpo_learning_rate", self.dpo_learning_rate, low=0.0, low_open=True)
        v.check_int("iterations", self.iterations, 1)
        v.check_int("batch", self.batch, 1)
        v.check_float("step", self.step, low=0.0, low_open=True)
        v.check_choice("step_rule", self.step_rule, nd.STEP_RULES)
        v.check_float("ridge", self.ridge, low=0.0, low_open=True)
        v.check_float("beta", self.beta, low=0.0)


OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(NashOptions))


class NashView(NamedTuple):
    """What a method is handed for one seed (built inside the traced per-seed function; module docstring)."""

    instance: b.Instance                   # offline: reward and skew zeroed; otherwise the true instance
    payoff: str                            # 'identity' | 'logit': the game's payoff g(P)
    options: NashOptions
    lam: Any                               # the ridge of the MLE fits
    key: jax.Array | None = None           # PRNG key of this method (its queries)
    data: b.PreferenceData | None = None   # offline comparisons
    confidence: conf.ConfidenceSet | None = None   # psi-space MLE theta_hat and its set on data (needs_fit)


class NashMethod(NamedTuple):
    policy: Callable[[NashView], jax.Array]
    kind: str                                   # one of KINDS
    label: str = ""
    color: str | None = None
    payoffs: tuple[str, ...] = b.PAYOFFS
    reads: tuple[str, ...] = ()                 # the NashOptions fields it reads
    needs_fit: bool = False                     # offline: reads view.confidence
    queries: Callable[[NashOptions, int], int] | None = None   # None: by kind (module docstring)
    extras: tuple[str, ...] = ()                # per-round diagnostics: the policy returns (out, {name: [T]})


def _rounds(options: NashOptions, n: int) -> int:
    return options.iterations * options.batch


_DEFAULT_QUERIES = {"offline": lambda options, n: n, "exact": lambda options, n: 0,
                    "dynamics": _rounds, "online": _rounds}


def _bt_gibbs(view: NashView) -> jax.Array:
    return no.bt_gibbs_policy(view.instance, view.data, view.lam)[0]


def _dpo(view: NashView) -> jax.Array:
    inst, o = view.instance, view.options
    return train_linear(view.data, inst.phi, inst.log_pi0, inst.kl_coef, "dpo", steps=o.dpo_steps,
                        learning_rate=o.dpo_learning_rate).log_pi


def _ipo(view: NashView) -> jax.Array:
    return nd.update_from_data("ipo", view.instance, view.data, view.instance.log_pi0, 1.0, view.options.ridge)


def _sampled(method: str, step: float | None = None):
    def policy(view: NashView) -> jax.Array:
        o = view.options
        return nd.run_sampled(view.key, view.instance, method, o.step if step is None else step, o.iterations,
                              o.batch, o.ridge, step_rule=o.step_rule)
    return policy


def _exact(method: str):
    def policy(view: NashView) -> jax.Array:
        o = view.options
        return nd.exact_trajectory(view.instance, method, o.step, o.iterations, view.payoff, o.step_rule)
    return policy


ONLINE_EXTRAS = ("pair_kl",)


def _online(method: str):
    def policy(view: NashView):
        o = view.options
        trace = non.run_online(view.key, view.instance, method, o.iterations, o.batch, view.lam, o.beta,
                               view.payoff)
        return trace.log_pi, {"pair_kl": trace.pair_kl}
    return policy


_SAMPLED_READS = ("step", "step_rule", "iterations", "batch", "ridge")
_EXACT_READS = ("step", "step_rule", "iterations")
_IDENTITY = ("identity",)

METHODS: dict[str, NashMethod] = {
    "bt_gibbs": NashMethod(_bt_gibbs, "offline", "BT-MLE + Gibbs (reward RLHF)", "C3"),
    "dpo": NashMethod(_dpo, "offline", "DPO (linear softmax)", "C1", reads=("dpo_steps", "dpo_learning_rate")),
    "nash_mle": NashMethod(lambda view: no.plug_in_nash(view.instance, view.confidence.center, view.payoff).log_pi,
                           "offline", "Nash of estimated game", "C0", needs_fit=True),
    "p2_pessimistic": NashMethod(lambda view: ps.policy_pessimistic_policy(view.instance, view.confidence,
                                                                           view.payoff).log_pi,
                                 "offline", "P2 pessimistic max-min (policy-level)", "C2", needs_fit=True),
    "p2_pessimistic_pointwise": NashMethod(lambda view: no.pessimistic_policy(view.instance, view.confidence,
                                                                              view.payoff).log_pi,
                                           "offline", "pessimistic max-min, pointwise box (variant)", None,
                                           needs_fit=True),
    "ipo": NashMethod(_ipo, "offline", "IPO (offline data, tabular)", "C8", payoffs=_IDENTITY, reads=("ridge",)),
    "nash_md": NashMethod(_sampled("nash_md"), "dynamics", "Nash-MD (sampled)", "C4", payoffs=_IDENTITY,
                          reads=_SAMPLED_READS),
    "inpo": NashMethod(_sampled("inpo"), "dynamics", "INPO (sampled)", "C9", payoffs=_IDENTITY, reads=_SAMPLED_READS),
    "sppo": NashMethod(_sampled("sppo"), "dynamics", "SPPO (sampled)", "C5", payoffs=_IDENTITY, reads=_SAMPLED_READS),
    "online_ipo": NashMethod(_sampled("ipo", step=1.0), "dynamics", "iterative IPO (self-play)", "C6",
                             payoffs=_IDENTITY, reads=("iterations", "batch", "ridge")),
    "nash_md_exact": NashMethod(_exact("nash_md"), "dynamics", "Nash-MD (exact)", reads=_EXACT_READS,
                                queries=lambda options, n: 0),
    "inpo_exact": NashMethod(_exact("inpo"), "dynamics", "INPO (exact)", reads=_EXACT_READS,
                             queries=lambda options, n: 0),
    "sppo_exact": NashMethod(_exact("sppo"), "dynamics", "SPPO (exact)", reads=_EXACT_READS,
                             queries=lambda options, n: 0),
    "enhancer": NashMethod(_online("enhancer"), "online", "P2 online: main agent + max-uncertainty enhancer", "C2",
                           reads=("iterations", "batch", "beta"), extras=ONLINE_EXTRAS),
    "enhancer_optimistic": NashMethod(_online("enhancer_optimistic"), "online",
                                      "online: optimistic best-response enhancer (variant)", "C1",
                                      reads=("iterations", "batch", "beta"), extras=ONLINE_EXTRAS),
    "p2_online": NashMethod(_online("enhancer"), "online", "P2 online (enhancer)", "C2",
                            reads=("iterations", "batch", "beta"), extras=ONLINE_EXTRAS),
    "self_play": NashMethod(_online("self_play"), "online", "online: self-play pairs", "C3",
                            reads=("iterations", "batch"), extras=ONLINE_EXTRAS),
    "uniform": NashMethod(_online("uniform"), "online", "online: uniform random pairs", "C7",
                          reads=("iterations", "batch"), extras=ONLINE_EXTRAS),
    "nash": NashMethod(lambda view: b.nash_equilibrium(view.instance, view.payoff).log_pi, "exact",
                       "exact equilibrium pi*", "k"),
}
BUILTIN_METHODS = tuple(METHODS)


def register(name: str, method: NashMethod, *, overwrite: bool = False) -> NashMethod:
    """Add ``method`` under ``name`` (a taken name is refused unless ``overwrite``); returns the entry stored
    (its label defaults to the name)."""
    v.check_registry_name("Nash method", name, METHODS, overwrite=overwrite)
    if not isinstance(method, NashMethod) or not callable(method.policy):
        v.fail(f"Nash method {name!r}", method, "a NashMethod(policy, kind, label, color, payoffs, reads, "
               "needs_fit, queries, extras)")
    v.check_choice(f"Nash method {name!r} kind", method.kind, KINDS)
    v.check_names(f"Nash method {name!r} payoffs", tuple(method.payoffs), b.PAYOFFS)
    v.check_names(f"Nash method {name!r} reads", tuple(method.reads), OPTION_FIELDS, empty=True)
    METHODS[name] = method._replace(label=method.label or name, payoffs=tuple(method.payoffs),
                                    reads=tuple(method.reads))
    return METHODS[name]


def get(name: str) -> NashMethod:
    v.check_choice("algorithms", name, tuple(METHODS))
    return METHODS[name]


def names(kinds: tuple[str, ...] = KINDS) -> tuple[str, ...]:
    """The registered methods of ``kinds``, in registration order."""
    return tuple(n for n, m in METHODS.items() if m.kind in kinds)


def check_algorithms(field: str, values, kinds: tuple[str, ...], payoff: str) -> tuple[str, ...]:
    """``values`` must be distinct registered methods of ``kinds`` that all support ``payoff``."""
    v.check_names(field, values, names(kinds))
    unsupported = [n for n in values if payoff not in METHODS[n].payoffs]
    if unsupported:
        v.fail(field, values, f"free of {', '.join(unsupported)} when payoff={payoff!r} (they support "
               f"payoff {' or '.join(repr(p) for p in METHODS[unsupported[0]].payoffs)} only: a method that "
               "learns from binary labels targets the identity-payoff equilibrium)")
    return values


def unread_options(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The ``NashOptions`` fields that no registered method of ``kinds`` reads."""
    read = {f for m in METHODS.values() if m.kind in kinds for f in m.reads}
    return tuple(f for f in OPTION_FIELDS if f not in read)


def needs_fit(values) -> bool:
    """Whether a method of ``values`` reads ``view.confidence``."""
    return any(METHODS[n].needs_fit for n in values)


def queries(name: str, options: NashOptions, n: int) -> int:
    """The comparisons ``name`` uses (``n``: the experiment's offline data size)."""
    method = get(name)
    return int((method.queries or _DEFAULT_QUERIES[method.kind])(options, n))


def label(name: str) -> str:
    """The registered legend label, or the name itself (rows of a method not registered now, e.g. a
    re-plot without its plugin)."""
    return METHODS[name].label if name in METHODS else name


def color(name: str) -> str | None:
    return METHODS[name].color if name in METHODS else None


def final_policy(name: str, out: jax.Array) -> jax.Array:
    """The policy ``name`` ends with: the last entry of a dynamics or online trajectory, else ``out``."""
    return out[-1] if get(name).kind in TRAJECTORY_KINDS else out


def stream_key(key: jax.Array, name: str, order: tuple[str, ...]) -> jax.Array:
    """``fold_in(key, i)``: ``i`` the position of ``name`` in ``order`` (an experiment's fixed stream order,
    which keeps its results as they were), else a stable hash of the name past ``order`` (so a new
    method's queries do not depend on which other methods or plugins are present)."""
    index = order.index(name) if name in order else len(order) + zlib.crc32(name.encode()) % (2**31 - len(order))
    return jax.random.fold_in(key, index)


def run_methods(values, instance: b.Instance, *, payoff: str, options: NashOptions, lam,
                key_of: Callable[[str], jax.Array], data: b.PreferenceData | None = None,
                confidence: conf.ConfidenceSet | None = None, extras: dict | None = None) -> dict[str, jax.Array]:
    """``{name: method.policy(view)}`` for each name of ``values``, each on the view of its kind (module
    docstring): offline methods see ``data``, ``confidence`` and the instance without reward and skew,
    the others the true instance and their key ``key_of(name)``. A method with ``extras`` contributes its
    per-round diagnostics to ``extras[name]`` (when a dict is given)."""
    public = b.public_view(instance)
    out = {}
    for name in values:
        method = get(name)
        offline = method.kind == "offline"
        if offline and data is None:
            v.fail("algorithms", name, "a method of a kind this experiment provides (it has no offline data)")
        if method.needs_fit and confidence is None:
            v.fail("algorithms", name, "a method that does not need the confidence set (none was built)")
        view = NashView(public if offline else instance, payoff, options, lam, key_of(name),
                        data if offline else None, confidence if offline else None)
        result = method.policy(view)
        if method.extras:
            result, more = result
            if extras is not None:
                extras[name] = more
        out[name] = result
    return out
