"""The object-store client: obstore (Rust object_store) behind a few calls the remote layer needs.

Why obstore: one library for S3 and every S3-compatible server (MinIO, SeaweedFS, Ceph),
GCS, Azure and the local file system; ranged and coalesced parallel GETs (`get_ranges`);
streamed multipart PUTs with concurrent parts; conditional PUTs (`mode="create"` is
If-None-Match: *, `mode={"e_tag": ...}` is If-Match) for compare-and-swap refs; and retries
with exponential backoff and jitter for transient errors (5xx, dropped connections,
timeouts). boto3 has no ranged-coalescing or conditional-put helpers and runs in Python;
fsspec adds a layer without the conditional writes.

Errors become one RemoteError line naming the remote and the key; secrets from the
environment are scrubbed out of every message.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import blake3

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass
from mergestore.remote.url import RemoteURL, mask_url

MULTIPART_CHUNK = 16 << 20
MULTIPART_CONCURRENCY = 8
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class RemoteError(MergestoreError):
    """The remote could not be reached or refused a request."""


class RefMovedError(MergestoreError):
    """A conditional ref write lost: the remote ref is not what this process last saw."""


class AlreadyExists(Exception):
    """An immutable object is already on the remote (internal)."""


def retry_config() -> dict[str, Any]:
    """obstore's retries with exponential backoff; MERGESTORE_REMOTE_RETRY_TIMEOUT (seconds)
    bounds how long a transient failure is retried before the command gives up."""
    timeout = float(os.environ.get("MERGESTORE_REMOTE_RETRY_TIMEOUT", "60"))
    return {
        "max_retries": int(os.environ.get("MERGESTORE_REMOTE_RETRIES", "8")),
        "retry_timeout": timedelta(seconds=timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=min(15.0, max(0.2, timeout / 4))),
            "base": 2,
        },
    }


def _profile_config() -> dict[str, str]:
    """Credentials and region of $AWS_PROFILE from the shared AWS files, when the
    environment does not carry keys itself. Kept in memory only."""
    profile = os.environ.get("AWS_PROFILE")
    if not profile or os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    out: dict[str, str] = {}
    home = Path.home()
    creds = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials"))
    conf = Path(os.environ.get("AWS_CONFIG_FILE", home / ".aws" / "config"))
    for path, section in ((conf, f"profile {profile}"), (conf, profile), (creds, profile)):
        cp = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            cp.read(path)
        if not cp.has_section(section):
            continue
        for src, dst in (
            ("aws_access_key_id", "access_key_id"),
            ("aws_secret_access_key", "secret_access_key"),
            ("aws_session_token", "session_token"),
            ("region", "region"),
            ("endpoint_url", "endpoint"),
        ):
            if cp.has_option(section, src):
                out[dst] = cp.get(section, src)
    if not out:
        raise RemoteError(f"AWS profile {profile!r} not found in {creds} or {conf}")
    return out


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove secret values (from the environment or a profile) from a message."""
    from mergestore.remote.cloud import SECRET_ENV

    for name in (*_SECRET_ENV, *SECRET_ENV):
        v = os.environ.get(name)
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    for v in secrets:
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    return text


@dataclass
class RefValue:
    """A ref's stored bytes and the token a conditional write must match."""

    data: bytes
    token: str  # what a conditional write must match (an ETag; a content hash on file://)


