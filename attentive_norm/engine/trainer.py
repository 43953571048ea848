"""The training loop: one function, :func:`train`, from a configuration to a run folder.

Single process or ``torchrun`` (DDP, one process per GPU or gloo on CPU). Rank 0 prints, plots and
writes; every process computes. A run folder holds ``config.yaml`` (the resolved configuration),
``summary.csv``, ``checkpoint_last.pt``/``checkpoint_best.pt``, ``curves.png`` and, for models with AN,
``attention.png``/``attention.csv``. A run resumed from ``checkpoint_last.pt`` continues exactly: the
sampler position, every random state and the running epoch's sums are restored; so does a run that
``torchrun`` restarts after a failure, or one started with ``--auto-resume`` (see :mod:`.run_folder`).

Faults stop the run with one clear message, or are skipped and counted: a loss that is not finite
stops it, naming the step (``--skip-nonfinite``: the step is skipped), a failed save stops it with the
previous checkpoint intact, unreadable images are skipped, and a step in which one process has no
readable image is skipped by every process (no process waits for another forever).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import CheckpointError, CheckpointSaveError
from ..checkpoint.atomic import remove_stale_temporaries
from ..data.folder import DataError
from ..data.loader import build_loaders
from ..data.mixup import mixup, mixup_loss
from ..data.seeds import mix_seed
from ..layers.convert import convert_sync_norm
from ..models import create_model, get_model_entrypoint
from . import distributed, faults, run_folder, state
from .attention_maps import an_layer_names, class_mean_attention
from .config import ConfigError, TrainConfig, dump_yaml
from .ema import ModelEma
from .evaluate import autocast, correct_topk, evaluate
from .optim import build_optimizer
from .plots import plot_attention, plot_curves
from .report import table_header, table_row, write_csv
from .schedule import WarmupCosine

RESUME_FIXED = (
    "model",
    "model_kwargs",
    "subset",
    "subset_seed",
    "batch_size",
    "seed",
    "image_size",
    "decay_norm_bias",
)
"""Settings a resumed run must share with the checkpoint: they fix the model, the data order and the
optimizer's parameter groups. The data may move (another path) if its classes stay the same."""


