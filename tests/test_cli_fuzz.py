"""A fuzz suite over the CLI's argument grammar, in-process and cheap: every invalid input exits with code 2
and one line that names the field, with no traceback and nothing written; and the table of the cases a
hostile new user tried (the reliability issue), each with its outcome and the test that keeps it so."""
from __future__ import annotations

import dataclasses
import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.engine import cli, registry
from experiments.engine.config import _fields, settable_fields, short_names

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMES = registry.names()


def _leaf_types(config) -> dict[str, typing.Any]:
    """Dotted path -> annotation of every settable field."""
    out = {}
    for path in settable_fields(config):
        node, parts = type(config), path.split(".")
        for part in parts[:-1]:
            node = _fields(node)[part][1]
        out[path] = _fields(node)[parts[-1]][1]
    return out


def _unparsable_fields(config) -> list[str]:
    """Fields for which a word of letters can never parse: numbers, booleans, tuples of numbers, literals."""
    def numeric(tp):
        if tp in (int, float):
            return True
        if typing.get_origin(tp) is tuple:
            return all(a is Ellipsis or numeric(a) for a in typing.get_args(tp))
        return False
    return [p for p, tp in _leaf_types(config).items() if numeric(tp) or tp is bool]


WORDS = st.text(alphabet="qxzjkw", min_size=3, max_size=8)   # never a number, boolean, none, inf or nan


def _assert_one_line(capsys, tmp_path, code, *words):
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhf-bandits run") and "error:" in lines[0], err
    assert "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not any(tmp_path.iterdir()), "a refused run wrote files"


@FUZZ
@given(name=st.sampled_from(NAMES), word=WORDS, data=st.data())
def test_a_word_where_a_number_belongs_is_one_line_naming_the_field(tmp_path_factory, capsys, name, word, data):
    capsys.readouterr()
    out = tmp_path_factory.mktemp("out")
    config = registry.get(name).presets["quick"]
    fields = _unparsable_fields(config)
    path = data.draw(st.sampled_from(fields))
    short = {p: s for s, p in short_names(config).items() if isinstance(p, str)}
    spelled = data.draw(st.sampled_from([path] + ([short[path]] if path in short else [])))
    code = cli.main(["run", name, "--out", str(out), "--set", f"{spelled}={word}"])
    _assert_one_line(capsys, out, code, spelled, word)


@FUZZ
@given(name=st.sampled_from(NAMES), field=st.text(alphabet=string.ascii_lowercase + "_", min_size=3, max_size=12))
def test_an_unknown_field_is_one_line_listing_the_allowed_ones(tmp_path_factory, capsys, name, field):
    capsys.readouterr()
    config = registry.get(name).presets["quick"]
    if field in settable_fields(config) or field in short_names(config):
        return
    out = tmp_path_factory.mktemp("out")
    code = cli.main(["run", name, "--out", str(out), "--set", f"{field}=1"])
    _assert_one_line(capsys, out, code, f"unknown field {field!r}", "allowed fields")


@FUZZ
@given(name=st.sampled_from(NAMES), text=st.text(alphabet=string.ascii_letters + "._-", min_size=1, max_size=10))
def test_an_override_without_a_value_is_one_line(tmp_path_factory, capsys, name, text):
    capsys.readouterr()
    out = tmp_path_factory.mktemp("out")
    code = cli.main(["run", name, "--out", str(out), "--set", text])
    # a word that starts with '-' is an option to argparse: one line from argparse instead of from --set
    _assert_one_line(capsys, out, code, "expected at least one argument" if text.startswith("-")
                     else "must look like field=value")


@FUZZ
@given(name=st.text(alphabet=string.ascii_lowercase + "-", min_size=2, max_size=14),
       preset=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8))
def test_unknown_experiments_and_presets_are_one_line(tmp_path_factory, capsys, name, preset):
    capsys.readouterr()
    out = tmp_path_factory.mktemp("out")
    if name not in NAMES:
        _assert_one_line(capsys, out, cli.main(["run", name, "--out", str(out)]), f"unknown experiment {name!r}")
    if preset not in registry.get("offline-rate").presets:
        _assert_one_line(capsys, out, cli.main(["run", "offline-rate", "--preset", preset, "--out", str(out)]),
                         f"unknown preset {preset!r}")


@pytest.mark.parametrize("name", NAMES)
def test_every_duplicated_algorithm_tuple_is_refused(tmp_path, capsys, name):
    """``--set algorithms=a,a`` (and the other name tuples) are refused, never run twice."""
    config = registry.get(name).presets["quick"]
    tuples = [p for p, tp in _leaf_types(config).items()
              if typing.get_origin(tp) is tuple and typing.get_args(tp)[:1] == (str,)
              and p.rsplit(".", 1)[-1] in ("algorithms", "designs", "estimators", "rules", "variants", "settings",
                                           "strategies", "methods", "selectors")]
    for path in tuples:
        node = config
        for part in path.split("."):
            node = getattr(node, part)
        first = node[0] if node else None
        if first is None:
            continue
        code = cli.main(["run", name, "--out", str(tmp_path), "--set", f"{path}={first},{first}"])
        _assert_one_line(capsys, tmp_path, code, path.rsplit(".", 1)[-1])


