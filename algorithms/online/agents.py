"""The online algorithms of P1's loop by name: a pair-selection strategy plus the agent's options.

An online algorithm is the main agent (``agent="gibbs"``: ``Gibbs(theta_t)`` of the BT-MLE; ``"dpo"``: a
linear-softmax policy trained by DPO on all data, ``algorithms.online.iterative_dpo``) with a strategy of
``algorithms.online.strategies`` choosing each comparison (docs/theory.md §2.4-2.5, §6). Every strategy
registered in ``strategies`` is an algorithm of the same name with the Gibbs agent; the DPO-agent
algorithms are listed in ``SPECIAL`` with their ``OnlineSettings`` overrides.
"""
from __future__ import annotations

from algorithms.online import strategies
from bandits import validation as v

# name -> (strategy, OnlineSettings overrides)
SPECIAL = {
    "iterative_dpo": ("max_min", {"agent": "dpo"}),
    "iterative_dpo_restart": ("max_min", {"agent": "dpo", "restart": True}),
    "xpo": ("calibration", {"agent": "dpo", "bonus": "xpo"}),
    "vpo": ("calibration", {"agent": "dpo", "bonus": "vpo"}),
    "selm": ("calibration", {"agent": "dpo", "bonus": "selm"}),
}
GIBBS_STRATEGIES = tuple(s for s in strategies.BUILTIN_STRATEGIES if s != "calibration")
ALGORITHMS = GIBBS_STRATEGIES + tuple(SPECIAL)


def known_algorithms() -> tuple[str, ...]:
    """Built-in algorithms plus every strategy registered since import."""
    extra = tuple(s for s in strategies.STRATEGIES if s not in ALGORITHMS and s != "calibration")
    return ALGORITHMS + extra


def algorithm_spec(name: str) -> tuple[str, dict]:
    v.check_choice("algorithms", name, known_algorithms())
    return SPECIAL.get(name, (name, {}))


def agent_of(name: str) -> str:
    """``"gibbs"`` or ``"dpo"``: the main agent of algorithm ``name``."""
    return algorithm_spec(name)[1].get("agent", "gibbs")
