"""Test-only fault injection: ``ATTENTIVE_NORM_FAULT=kill:<point>`` SIGKILLs the process at a named point.

The crash tests (tests/reliability/) set it in a subprocess to prove that a run killed anywhere resumes
to the same weights. Unset, which is always the case outside those tests, nothing happens. Points:

- ``kill:step:N``: during optimisation step N (gradients computed, weights not yet updated);
- ``kill:eval:E``: during the evaluation after epoch E, once its first batch is evaluated;
- ``kill:save:N``: while writing the checkpoint of step N, part of the file written and flushed.

``@R`` at the end (``kill:step:10@1``) limits the fault to rank R. A job that ``torchrun`` restarted
(``TORCHELASTIC_RESTART_COUNT`` > 0) never fires, so the restarted job can finish.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from .distributed import elastic_restart_count

FAULT_ENV = "ATTENTIVE_NORM_FAULT"
T = TypeVar("T")


def armed(point: str, rank: int = 0) -> bool:
    """Whether the fault ``kill:<point>`` is asked for in this process."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or elastic_restart_count() > 0:
        return False
    wanted, _, only_rank = spec.partition("@")
    return wanted == f"kill:{point}" and (not only_rank or int(only_rank) == rank)


def kill_at(point: str, rank: int = 0) -> None:
    """SIGKILL this process if the fault ``kill:<point>`` is armed (no clean-up, as ``kill -9``)."""
    if armed(point, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def after_first(items: Iterable[T], point: str, rank: int = 0) -> Iterable[T]:
    """``items``, or, if ``kill:<point>`` is armed, ``items`` until the first one was used (then killed)."""
    if not armed(point, rank):
        return items

    def killing() -> Iterator[T]:
        for item in items:
            yield item
            kill_at(point, rank)

    return killing()


class _KillingWriter:
    """A binary file that SIGKILLs the process after its first write (flushed, so the partial file exists)."""

    def __init__(self, file: IO[bytes], point: str) -> None:
        self._file = file
        self._point = point

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        self._file.flush()
        kill_at(self._point)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def writer(file: IO[bytes], point: str) -> IO[bytes]:
    """``file``, or, if ``kill:<point>`` is armed, a wrapper that kills the process mid-write."""
    return _KillingWriter(file, point) if armed(point) else file  # type: ignore[return-value]
