"""Value functions ("games" over a masked model) and a small registry of them by name.

``make_value_fn("mmlu", subjects=("marketing",))`` builds one; names are ``lm_loss``, ``mmlu``, the
multiple-choice tasks (``arc_easy``, ``arc_challenge``, ``hellaswag``, ``piqa``, ``boolq``, ``winogrande``),
the generative ``gsm8k`` and ``lambada``, and ``lm_eval:<task name or YAML path>`` for any lm-eval task.
Modules are imported only when a name is used.
"""

from __future__ import annotations

from typing import Any

from shapley_svc.errors import ConfigError
from shapley_svc.registry import Entry, Registry
from shapley_svc.values.base import ModelGame, ValueFunction

LM_EVAL_PREFIX = "lm_eval:"
_MULTIPLE_CHOICE_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande")

REGISTRY: Registry[ValueFunction] = Registry(
    "value function",
    ValueFunction,  # a protocol: each entry is checked for its members
    {
        "lm_loss": Entry(
            "shapley_svc.values.lm_loss:LanguageModelingLoss", "minus the mean next-token loss on corpus windows"
        ),
        "mmlu": Entry("shapley_svc.values.mmlu:MMLU", "MMLU k-shot from the letters' next-token log-probabilities"),
        **{
            task: Entry(
                "shapley_svc.values.multiple_choice:MultipleChoice",
                f"{task} by continuation log-likelihood (lm-eval's acc / acc_norm)",
                bound={"task": task},
            )
            for task in _MULTIPLE_CHOICE_TASKS
        },
        "gsm8k": Entry(
            "shapley_svc.values.gsm8k:GSM8K", "GSM8K k-shot by greedy generation, exact match on the answer"
        ),
        "lambada": Entry("shapley_svc.values.lambada:Lambada", "LAMBADA last-word accuracy by greedy generation"),
        "lm_eval": Entry("shapley_svc.values.lm_eval_bridge:LMEvalTask", "any lm-eval task; write lm_eval:<task>"),
    },
)
"""Every value function by name; ``lm_eval:<task or YAML path>`` names an lm-eval task."""


def value_fn_names() -> tuple[str, ...]:
    """The registered names (plus the ``lm_eval:<task>`` form, which takes any lm-eval task)."""
    return (*REGISTRY.names(), f"{LM_EVAL_PREFIX}<task>")


def task_kind(name: str) -> str:
    """The registry entry a task name builds (``lm_eval`` for ``lm_eval:<task>``); unknown: a ConfigError."""
    return "lm_eval" if name.startswith(LM_EVAL_PREFIX) else REGISTRY.key(name)


def make_value_fn(name: str, settings: dict[str, Any] | None = None) -> ValueFunction:
    """The value function registered as ``name``, built with ``settings`` (its dataclass fields).

    An unknown name or setting is a ConfigError with the closest known names.
    """
    if name.startswith(LM_EVAL_PREFIX):
        task = name[len(LM_EVAL_PREFIX) :]
        if not task:
            raise ConfigError("give the lm-eval task after the prefix, e.g. lm_eval:arc_easy or lm_eval:path/task.yaml")
        return REGISTRY.build("lm_eval", params={**(settings or {}), "task": task})
    return REGISTRY.build(name, params=settings)


__all__ = ["LM_EVAL_PREFIX", "REGISTRY", "ModelGame", "ValueFunction", "make_value_fn", "task_kind", "value_fn_names"]
