"""The config file is decoded against one declared shape (msgspec Structs): an unknown
key, a wrong type or a value out of range is refused, naming the file and the key path
in the config's own terms (`sites[0].identity.max_lifetime_s`), and every key the
README and the demo config document is part of that shape."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest

from engine.core.errors import ConfigError
from engine.core.settings import ConfigFile, load_settings

REPO = Path(__file__).resolve().parent.parent

SITE = """
[[sites]]
key = "acme-bank"
allowed_origins = ["https://www.acme.example"]
identity = { algorithms = ["HS256"], secret = "0123456789abcdef0123456789abcdef" }
"""

WEBHOOK = """
[[webhooks]]
name = "cti"
url = "https://hooks.acme.example/rb"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"""


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "ringback.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, data_dir=tmp_path)
    assert str(info.value).startswith(f"{path}: {info.value.key}: ")
    return info.value


def _message(error: ConfigError) -> str:
    return str(error).split(f": {error.key}: ", 1)[1]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'\n" + SITE, "colour"),
        ("[server]\nprot = 8080\n" + SITE, "server.prot"),
        ("[store]\ndurabilty = 'aof'\n" + SITE, "store.durabilty"),
        ("[limits]\nmax_body_byte = 10\n" + SITE, "limits.max_body_byte"),
        ("[profile]\nsession_gap = 10\n" + SITE, "profile.session_gap"),
        ("[rules]\ndirectory = 'rules'\n" + SITE, "rules.directory"),
        (SITE + "origins = ['https://a.example']\n", "sites[0].origins"),
        (SITE + SITE.replace("acme-bank", "b") + "honour_gpc = true\n", "sites[1].honour_gpc"),
        (SITE.replace('secret = "', 'lifetime = 5, secret = "'), "sites[0].identity.lifetime"),
        (
            SITE + "[[agents]]\nuser = 'a'\npassword_hash = 'scrypt$0$0'\nteam = 'x'\n",
            "agents[0].team",
        ),
        (SITE + WEBHOOK + "retries = 3\n", "webhooks[0].retries"),
    ],
)
def test_an_unknown_key_anywhere_is_refused_naming_its_path(
    tmp_path: Path, text: str, key: str
) -> None:
    error = _error(tmp_path, text)
    assert (error.key, _message(error)) == (key, "unknown key")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[server]\nport = '8080'\n" + SITE, "server.port", "Expected int, got str"),
        ("[server]\nhost = 1979-05-27\n" + SITE, "server.host", "Expected str, got date"),
        ("[limits]\nlimit_loopback = 'yes'\n", "limits.limit_loopback", "Expected bool, got str"),
        ("[limits]\nlogin_queue = true\n", "limits.login_queue", "Expected int, got bool"),
        ("sites = 3\n", "sites", "Expected array, got int"),
        (SITE + "honor_gpc = 'no'\n", "sites[0].honor_gpc", "Expected bool, got str"),
        (
            "[intent_weights]\nclick = 1\ncalc = 'x'\n",
            "intent_weights.calc",
            "Expected float, got str",
        ),
        (
            "[categories]\nloans = ['/loans*']\ncards = [1]\n",
            "categories.cards[0]",
            "Expected str, got int",
        ),
    ],
)
def test_a_wrong_type_names_its_path(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = _error(tmp_path, text)
    assert (error.key, _message(error)) == (key, message)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            SITE.replace('algorithms = ["HS256"]', "max_lifetime_s = -5"),
            "sites[0].identity.max_lifetime_s",
            "Expected int >= 1, got -5",
        ),
        (
            "[limits]\nmax_events_per_batch = 500\n",
            "limits.max_events_per_batch",
            "Expected int <= 100, got 500",
        ),
        ("[profile]\nsession_gap_s = 0\n", "profile.session_gap_s", "Expected int >= 1, got 0"),
        ("[server]\nworkers = 0\n", "server.workers", "Expected int >= 1, got 0"),
        ("[server]\nport = 70000\n", "server.port", "Expected int <= 65535, got 70000"),
        ("[metrics]\nport = 0\n", "metrics.port", "Expected int >= 1, got 0"),
        (
            SITE + WEBHOOK + "max_attempts = 0\n",
            "webhooks[0].max_attempts",
            "Expected int >= 1, got 0",
        ),
        (
            SITE + WEBHOOK + "timeout_s = -1.5\n",
            "webhooks[0].timeout_s",
            "Expected float > 0.0, got -1.5",
        ),
    ],
)
def test_a_value_out_of_range_names_its_path_and_the_value(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    error = _error(tmp_path, text)
    assert (error.key, _message(error)) == (key, message)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (SITE.replace('key = "acme-bank"\n', ""), "sites[0].key", "required"),
        ("[[agents]]\nuser = 'ann'\n", "agents[0].password_hash", "required"),
        ("[[webhooks]]\nname = 'cti'\n", "webhooks[0].url", "required"),
        (
            SITE.replace('"HS256"', '"none"'),
            "sites[0].identity.algorithms[0]",
            "Invalid enum value 'none'",
        ),
        (SITE + "consent = 'maybe'\n", "sites[0].consent", "Invalid enum value 'maybe'"),
        (
            "[[agents]]\nuser = 'ann'\npassword_hash = 'scrypt$0$0'\nrole = 'boss'\n",
            "agents[0].role",
            "Invalid enum value 'boss'",
        ),
        (SITE + WEBHOOK + "kinds = ['fax']\n", "webhooks[0].kinds[0]", "Invalid enum value 'fax'"),
    ],
)
def test_a_missing_key_or_a_value_outside_its_choices_names_its_path(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    error = _error(tmp_path, text)
    assert (error.key, _message(error)) == (key, message)


@pytest.mark.parametrize(
    "host",
    [
        "https://netbank.acme.example",  # a URL, not a host name
        "netbank.acme.example:8443",
        "netbank.acme.example/login",
        "*.example",  # a whole top-level domain
        "*acme.example",  # a wildcard is a whole label: "*." and a domain
        "net*.acme.example",
        "",
    ],
)
def test_an_internal_host_that_is_not_a_host_name_is_refused_naming_its_entry(
    tmp_path: Path, host: str
) -> None:
    error = _error(tmp_path, SITE + f'internal_hosts = ["netbank.acme.example", "{host}"]\n')
    assert error.key == "sites[0].internal_hosts[1]"
    assert "host name" in _message(error)


def test_a_bad_entry_of_a_map_is_named_by_its_own_key(tmp_path: Path) -> None:
    # msgspec itself reports `$.categories[...]`: the entry is found and named.
    error = _error(tmp_path, "[categories]\nloans = ['/loans*']\nHome_Loans = ['/home*']\n")
    assert error.key == "categories.Home_Loans"
    assert _message(error).startswith("Expected str matching regex")


def test_a_refused_string_is_not_echoed_because_it_may_be_a_secret(tmp_path: Path) -> None:
    text = SITE + WEBHOOK.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "sk_live_hunter2")
    error = _error(tmp_path, text)
    assert error.key == "webhooks[0].secrets[0]"
    assert "hunter2" not in str(error)


FULL = """
demo_credentials = false

