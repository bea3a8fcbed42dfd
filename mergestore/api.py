"""The public Python API: one method per command (the CLI is a thin layer over this)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergestore import refops
from mergestore.checkout import CheckoutResult, checkout_commit, tensor_records
from mergestore.errors import (
    AmbiguousRefError,
    MergeError,
    MergestoreError,
    RefError,
    StoreNotFoundError,
)
from mergestore.fast_dataclass import dataclass
from mergestore.records import read_record
from mergestore.store import merges
from mergestore.store.objects import BlobFile, Commit, TensorFile, TensorRecord, Tree
from mergestore.store.packs import ReadMeter
from mergestore.store.refs import HEADS, REMOTES, TAGS, ambiguous_ref, check_new_ref_name
from mergestore.store.repo import CONFIG_FILE, RefUpdate, Repository, StoreConfig

if TYPE_CHECKING:  # torch costs ~2 s to import: only commands that compute pay for it
    import torch

    from mergestore.ingest import CommitResult
    from mergestore.merge.planned import TensorShape

STORE_DIRNAME = ".mergestore"
Progress = Callable[[int], None]


def _materialize(repo: Repository, cid: bytes, tensors: list[str] | None) -> None:
    from mergestore.merge.materialize import materialize

    materialize(repo, cid, tensors=tensors)


def _lazy_tensor_records(repo: Repository, cid: bytes, globs: list[str]) -> list[TensorRecord]:
    from mergestore.merge.materialize import lazy_tensor_records

    return lazy_tensor_records(repo, cid, globs)


# Readers in every layer compute a lazy or evicted merge commit's blocks through these.
merges.set_materializer(_materialize)
merges.set_tensor_materializer(_lazy_tensor_records)


def _draws_random(method: str | None) -> bool:
    """Whether a merge method draws random numbers (a seed means something only then)."""
    from mergestore.ops import get_method

    try:
        return get_method(method or "").random
    except MergeError:  # an unknown method in an old plan: show what it recorded
        return True


def find_store(start: str | os.PathLike[str] | None = None) -> Path:
    """--store, then $MERGESTORE_DIR, then the nearest .mergestore upward from the cwd."""
    if start is not None:
        return Path(start)
    env = os.environ.get("MERGESTORE_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / STORE_DIRNAME / CONFIG_FILE).is_file():
            return d / STORE_DIRNAME
    raise StoreNotFoundError(
        "no store found (run `mergestore init`, or pass --store / set MERGESTORE_DIR)"
    )


@dataclass(frozen=True)
class LogEntry:
    """A commit and its id (Store.log)."""

    id: bytes
    commit: Commit


@dataclass(frozen=True)
class FileInfo:
    """One file of a commit's tree (Store.ls)."""

    path: str
    kind: str
    size: int
    tensors: int


