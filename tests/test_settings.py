"""Config: one TOML file; every mistake names the file and the key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from engine.core.errors import ConfigError
from engine.core.settings import DEMO_CREDENTIALS_FILE, Secret, load_settings

GOOD = """
[server]
port = 9000

[[sites]]
key = "acme-bank"
allowed_origins = ["https://www.acme.example"]
consent = "required"
identity = { algorithms = ["HS256"], secret = "0123456789abcdef0123456789abcdef" }

[[api_tokens]]
name = "crm"
token = "crm-token-123"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ringback.toml"
    path.write_text(text)
    return path


def test_a_config_file_is_read_into_settings(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, GOOD), data_dir=tmp_path)
    assert s.port == 9000
    site = s.sites["acme-bank"]
    assert site.consent == "required"
    assert site.allowed_origins == ("https://www.acme.example",)
    assert s.api_tokens[0].matches("crm-token-123")
    assert not s.api_tokens[0].matches("crm-token-124")
    assert s.demo_credentials is None
    assert not (tmp_path / DEMO_CREDENTIALS_FILE).exists()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD + "\n[limits]\nmax_body_bytes = 'big'\n", "limits.max_body_bytes"),
        (GOOD + "\n[limits]\nmax_body_byte = 10\n", "limits.max_body_byte"),
        (GOOD.replace('consent = "required"', 'consent = "maybe"'), "sites[0].consent"),
        (
            GOOD.replace('secret = "0123456789abcdef0123456789abcdef"', "x = 1"),
            "sites[0].identity.x",
        ),
        (
            GOOD.replace(', secret = "0123456789abcdef0123456789abcdef"', ""),
            "sites[0].identity.secret",
        ),
        (GOOD.replace('"HS256"', '"none"'), "sites[0].identity.algorithms[0]"),
        (GOOD.replace('"https://www.acme.example"', '"ftp://x"'), "sites[0].allowed_origins[0]"),
        (GOOD.replace('key = "acme-bank"', 'key = "Acme Bank"'), "sites[0].key"),
        (GOOD + "\n[store]\ndurability = 'sometimes'\n", "store.durability"),
        (
            GOOD + "\n[[api_tokens]]\nname = 'x'\ntoken_env = 'RINGBACK_TEST_UNSET_VAR'\n",
            "api_tokens[1].token_env",
        ),
        ("[server\n", "(syntax)"),
        (
            GOOD.replace(
                'identity = { algorithms = ["HS256"], ', "identity = { max_lifetime_s = 0, "
            ),
            "sites[0].identity.max_lifetime_s",
        ),
        (GOOD.replace("port = 9000", "port = 9000\npublic_url = 'ftp://x'"), "server.public_url"),
        (
            GOOD.replace("port = 9000", "port = 9000\npublic_url = 'https://b.example/app'"),
            "server.public_url",
        ),
        (GOOD + "\n[metrics]\nport = 70000\n", "metrics.port"),
        (GOOD + "\n[metrics]\nhost = '10.0.0.5'\n", "metrics.host"),
        (GOOD + "\n[metrics]\ntokn = 'x'\n", "metrics.tokn"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, data_dir=tmp_path)
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_demo_credentials_are_generated_once_private_and_reused(tmp_path: Path) -> None:
    first = load_settings(None, data_dir=tmp_path)
    path = tmp_path / DEMO_CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.demo_credentials is not None
    assert set(first.demo_credentials) == {
        "identity_secret",
        "api_token",
        "agent_user",
        "agent_password",
        "segment_server_write_key",
    }
    second = load_settings(None, data_dir=tmp_path)
    assert second.demo_credentials == first.demo_credentials
    other = load_settings(None, data_dir=tmp_path / "elsewhere")
    assert other.demo_credentials != first.demo_credentials  # random, never hard-coded


def test_secrets_do_not_print_themselves() -> None:
    secret = Secret("hunter2-hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr(load_settings.__doc__)


SECRETS = {
    "identity": "0123456789abcdef0123456789abcdef",
    "api token": "crm-token-123",
    "webhook": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "metrics token": "metrics-token-456",
    "store password": "valkey-pass-789",
}


def test_no_secret_shows_in_the_repr_of_settings_or_anything_in_them(tmp_path: Path) -> None:
    text = (
        GOOD
        + '\n[store]\nredis_url = "redis://rb:valkey-pass-789@10.0.0.9:6379/0"\n'
        + '\n[metrics]\ntoken = "metrics-token-456"\n'
        + '\n[[webhooks]]\nname = "cti"\nurl = "http://127.0.0.1:9/hook"\n'
        + 'secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n'
    )
    s = load_settings(_write(tmp_path, text), data_dir=tmp_path)
    assert s.metrics.token is not None and s.metrics.token.reveal() == "metrics-token-456"
    digest = s.api_tokens[0].sha256  # not a secret, but it lets a weak token be guessed
    objects = [s, s.sites["acme-bank"], s.sites["acme-bank"].identity, s.metrics]
    for obj in [*objects, *s.webhooks, *s.api_tokens]:
        for shown in (repr(obj), str(obj), f"{obj}"):
            for what, secret in SECRETS.items():
                assert secret not in shown, (what, shown)
            assert digest not in shown
    assert "'***'" in repr(s)
    assert "10.0.0.9:6379" in repr(s)  # the rest of the store URL still helps debugging

    demo = load_settings(None, data_dir=tmp_path / "demo")
    assert demo.demo_credentials is not None
    shown = repr(demo) + str(demo.demo_credentials) + repr(demo.agents)
    for key in ("identity_secret", "api_token", "agent_password"):
        assert demo.demo_credentials[key] not in shown, key
    assert demo.agents[0].password_hash not in shown
    assert "'agent_user': 'agent'" in shown


def test_public_url_is_kept_as_the_origin_a_browser_sends(tmp_path: Path) -> None:
    text = GOOD.replace(
        "port = 9000", "port = 9000\npublic_url = 'HTTPS://Ringback.Bank.example:443/'"
    )
    s = load_settings(_write(tmp_path, text), data_dir=tmp_path)
    assert s.public_url == "https://ringback.bank.example"
    s = load_settings(
        _write(tmp_path, GOOD), data_dir=tmp_path, overrides={"public_url": "http://h.example:8080"}
    )
    assert s.public_url == "http://h.example:8080"
    assert load_settings(_write(tmp_path, GOOD), data_dir=tmp_path).public_url == ""


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    s = load_settings(
        _write(tmp_path, GOOD),
        data_dir=tmp_path,
        overrides={"port": 7001, "workers": 3, "redis_url": "redis://x:1"},
    )
    assert (s.port, s.workers, s.redis_url) == (7001, 3, "redis://x:1")


def test_webhook_targets_are_validated(tmp_path: Path) -> None:
    ok = (
        GOOD + '\n[[webhooks]]\nname = "cti"\nurl = "http://127.0.0.1:9/hook"\n'
        'secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n'
    )
    s = load_settings(_write(tmp_path, ok), data_dir=tmp_path)
    assert s.webhooks[0].name == "cti" and s.webhooks[0].max_attempts == 8
    bad = ok.replace('"whsec_', '"sk_')
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, bad), data_dir=tmp_path)
    assert info.value.key == "webhooks[0].secrets[0]"
    assert s.webhooks[0].channels == ()  # every channel
    mail = ok + 'channels = ["email"]\n'
    assert load_settings(_write(tmp_path, mail), data_dir=tmp_path).webhooks[0].channels == (
        "email",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, ok + 'channels = ["fax"]\n'), data_dir=tmp_path)
    assert info.value.key == "webhooks[0].channels[0]"
