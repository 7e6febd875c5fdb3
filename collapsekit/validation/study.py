"""The MT search as an Optuna study: one enqueued trial per candidate MT, shared through an Optuna storage.

Optuna keeps the record: each candidate is one trial enqueued with its MT
(`enqueue_trial`), every measurement is an intermediate value of that trial
(`trial.report`, step = optimizer steps), and `halving.HalvingPruner` prunes
the candidates successive halving leaves behind. With a storage URL
(`sqlite:///search.db` on one machine, PostgreSQL or MySQL across machines)
any number of processes work on one search:

- a process takes a waiting trial when it has nothing else to do, and keeps
  the candidate's fine-tuning run paused in memory between rungs
  (`pausable.PausableRun`), so a candidate that goes on continues its run;
- it records Optuna heartbeats for its trials; a trial whose heartbeat stops
  (a killed worker) is failed by `optuna.storages.fail_stale_trials`, and the
  candidate is enqueued again, to be re-run from its pruned weights by whichever
  process is free (a value reported before the kill is kept: runs are
  deterministic, so the retry would report the same);
- every decision reads only the reported values, so the answer does not depend
  on how many processes took part or in which order (invariant 11,
  docs/design.md), and a rerun on a finished study answers without training.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from collapsekit.analysis.timing import tqdm_class
from collapsekit.errors import CollapsekitError
from collapsekit.validation.halving import HalvingPruner, HalvingState, candidate_of, reported_values, rung_sizes

# After halving.py, which imports Optuna with its tqdm "IProgress not found" import warning silenced.
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

HEARTBEAT = 10  # seconds between a worker's heartbeats; a trial silent for 3 of them is stale
POLL = 0.5  # seconds between looks at the storage while other processes finish a rung
MAX_RETRIES = 3  # a candidate whose run fails this often stops the search with an error
STORAGE_RETRIES = 20  # storage errors in a row before a worker gives up
CONFIG_KEY = "collapsekit_mt_search"  # study user attribute: what every process must agree on
PARAM = "mt"


@dataclass(frozen=True)
class SearchPlan:
    """What a search is: candidates in the order they are enqueued, the rung ends (optimizer steps), the direction.

    `config` is everything that must match for a process to join a study made
    by another (model, data, sparsity, fine-tuning settings, the plan itself).
    """

    candidates: tuple[int, ...]
    steps: tuple[int, ...]
    steps_per_epoch: int
    run_steps: int  # a candidate's whole fine-tuning run; the last rung ends there unless the budget is short
    maximize: bool
    floor: float | None = None  # values no better than this tie (`halving.halving`)
    config: dict = field(default_factory=dict)

    def default_study_name(self) -> str:
        """A name made from `config`: the same search started twice lands in the same study."""
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()
        return f"collapsekit-mt-search-{digest[:12]}"


@dataclass
class WorkResult:
    """What one process's work on a study gave: every reported value, the halving state, the steps it trained."""

    values: dict
    state: HalvingState
    steps_trained: int
    study_name: str


