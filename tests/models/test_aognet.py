"""AOGNet-12M/40M (BN and AN): the authors' state-dict layout, exact sizes, block wiring, training basics."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attentive_norm.layers import AttentiveBatchNorm2d
from attentive_norm.models import create_model, list_models
from attentive_norm.models.aog_grammar import build_aog
from attentive_norm.models.aognet import (
    AOGBlock,
    AOGNet,
    NodeOp,
    _attentive_norm_factory,
    aognet12m,
    aognet12m_an,
    aognet40m,
    aognet40m_an,
    stage_widths,
)
from attentive_norm.models.features import FeatureExtractor
from attentive_norm.models.official_keys import to_official_key_names

# the keys and shapes of the authors' released state dicts (shipped with the tests)
REFERENCE = json.loads(
    gzip.decompress(
        (Path(__file__).parents[1] / "reference" / "official_state_dict_keys.json.gz").read_bytes()
    )
)
BUILDERS = {"aognet12m": aognet12m, "aognet12m_an": aognet12m_an, "aognet40m": aognet40m}
BUILDERS["aognet40m_an"] = aognet40m_an


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def reference() -> dict:
    return REFERENCE


@pytest.mark.parametrize("name", list(BUILDERS))
def test_state_dict_layout_and_size_match_the_authors(name: str, reference: dict) -> None:
    """Same keys in the same order with the same shapes (AN internals renamed), same parameter count."""
    model = BUILDERS[name]()
    ours = {k: list(v.shape) for k, v in to_official_key_names(model.state_dict()).items()}
    theirs = reference[name]["state_dict"]
    assert list(ours) == list(theirs)
    assert ours == theirs
    assert _num_params(model) == reference[name]["num_params"]


def test_authors_checkpoint_loads_by_name(reference: dict) -> None:
    """A state dict in the authors' names and shapes loads strictly into our model, values in place."""
    model = aognet12m_an()
    theirs = {
        k: torch.randint(0, 3, shape) if k.endswith("num_batches_tracked") else torch.randn(shape)
        for k, shape in reference["aognet12m_an"]["state_dict"].items()
    }
    model.load_state_dict(theirs)
    an = "stage3.stage_3_block_0.stage_3_block_0_node_0_op.conv_norm_ac_2.conv_norm.conv_norm.1."
    ours = model.state_dict()
    assert torch.equal(ours[an + "mixture_weight"], theirs[an + "weight_"])
    attention = theirs[an + "attention_weights.attention.0.weight"]
    assert torch.equal(ours[an + "attention.weight"], attention.flatten(1))
    assert torch.equal(
        ours[an + "attention.norm.running_var"], theirs[an + "attention_weights.attention.1.running_var"]
    )
    assert torch.equal(ours["fc.bias"], theirs["fc.bias"])


# AOGNET.md §8: (model, stage, block) -> (transition, block BN, block AN); None: no transition.
BLOCK_PARAMS = {
    ("12m", 0, 0): (None, 31_280, 33_020),
    ("12m", 1, 0): (16_640, 192_960, 197_052),
    ("12m", 3, 0): (263_168, 6_419_635, 6_467_587),
    ("40m", 0, 1): (None, 257_936, 262_700),
    ("40m", 2, 0): (201_600, 3_499_646, 3_534_374),
    ("40m", 3, 0): (804_608, 18_581_587, 18_662_947),
}


@pytest.mark.slow
def test_per_block_parameters() -> None:
    models = {
        ("12m", False): aognet12m(),
        ("12m", True): aognet12m_an(),
        ("40m", False): aognet40m(),
        ("40m", True): aognet40m_an(),
    }
    for (size, s, j), (transition, bn, an) in BLOCK_PARAMS.items():
        for with_an, expected in ((False, bn), (True, an)):
            stage = getattr(models[(size, with_an)], f"stage{s}")
            assert _num_params(getattr(stage, f"stage_{s}_block_{j}")) == expected, (size, s, j, with_an)
            if transition is not None:
                assert _num_params(getattr(stage, f"stage_{s}_block_0_transition")) == transition
    assert _num_params(models[("12m", False)].stem) == 7_472
    assert _num_params(models[("40m", True)].stem) == 22_148


