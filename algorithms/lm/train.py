"""One training step of a loss written on log-prob arrays, for JAX and torch policies (docs/llm_bridge.md §1.2, §1.4).

Every direct-alignment loss lives once, in JAX, on log-prob arrays (``algorithms/core/preference_losses.py``).
A training step only has to produce the policy's sequence log-probs with a gradient path back to its
parameters:

- **JAX backend** (``jax_step``): a pure ``logprob_fn(params, prompts, responses) -> [B]``; the step is
  ``jax.value_and_grad(lambda params: loss_fn(logps(params), fixed))`` followed by an optax update.
- **torch backend** (``torch_step``, the VJP bridge): the policy's ``logprob_torch`` returns torch tensors
  ``l_k`` with autograd. With ``L = loss_fn({k: l_k}, fixed)`` the chain rule gives
  ``dL/dtheta = sum_k (dL/dl_k)^T dl_k/dtheta``, so ``jax.value_and_grad`` with respect to the *log-prob
  arrays* supplies the cotangents ``dL/dl_k`` and ``torch.autograd.backward(l_k, cotangents)`` accumulates
  exactly the parameter gradient of the JAX loss; a torch optimizer then steps. No torch is imported here.

A loss function has the signature ``loss_fn(logps: dict[str, Array], fixed: dict) -> scalar``: ``logps``
are the policy's log-probs (differentiated), ``fixed`` everything else (reference log-probs, masks).
``objective(name, **hyper)`` builds the five losses of ``preference_losses`` in that form; the keys they
read are listed in ``OBJECTIVE_KEYS``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
import optax

from algorithms.core import preference_losses as pl
from bandits import validation as v

LossFn = Callable[[Mapping[str, jax.Array], Mapping[str, Any]], jax.Array]

# name -> (policy log-prob keys, fixed keys); "mask", "margin" and "cal_mask" are optional fixed keys.
OBJECTIVE_KEYS = {
    "dpo": (("chosen", "rejected"), ("ref_chosen", "ref_rejected")),
    "ipo": (("chosen", "rejected"), ("ref_chosen", "ref_rejected")),
    "xpo": (("chosen", "rejected", "explore"), ("ref_chosen", "ref_rejected")),
    "selm": (("chosen", "rejected", "cal"), ("ref_chosen", "ref_rejected", "cal_ref")),
    "vpo": (("chosen", "rejected", "cal"), ("ref_chosen", "ref_rejected", "cal_ref")),
}
# name -> (required hyper-parameters, optional ones) of ``objective``.
OBJECTIVE_HYPER = {"dpo": (("kl_coef",), ()), "ipo": (("tau",), ()), "xpo": (("kl_coef", "alpha"), ()),
                   "selm": (("kl_coef", "alpha"), ()), "vpo": (("kl_coef", "alpha"), ("sign",))}


def _require(name: str, logps: Mapping, fixed: Mapping) -> None:
    needed_logps, needed_fixed = OBJECTIVE_KEYS[name]
    for field, given, needed in (("logps", logps, needed_logps), ("fixed", fixed, needed_fixed)):
        missing = [k for k in needed if k not in given]
        if missing:
            raise KeyError(f"{field} lacks {missing} for objective {name!r}: it needs the keys {list(needed)}.")


def objective(name: str, **hyper) -> LossFn:
    """``loss_fn(logps, fixed)`` for ``name`` in ``OBJECTIVE_KEYS``, with the hyper-parameters of its loss
    (``OBJECTIVE_HYPER``): dpo: ``kl_coef``; ipo: ``tau``; xpo, selm: ``kl_coef, alpha``; vpo:
    ``kl_coef, alpha[, sign]`` (the definitions are in ``algorithms/core/preference_losses.py``).
    """
    v.check_choice("name", name, tuple(OBJECTIVE_KEYS))
    required, optional = OBJECTIVE_HYPER[name]
    wrong = sorted(set(hyper) - set(required) - set(optional)) + sorted(set(required) - set(hyper))
    if wrong:
        raise ValueError(f"objective {name!r} with hyper-parameters {sorted(hyper)} is not allowed: {name} takes "
                         f"{', '.join(required)}" + (f" [, {', '.join(optional)}]" if optional else "") + ".")

    def loss_fn(logps, fixed):
        _require(name, logps, fixed)
        pair = (logps["chosen"], logps["rejected"], fixed["ref_chosen"], fixed["ref_rejected"])
        opt = {"mask": fixed.get("mask")}
        if name != "ipo":
            opt["margin"] = fixed.get("margin")
        if name in ("xpo", "selm", "vpo"):
            opt["cal_mask"] = fixed.get("cal_mask")
        if name == "dpo":
            return pl.dpo_loss(*pair, hyper["kl_coef"], **opt)
        if name == "ipo":
            return pl.ipo_loss(*pair, hyper["tau"], **opt)
        if name == "xpo":
            return pl.xpo_loss(*pair, hyper["kl_coef"], logps["explore"], hyper["alpha"], **opt)
        if name == "selm":
            return pl.selm_loss(*pair, hyper["kl_coef"], logps["cal"], fixed["cal_ref"], hyper["alpha"], **opt)
        return pl.vpo_loss(*pair, hyper["kl_coef"], logps["cal"], fixed["cal_ref"], hyper["alpha"],
                           hyper.get("sign", 1), **opt)

    return loss_fn


# -- JAX backend --------------------------------------------------------------------------------------------
class JaxTrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def jax_init(params, optimizer: optax.GradientTransformation) -> JaxTrainState:
    return JaxTrainState(params, optimizer.init(params), jax.numpy.zeros((), jax.numpy.int32))


def jax_loss(params, logprob_fn: Callable, loss_fn: LossFn, inputs: Mapping[str, tuple], fixed: Mapping):
    """``loss_fn({k: logprob_fn(params, *inputs[k])}, fixed)``: the loss as a function of the parameters."""
    return loss_fn({k: logprob_fn(params, *args) for k, args in inputs.items()}, fixed)


def jax_step(state: JaxTrainState, optimizer: optax.GradientTransformation, logprob_fn: Callable,
             loss_fn: LossFn, inputs: Mapping[str, tuple], fixed: Mapping) -> tuple[JaxTrainState, dict]:
    """One optax step on ``jax_loss``; pure (``jit`` it with ``optimizer``, ``logprob_fn``, ``loss_fn`` static).

    ``inputs[k] = (prompts, responses)`` (any pytrees ``logprob_fn`` accepts) for each policy log-prob key.
    Returns the new state and ``{"loss": value before the step}``.
    """
    value, grads = jax.value_and_grad(jax_loss)(state.params, logprob_fn, loss_fn, inputs, fixed)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return JaxTrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), {"loss": value}


# -- torch backend (the VJP bridge) -------------------------------------------------------------------------
def torch_backward(loss_fn: LossFn, logps: Mapping[str, Any], fixed: Mapping) -> float:
    """Accumulate ``d loss_fn / d theta`` into the ``.grad`` of the parameters behind the torch ``logps``.

    ``jax.value_and_grad`` of the JAX loss with respect to the log-prob arrays gives the cotangents, then
    ``torch.autograd.backward(logps, cotangents)`` (module docstring). Float64 log-probs are handed to JAX
    in float64 (x64 switched on for the call). Returns the loss value.
    """
    import torch

    names = list(logps)
    x64 = any(logps[k].dtype == torch.float64 for k in names)
    with jax.enable_x64(x64 or jax.config.jax_enable_x64):
        arrays = {k: np.asarray(logps[k].detach().cpu().numpy()) for k in names}
        value, cotangents = jax.value_and_grad(loss_fn)(arrays, fixed)
        cots = [torch.tensor(np.array(cotangents[k]), dtype=logps[k].dtype, device=logps[k].device)
                for k in names]
        value = float(value)
    torch.autograd.backward([logps[k] for k in names], cots)
    return value


def torch_step(policy, optimizer, loss_fn: LossFn, inputs: Mapping[str, tuple], fixed: Mapping) -> dict:
    """One torch-optimizer step of the JAX loss through the VJP bridge.

    ``policy.logprob_torch(prompts, responses)`` must return [B] log-probs with autograd (``HFPolicy``);
    ``optimizer`` is a ``torch.optim`` optimizer over its parameters. Returns ``{"loss": value before the step}``.
    """
    logps = {k: policy.logprob_torch(*args) for k, args in inputs.items()}
    optimizer.zero_grad(set_to_none=True)
    value = torch_backward(loss_fn, logps, fixed)
    optimizer.step()
    return {"loss": value}
