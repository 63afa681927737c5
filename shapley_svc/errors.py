"""One error root, so callers (CLI, HTTP API) can turn every expected failure into a one-line message."""


class ShapleySvcError(Exception):
    """Root of every error this package raises on purpose; its message says what went wrong and what to do."""


class ConfigError(ShapleySvcError):
    """A user-supplied setting (model id, path, spec field, mask) is invalid."""


class ModelLoadError(ShapleySvcError):
    """A model could not be loaded or its architecture is not supported."""


class DataError(ShapleySvcError):
    """Evaluation data is missing or malformed; the message names the file, the row and the problem."""


class BudgetExceededError(ShapleySvcError):
    """A game was asked for more coalition evaluations than its budget allows."""


class EvaluationError(ShapleySvcError):
    """A coalition's value could not be computed (for example it came back NaN or infinite)."""


def at_least(value: int, minimum: int, what: str) -> int:
    """``value``, or a ConfigError naming ``what`` when it is below ``minimum``."""
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, got {value}")
    return value