# AOGNET.md §5, AOGNet-12M stage 0 in registration order: id, in, mid, out, shortcut, AN, params BN, AN.
STAGE0_12M = [
    [(1, 32, 20, 80, True, True, 8_800, 9_380), (5, 16, 10, 40, True, False, 2_300, 2_300)],
    [(3, 40, 10, 40, False, False, 1_820, 1_820), (6, 16, 10, 40, True, False, 2_300, 2_300)],
    [(4, 40, 10, 40, False, False, 1_820, 1_820), (2, 80, 20, 80, False, True, 7_040, 7_620)],
    [(0, 80, 20, 80, False, True, 7_040, 7_620)],
]
STAGE0_12M_BLOCK1 = [
    (1, 80, 32, 128, True, True, 26_752, 27_668),
    (5, 40, 16, 64, True, False, 6_848, 6_848),
    (3, 64, 16, 64, False, False, 4_544, 4_544),
    (6, 40, 16, 64, True, False, 6_848, 6_848),
    (4, 64, 16, 64, False, False, 4_544, 4_544),
    (2, 128, 32, 128, False, True, 17_792, 18_708),
    (0, 128, 32, 128, False, True, 17_792, 18_708),
]


def test_node_ops_of_12m_stage0() -> None:
    rows = {0: [r for group in STAGE0_12M for r in group], 1: STAGE0_12M_BLOCK1}
    for model, with_an in ((aognet12m(), False), (aognet12m_an(), True)):
        for j, block_rows in rows.items():
            block = getattr(model.stage0, f"stage_0_block_{j}")
            ops = [name for name, _ in block.named_children() if name.endswith("_op")]
            assert ops == [f"stage_0_block_{j}_node_{row[0]}_op" for row in block_rows]
            for node, cin, mid, cout, shortcut, an_node, params_bn, params_an in block_rows:
                op = block.node_op(node)
                conv1 = op.conv_norm_ac_1.conv_norm.conv_norm[0]
                assert (conv1.in_channels, conv1.out_channels) == (cin, mid)
                assert op.conv_norm_3.conv_norm[0].out_channels == cout
                assert (op.shortcut is not None) == shortcut
                norm = op.conv_norm_ac_2.conv_norm.conv_norm[1]
                assert isinstance(norm, AttentiveBatchNorm2d) == (with_an and an_node)
                assert _num_params(op) == (params_an if with_an else params_bn)


def test_mid_width_rounds_half_up() -> None:
    for cout, mid in ((206, 52), (70, 18), (149, 37), (412, 103), (618, 155), (8, 4)):
        assert NodeOp(cout, cout).conv_norm_ac_1.conv_norm.conv_norm[0].out_channels == mid


def test_stage_widths() -> None:
    assert stage_widths(448, 896, 3, 4) == [596, 744, 896]  # step 149 snaps down to 148
    assert stage_widths(32, 128, 2, 2) == [80, 128]
    assert stage_widths(512, 824, 1, 4) == [824]
    assert stage_widths(0, 30, 3, 4) == [8, 16, 30]  # a tie (10: 8 or 12) takes the lower multiple


def test_an_only_in_full_width_nodes_with_per_stage_k() -> None:
    model = aognet12m_an(num_mixtures=(3, 4, 5, 6))
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, AttentiveBatchNorm2d):
            stage, block, node = re.search(
                r"stage_(\d)_block_(\d)_node_(\d+)_op\.conv_norm_ac_2\.", name
            ).groups()
            found[(int(stage), int(block), int(node))] = m.num_mixtures
    expected = {}
    for s, blocks, nodes in (
        (0, 2, (0, 1, 2)),
        (1, 2, (0, 1, 2)),
        (2, 2, (0, 1, 2, 3)),
        (3, 1, (0, 1, 2, 3)),
    ):
        for j in range(blocks):
            for n in nodes:
                expected[(s, j, n)] = 3 + s
    assert found == expected  # 24 AN layers


def test_dropout_only_in_stages_2_and_3() -> None:
    model = aognet12m()
    for s in range(4):
        drops = [m for m in getattr(model, f"stage{s}").modules() if isinstance(m, nn.Dropout2d)]
        if s < 2:
            assert not drops
        else:
            nodes = sum(isinstance(m, NodeOp) for m in getattr(model, f"stage{s}").modules())
            assert len(drops) == nodes and all(d.p == 0.1 for d in drops)
    assert not [m for m in model.stem.modules() if isinstance(m, nn.Dropout2d)]