[server]
host = "0.0.0.0"
port = 9001
public_url = "HTTPS://Ringback.Bank.example:443/"
workers = 2
trusted_proxies = ["10.0.0.1"]
shutdown_timeout_s = 3

[store]
redis_url = "redis://rb:pw@10.0.0.9:6379/0"
durability = "fsync"
cluster = true
replica_acks = 2

[metrics]
token_file = "{dir}/metrics-token.txt"
host = "10.0.0.5"
port = 9464

[limits]
max_body_bytes = 1000
max_events_per_batch = 50
max_event_age_s = 100
max_event_future_s = 10
batches_per_minute_per_visitor = 5
batches_per_minute_per_ip = 6
limit_loopback = true
login_attempts_per_user = 3
login_user_window_s = 4
login_attempts_per_address = 5
login_address_window_s = 6
login_concurrent_checks = 1
login_queue = 7

[learning]
click_window_s = 16
conversion_window_s = 17
learner = false

[segment]
page = "ignore"
screen = "page_view"
unmapped_tracks = "ignore"
max_body_bytes = 2000
max_message_bytes = 300
max_messages_per_batch = 9

[[segment.sources]]
name = "web"
site = "bank-a"
trust = "browser"
write_key = "public-key"
demo = false

[[segment.sources]]
name = "crm"
site = "bank-c"
trust = "server"
write_key_env = "RB_TEST_IDENTITY"

