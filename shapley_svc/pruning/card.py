"""The model card of a pruned checkpoint, and its upload to the Hugging Face hub.

:func:`write_card` writes ``README.md`` beside the weights in the hub's model-card format (YAML front
matter made by ``huggingface_hub.ModelCardData``: ``base_model``, ``library_name: transformers``, tags,
``license`` when known, then Markdown): the base model, what was removed and by which ranking or list, the
recovery, the savings, and the loss before and after on the data it was judged on. Every figure is read
from the run's :class:`~shapley_svc.pruning.curves.PruningSummary` and plan; none is typed in.

:func:`push_to_hub` uploads the folder with ``huggingface_hub``'s API; offline (``HF_HUB_OFFLINE``) it
refuses with the command that uploads the saved folder later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import DEMO_HUB_ID, DEMO_LICENSE, DEMO_NAME
from shapley_svc.pruning.curves import FOOTPRINT_ROWS, PruningSummary, relative_change
from shapley_svc.pruning.select import PruningPlan

CARD_FILE = "README.md"
TAGS = ("shapley-svc", "pruned", "depth-pruning")


@dataclass(frozen=True)
class BaseModel:
    """The model that was pruned, as its card names it: ``hub_id`` and ``license`` when known."""

    name: str
    hub_id: str | None = None
    license: str | None = None


def base_model(name_or_path: str) -> BaseModel:
    """What is known offline about ``--model``: the demo's hub id and licence, a hub id's cached card, a
    local folder's own ``README.md`` (its licence; a local folder has no hub id)."""
    if name_or_path == DEMO_NAME:
        return BaseModel(name_or_path, DEMO_HUB_ID, DEMO_LICENSE)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return BaseModel(name_or_path, None, _card_license(folder / CARD_FILE))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, CARD_FILE)
    return BaseModel(name_or_path, name_or_path, _card_license(Path(cached)) if isinstance(cached, str) else None)


def _card_license(path: Path) -> str | None:
    """The ``license`` of the model card at ``path``; None when there is no card or it names none."""
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    license_name = ModelCard.load(path, ignore_metadata_errors=True).data.license
    return license_name if isinstance(license_name, str) else None


def write_card(
    folder: Path, summary: PruningSummary, plan: PruningPlan, base: BaseModel, repo_id: str | None = None
) -> Path:
    """Write the model card of the pruned checkpoint in ``folder``; ``repo_id`` is where it will be shared."""
    from huggingface_hub import ModelCard, ModelCardData

    metadata = ModelCardData(
        base_model=base.hub_id,
        library_name="transformers",
        license=base.license,
        pipeline_tag="text-generation",
        tags=list(TAGS),
    )
    body = "\n".join(_body(summary, plan, base, repo_id or str(folder)))
    path = folder / CARD_FILE
    ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}\n").save(path)
    return path


def _body(summary: PruningSummary, plan: PruningPlan, base: BaseModel, location: str) -> list[str]:
    """The Markdown of the card, section by section."""
    if base.hub_id is not None:
        base_link = f"[{base.hub_id}](https://huggingface.co/{base.hub_id})"
    else:
        base_link = f"the local checkpoint `{Path(base.name).name}`"
    return [
        f"# {Path(location).name}",
        "",
        f"Depth-pruned from {base_link}: {len(plan.removed)} of its players removed by shapley-svc. It loads "
        "with plain transformers (`AutoModelForCausalLM.from_pretrained`) and no custom code.",
        "",
        *_removed(summary, plan),
        *_recovery(summary),
        *_savings(summary),
        *_evaluation(summary),
        *_usage(plan, location),
    ]


def _removed(summary: PruningSummary, plan: PruningPlan) -> list[str]:
    removed_sublayers = ", ".join(player.name for player in plan.removed_sublayers) or "none"
    ranked_on = summary.ranking_split.description
    return [
        "## What was removed",
        "",
        f"- Players removed: {', '.join(f'`{name}`' for name in summary.removed)}",
        f"- Decoder layers: {plan.num_layers} before, {len(plan.kept_layers)} after "
        f"(original indices kept: {', '.join(str(index) for index in plan.kept_layers)})",
        f"- Sublayers of kept layers removed (output projection zeroed): {removed_sublayers}",
        f"- Chosen by: {summary.ranking_source}",
        *([] if ranked_on == "-" else [f"- Ranking estimated on: {ranked_on}"]),  # "-": an explicit list
        "",
    ]


