"""The prune workflow as one library call: select players, remove them, recover, measure, save, report.

:func:`prune` does what ``shapley-svc prune`` does (the CLI only parses its flags into a
:class:`PruneRequest`), so a notebook runs the same steps without argparse::

    from pathlib import Path
    from shapley_svc.pruning.workflow import PruneRequest, prune

    report = prune(PruneRequest(out=Path("pruned"), blocks=(27, 28), recovery="bias"))
    print(report.summary.format())

The pruned model is judged on LM-loss windows disjoint from those used for calibration; the summary says
which windows ranked, calibrated and judged, and whether the judging data is held out. The checkpoint's
model card (``README.md``, :mod:`~shapley_svc.pruning.card`) says the same, and ``push_to_hub`` uploads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.model.layouts import Layout, resolve
from shapley_svc.model.loading import LoadedModel, load_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.planning.plan import RemovalPlan
from shapley_svc.players import Player
from shapley_svc.pruning import apply, card, recovery, savings
from shapley_svc.pruning.curves import PruningSummary, Split, describe_split
from shapley_svc.pruning.select import PruningPlan, select
from shapley_svc.ranking import Ranking, RankingSet
from shapley_svc.values.lm_loss import LanguageModelingLoss
from shapley_svc.versioned import read_text, write_text

SUMMARY_FILE = "pruning-summary.json"


@dataclass(frozen=True, kw_only=True)
class PruneRequest:
    """What to remove, how to recover and what to judge on; the fields are ``shapley-svc prune``'s flags.

    Give one of ``ranking`` (a ranking JSON file, with ``count`` or ``fraction``), ``plan`` (a plan JSON from
    ``shapley-svc plan``, or a stored
    :class:`RemovalPlan`: exactly its players go) or ``blocks`` / ``attn`` / ``mlp`` lists of layer indices.
    Windows are ``(first, count)`` of ``window``-token windows of ``corpus``.
    """

    out: Path
    model: str = "demo"
    dtype: str = "float32"
    device: str = "cpu"
    ranking: Path | None = None
    plan: Path | RemovalPlan | None = None
    method: str | None = None
    task: str | None = None
    target: str | None = None
    count: int | None = None
    fraction: float | None = None
    protect_first: int = 0
    protect_last: int = 0
    blocks: tuple[int, ...] = ()
    attn: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()
    recovery: str = "none"
    rank: int = 8
    corpus: str = "wikitext2"
    data_dir: Path | None = None
    window: int = 128
    calibration_windows: tuple[int, int] = (4, 4)
    judge_windows: tuple[int, int] = (8, 8)
    ranking_windows: tuple[int, int] | None = None
    latency_repeats: int = 5
    push_to_hub: str | None = None

    @property
    def explicit(self) -> bool:
        """Whether the players to remove are listed (``blocks`` / ``attn`` / ``mlp``) rather than ranked."""
        return bool(self.blocks or self.attn or self.mlp)

    def lm_loss(self, windows: tuple[int, int]) -> LanguageModelingLoss:
        """The LM-loss value function on ``windows`` (first, count) of this request's corpus."""
        first, count = windows
        return LanguageModelingLoss(
            corpus=self.corpus, data_dir=self.data_dir, window=self.window, windows=count, first_window=first
        )


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did: the plan, the folder it saved, the summary (also in ``pruning-summary.json``),
    the model card and, when pushed, the hub repository's URL."""

    plan: PruningPlan
    out: Path
    summary: PruningSummary
    card: Path | None = None
    hub_url: str | None = None