[[segment.sources]]
name = "batch"
site = "bank-d"
trust = "server"
write_key_file = "{dir}/identity.txt"

[[segment.tracks]]
event = "Loan Calculated"
type = "calc"
properties = {{ amount = "loan.amount" }}
defaults = {{ product = "loans", term_months = 12 }}

[snowplow]
page_views = "ignore"
page_pings = "heartbeat"
page_ping_interval_s = 5
unmapped_structured = "ignore"
unmapped_self_describing = "custom"
max_body_bytes = 3000
max_event_bytes = 400
max_events_per_request = 8

[[snowplow.apps]]
app_id = "web-a"
site = "bank-a"
trust = "browser"
demo = false

[[snowplow.apps]]
app_id = "backend-c"
site = "bank-c"
trust = "server"
key_env = "RB_TEST_IDENTITY"

[[snowplow.apps]]
app_id = "backend-d"
site = "bank-d"
trust = "server"
key = "inline-snowplow-key-0123"

[[snowplow.apps]]
app_id = "backend-a"
site = "bank-a"
trust = "server"
key_file = "{dir}/identity.txt"

[[snowplow.structured]]
category = "calculator"
action = "loan"
type = "calc"
properties = {{ amount = "value", term_months = "property", product = "label" }}
defaults = {{ product = "loans" }}

[[snowplow.self_describing]]
schema = "iglu:com.bank/loan_calculated/jsonschema/1-*-*"
type = "calc"
properties = {{ amount = "loan.amount" }}
defaults = {{ product = "loans", term_months = 12 }}

[profile]
anonymous_ttl_s = 11
dedupe_window_s = 12
intent_half_life_s = 13
session_gap_s = 14
presence_ttl_s = 15

[intent_weights]
page_view = 2
calc = 3.5

[categories]
loans = ["/loans*"]
none_yet = []

[rules]
dir = "{dir}/rules"

[privacy]
phone_key = "inline-phone-key-0123456789abcdef0123"
phone_key_env = "RB_TEST_PHONE_KEY"
phone_key_file = "{dir}/phone.key"

[quotes.mortgage]
rate = 4.1
label = "Fixed 10 years"
min_term_months = 60
max_term_months = 420

[quotes.personal_loan]
rate = 7

[[sites]]
key = "bank-a"
allowed_origins = ["self", "https://a.example"]
consent = "required"
honor_gpc = false
demo = false
locale = "de-CH"
currency = "CHF"
internal_hosts = ["NetBank.a.example.", "*.pay.a.example"]

[sites.identity]
algorithms = ["HS256", "ES256"]
secret_file = "{dir}/identity.txt"
public_key_file = "{dir}/key.pem"
max_lifetime_s = 600

[[sites]]
key = "bank_b"
identity = {{ algorithms = ["RS256"], public_key = "PEM-B" }}

[[sites]]
key = "bank-c"
identity = {{ secret_env = "RB_TEST_IDENTITY" }}

[[sites]]
key = "bank-d"
identity = {{ secret = "inline-identity-secret" }}