def _recovery(summary: PruningSummary) -> list[str]:
    if summary.recovery == "none" or summary.calibration_split is None:
        return ["## Recovery", "", "None: the weights that stay are the base model's own.", ""]
    scales = ", ".join(f"`{name}` x {scale:g}" for name, scale in (summary.recovery_scales or {}).items())
    return [
        "## Recovery",
        "",
        f"- `{summary.recovery}` emulators of the removed players, in `recovery.safetensors` (attached with "
        "`shapley_svc.pruning.attached`; plain transformers loads the checkpoint without them)",
        f"- Scales kept: {scales or 'none (no emulator lowered the calibration loss)'}",
        f"- Calibrated on: {summary.calibration_split.description}; calibration loss "
        f"{summary.calibration_before:.4f} without, {summary.calibration_after:.4f} with",
        "",
    ]


def _savings(summary: PruningSummary) -> list[str]:
    lines = ["## Savings", "", "| | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for label, name in FOOTPRINT_ROWS:
        before, after = getattr(summary.before, name), getattr(summary.after, name)
        lines.append(f"| {label} | {before:,} | {after:,} | {relative_change(before, after)} |")
    before_s, after_s = summary.before.latency_s, summary.after.latency_s
    if before_s is not None and after_s is not None:
        change = relative_change(before_s, after_s)
        lines.append(f"| forward latency (ms) | {before_s * 1e3:.1f} | {after_s * 1e3:.1f} | {change} |")
        lines += ["", "Latency: median of interleaved forwards on the machine that pruned it (skip form after)."]
    return [*lines, ""]


def _evaluation(summary: PruningSummary) -> list[str]:
    held_out = {True: "yes", False: "no (it overlaps the ranking or calibration data)", None: "unknown"}
    recovered = "" if summary.judge_recovered is None else f" | {summary.judge_recovered:.4f}"
    return [
        "## Evaluation",
        "",
        f"{summary.judge_task} on {summary.judge_split.description}; held out from the ranking and calibration "
        f"data: {held_out[summary.held_out]}.",
        "",
        "| | before | after" + (" | after recovery |" if recovered else " |"),
        "| --- | ---: | ---:" + (" | ---: |" if recovered else " |"),
        f"| {summary.judge_task} | {summary.judge_before:.4f} | {summary.judge_after:.4f}{recovered} |",
        "",
    ]


def _usage(plan: PruningPlan, location: str) -> list[str]:
    lines = [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{location}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{location}")',
        "```",
        "",
        f"lm-eval: `lm_eval --model hf --model_args pretrained={location} --tasks <task>`.",
    ]
    if plan.removed_sublayers:
        lines += [
            "",
            "Plain transformers still runs the zeroed sublayers (identical outputs); "
            f'`shapley_svc.pruning.load_skipping("{location}")` skips them (manifest `shapley-svc-pruning.json`).',
        ]
    return lines


def check_hub_reachable(repo_id: str) -> None:
    """A ConfigError, before any work, when ``repo_id`` is no hub repository id or the hub is switched off."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(f"--push-to-hub {repo_id!r} is not a hub repository id like user/name: {error}") from error
    if constants.is_offline_mode():
        raise ConfigError(
            f"--push-to-hub {repo_id} needs the Hugging Face hub, but offline mode is on (HF_HUB_OFFLINE): "
            "prune without --push-to-hub and upload the folder later with `hf upload REPO FOLDER`"
        )


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to the hub model repository ``repo_id`` (created if missing); returns its URL."""
    check_hub_reachable(repo_id)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload a model pruned by shapley-svc")
    except (OSError, ValueError) as error:  # network, HTTP (HfHubHTTPError is an OSError) and auth errors
        raise ConfigError(
            f"could not push {folder} to the hub repository {repo_id!r}: {error}. The checkpoint is saved; "
            f"upload it later with `hf upload {repo_id} {folder}`"
        ) from error
    return str(url)
