"""gs:// and az:// remotes: the obstore store configuration, from the standard environment.

Credentials never live in a URL or in the store's config (see url.py): they come from the
environment variables each cloud's own tools read, or (GCS) the application-default
credentials file. `store_config` gathers them into the configuration obstore's GCSStore and
AzureStore take, and names the variables it used; `credential_summary` says which were used,
with every secret value masked, for `remote -v`.

Built and tested for their configuration only: nothing here has run against real GCS or
Azure (docs/remotes.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from mergestore.fast_dataclass import dataclass
from mergestore.remote.url import RemoteURL

# (config key, environment variables in the order obstore reads them, secret?)
_GCS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("service_account", ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH"), False),
    ("service_account_key", ("GOOGLE_SERVICE_ACCOUNT_KEY",), True),
    ("application_credentials", ("GOOGLE_APPLICATION_CREDENTIALS",), False),
    ("bearer_token", ("GOOGLE_BEARER_TOKEN",), True),
    ("base_url", ("GOOGLE_BASE_URL",), False),
)
_AZURE: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("account_name", ("AZURE_STORAGE_ACCOUNT_NAME",), False),
    (
        "account_key",
        ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY"),
        True,
    ),
    ("sas_key", ("AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN"), True),
    ("token", ("AZURE_STORAGE_TOKEN",), True),
    ("client_id", ("AZURE_STORAGE_CLIENT_ID", "AZURE_CLIENT_ID"), False),
    ("client_secret", ("AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"), True),
    (
        "tenant_id",
        (
            "AZURE_STORAGE_TENANT_ID",
            "AZURE_STORAGE_AUTHORITY_ID",
            "AZURE_TENANT_ID",
            "AZURE_AUTHORITY_ID",
        ),
        False,
    ),
    ("federated_token_file", ("AZURE_FEDERATED_TOKEN_FILE",), False),
    ("use_azure_cli", ("AZURE_USE_AZURE_CLI",), False),
    ("use_emulator", ("AZURE_STORAGE_USE_EMULATOR",), False),
    ("endpoint", ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"), False),
)
TABLES = {"gs": _GCS, "az": _AZURE}
# every variable whose value is a secret: scrubbed from messages (client.scrub)
SECRET_ENV = tuple(v for t in TABLES.values() for _k, names, secret in t if secret for v in names)


@dataclass
class CloudConfig:
    """What one gs:// or az:// remote is opened with."""

    config: dict[str, Any]  # obstore's store config (bucket/container and credentials)
    used: list[tuple[str, str | None]] = field(default_factory=list)  # (variable, masked value)
    secrets: list[str] = field(default_factory=list)  # values to scrub from messages


def store_config(url: RemoteURL, environ: Mapping[str, str] | None = None) -> CloudConfig:
    """The obstore configuration of a gs:// or az:// remote, from the environment."""
    env = os.environ if environ is None else environ
    table = TABLES.get(url.scheme)
    if table is None:
        raise ValueError(f"no cloud configuration for {url.scheme}:// URLs")
    out = CloudConfig(
        {"bucket": url.bucket} if url.scheme == "gs" else {"container_name": url.bucket}
    )
    for key, names, secret in table:
        for name in names:
            value = env.get(name)
            if value:
                out.config[key] = value
                out.used.append((name, "***" if secret else value))
                if secret:
                    out.secrets.append(value)
                break
    return out


def credential_summary(url: RemoteURL, environ: Mapping[str, str] | None = None) -> str:
    """`remote -v`'s note on a gs:// or az:// remote: the variables in use, secrets masked."""
    used = store_config(url, environ).used
    if not used:
        default = "application-default credentials" if url.scheme == "gs" else "no credentials"
        return f"(credentials: {default} from the environment)"
    return "(credentials: " + ", ".join(f"{n}={v}" for n, v in used) + ")"


def open_store(url: RemoteURL, cloud: CloudConfig, retry: dict[str, Any]) -> Any:
    """obstore's GCSStore or AzureStore for `url`, configured by `cloud` (store_config)."""
    from obstore.store import AzureStore, GCSStore

    cfg = {k: v for k, v in cloud.config.items() if k not in ("bucket", "container_name")}
    for k in ("use_azure_cli", "use_emulator"):
        if k in cfg:
            cfg[k] = str(cfg[k]).lower() in ("1", "true", "yes")
    prefix = url.prefix or None
    if url.scheme == "gs":
        return GCSStore(url.bucket, prefix=prefix, config=cfg, retry_config=retry)
    return AzureStore(url.bucket, prefix=prefix, config=cfg, retry_config=retry)