[[api_tokens]]
name = "crm"
sha256 = "{sha}"

[[api_tokens]]
token = "inline-token"

[[api_tokens]]
name = "from-env"
token_env = "RB_TEST_TOKEN"

[[api_tokens]]
name = "from-file"
token_file = "{dir}/identity.txt"

[[agents]]
user = "alice"
password_hash = "scrypt$00$00"
role = "supervisor"

[[agents]]
user = "bob"
password_hash = "scrypt$01$01"

[[webhooks]]
name = "cti"
url = "https://hooks.example/x"
secrets = ["whsec_abc"]
kinds = ["callback"]
channels = ["email", "sms"]
timeout_s = 2
max_attempts = 3

[[webhooks]]
name = "rotating"
url = "http://127.0.0.1:9/"
secrets_env = "RB_TEST_WEBHOOK"
"""


def _keys(info: mi.Type) -> set[str]:
    """Every key name the config's shape declares, at any depth."""
    if isinstance(info, mi.StructType | mi.DataclassType):
        return {f.encode_name for f in info.fields}.union(*(_keys(f.type) for f in info.fields))
    if isinstance(info, mi.VarTupleType | mi.ListType):
        return _keys(info.item_type)
    if isinstance(info, mi.DictType):
        return _keys(info.value_type)
    if isinstance(info, mi.UnionType):
        return set().union(*(_keys(t) for t in info.types))
    return set()


DECLARED = _keys(mi.type_info(ConfigFile))


def test_a_full_config_round_trips_into_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RB_TEST_IDENTITY", "env-identity-secret")
    monkeypatch.setenv("RB_TEST_TOKEN", "env-token")
    monkeypatch.setenv("RB_TEST_WEBHOOK", "whsec_one whsec_two")
    (tmp_path / "metrics-token.txt").write_text("file-metrics-token\n")
    (tmp_path / "identity.txt").write_text("file-identity-secret\n")
    (tmp_path / "key.pem").write_text("PEM-A")
    text = FULL.format(dir=tmp_path, sha="ab" * 32)
    # The config above sets every key the shape declares (so it stays full).
    used = set(re.findall(r"(?m)^(\w+) = ", text)) | set(re.findall(r"[{,] (\w+) = ", text))
    used |= {t for ts in re.findall(r"(?m)^\[\[?([\w.]+)\]", text) for t in ts.split(".")}
    assert DECLARED - used == set()
    path = tmp_path / "ringback.toml"
    path.write_text(text)

    s = load_settings(path, data_dir=tmp_path / "data")

    assert (s.host, s.port, s.workers, s.shutdown_timeout_s) == ("0.0.0.0", 9001, 2, 3.0)
    assert s.public_url == "https://ringback.bank.example"
    assert s.trusted_proxies == ("10.0.0.1",)
    assert (s.redis_url, s.durability) == ("redis://rb:pw@10.0.0.9:6379/0", "fsync")
    assert s.metrics.token is not None and s.metrics.token.reveal() == "file-metrics-token"
    assert (s.metrics.host, s.metrics.port) == ("10.0.0.5", 9464)
    assert (s.limits.max_body_bytes, s.limits.max_events_per_batch) == (1000, 50)
    assert (s.limits.limit_loopback, s.limits.login_queue) == (True, 7)
    assert s.profile.presence_ttl_s == 15 and s.profile.anonymous_ttl_s == 11
    assert (s.learning.click_window_s, s.learning.conversion_window_s) == (16, 17)
    assert s.learning.learner is False
    assert s.intent_weights == {"page_view": 2.0, "calc": 3.5}
    assert [name for name, _ in s.categories] == ["loans", "none_yet"]
    assert s.categories[0][1].match("/loans/car") and not s.categories[1][1].match("/")
    assert s.rules_dir == tmp_path / "rules"
    assert s.phone_key.reveal() == "inline-phone-key-0123456789abcdef0123"  # inline wins
    a, b, c, d = (s.sites[k] for k in ("bank-a", "bank_b", "bank-c", "bank-d"))
    assert a.allowed_origins == ("self", "https://a.example")
    assert (a.consent, a.honor_gpc, a.demo) == ("required", False, False)
    assert a.identity.algorithms == ("HS256", "ES256") and a.identity.max_lifetime_s == 600
    assert (a.identity_secret, a.identity.public_key) == ("file-identity-secret", "PEM-A")
    assert (b.identity.public_key, b.identity_secret) == ("PEM-B", None)
    assert (b.consent, b.honor_gpc, b.identity.max_lifetime_s) == ("implied", True, 86400)
    assert (a.locale, a.currency, b.locale, b.currency) == ("de-CH", "CHF", "en-GB", "EUR")
    assert a.internal_hosts == ("netbank.a.example", "*.pay.a.example")
    assert b.internal_hosts == ()
    mortgage, loan = s.quotes["mortgage"], s.quotes["personal_loan"]
    assert (mortgage.rate_pct, mortgage.label) == (4.1, "Fixed 10 years")
    assert (mortgage.min_term_months, mortgage.max_term_months) == (60, 420)
    assert (loan.rate_pct, loan.label, loan.max_term_months) == (7.0, "Personal loan", None)
    assert (c.identity_secret, d.identity_secret) == (
        "env-identity-secret",
        "inline-identity-secret",
    )
    assert [t.name for t in s.api_tokens] == ["crm", "token1", "from-env", "from-file"]
    assert s.api_tokens[0].sha256 == "ab" * 32
    assert s.api_tokens[1].matches("inline-token") and s.api_tokens[2].matches("env-token")
    assert s.api_tokens[3].matches("file-identity-secret")
    assert [(g.user, g.role) for g in s.agents] == [("alice", "supervisor"), ("bob", "agent")]
    cti, rotating = s.webhooks
    assert (cti.kinds, cti.channels, cti.timeout_s, cti.max_attempts) == (
        ("callback",),
        ("email", "sms"),
        2.0,
        3,
    )
    assert [x.reveal() for x in rotating.secrets] == ["whsec_one", "whsec_two"]
    assert (rotating.kinds, rotating.channels, rotating.max_attempts) == (
        ("callback", "notify"),
        (),
        8,
    )