@dataclass
class TrainResult:
    run_dir: Path | None
    best_top1: float
    best_epoch: int
    final: dict
    history: list[dict]


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train as ``cfg`` says (continuing the checkpoint ``resume``, a file or run folder, if given)."""
    env = distributed.setup(cfg.device)
    log = _printer(env.is_main)
    try:
        get_model_entrypoint(cfg.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.requires_data and cfg.data is None:
        raise ConfigError(
            f"this recipe ({cfg.model}) is meant for ImageNet-size data, not the bundled digits: "
            "give --data ROOT (an ImageFolder with train/ and val/)"
        )
    if resume is None:
        resume = run_folder.auto_resume_source(cfg)
    if cfg.data is not None:  # recorded absolute: resume and validate work from any folder
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))
    saved = state.load(resume) if resume is not None else None
    if saved is not None:
        _check_resumable(cfg, saved)
        _refuse_to_overwrite_later_results(resume, saved)
    else:
        run_folder.refuse_existing(cfg)
    torch.set_num_threads(cfg.threads or env.cpus())
    _configure_determinism(cfg.deterministic)
    loaders = build_loaders(cfg, env.world_size, env.rank, env.cpus(), pin_memory=env.device.type == "cuda")
    if saved is not None and loaders.classes != saved["classes"]:
        raise ConfigError(
            f"cannot resume on {cfg.data}: its {len(loaders.classes)} classes are not the "
            f"{len(saved['classes'])} the run was trained on (e.g. {saved['classes'][:3]})"
        )

    # Identical initial weights on every process; then a distinct random stream per process.
    _seed_everything(cfg.seed)
    model_args = {
        "model": cfg.model,
        "num_classes": len(loaders.classes),
        "model_kwargs": dict(cfg.model_kwargs),
    }
    model = build_model(model_args, pretrained=cfg.pretrained if saved is None else None).to(env.device)
    _seed_everything(cfg.seed + env.rank)
    attention_layer = _attention_layer(model, cfg.attention_layer)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
    if env.distributed and cfg.sync_norm:
        # PyTorch's SyncBatchNorm refuses CPU tensors; AN layers synchronise on any backend.
        model = convert_sync_norm(model, sync_batch_norm=env.device.type == "cuda")
    optimizer = build_optimizer(
        model,
        cfg.peak_lr(),
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        decay_norm_bias=cfg.decay_norm_bias,
    )
    steps_per_epoch = loaders.train_sampler.batches_per_epoch()
    schedule = WarmupCosine(
        optimizer,
        cfg.peak_lr(),
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        min_lr=cfg.min_lr,
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp == "fp16")
    start_epoch, start_batch, history, best = 0, 0, [], {"top1": -1.0, "epoch": 0}
    meters = _new_meters(env.device)
    if saved is not None:
        if saved["args"] != model_args:
            raise CheckpointError(f"{resume}: holds the model {saved['args']}, this run builds {model_args}")
        model.load_state_dict(saved["model"])
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(saved["optimizer"])
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)  # momentum, weight decay, ... given with --resume apply
        schedule.load_state_dict(saved["scheduler"])  # the position; the shape is this run's
        if scaler.is_enabled() and saved["scaler"]:  # --amp fp16 may be switched on or off
            scaler.load_state_dict(saved["scaler"])
        if ema is not None and saved["ema"] is not None:
            ema.load_state_dict(saved["ema"])
        start_epoch, start_batch, history, best = (
            saved["epoch"],
            saved["batch"],
            saved["history"],
            saved["best"],
        )
        # The running epoch's sums over all processes, held by rank 0 (the epoch end adds them up).
        meters = _new_meters(env.device)
        meters["seconds"] = saved["meters"]["seconds"]
        if env.is_main:
            sums = saved["meters"]["sums"]
            meters["sums"][: len(sums)] += sums.to(env.device)  # older checkpoints hold fewer sums

    net: nn.Module = model
    if env.distributed:
        net = DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)

    run_dir = run_folder.create(cfg, resume) if env.is_main else None
    if run_dir is not None:
        header = (
            f"resolved configuration of run {run_dir.name}; {env.world_size} process(es), "
            f"{cfg.batch_size // env.world_size} images per process, peak LR {cfg.peak_lr():.6g}"
        )
        (run_dir / "config.yaml").write_text(dump_yaml(cfg, header))
    n_params = sum(p.numel() for p in model.parameters())
    data_name = cfg.data or "bundled digits (scikit-learn)"
    log(
        f"{cfg.model}: {n_params:,} parameters, {len(loaders.classes)} classes | data: {data_name}, "
        f"{len(loaders.train.dataset)} train / {len(loaders.val.dataset)} val images | "
        f"{env.world_size} process(es) on {env.device.type}, {steps_per_epoch} steps/epoch, "
        f"global batch {cfg.batch_size}, peak LR {cfg.peak_lr():.4g}"
    )
    if distributed.restarts_share_the_store():
        log(
            "warning: torchrun shares its rendezvous store with the workers, so a restart may fail to "
            "connect or hang (pytorch/pytorch#135712): export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 first"
        )
    if saved is not None:
        log(f"resuming {resume} at epoch {start_epoch + 1}, batch {start_batch} (step {saved['step']})")
        if cfg.data != saved["config"]["data"]:
            log(f"data: {cfg.data} (trained so far on {saved['config']['data']}; same classes)")
        if run_dir is not None:
            stale = [p for name in (state.LAST, state.BEST) for p in remove_stale_temporaries(run_dir / name)]
            if stale:
                log(f"removed {len(stale)} partial checkpoint file(s) left by an interrupted save")
        # Same world size: every process continues its own random stream (else rank 0's, for all).
        rngs = saved["rng"]
        state.set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else rngs[0])

    saved_step = saved["step"] if saved is not None else None

    def kept() -> str:
        if saved_step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {saved_step}) is kept; continue with --resume {run_dir or ''}"

    def checkpoint(epoch: int, batch: int, path_names: tuple[str, ...]) -> None:
        """Collective: every process contributes; rank 0 writes; a failed write stops every process."""
        nonlocal saved_step
        rngs = distributed.all_gather_objects(state.rng_state())
        sums = distributed.all_reduce_sum(meters["sums"])
        step = epoch * steps_per_epoch + batch
        failure = None
        if run_dir is not None:
            snapshot = {
                "args": model_args,
                "classes": loaders.classes,
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "rng": rngs,
                "history": history,
                "meters": {"sums": sums.cpu(), "seconds": meters["seconds"]},
                "best": best,
                "world_size": env.world_size,
            }
            try:
                for name in path_names:
                    state.save(snapshot, run_dir / name)
                    saved_step = step if name == state.LAST else saved_step
            except CheckpointSaveError as exc:  # disk full, read-only folder, ...
                failure = f"{exc}; training stopped at step {step}: {kept()}"
        failure = distributed.broadcast_object(failure)
        if failure is not None:
            raise CheckpointSaveError(failure)
        saved_step = step

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def optimise(images: torch.Tensor, target: torch.Tensor, epoch: int, batch: int) -> torch.Tensor | None:
        """One optimisation step, its sums added to the meters: the loss, or None if it was skipped."""
        step = epoch * steps_per_epoch + batch
        images = images.to(env.device, non_blocking=True, memory_format=memory_format)
        target = target.to(env.device, non_blocking=True)
        if cfg.mixup_alpha > 0:
            images, partner, lam = mixup(
                images, target, cfg.mixup_alpha, seed=mix_seed(cfg.seed, step, env.rank)
            )
        # A skipped step must not keep the statistics its forward pass updated (they may be NaN).
        buffers = [b.detach().clone() for b in model.buffers()] if cfg.skip_nonfinite else []
        with autocast(env.device, cfg.amp):
            logits = net(images)
            if cfg.mixup_alpha > 0:
                loss = mixup_loss(logits, target, partner, lam, cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
        if distributed.on_any_process(~torch.isfinite(loss.detach()), env.device):
            where = f"step {step + 1} (epoch {epoch + 1}, batch {batch + 1}; this process: {loss.item():.4g})"
            if not cfg.skip_nonfinite:
                raise FloatingPointError(
                    f"the training loss is not finite at {where}; training stopped: {kept()}. "
                    "Lower --lr, set --clip-grad, or pass --skip-nonfinite to skip such steps"
                )
            log(f"the training loss is not finite at {where}: step skipped (--skip-nonfinite)")
            with torch.no_grad():
                for buffer, before in zip(model.buffers(), buffers):
                    buffer.copy_(before)
            return None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        faults.kill_at(f"step:{step + 1}", env.rank)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        with torch.no_grad():
            n = len(target)
            meters["sums"][:3] += torch.stack(
                [
                    loss.detach().double() * n,
                    correct_topk(logits, target, (1,))[0].double(),
                    _f64(n, env.device),
                ]
            )
        return loss

    printed_header = bool(history)
    if history:
        log(table_header(history[-1]))
        for row in history:
            log(table_row(row))
    try:
        for epoch in range(start_epoch, cfg.epochs):
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                meters = _new_meters(env.device)
            loaders.train_sampler.set_epoch(epoch, first)
            net.train()
            bar = tqdm(
                loaders.train,
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not (env.is_main and cfg.progress),
                leave=False,
                dynamic_ncols=True,
            )
            tick = time.perf_counter()
            for batch, (images, target, skipped) in enumerate(bar, start=first):
                step = epoch * steps_per_epoch + batch
                lr = schedule.set_step(step)
                for bad in skipped:
                    log(f"skipped an unreadable image: {bad.what} ({bad.reason})")
                loss = None
                if distributed.on_any_process(len(target) == 0, env.device):
                    log(f"step {step + 1} skipped: every image of a process's batch failed to load")
                else:
                    loss = optimise(images, target, epoch, batch)
                if loss is None:  # every process skips the step; rank 0 counts it
                    meters["sums"] += torch.tensor([0, 0, 0, len(skipped), env.is_main], device=env.device)
                else:
                    meters["sums"][3] += len(skipped)
                now = time.perf_counter()
                meters["seconds"] += now - tick
                tick = now
                shown = env.is_main and cfg.progress and (batch % 10 == 0 or batch == steps_per_epoch - 1)
                if loss is not None and shown:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
                if cfg.save_every and (step + 1) % cfg.save_every == 0:
                    checkpoint(epoch, batch + 1, (state.LAST,))
            bar.close()

            sums = distributed.all_reduce_sum(meters["sums"]).tolist()
            if sums[2] == 0:
                raise DataError(
                    f"no step of epoch {epoch + 1} could be trained ({int(sums[4])} steps skipped, "
                    f"{int(sums[3])} unreadable images); see the messages above"
                )
            seconds = meters["seconds"]
            val_batches = faults.after_first(loaders.val, f"eval:{epoch + 1}", env.rank)
            val = evaluate(model, val_batches, env.device, amp=cfg.amp, channels_last=cfg.channels_last)
            row = {
                "epoch": epoch + 1,
                "train_loss": sums[0] / max(sums[2], 1),
                "train_top1": 100 * sums[1] / max(sums[2], 1),
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
            }
            if ema is not None:
                ema_val = evaluate(
                    ema.module, loaders.val, env.device, amp=cfg.amp, channels_last=cfg.channels_last
                )
                row.update(ema_top1=ema_val["top1"], ema_top5=ema_val["top5"])
            row.update(
                lr=schedule.lr_at(max(schedule.last_step, 0)),
                images_per_s=sums[2] / max(seconds, 1e-9),
                epoch_time_s=seconds,
                skipped=int(sums[3]) + val["skipped"],
                skipped_steps=int(sums[4]),
            )
            history.append(row)
            is_best = row["val_top1"] > best["top1"]
            if is_best:
                best = {"top1": row["val_top1"], "epoch": epoch + 1}
            if not printed_header:
                log(table_header(row))
                printed_header = True
            log(table_row(row))
            checkpoint(epoch + 1, 0, (state.LAST, state.BEST) if is_best else (state.LAST,))
            if run_dir is not None:
                write_csv(history, run_dir / "summary.csv")
                plot_curves(history, run_dir / "curves.png", title=f"{cfg.model} ({data_name})")
    except KeyboardInterrupt:
        log(f"interrupted: {kept()}")
        raise

    if attention_layer is not None:
        weights = class_mean_attention(model, loaders.val, attention_layer, len(loaders.classes), env.device)
        if run_dir is not None:
            _write_attention(weights, loaders.classes, attention_layer, run_dir)
    final = history[-1]
    log(
        f"final: top-1 {final['val_top1']:.2f}%  top-5 {final['val_top5']:.2f}%  "
        f"(best top-1 {best['top1']:.2f}% at epoch {best['epoch']})"
    )
    if run_dir is not None:
        log(f"run folder: {run_dir}")
    return TrainResult(run_dir, best["top1"], best["epoch"], final, history)


def _write_attention(weights: torch.Tensor, classes: list[str], layer: str, run_dir: Path) -> None:
    """``attention.png`` and ``attention.csv``: the classes × K mean mixture weights of ``layer``."""
    plot_attention(weights, classes, layer, run_dir / "attention.png")
    rows = [
        {"class": c, **{f"k{k}": round(float(w), 6) for k, w in enumerate(weights[i])}}
        for i, c in enumerate(classes)
    ]
    write_csv(rows, run_dir / "attention.csv")


def build_model(args: dict, pretrained: str | None = None) -> nn.Module:
    """The model a checkpoint's ``args`` describe (``model``, ``num_classes``, ``model_kwargs``), with
    the weights of ``pretrained`` (all but the classifier where its classes differ)."""
    try:
        return create_model(
            args["model"], num_classes=args["num_classes"], pretrained=pretrained, **args["model_kwargs"]
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {args['model']!r} with {args['model_kwargs']}: {exc}") from exc


def _attention_layer(model: nn.Module, wanted: str | None) -> str | None:
    names = an_layer_names(model)
    if wanted is None:
        return names[-1] if names else None
    if wanted not in names:
        raise ConfigError(
            f"attention_layer {wanted!r} is not an AN layer of the model; AN layers: {', '.join(names)}"
        )
    return wanted


def _check_resumable(cfg: TrainConfig, saved: dict) -> None:
    before = {**{k: None for k in RESUME_FIXED}, **saved["config"]}  # older checkpoints lack new settings
    changed = [k for k in RESUME_FIXED if before[k] != getattr(cfg, k)]
    if (before["data"] is None) != (cfg.data is None):
        changed.append("data")
    if changed:
        detail = ", ".join(f"{k}: {before[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume with changed settings ({detail}); they fix the model, the data order and "
            "the optimizer's parameter groups"
        )


def _refuse_to_overwrite_later_results(resume: str | os.PathLike, saved: dict) -> None:
    """Resuming an earlier checkpoint (``checkpoint_best.pt``) of a run folder would overwrite that
    folder's later ``checkpoint_last.pt`` and results: refused, with the ways to do it safely."""
    path = state.resolve(resume)
    last = path.parent / state.LAST
    if path.name == state.LAST or not last.is_file():
        return
    later = state.load(last)["step"]
    if later > saved["step"]:
        raise ConfigError(
            f"{path} is at step {saved['step']}, but {last} is at step {later}: resuming from it would "
            f"overwrite the later checkpoint and results. Resume {path.parent} (its last checkpoint), or "
            f"copy {path.name} into a new folder and resume that to branch off"
        )


def _new_meters(device: torch.device) -> dict:
    """The running epoch's sums (loss × images, correct, images, unreadable images, skipped steps) and
    training seconds."""
    return {"sums": torch.zeros(5, dtype=torch.float64, device=device), "seconds": 0.0}


def _f64(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def _printer(enabled: bool):
    def log(message: str) -> None:
        if enabled:
            tqdm.write(message)

    return log
