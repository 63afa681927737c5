"""The HTTP API against a live server, through the real client: auth, errors, a whole job, rankings, isolation."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from live_server import (
    ARC,
    AUTH,
    READ_AUTH,
    READ_TOKEN,
    TOKEN,
    WIKITEXT,
    ThreadServer,
    job_spec,
    start_thread_server,
)
from scipy import stats

from shapley_svc.planning.plan import RemovalPlan
from shapley_svc.service import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    JobHandle,
    NotFoundError,
)
from shapley_svc.service.app import create_app
from shapley_svc.service.settings import ServiceSettings
from shapley_svc.store.base import JobStatus
from shapley_svc.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

WRITES = [("POST", "/v1/jobs"), ("POST", "/v1/jobs/some-id/cancel")]
READS = ["", "/results", "/plans", "/ranking", "/compare"]


@pytest.mark.parametrize("body", [b"{not json", b'{"tasks": 5}', b""])
@pytest.mark.parametrize(("method", "path"), WRITES)
def test_writes_without_the_token_get_401_and_with_a_wrong_one_403_whatever_the_body(
    server: ThreadServer, method: str, path: str, body: bytes
) -> None:
    url = server.url + path
    headers = {"Content-Type": "application/json"}
    missing = httpx.request(method, url, content=body, headers=headers)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    other_scheme = httpx.request(method, url, content=body, headers={**headers, "Authorization": f"Basic {TOKEN}"})
    assert other_scheme.status_code == 401
    wrong = httpx.request(method, url, content=body, headers={**headers, "Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    assert "token" in wrong.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/some-id", *(f"/v1/jobs/some-id{s}" for s in READS[1:])])
def test_reads_need_the_write_or_the_read_only_token(server: ThreadServer, path: str) -> None:
    missing = server.get(path, headers={})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert server.get(path, headers={"Authorization": "Bearer not-a-token-of-this-server"}).status_code == 403
    assert server.get(path, headers=READ_AUTH).status_code in (200, 404)
    assert server.get(path).status_code in (200, 404)
    assert httpx.get(f"{server.url}/v1/health").status_code == 200, "health stays open, for load balancers"


def test_the_read_only_token_cannot_write(server: ThreadServer, tiny_checkpoint: Path) -> None:
    with Client(server.url, READ_TOKEN) as reader:
        assert reader.jobs() is not None
        with pytest.raises(AuthenticationError, match="may only read") as error:
            reader.submit(job_spec(tiny_checkpoint, name="from the reader"))
        assert error.value.status_code == 403
        with pytest.raises(AuthenticationError, match="may only read"):
            reader.cancel("no-such-job")


def test_open_reads_need_no_token_and_writes_still_do(tmp_path: Path) -> None:
    settings = ServiceSettings(token=TOKEN, store=str(tmp_path / "open.sqlite"), open_reads=True)
    app = create_app(settings)
    with TestClient(app) as http:
        assert http.get("/v1/jobs").status_code == 200
        assert http.get("/v1/jobs/no-such-job").status_code == 404
        assert http.post("/v1/jobs/no-such-job/cancel").status_code == 401


def test_a_policy_refusal_reaches_the_client_with_each_field_and_rule(client: Client, tiny_checkpoint: Path) -> None:
    outside = job_spec(tiny_checkpoint, name="outside") | {"model": {"name": "/etc"}}
    outside["executor"] |= {"num_cpus_per_worker": 0}
    with pytest.raises(InvalidRequestError) as error:
        client.submit(outside)
    assert error.value.status_code == 422
    assert "model.name: '/etc' is not a folder under this server's model roots" in str(error.value)
    assert "(rule model_roots)" in str(error.value) and "(rule cpus_above_zero)" in str(error.value)


def test_a_development_server_without_a_token_takes_writes_without_one(tmp_path: Path) -> None:
    development = start_thread_server(tmp_path / "dev.sqlite", token=None)
    try:
        with development.client(token=None) as client:
            assert client.health().auth == "none (development)"
            with pytest.raises(NotFoundError):  # past the token check: the job is what is missing
                client.cancel("no-such-job")
    finally:
        development.stop()


def test_the_client_reports_a_refused_write_with_the_servers_message(
    server: ThreadServer, tiny_checkpoint: Path
) -> None:
    with Client(server.url, "a-wrong-token-of-some-length") as client, pytest.raises(AuthenticationError) as error:
        client.submit(job_spec(tiny_checkpoint, name="refused"))
    assert error.value.status_code == 403 and "not this server's API token" in str(error.value)
    with Client(server.url) as client, pytest.raises(AuthenticationError, match="Authorization: Bearer"):
        client.cancel("whatever")


def test_a_malformed_spec_is_422_with_each_bad_field(
    server: ThreadServer, client: Client, tiny_checkpoint: Path
) -> None:
    bad = job_spec(tiny_checkpoint, name="bad") | {"tasks": [], "budget": {"evaluations": 0}, "colour": "blue"}
    with pytest.raises(InvalidRequestError) as error:
        client.submit(bad)
    assert error.value.status_code == 422
    for field in ("tasks", "budget.evaluations", "colour"):
        assert f"{field}:" in str(error.value)
    raw = httpx.post(f"{server.url}/v1/jobs", content=b"[1, 2", headers=AUTH)
    assert raw.status_code == 422 and raw.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("suffix", READS)
def test_reads_of_an_unknown_job_are_404(server: ThreadServer, suffix: str) -> None:
    response = server.get(f"/v1/jobs/no-such-job{suffix}")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "no-such-job" in detail and ".sqlite" not in detail, "the server's file paths are not for clients"


def test_the_client_raises_not_found_for_an_unknown_job(client: Client) -> None:
    job = client.job("no-such-job")
    for call in (job.status, job.result, job.ranking, job.compare, job.cancel):
        with pytest.raises(NotFoundError, match="no-such-job"):
            call()


def test_a_job_runs_to_the_end_and_stores_exact_values_per_task_and_level(finished_job: JobHandle) -> None:
    detail = finished_job.status()
    assert detail.progress.fraction == 1 and detail.progress.runs_done == detail.progress.runs_total == 2
    assert detail.spec["store"]["path"] == "ignored-by-the-server.sqlite", "the spec is shown as submitted"
    results = finished_job.result()
    assert {(entry.granularity, entry.task) for entry in results.results} == {
        (level, task) for level in ("block", "sublayer") for task in (WIKITEXT, ARC)
    }
    for entry in results.results:
        assert len(entry.players) == (4 if entry.granularity == "block" else 8)
        assert entry.params["provenance"]["job_id"] == finished_job.id
        assert sum(entry.values) == pytest.approx(entry.v_full - entry.v_empty, abs=1e-9)  # efficiency
    frame = results.as_dataframe()
    assert len(frame) == 2 * (4 + 8) and set(frame["task"]) == {WIKITEXT, ARC}


def test_a_stored_plan_round_trips_through_the_api_and_client(server: ThreadServer, finished_job: JobHandle) -> None:
    (entry,) = finished_job.plans().plans
    with SQLiteStore(server.store) as store:
        (record,) = store.get_plans(finished_job.id)
    assert entry.removal_plan() == RemovalPlan.from_json(record.plan_json)
    plan = entry.removal_plan()
    assert (entry.name, entry.granularity, entry.k, plan.method) == ("block-block-2", "block", 2, "greedy")
    assert len(set(plan.removed)) == 2 and set(plan.removed) <= {f"layer{i}.block" for i in range(4)}
    assert plan.evaluations_computed == 0, "the plan read the exact estimator's cached values"
    assert plan.provenance["job_id"] == finished_job.id
    (check,) = plan.held_out
    assert check.items == 3 and check.low <= check.difference <= check.high
    frame = finished_job.plans().as_dataframe()
    assert frame.loc[0, ["plan", "k", "held_out_task"]].tolist() == ["block-block-2", 2, WIKITEXT]
    assert finished_job.status().progress.runs_done == 2


def test_ranking_orders_players_by_value_with_stderr_and_top_k(finished_job: JobHandle) -> None:
    ranking = finished_job.ranking(level="sublayer", task=WIKITEXT)
    entry = next(e for e in finished_job.result().results if e.granularity == "sublayer" and e.task == WIKITEXT)
    assert [player.rank for player in ranking.players] == list(range(1, 9))
    assert [player.value for player in ranking.players] == sorted(entry.values, reverse=True)
    assert all(player.stderr is not None for player in ranking.players)
    assert ranking.players[0].player == entry.players[int(np.argmax(entry.values))]
    bottom = finished_job.ranking(level="sublayer", task=WIKITEXT, order="asc", top_k=3)
    assert bottom.players == list(reversed(ranking.players))[:3] and bottom.n_players == 8
    assert list(bottom.as_dataframe().columns) == ["rank", "player", "value", "stderr"]


def test_ranking_needs_a_task_when_there_are_several_and_names_the_choices(finished_job: JobHandle) -> None:
    with pytest.raises(InvalidRequestError, match=ARC):
        finished_job.ranking(level="block")
    with pytest.raises(NotFoundError, match="it has"):
        finished_job.ranking(level="block", task="no_such_task")


def test_compare_gives_spearman_kendall_and_the_players_that_move_most(finished_job: JobHandle) -> None:
    comparison = finished_job.compare(level="sublayer", top_movers=3)
    assert comparison.tasks == sorted([WIKITEXT, ARC])
    (pair,) = comparison.pairs
    by_task = {e.task: e for e in finished_job.result().results if e.granularity == "sublayer"}
    values_a, values_b = by_task[pair.task_a].values, by_task[pair.task_b].values
    assert pair.spearman == pytest.approx(stats.spearmanr(values_a, values_b).statistic)
    assert pair.kendall == pytest.approx(stats.kendalltau(values_a, values_b).statistic)
    ranks_a = {p.player: p.rank for p in finished_job.ranking(level="sublayer", task=pair.task_a).players}
    ranks_b = {p.player: p.rank for p in finished_job.ranking(level="sublayer", task=pair.task_b).players}
    shifts = sorted((abs(ranks_b[name] - ranks_a[name]) for name in ranks_a), reverse=True)
    assert [abs(move.shift) for move in pair.movers] == [shift for shift in shifts if shift][:3]
    for move in pair.movers:
        assert (move.rank_a, move.rank_b) == (ranks_a[move.player], ranks_b[move.player])


def test_a_finished_job_cannot_be_cancelled(finished_job: JobHandle) -> None:
    with pytest.raises(ConflictError, match=r"has finished \(succeeded\)"):
        finished_job.cancel()


def wait_until(condition, timeout: float = 120.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def test_two_jobs_at_once_stay_isolated(client: Client, tiny_checkpoint: Path) -> None:
    slow = {"granularities": ("sublayer",), "arc": False, "windows": 24}
    first = client.submit(job_spec(tiny_checkpoint, name="first", first_window=24, **slow))
    second = client.submit(job_spec(tiny_checkpoint, name="second", first_window=48, **slow))

    def both_evaluating() -> bool:
        jobs = [first.status(), second.status()]
        return all(job.status is JobStatus.RUNNING and job.progress.evaluations_done > 0 for job in jobs)

    wait_until(both_evaluating)
    cancelled = second.cancel()
    assert cancelled.status is JobStatus.CANCELLED
    final = first.wait(progress=False, poll_interval=0.2, timeout=240)
    assert final.status is JobStatus.SUCCEEDED and final.error is None
    stopped = second.status()
    assert stopped.status is JobStatus.CANCELLED and stopped.finished_at is not None
    (entry,) = first.result().results
    assert (entry.granularity, entry.task) == ("sublayer", WIKITEXT)
    assert entry.params["provenance"]["job_id"] == first.id
    assert sum(entry.values) == pytest.approx(entry.v_full - entry.v_empty, abs=1e-9)
    assert second.result().results == [], "the cancelled job stored a result"
    assert first.status().spec["tasks"][0]["params"]["first_window"] == 24
    assert second.status().spec["tasks"][0]["params"]["first_window"] == 48
    time.sleep(1.5)  # a cancelled job reports nothing more once stopped
    assert second.status().updated_at == stopped.updated_at


def test_every_job_route_of_the_schema_needs_a_token(server: ThreadServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    guarded = [(method, path) for path, item in paths.items() for method in item if path != "/v1/health"]
    assert len(guarded) >= 7, "a route went missing from the schema"
    for method, path in guarded:
        response = httpx.request(method, server.url + path.replace("{job_id}", "some-id"), content=b"{}")
        assert response.status_code == 401, f"{method.upper()} {path} answered {response.status_code} without a token"
