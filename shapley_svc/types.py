"""Documented array aliases shared by every layer of the package.

A coalition is one row of a boolean matrix: ``coalitions[k, i]`` says whether player ``i`` is present in
coalition ``k``. Values come back as a float matrix with one column per task: ``values[k, t]``.
"""

from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

Coalitions: TypeAlias = npt.NDArray[np.bool_]
"""bool[k, n]: k coalitions over n players."""

Values: TypeAlias = npt.NDArray[np.float64]
"""float[k, t]: the value of each of k coalitions for each of t tasks."""

PlayerVector: TypeAlias = npt.NDArray[np.float64]
"""float[n] (or float[t, n] for several tasks): one number per player."""


class Game(Protocol):
    """A cooperative game evaluated in batches: ``game(coalitions) -> values``.

    Any object with this shape drives an estimator, so estimators are tested without a model.
    """

    @property
    def n_players(self) -> int: ...

    @property
    def player_names(self) -> tuple[str, ...]: ...

    @property
    def task_names(self) -> tuple[str, ...]: ...

    def __call__(self, coalitions: Coalitions) -> Values: ...
