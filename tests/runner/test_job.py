"""Whole jobs in process on a tiny model: results per task and granularity, cache reuse, resume after Ctrl-C
or after the driver process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import EstimatorSettings
from shapley_svc.estimators.exact import ExactEstimator
from shapley_svc.runner.driver import JobCancelledError, PreparedRun, run_job
from shapley_svc.runner.executors import GameInfo, GameWorker, InProcessExecutor, WorkerSetup, build_games
from shapley_svc.spec import BudgetSpec, EstimatorSpec, JobSpec, dump_spec, parse_spec
from shapley_svc.store import JobStatus, SQLiteStore
from shapley_svc.types import Coalitions, Values


def job_spec(tiny_checkpoint: Path, store: Path) -> JobSpec:
    task = {"corpus": "wikitext2", "data_dir": str(default_data_dir()), "window": 32, "windows": 2}
    return parse_spec(
        {
            "model": {"name": str(tiny_checkpoint), "dtype": "float32"},
            "players": {"granularities": ["block", "sublayer"]},
            "tasks": [{"name": "lm_loss", "params": task}],
            "estimators": [{"name": "exact", "seed": 0}],
            "budget": {"evaluations": 256},
            "executor": {"chunk_size": 8},
            "store": {"path": str(store)},
        }
    )


class Interrupting(ExactEstimator):
    """Exact enumeration that raises KeyboardInterrupt at its ``after``-th tell (a Ctrl-C mid-run)."""

    after: int | None = None

    def tell(self, request_id: int, values: Values) -> None:
        if self.after is not None and len(self._answered) == self.after:
            raise KeyboardInterrupt("simulated Ctrl-C")
        super().tell(request_id, values)


def exact_factory(interrupt_after: int | None = None):
    def factory(spec: EstimatorSpec, game: GameInfo, budget: BudgetSpec) -> PreparedRun:
        settings = EstimatorSettings(game.n_players, budget.evaluations, spec.seed, game.player_names)
        estimator = Interrupting(settings)
        estimator.after = interrupt_after
        estimator.set_task_names(game.task_names)
        return PreparedRun(estimator, None, None)

    return factory


class Counting:
    """Wraps a game and records every coalition it evaluates."""

    def __init__(self, game, seen: list[bytes]):
        self.game = game
        self.seen = seen
        self.n_players, self.player_names, self.task_names = game.n_players, game.player_names, game.task_names

    def fingerprint(self) -> str:
        return self.game.fingerprint()

    def setup(self) -> str:
        return self.game.setup()

    def __call__(self, coalitions: Coalitions) -> Values:
        self.seen.extend(np.packbits(row).tobytes() + bytes([len(row)]) for row in coalitions)
        return self.game(coalitions)


def counting_executor(spec: JobSpec, seen: list[bytes]) -> InProcessExecutor:
    games = build_games(WorkerSetup.from_spec(spec))
    return InProcessExecutor(GameWorker({key: Counting(game, seen) for key, game in games.items()}))


def stored(store_path: Path, job_id: str) -> dict[tuple[str, str, str], dict]:
    """The job's results by (granularity, estimator, task), without the job id recorded in their provenance."""
    with SQLiteStore(store_path) as store:
        results = {(r.granularity, r.estimator, r.task): json.loads(r.result_json) for r in store.get_results(job_id)}
    for result in results.values():
        assert result["params"]["provenance"].pop("job_id") == job_id
    return results