def make_storage(url: str | None, heartbeat: int = HEARTBEAT):
    """An Optuna storage: in memory without `url`, else an RDBStorage with heartbeats (sqlite, PostgreSQL, MySQL)."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    if "://" not in url or not url.split("://", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql"):
        raise CollapsekitError(f"--storage {url!r} is not an Optuna database URL: use sqlite:///FILE.db (one "
                               "machine) or postgresql://USER:PASSWORD@HOST/DB, mysql://... (several machines)")
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait out another writer
    for attempt in range(5):  # two processes creating the same new database race on its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                     grace_period=3 * heartbeat)
            if url.startswith("sqlite"):
                _lock_sqlite_transactions(storage.engine)
            return storage
        except Exception as error:  # "table ... already exists", "UNIQUE constraint failed", "database is locked"
            if attempt == 4 or isinstance(error, (ImportError, ValueError)):
                raise CollapsekitError(f"cannot open the Optuna storage {url}: {error}") from error
            time.sleep(0.5 * (attempt + 1))


def _lock_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock as it begins (BEGIN IMMEDIATE).

    Python's sqlite3 driver starts a transaction only at the first write, so
    Optuna's "read the trial, set it RUNNING if it is WAITING" can succeed in two
    processes at once: both would take the same candidate and train it twice.
    With the lock taken at BEGIN, the read and the write are one step (the
    SQLAlchemy recipe for pysqlite's isolation); the 60 s busy timeout queues
    the others.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, says when a transaction begins

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (creating the tables) are not reused


def open_study(plan: SearchPlan, storage=None, study_name: str | None = None,
               heartbeat: int = HEARTBEAT) -> optuna.Study:
    """The study of `plan` in `storage` (a URL or None), created with its candidates enqueued, or joined.

    Joining checks that the study was made for the same search; a candidate
    with no trial yet (the creator was killed while enqueueing) is enqueued.
    """
    name = study_name or plan.default_study_name()
    pruner = HalvingPruner(plan.candidates, list(plan.steps), plan.maximize, PARAM, floor=plan.floor)
    study = optuna.create_study(storage=make_storage(storage, heartbeat), study_name=name, load_if_exists=True,
                                direction="maximize" if plan.maximize else "minimize", pruner=pruner)
    config = json.loads(json.dumps(plan.config))  # as the storage gives it back
    theirs = study.user_attrs.get(CONFIG_KEY)
    if theirs is None:
        study.set_user_attr(CONFIG_KEY, config)  # two creators write the same document
    elif theirs != config:
        diff = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        raise CollapsekitError(f"study {name!r} holds another search (it differs in {', '.join(diff)}); "
                               "use another --study-name, or the same model, data and settings")
    have = {candidate_of(t, PARAM) for t in study.get_trials(deepcopy=False)}
    for mt in plan.candidates:
        if mt not in have:
            study.enqueue_trial({PARAM: mt})
    return study


@contextmanager
def quiet_optuna():
    """Optuna's own log lines (a study created, each trial finished) silenced inside, restored after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


class _Heartbeat:
    """Records an Optuna heartbeat for every trial this process holds, every `interval` seconds, in a thread."""

    def __init__(self, study: optuna.Study, held: dict):
        storage = study._storage
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.storage, self.held = storage, held
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="collapsekit-heartbeat", daemon=True)
        if self.interval:
            self.thread.start()

    def record(self, trial_id: int) -> None:
        if self.interval:
            self.storage.record_heartbeat(trial_id)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in list(self.held):
                try:
                    self.record(trial_id)
                except Exception:  # a trial finished meanwhile, or the database hiccuped: the next beat tries again
                    pass

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


@dataclass
class _Held:
    trial: optuna.Trial
    mt: int | None  # None until the trial's candidate is read back from the storage
    run: object = None  # pausable.PausableRun, made when the candidate first trains here


