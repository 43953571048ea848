"""The And-Or grammar reproduces the three block graphs of AOGNet-12M/40M (AOGNET.md §4.3) exactly."""

from __future__ import annotations

import pytest

from attentive_norm.models.aog_grammar import NodeKind, build_aog, kept_cuts

# id | type | span | children ("L" marks lateral) | parents | npaths, transcribed from AOGNET.md §4.3.
G2 = """
0 Or 0-1 | 1,2 | - | 1
1 T 0-1 | - | 0 | 1
2 And 0-1 | 3,4 | 0 | 1
3 Or 0-0 | 5 | 2,4 | 1
4 Or 1-1 | 6,3L | 2 | 1
5 T 0-0 | - | 3 | 1
6 T 1-1 | - | 4 | 1
"""
G2_DFS = [1, 5, 3, 6, 4, 2, 0]

G4L = """
0 Or 0-3 | 1,2,3 | - | 1
1 T 0-3 | - | 0 | 1
2 And 0-3 | 4,5 | 0,3 | 1
3 And 0-3 | 6,7,2L | 0 | 1
4 Or 0-0 | 8 | 2,12,15 | 2
5 Or 1-3 | 9,10 | 2 | 1
6 Or 0-1 | 11,12 | 3,7 | 1
7 Or 2-3 | 13,14,6L | 3,10 | 2
8 T 0-0 | - | 4 | 2
9 T 1-3 | - | 5 | 1
10 And 1-3 | 7,15 | 5 | 1
11 T 0-1 | - | 6 | 1
12 And 0-1 | 4,15,14L | 6 | 1
13 T 2-3 | - | 7 | 2
14 And 2-3 | 16,17 | 7,12 | 2
15 Or 1-1 | 18,4L | 10,12,16 | 2
16 Or 2-2 | 19,15L | 14,17 | 2
17 Or 3-3 | 20,16L | 14 | 2
18 T 1-1 | - | 15 | 2
19 T 2-2 | - | 16 | 2
20 T 3-3 | - | 17 | 2
"""
G4L_DFS = [1, 8, 4, 9, 13, 19, 18, 15, 16, 20, 17, 14, 11, 12, 6, 7, 10, 5, 2, 3, 0]

G4R = """
0 Or 0-3 | 1,2,3 | - | 1
1 T 0-3 | - | 0 | 1
2 And 0-3 | 4,5,3L | 0 | 1
3 And 0-3 | 6,7 | 0,2 | 1
4 Or 0-2 | 8,9 | 2 | 1
5 Or 3-3 | 10,15L | 2,14 | 2
6 Or 0-1 | 11,12 | 3,7,9 | 2
7 Or 2-3 | 13,14,6L | 3 | 1
8 T 0-2 | - | 4 | 1
9 And 0-2 | 6,15 | 4 | 1
10 T 3-3 | - | 5 | 2
11 T 0-1 | - | 6 | 2
12 And 0-1 | 16,17,14L | 6 | 2
13 T 2-3 | - | 7 | 1
14 And 2-3 | 5,15 | 7,12 | 1
15 Or 2-2 | 18,17L | 5,9,14 | 2
16 Or 0-0 | 19 | 12,17 | 2
17 Or 1-1 | 20,16L | 12,15 | 2
18 T 2-2 | - | 15 | 2
19 T 0-0 | - | 16 | 2
20 T 1-1 | - | 17 | 2
"""
G4R_DFS = [1, 8, 11, 19, 16, 20, 17, 10, 18, 15, 5, 14, 12, 6, 9, 4, 13, 7, 3, 2, 0]


def _ids(field: str) -> list[int]:
    return [] if field == "-" else [int(t.rstrip("L")) for t in field.split(",")]


def _parse(table: str) -> list[dict]:
    rows = []
    for line in table.strip().splitlines():
        head, children, parents, npaths = (part.strip() for part in line.split("|"))
        node_id, kind, span = head.split()
        start, end = (int(c) for c in span.split("-"))
        tokens = [] if children == "-" else children.split(",")
        rows.append(
            {
                "id": int(node_id),
                "kind": NodeKind(kind),
                "span": (start, end),
                "children": [int(t) for t in tokens if not t.endswith("L")],
                "lateral": [int(t[:-1]) for t in tokens if t.endswith("L")],
                "parents": _ids(parents),
                "npaths": int(npaths),
            }
        )
    return rows


GRAPHS = {
    "G2-mode1": (2, 1, G2, G2_DFS),
    "G2-mode2": (2, 2, G2, G2_DFS),
    "G4L": (4, 1, G4L, G4L_DFS),
    "G4R": (4, 2, G4R, G4R_DFS),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_matches_table(name: str) -> None:
    grid, mode, table, dfs = GRAPHS[name]
    graph = build_aog(grid, mode)
    expected = _parse(table)
    assert len(graph.nodes) == len(expected)
    for node, row in zip(graph.nodes, expected):
        got = {
            "id": node.id,
            "kind": node.kind,
            "span": (node.start, node.end),
            "children": node.children,
            "lateral": node.lateral_children,
            "parents": node.parents,
            "npaths": node.npaths,
        }
        assert got == row, f"{name} node {node.id}"
    assert graph.dfs_order == dfs


@pytest.mark.parametrize(
    ("grid", "mode", "counts"), [(2, 1, (3, 1, 3)), (4, 1, (8, 5, 8)), (4, 2, (8, 5, 8))]
)
def test_node_counts(grid: int, mode: int, counts: tuple[int, int, int]) -> None:
    graph = build_aog(grid, mode)
    kinds = [n.kind for n in graph.nodes]
    assert (kinds.count(NodeKind.TERMINAL), kinds.count(NodeKind.AND), kinds.count(NodeKind.OR)) == counts
    assert sorted(graph.dfs_order) == list(range(len(graph.nodes)))


def test_symmetric_split_removal() -> None:
    assert kept_cuts(4, 1) == [1, 2]
    assert kept_cuts(4, 2) == [3, 2]
    assert kept_cuts(3, 1) == [1]
    assert kept_cuts(3, 2) == [2]
    assert kept_cuts(1, 1) == []
    with pytest.raises(ValueError, match="symmetric_mode"):
        kept_cuts(4, 0)


def test_reversed_and_nodes() -> None:
    """G4L node 10 and G4R node 14 list their right part first (ascending ids), as the authors do."""
    g4l, g4r = build_aog(4, 1), build_aog(4, 2)
    assert [(g4l.nodes[c].start, g4l.nodes[c].end) for c in g4l.nodes[10].children] == [(2, 3), (1, 1)]
    assert [(g4r.nodes[c].start, g4r.nodes[c].end) for c in g4r.nodes[14].children] == [(3, 3), (2, 2)]


def test_without_lateral_edges() -> None:
    graph = build_aog(4, 1, lateral=False)
    assert all(not n.lateral_children for n in graph.nodes)
    assert [n.npaths for n in graph.nodes] == [n.npaths for n in build_aog(4, 1).nodes]


def test_shares_parent() -> None:
    g4l = build_aog(4, 1)
    assert g4l.shares_parent(3, 2)  # both children of the root: the lateral feeds the conv input only
    assert not g4l.shares_parent(12, 14)


def test_single_cell_grid() -> None:
    graph = build_aog(1)
    assert [(n.kind, n.children) for n in graph.nodes] == [(NodeKind.OR, [1]), (NodeKind.TERMINAL, [])]
    assert graph.dfs_order == [1, 0]