def test_job_stores_a_result_per_granularity_and_task_and_reruns_from_cache(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite")
    seen: list[bytes] = []
    first = run_job(spec, estimator_factory=exact_factory(), executor=counting_executor(spec, seen), progress_bar=False)
    assert [run.stats.evaluated for run in first.runs] == [16, 256]
    results = stored(spec.store.path, first.job_id)
    assert set(results) == {("block", "exact", "wikitext2.neg_loss"), ("sublayer", "exact", "wikitext2.neg_loss")}
    block = results[("block", "exact", "wikitext2.neg_loss")]
    np.testing.assert_allclose(np.sum(block["values"]), block["v_full"][0] - block["v_empty"][0], atol=1e-9)
    again: list[bytes] = []
    second = run_job(
        spec, estimator_factory=exact_factory(), executor=counting_executor(spec, again), progress_bar=False
    )
    assert again == [] and [run.stats.cache_hits for run in second.runs] == [16, 256]
    assert stored(spec.store.path, second.job_id) == results
    with SQLiteStore(spec.store.path) as store:
        assert store.get_job(second.job_id).status is JobStatus.SUCCEEDED


def test_resume_after_ctrl_c_gives_the_same_result_evaluating_nothing_twice(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    reference_spec = job_spec(tiny_checkpoint, tmp_path / "reference.sqlite")
    reference = run_job(reference_spec, estimator_factory=exact_factory(), progress_bar=False)
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite")
    seen: list[bytes] = []
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, estimator_factory=exact_factory(5), executor=counting_executor(spec, seen), progress_bar=False)
    with SQLiteStore(spec.store.path) as store:
        (failed,) = store.list_jobs()
        assert failed.status is JobStatus.FAILED and "--resume" in (failed.error or "")
    before = len(seen)
    assert 0 < before < 16 + 256
    resumed = run_job(
        spec, estimator_factory=exact_factory(), executor=counting_executor(spec, seen), resume=True, progress_bar=False
    )
    assert resumed.job_id == failed.id
    assert len(seen) == len(set(seen)) == 16 + 256, "a cached coalition was evaluated again"
    assert stored(spec.store.path, resumed.job_id) == stored(reference_spec.store.path, reference.job_id)


def test_a_cancelled_job_is_never_run_again_and_resume_starts_a_new_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite")
    with SQLiteStore(spec.store.path) as store:
        queued = store.create_job(spec.model_dump(mode="json"))
        store.update_job(queued.id, status=JobStatus.RUNNING)  # a service worker took it ...
        store.update_job(queued.id, status=JobStatus.CANCELLED)  # ... and a cancel landed before run_job began
        seen: list[bytes] = []
        with pytest.raises(JobCancelledError):
            run_job(
                spec,
                estimator_factory=exact_factory(),
                executor=counting_executor(spec, seen),
                store=store,
                job_id=queued.id,
                resume=True,
                progress_bar=False,
            )
        assert seen == [] and store.get_job(queued.id).status is JobStatus.CANCELLED
        resumed = run_job(spec, estimator_factory=exact_factory(), store=store, resume=True, progress_bar=False)
        assert resumed.job_id != queued.id and store.get_job(queued.id).status is JobStatus.CANCELLED


class CancellingOnFirstCall(Counting):
    """A game that cancels the job in the store the first time it is asked for values (a user's cancel mid-run)."""

    def __init__(self, game, store: SQLiteStore, job_id: str, cancelled_at: list[datetime]):
        super().__init__(game, [])
        self.store, self.job_id, self.cancelled_at = store, job_id, cancelled_at

    def __call__(self, coalitions: Coalitions) -> Values:
        if not self.cancelled_at:
            self.cancelled_at.append(self.store.update_job(self.job_id, status=JobStatus.CANCELLED).updated_at)
        return super().__call__(coalitions)


def test_a_cancel_mid_run_stops_it_and_the_job_reports_nothing_after(tiny_checkpoint: Path, tmp_path: Path) -> None:
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite")
    with SQLiteStore(spec.store.path) as store:
        job = store.create_job(spec.model_dump(mode="json"))
        cancelled_at: list[datetime] = []
        games = build_games(WorkerSetup.from_spec(spec))
        executor = InProcessExecutor(
            GameWorker({key: CancellingOnFirstCall(game, store, job.id, cancelled_at) for key, game in games.items()})
        )
        with pytest.raises(JobCancelledError):
            run_job(
                spec,
                estimator_factory=exact_factory(),
                executor=executor,
                store=store,
                job_id=job.id,
                resume=True,
                progress_bar=False,
            )
        final = store.get_job(job.id)
        assert final.status is JobStatus.CANCELLED and final.updated_at == cancelled_at[0], "progress written after"


def test_spec_estimator_params_and_stopping_rule_drive_the_run(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = job_spec(tiny_checkpoint, tmp_path / "s.sqlite").model_dump(mode="json")
    data["players"] = {"granularities": ["sublayer"]}
    data["estimators"] = [{"name": "permutation", "seed": 4, "params": {"walks_per_round": 2}}]
    data["budget"] = {"evaluations": 200, "stopping": [{"name": "max_evaluations", "params": {"limit": 30}}]}
    outcome = run_job(parse_spec(data), progress_bar=True)
    (run,) = outcome.runs
    assert run.stats.stopped_by == "stopping" and 30 <= run.stats.told < 200
    assert "evaluations=" in capsys.readouterr().err, "the progress bar shows the stopping measure"
    result = json.loads(run.results["wikitext2.neg_loss"])
    assert result["task_names"] == ["wikitext2.neg_loss"]
    assert result["player_names"][:2] == ["layer0.attn", "layer0.mlp"]
    assert result["evaluations_used"] == run.stats.told and result["params"]["walks_per_round"] == 2


def test_an_unknown_estimator_param_fails_before_any_model_loads(tmp_path: Path) -> None:
    data = job_spec(tmp_path / "no-model-here", tmp_path / "s.sqlite").model_dump(mode="json")
    data["estimators"] = [{"name": "permutation", "params": {"walk_per_round": 2}}]
    with pytest.raises(ConfigError, match="did you mean 'walks_per_round'"):
        run_job(parse_spec(data), progress_bar=False)
    data["estimators"] = [{"name": "permutation"}]
    data["budget"]["stopping"] = [{"name": "stderr_below", "params": {}}]
    with pytest.raises(ConfigError, match="stderr_below"):
        run_job(parse_spec(data), progress_bar=False)


# A real driver process running a spec; after a few chunks it stalls for good, so that the SIGKILL the test
# sends lands mid-run whatever the machine's load.
STALLING_DRIVER = """
import sys, threading
from shapley_svc.runner.driver import run_job
from shapley_svc.runner.executors import make_executor
from shapley_svc.spec import load_spec

class Stalling:
    def __init__(self, inner):
        self.inner, self.chunks = inner, 0
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def wait(self, timeout=None):
        if self.chunks >= 3:
            threading.Event().wait()
        results = self.inner.wait(timeout)
        self.chunks += len(results)
        return results

spec = load_spec(sys.argv[1])
run_job(spec, executor=Stalling(make_executor(spec)), progress_bar=False)
"""


def test_a_killed_driver_resumes_to_the_same_result_evaluating_no_cached_coalition(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    def seeded(store: Path) -> JobSpec:
        data = job_spec(tiny_checkpoint, store).model_dump(mode="json")
        data["players"] = {"granularities": ["sublayer"]}
        data["estimators"] = [{"name": "permutation", "seed": 1}]
        data["budget"] = {"evaluations": 96}
        return parse_spec(data)

    reference = run_job(seeded(tmp_path / "reference.sqlite"), progress_bar=False)
    game = json.loads(reference.runs[0].results["wikitext2.neg_loss"])["params"]["provenance"]["game"]
    spec = seeded(tmp_path / "s.sqlite")
    dump_spec(spec, tmp_path / "spec.yaml")
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    driver = subprocess.Popen(
        [sys.executable, "-c", STALLING_DRIVER, str(tmp_path / "spec.yaml")],
        env=os.environ | threads,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while cached_values(Path(spec.store.path), game) == 0:
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the driver cached nothing within 240 s"
            time.sleep(0.05)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    with SQLiteStore(spec.store.path) as store:
        cached = store.count_values(game)
        (killed,) = store.list_jobs()
    assert killed.status is JobStatus.RUNNING and 0 < cached < reference.runs[0].stats.evaluated
    seen: list[bytes] = []
    resumed = run_job(spec, executor=counting_executor(spec, seen), resume=True, progress_bar=False)
    assert resumed.job_id == killed.id
    assert resumed.runs[0].stats.cache_hits == cached
    assert len(seen) == len(set(seen)) == reference.runs[0].stats.evaluated - cached, "a cached value was recomputed"
    assert stored(spec.store.path, resumed.job_id) == stored(tmp_path / "reference.sqlite", reference.job_id)


def cached_values(path: Path, game: str) -> int:
    """Values cached under ``game`` in the store at ``path`` (0 while the file does not exist yet)."""
    if not path.exists():
        return 0
    with SQLiteStore(path) as store:
        return store.count_values(game)


def test_values_cached_under_another_setup_are_recomputed_unless_reuse_is_asked_for(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import sqlite3

    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite")
    first = run_job(spec, estimator_factory=exact_factory(), progress_bar=False)
    provenance = json.loads(first.runs[0].results["wikitext2.neg_loss"])["params"]["provenance"]
    assert provenance["setup"]["device"] == "cpu" and provenance["setup"]["dtype"] == "float32"
    assert {"torch", "transformers"} <= set(provenance["setup"])
    connection = sqlite3.connect(spec.store.path)
    connection.execute("""UPDATE value_cache SET setup = '{"device": "cuda", "dtype": "bfloat16"}'""")
    connection.commit()
    connection.close()
    strict = run_job(spec, estimator_factory=exact_factory(), progress_bar=False)
    assert [run.stats.cache_hits for run in strict.runs] == [0, 0]
    assert [run.stats.evaluated for run in strict.runs] == [16, 256]
    lenient_spec = spec.model_copy(update={"store": spec.store.model_copy(update={"reuse_across_setups": True})})
    with SQLiteStore(spec.store.path) as store:
        connection = sqlite3.connect(spec.store.path)
        connection.execute("""DELETE FROM value_cache WHERE setup NOT LIKE '%cuda%'""")
        connection.commit()
        connection.close()
        lenient = run_job(lenient_spec, estimator_factory=exact_factory(), store=store, progress_bar=False)
    assert [run.stats.evaluated for run in lenient.runs] == [0, 0]
    reused = json.loads(lenient.runs[1].results["wikitext2.neg_loss"])["params"]["provenance"]
    assert reused["reused_across_setups"] == {"values": 256, "setups": [{"device": "cuda", "dtype": "bfloat16"}]}


def test_a_jobs_plans_read_the_estimators_cached_values_and_are_checked_on_held_out_windows(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite").model_copy(deep=True)
    task = spec.tasks[0].params
    held_out = {**task, "first_window": task["windows"], "windows": 3, "windows_per_batch": 1}
    spec = parse_spec(
        spec.model_dump(mode="json")
        | {
            "plans": [
                {"remove": 2, "budget": 20, "method": "greedy"},
                {"granularity": "sublayer", "target": "attn", "remove": 2, "budget": 20},
                {"granularity": "sublayer", "most": True, "limits": {"wikitext2.neg_loss": 0.05}, "budget": 60},
            ],
            "held_out": [{"name": "lm_loss", "params": held_out}],
        }
    )
    seen: list[bytes] = []
    executor = counting_executor(spec, seen)
    outcome = run_job(spec, estimator_factory=exact_factory(), executor=executor, progress_bar=False)
    assert [plan.name for plan in outcome.plans] == ["block-block-2", "sublayer-attn-2", "sublayer-any-most"]
    exact = build_games(WorkerSetup.from_spec(spec))
    for done in outcome.plans:
        plan = done.plan
        assert plan.evaluations_computed == 0, "every removal set was cached by the exact estimator"
        game = exact[done.granularity]
        names = list(game.player_names)
        full, kept = np.ones((1, len(names)), dtype=bool), np.ones((1, len(names)), dtype=bool)
        kept[0, [names.index(name) for name in plan.removed]] = False
        np.testing.assert_allclose(plan.value, game(kept)[0, 0], rtol=1e-6)
        (check,) = plan.held_out
        assert check.items == 3 and check.task == "wikitext2.neg_loss"
        windows = exact[done.granularity + ".held_out"]
        np.testing.assert_allclose(check.difference, (windows(kept) - windows(full)).mean(), rtol=1e-5, atol=1e-7)
    most = outcome.plans[2].plan
    assert most.task_values["wikitext2.neg_loss"] >= exact["sublayer"](np.ones((1, 8), dtype=bool))[0, 0] - 0.05
    with SQLiteStore(spec.store.path) as store:
        stored_plans = {record.name: json.loads(record.plan_json) for record in store.get_plans(outcome.job_id)}
    assert stored_plans["block-block-2"]["removed"] == list(outcome.plans[0].plan.removed)
    assert stored_plans["block-block-2"]["provenance"]["job_id"] == outcome.job_id
    splits = stored_plans["block-block-2"]["provenance"]["splits"]
    assert [piece["text"] for piece in splits["estimation_slices"]] == ["wikitext2 test tokens 0-63"]
    assert [piece["text"] for piece in splits["judging_slices"]] == ["wikitext2 test tokens 64-159"]
    assert splits["allow_overlap"] is False and splits["overlapping"] == []
    result_provenance = json.loads(outcome.runs[0].results["wikitext2.neg_loss"])["params"]["provenance"]
    assert result_provenance["splits"] == splits
    assert outcome.summary()["plans"][0]["name"] == "block-block-2"


def test_a_plan_naming_an_unknown_task_or_searcher_fails_before_any_model_loads(tmp_path: Path) -> None:
    base = job_spec(tmp_path / "no-such-model", tmp_path / "s.sqlite").model_dump(mode="json")
    for plan, message in (
        ({"remove": 1, "budget": 5, "method": "simulated_annealing"}, "did you mean|unknown"),
        ({"remove": 1, "budget": 5, "objective": {"mmlu.p_correct": 1.0}}, "not among the game's tasks"),
    ):
        with pytest.raises(ConfigError, match=message):
            run_job(parse_spec(base | {"plans": [plan]}), progress_bar=False)


def test_held_out_data_overlapping_the_tasks_is_refused_before_any_model_loads_unless_allowed(tmp_path: Path) -> None:
    from shapley_svc.runner.driver import check_job

    base = job_spec(tmp_path / "no-such-model", tmp_path / "s.sqlite").model_dump(mode="json")
    overlapping = base | {
        "held_out": [{"name": "lm_loss", "params": {**base["tasks"][0]["params"], "first_window": 1}}]
    }
    with pytest.raises(ConfigError, match=r"held_out.0 lm_loss \(wikitext2 test tokens .*overlaps tasks.0"):
        run_job(parse_spec(overlapping), progress_bar=False)  # the model path does not exist: nothing loaded
    check_job(parse_spec(overlapping | {"allow_overlap": True}))


def test_the_seed_compatible_estimator_on_mmlu_test_questions_says_it_reproduces_the_seed_paper(tmp_path: Path) -> None:
    from shapley_svc.estimators import make_estimator
    from shapley_svc.runner.driver import seed_paper_provenance

    base = job_spec(tmp_path / "m", tmp_path / "s.sqlite").model_dump(mode="json")
    on_test = parse_spec(base | {"tasks": [{"name": "mmlu", "params": {"split": "test", "per_subject": 2}}]})
    seed = make_estimator("seed_compatible", 4, 16, 0)
    assert "seed paper's test-set choice" in seed_paper_provenance(seed, on_test)["seed_paper"]
    assert seed_paper_provenance(seed, parse_spec(base | {"tasks": [{"name": "mmlu"}]})) == {}
    assert seed_paper_provenance(make_estimator("permutation", 4, 16, 0), on_test) == {}


def test_plans_are_checked_item_by_item_on_held_out_questions_and_generated_passages(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_checkpoint, tmp_path / "s.sqlite").model_copy(deep=True)
    data = {"data_dir": str(default_data_dir())}
    held_out = [
        {"name": "arc_easy", "params": data | {"split": "test", "limit": 5}},
        {"name": "lambada", "params": {"source": "package", "limit": 3, "max_new_tokens": 2}},
    ]
    spec = parse_spec(
        spec.model_dump(mode="json") | {"plans": [{"remove": 1, "budget": 8, "method": "greedy"}], "held_out": held_out}
    )
    outcome = run_job(spec, estimator_factory=exact_factory(), progress_bar=False)
    checks = {check.task: check for check in outcome.plans[0].plan.held_out}
    assert {task: check.items for task, check in checks.items()} == {
        "arc_easy.acc": 5,
        "arc_easy.acc_norm": 5,
        "lambada.acc": 3,
    }
    games = build_games(WorkerSetup.from_spec(spec))
    names = list(games["block"].player_names)
    kept = np.ones((1, len(names)), dtype=bool)
    kept[0, [names.index(name) for name in outcome.plans[0].plan.removed]] = False
    held = games["block.held_out"]
    per_item = (held(kept) - held(np.ones_like(kept)))[0]
    columns = [index for index, name in enumerate(held.task_names) if name.startswith("arc_easy.acc@")]
    np.testing.assert_allclose(checks["arc_easy.acc"].difference, per_item[columns].mean())