def work(study: optuna.Study, plan: SearchPlan, start_run, progress: bool = False, poll: float = POLL) -> WorkResult:
    """Work on `study` until successive halving has its winner; returns every value reported to it.

    `start_run(mt)` makes a candidate's `pausable.PausableRun` (its pruned copy,
    ready to fine-tune). This process trains only what it takes from the queue;
    a candidate another process holds is left to it, one whose process died is
    enqueued again. `steps_trained` counts this process's optimizer steps.
    """
    tqdm = tqdm_class()
    pruner: HalvingPruner = study.pruner
    held: dict[int, _Held] = {}  # trial id -> what this process holds
    beat = _Heartbeat(study, held)
    spent = [0]  # optimizer steps this process trained
    bar = tqdm(total=plan_cost(plan) / plan.steps_per_epoch, desc="mt-search", unit="epoch", leave=False,
               dynamic_ncols=True, disable=not (progress and sys.stderr.isatty()))
    busy = 0  # storage errors in a row (SQLite answers "database is locked" under contention)
    try:
        while True:
            try:
                state, trials = _step(study, plan, pruner, held, beat, start_run, bar, spent, poll)
            except (optuna.exceptions.StorageInternalError, optuna.exceptions.UpdateFinishedTrialError) as error:
                # A trial of ours finished by another process (failed as stale while we were slow) is dropped
                # by the next step, which re-reads the study; a storage error is retried the same way.
                busy += 1
                if busy > STORAGE_RETRIES:
                    raise CollapsekitError(f"the Optuna storage keeps failing ({busy} times in a row): {error}") \
                        from error
                time.sleep(poll * busy)  # every step re-reads the study, so going round again loses nothing
                continue
            busy = 0
            if state is not None:
                break
    except BaseException:
        for own in list(held.values()):  # give the candidates back at once: another process or a rerun redoes them
            _tell(study, held, own, TrialState.FAIL)
        raise
    finally:
        for own in held.values():
            if own.run is not None:
                own.run.close()
        beat.close()
        bar.close()
    for own in list(held.values()):  # left behind by the last rung
        _tell(study, held, own, TrialState.PRUNED)
    return WorkResult(values=reported_values(trials, PARAM), state=state, steps_trained=spent[0],
                      study_name=study.study_name)


def _step(study, plan: SearchPlan, pruner, held: dict, beat, start_run, bar, spent: list, poll: float):
    """One look at the study and one thing done; (state, trials) once halving has its winner, else (None, None)."""
    if beat.interval:  # a dead process's trials turn FAIL (no heartbeats in memory: one process)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    state = pruner.state_from(trials)
    _release_lost(held, trials)
    for own in [h for h in held.values() if h.mt is None]:  # taken when the storage failed half-way
        _resolve(study, held, own, trials, plan)
    if state.finished:
        return state, trials
    _requeue(study, trials, state)
    own = _next(held, state, plan)
    if own is not None:
        step = state.need[own.mt]
        _advance(own, step, plan, start_run, bar, spent)
        if own.run.finished or step >= plan.steps[-1]:  # its last rung: the trial is complete
            _tell(study, held, own, TrialState.COMPLETE, own.run.value)
        return None, None
    dropped = [h for h in held.values() if h.trial.should_prune()]
    for own in dropped:
        _tell(study, held, own, TrialState.PRUNED)
    if not dropped and not _take(study, held, beat, plan):
        time.sleep(poll)  # other processes are finishing the rung
    return None, None


def plan_cost(plan: SearchPlan) -> int:
    """Optimizer steps the whole search trains when no run is lost: each candidate to where it is dropped."""
    sizes = rung_sizes(len(plan.candidates))
    if len(plan.steps) == 1:
        return len(plan.candidates) * plan.steps[-1]
    return plan.steps[-1] + sum(plan.steps[r] * (sizes[r] - sizes[r + 1]) for r in range(len(sizes) - 1))


def _next(held: dict, state: HalvingState, plan: SearchPlan):
    """The held candidate to train now: the one needed at the earliest rung, in enqueue (forecast) order."""
    order = {mt: i for i, mt in enumerate(plan.candidates)}
    waiting = [h for h in held.values() if h.mt in state.need]
    return min(waiting, key=lambda h: (state.need[h.mt], order[h.mt])) if waiting else None


def _advance(own: _Held, step: int, plan: SearchPlan, start_run, bar, spent: list) -> None:
    """Train `own`'s run to `step` (the end: its whole run), count the steps in `spent`, report what it measured."""
    if own.run is None:
        own.run = start_run(own.mt)
    before = own.run.steps_done
    value = own.run.advance(None if step >= plan.run_steps else step)
    done = own.run.steps_done - before
    spent[0] += done
    bar.update(done / plan.steps_per_epoch)
    # Per-epoch values for the learning curve, then the rung's own (the same step twice is one report).
    reports = dict(own.run.epoch_values)
    reports[step] = value  # paused exactly there, or (a run shorter than planned) finished before
    if own.run.finished:  # nothing more to train: the value of every later rung
        reports.update({s: value for s in plan.steps if s > step})
    with warnings.catch_warnings():  # Optuna warns on a step reported twice (a retry): the first value stays
        warnings.simplefilter("ignore")
        for s, v in sorted(reports.items()):
            if s > 0:
                own.trial.report(v, s)
    own.run.epoch_values.clear()


