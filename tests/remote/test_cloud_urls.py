"""gs:// and az:// remotes: URLs parsed, obstore's GCSStore and AzureStore built from the
standard environment variables, credentials masked wherever they are shown.

No GCS or Azure server runs here: these test the parsing and the configuration only (as
docs/remotes.md says, the two are built but untested against the real services).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergestore.api import Store
from mergestore.remote.client import ObjectClient, RemoteError, scrub
from mergestore.remote.cloud import credential_summary, store_config
from mergestore.remote.url import RemoteURLError, parse_url

GCS_KEY = '{"private_key": "gcs-secret-private-key-value"}'
AZ_KEY = "YXp1cmUtc2VjcmV0LWFjY291bnQta2V5"
CLOUD_ENV = [
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_BEARER_TOKEN",
    "GOOGLE_BASE_URL",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_TENANT_ID",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_ENDPOINT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "prefix"),
    [
        ("gs://team-models/llama/runs", "gs", "team-models", "llama/runs"),
        ("gs://team-models", "gs", "team-models", ""),
        ("az://checkpoints/qwen/", "az", "checkpoints", "qwen"),
        ("AZ://checkpoints/q", "az", "checkpoints", "q"),
    ],
)
def test_cloud_urls_parse(text: str, scheme: str, bucket: str, prefix: str) -> None:
    url = parse_url(text)
    assert (url.scheme, url.bucket, url.prefix) == (scheme, bucket, prefix)
    assert parse_url(url.text) == url


@pytest.mark.parametrize(
    "text",
    [
        "gs://team-models/p?endpoint=http://127.0.0.1:9000",  # S3's parameters only
        "az://c/p?region=eu",
        "gs://Bad_Bucket!/p",
        "az://c/../p",
    ],
)
def test_bad_cloud_urls_are_refused(text: str) -> None:
    with pytest.raises(RemoteURLError):
        parse_url(text)


def test_a_sas_token_in_an_az_url_is_refused_and_not_echoed() -> None:
    with pytest.raises(RemoteURLError) as ei:
        parse_url("az://c/p?sv=2022-11-02&sig=c2VjcmV0LXNhcy1zaWduYXR1cmU")
    msg = str(ei.value)
    assert "c2VjcmV0LXNhcy1zaWduYXR1cmU" not in msg and "AZURE_STORAGE_" in msg


def test_gcs_config_from_the_environment() -> None:
    env = {"GOOGLE_SERVICE_ACCOUNT_KEY": GCS_KEY, "GOOGLE_SERVICE_ACCOUNT_PATH": "/k/sa.json"}
    cc = store_config(parse_url("gs://team-models/llama"), env)
    assert cc.config == {
        "bucket": "team-models",
        "service_account": "/k/sa.json",
        "service_account_key": GCS_KEY,
    }
    assert dict(cc.used) == {
        "GOOGLE_SERVICE_ACCOUNT_PATH": "/k/sa.json",
        "GOOGLE_SERVICE_ACCOUNT_KEY": "***",
    }
    assert cc.secrets == [GCS_KEY]
    assert "gcs-secret" not in credential_summary(parse_url("gs://team-models/llama"), env)
    assert "application-default" in credential_summary(parse_url("gs://bkt/p"), {})


def test_azure_config_from_the_environment() -> None:
    env = {
        "AZURE_STORAGE_ACCOUNT_NAME": "teamacct",
        "AZURE_STORAGE_ACCESS_KEY": "second-choice-key",
        "AZURE_STORAGE_ACCOUNT_KEY": AZ_KEY,  # the first name obstore reads wins
        "AZURE_CLIENT_SECRET": "client-secret-value",
    }
    cc = store_config(parse_url("az://checkpoints/qwen"), env)
    assert cc.config == {
        "container_name": "checkpoints",
        "account_name": "teamacct",
        "account_key": AZ_KEY,
        "client_secret": "client-secret-value",
    }
    assert dict(cc.used) == {
        "AZURE_STORAGE_ACCOUNT_NAME": "teamacct",
        "AZURE_STORAGE_ACCOUNT_KEY": "***",
        "AZURE_CLIENT_SECRET": "***",
    }
    assert sorted(cc.secrets) == sorted([AZ_KEY, "client-secret-value"])


def test_obstore_stores_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from obstore.store import AzureStore, GCSStore

    gcs = ObjectClient(parse_url("gs://team-models/llama/runs"), "g")  # default credentials
    assert isinstance(gcs.store, GCSStore)
    assert gcs.store.prefix == "llama/runs" and gcs.store.config["bucket"] == "team-models"
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "gcs-bearer-token-value")
    gcs = ObjectClient(parse_url("gs://team-models/llama/runs"), "g")
    assert gcs.store.config["bearer_token"] == "gcs-bearer-token-value"
    assert "gcs-bearer-token-value" not in repr(gcs.store) + gcs.describe()

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "teamacct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZ_KEY)
    az = ObjectClient(parse_url("az://checkpoints/qwen"), "a")
    assert isinstance(az.store, AzureStore)
    assert az.store.prefix == "qwen"
    assert az.store.config["container_name"] == "checkpoints"
    assert az.store.config["account_name"] == "teamacct"
    assert AZ_KEY not in repr(az.store) and AZ_KEY not in az.describe()
    assert AZ_KEY not in scrub(f"upstream said: bad key {AZ_KEY}")


def test_an_azure_remote_without_an_account_is_one_clear_error() -> None:
    with pytest.raises(RemoteError) as ei:
        ObjectClient(parse_url("az://checkpoints/qwen"), "origin")
    msg = str(ei.value)
    assert msg.startswith("remote origin: open az://checkpoints/qwen") and "\n" not in msg


def test_a_broken_gcs_key_is_one_line_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", GCS_KEY)
    with pytest.raises(RemoteError) as ei:
        ObjectClient(parse_url("gs://team-models/llama"), "origin")
    msg = str(ei.value)
    assert msg.startswith("remote origin: open gs://team-models/llama") and "\n" not in msg
    assert "gcs-secret-private-key-value" not in msg


def test_cli_remote_add_and_verbose_listing_mask_credentials(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = tmp_path / "s"
    Store.init(st).close()
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", GCS_KEY)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "teamacct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZ_KEY)
    r = cli("--store", st, "remote", "add", "g", "gs://team-models/llama")
    assert r.code == 0, r.err
    assert r.out.strip() == "g\tgs://team-models/llama"
    r = cli("--store", st, "remote", "add", "a", "az://checkpoints/qwen", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"remote": "a", "url": "az://checkpoints/qwen", "lazy": False}

    r = cli("--store", st, "remote", "-v")
    assert r.code == 0, r.err
    assert sorted(r.out.splitlines()) == [
        "a\taz://checkpoints/qwen\t(credentials: AZURE_STORAGE_ACCOUNT_NAME=teamacct, "
        "AZURE_STORAGE_ACCOUNT_KEY=***)",
        "g\tgs://team-models/llama\t(credentials: GOOGLE_SERVICE_ACCOUNT_KEY=***)",
    ]
    r = cli("--store", st, "remote", "--json")
    listed = {x["name"]: x for x in json.loads(r.out)["remotes"]}
    assert listed["g"]["credentials"] == {"GOOGLE_SERVICE_ACCOUNT_KEY": "***"}
    assert listed["a"]["credentials"] == {
        "AZURE_STORAGE_ACCOUNT_NAME": "teamacct",
        "AZURE_STORAGE_ACCOUNT_KEY": "***",
    }
    stored = "".join(p.read_text(errors="replace") for p in st.rglob("*.json"))
    for secret in ("gcs-secret-private-key-value", AZ_KEY):
        assert secret not in r.out and secret not in stored


def test_cli_refuses_an_az_url_with_a_sas_token(tmp_path: Path, cli) -> None:
    st = tmp_path / "s"
    Store.init(st).close()
    before = sorted((p.name, p.read_bytes()) for p in st.rglob("*") if p.is_file())
    url = "az://c/p?sig=c2VjcmV0LXNhcw"
    for extra in ([], ["--json"]):
        r = cli("--store", st, "remote", "add", "a", url, *extra)
        assert r.code == 1
        assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
        assert "c2VjcmV0LXNhcw" not in r.err + r.out
        if extra:
            assert "AZURE_STORAGE_" in json.loads(r.out)["error"]
    after = sorted((p.name, p.read_bytes()) for p in st.rglob("*") if p.is_file())
    assert after == before
