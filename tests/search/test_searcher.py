"""The reproducible searcher: same seed, same suggestions, whatever order trials finish in (no Ray started)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from torch import nn

from rayzor.search import (
    DEFERRED_KEY,
    OrderedOptunaSearch,
    SearchConfig,
    blind_trials,
    make_sampler,
    make_searcher,
    published_params,
)
from rayzor.spaces import CompressionSpace


def _space(trial: Any) -> None:
    for i in range(3):
        trial.suggest_float(f"layer{i}.sparsity", 0.0, 0.9)
        trial.suggest_categorical(f"layer{i}.bits", [2, 4, 8])


def _result(params: dict[str, Any]) -> dict[str, float]:
    """A deterministic two-objective result of a plan (quality falls with sparsity and low bits)."""
    sparsity = sum(v for k, v in params.items() if k.endswith("sparsity"))
    bits = sum(v for k, v in params.items() if k.endswith("bits"))
    return {"accuracy": 1.0 - 0.1 * sparsity - 0.5 / bits, "size_bytes": bits * (1.0 - sparsity / 3), "final": 1.0}


def _searcher(**kwargs: Any) -> OrderedOptunaSearch:
    """The searcher over :func:`_space`, maximizing accuracy and minimizing size."""
    return OrderedOptunaSearch(_space, metric=["accuracy", "size_bytes"], mode=["max", "min"], **kwargs)


def _search(
    deterministic: bool,
    newest_first: bool,
    concurrency: int = 2,
    trials: int = 16,
    blind: float = 0,
    defer: str | None = None,
    fail: frozenset[int] = frozenset(),
    deferred: list[int] | None = None,
) -> list[dict | None]:
    """Drive the searcher as Tune's loop does (at most ``concurrency`` live trials); end the newest or oldest first.

    With ``defer`` (needs Ray), a trial the searcher defers starts at once and
    reads its params from where the searcher publishes them (its number is
    added to ``deferred``); it can end only once it has them. A trial in
    ``fail`` (0-based numbers) ends with an error; one that waits for its
    params ends so before anything else, as a worker lost while it waited.
    Returns each trial's params (``None`` for a trial lost before it had any).
    """
    searcher = _searcher(
        sampler=optuna.samplers.TPESampler(seed=3, multivariate=True, n_startup_trials=4),
        points_to_evaluate=[{f"layer{i}.{k}": v for i in range(3) for k, v in (("sparsity", 0.0), ("bits", 8))}],
        concurrency=concurrency,
        blind=blind,
        deterministic=deterministic,
        defer=defer,
    )
    suggested: list[dict | None] = []
    keys: dict[int, str] = {}  # deferred trials: where their params appear
    live: list[int] = []
    while len(suggested) < trials or live:
        if len(live) < concurrency and len(suggested) < trials:
            params = searcher.suggest(f"t{len(suggested)}")
            if params is not None:
                if DEFERRED_KEY in params:
                    keys[len(suggested)] = params[DEFERRED_KEY]
                    (deferred if deferred is not None else []).append(len(suggested))
                live.append(len(suggested))
                suggested.append(None if DEFERRED_KEY in params else params)
                continue
        for k in live:
            if suggested[k] is None and k not in fail:
                suggested[k] = published_params(keys[k])
        lost = [k for k in live if suggested[k] is None and k in fail]
        can_end = [k for k in live if suggested[k] is not None]
        assert lost or can_end, "every live trial waits for params the searcher does not give"
        ended = lost[0] if lost else can_end[-1 if newest_first else 0]
        live.remove(ended)
        if ended in fail:
            searcher.on_trial_complete(f"t{ended}", None, error=True)
        else:
            searcher.on_trial_complete(f"t{ended}", _result(suggested[ended]))
    assert all(published_params(key) is None for key in keys.values())  # withdrawn once the trial ended
    return suggested


def test_suggestions_do_not_depend_on_completion_order():
    assert _search(True, newest_first=True) == _search(True, newest_first=False)


def test_without_deterministic_the_order_changes_the_suggestions():
    # What the ordered mode fixes: the same seed gives other trials when results arrive in another order.
    assert _search(False, newest_first=True) != _search(False, newest_first=False)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_suggestions_reproduce_at_other_concurrencies(concurrency):
    runs = [_search(True, newest_first=n, concurrency=concurrency) for n in (True, False)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("concurrency", [2, 3])
def test_start_up_trials_do_not_wait_and_suggest_the_same(concurrency):
    # TPE's 4 start-up trials read no result: suggesting them without waiting changes nothing that follows.
    waiting = _search(True, newest_first=True, concurrency=concurrency)
    assert _search(True, newest_first=True, concurrency=concurrency, blind=4) == waiting
    assert _search(True, newest_first=False, concurrency=concurrency, blind=4) == waiting


@pytest.mark.parametrize("concurrency", [2, 3])
def test_deferred_trials_run_the_params_waiting_would_give(ray_session, concurrency):
    # A trial that must wait starts at once on a placeholder; its params, asked in trial order, are the same.
    waiting = _search(True, newest_first=True, concurrency=concurrency)
    for newest_first in (True, False):
        deferred: list[int] = []
        name = f"deferred-{concurrency}-{newest_first}"
        assert _search(True, newest_first, concurrency, defer=name, deferred=deferred) == waiting
        # Ending the newest first, the oldest is overtaken: where the searcher alone answered "not yet".
        assert bool(deferred) == newest_first


def test_a_trial_lost_while_it_waits_is_told_failed_in_its_turn(ray_session):
    # Its params are asked in its turn all the same, so every later Optuna number and suggestion holds.
    deferred: list[int] = []
    _search(True, newest_first=True, defer="lost-probe", deferred=deferred)
    k = deferred[0]
    lost = _search(True, newest_first=True, defer="lost", fail=frozenset({k}))
    failed = _search(True, newest_first=True, fail=frozenset({k}))  # waits instead, then fails after it started
    assert lost[k] is None and failed[k] is not None
    assert lost[:k] + lost[k + 1 :] == failed[:k] + failed[k + 1 :]


def test_a_restored_searcher_keeps_its_deferred_trials(ray_session, tmp_path):
    # Saved with trial 4 deferred, trial 5 waiting unasked: the restored searcher publishes trial 4's
    # params again (a new Ray's store is empty) and asks trial 5 as the live one does.
    def searcher() -> OrderedOptunaSearch:
        return _searcher(
            concurrency=2,
            defer="restored",
            sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
        )

    live = searcher()
    params = {t: live.suggest(t) for t in "abc"}  # lag 3: trial 3 sees no result yet
    params["d"] = live.suggest("d")  # trial 4 needs trial 1: started on a placeholder
    live.on_trial_complete("b", _result(params["b"]))
    assert DEFERRED_KEY in params["d"] and published_params(params["d"][DEFERRED_KEY]) is None
    live.on_trial_complete("a", _result(params["a"]))
    deferred = published_params(params["d"][DEFERRED_KEY])
    assert deferred is not None
    params["e"] = live.suggest("e")  # trial 5 needs trial 2 (in) and the deferred trial 4 asked first
    assert DEFERRED_KEY not in params["e"]
    live.suggest("f")  # trial 6 needs trial 3, still running: deferred
    live.save_to_dir(str(tmp_path), "s")
    live.on_trial_complete("d", _result(deferred))  # withdraws trial 4's params, as a new Ray would lack them
    assert published_params(params["d"][DEFERRED_KEY]) is None

    restored = searcher()
    restored.restore_from_dir(str(tmp_path))
    assert published_params(params["d"][DEFERRED_KEY]) == deferred
    live.on_trial_complete("c", _result(params["c"]))
    asked = published_params("restored/f")
    assert asked is not None
    live.on_trial_complete("f", _result(asked))  # withdrawn: what appears next, the restored searcher asked
    restored.on_trial_complete("d", _result(deferred))
    restored.on_trial_complete("c", _result(params["c"]))
    assert published_params("restored/f") == asked
    params["g"] = live.suggest("g")
    assert DEFERRED_KEY not in params["g"] and restored.suggest("g") == params["g"]


def test_a_start_up_trial_is_suggested_while_older_ones_run():
    searcher = _searcher(
        concurrency=2,
        blind=5,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    # Trial 4 would wait for trial 1 (see the next test); within the start-up nothing waits.
    assert all(searcher.suggest(t) is not None for t in "abcde")
    assert searcher.suggest("f") is None  # trial 6 sees trials 1-3, none of which has ended


@pytest.mark.parametrize(("name", "dimensions"), [("tpe", 4), ("tpe", 40), ("nsga2", 4), ("gp", 4), ("random", 4)])
def test_blind_trials_are_the_samplers_result_blind_start_up(name, dimensions):
    # Ask the first ``blind`` trials telling each result at once, and again telling none: the same params,
    # for every sampler a search can build. ``random`` is blind throughout (checked over 12 trials).
    def ask(tell: bool) -> list[dict[str, Any]]:
        study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=make_sampler(name, seed=1, trials=16, dimensions=dimensions)
        )
        params = []
        for _ in range(min(blind, 12)):
            trial = study.ask()
            for i in range(dimensions // 2):
                trial.suggest_float(f"layer{i}.sparsity", 0.0, 0.9)
                trial.suggest_categorical(f"layer{i}.bits", [2, 4, 8])
            params.append(trial.params)
            if tell:
                study.tell(trial, list(_result(trial.params).values())[:2])
        return params

    blind = blind_trials(name, 16)
    assert blind >= 4 and (blind == math.inf) == (name == "random")
    assert ask(tell=True) == ask(tell=False)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_a_searchs_searcher_defers_trials_only_after_its_samplers_start_up(sampler):
    # What run_search builds: the sampler's start-up is suggested at once, and the first trial
    # after it, with no trial ended yet, starts on a placeholder under the search's name.
    space = CompressionSpace.from_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)))
    config = SearchConfig(trials=16, sampler=sampler, concurrency=2, objectives=("accuracy", "size_bytes"))
    searcher = make_searcher(config, space, [], "wiring", concurrency=2)
    blind = int(blind_trials(sampler, 16))
    assert all(DEFERRED_KEY not in searcher.suggest(f"t{i}") for i in range(blind))
    assert searcher.suggest(f"t{blind}") == {DEFERRED_KEY: f"wiring/t{blind}"}


def test_a_trial_waits_for_the_result_it_depends_on():
    searcher = _searcher(
        concurrency=2,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    params = {t: searcher.suggest(t) for t in ("a", "b")}
    searcher.on_trial_complete("b", _result(params["b"]))
    params["c"] = searcher.suggest("c")  # lag 3 at concurrency 2: trial 3 sees no result, so it does not wait
    assert params["c"] is not None
    searcher.on_trial_complete("c", _result(params["c"]))
    assert searcher.suggest("d") is None  # trial 4 sees trial 1's result, which is not in (overtaken twice)
    searcher.on_trial_complete("a", _result(params["a"]))
    assert searcher.suggest("d") is not None
    told = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert told[:1] == [optuna.trial.TrialState.COMPLETE]  # trial 1 told; trials 2-3 held back from trial 4
    assert told[1:3] == [optuna.trial.TrialState.RUNNING] * 2


def test_failed_and_stopped_trials_are_told_in_turn():
    searcher = _searcher(
        concurrency=1,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    searcher.suggest("a")
    searcher.on_trial_complete("a", None, error=True)
    params = searcher.suggest("b")
    searcher.on_trial_complete("b", {**_result(params), "final": 0.0})
    searcher.suggest("c")
    states = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING]


def test_the_study_ends_complete_once_every_trial_is_suggested():
    searcher = _searcher(
        concurrency=2,
        budget=3,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    params = {t: searcher.suggest(t) for t in ("a", "b")}
    searcher.on_trial_complete("a", _result(params["a"]))
    params["c"] = searcher.suggest("c")
    for t in ("c", "b"):  # out of order: told in order, and all of them, as no suggestion is left
        searcher.on_trial_complete(t, _result(params[t]))
    states = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3


def test_the_study_is_rewritten_only_when_the_searcher_changed(tmp_path):
    # Tune saves the experiment every 0.1 s; an unchanged searcher keeps its file (same inode: no os.replace).
    searcher = _searcher(sampler=optuna.samplers.RandomSampler(seed=0))
    path = tmp_path / OrderedOptunaSearch.CKPT_FILE_TMPL.format("s")
    searcher.save_to_dir(str(tmp_path), "s")
    first = path.stat().st_ino
    searcher.save_to_dir(str(tmp_path), "s")
    assert path.stat().st_ino == first
    params = searcher.suggest("t0")
    searcher.save_to_dir(str(tmp_path), "s")
    assert path.stat().st_ino != first
    searcher.on_trial_complete("t0", _result(params))
    searcher.save_to_dir(str(tmp_path), "s")
    restored = _searcher(sampler=optuna.samplers.RandomSampler(seed=0))
    restored.restore_from_dir(str(tmp_path))
    # the saved state is the live one: held result, order and sampler state give the same next trial
    assert restored.suggest("t1") == searcher.suggest("t1")
    # A deleted file is written again even when nothing changed.
    path.unlink()
    restored.save_to_dir(str(tmp_path), "s")
    assert path.exists()
