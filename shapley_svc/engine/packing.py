"""Packing token sequences that share a prefix into batches: the prefix once per row, then several suffixes.

A group is a shared token prefix and the suffixes of its members. :func:`pack_sequences` lays out a group's
prefix once per row followed by as many members' suffixes as fit, with a 4D boolean attention mask (a suffix
sees the prefix and itself, causally) and position ids restarting at ``len(prefix)`` for each suffix, so
every position sees exactly the tokens and positions of its unpacked sequence. The boolean mask suits SDPA
attention (the loader's default); ``reuse_prefix=False`` gives one plain causal row per member.

:func:`pack_scored` packs whole sequences grouped by their common prefix and says, per batch, where each
scored token sits (:class:`Readout`), so a value function reads its targets without knowing the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shapley_svc.engine.batched import TokenBatch
from shapley_svc.errors import ConfigError


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    shortest = min(len(sequence) for sequence in sequences)
    for position in range(shortest):
        token = sequences[0][position]
        if any(sequence[position] != token for sequence in sequences[1:]):
            return position
    return shortest


@dataclass(frozen=True)
class PackedSequences:
    """Token batches holding many sequences, and where each sequence (member) sits in them.

    Member ``m`` (in the order given to :func:`pack_sequences`) lies in row ``row[m]`` of batch ``batch[m]``;
    its shared prefix occupies columns ``0..prefix_length[m]-1`` and its suffix starts at ``suffix_start[m]``.
    """

    batches: list[TokenBatch]
    batch: np.ndarray
    row: np.ndarray
    prefix_length: np.ndarray
    suffix_start: np.ndarray

    def columns(self, member: int, positions: np.ndarray) -> np.ndarray:
        """Columns of the row of ``member`` that hold its unpacked positions ``positions``."""
        prefix = int(self.prefix_length[member])
        return np.where(positions < prefix, positions, positions - prefix + int(self.suffix_start[member]))


@dataclass
class _Row:
    """One packed row: token ids, segment ids (0 prefix, k the row's k-th suffix) and position ids."""

    tokens: list[int]
    segments: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    suffixes: int = 0


def pack_sequences(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    reuse_prefix: bool,
    max_row_tokens: int,
    max_batch_tokens: int,
    pad_id: int,
) -> PackedSequences:
    """Lay out groups ``(prefix, [suffix, ...])`` into token batches; members are numbered group by group.

    With ``reuse_prefix`` a row is ``prefix + suffix_1 + suffix_2 + ...`` (up to ``max_row_tokens``, at least
    one suffix) with a 4D mask; without, every member is its own causal row ``prefix + suffix``.
    """
    if max_row_tokens < 1 or max_batch_tokens < 1:
        raise ConfigError(f"max_row_tokens ({max_row_tokens}) and max_batch_tokens ({max_batch_tokens}) must be >= 1")
    rows, placements = _lay_out_rows(groups, reuse_prefix, max_row_tokens)
    spans = _batch_spans([len(row.tokens) for row in rows], max_batch_tokens)
    batch_of_row = np.array([batch for batch, span in enumerate(spans) for _ in span], dtype=np.int64)
    row_in_batch = np.array([row - span.start for span in spans for row in span], dtype=np.int64)
    row_of_member = np.array([row for row, _, _ in placements], dtype=np.int64)
    return PackedSequences(
        batches=[_packed_batch([rows[i] for i in span], pad_id, use_4d_mask=reuse_prefix) for span in spans],
        batch=batch_of_row[row_of_member],
        row=row_in_batch[row_of_member],
        prefix_length=np.array([prefix for _, prefix, _ in placements], dtype=np.int64),
        suffix_start=np.array([start for _, _, start in placements], dtype=np.int64),
    )


def _lay_out_rows(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], reuse_prefix: bool, max_row_tokens: int
) -> tuple[list[_Row], list[tuple[int, int, int]]]:
    """The packed rows, and per member (group by group) its row, prefix length and suffix start."""
    rows: list[_Row] = []
    placements: list[tuple[int, int, int]] = []
    for prefix, suffixes in groups:
        row_open = False  # whether the last row belongs to this group and may take more suffixes
        for suffix in suffixes:
            fits = row_open and len(rows[-1].tokens) + len(suffix) <= max_row_tokens
            if not (reuse_prefix and fits):
                rows.append(_Row(list(prefix), [0] * len(prefix), list(range(len(prefix)))))
                row_open = True
            row = rows[-1]
            placements.append((len(rows) - 1, len(prefix), len(row.tokens)))
            row.suffixes += 1
            row.tokens.extend(suffix)
            row.segments.extend([row.suffixes] * len(suffix))
            row.positions.extend(range(len(prefix), len(prefix) + len(suffix)))
    return rows, placements


