"""Problems a user can fix are reported as one line on stderr (exit code 2), not as a traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from ..checkpoint import CheckpointError
from ..data.folder import DataError
from ..engine.config import ConfigError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    CheckpointError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FloatingPointError,
)


def reports_errors(
    command: Callable[[argparse.Namespace], int] | None = None,
    *,
    also: tuple[type[BaseException], ...] = (),
) -> Callable:
    """Wrap a subcommand so that :data:`USER_ERRORS` (and the types in ``also``) print
    ``attentive-norm: error: ...`` and return 2. Use as ``@reports_errors`` or
    ``@reports_errors(also=(ValueError,))``."""
    caught = USER_ERRORS + also

    def wrap(function: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(function)
        def run(args: argparse.Namespace) -> int:
            try:
                return function(args)
            except caught as exc:
                print(f"attentive-norm: error: {exc}", file=sys.stderr)
                return 2

        return run

    return wrap if command is None else wrap(command)
