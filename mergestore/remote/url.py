"""Remote URLs: parsing, validation, and masking anything secret before it is shown.

Accepted forms:
    s3://BUCKET/PREFIX[?endpoint=http://host:port&region=REGION]
    gs://BUCKET/PREFIX, az://CONTAINER/PREFIX      (obstore's GCSStore and AzureStore: cloud.py)
    file:///ABSOLUTE/PATH, or an absolute or relative local path

Credentials never live in a URL: they come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_ENDPOINT_URL, ...; GOOGLE_* and
AZURE_STORAGE_* for gs:// and az://, remote/cloud.py). A URL that
carries one (user:password@, or a query parameter like a key, secret, token or signature) is
refused by `remote add`, so it is never stored; `mask_url` hides such parts wherever a URL
is printed anyway.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from mergestore.errors import MergestoreError
from mergestore.fast_dataclass import dataclass

SCHEMES = ("s3", "gs", "az", "file")
_S3_PARAMS = ("endpoint", "region")
_AWS = "AWS_* environment variables or a profile"
_CREDENTIAL_ENV = {
    "gs": "GOOGLE_* environment variables",
    "az": "AZURE_STORAGE_* environment variables",
}
_SECRET_WORDS = re.compile(r"(secret|token|key|sig|password|credential|auth)", re.I)


class RemoteURLError(MergestoreError):
    """A remote URL is malformed or unsupported."""


@dataclass(frozen=True)
class RemoteURL:
    """A parsed remote location."""

    scheme: str  # "s3", "gs", "az" or "file"
    bucket: str  # bucket or container; "" for file
    prefix: str  # key prefix inside the bucket (no leading/trailing slash); path for file
    endpoint: str | None = None
    region: str | None = None

    @property
    def text(self) -> str:
        """The canonical URL (no secrets: they are never parsed into a RemoteURL)."""
        if self.scheme == "file":
            return "file://" + self.prefix
        query = "&".join(
            f"{k}={v}" for k, v in (("endpoint", self.endpoint), ("region", self.region)) if v
        )
        path = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{path}" + (f"?{query}" if query else "")


def is_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


def secret_parts(text: str) -> list[str]:
    """The parts of a URL that look like credentials (empty when there are none)."""
    found = []
    try:
        parts = urlsplit(text)
    except ValueError:
        return found
    if parts.password or (parts.username and parts.scheme not in ("file", "")):
        found.append("user:password")
    for k, _v in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_WORDS.search(k) and k not in _S3_PARAMS:
            found.append(f"query parameter {k!r}")
    return found


def mask_url(text: str) -> str:
    """The URL with any user info and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}={'***' if _SECRET_WORDS.search(k) and k not in _S3_PARAMS else v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_url(text: str, *, base: Path | None = None) -> RemoteURL:
    """Parse and validate a remote URL (refuses embedded credentials)."""
    if not text or any(ord(c) < 0x20 for c in text):
        raise RemoteURLError("empty or malformed remote URL")
    secrets = secret_parts(text)
    if secrets:
        raise RemoteURLError(
            f"remote URL {mask_url(text)} carries a credential ({', '.join(secrets)}); "
            f"give credentials through {_CREDENTIAL_ENV.get(text.split(':', 1)[0].lower(), _AWS)}"
            " instead"
        )
    if not is_url(text):
        if "://" in text:
            raise RemoteURLError(
                f"unsupported remote URL scheme {text.split('://', 1)[0]!r} "
                f"(supported: {', '.join(SCHEMES)})"
            )
        path = Path(text)
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return RemoteURL("file", "", os.path.normpath(path))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RemoteURLError(f"file URL {text!r} must be file:///absolute/path")
        if not parts.path.startswith("/"):
            raise RemoteURLError(f"file URL {text!r} must be file:///absolute/path")
        return RemoteURL("file", "", os.path.normpath(parts.path))
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket or ""):
        raise RemoteURLError(f"remote URL {text!r}: invalid bucket name {bucket!r}")
    prefix = parts.path.strip("/")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise RemoteURLError(f"remote URL {text!r}: invalid path {parts.path!r}")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - set(_S3_PARAMS))
    if unknown or (params and scheme != "s3"):
        raise RemoteURLError(f"remote URL {text!r}: unknown parameter(s) {', '.join(unknown)}")
    endpoint = params.get("endpoint") or None
    if endpoint is not None and not re.fullmatch(r"https?://[^\s/@]+(/[^\s@]*)?", endpoint):
        raise RemoteURLError(f"remote URL {text!r}: invalid endpoint {endpoint!r}")
    return RemoteURL(scheme, bucket, prefix, endpoint, params.get("region") or None)