def test_forward_backward_every_parameter_gets_a_gradient() -> None:
    model = aognet12m_an(num_classes=7)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic_and_forward_is_head_of_features() -> None:
    model = aognet12m_an(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 824, 2, 2)
        assert torch.equal(model(x), model(x))
        assert torch.equal(model(x), model.forward_head(features))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


def test_contract_and_registry() -> None:
    assert {"aognet12m", "aognet12m_an", "aognet40m", "aognet40m_an"} <= set(list_models("aognet*"))
    model = create_model("aognet12m", num_classes=3)
    assert isinstance(model, AOGNet) and model.num_classes == 3 and model.num_features == 824
    assert model.feature_info == [
        {"num_chs": 128, "reduction": 4, "module": "stage0"},
        {"num_chs": 256, "reduction": 8, "module": "stage1"},
        {"num_chs": 512, "reduction": 16, "module": "stage2"},
        {"num_chs": 824, "reduction": 32, "module": "stage3"},
    ]
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity)
    model.reset_classifier(11)
    assert model.fc.out_features == 11
    assert [name for name, _ in model.named_children()] == [
        "stem",
        "stage0",
        "stage1",
        "stage2",
        "stage3",
        "avgpool",
        "fc",
    ]


def test_features_only() -> None:
    extractor = create_model("aognet12m_an", features_only=True, out_indices=(1, 3)).eval()
    assert isinstance(extractor, FeatureExtractor)
    with torch.no_grad():
        maps = extractor(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 256, 8, 8), (2, 824, 2, 2)]


def test_init_follows_the_authors() -> None:
    model = aognet12m_an()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        elif isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.35)
    ans = [m for m in model.modules() if isinstance(m, AttentiveBatchNorm2d)]
    weights = torch.cat([m.mixture_weight.flatten() for m in ans])
    biases = torch.cat([m.mixture_bias.flatten() for m in ans])
    assert weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert weights.std().item() == pytest.approx(0.1, rel=0.05)
    assert biases.mean().item() == pytest.approx(0.0, abs=0.01)
    assert all(torch.equal(m.attention.norm.weight, torch.ones(m.num_mixtures)) for m in ans)
    torch.manual_seed(3)
    a = aognet12m_an().state_dict()
    torch.manual_seed(3)
    b = aognet12m_an().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_construction_replays_the_authors_random_draws() -> None:
    """Built AN layer = the authors' draws: attention Conv2d (default init), then weight_, then bias_."""
    torch.manual_seed(5)
    norm = _attentive_norm_factory(10)(20)
    after = torch.rand(4)
    torch.manual_seed(5)
    conv = nn.Conv2d(20, 10, 1, bias=False)
    weight, bias = torch.empty(10, 20).normal_(1.0, 0.1), torch.empty(10, 20).normal_(0.0, 0.1)
    assert torch.equal(norm.attention.weight, conv.weight.detach().flatten(1))
    assert torch.equal(norm.mixture_weight, weight) and torch.equal(norm.mixture_bias, bias)
    assert torch.equal(after, torch.rand(4))


