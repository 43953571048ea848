"""The run folder: where a run writes, and which checkpoint an interrupted run continues by itself.

A new run writes to ``output/name`` (``--name``), else to ``output/<time stamp>-<model>``; a resumed
run (``--resume``) to its checkpoint's folder. With ``--auto-resume``, and whenever ``torchrun`` has
restarted the job after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0), the run continues the latest
checkpoint of ``output/name`` if there is one, else starts there. A job that ``torchrun`` may restart
(``--max-restarts`` > 0) and that has no ``--name`` is named ``<model>-<torchrun run id>``, the same
in every attempt, so that its restarts find it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from . import state
from .config import ConfigError, TrainConfig
from .distributed import elastic_restart_count


def auto_resume_source(cfg: TrainConfig) -> Path | None:
    """The run folder to continue without ``--resume`` (the same answer on every process), if any.

    Refuses, before anything runs, a run that could continue by itself but has no stable name.
    """
    if not _stably_named(cfg):
        return None
    folder = Path(cfg.output) / _stable_name(cfg)
    return folder if _continues(cfg) and (folder / state.LAST).is_file() else None


def refuse_existing(cfg: TrainConfig) -> None:
    """Refuse a new run whose named folder exists and is not empty (checked again by :func:`create`;
    called first too, so the refusal comes before the data scan and the model build)."""
    if _stably_named(cfg):
        path = Path(cfg.output) / _stable_name(cfg)
        if not _continues(cfg) and path.exists() and any(path.iterdir()):
            raise ConfigError(
                f"run folder {path} exists; continue it with --resume {path} or pick another --name"
            )


def create(cfg: TrainConfig, resume: str | os.PathLike | None) -> Path:
    """The run's folder, created if needed; an existing non-empty one is refused for a new run."""
    if resume is not None:
        return state.resolve(resume).parent
    refuse_existing(cfg)
    if _stably_named(cfg):
        path = Path(cfg.output) / _stable_name(cfg)
    else:
        path = first_free(Path(cfg.output) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def first_free(stem: Path, taken: Callable[[Path], bool] = Path.exists) -> Path:
    """``stem``, else ``stem-2``, ``stem-3``, ...: the first that is not ``taken`` (so nothing earlier is
    overwritten)."""
    path, n = stem, 1
    while taken(path):
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def _continues(cfg: TrainConfig) -> bool:
    return cfg.auto_resume or elastic_restart_count() > 0


def _stably_named(cfg: TrainConfig) -> bool:
    restartable = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    return cfg.name is not None or _continues(cfg) or restartable


def _stable_name(cfg: TrainConfig) -> str:
    """``--name``, else ``<model>-<torchrun run id>``; an error if neither exists."""
    if cfg.name is not None:
        return cfg.name
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":
        raise ConfigError(
            "a run that continues by itself (--auto-resume, or torchrun --max-restarts) needs --name: "
            "the run folder to continue"
        )
    return f"{cfg.model}-{run_id}"
