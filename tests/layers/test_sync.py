"""convert_sync_norm: AN on 2 gloo processes (CPU) behaves exactly like AN on one process, whole batch.

Definition of "exactly like". One process computes ``out = model(x)`` on the whole batch and the loss
``L = sum(out * w)`` for a fixed random ``w``. Process ``r`` gets its slice ``x_r`` (of ``w_r``) and
computes ``L_r = sum(model(x_r) * w_r)``, so ``sum_r L_r = L``. Then, on every process:

- its output equals the single-process output on its slice, in training and afterwards in eval;
- its input gradient ``dL_r/dx_r`` equals ``dL/dx`` on its slice (the synchronised statistics carry
  the other processes' contributions back through the differentiable gather);
- its parameter gradients, summed over processes (all-reduce SUM), equal ``dL/dθ``. DDP averages
  instead of summing, which is the gradient of the mean of the processes' losses;
- its running statistics (main and logit BatchNorm) equal the single-process ones.

The workers are separate Python processes running this file as a script, killed by a timeout should a
collective ever hang.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from attentive_norm import AttentiveBatchNorm2d, convert_sync_norm
from attentive_norm.layers import LogitNorm

WORLD_SIZE = 2
SPLITS: tuple[tuple[int, int], ...] = ((3, 3), (1, 5))
"""Per-process batch sizes of each run; (1, 5) gives one process a single instance."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        AttentiveBatchNorm2d(8, 4),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        AttentiveBatchNorm2d(6, 3, attention="conv_bn_softmax", momentum=None),
    ).double()


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(size, 3, 5, 4, generator=generator, dtype=torch.float64) * 2 + 0.5
    return x, torch.randn(size, 6, 5, 4, generator=generator, dtype=torch.float64)


def _step(model: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, object]:
    """One training forward/backward, then an eval forward; everything the test compares."""
    x = x.clone().requires_grad_()
    out = model.train()(x)
    (out * w).sum().backward()
    return {
        "out": out.detach(),
        "x_grad": x.grad,
        "param_grads": {name: p.grad.clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "eval_out": model.eval()(x.detach()),
    }


def _worker(rank: int, init_file: str, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        for split in SPLITS:
            x, w = _batch(sum(split))
            part = slice(sum(split[:rank]), sum(split[: rank + 1]))
            model = convert_sync_norm(_model(), sync_batch_norm=False)
            result = _step(model, x[part], w[part])
            for grad in result["param_grads"].values():
                dist.all_reduce(grad)
            torch.save(result, out_dir / f"{split[0]}_{split[1]}_rank{rank}.pt")
        with_batch_norm = convert_sync_norm(nn.Sequential(nn.BatchNorm2d(4), AttentiveBatchNorm2d(4, 2)))
        groups = [with_batch_norm[1].process_group, with_batch_norm[1].attention.norm.process_group]
        assert isinstance(with_batch_norm[0], nn.SyncBatchNorm)
        assert all(group is dist.group.WORLD for group in groups)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(tmp_path / "init"), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    try:
        logs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert all(worker.returncode == 0 for worker in workers), "\n".join(logs)

    for split in SPLITS:
        x, w = _batch(sum(split))
        expected = _step(_model(), x, w)
        for rank in range(WORLD_SIZE):
            got = torch.load(tmp_path / f"{split[0]}_{split[1]}_rank{rank}.pt")
            part = slice(sum(split[:rank]), sum(split[: rank + 1]))
            for key in ("out", "x_grad", "eval_out"):
                torch.testing.assert_close(got[key], expected[key][part], msg=f"{key} {split} {rank}")
            for key in ("param_grads", "buffers"):
                torch.testing.assert_close(got[key], expected[key], msg=f"{key} {split} {rank}")


def test_needs_an_initialised_world_or_an_explicit_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        convert_sync_norm(nn.Sequential(AttentiveBatchNorm2d(4, 2)))


def test_sets_every_logit_norm_and_leaves_the_model_usable_on_one_process() -> None:
    group = object()  # stands in for a process group; not used while torch.distributed is off
    model = nn.Sequential(AttentiveBatchNorm2d(4, 2), nn.BatchNorm2d(4))
    converted = convert_sync_norm(model, group, sync_batch_norm=False)
    assert converted is model and type(model[1]) is nn.BatchNorm2d
    assert model[0].process_group is group
    assert all(m.process_group is group for m in model.modules() if isinstance(m, LogitNorm))
    assert model(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
