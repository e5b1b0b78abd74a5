"""Experiment registry and the protocol every experiment follows.

An experiment is a module (or any object) with these attributes::

    description: str                      # one line for `rlhf-bandits list` (default: first docstring line)
    presets: dict[str, Config]            # "quick" and "paper"; Config is a frozen dataclass
    seeds: dict[str, int]                 # default seed count per preset (optional; see DEFAULT_SEEDS)
    def run(config, seeds: int, progress: Progress) -> Results | dict[str, np.ndarray]
    def plot(table: dict[str, np.ndarray], config, out_dir: Path) -> list[Path]
    nan_columns: tuple[str, ...]          # optional: columns where NaN means "not applicable"

``run`` computes everything for ``seeds`` seeds and returns a tidy columnar table (one row per
algorithm x seed x sample size or round; columns are 1-D NumPy arrays of equal length) plus optional
scalar summaries. It batches its per-seed pure function with
``runner.run_vectorized(fn, seed_keys(config.seed, seeds), ..., progress=progress)``: passing
``progress`` through gives chunk progress on stderr, compile/run timings in the manifest and
resumption of interrupted runs. ``plot`` reads only the table and the config (so ``rlhf-bandits plot
DIR`` re-draws from ``results.csv`` + ``manifest.json``) and writes figures with
``plotting.save_figure``. Nested frozen dataclasses in the config (e.g. ``instance: InstanceConfig``)
are settable as ``--set instance.kl_coef=0.1``.

A minimal experiment module (pass ``functools.partial`` of a module-level function, so the config
is static and an identical rerun in the same process reuses the compiled executable)::

    import dataclasses, functools
    import jax, numpy as np
    import bandits as b
    from experiments.engine import plotting
    from experiments.engine.results import Results, tidy
    from experiments.engine.runner import run_vectorized, seed_keys

    @dataclasses.dataclass(frozen=True)
    class Config:
        instance: b.InstanceConfig = b.InstanceConfig(n_contexts=8, n_actions=4, dim=2)
        kl_coefs: tuple[float, ...] = (0.1, 0.3, 1.0)
        seed: int = 0

    presets = {"quick": Config(), "paper": Config(kl_coefs=(0.03, 0.1, 0.3, 1.0, 3.0))}
    seeds = {"quick": 8, "paper": 1000}
    description = "J(pi*) - J(pi0) across KL coefficients"

    def one_seed(key, kl_coefs, config):
        inst = b.make_instance(key, config.instance)
        gap = lambda eta: b.suboptimality(inst._replace(kl_coef=eta), inst.log_pi0)
        return jax.vmap(gap)(kl_coefs.astype(inst.phi.dtype))

    def run(config, seeds, progress):
        etas = np.asarray(config.kl_coefs)      # traced argument: new values do not recompile
        gap = run_vectorized(functools.partial(one_seed, config=config),
                             seed_keys(config.seed, seeds), etas, progress=progress)  # [seeds, n_kl]
        table = tidy({"gap": gap}, seed=np.arange(seeds), kl_coef=etas)
        return Results(table, {"mean_gap": float(gap.mean())})

    def plot(table, config, out_dir):
        fig, ax = plotting.figure()
        x, y = plotting.pivot(table, x="kl_coef", y="gap")   # y: [n_seeds, n_x]
        plotting.band_plot(ax, x, y, label="J(pi*) - J(pi0)", loglog=True, slope=True)
        plotting.bound_plot(ax, x, y.mean(0)[0] * x[0] / x, label="C / kl_coef")
        ax.set(title="Gap of the reference policy", xlabel="kl_coef", ylabel="gap")
        return plotting.save_figure(fig, out_dir, "gap")

Helpers: ``tidy`` and ``concat_tables`` (``experiments.engine.results``) build tables; ``runner.seed_keys``,
``runner.run_vectorized`` and ``progress.message(text)`` run; ``plotting.pivot``, ``band_plot``,
``bound_plot``, ``fit_loglog_slope`` and ``save_figure`` draw. ``config.apply_overrides`` is what
``--set`` uses. ``rlhf-bandits run NAME`` writes ``OUT/NAME/results.csv``, ``manifest.json`` and the
figures (``storage``).

Built-in experiments are imported lazily by name from ``BUILTIN`` (one line per experiment);
``register`` adds others at run time (tests, user code).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import types
from typing import Any, Mapping

__all__ = ["BUILTIN", "DEFAULT_SEEDS", "default_seeds", "describe", "get", "names", "preset", "register",
           "unregister", "UnknownNameError", "UsageError"]

# name -> module path; add a built-in experiment with one line.
BUILTIN: dict[str, str] = {
    "offline-rate": "experiments.catalogue.offline_rate",
    "fast-rate": "experiments.catalogue.fast_rate",
    "reward-kl": "experiments.catalogue.reward_kl",
    "nash-intransitive": "experiments.catalogue.nash_intransitive",
    "nash-offline": "experiments.catalogue.nash_offline",
    "nash-online": "experiments.catalogue.nash_online",
    "nash-kl-sweep": "experiments.catalogue.nash_kl_sweep",
    "online-explore": "experiments.catalogue.online_explore",
    "batch-size": "experiments.catalogue.batch_size",
    "hybrid": "experiments.catalogue.hybrid",
    "bonus-compare": "experiments.catalogue.bonus_compare",
    "omd-vs-mle": "experiments.catalogue.omd_vs_mle",
    "active-vs-random": "experiments.catalogue.active_vs_random",
    "deployment-regret": "experiments.catalogue.deployment_regret",
    "lm-kl-estimators": "experiments.catalogue.lm_kl_estimators",
    "lm-iterative-dpo": "experiments.catalogue.lm_iterative_dpo",
    "lm-rejection": "experiments.catalogue.lm_rejection",
    "hf-smoke": "experiments.catalogue.hf_smoke",
    "lm-omd-features": "experiments.catalogue.lm_omd_features",
}

DEFAULT_SEEDS = {"quick": 8, "paper": 100}

_registered: dict[str, Any] = {}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class UsageError(ValueError):
    """Bad input from the user (name, preset, override, directory): the CLI prints it, exit code 2."""


class UnknownNameError(UsageError):
    """An experiment or preset name that does not exist (the message lists the valid ones)."""


def _check_protocol(name: str, obj: Any) -> None:
    missing = [a for a in ("presets", "run", "plot") if not hasattr(obj, a)]
    if missing:
        raise TypeError(f"experiment {name!r} lacks {', '.join(missing)} (see experiments.engine.registry).")
    if not callable(obj.run) or not callable(obj.plot):
        raise TypeError(f"experiment {name!r}: run and plot must be callable.")
    presets = obj.presets
    if not isinstance(presets, Mapping) or not presets:
        raise TypeError(f"experiment {name!r}: presets must be a non-empty dict of configs.")
    for key, cfg in presets.items():
        if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
            raise TypeError(f"experiment {name!r}: preset {key!r} is not a dataclass instance.")
        if not type(cfg).__dataclass_params__.frozen:
            raise TypeError(f"experiment {name!r}: preset {key!r} must be a frozen dataclass.")


def register(name: str, experiment: Any, *, replace: bool = False) -> Any:
    """Register ``experiment`` under ``name`` (checked against the protocol); returns it."""
    if not _NAME.match(name):
        raise ValueError(f"experiment name {name!r} is not allowed: use letters, digits, '_', '-', '.'.")
    if not replace and (name in _registered or name in BUILTIN):
        raise ValueError(f"experiment {name!r} is already registered (pass replace=True to replace it).")
    _check_protocol(name, experiment)
    _registered[name] = experiment
    return experiment


def unregister(name: str) -> None:
    """Forget a run-time registration (built-in table entries stay)."""
    _registered.pop(name, None)


def names() -> list[str]:
    """All experiment names, sorted (built-ins are not imported)."""
    return sorted(set(BUILTIN) | set(_registered))


def get(name: str) -> Any:
    """The experiment registered as ``name``; imports a built-in on first use."""
    if name not in _registered:
        if name not in BUILTIN:
            raise UnknownNameError(f"unknown experiment {name!r}; available: "
                                   f"{', '.join(names()) or '(none registered)'}.")
        module = importlib.import_module(BUILTIN[name])
        _check_protocol(name, module)
        _registered[name] = module
    return _registered[name]


def describe(experiment: Any) -> str:
    """One-line description: ``description`` or the first line of the docstring."""
    text = getattr(experiment, "description", None)
    if not text and isinstance(experiment, types.ModuleType):
        text = experiment.__doc__
    text = text or ""
    return text.strip().splitlines()[0] if text.strip() else ""


def default_seeds(experiment: Any, preset: str) -> int:
    """The experiment's seed count for ``preset`` (``seeds`` attribute, else ``DEFAULT_SEEDS``)."""
    table = getattr(experiment, "seeds", None) or {}
    return int(table.get(preset, DEFAULT_SEEDS.get(preset, DEFAULT_SEEDS["quick"])))


def preset(experiment: Any, name: str, preset_name: str) -> Any:
    """The config of ``preset_name``, or a clear error listing the experiment's presets."""
    if preset_name not in experiment.presets:
        raise UnknownNameError(f"unknown preset {preset_name!r} for experiment {name!r}; available: "
                               f"{', '.join(experiment.presets)}.")
    return experiment.presets[preset_name]
