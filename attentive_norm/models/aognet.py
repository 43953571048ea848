"""AOGNet-12M and AOGNet-40M (Li, Song, Wu, "AOGNets", CVPR 2019), with BatchNorm or Attentive Norm.

An AOGNet stage is a chain of blocks; each block is an And-Or graph (``aog_grammar``) over a 1×D grid
of channel cells whose every node runs a bottleneck residual unit (``NodeOp``). Terminal nodes read a
channel slice of the block input, And-nodes concatenate their parts, Or-nodes sum their alternatives,
and lateral edges add same-width neighbours. The AN variants (arXiv:1908.01259) replace the norm after
the 3×3 conv of every node that spans the whole grid.

Module names and registration order follow the authors' ``iVMCL/AOGNet-v2`` networks, so their
checkpoints load by name with ``load_state_dict`` (``AttentiveBatchNorm2d`` maps the AN-internal key
names itself). Construction and initialisation follow the authors' order of random draws (module
registration order, then one init pass in module pre-order), so that equal seeds give their initial
weights; that last point is reasoned from their description, not checked against their code here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d
from ..layers.attention import AttentionHead, LogitNorm
from .aog_grammar import AOGraph, NodeKind, build_aog
from .features import build_model
from .registry import register_model

NormFactory = Callable[[int], nn.Module]


class ConvNorm(nn.Module):
    """Conv2d (no bias) → norm [→ Dropout2d]: the authors' "CN" unit, keys ``conv_norm.{0,1}``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm: NormFactory = nn.BatchNorm2d,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        layers = [nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False), norm(out_chs)]
        if drop_rate > 0:
            layers.append(nn.Dropout2d(drop_rate, inplace=True))
        self.conv_norm = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_norm(x)


class ConvNormAct(nn.Module):
    """``ConvNorm`` → ReLU: the authors' "CNR" unit, keys ``conv_norm.conv_norm.{0,1}``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv_norm = ConvNorm(in_chs, out_chs, kernel_size, stride, padding, norm)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_norm(x))


class NodeOp(nn.Module):
    """The bottleneck residual unit of a graph node: ``ReLU(convs(u) + shortcut(r))``.

    The conv branch reads ``u`` and the residual reads ``r`` (they differ for some And/Or nodes). A
    projection shortcut exists only when the widths differ (Terminal nodes).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        norm3x3: NormFactory = nn.BatchNorm2d,
        drop_rate: float = 0.0,
        bottleneck_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        mid = max(4, math.floor(out_chs * bottleneck_ratio + 0.5))  # rounds half up, as the authors do
        self.conv_norm_ac_1 = ConvNormAct(in_chs, mid, 1)
        self.conv_norm_ac_2 = ConvNormAct(mid, mid, 3, padding=1, norm=norm3x3)
        self.conv_norm_3 = ConvNorm(mid, out_chs, 1, drop_rate=drop_rate)
        self.shortcut = ConvNorm(in_chs, out_chs, 1) if in_chs != out_chs else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, u: Tensor, r: Tensor) -> Tensor:
        y = self.conv_norm_3(self.conv_norm_ac_2(self.conv_norm_ac_1(u)))
        return self.act(y + (self.shortcut(r) if self.shortcut is not None else r))


@dataclass(frozen=True)
class _NodePlan:
    """How an And/Or node forms its inputs from stored outputs (AOGNET.md §6)."""

    node: int
    concat: bool
    children: tuple[int, ...]
    factors: tuple[float, ...]
    """Residual weight ``npaths(node) / npaths(child)`` per base child (the authors' double-count fix)."""
    unshared_laterals: tuple[int, ...]
    """Lateral children without a common parent: added to both ``u`` and ``r``."""
    shared_laterals: tuple[int, ...]
    """Lateral children sharing a parent with the node: added to ``u`` only."""


def _cell_bounds(channels: int, cells: int) -> list[int]:
    """Channel offsets of the grid cells: cell i has ``channels // cells`` (+1 for i < remainder)."""
    base, extra = divmod(channels, cells)
    bounds = [0]
    for i in range(cells):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return bounds


