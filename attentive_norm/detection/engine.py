"""Detection runs: train Mask R-CNN on COCO-format data (single process or ``torchrun``), evaluate it.

Training follows the paper's COCO experiments: SGD, linear warm-up from ``warmup_factor`` over
``warmup_iters``, the learning rate divided by 10 at each epoch milestone, gradient-norm clipping. The
sampler, the per-image augmentation and the saved RNG states make a resumed run repeat the uninterrupted
one exactly. Paths are recorded absolute, so ``detect eval`` works from any folder.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.folder import DataError
from ..data.sampler import ShardSampler
from ..engine import distributed
from ..engine.config import ConfigError
from .builder import maskrcnn
from .checkpointing import (
    TrainState,
    check_categories,
    load_model_state,
    read_detection_checkpoint,
    restore_training_state,
    save_training_state,
)
from .coco import CocoInstances, batches, collate
from .config import DetectionConfig, ModelConfig, load_config
from .evaluation import coco_evaluate, format_ap_table, predict
from .shapes import make_shapes_split
from .visualize import save_visualizations

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pth"


def build_detector(cfg: ModelConfig, num_classes: int, load_pretrained: bool = True) -> nn.Module:
    """The Mask R-CNN of a model config; ``load_pretrained=False`` skips the ImageNet checkpoint.

    Raises :class:`ConfigError` for settings the builders reject (unknown backbone or norm, ...).
    """
    if load_pretrained and cfg.norm_eval and not cfg.pretrained_backbone:
        log.warning(
            "model.norm_eval freezes the backbone's norm statistics, but there is no "
            "model.pretrained_backbone: they stay at their initial values"
        )
    try:
        return _build(cfg, num_classes, load_pretrained)
    except ValueError as e:
        raise ConfigError(f"model settings: {e}") from e


def _build(cfg: ModelConfig, num_classes: int, load_pretrained: bool) -> nn.Module:
    return maskrcnn(
        cfg.backbone,
        num_classes,
        pretrained_backbone=cfg.pretrained_backbone if load_pretrained else None,
        head_norm=cfg.head_norm,
        fpn_norm=cfg.fpn_norm,
        mask_norm=cfg.mask_norm,
        an_mixtures=cfg.an_mixtures,
        fpn_channels=cfg.fpn_channels,
        box_conv_channels=cfg.box_conv_channels,
        box_fc_channels=cfg.box_fc_channels,
        box_convs=cfg.box_convs,
        box_fcs=cfg.box_fcs,
        mask_channels=cfg.mask_channels,
        frozen_stages=cfg.frozen_stages,
        norm_eval=cfg.norm_eval,
        out_indices=cfg.out_indices,
        anchor_sizes=cfg.anchor_sizes,
        canonical_scale=cfg.canonical_scale,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        backbone_kwargs=cfg.backbone_kwargs,
        cascade=cfg.cascade,
        **cfg.maskrcnn_kwargs,
    )


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def absolute_paths(cfg: DetectionConfig) -> None:
    """Make every path of ``cfg`` absolute (against the current folder), so that the configuration a
    checkpoint records still finds its data, weights and run folder from any other folder."""
    data = cfg.data
    for key in ("train_images", "train_ann", "val_images", "val_ann"):
        if getattr(data, key):
            setattr(data, key, _absolute(getattr(data, key)))
    data.shapes.root = _absolute(data.shapes.root)
    if cfg.model.pretrained_backbone:
        cfg.model.pretrained_backbone = _absolute(cfg.model.pretrained_backbone)
    cfg.output_dir = _absolute(cfg.output_dir)


def resolve_data(cfg: DetectionConfig, env: distributed.DistEnv) -> None:
    """Fill in the data paths: without any, generate the synthetic shapes (main process; others wait)."""
    data = cfg.data
    if any((data.train_images, data.train_ann, data.val_images, data.val_ann)):
        return
    shapes = data.shapes
    kwargs = {
        "image_size": shapes.image_size,
        "max_objects": shapes.max_objects,
        "min_radius": shapes.min_radius,
        "max_radius": shapes.max_radius,
    }
    if env.is_main:
        make_shapes_split(shapes.root, "train", shapes.num_train, seed=shapes.seed, **kwargs)
        make_shapes_split(shapes.root, "val", shapes.num_val, seed=shapes.seed + 1, **kwargs)
        log.info("synthetic shapes dataset in %s", shapes.root)
    distributed.broadcast_object(None)  # a barrier: the files exist once the main process gets here
    root = Path(shapes.root)
    data.train_images, data.train_ann = str(root / "train"), str(root / "train.json")
    data.val_images, data.val_ann = str(root / "val"), str(root / "val.json")


def _dataset(
    images: str | None, ann: str | None, what: str, cfg: DetectionConfig, train: bool
) -> CocoInstances:
    if not images or not ann:
        raise ConfigError(
            f"{what} data needs both an image folder and an annotation file (got {images!r}, {ann!r})"
        )
    return CocoInstances(
        images,
        ann,
        train=train,
        flip_prob=cfg.data.flip_prob,
        min_box_size=cfg.data.min_box_size,
        seed=cfg.seed,
    )


def lr_factor(cfg: DetectionConfig, iteration: int, iters_per_epoch: int) -> float:
    """Warm-up and step decay at ``iteration`` (0-based), as a factor of the base learning rate."""
    solver = cfg.solver
    factor = solver.gamma ** sum(iteration >= m * iters_per_epoch for m in solver.milestones)
    if iteration < solver.warmup_iters:
        factor *= solver.warmup_factor + (1.0 - solver.warmup_factor) * iteration / solver.warmup_iters
    return factor


def evaluate_model(
    model: nn.Module, dataset: CocoInstances, cfg: DetectionConfig, env: distributed.DistEnv
) -> dict[str, dict[str, float]] | None:
    """Collective: every process predicts its share; the main process runs COCOeval (others get None)."""
    sampler = ShardSampler(
        len(dataset),
        cfg.solver.batch_size,
        world_size=env.world_size,
        rank=env.rank,
        shuffle=False,
        drop_last=False,
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.solver.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
    )
    results, image_ids = predict(model, loader, env.device)
    gathered = distributed.all_gather_objects((results, image_ids))
    if not env.is_main:
        return None
    all_results = [r for part in gathered for r in part[0]]
    all_ids = [i for part in gathered for i in part[1]]
    return coco_evaluate(dataset.coco, all_results, all_ids)


def _report(
    metrics: dict[str, dict[str, float]],
    model: nn.Module,
    dataset: CocoInstances,
    cfg: DetectionConfig,
    env: Any,
    out: Path,
    checkpoint: str | Path,
) -> None:
    """Main process: print the AP table, write ``out/metrics.json`` (the APs, null where a size range has
    no ground truth, and the checkpoint and data they belong to) and the visualisations in ``out/vis``."""
    out.mkdir(parents=True, exist_ok=True)
    print(format_ap_table(metrics), flush=True)
    record = {
        **{task: {k: None if math.isnan(v) else v for k, v in ap.items()} for task, ap in metrics.items()},
        "checkpoint": str(Path(checkpoint).resolve()),
        "val_images": str(dataset.image_dir.resolve()),
        "val_ann": str(dataset.ann_file.resolve()),
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    print(f"metrics written to {out / 'metrics.json'}", flush=True)
    if cfg.visualize:
        paths = save_visualizations(
            model,
            dataset,
            out / "vis",
            num_images=cfg.visualize,
            device=env.device,
            score_threshold=cfg.score_threshold,
        )
        print(f"predictions drawn on {len(paths)} validation images in {out / 'vis'}", flush=True)


def train(cfg: DetectionConfig, resume: str | None = None) -> dict[str, dict[str, float]] | None:
    """Train (and finally evaluate) a Mask R-CNN; returns the final metrics on the main process.

    Args:
        cfg: the run configuration; ``cfg.output_dir`` receives ``last.pth``, ``metrics.json``, ``vis/``.
        resume: a checkpoint to continue from, or ``"auto"`` for ``output_dir/last.pth`` if it exists.
    """
    env = distributed.setup(cfg.device)
    try:
        return _train(cfg, env, resume)
    finally:
        distributed.cleanup()


def _train(
    cfg: DetectionConfig, env: distributed.DistEnv, resume: str | None
) -> dict[str, dict[str, float]] | None:
    absolute_paths(cfg)
    out = Path(cfg.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if env.device.type == "cpu" and env.distributed:
        torch.set_num_threads(env.cpus())
    resolve_data(cfg, env)
    train_set = _dataset(cfg.data.train_images, cfg.data.train_ann, "training", cfg, train=True)
    val_set = (
        _dataset(cfg.data.val_images, cfg.data.val_ann, "validation", cfg, train=False)
        if cfg.data.val_ann
        else None
    )
    if val_set is not None and val_set.cat_ids != train_set.cat_ids:
        raise DataError(
            f"training and validation categories differ: {train_set.cat_ids} vs {val_set.cat_ids}"
        )

    resume_path = out / CHECKPOINT_NAME if resume == "auto" else Path(resume) if resume else None
    if resume_path is not None and not resume_path.is_file():
        if resume != "auto":
            raise FileNotFoundError(f"checkpoint to resume from not found: {resume_path}")
        resume_path = None
    checkpoint = read_detection_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        check_categories(checkpoint, resume_path, train_set.categories, train_set.ann_file)

    torch.manual_seed(cfg.seed)
    model = build_detector(cfg.model, len(train_set.cat_ids), load_pretrained=checkpoint is None).to(
        env.device
    )
    params = [p for p in model.parameters() if p.requires_grad]
    solver = cfg.solver
    base_lr = solver.lr * solver.batch_size * env.world_size / solver.base_batch_size
    optimizer = torch.optim.SGD(
        params, lr=base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay
    )
    state = TrainState()
    if checkpoint is not None:
        state = restore_training_state(checkpoint, model, optimizer, env.rank, resume_path, asdict(cfg.model))
        log.info("resumed from %s at epoch %d, batch %d", resume_path, state.epoch, state.batch)
    trained = DistributedDataParallel(model) if env.distributed else model

    sampler = ShardSampler(
        len(train_set), solver.batch_size, world_size=env.world_size, rank=env.rank, seed=cfg.seed
    )
    iters_per_epoch = sampler.batches_per_epoch()
    if iters_per_epoch == 0:
        raise DataError(
            f"{len(train_set)} training images are fewer than one global batch "
            f"({solver.batch_size} x {env.world_size} processes)"
        )
    loader = DataLoader(
        train_set,
        batch_size=solver.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG out of the loader
    )
    max_iters = solver.max_iters if solver.max_iters is not None else solver.epochs * iters_per_epoch
    config, categories = cfg.to_dict(), train_set.categories
    if env.is_main:
        log.info(
            "training on %d images (%s), %d iterations/epoch, base lr %.4g, %d process(es), device %s",
            len(train_set), train_set.skip_summary(), iters_per_epoch, base_lr, env.world_size, env.device,
        )  # fmt: skip
    model.train()
    start = time.perf_counter()
    unreadable_images = 0
    while state.epoch < solver.epochs and state.iteration < max_iters:
        epoch = state.epoch  # 0-based, as the iteration lines print it
        sampler.set_epoch(epoch, state.batch)
        for images, targets, unreadable in batches(loader):
            unreadable_images += unreadable
            if distributed.on_any_process(not images, env.device):
                # Every image of some process's batch was unreadable: all processes skip the step
                # together (none is left waiting in DDP's all-reduce); the position still advances.
                state.iteration += 1
                state.batch += 1
                log.warning("iteration %d skipped: no readable image in a batch", state.iteration)
            else:
                _step(trained, optimizer, images, targets, cfg, state, iters_per_epoch, base_lr, env, start)
            if cfg.checkpoint_interval and state.iteration % cfg.checkpoint_interval == 0:
                save_training_state(
                    out / CHECKPOINT_NAME, model, optimizer, state, config, categories, env.is_main
                )
            if state.iteration >= max_iters:
                break
        if state.batch >= iters_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
        unreadable_total = int(
            distributed.all_reduce_sum(torch.tensor([unreadable_images], device=env.device)).item()
        )
        if unreadable_total and env.is_main:
            log.warning("epoch %d: %d unreadable image(s) skipped", epoch, unreadable_total)
        unreadable_images = 0
        save_training_state(out / CHECKPOINT_NAME, model, optimizer, state, config, categories, env.is_main)
        if (
            val_set is not None
            and cfg.eval_interval
            and state.epoch % cfg.eval_interval == 0
            and state.batch == 0
        ):
            metrics = evaluate_model(model, val_set, cfg, env)
            if metrics is not None:
                log.info("after epoch %d:\n%s", epoch, format_ap_table(metrics))
    if env.is_main:
        log.info("training done in %.1f s (%d iterations)", time.perf_counter() - start, state.iteration)
    if val_set is None:
        return None
    metrics = evaluate_model(model, val_set, cfg, env)
    if metrics is not None:
        _report(metrics, model, val_set, cfg, env, out, out / CHECKPOINT_NAME)
    return metrics


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    cfg: DetectionConfig,
    state: TrainState,
    iters_per_epoch: int,
    base_lr: float,
    env: distributed.DistEnv,
    start: float,
) -> None:
    """One optimisation step; advances ``state``."""
    lr = base_lr * lr_factor(cfg, state.iteration, iters_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = [im.to(env.device) for im in images]
    targets = [{k: v.to(env.device) for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    loss = sum(losses.values())
    if not math.isfinite(loss.item()):
        values = {k: round(v.item(), 4) for k, v in losses.items()}
        raise FloatingPointError(
            f"loss is not finite at iteration {state.iteration}: {values}; try a lower lr"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.solver.grad_clip:
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], cfg.solver.grad_clip
        )
    optimizer.step()
    state.iteration += 1
    state.batch += 1
    if env.is_main and (state.iteration % cfg.log_interval == 0 or state.iteration == 1):
        parts = " ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
        log.info(
            "epoch %d iter %d: loss %.3f (%s) lr %.4g, %.1f s",
            state.epoch, state.iteration, loss.item(), parts, lr, time.perf_counter() - start,
        )  # fmt: skip


def evaluate(
    checkpoint: str | Path,
    cfg: DetectionConfig | None = None,
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
) -> dict[str, dict[str, float]] | None:
    """Evaluate a detection checkpoint on the validation data of ``cfg`` (default: the checkpoint's own
    configuration with ``overrides``); prints the AP table, writes ``metrics.json`` and draws predictions
    in ``output_dir`` (default: a new folder ``eval-<n>`` beside the checkpoint, so neither the training
    run's results nor an earlier evaluation's are overwritten). Returns the metrics on the main process.

    Data whose categories are not those the checkpoint was trained on are refused."""
    data = read_detection_checkpoint(checkpoint)
    cfg = cfg or _checkpoint_config(data, Path(checkpoint), overrides)
    env = distributed.setup(cfg.device)
    try:
        resolve_data(cfg, env)
        val_set = _dataset(cfg.data.val_images, cfg.data.val_ann, "validation", cfg, train=False)
        check_categories(data, checkpoint, val_set.categories, val_set.ann_file)
        model = build_detector(cfg.model, len(val_set.cat_ids), load_pretrained=False)
        load_model_state(model, data, checkpoint, asdict(cfg.model))
        model.to(env.device)
        metrics = evaluate_model(model, val_set, cfg, env)
        if metrics is not None:
            out = Path(output_dir) if output_dir else _new_folder(Path(checkpoint).parent, "eval")
            _report(metrics, model, val_set, cfg, env, out, checkpoint)
        return metrics
    finally:
        distributed.cleanup()


def _new_folder(parent: Path, stem: str) -> Path:
    """Create and return ``parent/<stem>-<n>`` for the first ``n`` (from 1) not taken."""
    n = 1
    while True:
        folder = parent / f"{stem}-{n}"
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            n += 1
        else:
            return folder


def _checkpoint_config(data: dict[str, Any], checkpoint: Path, overrides: Sequence[str]) -> DetectionConfig:
    """The checkpoint's configuration with ``overrides``. Checkpoints of older versions recorded relative
    validation paths: they are taken relative to the folder training ran in, known while the checkpoint
    is still in its (relative) ``output_dir``; otherwise a path missing from here is a clear error."""
    saved = copy.deepcopy(data["config"])
    root = _training_folder(checkpoint, str(saved.get("output_dir", "")))
    unresolved = {}
    for key in ("val_images", "val_ann"):
        path = saved.get("data", {}).get(key)
        if path and not Path(path).is_absolute():
            if root is not None:
                saved["data"][key] = str(root / path)
            else:
                unresolved[key] = path
    cfg = load_config(overrides=overrides, base=saved)
    for key, path in unresolved.items():
        if getattr(cfg.data, key) == path and not Path(path).exists():
            raise ConfigError(
                f"{checkpoint} records data.{key} as {path!r}, relative to the folder its training ran in, "
                f"which is unknown now that the checkpoint has moved; pass --val-images and --val-ann"
            )
    return cfg


def _training_folder(checkpoint: Path, output_dir: str) -> Path | None:
    """The folder a run with relative ``output_dir`` was started in, if ``checkpoint`` is still inside it."""
    parts = Path(output_dir).parts
    if not output_dir or Path(output_dir).is_absolute() or ".." in parts:
        return None
    folder = checkpoint.resolve().parent.parts
    if folder[len(folder) - len(parts) :] != parts:
        return None
    return Path(*folder[: len(folder) - len(parts)])