# The cases of the reliability issue (152 CLI cases tried on 98446b6; the ones that failed), their outcome
# now and the test that keeps it so.
CASES = [
    ("offline-rate panel_coverages=0.21,0.24 shared one setting name and one chunk",
     "two settings coverage+0.21, coverage+0.24; chunks keyed by their arguments",
     "test_reliability.py::test_offline_rate_names_each_coverage_by_its_exact_value, "
     "::test_calls_that_share_a_tag_but_not_their_arguments_keep_separate_chunks"),
    ("bonus-compare --plugin edited between an interrupted run and its resume reused 13 stale chunks",
     "the run identity holds each plugin's SHA-256 and the source digest: stale chunks removed, recomputed",
     "test_reliability.py::test_an_edited_plugin_never_reuses_the_chunks_of_the_old_one, "
     "::test_the_code_digest_covers_every_source_file"),
    ("--set algorithms=omd,omd / mle_gibbs,mle_gibbs / enhancer,enhancer / designs=unilateral,unilateral",
     "exit 2: '... must be a tuple without repeated names'",
     "test_cli_fuzz.py::test_every_duplicated_algorithm_tuple_is_refused"),
    ("--seeds 1000000000000, seed=2**64, demo --seed 2**64, n_contexts=1e15, sample_sizes=64,2**53",
     "exit 2, one line naming the field and the allowed range",
     "test_reliability.py::test_bad_input_gives_one_line_and_a_distinct_exit_code"),
    ("n_actions=100000 n_contexts=100000, 4000x4000, 2500x2500 in 6 GB (RESOURCE_EXHAUSTED, OOM kill)",
     "rerun at e79ebfc (offline-rate quick, 20 GB free): 100000x100000 exit 6 in 9 s before compiling, one line "
     "naming n_contexts x n_actions x (dim + 2) and 800 GB (it had first exposed an int32 overflow in the CDF "
     "search, fixed); sample_sizes=64,1e9: exit 6 after compiling (262 s), one line: one seed needs 484 GB (XLA's "
     "estimate). Rerun 2026-12-04, each inside a memory cgroup (v1 memory.limit_in_bytes): 2500x2500 --max-memory "
     "6 --seeds 2 --set panel_coverages= in a 6 GB cgroup: at eee0ac6 killed by the kernel, no message (2 seeds "
     "per chunk fitted XLA's 5.0 GB estimate; the process grew past 6 GB), fixed in 33678d6, 5312a74, 658f2f8 "
     "(on CPU the cap is the whole process's and is read again after compiling, cgroup limits count as free "
     "memory, a chunk is expected to take 1.5x XLA's estimate: measured 1.33x); at 658f2f8 halved to 1 seed per "
     "chunk (7.51 GB expected, 4.92 GB free), exit 0 in 4 min 38 s, peak resident 4.38 GB, results.csv equal to "
     "5312a74's; 4000x4000 --seeds 1 (all 4 settings) in a 22 GB cgroup at eee0ac6: exit 0 in 35 min 50 s, "
     "XLA's estimate 6.40 GB per seed, peak resident 9.32 GB, 80 finite rows",
     "test_reliability.py::test_an_instance_no_device_can_hold_is_refused_before_compiling, "
     "::test_a_chunk_over_the_memory_cap_runs_smaller_and_one_that_cannot_fit_is_refused, "
     "::test_the_budget_is_read_again_after_compiling, ::test_cgroup_limits_bound_the_free_memory_v1_nested_and_v2, "
     "::test_memory_refusal_through_the_cli_is_one_line"),
    ("nash-offline kl_coef=1e-6, kl_coef=1e6 reward_norm=50: the summary crashed (fit_loglog_slope) and no "
     "results.csv was written",
     "rerun (quick): both run to the end, exit 0, every slope reported (a bootstrap resample with a zero mean has "
     "no slope and is skipped; NaN with a reason below 95% defined); any summary that still fails is exit 7 after "
     "results.csv, manifest and figures are written, the reason in the manifest's summary_error",
     "test_engine.py::test_loglog_slope_interval_skips_resamples_without_a_slope, "
     "test_reliability.py::test_a_summary_that_fails_never_loses_the_results"),
    ("iterations=0 accepted, then a matplotlib traceback",
     "rerun (online-explore quick): exit 2, 'iterations=0 is not allowed: iterations must be an integer >= 1'",
     "test_reliability.py::test_bad_input_gives_one_line_and_a_distinct_exit_code"),
    ("a truncated chunk_2.npz raised BadZipFile on every rerun",
     "the chunk is named, recomputed, and the results equal a fresh run's",
     "test_reliability.py::test_an_unreadable_chunk_is_named_and_recomputed"),
    ("--out a regular file, under a regular file, read-only, full disk",
     "exit 3, one line with the OS's reason and the path",
     "test_reliability.py::test_bad_input_gives_one_line_and_a_distinct_exit_code, "
     "::test_a_read_only_output_directory_is_one_line"),
    ("Ctrl-C: a 25-line KeyboardInterrupt traceback; hf-smoke without torch: a chained traceback",
     "exit 130 / exit 4, one line each",
     "test_reliability.py::test_interrupt_and_missing_dependency_are_one_line"),
    ("a ragged results.csv: KeyError in plot", "exit 2: 'results.csv is malformed: line N has ...'",
     "test_reliability.py::test_a_ragged_results_file_is_one_line_in_plot"),
    ("plot DIR imported the plugins its manifest lists (relative to the current directory)",
     "plot imports none unless --plugin or --trust-plugins; recorded paths resolved against the run "
     "directory and checked against the recorded SHA-256",
     "test_reliability.py::test_plot_imports_no_plugin_unless_asked_and_checks_the_recorded_hash"),
    ("two runs into one --out/NAME at once: the last silently overwrote the other",
     "a lock on OUT/NAME: the second run exits 5 with one line",
     "test_reliability.py::test_a_second_run_into_the_same_directory_is_refused"),
    ("results, manifest and figures created 0600", "files follow the umask",
     "test_reliability.py::test_written_files_follow_the_umask"),
    ("--set help's example instance.kl_coef=0.1 failed on every built-in; --chunk-size help claimed equal results",
     "short names (kl_coef=0.1) and dotted paths both work; the help says results agree to the last bits",
     "test_engine.py::test_short_names_reach_nested_fields_and_ambiguity_is_refused"),
    ("--seed-range a:b / 4 / 3:3 / 5:2 / -1:2 / 0:2**31 / 0:1e3, and --seeds with --seed-range",
     "exit 2, one line naming --seed-range, the value and 0 <= START < STOP <= 2147483647",
     "test_merge.py::test_bad_seed_ranges_are_one_line, ::test_seed_range_and_seeds_together_are_refused"),
    ("merge of ranges with another config or source, overlapping, with a gap, a missing or unfinished directory, "
     "a full run, a damaged output file", "exit 2 (3 for a missing directory), one line naming the seeds, the "
     "field or the file; nothing written", "test_merge.py::test_bad_merge_inputs_are_one_line_and_write_nothing"),
    ("--distributed with only some of --coordinator/--num-processes/--process-id, a process id >= P, with "
     "--seed-range, or the three without --distributed", "exit 2, one line naming the options and what is allowed",
     "test_distributed.py::test_bad_distributed_options_are_one_line"),
    ("lm-rejection / lm-omd-features vocab_size=50 length=8: a traceback from inside the compile (the TreeLM's "
     "table, the enumerated space)", "exit 2 before compiling, one line naming the config and its limit",
     "test_reliability.py::test_bad_input_gives_one_line_and_a_distinct_exit_code"),
    ("--sweep without '=', with an empty value, a repeated value or field, an unknown or tuple field, a point "
     "its config refuses, or with --seed-range / --distributed", "exit 2, one line naming the sweep, the field or "
     "the point and what is allowed; nothing written",
     "test_sweep.py::test_bad_sweeps_are_one_line_and_write_nothing"),
    ("one process of a --distributed run fails", "process 0 exits 8 with 'another process failed: process I: ...'; "
     "nothing written under OUT/NAME",
     "test_distributed.py::test_two_processes_write_the_single_run_and_a_failure_stops_both"),
]


def test_every_case_names_a_test_that_exists():
    import importlib
    for case, outcome, where in CASES:
        module = None
        for ref in where.split(", "):
            if ".py::" in ref:
                module = importlib.import_module("tests." + ref.split(".py::")[0])
                ref = ref.split("::")[1]
            else:
                ref = ref.lstrip(":")
            assert hasattr(module, ref), (case, ref)


def test_the_set_help_example_works_on_a_built_in():
    cfg = registry.get("offline-rate").presets["quick"]
    from experiments.engine.config import apply_overrides
    assert apply_overrides(cfg, ["instance.kl_coef=0.1"]) == apply_overrides(cfg, ["kl_coef=0.1"])
    assert dataclasses.replace(cfg.instance, kl_coef=0.1) == apply_overrides(cfg, ["kl_coef=0.1"]).instance


@pytest.mark.parametrize("name", NAMES)
def test_show_lists_every_field_with_its_type_and_defaults(name, capsys):
    config = registry.get(name).presets["quick"]
    assert cli.main(["show", name]) == 0
    out = capsys.readouterr().out
    short = {p: s for s, p in short_names(config).items() if isinstance(p, str)}
    for path in settable_fields(config):
        label = short.get(path, path)
        assert f"\n  {label}" in out, (name, path)
