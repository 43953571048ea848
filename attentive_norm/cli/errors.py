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
    FloatingPointError,
)


def reports_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a subcommand so that :data:`USER_ERRORS` print ``attentive-norm: error: ...`` and return 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except USER_ERRORS as exc:
            print(f"attentive-norm: error: {exc}", file=sys.stderr)
            return 2

    return run
