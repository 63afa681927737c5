"""Language-modelling value: minus the mean next-token loss on a fixed slice of a corpus, each token capped.

``v(S) = -(1/N) sum_tokens min(CE(token), cap)`` over non-overlapping windows of a corpus, tokenised
without BOS. The cap (default ``ln(vocab_size)``, the loss of a uniform guess) bounds the value: an
uncapped loss lets a few catastrophic coalitions (e.g. every block skipped, which leaves only the tied
embedding) dominate the Shapley values. Logits are materialised for at most ``chunk_tokens`` tokens at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.corpus import load_corpus, token_windows
from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.items import ItemValues

FORMAT_VERSION = 1


@dataclass
class LanguageModelingLoss:
    """Minus the mean capped next-token cross-entropy over ``windows`` windows of ``window`` tokens."""

    corpus: str = "wikitext2"
    data_dir: Path | None = None
    window: int = 128
    windows: int = 4
    first_window: int = 0
    cap: float | None = None
    windows_per_batch: int = 8
    chunk_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.window < 2 or self.windows < 1 or self.windows_per_batch < 1 or self.chunk_tokens < 1:
            raise ConfigError(
                f"window ({self.window}) must be >= 2 and windows ({self.windows}), windows_per_batch "
                f"({self.windows_per_batch}), chunk_tokens ({self.chunk_tokens}) >= 1"
            )
        self._tokens: torch.Tensor | None = None
        self._cap = self.cap

    @property
    def task_names(self) -> tuple[str, ...]:
        return (f"{self.corpus}.neg_loss",)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Tokenise the corpus (no BOS) into the fixed windows, grouped into batches."""
        text = load_corpus(self.corpus, self.data_dir)
        self._tokens = token_windows(
            tokenizer, text, window=self.window, count=self.windows, offset_windows=self.first_window
        )
        if self._cap is None:
            self._cap = math.log(len(tokenizer))
        return [
            TokenBatch(self._tokens[start : start + self.windows_per_batch])
            for start in range(0, self.windows, self.windows_per_batch)
        ]

    def fingerprint(self) -> str:
        require_prepared(self._tokens is not None)
        settings = {
            "kind": "lm_loss",
            "version": FORMAT_VERSION,
            "corpus": self.corpus,
            "window": self.window,
            "windows": self.windows,
            "first_window": self.first_window,
            "cap": self._cap,
            "bos": False,
        }
        return digest(settings, self._tokens)

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        """float[w, 2]: [summed capped loss, token count] of each window of one batch (logits ``chunk_tokens``
        at a time)."""
        if self._tokens is None or self._cap is None:
            raise ConfigError("call prepare(tokenizer) before scoring")
        start = batch_index * self.windows_per_batch
        windows, predicted = len(final_hidden), final_hidden.shape[1] - 1
        targets = self._tokens[start : start + windows, 1:].to(final_hidden.device).reshape(-1)
        hidden = final_hidden[:, :-1].reshape(-1, final_hidden.shape[-1])
        owners = torch.arange(len(targets), device=final_hidden.device) // predicted  # window of each target
        totals = torch.zeros(windows, dtype=torch.float64, device=final_hidden.device)
        for begin in range(0, len(targets), self.chunk_tokens):
            logits = head(hidden[begin : begin + self.chunk_tokens]).float()
            losses = F.cross_entropy(logits, targets[begin : begin + self.chunk_tokens], reduction="none")
            totals.index_add_(0, owners[begin : begin + self.chunk_tokens], losses.clamp(max=self._cap).double())
        counts = np.full(windows, float(predicted))
        return np.stack([totals.cpu().numpy(), counts], axis=1)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        summed = np.concatenate([np.atleast_2d(batch) for batch in statistics]).sum(axis=0)
        return np.array([-summed[0] / summed[1]])

    def item_count(self) -> int:
        """The windows prepared."""
        if self._tokens is None:
            raise ConfigError("call prepare(tokenizer) before counting its items")
        return len(self._tokens)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each window's minus mean capped loss, weighted by its token count."""
        windows = np.concatenate([np.atleast_2d(batch) for batch in statistics])  # [windows, 2]
        return ItemValues(-(windows[:, 0] / windows[:, 1])[:, None], windows[:, 1])
