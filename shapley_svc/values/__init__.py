"""Value functions ("games" over a masked model) and a small registry of them by name.

``make_value_fn("mmlu", subjects=("marketing",))`` builds one; names are ``lm_loss``, ``mmlu``, the
multiple-choice tasks (``arc_easy``, ``arc_challenge``, ``hellaswag``, ``piqa``, ``boolq``, ``winogrande``)
and ``lm_eval:<task name or YAML path>`` for any lm-eval task. Modules are imported only when a name is used.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from shapley_svc.errors import ConfigError
from shapley_svc.values.base import ModelGame, ValueFunction

LM_EVAL_PREFIX = "lm_eval:"
_MULTIPLE_CHOICE_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande")
# name -> (module, class, first positional argument or None)
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "lm_loss": ("shapley_svc.values.lm_loss", "LanguageModelingLoss", None),
    "mmlu": ("shapley_svc.values.mmlu", "MMLU", None),
    **{task: ("shapley_svc.values.multiple_choice", "MultipleChoice", task) for task in _MULTIPLE_CHOICE_TASKS},
}


def value_fn_names() -> tuple[str, ...]:
    """The registered names (plus the ``lm_eval:<task>`` form, which takes any lm-eval task)."""
    return (*_REGISTRY, f"{LM_EVAL_PREFIX}<task>")


def make_value_fn(name: str, settings: dict[str, Any] | None = None) -> ValueFunction:
    """The value function registered as ``name``, built with ``settings`` (its dataclass fields).

    An unknown name or setting is a ConfigError with the closest known names.
    """
    options = dict(settings or {})
    if name.startswith(LM_EVAL_PREFIX):
        task = name[len(LM_EVAL_PREFIX) :]
        if not task:
            raise ConfigError("give the lm-eval task after the prefix, e.g. lm_eval:arc_easy or lm_eval:path/task.yaml")
        module, class_name, first = "shapley_svc.values.lm_eval_bridge", "LMEvalTask", task
    elif name in _REGISTRY:
        module, class_name, first = _REGISTRY[name]
    else:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown value function {name!r}: {hint}known: {', '.join(value_fn_names())}")
    factory = getattr(importlib.import_module(module), class_name)
    try:
        return factory(first, **options) if first is not None else factory(**options)
    except TypeError as error:
        fields = list(getattr(factory, "__dataclass_fields__", {}))
        unknown = [key for key in options if key not in fields]
        close = {key: difflib.get_close_matches(key, fields, n=1) for key in unknown}
        hints = ", ".join(
            f"{key!r} (did you mean {match[0]!r}?)" if match else repr(key) for key, match in close.items()
        )
        raise ConfigError(f"value function {name!r} does not take the setting(s) {hints}; it takes {fields}") from error


__all__ = ["LM_EVAL_PREFIX", "ModelGame", "ValueFunction", "make_value_fn", "value_fn_names"]