def prune(request: PruneRequest) -> PruneReport:
    """Select, remove, recover, measure and save as ``request`` says; writes the summary beside the checkpoint."""
    check_request(request)
    ranking = None if request.ranking is None else load_ranking(request.ranking, request.method, request.task)
    loaded = load_model(request.model, dtype=request.dtype, device=request.device)
    plan, source, split = _plan(request, ranking, loaded)
    judge = request.lm_loss(request.judge_windows)
    judge_batches = [batch.to(loaded.device) for batch in judge.prepare(loaded.tokenizer)]
    pruned = apply.prune_model(loaded.model, loaded.layout, plan)
    loss_before = _loss(loaded.model, loaded.layout, judge, judge_batches)
    loss_after = _loss(pruned, loaded.layout, judge, judge_batches)
    provenance = {
        "ranking": source,
        "ranking_split": split.description,
        "judge_split": describe_split(judge).description,
    }
    out = apply.save_pruned(loaded, plan, request.out, pruned=pruned, provenance=provenance)
    recovered = (
        None if request.recovery == "none" else _recover(request, loaded, plan, pruned, out, (judge, judge_batches))
    )
    latency_before, latency_after = _latencies(loaded, plan, pruned, judge_batches[0].input_ids[:4], request)
    summary = PruningSummary(
        model=loaded.name,
        removed=list(plan.names),
        ranking_source=source,
        ranking_split=split,
        judge_split=describe_split(judge),
        before=savings.footprint(loaded.model, loaded.layout, None, latency_before),
        after=savings.footprint(loaded.model, loaded.layout, plan, latency_after),
        judge_task=f"{request.corpus} loss (nats)",
        judge_before=loss_before,
        judge_after=loss_after,
    )
    if recovered is not None:
        summary = replace(
            summary,
            judge_recovered=recovered.judge_loss,
            recovery=request.recovery,
            recovery_scales=recovered.calibration.scales,
            calibration_split=recovered.calibration_split,
            calibration_before=recovered.calibration.loss_without,
            calibration_after=recovered.calibration.loss_with,
        )
    write_text(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, default=str), "pruning summary")
    card_path = card.write_card(out, summary, plan, card.base_model(request.model), request.push_to_hub)
    hub_url = None if request.push_to_hub is None else card.push_to_hub(out, request.push_to_hub)
    return PruneReport(plan, out, summary, card_path, hub_url)


def check_request(request: PruneRequest) -> None:
    """A ConfigError unless the request names its players one way, its output folder is new or empty and,
    with ``push_to_hub``, the hub can be reached."""
    sources = [request.explicit, request.ranking is not None, request.plan is not None]
    if sum(sources) != 1:
        raise ConfigError(
            "give either --ranking FILE (with --count or --fraction), --plan FILE or --blocks/--attn/--mlp lists"
        )
    selecting = request.count is not None or request.fraction is not None or request.method or request.target
    if request.ranking is None and selecting:
        raise ConfigError(
            "--count/--fraction/--method/--target select from a --ranking; "
            "drop them with --plan or --blocks/--attn/--mlp"
        )
    if request.out.exists() and any(request.out.iterdir()):
        raise ConfigError(f"output folder {request.out} exists and is not empty: choose a new --out folder")
    if request.push_to_hub is not None:
        card.check_hub_reachable(request.push_to_hub)


def load_ranking(path: Path, method: str | None, task: str | None) -> Ranking:
    """The ranking of ``method`` (and ``task``) in a ranking file; the only one when no method is given."""
    rankings = RankingSet.load(path)
    if method is not None:
        return rankings.find(method, task)
    if len(rankings.rankings) != 1:
        available = ", ".join(sorted({r.method for r in rankings.rankings}))
        raise ConfigError(f"{path} holds {len(rankings.rankings)} rankings: pick one with --method ({available})")
    return rankings.rankings[0]


def ranking_split(ranking: Ranking) -> Split:
    """The split a ranking was estimated on, from its metadata (``corpus``, ``window``, ``first_window``,
    ``windows`` as written by LM-loss rankings, or a free-text ``split``)."""
    meta = ranking.metadata
    keys = ("corpus", "window", "first_window", "windows")
    if all(key in meta for key in keys):
        first, last = int(meta["first_window"]), int(meta["first_window"]) + int(meta["windows"]) - 1
        corpus, window = str(meta["corpus"]), int(meta["window"])
        return Split(f"{corpus} windows {first}-{last} of {window} tokens", corpus, window, (first, last))
    if "split" in meta:
        return Split(str(meta["split"]))
    what = ranking.task or "static metrics"
    return Split(f"{what} (split not recorded in the ranking; state it with --ranking-windows)")