class ObjectClient:
    """Reads and writes keys under one remote root."""

    def __init__(self, url: RemoteURL, name: str = "remote") -> None:
        import obstore
        from obstore.store import LocalStore, S3Store

        self.url = url
        self.name = name
        self._obs = obstore
        self._secrets: list[str] = []
        self.local_root: Path | None = None
        if url.scheme == "file":
            self.local_root = Path(url.prefix)
            self.local_root.mkdir(parents=True, exist_ok=True)
            self.store = LocalStore(self.local_root)
        elif url.scheme == "s3":
            cfg: dict[str, Any] = dict(_profile_config())
            self._secrets = [cfg.get("secret_access_key", ""), cfg.get("session_token", "")]
            if url.endpoint:
                cfg["endpoint"] = url.endpoint
            if url.region:
                cfg["region"] = url.region
            endpoint = (
                cfg.get("endpoint")
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT")
                or ""
            )
            if "region" not in cfg and not (
                os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            ):
                cfg["region"] = "us-east-1"
            self.store = S3Store(
                url.bucket,
                prefix=url.prefix or None,
                config=cfg,
                client_options={"allow_http": endpoint.startswith("http://")},
                retry_config=retry_config(),
            )
        else:  # gs://, az://: credentials from the standard environment (remote/cloud.py)
            from mergestore.remote.cloud import open_store, store_config

            cloud = store_config(url)
            self._secrets = cloud.secrets
            try:
                self.store = open_store(url, cloud, retry_config())
            except Exception as e:  # obstore refuses a config it cannot use (no account, ...)
                raise self._fail("open", url.text, e) from None

    # ----- errors ----------------------------------------------------------------------------

    def _fail(self, what: str, key: str, e: BaseException) -> RemoteError:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = scrub(f"remote {self.name}: {what} {key}: {first}", self._secrets)
        return RemoteError(msg[:400])

    def describe(self) -> str:
        return mask_url(self.url.text)

    # ----- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """A whole object, or None when it does not exist."""
        try:
            return bytes(self._obs.get(self.store, key).bytes())
        except FileNotFoundError:
            return None
        except Exception as e:
            if _is_not_found(e):
                return None
            raise self._fail("reading", key, e) from None

    def get_ranges(self, key: str, starts: Sequence[int], lengths: Sequence[int]) -> list[Any]:
        """Byte ranges of one object (near ranges coalesced, up to 10 requests in parallel)."""
        if not starts:
            return []
        try:
            return list(
                self._obs.get_ranges(self.store, key, starts=list(starts), lengths=list(lengths))
            )
        except Exception as e:
            raise self._fail("reading", key, e) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            return bytes(self._obs.get_range(self.store, key, start=start, length=length))
        except Exception as e:
            raise self._fail("reading", key, e) from None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix`."""
        try:
            out = []
            for batch in self._obs.list(self.store, prefix=prefix):
                for meta in batch:
                    out.append((str(meta["path"]), int(meta["size"])))
            return out
        except FileNotFoundError:
            return []
        except Exception as e:
            if _is_not_found(e):
                return []
            raise self._fail("listing", prefix, e) from None

    def exists(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            return int(self._obs.head(self.store, key)["size"])
        except FileNotFoundError:
            return None
        except Exception as e:
            if _is_not_found(e):
                return None
            raise self._fail("checking", key, e) from None

    # ----- immutable writes ------------------------------------------------------------------

    def put_new(self, key: str, data: bytes) -> bool:
        """Create an immutable object; False when it already exists (If-None-Match: *)."""
        from obstore.exceptions import AlreadyExistsError

        try:
            self._obs.put(self.store, key, data, mode="create")
        except AlreadyExistsError:
            return False
        except FileExistsError:
            return False
        except Exception as e:
            raise self._fail("writing", key, e) from None
        self._sync_local(key)
        return True

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview], size: int) -> None:
        """Upload a large immutable object from chunks (multipart, parts sent concurrently).
        Its name is content-derived, so writing it again writes the same bytes."""
        try:
            if size <= MULTIPART_CHUNK:
                self._obs.put(self.store, key, b"".join(bytes(c) for c in chunks))
            else:
                self._obs.put(
                    self.store,
                    key,
                    chunks,
                    chunk_size=MULTIPART_CHUNK,
                    max_concurrency=MULTIPART_CONCURRENCY,
                )
        except Exception as e:
            raise self._fail("writing", key, e) from None
        self._sync_local(key)

    def _sync_local(self, key: str) -> None:
        """On file:// make a written object durable before anything refers to it."""
        if self.local_root is None:
            return
        path = self.local_root / key
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ----- refs: compare-and-swap ------------------------------------------------------------

    def read_ref(self, key: str) -> RefValue | None:
        if self.local_root is not None:
            path = self.local_root / key
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as e:
                raise self._fail("reading", key, e) from None
            return RefValue(data, blake3.blake3(data).hexdigest())
        try:
            res = self._obs.get(self.store, key)
            data = bytes(res.bytes())
            return RefValue(data, str(res.meta["e_tag"]))
        except FileNotFoundError:
            return None
        except Exception as e:
            if _is_not_found(e):
                return None
            raise self._fail("reading", key, e) from None

    def write_ref(self, key: str, data: bytes, expect: str | None) -> None:
        """Write a ref only if it still holds what `expect` names (None: only if absent).
        Raises RefMovedError when it does not."""
        if self.local_root is not None:
            self._write_ref_local(key, data, expect)
            return
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        mode: Any = "create" if expect is None else {"e_tag": expect}
        try:
            self._obs.put(self.store, key, data, mode=mode)
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            raise RefMovedError(key) from None
        except FileNotFoundError:
            raise RefMovedError(key) from None  # If-Match on a ref deleted meanwhile
        except Exception as e:
            raise self._fail("updating", key, e) from None

    def _write_ref_local(self, key: str, data: bytes, expect: str | None) -> None:
        assert self.local_root is not None
        path = self.local_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.local_root / ".refs.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                cur = path.read_bytes()
            except FileNotFoundError:
                cur = None
            token = blake3.blake3(cur).hexdigest() if cur is not None else None
            if token != expect:
                raise RefMovedError(key)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(lock_fd)


def _is_not_found(e: BaseException) -> bool:
    return type(e).__name__ == "NotFoundError"