def _batch_spans(lengths: Sequence[int], max_batch_tokens: int) -> list[range]:
    """Consecutive rows per batch: as many as keep (longest row x rows) within ``max_batch_tokens``, at least one."""
    spans: list[range] = []
    start = 0
    while start < len(lengths):
        end, longest = start + 1, lengths[start]
        while end < len(lengths) and max(longest, lengths[end]) * (end - start + 1) <= max_batch_tokens:
            longest = max(longest, lengths[end])
            end += 1
        spans.append(range(start, end))
        start = end
    return spans


def _packed_batch(rows: list[_Row], pad_id: int, *, use_4d_mask: bool) -> TokenBatch:
    """Right-padded ids; a 4D mask from segment ids (0 prefix, k suffix k, -1 pad) or a 2D padding mask."""
    width = max(len(row.tokens) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
        segment[index, : len(row.tokens)] = torch.tensor(row.segments, dtype=torch.long)
        position_ids[index, : len(row.tokens)] = torch.tensor(row.positions, dtype=torch.long)
    if not use_4d_mask:
        return TokenBatch(input_ids, attention_mask=(segment >= 0).long())
    query, key = segment[:, :, None], segment[:, None, :]  # [b, s, 1], [b, 1, s]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    sees = ((key == 0) & (query >= 0)) | ((key == query) & (query > 0))
    # A padding position sees only itself, so no row of the softmax is empty (an empty row would give NaN).
    mask = (sees & causal) | torch.eye(width, dtype=torch.bool)
    return TokenBatch(input_ids, attention_mask=mask[:, None], position_ids=position_ids)


@dataclass(frozen=True)
class ScoredSequence:
    """A token sequence to pack, and which of its tokens to score: ``targets[i]`` is read at ``positions[i]``."""

    tokens: Sequence[int]
    positions: np.ndarray
    targets: Sequence[int]


@dataclass(frozen=True)
class Readout:
    """Where one batch's scored tokens are: long[T] rows, columns and targets, and the sequence owning each."""

    rows: torch.Tensor
    columns: torch.Tensor
    targets: torch.Tensor
    owners: torch.Tensor

    def to(self, device: torch.device | str) -> Readout:
        """The same readout on ``device``."""
        return Readout(self.rows.to(device), self.columns.to(device), self.targets.to(device), self.owners.to(device))


def pack_scored(
    groups: Sequence[Sequence[ScoredSequence]],
    *,
    reuse_prefix: bool,
    max_row_tokens: int,
    max_batch_tokens: int,
    pad_id: int,
) -> tuple[list[TokenBatch], list[Readout]]:
    """Pack each group over its members' common token prefix; per batch, a :class:`Readout` of its scored tokens.

    Owners number the sequences in order, group by group.
    """
    split = []
    for group in groups:
        shared = common_prefix_length([sequence.tokens for sequence in group])
        split.append((list(group[0].tokens[:shared]), [list(sequence.tokens[shared:]) for sequence in group]))
    packed = pack_sequences(
        split,
        reuse_prefix=reuse_prefix,
        max_row_tokens=max_row_tokens,
        max_batch_tokens=max_batch_tokens,
        pad_id=pad_id,
    )
    per_batch: list[list[tuple[int, ScoredSequence]]] = [[] for _ in packed.batches]
    for owner, sequence in enumerate(sequence for group in groups for sequence in group):
        per_batch[packed.batch[owner]].append((owner, sequence))
    return packed.batches, [_readout(packed, entries) for entries in per_batch]


def _readout(packed: PackedSequences, entries: Sequence[tuple[int, ScoredSequence]]) -> Readout:
    """The readout of one batch from its (owner, sequence) entries."""
    rows = [np.full(len(sequence.positions), packed.row[owner]) for owner, sequence in entries]
    columns = [packed.columns(owner, sequence.positions) for owner, sequence in entries]
    owners = [np.full(len(sequence.positions), owner) for owner, sequence in entries]
    return Readout(
        rows=torch.from_numpy(np.concatenate(rows)),
        columns=torch.from_numpy(np.concatenate(columns)),
        targets=torch.tensor([token for _, sequence in entries for token in sequence.targets], dtype=torch.long),
        owners=torch.from_numpy(np.concatenate(owners)),
    )
