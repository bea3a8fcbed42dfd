"""chat_template: (mergekit's) the chat template written with the merge's tokenizer files.

``auto`` takes the template most inputs carry (tokenizer_config.json's ``chat_template``, or a
chat_template.jinja file; ties go to the first in config order), a built-in name (chatml,
llama3, alpaca, mistral) one of the templates below, anything with ``{`` a Jinja string as
given. The template goes into chat_template.jinja and, when the output's tokenizer_config.json
has a ``chat_template`` key, there too, so transformers reads the same one either way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergestore.errors import MergeError
from mergestore.store.objects import BlobFile

if TYPE_CHECKING:
    from mergestore.store.repo import Repository

JINJA_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"

BUILTIN = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
        "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
}


def _blob(repo: Repository, cid: bytes, path: str) -> bytes | None:
    for e in repo.get_tree(repo.get_commit(cid).tree).entries:
        if e.path == path and e.kind == "blob":
            obj = repo.get_file(e.object)
            assert isinstance(obj, BlobFile)
            return b"".join(repo.read_block(b) for b in obj.blocks)
    return None


def template_of(repo: Repository, cid: bytes) -> str | None:
    """A model's own chat template, if it has one."""
    raw = _blob(repo, cid, JINJA_FILE)
    if raw is not None:
        return raw.decode("utf-8", "replace").strip() or None
    raw = _blob(repo, cid, TOKENIZER_CONFIG)
    try:
        cfg = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    t = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(t, list):  # [{name, template}, ...]
        t = next(
            (d.get("template") for d in t if isinstance(d, dict) and d.get("name") == "default"),
            None,
        )
    return t.strip() if isinstance(t, str) and t.strip() else None


def resolve_template(repo: Repository, spec: str, inputs: Sequence[bytes]) -> str | None:
    """The template text for the config's chat_template (None: auto found none)."""
    if spec == "auto":
        found = [t for t in (template_of(repo, c) for c in inputs) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    if spec in BUILTIN:
        return BUILTIN[spec]
    if "{" in spec:
        return spec
    raise MergeError(
        f"chat_template {spec!r}: not auto, a built-in name ({', '.join(BUILTIN)}) "
        "or a Jinja template"
    )


def chat_template_files(
    repo: Repository, spec: str, inputs: Sequence[bytes], tokenizer_commit: bytes
) -> dict[str, bytes]:
    """The files to put in the merge's tree for chat_template `spec`."""
    text = resolve_template(repo, spec, inputs)
    if text is None:
        return {}
    out = {JINJA_FILE: (text + "\n").encode()}
    raw = _blob(repo, tokenizer_commit, TOKENIZER_CONFIG)
    if raw is not None:
        try:
            cfg = json.loads(raw)
        except ValueError:
            cfg = None
        if isinstance(cfg, dict) and "chat_template" in cfg:
            cfg["chat_template"] = text
            out[TOKENIZER_CONFIG] = (json.dumps(cfg, indent=2, ensure_ascii=False) + "\n").encode()
    return out
