"""`show` of a merge commit prints its recipe: method, parameters after defaults, inputs."""

from __future__ import annotations

from pathlib import Path


def test_show_prints_recipe_with_defaults_and_weights(tiny_family, cli, tmp_path: Path) -> None:
    st = ["--store", tmp_path / "st"]
    assert cli("init", tmp_path / "st").code == 0
    assert cli(*st, "commit", tiny_family.base, "-m", "base", "-b", "main").code == 0
    for name in ("dense_small", "frozen"):
        r = cli(*st, "commit", tiny_family.experts[name], "-b", name, "--base", "main")
        assert r.code == 0, r.err
    r = cli(
        *st, "merge", "--method", "ties", "--base", "main", "dense_small", "frozen",
        "-w", "0.7", "-w", "0.3", "--param", "density=0.5", "-b", "m", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = cli(*st, "show", "m").out
    lines = out.splitlines()
    recipe = lines[lines.index(next(ln for ln in lines if ln.startswith("recipe"))) :]
    assert recipe[0].startswith("recipe  ties")
    # defaults the user did not give are shown, resolved
    assert "density=0.5" in recipe[1] and "normalize=true" in recipe[1] and "lambda=1" in recipe[1]
    models = [ln.split() for ln in recipe if ln.startswith(("model", "base"))]
    assert [m[1] for m in models] == ["dense_small", "frozen", "main"]
    assert models[0][-1] == "weight=0.7" and models[1][-1] == "weight=0.3"
    assert models[2][0] == "base"
    r = cli(*st, "log", "--graph", "--all")
    stars = [ln for ln in r.out.splitlines() if "*" in ln.partition("  ")[0]]
    assert len(stars) == 4 and "[merge]" in stars[0]
