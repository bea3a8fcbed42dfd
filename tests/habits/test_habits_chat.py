"""--chat-template and --tokenizer-source from the CLI."""

from __future__ import annotations

import json

from mergestore.merge.chat_template import BUILTIN

TPL_A = "{% for m in messages %}A{{ m['content'] }}{% endfor %}"
TPL_B = "{% for m in messages %}B{{ m['content'] }}{% endfor %}"


def _tok(tpl: str | None) -> dict[str, str]:
    cfg = {"model_max_length": 8}
    if tpl is not None:
        cfg["chat_template"] = tpl
    return {"tokenizer_config.json": json.dumps(cfg), "tokenizer.json": "{}"}


def _store(cli, tmp_path, models):
    s = tmp_path / "store"
    assert cli("--store", s, "init").code == 0
    for i, (name, tpl) in enumerate((("main", TPL_A), ("math", TPL_B), ("code", TPL_B))):
        src = models(name, seed=i, files=_tok(tpl))
        assert cli("--store", s, "commit", src, "-b", name).code == 0
    return s


def _files(cli, s, ref, tmp_path):
    out = tmp_path / f"co-{ref}"
    assert cli("--store", s, "checkout", ref, out).code == 0
    return out


def test_chat_template_auto_builtin_and_jinja(cli, tmp_path, models) -> None:
    s = _store(cli, tmp_path, models)
    args = [
        "--store",
        s,
        "merge",
        "--method",
        "linear",
        "--base",
        "main",
        "main",
        "math",
        "code",
        "--param",
        "weight=1",
    ]
    assert cli(*args, "--chat-template", "auto", "-b", "auto").code == 0
    out = _files(cli, s, "auto", tmp_path)
    assert (out / "chat_template.jinja").read_text() == TPL_B + "\n"  # 2 of 3 inputs
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TPL_B
    assert "chat_template: auto" in (out / "mergekit_config.yml").read_text()
    assert cli(*args, "--chat-template", "chatml", "-b", "chatml").code == 0
    out = _files(cli, s, "chatml", tmp_path)
    assert (out / "chat_template.jinja").read_text() == BUILTIN["chatml"] + "\n"
    jinja = "{{ messages[0]['content'] }}"
    assert cli(*args, "--chat-template", jinja, "-b", "jinja").code == 0
    assert (_files(cli, s, "jinja", tmp_path) / "chat_template.jinja").read_text() == jinja + "\n"
    r = cli(*args, "--chat-template", "nonsense", "-b", "bad")
    assert r.code != 0 and r.err.count("\n") == 1 and "chat_template 'nonsense'" in r.err


def test_tokenizer_source_option(cli, tmp_path, models) -> None:
    s = _store(cli, tmp_path, models)
    r = cli(
        "--store",
        s,
        "merge",
        "--method",
        "linear",
        "--base",
        "main",
        "main",
        "math",
        "--param",
        "weight=1",
        "--tokenizer-source",
        "math",
        "-b",
        "t",
    )
    assert r.code == 0, r.err
    out = _files(cli, s, "t", tmp_path)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TPL_B
    math_id = cli("--store", s, "show", "math", "--json").json()["id"]
    yml = (out / "mergekit_config.yml").read_text()  # the model by commit id (issue 15 item 16)
    assert f"tokenizer_source: {math_id}  # math\n" in yml