class Store:
    """A mergestore store. Create with Store.init(path), open with Store.open(path)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    # ----- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        block_size: int | None = None,
        zstd_level: int | None = None,
        delta_codecs: bool = True,
    ) -> Store:
        p = Path(path) if path is not None else Path.cwd() / STORE_DIRNAME
        cfg = StoreConfig(delta_codecs=delta_codecs)
        if block_size is not None:
            cfg = StoreConfig(
                block_size=block_size, zstd_level=cfg.zstd_level, delta_codecs=delta_codecs
            )
        if zstd_level is not None:
            cfg = StoreConfig(
                block_size=cfg.block_size, zstd_level=zstd_level, delta_codecs=delta_codecs
            )
        return cls(Repository.init(p, cfg))

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """Open a store; a remote URL (s3://..., file://...) opens a read-only cached view."""
        if isinstance(path, str) and "://" in path:
            from mergestore.remote.api import open_view

            return cls(open_view(path))
        repo = Repository.open(find_store(path))
        if (repo.path / "remotes.json").is_file():
            from mergestore.remote.lazy import attach

            attach(repo)  # a lazy clone reads the blocks it lacks from its remote
        return cls(repo)

    # ----- remotes (mergestore/remote/) ------------------------------------------------------

    @classmethod
    def clone(
        cls,
        url: str,
        path: str | os.PathLike[str],
        *,
        lazy: bool = False,
        progress: Any = None,
    ) -> Store:
        """A new store at PATH from the remote at URL (`lazy`: fetch no blocks until read)."""
        from mergestore.remote.api import do_clone

        return cls(do_clone(url, path, lazy=lazy, phase=progress)[0])

    def push(
        self,
        remote: str,
        *refs: str,
        force: bool = False,
        tags: bool = False,
        progress: Any = None,
    ) -> Any:
        """Send branches/tags (default: the current branch) to REMOTE; a PushResult."""
        from mergestore.remote.api import do_push

        return do_push(self.repo, remote, refs, force=force, tags=tags, phase=progress)

    def fetch(self, remote: str, *, progress: Any = None) -> Any:
        """Bring REMOTE's branches in as remote-tracking refs REMOTE/NAME; a FetchResult."""
        from mergestore.remote.api import do_fetch

        return do_fetch(self.repo, remote, phase=progress)

    def pull(self, remote: str, branch: str, *, progress: Any = None) -> Any:
        """fetch, then fast-forward BRANCH to REMOTE/BRANCH (refuses anything else)."""
        from mergestore.remote.api import do_pull

        return do_pull(self.repo, remote, branch, phase=progress)

    def remotes(self) -> dict[str, str]:
        """Remote names and their URLs (credentials are never stored in them)."""
        from mergestore.remote.config import load_remotes

        return {n: r.url.text for n, r in load_remotes(self.path).items()}

    def add_remote(self, name: str, url: str, *, lazy: bool = False) -> str:
        from mergestore.remote.config import add_remote
        from mergestore.remote.lazy import attach

        spec = add_remote(self.path, name, url, lazy=lazy)
        attach(self.repo)
        return spec.url.text

    def remove_remote(self, name: str) -> str:
        """Forget remote NAME, its remote-tracking refs and its cached indexes."""
        import shutil

        from mergestore.remote.config import check_remote_name, remove_remote

        check_remote_name(name)
        left = self.repo.promised_count(name)
        if left:
            raise MergestoreError(
                f"remote {name} still holds {left} blocks this lazy clone has not fetched; "
                "fetch them first (`mergestore fsck --full` reads every block)"
            )
        prefix = f"refs/remotes/{name}/"
        gone = [RefUpdate(n, None, f"remote remove {name}") for n in self.repo.list_refs(prefix)]
        if gone:
            self.repo.update_refs(gone)
        spec = remove_remote(self.path, name)
        shutil.rmtree(self.path / "remotes" / name, ignore_errors=True)
        return spec.url.text

    @property
    def bytes_fetched(self) -> int:
        """Stored bytes this process read from remotes on demand (lazy clones)."""
        return self.repo.fetch_meter.bytes_read

    def report_lock_waits(self, fn: Callable[[list[int]], None] | None) -> None:
        """Call `fn(pids holding the lock)` once each time this store waits for its lock (a
        writer while gc runs, gc or repack while writers run); store/locks.py."""
        self.repo.on_lock_wait = fn

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.repo.path

    # ----- commits ---------------------------------------------------------------------------

    def commit(
        self,
        path: str | os.PathLike[str],
        *,
        message: str = "",
        branch: str | None = None,
        base: str | None = None,
        meta: dict[str, str] | None = None,
        author: str | None = None,
        stats: bool = True,
        progress: Progress | None = None,
        verify_inputs: bool = False,
    ) -> CommitResult:
        """Store a checkpoint as a new commit: an HF folder, one .safetensors file, a PEFT
        adapter folder, pytorch_model*.bin weights (converted) or a hub id ``org/name[@rev]``.

        Files unchanged since they were last stored (same size, mtime, ctime, inode: the stat
        cache) are not read again; `verify_inputs` reads and hashes every file."""
        from mergestore.ingest import commit_checkpoint
        from mergestore.sources import prepared_source

        base_id = self.resolve(base) if base else None
        with prepared_source(path) as src:
            return commit_checkpoint(
                self.repo,
                src.path,
                message=message,
                branch=branch,
                base=base_id,
                meta={**src.meta, **(meta or {})},
                author=author,
                want_stats=stats,
                progress=progress,
                verify=verify_inputs,
            )

    def checkout(
        self,
        ref: str,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        tensors: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> CheckoutResult:
        return checkout_commit(
            self.repo, self.resolve(ref), out, force=force, tensors=tensors, progress=progress
        )

    def _known_tree(self, ref: str | bytes) -> Tree:
        """A commit's tree without computing anything (a lazy merge not computed: empty)."""
        from mergestore.store.merges import EMPTY_TREE, known_tree

        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return known_tree(self.repo, cid) or EMPTY_TREE

    def resolve(self, ref: str) -> bytes:
        return self.repo.resolve(ref)

    def get_commit(self, ref: str | bytes) -> Commit:
        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return self.repo.get_commit(cid)

    def tree(self, ref: str | bytes, tensors: Sequence[str] | None = None) -> Tree:
        """A commit's files; a lazy or evicted merge computes the blocks of `tensors` (all
        when None) first."""
        from mergestore.store.merges import readable_tree

        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return readable_tree(self.repo, cid, tensors)

    def log(self, ref: str | None = None, *, all_refs: bool = False) -> list[LogEntry]:
        """Commits reachable from `ref` (default HEAD) or from every ref, newest first."""
        if all_refs:
            starts = list(self.repo.list_refs("refs/").values())
        else:
            starts = [self.resolve(ref or "HEAD")]
        seen: dict[bytes, Commit] = {}
        stack = list(starts)
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            c = self.repo.get_commit(cid)
            seen[cid] = c
            stack.extend(c.parents)
        order = sorted(seen.items(), key=lambda kv: (-kv[1].time, kv[0]))
        return [LogEntry(cid, c) for cid, c in order]

    def files(self, ref: str | bytes) -> list[FileInfo]:
        out = []
        for e in self._known_tree(ref).entries:
            n = 0
            if e.kind == "tensorfile":
                tf = self.repo.get_file(e.object)
                assert isinstance(tf, TensorFile)
                n = len(tf.tensors)
            out.append(FileInfo(e.path, e.kind, e.size, n))
        return out

    def tensors(self, ref: str | bytes) -> list[TensorRecord]:
        return list(tensor_records(self.repo, self.tree(ref, ())))

    def tensor_shapes(self, ref: str | bytes) -> list[TensorShape]:
        """Each tensor's name, dtype, shape, bytes and block count, computing nothing: a lazy
        merge's from its plan (merge/planned.py)."""
        from mergestore.merge.planned import tensor_shapes

        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return tensor_shapes(self.repo, cid)

    def tensor_record(self, ref: str | bytes, name: str) -> TensorRecord:
        """One tensor's record; of a lazy or evicted merge, only this tensor is computed."""
        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        for t in merges.readable_tensors(self.repo, cid, [name]):
            if t.name == name:
                return t
        raise MergestoreError(f"no tensor {name!r} in {ref if isinstance(ref, str) else ref.hex()}")

    def read_tensor(
        self, ref: str | bytes, name: str, *, meter: ReadMeter | None = None
    ) -> torch.Tensor:
        """One tensor as a torch tensor, reading only its blocks."""
        rec = self.tensor_record(ref, name)
        return read_record(self.repo, rec, meter)

    def commit_sizes(self, ref: str | bytes) -> dict[str, Any]:
        """Logical bytes; the commit's blocks (its tensors' blocks by position, as commit, ls and
        diff count them); and the raw and stored bytes of the distinct blocks it uses, headers
        and other files included (each block once: `deduplicated_bytes`)."""
        tree = self._known_tree(ref)
        blocks: set[bytes] = set()
        tensor_blocks = 0
        for e in tree.entries:
            obj = self.repo.get_file(e.object)
            if isinstance(obj, TensorFile):
                header = self.repo.get_file(obj.header)
                assert isinstance(header, BlobFile)
                blocks.update(header.blocks)
                for t in obj.tensors:
                    blocks.update(t.blocks)
                    tensor_blocks += len(t.blocks)
            else:
                blocks.update(obj.blocks)
        raw = stored = 0
        for b in blocks:
            loc = self.repo.block_location(b)
            if loc is not None:
                raw += loc.raw_len
                stored += loc.length
        logical = sum(e.size for e in tree.entries)
        return {
            "logical_bytes": logical,
            "deduplicated_bytes": raw,
            "stored_bytes": stored,
            "stored_raw_ratio": stored / raw if raw else None,
            "blocks": tensor_blocks,
        }

    # ----- merges ----------------------------------------------------------------------------

    def prepare_merge(
        self,
        config: Any,
        *,
        budget: str | int | None = None,
        max_error: float | None = None,
        commit_paths: bool = True,
        verify_inputs: bool = False,
        saliency: Any = None,
        saliency_kind: str | None = None,
        branch: str | None = None,
        force_branch: bool = False,
        session: Any = None,
    ) -> Any:
        """Validate and plan a merge (MergeConfig, YAML path or text); reads no expert data.
        Models given as folders are committed first (a stat per unchanged file, or every file
        read again with `verify_inputs`), once everything their headers allow is checked,
        including `branch`/`force_branch` as execute_merge will get them: a refused merge
        stores nothing. With `session` (merge_session()), the folders go into the merge's one
        write session, published with its commit. `saliency`: a safetensors path, a commit
        ref, or a dict of tensors (then `saliency_kind` "gradient" or "fisher") that ranks the
        blocks a budget keeps (docs/budget.md)."""
        from mergestore.merge.config import MergeConfig, load_config
        from mergestore.merge.run import prepare

        cfg = config if isinstance(config, MergeConfig) else load_config(config)
        return prepare(
            self.repo,
            cfg,
            budget=budget,
            max_error=max_error,
            commit_paths=commit_paths,
            verify_inputs=verify_inputs,
            saliency=saliency,
            saliency_kind=saliency_kind,
            branch=branch,
            force_branch=force_branch,
            session=session,
        )

    def merge_session(self) -> Any:
        """The one write session of a merge, a context manager around prepare_merge(...,
        session=) and execute_merge: a merge that fails stores nothing (not its folder inputs,
        not what it computed); one interrupted keeps what it computed for a re-run to resume
        (mergestore/merge/session.py)."""
        from mergestore.merge.session import MergeSession

        return MergeSession(self.repo)

    def abort_merges(self) -> dict[str, int]:
        """Drop what interrupted or killed merges kept for a re-run (`merge --abort`): their
        saved sessions (packs cut back where nothing was written after them) and published
        journals. Returns counts."""
        from mergestore.merge.session import abort_merges

        return abort_merges(self.repo)

    def execute_merge(
        self,
        prepared: Any,
        *,
        branch: str | None = None,
        message: str = "",
        progress: Progress | None = None,
        out: str | os.PathLike[str] | None = None,
        lazy: bool = False,
        force: bool = False,
        executor: Any = None,
        ray_address: str | None = None,
        force_branch: bool = False,
        **output: Any,
    ) -> Any:
        """Publish a prepared merge: a plan already merged returns its commit (the memo)
        unless `force`; `lazy` commits the plan without computing it. With `out`, also write
        the merged HF folder there in the same pass (byte-identical to a later checkout of the
        commit; MergeResult.out describes it). `output`: write_card, shard_bytes,
        copy_tokenizer, overwrite (see merge.run.execute). `executor`: "local" (default) or "ray".

        Without `branch` the commit goes to a new branch `merge/<method>-N`; a branch that
        points at the base or an input is refused unless `force_branch`."""
        from mergestore.merge.executor import get_executor
        from mergestore.merge.run import execute

        return execute(
            self.repo,
            prepared,
            branch=branch,
            message=message,
            progress=progress,
            out=out,
            lazy=lazy,
            force=force,
            executor=get_executor(executor, **({"address": ray_address} if ray_address else {})),
            force_branch=force_branch,
            **output,
        )

    def merge(
        self,
        *,
        method: str | None = None,
        base: str | None = None,
        models: Sequence[str] = (),
        weights: Sequence[float] | None = None,
        params: dict[str, Any] | None = None,
        config: Any = None,
        dtype: str | None = None,
        out_dtype: str | None = None,
        seed: int | None = None,
        budget: str | int | None = None,
        max_error: float | None = None,
        branch: str | None = None,
        message: str = "",
        out: str | os.PathLike[str] | None = None,
        verify_inputs: bool = False,
        lazy: bool = False,
        force: bool = False,
        executor: Any = None,
        ray_address: str | None = None,
        force_branch: bool = False,
        saliency: Any = None,
        saliency_kind: str | None = None,
        **output: Any,
    ) -> Any:
        """Run a merge and store it as a commit; returns a MergeResult (commit, plan, run).
        `saliency` (+ `saliency_kind` for a dict of tensors): see prepare_merge.
        `output`: write_card (default True), shard_bytes, copy_tokenizer, overwrite (replace
        a non-empty `out` folder by checkout --force's rule).
        Without `branch` the commit goes to a new branch `merge/<method>-N`; a branch that
        points at the base or an input is moved only with `force_branch`.
        With `out`, the merged HF folder is written there in the same pass (MergeResult.out).
        `executor`: "local" (default) or "ray" (`ray_address`: "auto", "ray://host:10001";
        none joins $RAY_ADDRESS or a cluster started here, else starts a local instance).

        A plan already merged returns its commit at once (`run["memo"]`) unless `force`,
        which recomputes and checks the same blocks come out. `lazy` commits the plan
        without computing it: reads compute it, or `materialize`."""
        from mergestore.merge.config import config_from_cli

        if config is None:
            if method is None:
                raise MergestoreError("merge: give a method (or a config)")
            config = config_from_cli(
                method,
                base,
                list(models),
                list(weights or []),
                {k: v for k, v in (params or {}).items()},
                dtype,
                out_dtype,
                seed,
            )
        else:
            from mergestore.merge.config import MergeConfig, load_config, with_overrides

            if method or base or models or weights:
                raise MergestoreError(
                    "merge: give either a config or method/base/models/weights, not both"
                )
            cfg = config if isinstance(config, MergeConfig) else load_config(config)
            config = with_overrides(cfg, params, dtype, out_dtype, seed)
        if output.get("overwrite") and out is None:
            raise MergestoreError("overwrite replaces the out folder: give out too")
        if out is not None:  # before anything is read or stored
            from mergestore.merge.outfolder import check_target

            check_target(Path(out), bool(output.get("overwrite")))
        from mergestore.merge.ray_warm import warm_for

        warm_for(executor, ray_address)  # Ray joins and starts workers while this plans
        # gc waits throughout; one write session: a failure stores nothing
        with self.gc_paused(), self.merge_session() as session:
            prep = self.prepare_merge(
                config,
                budget=budget,
                max_error=max_error,
                verify_inputs=verify_inputs,
                saliency=saliency,
                saliency_kind=saliency_kind,
                branch=branch,
                force_branch=force_branch,
                session=session,
            )
            return self.execute_merge(
                prep,
                branch=branch,
                message=message,
                out=out,
                lazy=lazy,
                force=force,
                executor=executor,
                ray_address=ray_address,
                force_branch=force_branch,
                **output,
            )

    def merge_many(
        self,
        configs: Sequence[Any],
        *,
        executor: str | None = None,
        ray_address: str | None = None,
        branches: Sequence[str | None] | None = None,
        budget: str | int | None = None,
        max_error: float | None = None,
        message: str = "",
        force: bool = False,
        on_merge: Callable[[Any], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Run many merges (MergeConfigs, YAML paths or text), each its own commit and branch
        (given, or the YAML file's stem): concurrently on Ray, one by one locally. Returns a
        ManyResult per config, in input order; a failed config has `.error` and the others
        still run. A plan already merged returns its commit (the memo) unless `force`."""
        from mergestore.merge.many import merge_many

        return merge_many(
            self.repo,
            configs,
            executor=executor,
            ray_address=ray_address,
            branches=branches,
            budget=budget,
            max_error=max_error,
            message=message,
            force=force,
            on_merge=on_merge,
            on_bytes=on_bytes,
        )

    def merge_recipe(
        self,
        recipe: str | os.PathLike[str],
        *,
        prefix: str,
        budget: str | int | None = None,
        max_error: float | None = None,
        lazy: bool = False,
        force: bool = False,
        message: str = "",
        saliency: Any = None,
        saliency_kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run a multi-step recipe (mergekit-multi's multi-document YAML: a path or text):
        step NAME becomes a commit on branch PREFIX/NAME; unchanged steps are memo hits.
        `saliency` ranks the blocks every step's budget keeps (see prepare_merge).
        Returns one row per step, in the order they ran."""
        from mergestore.merge.recipe import run_recipe

        text = _read_text(recipe)

        def run_step(step: Any, cfg: Any, branch: str) -> dict[str, Any]:
            prep = self.prepare_merge(
                cfg,
                budget=budget,
                max_error=max_error,
                saliency=saliency,
                saliency_kind=saliency_kind,
            )
            msg = message or f"recipe step {step.name}: {cfg.merge_method}"
            res = self.execute_merge(prep, branch=branch, message=msg, lazy=lazy, force=force)
            return {
                "step": step.name,
                "branch": branch,
                "commit": res.commit.hex(),
                "plan": res.plan.hex(),
                "depends_on": list(step.deps),
                "memo": False,
                **res.run,
            }

        with self.gc_paused():
            return run_recipe(self.repo, text, prefix, run_step)

    def materialize(
        self,
        ref: str | bytes,
        *,
        tensors: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Compute and store a lazy or evicted merge commit's blocks (all, or `tensors`)."""
        from mergestore.merge.materialize import materialize

        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        names = list(tensors) if tensors is not None else None
        return materialize(self.repo, cid, tensors=names, progress=progress)

    def evict(self, *refs: str | bytes) -> list[dict[str, Any]]:
        """Drop the blocks only these merge commits use; commit, plan and block ids stay.
        `gc` then frees the pack space; any read computes the blocks again."""
        from mergestore.merge.materialize import evict

        ids = [r if isinstance(r, bytes) else self.resolve(r) for r in refs]
        return [evict(self.repo, cid) for cid in ids]

    def merge_state(self, ref: str | bytes) -> str:
        """ "lazy", "evicted" or "materialized" (every plain commit is materialized)."""
        return merges.state(self.repo, self.get_commit(ref))

    def eviction(self, ref: str | bytes) -> dict[str, Any] | None:
        """What `evict` dropped of a merge commit (blocks, raw and stored bytes), or None."""
        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        return merges.evicted(self.repo, cid)

    def replay(self, ref: str) -> dict[str, Any]:
        """Re-execute a merge's plan; {"identical": bool, "first_difference": name, ...}.

        `ref` is a commit ref, or a plan id (or its prefix, as a model card names it): the
        newest merge commit reachable from a ref that has that plan."""
        from mergestore.merge.run import replay

        try:
            cid = self.resolve(ref)
        except RefError:
            cid = self.commit_of_plan(ref)
        return replay(self.repo, cid)

    def commit_of_plan(self, plan: str) -> bytes:
        """The newest merge commit reachable from any ref whose plan id starts with `plan`."""
        text = plan.strip().lower()
        if len(text) < 4 or any(ch not in "0123456789abcdef" for ch in text):
            raise RefError(f"unknown ref {plan!r}")
        entries = self.log(all_refs=True)
        found = [e for e in entries if e.commit.plan and e.commit.plan.hex().startswith(text)]
        if not found:
            raise RefError(f"unknown ref {plan!r} (not a commit, nor a merge plan id)")
        if len({e.commit.plan for e in found}) > 1:
            raise RefError(f"ambiguous plan id {plan!r}: several plans match")
        return found[0].id

    def merge_info(self, ref: str | bytes) -> tuple[bytes, Commit, dict[str, Any], dict[str, Any]]:
        cid = ref if isinstance(ref, bytes) else self.resolve(ref)
        c = self.repo.get_commit(cid)
        if c.plan is None:
            raise MergestoreError(f"{cid.hex()[:12]} is not a merge commit")
        plan = self.repo.get_plan(c.plan).body
        run = self.repo.get_plan(c.run).body if c.run else {}
        return cid, c, plan, run

    def plan_summary(self, ref: str | bytes) -> dict[str, Any]:
        _cid, _c, plan, run = self.merge_info(ref)
        cfg = plan.get("config", {})
        return {
            "method": plan.get("method"),
            "parameters": cfg.get("parameters", {}),
            "base": plan.get("base"),
            "models": [f"{m['ref']} {m['commit'][:12]}" for m in plan.get("models", [])],
            "dtype": plan.get("dtype"),
            "out_dtype": plan.get("out_dtype"),
            "seed": plan.get("seed") if _draws_random(plan.get("method")) else None,
            "budget_bytes": (plan.get("budget") or {}).get("budget_bytes"),
            "error_bound": run.get("error_bound"),
            "expert_bytes_read": run.get("expert_bytes_read"),
        }

    def explain(self, ref: str) -> dict[str, Any]:
        from mergestore.realized import base_and_inputs, realized_error

        cid, c, plan, run = self.merge_info(ref)
        b = plan.get("budget") or {}
        return {
            "commit": cid.hex(),
            "plan": c.plan.hex() if c.plan else None,
            "method": plan.get("method"),
            "models": plan.get("models", []),
            "estimates": {
                k: b.get(k)
                for k in (
                    "budget_bytes",
                    "expert_bytes_full",
                    "expert_bytes_planned",
                    "error_bound",
                    "error_bound_rel",
                    "full_delta_bound",
                    "bound_exact",
                    "surrogate",
                )
            },
            "planned_bytes_by_model": b.get("per_model_planned_bytes", {}),
            "planned_blocks_by_model": b.get("per_model_blocks", {}),
            "realized": run,
            "saliency": (
                {k: v for k, v in b["saliency"].items() if k != "scores"}
                if b.get("saliency")
                else None
            ),
            **base_and_inputs(plan),
            "realized_error": realized_error(self, cid, plan),
        }

    def blame(self, ref: str, tensor: str) -> dict[str, Any]:
        from mergestore.merge.budget import _unranges
        from mergestore.merge.saliency import block_scores

        cid, _c, plan, _run = self.merge_info(ref)
        entry = next((t for t in plan.get("tensors", []) if t["name"] == tensor), None)
        if entry is None:
            raise MergestoreError(f"merge {cid.hex()[:12]} has no tensor {tensor!r}")
        sel = plan.get("selection")
        rows = []
        base_commit = plan.get("base")
        n_blocks = len(self.tensor_record(cid, tensor).blocks)
        for model_index, src_name in entry["inputs"]:
            m = plan["models"][model_index]
            rec = self.tensor_record(bytes.fromhex(m["commit"]), src_name)
            base_rec = None
            if base_commit:
                try:
                    base_rec = self.tensor_record(bytes.fromhex(base_commit), tensor)
                except MergestoreError:
                    base_rec = None
            changed = (
                [
                    i
                    for i, (a, b) in enumerate(zip(rec.blocks, base_rec.blocks, strict=True))
                    if a != b
                ]
                if base_rec is not None and base_rec.shape == rec.shape
                else list(range(len(rec.blocks)))
            )
            if isinstance(sel, dict) and tensor in sel and str(model_index) in sel[tensor]:
                read = _unranges(sel[tensor][str(model_index)])
            else:
                read = changed
            status = (
                "same as base"
                if not changed
                else "all changed blocks read"
                if set(changed) <= set(read)
                else f"{len(set(changed) - set(read))} changed blocks omitted"
            )
            rows.append(
                {
                    "ref": m["ref"],
                    "commit": m["commit"],
                    "source_tensor": src_name,
                    "changed_blocks": changed,
                    "read": read,
                    "status": status,
                    "parameters": entry["per_input"][len(rows)]
                    if len(rows) < len(entry["per_input"])
                    else {},
                    **block_scores(plan, tensor, model_index, read),
                }
            )
        return {
            "commit": cid.hex(),
            "tensor": tensor,
            "method": plan.get("method"),
            "saliency": ((plan.get("budget") or {}).get("saliency") or {}).get("kind"),
            "blocks": n_blocks,
            "t": entry.get("t"),
            "shared": entry.get("shared"),
            "inputs": rows,
        }

    def saliency(
        self,
        ref: str,
        calibration: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        fisher: bool = False,
        window: int = 128,
        max_windows: int = 64,
        batch: int = 8,
        force: bool = False,
        progress: Progress | None = None,
    ) -> Any:
        """Gradients (or, with `fisher`, the empirical Fisher diagonal) of checkpoint `ref` on
        calibration text, written to `out` for `merge --saliency` (needs transformers:
        mergestore[saliency]). Returns a SaliencyResult (mergestore/saliency_compute.py)."""
        from mergestore.saliency_compute import compute_saliency

        return compute_saliency(
            self.repo,
            self.resolve(ref),
            Path(calibration),
            Path(out),
            fisher=fisher,
            window=window,
            max_windows=max_windows,
            batch=batch,
            force=force,
            progress=progress,
        )

    # ----- maintenance -----------------------------------------------------------------------

    @contextlib.contextmanager
    def gc_paused(self) -> Iterator[None]:
        """gc waits while this is held: for commands that write in several sessions (a merge
        whose path inputs are committed first)."""
        from mergestore.store.repo import in_progress

        with in_progress(self.repo):
            yield

    def fsck(self, *, full: bool = False) -> Any:
        """Check refs, objects and blocks (`full`: also re-hash every block); a FsckReport."""
        from mergestore.fsck import fsck

        return fsck(self.repo, full=full)

    def disk_usage(self) -> dict[str, object]:
        """Logical vs stored bytes, by codec and by commit (`du`)."""
        from mergestore.usage import disk_usage

        entries = self.log(all_refs=True) if self.repo.list_refs("refs/") else []
        return disk_usage(self.repo, entries)

    def gc(
        self,
        *,
        grace: str | float = "14d",
        dry_run: bool = False,
        repack_threshold: float = 0.25,
    ) -> Any:
        """Remove what no ref or recent reflog entry reaches; `grace` is seconds or '14d'.
        A GcReport."""
        from mergestore.store.gc import collect_garbage, parse_duration

        seconds = parse_duration(grace) if isinstance(grace, str) else float(grace)
        return collect_garbage(
            self.repo, grace=seconds, dry_run=dry_run, repack_threshold=repack_threshold
        )

    def repack(
        self,
        *,
        dry_run: bool = False,
        delta: bool | None = None,
        workers: int = 2,
        progress: Progress | None = None,
    ) -> Any:
        """Re-encode stored blocks with the best codec (XOR deltas if `delta`); a RepackReport."""
        from mergestore.store.repack import repack

        return repack(self.repo, dry_run=dry_run, delta=delta, progress=progress, workers=workers)

    # ----- refs ------------------------------------------------------------------------------

    def branches(self) -> dict[str, bytes]:
        return {k[len(HEADS) :]: v for k, v in self.repo.list_refs(HEADS).items()}

    def tags(self) -> dict[str, bytes]:
        return {k[len(TAGS) :]: v for k, v in self.repo.list_refs(TAGS).items()}

    def current_branch(self) -> str | None:
        t = self.repo.head_target()
        return t[len(HEADS) :] if t and t.startswith(HEADS) else None

    def create_branch(self, name: str, ref: str = "HEAD", *, force: bool = False) -> bytes:
        full = HEADS + check_new_ref_name(name)
        cid = self.resolve(ref)
        old = self.repo.read_ref(full)
        if old is not None and not force:
            raise RefError(f"branch {name!r} already exists")
        self.repo.update_refs([RefUpdate(full, cid, f"branch: created from {ref}", old=old)])
        return cid

    def delete_branch(self, name: str) -> bytes:
        full = HEADS + name
        old = self.repo.read_ref(full)
        if old is None:
            raise RefError(f"no branch {name!r}")
        if self.current_branch() == name:  # as git: HEAD would point at nothing
            raise RefError(
                f"cannot delete branch {name!r}: HEAD is on it (switch to another branch first)"
            )
        self.repo.update_refs([RefUpdate(full, None, "branch: deleted", old=old)])
        return old

    def create_tag(self, name: str, ref: str = "HEAD", *, force: bool = False) -> bytes:
        full = TAGS + check_new_ref_name(name, "tag")
        cid = self.resolve(ref)
        old = self.repo.read_ref(full)
        if old is not None and not force:
            raise RefError(f"tag {name!r} already exists")
        self.repo.update_refs([RefUpdate(full, cid, f"tag: {ref}", old=old)])
        return cid

    def rename_branch(self, old: str | None, new: str, *, force: bool = False) -> bytes:
        """`git branch -m [OLD] NEW`: OLD (default HEAD's branch) becomes NEW, with its reflog;
        HEAD follows. An existing NEW is replaced only with `force`. Returns the commit."""
        return refops.rename_branch(self.repo, old or self._head_branch("rename"), new, force=force)

    def delete_tag(self, name: str) -> bytes:
        """`git tag -d NAME`; returns the commit the tag named (its reflog keeps the entry)."""
        return refops.delete_tag(self.repo, name)

    def _head_branch(self, what: str) -> str:
        name = self.current_branch()
        if name is None:
            raise RefError(f"HEAD is detached: name the branch to {what}")
        return name

    def reflog(self, ref: str | None = None) -> list[tuple[str, Any]]:
        names = [self._full_ref_name(ref)] if ref else self.repo.reflog_names()
        out = [(n, e) for n in names for e in self.repo.reflog(n)]
        if ref and not out and self.repo.read_ref(names[0]) is None:
            raise RefError(f"no reflog for {ref!r}: no such branch or tag")
        return sorted(out, key=lambda ne: ne[1].time)  # time order, across refs too

    def _full_ref_name(self, ref: str) -> str:
        if ref == "HEAD":
            return self.repo.head_target() or "HEAD"
        if ref.startswith("refs/"):
            return ref
        found = [n for n in self.repo.refs_named(ref) if not n.startswith(REMOTES)]
        if len(found) > 1:
            raise AmbiguousRefError(ambiguous_ref(ref, found))
        return found[0] if found else HEADS + ref

    # ----- diff ------------------------------------------------------------------------------

    def diff(
        self,
        a: str,
        b: str,
        *,
        tensors: Sequence[str] | None = None,
        keep: bool = True,
        progress: Progress | None = None,
    ) -> Any:
        """Diff commit A against commit or checkpoint folder B (mergestore.diff.DiffResult)."""
        from mergestore.diff import diff

        return diff(self.repo, a, b, tensors=tensors, keep=keep, progress=progress)

    def analyze(
        self, expert: str, base: str | None = None, *, progress: Progress | None = None
    ) -> Any:
        """Compute and keep per-block delta statistics of EXPERT against BASE."""
        from mergestore.diff import analyze

        return analyze(self.repo, expert, base, progress=progress)


def _read_text(source: str | os.PathLike[str]) -> str:
    """A path's text, or the text itself (YAML with a newline is never a path)."""
    if isinstance(source, str) and "\n" in source:
        return source
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MergestoreError(f"{os.fspath(source)}: cannot read: {e}") from None
