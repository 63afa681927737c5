"""The service's CLI commands, each once, against the live server (URL and token from the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from live_server import TOKEN, WIKITEXT, ThreadServer, job_spec

from shapley_svc.cli import main
from shapley_svc.service import JobHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def environment(server: ThreadServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("max_concurrent_jobs: 2\n")
    monkeypatch.setenv("SHAPLEY_SVC_SETTINGS", str(settings))
    monkeypatch.setenv("SHAPLEY_SVC_URL", server.url)
    monkeypatch.setenv("SHAPLEY_SVC_TOKEN", TOKEN)


@pytest.mark.usefixtures("environment")
def test_submit_wait_status_and_ranking(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job_spec(tiny_checkpoint, name="from the cli", arc=False)))
    assert main(["submit", str(spec_file), "--wait", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    job_id = lines[0]
    assert lines[1].split() == ["id", "name", "status", "progress", "run", "created", "error"]
    assert lines[3].startswith(job_id) and "succeeded" in lines[3] and "100%" in lines[3]

    assert main(["status"]) == 0
    assert any(line.startswith(job_id) for line in capsys.readouterr().out.splitlines()[2:])
    assert main(["status", job_id]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    assert main(["ranking", job_id, "--level", "block", "--task", WIKITEXT, "--top-k", "2"]) == 0
    header, columns, _rule, *rows = capsys.readouterr().out.splitlines()
    assert job_id in header and WIKITEXT in header and "4 players" in header
    assert columns.split() == ["rank", "player", "value", "stderr"]
    assert [row.split()[0] for row in rows] == ["1", "2"]
    assert all(row.split()[1].startswith("layer") for row in rows)


@pytest.mark.usefixtures("environment")
def test_cancel(server: ThreadServer, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    with server.client() as client:
        job: JobHandle = client.submit(
            job_spec(
                tiny_checkpoint, name="to cancel", granularities=("sublayer",), arc=False, windows=6, first_window=30
            )
        )
        assert main(["cancel", job.id]) == 0
        assert capsys.readouterr().out.strip() == f"job {job.id}: cancelled"
        assert job.status().status.value == "cancelled"


@pytest.mark.usefixtures("environment")
def test_server_errors_are_one_line_with_the_servers_message(capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "no-such-job"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("shapley-svc status: error: HTTP 404") and "no-such-job" in error


def test_serve_refuses_to_start_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SHAPLEY_SVC_SETTINGS", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").touch()
    monkeypatch.delenv("SHAPLEY_SVC_TOKEN", raising=False)
    assert main(["serve", "--port", "1", "--store", str(tmp_path / "s.sqlite")]) == 2
    error = capsys.readouterr().err
    assert "no API token" in error and "SHAPLEY_SVC_TOKEN" in error and "--dev" in error
    assert not (tmp_path / "s.sqlite").exists()


def test_dev_mode_serves_loopback_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SHAPLEY_SVC_SETTINGS", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").touch()
    assert main(["serve", "--dev", "--host", "0.0.0.0", "--port", "1", "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "--dev serves loopback only" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()