def _take(study: optuna.Study, held: dict, beat: _Heartbeat, plan: SearchPlan) -> bool:
    """Take the first waiting candidate from the queue; False when none waits."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": we beat ourselves
        warnings.simplefilter("ignore")
        trial = study.ask()
    # Held (and so beating, and failed on an error) before anything else can go wrong: a RUNNING trial
    # that never beats would never turn stale.
    own = held[trial._trial_id] = _Held(trial=trial, mt=None)
    beat.record(trial._trial_id)
    trials = study.get_trials(deepcopy=False)
    _resolve(study, held, own, trials, plan)
    return True


def _resolve(study: optuna.Study, held: dict, own: _Held, trials, plan: SearchPlan) -> None:
    """Name the candidate a newly taken trial runs; fail it if it has none (not one we enqueued: another
    process emptied the queue first) or if another trial already runs that candidate (a twin enqueue)."""
    frozen = next((t for t in trials if t._trial_id == own.trial._trial_id), None)
    mt = candidate_of(frozen, PARAM) if frozen is not None else None
    twins = [t for t in trials if t.state == TrialState.RUNNING and t.number != own.trial.number
             and candidate_of(t, PARAM) == mt]
    if mt is None or twins:
        own.trial.set_user_attr("twin", True)
        _tell(study, held, own, TrialState.FAIL)
        return
    own.trial.suggest_categorical(PARAM, list(plan.candidates))  # the enqueued MT, recorded as its parameter
    own.mt = mt


def _requeue(study: optuna.Study, trials, state: HalvingState) -> None:
    """Enqueue again each needed candidate that no trial is waiting for or running (its process died)."""
    live = {candidate_of(t, PARAM) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    for mt in state.need:
        if mt in live:
            continue
        failed = sum(1 for t in trials if candidate_of(t, PARAM) == mt and t.state == TrialState.FAIL
                     and not t.user_attrs.get("twin"))
        if failed >= MAX_RETRIES:
            raise CollapsekitError(f"the fine-tune of MT {mt} failed {failed} times in study {study.study_name!r}; "
                                   "see the failing process's error")
        study.enqueue_trial({PARAM: mt})


def _release_lost(held: dict, trials) -> None:
    """Drop the held trials the storage no longer has running (failed as stale while this process was slow)."""
    states = {t._trial_id: t.state for t in trials}
    for trial_id in [i for i in held if states.get(i) != TrialState.RUNNING]:
        own = held.pop(trial_id)
        if own.run is not None:
            own.run.close()


def _tell(study: optuna.Study, held: dict, own: _Held, state: TrialState, value: float | None = None) -> None:
    held.pop(own.trial._trial_id, None)
    if own.run is not None:  # a run stopped before its end unwinds its thread
        own.run.close()
    try:
        if state == TrialState.COMPLETE:
            if value is not None and math.isnan(value):  # a run that diverged: Optuna would fail the trial (and
                # the search would retry it), so it completes with the worst value, as halving ranks it
                value = -math.inf if study.direction == optuna.study.StudyDirection.MAXIMIZE else math.inf
            study.tell(own.trial, value)
        else:
            study.tell(own.trial, state=state)
    except Exception:  # another process failed it as stale meanwhile: its value is reported, nothing is lost
        pass


__all__ = ["SearchPlan", "WorkResult", "make_storage", "open_study", "work", "plan_cost", "quiet_optuna", "HEARTBEAT",
           "POLL"]
