"""push: send what the remote lacks, then move each ref with a conditional write.

Order (see docs/remotes.md): format marker (created once, raised when the blocks sent need a
newer format) -> packs, each followed by its index -> one object bundle -> each ref,
compare-and-swap against the value read at the start.
A ref is only ever written after everything it reaches is on the remote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import field

from mergestore.errors import AmbiguousRefError, MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.remote.client import ObjectClient, RefMovedError
from mergestore.remote.layout import (
    FORMAT_KEY,
    Bundle,
    bundle_key,
    content_name,
    decode_ref,
    encode_bundle,
    format_for_specs,
    format_marker,
    parse_format_marker,
)
from mergestore.remote.packs import pack_target, split_packs, upload_pack
from mergestore.remote.session import RemoteSession
from mergestore.remote.walk import closure, is_ancestor
from mergestore.store import faults
from mergestore.store.refs import HEADS, REMOTES, TAGS, ambiguous_ref
from mergestore.store.repo import RefUpdate, Repository

Phase = Callable[[str, int | None], Callable[[int], None] | None]


@dataclass
class RefResult:
    """One ref's outcome in a push."""

    ref: str  # remote ref name, e.g. refs/heads/main
    old: bytes | None
    new: bytes
    status: str  # "ok", "up-to-date", "rejected"
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "old": self.old.hex() if self.old else None,
            "new": self.new.hex(),
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class PushResult:
    """What `push` uploaded and each ref's outcome."""

    remote: str
    refs: list[RefResult] = field(default_factory=list)
    packs: int = 0
    packs_resumed: int = 0
    blocks: int = 0
    block_bytes: int = 0  # stored block bytes uploaded
    pack_bytes: int = 0  # pack files uploaded (block bytes plus entry headers)
    metadata_bytes: int = 0  # indexes, bundle, refs
    objects: int = 0

    @property
    def ok(self) -> bool:
        return all(r.status != "rejected" for r in self.refs)

    def to_json(self) -> dict[str, object]:
        return {
            "remote": self.remote,
            "ok": self.ok,
            "refs": [r.to_json() for r in self.refs],
            "packs": self.packs,
            "packs_already_there": self.packs_resumed,
            "blocks": self.blocks,
            "block_bytes": self.block_bytes,
            "pack_bytes": self.pack_bytes,
            "metadata_bytes": self.metadata_bytes,
            "objects": self.objects,
        }


def local_targets(repo: Repository, refs: Sequence[str], tags: bool) -> dict[str, bytes]:
    """Remote ref name -> local commit for what the user asked to push."""
    out: dict[str, bytes] = {}
    names = list(refs)
    if not names and not tags:
        head = repo.head_target()
        if head is None or not head.startswith(HEADS):
            raise MergestoreError("push: HEAD is not on a branch; name the branch to push")
        names = [head[len(HEADS) :]]
    for name in names:
        full = name if name.startswith(("refs/heads/", "refs/tags/")) else None
        candidates = [full] if full else [HEADS + name, TAGS + name]
        found = {ref: cid for ref in candidates if (cid := repo.read_ref(ref)) is not None}
        if not found:
            raise MergestoreError(f"push: no local branch or tag {name!r}")
        if len(found) > 1:
            raise AmbiguousRefError(ambiguous_ref(name, list(found)))
        out.update(found)
    if tags:
        out.update(repo.list_refs(TAGS))
    return out


def mark_format(client: ObjectClient, block_size: int, need: int) -> None:
    """Create the remote's format marker, or raise it to `need` before blocks that need that
    format are sent: a conditional write, so a marker another push raised meanwhile stays."""
    for _ in range(4):
        cur = client.read_ref(FORMAT_KEY)
        if cur is None:
            if client.put_new(FORMAT_KEY, format_marker(block_size, need)):
                return
            continue  # created meanwhile: read it
        have = parse_format_marker(cur.data)
        if have["format"] >= need:
            return
        try:
            client.write_ref(FORMAT_KEY, format_marker(have["block_size"], need), cur.token)
            return
        except RefMovedError:
            continue
    raise MergestoreError(f"{FORMAT_KEY} kept changing while this push raised its format")


