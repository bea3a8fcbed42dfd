"""Ref syntax: ids and prefixes, branches, tags, HEAD, ~N and ^N; invalid names."""

from __future__ import annotations

import pytest

from mergestore.api import Store
from mergestore.errors import RefError
from mergestore.store.refs import check_ref_name, parse_ref_expr


def _chain(store: Store, family, n: int) -> list[bytes]:
    ids = []
    paths = [family.base, *family.experts.values()]
    for i in range(n):
        ids.append(store.commit(paths[i % len(paths)], message=f"c{i}", branch="main").commit)
    return ids


def test_resolve_forms(tiny_family, store: Store) -> None:
    c = _chain(store, tiny_family, 3)
    assert store.resolve("main") == c[2]
    assert store.resolve("HEAD") == c[2]
    assert store.resolve("refs/heads/main") == c[2]
    assert store.resolve(c[1].hex()) == c[1]
    assert store.resolve(c[1].hex()[:8]) == c[1]
    assert store.resolve("main~1") == c[1]
    assert store.resolve("main~2") == c[0]
    assert store.resolve("main^") == c[1]
    assert store.resolve("main^1^1") == c[0]
    assert store.resolve("HEAD~1~1") == c[0]
    store.create_tag("v1", "main~1")
    assert store.resolve("v1") == c[1]
    assert store.resolve("v1~1") == c[0]


def test_second_parent_of_merge_like_commit(tiny_family, store: Store) -> None:
    base = store.commit(tiny_family.base, message="b", branch="main").commit
    other = store.commit(tiny_family.experts["frozen"], message="f", branch="f", base="main").commit
    assert store.resolve("f^1") == base
    with pytest.raises(RefError):
        store.resolve("f^2")
    assert other == store.resolve("f")


@pytest.mark.parametrize("bad", ["nope", "main~5", "abc", "main~x", "", "~1", "zzzzzzz"])
def test_unknown_refs_raise(tiny_family, store: Store, bad: str) -> None:
    _chain(store, tiny_family, 2)
    with pytest.raises(RefError):
        store.resolve(bad)


def test_prefix_shorter_than_six_is_not_an_id(tiny_family, store: Store) -> None:
    c = _chain(store, tiny_family, 1)
    with pytest.raises(RefError):
        store.resolve(c[0].hex()[:5])


@pytest.mark.parametrize(
    "name",
    [
        "a..b",
        "a b",
        "a~b",
        "a^b",
        "a:b",
        "-x",
        ".x",
        "x.",
        "x/",
        "/x",
        "a//b",
        "x.lock",
        "HEAD",
        "a\x01b",
        "a*b",
        "a?b",
        "a[b",
        "a\\b",
        "a@{b",
        "a/.b",
    ],
)
def test_bad_ref_names(name: str) -> None:
    with pytest.raises(RefError):
        check_ref_name(name)


@pytest.mark.parametrize("name", ["main", "feature/x", "v1.0", "exp-3_b"])
def test_good_ref_names(name: str) -> None:
    assert check_ref_name(name) == name


def test_parse_steps() -> None:
    e = parse_ref_expr("main~2^2~")
    assert e.start == "main" and e.steps == (("~", 2), ("^", 2), ("~", 1))


def test_branch_create_delete_and_tag(tiny_family, store: Store) -> None:
    c = _chain(store, tiny_family, 2)
    store.create_branch("exp", "main~1")
    assert store.branches()["exp"] == c[0]
    with pytest.raises(RefError):
        store.create_branch("exp", "main")
    assert store.delete_branch("exp") == c[0]
    assert "exp" not in store.branches()
    with pytest.raises(RefError):
        store.delete_branch("exp")
    store.create_tag("t1")
    assert store.tags() == {"t1": c[1]}
    # the reflog remembers the deleted branch, so it can be recovered
    log = store.reflog("exp")
    assert [e.new for _, e in log] == [c[0], None]
