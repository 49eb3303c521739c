"""A reproducible Optuna searcher for Tune: suggestions that never depend on completion timing.

With ``c`` trials at a time, Tune hands results to a searcher in the order
trials finish, which depends on timing; Optuna's next suggestion depends on
what it was told. So two runs of the same seeded search drift apart after a
few trials. :class:`OrderedOptunaSearch` tells Optuna the results in trial
order and fixes what each suggestion sees: trial ``k`` (1-based, in the order
suggestions are made, which is Tune's trial numbering) is asked for only once
trials ``1..k-L`` are all told, with the lag ``L = 2c - 1``, and the results
of trials ``k-L+1..k-1`` are held back even when they are in, so trial ``k``'s
params depend only on the seed and the results of trials ``1..k-L`` (a subset
of ``1..k-c``). Why not ``L = c``: when a slot frees, the ``c - 1`` other
trials are still running, and with ``L = c`` one of them is trial ``k-c``
whenever a newer trial ended first, about half the time: the slot idled (the
default digits search ran at twice its overhead). With ``L = 2c - 1`` trial
``k`` waits only for a trial that ``c`` newer ones have overtaken; at ``c = 1``
the lag is 1 and the search is the sequential one.

The sampler's start-up (``blind`` first trials: TPE's random trials,
NSGA-II's first generation) reads no result, so those suggestions never
wait. Why it matters: a worker's first trial is slow (a new process imports
its libraries), so the first trials end far apart, and a suggestion that
waits leaves a worker idle. Tune keeps one idle actor for reuse; when the
other trial ends too, its actor is stopped and the next trial starts a new
process (5 to 6 s here), whose first trial is slow again: a loop that took
some default c = 2 digits searches to 2.8 to 4.4 times their compute
instead of 1.7 to 1.8.

After the start-up a wait still comes whenever ``c`` newer trials overtake a
slow one (trial times with a heavy tail: one plan fine-tunes, calibrates or
exports far longer). Given ``defer`` (the search's name), the searcher then
does not answer "not yet": it hands Tune a placeholder
(:mod:`~rayzor.search._deferred`), the trial starts on the reused worker and
waits there for its params, which are asked and published in trial order as
soon as their inputs are told. Suggestions are the same as waiting would
give; what goes is the actor restart (heavy-tailed c = 2 searches used 3 to
6 trial processes instead of 2, BENCHMARKS.md system_slowtail).
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from rayzor.search._deferred import DEFERRED_KEY, publish, withdraw

__all__ = ["OrderedOptunaSearch"]


class OrderedOptunaSearch(OptunaSearch):
    """:class:`~ray.tune.search.optuna.OptunaSearch` that tells Optuna results in trial order.

    Args:
        *args: As for ``OptunaSearch`` (the space, metric, mode, sampler, points to evaluate).
        concurrency: Trials Tune runs at once (``c``); suggestions lag ``2c - 1`` trials behind.
        budget: The search's trials: once all are suggested, results are
            told as soon as they are next in order (so the study ends complete).
        blind: First trials the sampler draws blind to every result
            (``make_sampler``'s start-up): suggested without waiting.
        deterministic: ``False`` gives ``OptunaSearch``'s own behaviour: each
            result is told when it arrives, nothing waits.
        defer: Where a trial that must wait gets its params: a prefix of
            the keys they are published under (the search's name; Ray must
            be up). ``None``: ``suggest`` returns ``None`` until it can answer.
        **kwargs: As for ``OptunaSearch``.

    Failed trials are told as ``FAIL``; a trial a scheduler stopped early
    (its last result has ``final: 0``) as ``PRUNED``, in its turn; a
    deferred trial that ended before its params were asked (its worker was
    lost while it waited) is asked in its turn all the same and told as
    ``FAIL``, so later trials keep their Optuna numbers. The buffer, the
    order and the deferred trials are pickled with the study by Tune's
    searcher checkpoints, so a resumed search keeps them (and publishes the
    params of deferred trials again: a new Ray has an empty store).

    Tune saves the experiment on a clock (every ``EXPERIMENT_SAVE_SECONDS``,
    0.1 s), and the study's pickle grows with trials and dimensions: 13 ms at
    64 trials of 40 dimensions, 220 ms at 1,000. So the searcher's file is
    rewritten only when its state changed since the last save there; while
    trials run and nothing arrives, the file on disk already holds the state.
    """

    def __init__(
        self,
        *args: Any,
        concurrency: int = 1,
        budget: int | None = None,
        blind: float = 0,
        deterministic: bool = True,
        defer: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._lag = 2 * max(1, concurrency) - 1
        self._budget = budget
        self._blind = blind
        self._deterministic = deterministic
        self._order: list[str] = []  # trial ids, in suggestion (= Tune trial number) order
        self._held: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # ended, not yet told
        self._told = 0  # trials _order[:_told] are told
        self._defer = defer
        self._deferred: list[str] = []  # trials started with a placeholder, params not yet asked, in order
        self._published: dict[str, dict[str, Any]] = {}  # params of deferred trials that have not ended
        self._version = 0  # bumped by every call that can change the state
        self._saved: tuple[str, int] | None = None  # (file, version) of the last save
        super().__init__(*args, **kwargs)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        path = os.path.join(checkpoint_dir, self.CKPT_FILE_TMPL.format(session_str))
        if self._saved == (path, self._version) and os.path.exists(path):
            return
        super().save_to_dir(checkpoint_dir, session_str)
        self._saved = (path, self._version)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._version, self._saved = getattr(self, "_version", 0) + 1, None
        for name, empty in (("_defer", None), ("_deferred", []), ("_published", {})):
            self.__dict__.setdefault(name, empty)  # pickled before deferred params existed
        for tid, params in self._published.items():
            publish(self._key(tid), params)  # the trial restarts and waits for them again

    def set_search_properties(self, *args: Any, **kwargs: Any) -> bool:
        self._version += 1
        return super().set_search_properties(*args, **kwargs)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self._version += 1
        super().add_evaluated_point(*args, **kwargs)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._version += 1
        super().on_trial_result(trial_id, result)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self._version += 1
        # A searcher pickled before ``blind`` existed (a resumed search) has none: it always waited.
        if not self._deterministic or trial_id in self._ot_trials or len(self._order) < getattr(self, "_blind", 0):
            return self._suggest(trial_id)
        if trial_id in self._deferred:
            return {DEFERRED_KEY: self._key(trial_id)}
        self._resolve()
        # 0-based trial j may see trials 0..j-lag: tell those, in order, or wait for them.
        needed = len(self._order) - self._lag + 1
        if not self._deferred and self._ready(needed):
            self._tell_held(needed)
            return self._suggest(trial_id)
        if self._defer is None:
            return None
        self._order.append(trial_id)
        self._deferred.append(trial_id)
        return {DEFERRED_KEY: self._key(trial_id)}

    def _key(self, trial_id: str) -> str:
        return f"{self._defer}/{trial_id}"

    def _ready(self, needed: int) -> bool:
        """Whether every trial a suggestion at ``needed`` may see has ended (those not yet told are held)."""
        return all(tid in self._held for tid in self._order[self._told : max(needed, 0)])

    def _resolve(self) -> None:
        """Ask, in trial order, the params of every deferred trial whose inputs are all in, and publish them."""
        while self._deferred:
            tid = self._deferred[0]
            needed = self._order.index(tid) - self._lag + 1
            if not self._ready(needed):
                return
            self._tell_held(needed)
            params = self._suggest(tid) or {}  # OptunaSearch always returns a dict here
            self._deferred.pop(0)
            if tid not in self._held:  # a trial that ended while it waited needs none
                self._published[tid] = params
                publish(self._key(tid), params)
        if self._budget is not None and len(self._order) >= self._budget:
            self._tell_held(self._budget)  # no suggestion is left to depend on them

    def _tell_held(self, upto: int) -> None:
        """Tell held results in trial order, up to trial ``upto`` (exclusive) or the first still running."""
        while self._told < min(upto, len(self._order)) and self._order[self._told] in self._held:
            tid = self._order[self._told]
            self._tell(tid, *self._held.pop(tid))
            self._told += 1

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if trial_id not in self._order:
            self._order.append(trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._version += 1
        if self._published.pop(trial_id, None) is not None:
            withdraw(self._key(trial_id))
        if not self._deterministic:
            self._tell(trial_id, result, error)
        elif trial_id in self._order and trial_id not in self._completed_trials and trial_id not in self._held:
            # only what the tell reads: the objectives and whether the trial ran to its end
            kept = {k: result[k] for k in (*self.metric, "final") if k in result} if result else None
            self._held[trial_id] = (kept, error)
            self._resolve()

    def _tell(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        if result is not None and not result.get("final", 1.0):
            result = None  # stopped early: PRUNED (its partial metrics are not the objectives)
        elif result is not None and any(_is_nan(result.get(m)) for m in self.metric):
            # A trial whose code raised reports NaN objectives. Told as COMPLETE, study.tell raises
            # ("The value nan is not acceptable") before storing anything, which Tune only logs: the
            # trial would stay RUNNING in the study, a permanent running point for the constant liar.
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