def push(
    session: RemoteSession,
    refs: Sequence[str] = (),
    *,
    force: bool = False,
    tags: bool = False,
    phase: Phase | None = None,
) -> PushResult:
    repo, client, state = session.repo, session.client, session.state
    name = session.name
    targets = local_targets(repo, refs, tags)
    res = PushResult(remote=name)
    marker = client.get(FORMAT_KEY)
    if marker is not None:
        parse_format_marker(marker)
    state.sync(client)
    # What the remote refs are now, and the token each conditional write must match.
    current = {ref: client.read_ref(ref) for ref in targets}
    accepted: list[tuple[str, bytes, bytes | None, str | None]] = []
    for ref, cid in sorted(targets.items()):
        rv = current[ref]
        old = decode_ref(ref, rv.data) if rv is not None else None
        short = _tracking(name, ref)
        if old == cid:
            res.refs.append(RefResult(ref, old, cid, "up-to-date"))
            continue
        if old is not None and not force:
            reason = _refusal(repo, short, ref, old, cid)
            if reason:
                res.refs.append(RefResult(ref, old, cid, "rejected", reason))
                continue
        accepted.append((ref, cid, old, rv.token if rv is not None else None))
    if not accepted:
        return res
    # Data first: the blocks and objects the new commits reach that the remote lacks.
    clos = closure(
        [cid for _r, cid, _o, _t in accepted],
        repo.get_object_bytes,
        lambda oid: oid in state.objects,
        "push",
    )
    # One index lookup for every block the pushed refs reach (and the delta references of
    # those sent): what to send, its size, and the format the remote needs.
    reached = repo.block_locations(clos.blocks)
    send = {b for b in clos.blocks if b not in state.blocks}
    delta_refs = {
        loc.ref
        for b in send
        if (loc := reached.get(b)) is not None and loc.ref is not None
        and loc.ref not in state.blocks
    }  # fmt: skip
    reached.update(repo.block_locations(delta_refs - reached.keys()))
    send |= delta_refs
    groups = split_packs(repo, send, pack_target())
    locs = {b: reached[b] for b in send if b in reached}
    # Every block reached decides the format, not just those sent now: a Ray worker may have
    # put some on the remote already (remote/worker_output.py).
    need = format_for_specs(repo.codec_spec(loc.codec) for loc in reached.values())
    mark_format(client, repo.config.block_size, need)
    total = sum(loc.length for loc in locs.values())
    advance = phase("pushing blocks", total) if phase else None
    for group in groups:
        up = upload_pack(client, repo, group, advance)
        state.record_index(up.name, up.index)
        faults.kill_point("remote-after-pack")
        res.packs += 1
        res.packs_resumed += 0 if up.sent else 1
        res.blocks += up.blocks
        if up.sent:
            res.block_bytes += sum(locs[b].length for b in group)
            res.pack_bytes += up.pack_bytes
        res.metadata_bytes += len(up.index)
    stats = {k: v for k, v in repo.stats_of_blocks(clos.blocks) if k not in state.stats}
    new_objects = {oid: data for oid, data in clos.objects.items() if oid not in state.objects}
    if new_objects or stats:
        data = encode_bundle(Bundle(new_objects, stats))
        h = content_name(data)
        client.put_new(bundle_key(h), data)
        state.record_bundle(h, data)
        res.metadata_bytes += len(data)
        res.objects = len(new_objects)
    # Then the refs, each only if it still holds what we read at the start.
    faults.kill_point("remote-before-refs")
    moved: list[RefUpdate] = []
    for ref, cid, old, token in accepted:
        payload = f"{cid.hex()}\n".encode()
        try:
            client.write_ref(ref, payload, token)
        except RefMovedError:
            res.refs.append(
                RefResult(
                    ref,
                    old,
                    cid,
                    "rejected",
                    f"rejected: {_tracking(name, ref)} moved; fetch first",
                )
            )
            continue
        res.metadata_bytes += len(payload)
        res.refs.append(RefResult(ref, old, cid, "ok"))
        if ref.startswith(HEADS):
            moved.append(RefUpdate(REMOTES + name + "/" + ref[len(HEADS) :], cid, f"push: {ref}"))
    if moved:
        repo.update_refs(moved)
    return res


def _tracking(remote: str, ref: str) -> str:
    for prefix in (HEADS, TAGS):
        if ref.startswith(prefix):
            return f"{remote}/{ref[len(prefix) :]}"
    return f"{remote}/{ref}"


def _refusal(repo: Repository, short: str, ref: str, old: bytes, new: bytes) -> str | None:
    """Why moving remote `ref` from `old` to `new` needs --force (None: it does not)."""
    if ref.startswith(TAGS):
        return f"rejected: tag {ref[len(TAGS) :]} already exists on the remote (use --force)"
    if repo.get_object_bytes(old) is None:
        return f"rejected: {short} moved; fetch first"
    if not is_ancestor(repo.get_commit, old, new):
        return (
            f"rejected: {short} is not an ancestor of what you push "
            "(non-fast-forward; fetch and merge, or use --force)"
        )
    return None