def _plan(request: PruneRequest, ranking: Ranking | None, loaded: LoadedModel) -> tuple[PruningPlan, str, Split]:
    """The plan, a description of where it came from, and the split its ranking was estimated on."""
    num_layers = len(resolve(loaded.model, loaded.layout.layers))
    if request.plan is not None:
        stored = isinstance(request.plan, RemovalPlan)
        removal = request.plan if stored else RemovalPlan.from_json(read_text(request.plan, "plan"))
        plan = PruningPlan.from_players((Player.parse(name) for name in removal.removed), num_layers)
        where = (
            f"plan {removal.provenance.get('plan')} of job {removal.provenance.get('job_id')}"
            if stored
            else request.plan
        )
        source, split = f"plan of {removal.method} ({len(removal.removed)} players) from {where}", Split("-")
    elif ranking is None:
        players = [Player(i, "block") for i in request.blocks]
        players += [Player(i, "attn") for i in request.attn] + [Player(i, "mlp") for i in request.mlp]
        plan, source, split = PruningPlan.from_players(players, num_layers), "explicit list", Split("-")
    else:
        plan = select(
            ranking,
            num_layers,
            target=request.target or ranking.granularity,
            count=request.count,
            fraction=request.fraction,
            protect_first=request.protect_first,
            protect_last=request.protect_last,
        )
        source = f"{ranking.method}{'' if ranking.task is None else f' on {ranking.task}'} from {request.ranking}"
        split = ranking_split(ranking)
        if ranking.model_fingerprint != loaded.fingerprint:
            source += " [its model fingerprint differs from this model's: other weights or --dtype?]"
    if request.ranking_windows is not None:
        split = describe_split(request.lm_loss(request.ranking_windows))
    if not plan.removed:
        raise ConfigError("nothing to remove: raise --count/--fraction or list --blocks/--attn/--mlp")
    return plan, source, split


def _loss(model: PreTrainedModel, layout: Layout, value_fn: LanguageModelingLoss, batches: list[TokenBatch]) -> float:
    """The LM loss (nats) of ``model`` run as is on ``batches``."""
    return -float(recovery.evaluate_value(model, layout, value_fn, batches)[0])


@dataclass(frozen=True)
class _Recovered:
    """The judged loss with the emulators attached, their calibration, and the split they were fitted on."""

    judge_loss: float
    calibration: recovery.Calibration
    calibration_split: Split


def _recover(
    request: PruneRequest,
    loaded: LoadedModel,
    plan: PruningPlan,
    pruned: PreTrainedModel,
    out: Path,
    judge: tuple[LanguageModelingLoss, list[TokenBatch]],
) -> _Recovered:
    """Fit the emulators on the calibration windows, pick their scales, save them, judge the recovered model.

    ``judge`` is the prepared judging value function and its batches.
    """
    calibration_fn = request.lm_loss(request.calibration_windows)
    batches = [batch.to(loaded.device) for batch in calibration_fn.prepare(loaded.tokenizer)]
    adapters = recovery.fit(loaded.model, loaded.layout, plan, batches, kind=request.recovery, rank=request.rank)
    calibration = recovery.calibrate_scales(
        pruned, loaded.layout, adapters, lambda model: _loss(model, loaded.layout, calibration_fn, batches)
    )
    adapters.save(out / recovery.RECOVERY_FILE)
    with recovery.attached(pruned, loaded.layout, adapters):
        judge_loss = _loss(pruned, loaded.layout, *judge)
    return _Recovered(judge_loss, calibration, describe_split(calibration_fn))


def _latencies(
    loaded: LoadedModel, plan: PruningPlan, pruned: PreTrainedModel, tokens: torch.Tensor, request: PruneRequest
) -> tuple[float | None, float | None]:
    """Median forward latency before and after pruning (the pruned model in skip form, runs interleaved).

    Both are None when ``request.latency_repeats`` is 0.
    """
    if request.latency_repeats <= 0:
        return None, None
    pruned_masked = MaskedModel(pruned, loaded.layout, "sublayer")
    skipped = set(apply.skipped_in_pruned(plan))
    skip_mask = np.array([player not in skipped for player in pruned_masked.players])
    run_pruned = savings.forward_call(pruned, tokens)

    def run_skip_form() -> object:
        with pruned_masked.active(skip_mask):
            return run_pruned()

    times = savings.interleaved_median(
        {"before": savings.forward_call(loaded.model, tokens), "after": run_skip_form},
        repeats=request.latency_repeats,
    )
    return times["before"], times["after"]