# The u (conv input) and r (residual input) columns of AOGNET.md §4.3: "oK" = output of node K,
# "x[a..b]" = block-input cells a..b, "cat" = channel concatenation, "= u": r is u.
WIRING_G2 = """
0 | o1 + o2 | = u
1 | x[0..1] | = u
2 | cat(o3, o4) | = u
3 | o5 | = u
4 | o6 + o3 | o6
5 | x[0..0] | = u
6 | x[1..1] | = u
"""
WIRING_G4L = """
0 | o1 + o2 + o3 | = u
1 | x[0..3] | = u
2 | cat(o4, o5) | cat(0.5·o4, o5)
3 | cat(o6, o7) + o2 | cat(o6, 0.5·o7)
4 | o8 | = u
5 | o9 + o10 | = u
6 | o11 + o12 | = u
7 | o13 + o14 + o6 | o13 + o14
8 | x[0..0] | = u
9 | x[1..3] | = u
10 | cat(o7, o15) | cat(0.5·o7, 0.5·o15)
11 | x[0..1] | = u
12 | cat(o4, o15) + o14 | cat(0.5·o4, 0.5·o15) + o14
13 | x[2..3] | = u
14 | cat(o16, o17) | = u
15 | o18 + o4 | o18
16 | o19 + o15 | = u
17 | o20 + o16 | o20
18 | x[1..1] | = u
19 | x[2..2] | = u
20 | x[3..3] | = u
"""
WIRING_G4R = """
0 | o1 + o2 + o3 | = u
1 | x[0..3] | = u
2 | cat(o4, o5) + o3 | cat(o4, 0.5·o5)
3 | cat(o6, o7) | cat(0.5·o6, o7)
4 | o8 + o9 | = u
5 | o10 + o15 | o10
6 | o11 + o12 | = u
7 | o13 + o14 + o6 | o13 + o14
8 | x[0..2] | = u
9 | cat(o6, o15) | cat(0.5·o6, 0.5·o15)
10 | x[3..3] | = u
11 | x[0..1] | = u
12 | cat(o16, o17) + o14 | = u
13 | x[2..3] | = u
14 | cat(o5, o15) | cat(0.5·o5, 0.5·o15)
15 | o18 + o17 | = u
16 | o19 | = u
17 | o20 + o16 | o20
18 | x[2..2] | = u
19 | x[0..0] | = u
20 | x[1..1] | = u
"""


def _evaluate(expr: str, outputs: dict[int, Tensor], x: Tensor, cell: int) -> Tensor:
    """Evaluate a table expression: a left-folded sum of ``oK``, ``x[a..b]`` and ``cat(...)`` terms."""

    def item(token: str) -> Tensor:
        factor, _, name = token.rpartition("·")
        value = outputs[int(name[1:])]
        return value * float(factor) if factor else value

    def term(token: str) -> Tensor:
        if token.startswith("cat("):
            return torch.cat([item(t) for t in token[4:-1].split(", ")], dim=1)
        if token.startswith("x["):
            a, b = (int(v) for v in token[2:-1].split(".."))
            return x[:, a * cell : (b + 1) * cell]
        return item(token)

    terms = [term(t) for t in expr.split(" + ")]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


@pytest.mark.parametrize(
    ("grid", "mode", "table"),
    [(2, 1, WIRING_G2), (4, 1, WIRING_G4L), (4, 2, WIRING_G4R)],
    ids=["G2", "G4L", "G4R"],
)
def test_block_wiring_matches_the_tables(grid: int, mode: int, table: str) -> None:
    """Stub every node op with a fixed output and record its (u, r): they must equal the §4.3 columns.

    Integer-valued tensors make every sum and 0.5 factor exact, so the check is ``torch.equal``.
    """
    graph = build_aog(grid, mode)
    cell_in, cell_out = 2, 3
    block = AOGBlock(grid * cell_in, grid * cell_out, graph, "b").eval()
    x = torch.randint(-4, 5, (2, grid * cell_in, 3, 3)).float()
    fixed = {n.id: torch.randint(-4, 5, (2, n.width * cell_out, 3, 3)).float() * 2 for n in graph.nodes}
    seen: dict[int, tuple[Tensor, Tensor]] = {}
    calls: list[int] = []

    def stub(i: int):
        def forward(u: Tensor, r: Tensor) -> Tensor:
            seen[i] = (u, r)
            calls.append(i)
            return fixed[i]

        return forward

    for n in graph.nodes:
        block.node_op(n.id).forward = stub(n.id)
    with torch.no_grad():
        out = block(x)
        assert torch.equal(out, block.extra_norm_ac(fixed[0]))

    rows = [line.split(" | ") for line in table.strip().splitlines()]
    assert len(rows) == len(graph.nodes)
    for node, u_expr, r_expr in rows:
        i = int(node)
        u, r = seen[i]
        expected_u = _evaluate(u_expr, fixed, x, cell_in)
        expected_r = expected_u if r_expr == "= u" else _evaluate(r_expr, fixed, x, cell_in)
        assert torch.equal(u, expected_u), f"node {i}: u != {u_expr}"
        assert torch.equal(r, expected_r), f"node {i}: r != {r_expr}"
    terminals = [i for i in graph.dfs_order if not graph.nodes[i].children]
    assert calls == terminals + [i for i in graph.dfs_order if i not in terminals]
