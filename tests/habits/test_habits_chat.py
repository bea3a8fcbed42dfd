"""--chat-template and --tokenizer-source from the CLI."""

from __future__ import annotations

import json

import pytest
from tokmodels import tokenizer

from mergestore.merge.chat_template import BUILTIN

TOKENIZER_JSON = tokenizer(("w_extra",), (), ()).to_str()

TPL_A = "{% for m in messages %}A{{ m['content'] }}{% endfor %}"
TPL_B = "{% for m in messages %}B{{ m['content'] }}{% endfor %}"


def _tok(tpl: str | None) -> dict[str, str]:
    cfg = {"model_max_length": 8}
    if tpl is not None:
        cfg["chat_template"] = tpl
    # a real tokenizer.json of the fixture's 32 rows (a tokenizer merge reads it)
    return {"tokenizer_config.json": json.dumps(cfg), "tokenizer.json": TOKENIZER_JSON}


@pytest.fixture
def s(make_store):
    """The habits family (not based on main), each model with its chat template."""
    tok = {"main": _tok(TPL_A), "math": _tok(TPL_B), "code": _tok(TPL_B)}
    return make_store(**{k: {"files": v} for k, v in tok.items()}, based=False)


def _files(s, ref, tmp_path):
    out = tmp_path / f"co-{ref}"
    assert s("checkout", ref, out).code == 0
    return out


def test_chat_template_auto_builtin_and_jinja(s, tmp_path) -> None:
    args = "merge --method linear --base main main math code --param weight=1"
    assert s.run(args, "--chat-template", "auto", "-b", "auto").code == 0
    out = _files(s, "auto", tmp_path)
    assert (out / "chat_template.jinja").read_text() == TPL_B + "\n"  # 2 of 3 inputs
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TPL_B
    assert "chat_template: auto" in (out / "mergekit_config.yml").read_text()
    assert s.run(args, "--chat-template", "chatml", "-b", "chatml").code == 0
    out = _files(s, "chatml", tmp_path)
    assert (out / "chat_template.jinja").read_text() == BUILTIN["chatml"] + "\n"
    jinja = "{{ messages[0]['content'] }}"
    assert s.run(args, "--chat-template", jinja, "-b", "jinja").code == 0
    assert (_files(s, "jinja", tmp_path) / "chat_template.jinja").read_text() == jinja + "\n"
    r = s.run(args, "--chat-template", "nonsense", "-b", "bad")
    assert r.code != 0 and r.err.count("\n") == 1 and "chat_template 'nonsense'" in r.err


def test_tokenizer_source_option(s, tmp_path) -> None:
    cmd = "merge --method linear --base main main math --param weight=1 --tokenizer-source math"
    r = s.run(cmd, "-b", "t")
    assert r.code == 0, r.err
    out = _files(s, "t", tmp_path)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TPL_B
    math_id = s("show", "math", "--json").json()["id"]
    yml = (out / "mergekit_config.yml").read_text()  # the model by commit id (issue 15 item 16)
    assert f"tokenizer_source: {math_id}  # math\n" in yml