class AOGBlock(nn.Module):
    """One AOG building block: node ops over an And-Or graph, then ``extra_norm_ac`` (BN → ReLU).

    Args:
        in_chs, out_chs: block widths; both are split into ``graph.grid_size`` cells.
        graph: the block's And-Or graph.
        name: the authors' block name (``stage_{s}_block_{j}``), the prefix of the node-op names.
        num_mixtures: K of the AN layer in the 3×3 norm of full-width nodes; ``None`` keeps BN.
        drop_rate: Dropout2d after the last norm of every node op.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        graph: AOGraph,
        name: str,
        num_mixtures: int | None = None,
        drop_rate: float = 0.0,
        bottleneck_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.graph = graph
        cells = graph.grid_size
        self._in_bounds = _cell_bounds(in_chs, cells)
        out_bounds = _cell_bounds(out_chs, cells)
        self._op_names: dict[int, str] = {}
        for i in graph.dfs_order:  # registration order = the authors' key order
            node = graph.nodes[i]
            width = out_bounds[node.end + 1] - out_bounds[node.start]
            if node.kind is NodeKind.TERMINAL:
                node_in = self._in_bounds[node.end + 1] - self._in_bounds[node.start]
            else:
                node_in = width
            norm3x3: NormFactory = nn.BatchNorm2d
            if num_mixtures is not None and node.width == cells:
                norm3x3 = _attentive_norm_factory(num_mixtures)
            self._op_names[i] = f"{name}_node_{i}_op"
            self.add_module(self._op_names[i], NodeOp(node_in, width, norm3x3, drop_rate, bottleneck_ratio))
        self.extra_norm_ac = nn.Sequential(nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))
        self._terminals = [i for i in graph.dfs_order if graph.nodes[i].kind is NodeKind.TERMINAL]
        self._plans = [self._plan(i) for i in graph.dfs_order if graph.nodes[i].kind is not NodeKind.TERMINAL]

    def _plan(self, i: int) -> _NodePlan:
        node = self.graph.nodes[i]
        nodes = self.graph.nodes
        return _NodePlan(
            node=i,
            concat=node.kind is NodeKind.AND,
            children=tuple(node.children),
            factors=tuple(node.npaths / nodes[c].npaths for c in node.children),
            unshared_laterals=tuple(c for c in node.lateral_children if not self.graph.shares_parent(i, c)),
            shared_laterals=tuple(c for c in node.lateral_children if self.graph.shares_parent(i, c)),
        )

    def node_op(self, i: int) -> NodeOp:
        """The op of graph node ``i``."""
        return getattr(self, self._op_names[i])

    def forward(self, x: Tensor) -> Tensor:
        out: dict[int, Tensor] = {}
        for i in self._terminals:
            node = self.graph.nodes[i]
            piece = x[:, self._in_bounds[node.start] : self._in_bounds[node.end + 1]]
            out[i] = self.node_op(i)(piece, piece)
        for plan in self._plans:
            u, r = self._inputs(plan, out)
            out[plan.node] = self.node_op(plan.node)(u, r)
        return self.extra_norm_ac(out[0])

    @staticmethod
    def _inputs(plan: _NodePlan, out: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        """Conv input ``u`` and residual input ``r`` of an And/Or node (sums fold left, in list order)."""

        def combine(terms: list[Tensor]) -> Tensor:
            if plan.concat:
                return torch.cat(terms, dim=1)
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            return total

        base = [out[c] for c in plan.children]
        u = combine(base)
        r_is_u = all(f == 1.0 for f in plan.factors) and not plan.shared_laterals
        r = u if r_is_u else combine([t if f == 1.0 else t * f for t, f in zip(base, plan.factors)])
        for c in plan.unshared_laterals:
            u = u + out[c]
            if not r_is_u:
                r = r + out[c]
        for c in plan.shared_laterals:
            u = u + out[c]
        return u, (u if r_is_u else r)


def _attentive_norm_factory(num_mixtures: int) -> NormFactory:
    """AN layers that consume the global random stream as the authors' construction does.

    Their layer builds its attention conv (default ``Conv2d`` init) and then draws the mixture weight
    and bias; ours draws a Kaiming-normal projection instead, which uses a different number of random
    numbers. Building ours on a forked stream and replaying their draws keeps whole-model seeds in step.
    """

    def make(channels: int) -> AttentiveBatchNorm2d:
        with torch.random.fork_rng(devices=[]):
            norm = AttentiveBatchNorm2d(channels, num_mixtures)
        with torch.no_grad():
            nn.init.kaiming_uniform_(norm.attention.weight, a=math.sqrt(5))  # Conv2d's default init
            norm.reset_mixture()
        return norm

    return make


def stage_widths(in_chs: int, out_chs: int, num_blocks: int, cells: int) -> list[int]:
    """Output widths of a stage's blocks: equal steps, snapped to a multiple of ``cells``.

    The step is snapped to the nearest multiple (ties to the lower one); the last block closes at
    ``out_chs``.
    """
    step = (out_chs - in_chs) // num_blocks
    if step % cells:
        lower = step - step % cells
        step = lower if step - lower <= lower + cells - step else lower + cells
    widths = [in_chs + step * (j + 1) for j in range(num_blocks)]
    widths[-1] = out_chs
    return widths


class AOGNet(nn.Module):
    """AOGNet (the authors' ImageNet layout): deep 3×3 stem, four AOG stages, average pool, linear.

    Args:
        filter_list: widths F0..F4 (stem output, then each stage's output).
        blocks: AOG blocks per stage.
        dims: grid cells D per stage.
        symmetric_modes: mirror-cut removal per stage (1 keeps narrow left parts, 2 wide ones).
        drop_rates: Dropout2d probability inside every node op, per stage.
        num_mixtures: K per stage for Attentive Normalization; ``None`` builds the BatchNorm model.
        lateral: add the lateral edges between same-width nodes.
        bottleneck_ratio: bottleneck width of the node ops relative to their output.
        num_classes: classifier outputs (``0``: no classifier).
    """

    def __init__(
        self,
        filter_list: Sequence[int],
        blocks: Sequence[int],
        dims: Sequence[int],
        symmetric_modes: Sequence[int],
        drop_rates: Sequence[float],
        num_mixtures: Sequence[int] | None = None,
        lateral: bool = True,
        bottleneck_ratio: float = 0.25,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        num_stages = len(blocks)
        per_stage = {"dims": dims, "symmetric_modes": symmetric_modes, "drop_rates": drop_rates}
        if num_mixtures is not None:
            per_stage["num_mixtures"] = num_mixtures
        for key, values in per_stage.items():
            if len(values) != num_stages:
                raise ValueError(f"{key} needs one value per stage ({num_stages}), got {tuple(values)}")
        if len(filter_list) != num_stages + 1:
            raise ValueError(f"filter_list needs {num_stages + 1} widths, got {tuple(filter_list)}")

        stem_chs = filter_list[0] // 2
        self.stem = nn.Sequential(
            ConvNormAct(3, stem_chs, 3, stride=2, padding=1),
            ConvNormAct(stem_chs, stem_chs, 3, padding=1),
            ConvNormAct(stem_chs, filter_list[0], 3, padding=1),
            nn.MaxPool2d(2, 2),
        )
        self.feature_info: list[dict[str, Any]] = []
        reduction = 4
        for s in range(num_stages):
            stage = nn.Sequential()
            in_chs = filter_list[s]
            if s > 0:
                reduction *= 2
                stage.add_module(
                    f"stage_{s}_block_0_transition",
                    nn.Sequential(ConvNormAct(in_chs, in_chs, 1), nn.AvgPool2d(2, 2)),
                )
            graph = build_aog(dims[s], symmetric_modes[s], lateral)
            for j, out_chs in enumerate(stage_widths(in_chs, filter_list[s + 1], blocks[s], dims[s])):
                name = f"stage_{s}_block_{j}"
                k = num_mixtures[s] if num_mixtures is not None else None
                stage.add_module(
                    name, AOGBlock(in_chs, out_chs, graph, name, k, drop_rates[s], bottleneck_ratio)
                )
                in_chs = out_chs
            self.add_module(f"stage{s}", stage)
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"stage{s}"})
        self.num_features = filter_list[-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for s in range(len(self.feature_info)):
            x = getattr(self, f"stage{s}")(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (``0``: identity)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@torch.no_grad()
def _init_weights(model: nn.Module) -> None:
    """The authors' init, applied in module pre-order so the random draws come in their order.

    Convolutions (the AN attention projection too): Kaiming normal, fan_out, ReLU gain. AN mixture:
    weight N(1, 0.1), bias N(0, 0.1). BatchNorms (and AN's logit norm): weight 1, bias 0. The linear
    classifier keeps PyTorch's default init.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, AttentionHead)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, AttentiveBatchNorm2d):
            m.reset_mixture()
        elif isinstance(m, (nn.BatchNorm2d, LogitNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_AOGNET_12M: dict[str, Any] = {
    "filter_list": (32, 128, 256, 512, 824),
    "blocks": (2, 2, 2, 1),
    "dims": (2, 2, 4, 4),
    "symmetric_modes": (1, 2, 1, 2),
    "drop_rates": (0.0, 0.0, 0.1, 0.1),
}
_AOGNET_40M: dict[str, Any] = {
    **_AOGNET_12M,
    "filter_list": (56, 224, 448, 896, 1400),
    "blocks": (2, 2, 3, 1),
}
_AN_MIXTURES = (10, 10, 20, 20)


@register_model
def aognet12m(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """AOGNet-12M with BatchNorm (12,259,099 parameters)."""
    return build_model(AOGNet, **{**_AOGNET_12M, "num_classes": num_classes, **kwargs})


@register_model
def aognet12m_an(
    num_classes: int = 1000, num_mixtures: Sequence[int] = _AN_MIXTURES, **kwargs: Any
) -> nn.Module:
    """AOGNet-12M with AN in the 3×3 norm of full-width nodes (12,373,355 parameters at K 10,10,20,20)."""
    config = {**_AOGNET_12M, "num_classes": num_classes, "num_mixtures": num_mixtures, **kwargs}
    return build_model(AOGNet, **config)


@register_model
def aognet40m(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """AOGNet-40M with BatchNorm (40,153,004 parameters)."""
    return build_model(AOGNet, **{**_AOGNET_40M, "num_classes": num_classes, **kwargs})


@register_model
def aognet40m_an(
    num_classes: int = 1000, num_mixtures: Sequence[int] = _AN_MIXTURES, **kwargs: Any
) -> nn.Module:
    """AOGNet-40M with AN in the 3×3 norm of full-width nodes (40,388,880 parameters at K 10,10,20,20)."""
    config = {**_AOGNET_40M, "num_classes": num_classes, "num_mixtures": num_mixtures, **kwargs}
    return build_model(AOGNet, **config)
