"""`log --graph`: the drawing must encode exactly the parent edges of the DAG.

A reader walks the drawing the way a person does (follow '|', '/', '\\' from each '*' down to
the next '*') and rebuilds the edges; they must equal the commits' parents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from mergestore.cli.graph import draw_graph, graph_rows


@dataclass
class FakeCommit:
    parents: tuple[bytes, ...]
    time: float
    message: str = ""
    plan: bytes | None = None


@dataclass
class FakeEntry:
    id: bytes
    commit: FakeCommit = field(repr=False)


def read_edges(lines: list[str]) -> set[tuple[str, str]]:
    """(child, parent) pairs drawn: lanes carry the set of children waiting for a parent."""
    lanes: dict[int, set[str]] = {}
    edges: set[tuple[str, str]] = set()
    for line in lines:
        cells, _, rest = line.partition("  ")
        if "*" in cells:
            col = cells.index("*") // 2
            cid = rest.split()[0]
            for child in lanes.get(col, set()):
                edges.add((child, cid))
            lanes[col] = {cid}
            continue
        moved: dict[int, set[str]] = {}
        for i, ch in enumerate(line):
            if ch == "|":
                src = dst = i // 2
            elif ch == "\\":
                src, dst = (i - 1) // 2, (i + 1) // 2
            elif ch == "/":
                src, dst = (i + 1) // 2, (i - 1) // 2
            else:
                continue
            moved.setdefault(dst, set()).update(lanes.get(src, set()))
        lanes = moved
    return edges


def make_dag(parent_choices: list[list[int]]) -> list[FakeEntry]:
    """Commit i has parents (c % i for c in choices[i]); later commits are newer."""
    entries: list[FakeEntry] = []
    for i, choice in enumerate(parent_choices):
        parents = tuple(entries[j].id for j in dict.fromkeys(c % i for c in choice)) if i else ()
        entries.append(FakeEntry(bytes.fromhex(f"{i:02x}" * 32), FakeCommit(parents, 1000.0 + i)))
    return entries


def check(entries: list[FakeEntry], *, planar: bool = True) -> list[str]:
    """Every edge is drawn; with no crossing lanes, nothing else is."""
    lines, crossings = graph_rows(entries, {})
    assert lines == list(draw_graph(entries, {}))
    want = {(e.id.hex()[:10], p.hex()[:10]) for e in entries for p in e.commit.parents}
    drawn = read_edges(lines)
    assert want <= drawn, "\n".join(lines)
    if crossings == 0 or not planar:
        assert drawn == want or crossings, "\n".join(lines)
    if planar:
        assert crossings == 0, "\n".join(lines)
    assert sum("*" in ln.partition("  ")[0] for ln in lines) == len(entries)
    return lines


def test_siblings_get_their_own_lanes_and_join_at_the_base() -> None:
    # base, three experts forked from it, a merge of all of them, and a later base commit
    lines = check(make_dag([[], [0], [0], [0], [0, 1, 2, 3], [0]]))
    stars = [ln.partition("  ")[0].index("*") for ln in lines if "*" in ln.partition("  ")[0]]
    assert len(set(stars)) > 1  # not drawn as one straight line
    assert lines[-1].startswith("*")  # the root is last, in the first lane


def test_linear_history_is_one_straight_lane() -> None:
    lines = check(make_dag([[], [0], [1], [2]]))
    assert all(ln.startswith("*  ") for ln in lines)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=0, max_size=3), min_size=1, max_size=12))
def test_drawing_encodes_every_parent_edge(choices: list[list[int]]) -> None:
    check(make_dag(choices), planar=False)