def _readme_configuration() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def test_every_key_the_readme_configuration_section_names_is_declared() -> None:
    section = _readme_configuration()
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", section))
    named |= set(re.findall(r"`\[\w+\] (\w+)", section))
    assert {"public_url", "secret_env", "secret_file", "token_env"} <= named
    assert named - DECLARED == set()


def test_every_table_and_key_the_readme_sets_decodes() -> None:
    snippets = re.findall(r"`\[(\w+)\] (\w+ = [^`]+)`", _readme_configuration())
    assert snippets
    for table, assignment in snippets:
        raw = tomllib.loads(f"[{table}]\n{assignment}\n")
        msgspec.convert(raw, ConfigFile)  # raises on an unknown key or a wrong type


def test_the_demo_config_with_its_commented_options_switched_on_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo config is the annotated starting point: every option it shows in a
    comment (`# public_url = ...`) is one the engine accepts."""
    demo = (REPO / "engine" / "demo_config.toml").read_text()
    enabled, count = re.subn(r"(?m)^# (\w+ = [^#\n]*?)\s*(#.*)?$", r"\1", demo)
    assert count >= 4
    monkeypatch.setenv("RINGBACK_METRICS_TOKEN", "metrics-token")
    path = tmp_path / "ringback.toml"
    path.write_text(enabled)
    s = load_settings(path, data_dir=tmp_path)
    assert s.public_url == "https://ringback.bank.example"
    assert (s.metrics.host, s.metrics.port) == ("10.0.0.5", 9464)
    assert s.metrics.token is not None and s.metrics.token.reveal() == "metrics-token"
