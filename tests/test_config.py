"""Tests for the service configuration: defaults, file and environment layers, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.config import ConfigError, ServiceConfig, env_var_name, load_config

API_KEY = "sk-or-v1-very-secret-key"
JWT_SECRET = "jwt-signing-secret-value-of-32-bytes-at-least"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "troupe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load_config(env={})

    assert config == ServiceConfig()
    assert config.store == "sqlite"
    assert config.data_dir == Path("data")
    assert config.upstream == "simulated"
    assert config.upstream_base_url == "https://openrouter.ai/api/v1"
    assert config.upstream_api_key is None
    assert config.allow_user_api_keys is True
    assert config.simulated_tokens_per_second == 20.0
    assert config.upstream_idle_timeout == 60.0
    assert config.upstream_connect_timeout == 10.0
    assert config.max_answer_chars == 10_000_000
    assert config.max_concurrent_jobs == 20
    assert config.max_jobs_per_user == 5
    assert config.job_timeout == 300.0
    assert config.retention == 3600.0
    assert config.sweep_interval == 60.0
    assert config.drain_timeout == 10.0
    assert config.flush_interval == 0.05
    assert config.flush_max_deltas == 64
    assert config.follower_buffer == 256
    assert config.upstream_read_interval == 0.1
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.http_keep_alive_timeout == 5.0
    assert (config.http_max_header_bytes, config.http_max_headers) == (16_384, 100)
    assert (config.http_body_timeout, config.http_body_min_rate) == (20.0, 500)
    assert (config.http_send_timeout, config.http_send_buffer) == (30.0, 262_144)
    assert config.jwt_secret is None
    assert config.auth_mode == "jwt"
    assert config.token_algorithms == ("HS256",)
    assert config.jwt_cookie is None
    assert (config.user_claim, config.workspace_claim) == ("sub", "workspace")
    assert config.jwt_jwks_refetch_interval == 5.0
    assert config.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert config.max_body_bytes == 1_048_576
    assert config.log_level == "info"


def test_environment_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPE_PORT", "9123")

    assert load_config().port == 9123


def test_toml_file_values_are_loaded(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        store = "memory"
        data_dir = "var/troupe"
        upstream_base_url = "http://127.0.0.1:9999/v1"
        allow_user_api_keys = true
        max_concurrent_jobs = 3
        job_timeout = 30          # an integer is accepted for a float field
        flush_interval = 0.2
        port = 0
        log_level = "debug"
        """,
    )

    config = load_config(path, env={})

    assert config.store == "memory"
    assert config.data_dir == Path("var/troupe")
    assert config.upstream_base_url == "http://127.0.0.1:9999/v1"
    assert config.allow_user_api_keys is True
    assert config.max_concurrent_jobs == 3
    assert config.job_timeout == 30.0
    assert isinstance(config.job_timeout, float)
    assert config.flush_interval == 0.2
    assert config.port == 0
    assert config.log_level == "debug"
    assert config.max_jobs_per_user == 5  # untouched fields keep their defaults


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'store = "memory"\nmax_concurrent_jobs = 3\nhost = "0.0.0.0"\n')
    env = {
        "TROUPE_STORE": "sqlite",
        "TROUPE_MAX_CONCURRENT_JOBS": "7",
        "TROUPE_JOB_TIMEOUT": "12.5",
        "TROUPE_DATA_DIR": "/srv/troupe",
        "TROUPE_ALLOW_USER_API_KEYS": "yes",
        "TROUPE_LOG_LEVEL": "WARNING",
    }

    config = load_config(path, env=env)

    assert config.store == "sqlite"
    assert config.max_concurrent_jobs == 7
    assert config.job_timeout == 12.5
    assert config.data_dir == Path("/srv/troupe")
    assert config.allow_user_api_keys is True
    assert config.log_level == "warning"
    assert config.host == "0.0.0.0"  # set only in the file


def test_upstream_limits_come_from_the_environment() -> None:
    env = {"TROUPE_UPSTREAM_CONNECT_TIMEOUT": "2.5", "TROUPE_MAX_ANSWER_CHARS": "50000"}

    config = load_config(env=env)

    assert config.upstream_connect_timeout == 2.5
    assert config.max_answer_chars == 50_000


def test_the_sqlite_size_cap_is_off_by_default_and_at_least_a_mebibyte() -> None:
    assert ServiceConfig().sqlite_max_bytes == 0
    assert load_config(env={"TROUPE_SQLITE_MAX_BYTES": "2097152"}).sqlite_max_bytes == 2_097_152
    assert ServiceConfig(sqlite_max_bytes=1_048_576).sqlite_max_bytes == 1_048_576
    with pytest.raises(ConfigError, match=r"TROUPE_SQLITE_MAX_BYTES: must be 0 or >= 1048576"):
        load_config(env={"TROUPE_SQLITE_MAX_BYTES": "4096"})
    with pytest.raises(ConfigError, match=r"sqlite_max_bytes: must be 0 or >= 1048576 \(got -1\)"):
        ServiceConfig(sqlite_max_bytes=-1)


def test_http_limits_come_from_the_environment() -> None:
    env = {
        "TROUPE_HTTP_KEEP_ALIVE_TIMEOUT": "2.5",
        "TROUPE_HTTP_MAX_HEADER_BYTES": "8192",
        "TROUPE_HTTP_MAX_HEADERS": "50",
        "TROUPE_HTTP_BODY_TIMEOUT": "10",
        "TROUPE_HTTP_BODY_MIN_RATE": "1000",
        "TROUPE_HTTP_SEND_TIMEOUT": "12.5",
        "TROUPE_HTTP_SEND_BUFFER": "65536",
    }

    config = load_config(env=env)

    assert config.http_keep_alive_timeout == 2.5
    assert (config.http_max_header_bytes, config.http_max_headers) == (8192, 50)
    assert (config.http_body_timeout, config.http_body_min_rate) == (10.0, 1000)
    assert (config.http_send_timeout, config.http_send_buffer) == (12.5, 65_536)


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_concurrent_jobs = 3\n")

    config = load_config(path, env={"TROUPE_MAX_CONCURRENT_JOBS": "", "TROUPE_STORE": ""})

    assert config.max_concurrent_jobs == 3
    assert config.store == "sqlite"


def test_openrouter_key_is_honoured_and_selects_openai_upstream() -> None:
    config = load_config(env={"OPENROUTER_API_KEY": API_KEY})

    assert config.upstream_api_key == API_KEY
    assert config.upstream == "openai"


def test_api_key_in_file_selects_openai_upstream(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'upstream_api_key = "{API_KEY}"\n')

    config = load_config(path, env={})

    assert config.upstream_api_key == API_KEY
    assert config.upstream == "openai"


def test_explicit_simulated_upstream_in_file_wins_over_api_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream = "simulated"\n')

    config = load_config(path, env={"OPENROUTER_API_KEY": API_KEY})

    assert config.upstream == "simulated"
    assert config.upstream_api_key == API_KEY


def test_explicit_simulated_upstream_in_environment_wins_over_api_key() -> None:
    config = load_config(env={"TROUPE_UPSTREAM": "simulated", "OPENROUTER_API_KEY": API_KEY})

    assert config.upstream == "simulated"


def test_troupe_api_key_beats_openrouter_api_key() -> None:
    config = load_config(
        env={"TROUPE_UPSTREAM_API_KEY": API_KEY, "OPENROUTER_API_KEY": "sk-other-key"}
    )

    assert config.upstream_api_key == API_KEY
    assert config.upstream == "openai"


def test_upstream_base_url_alone_selects_openai_upstream(tmp_path: Path) -> None:
    from_env = load_config(env={"TROUPE_UPSTREAM_BASE_URL": "http://127.0.0.1:9999/v1"})
    path = write_toml(tmp_path, 'upstream_base_url = "http://127.0.0.1:9999/v1"\n')
    from_file = load_config(path, env={})

    for config in (from_env, from_file):
        assert config.upstream == "openai"
        assert config.upstream_api_key is None


def test_list_settings_from_the_environment_are_comma_separated() -> None:
    config = load_config(
        env={
            "TROUPE_JWT_JWKS_URL": "https://auth.example.test/.well-known/jwks.json",
            "TROUPE_JWT_ALGORITHMS": " RS256, ES256 ,,",
            "TROUPE_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
        }
    )

    assert config.jwt_algorithms == ("RS256", "ES256")
    assert config.token_algorithms == ("RS256", "ES256")
    assert config.trusted_proxies == ("10.0.0.0/8", "fd00::/8")


def test_a_public_key_or_jwks_defaults_to_public_key_algorithms() -> None:
    config = load_config(env={"TROUPE_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----..."})

    assert config.jwt_algorithms == ()
    assert config.token_algorithms == ("RS256", "ES256")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TROUPE_JWT_ALGORITHMS": "RS999"},
            "TROUPE_JWT_ALGORITHMS: 'RS999' is not one of ES256, ES384, ES512, EdDSA, HS256,",
        ),
        (
            {"TROUPE_JWT_ALGORITHMS": "HS256", "TROUPE_JWT_JWKS_URL": "https://a.test/jwks"},
            "TROUPE_JWT_ALGORITHMS: HMAC algorithms cannot be used with a public key or JWKS",
        ),
        (
            {"TROUPE_JWT_ALGORITHMS": "RS256"},
            "TROUPE_JWT_ALGORITHMS: public-key algorithms need jwt_public_key or jwt_jwks_url",
        ),
        (
            {"TROUPE_JWT_PUBLIC_KEY": "pem", "TROUPE_JWT_JWKS_URL": "https://a.test/jwks"},
            "TROUPE_JWT_JWKS_URL: set jwt_public_key or jwt_jwks_url, not both",
        ),
        (
            {"TROUPE_JWT_JWKS_URL": "a.test/jwks"},
            "TROUPE_JWT_JWKS_URL: must be an http:// or https:// URL (got 'a.test/jwks')",
        ),
        (
            {"TROUPE_TRUSTED_PROXIES": "10.0.0.0/8,banana"},
            "TROUPE_TRUSTED_PROXIES: must be IP addresses or CIDR networks (got 'banana')",
        ),
        (
            {"TROUPE_AUTH_MODE": "cookies"},
            "TROUPE_AUTH_MODE: must be one of 'jwt', 'trusted_headers' (got 'cookies')",
        ),
        (
            {"TROUPE_JWT_COOKIE": "__session;"},
            "TROUPE_JWT_COOKIE: must be an HTTP header name (got '__session;')",
        ),
        (
            {"TROUPE_JWT_JWKS_REFETCH_INTERVAL": "0"},
            "TROUPE_JWT_JWKS_REFETCH_INTERVAL: must be > 0 (got 0.0)",
        ),
    ],
)
def test_auth_settings_that_are_wrong_or_do_not_fit_together_name_the_variable(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)

    assert str(caught.value).startswith(expected)
    assert caught.value.setting == expected.partition(":")[0]


def test_openrouter_api_key_beats_file_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'upstream_api_key = "sk-file-key"\n')

    config = load_config(path, env={"OPENROUTER_API_KEY": API_KEY})

    assert config.upstream_api_key == API_KEY


@pytest.mark.parametrize(
    ("toml", "setting", "fragment"),
    [
        ("max_concurrent_jobs = 0", "max_concurrent_jobs", "must be >= 1 (got 0)"),
        ("max_jobs_per_user = -2", "max_jobs_per_user", "must be >= 1 (got -2)"),
        ("flush_max_deltas = 0", "flush_max_deltas", "must be >= 1 (got 0)"),
        ("follower_buffer = 0", "follower_buffer", "must be >= 1 (got 0)"),
        ("max_body_bytes = 0", "max_body_bytes", "must be >= 1 (got 0)"),
        ("job_timeout = 0", "job_timeout", "must be > 0 (got 0.0)"),
        ("retention = -1.5", "retention", "must be > 0 (got -1.5)"),
        ("sweep_interval = 0.0", "sweep_interval", "must be > 0 (got 0.0)"),
        ("flush_interval = nan", "flush_interval", "must be > 0 (got nan)"),
        ("upstream_idle_timeout = 0", "upstream_idle_timeout", "must be > 0"),
        ("http_keep_alive_timeout = 0", "http_keep_alive_timeout", "must be > 0 (got 0.0)"),
        ("http_max_header_bytes = 100", "http_max_header_bytes", "must be >= 1024 (got 100)"),
        ("http_max_headers = 0", "http_max_headers", "must be >= 1 (got 0)"),
        ("http_body_timeout = -1", "http_body_timeout", "must be > 0 (got -1.0)"),
        ("http_body_min_rate = 0", "http_body_min_rate", "must be >= 1 (got 0)"),
        ("http_send_timeout = 0", "http_send_timeout", "must be > 0 (got 0.0)"),
        ("http_send_buffer = 1024", "http_send_buffer", "must be >= 4096 (got 1024)"),
        ("upstream_connect_timeout = 0", "upstream_connect_timeout", "must be > 0 (got 0.0)"),
        ("max_answer_chars = 0", "max_answer_chars", "must be >= 1 (got 0)"),
        ("simulated_tokens_per_second = 0", "simulated_tokens_per_second", "must be > 0"),
        ("drain_timeout = -1", "drain_timeout", "must be >= 0 (got -1.0)"),
        ("port = 70000", "port", "must be between 0 and 65535 (got 70000)"),
        ("port = -1", "port", "must be between 0 and 65535 (got -1)"),
        (
            "store = 'postgres'",
            "store",
            "must be one of 'memory', 'sqlite', 'redis' (got 'postgres')",
        ),
        ("upstream = 'anthropic'", "upstream", "'simulated', 'openai' (got 'anthropic')"),
        ("log_level = 'loud'", "log_level", "'debug', 'info', 'warning', 'error' (got 'loud')"),
        ("upstream_base_url = 'openrouter.ai'", "upstream_base_url", "http:// or https://"),
        ("host = ''", "host", "must not be empty"),
        ("port = '8000'", "port", "expected an integer (got '8000')"),
        ("port = true", "port", "expected an integer (got True)"),
        ("job_timeout = 'soon'", "job_timeout", "expected a number (got 'soon')"),
        ("allow_user_api_keys = 'yes'", "allow_user_api_keys", "expected true or false"),
        ("host = 127", "host", "expected a string (got 127)"),
        ("data_dir = 5", "data_dir", "expected a path string (got 5)"),
    ],
)
def test_invalid_file_value_names_its_field_and_value(
    tmp_path: Path, toml: str, setting: str, fragment: str
) -> None:
    path = write_toml(tmp_path, toml + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    message = str(caught.value)
    assert message.startswith(f"{setting}: ")
    assert fragment in message
    assert caught.value.setting == setting


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TROUPE_JOB_TIMEOUT", "abc", "TROUPE_JOB_TIMEOUT: not a number: 'abc'"),
        ("TROUPE_PORT", "80x", "TROUPE_PORT: not an integer: '80x'"),
        ("TROUPE_PORT", "1.5", "TROUPE_PORT: not an integer: '1.5'"),
        ("TROUPE_MAX_CONCURRENT_JOBS", "0", "TROUPE_MAX_CONCURRENT_JOBS: must be >= 1 (got 0)"),
        ("TROUPE_RETENTION", "-5", "TROUPE_RETENTION: must be > 0 (got -5.0)"),
        ("TROUPE_MAX_ANSWER_CHARS", "1e6", "TROUPE_MAX_ANSWER_CHARS: not an integer: '1e6'"),
        (
            "TROUPE_STORE",
            "postgres",
            "TROUPE_STORE: must be one of 'memory', 'sqlite', 'redis' (got 'postgres')",
        ),
    ],
)
def test_invalid_environment_value_names_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={var: value})

    assert str(caught.value) == expected
    assert caught.value.setting == var


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("Yes", True), ("0", False), ("false", False), ("NO", False)],
)
def test_boolean_environment_words(text: str, expected: bool) -> None:
    config = load_config(env={"TROUPE_ALLOW_USER_API_KEYS": text})

    assert config.allow_user_api_keys is expected


@pytest.mark.parametrize("text", ["maybe", "on", "2", "tru"])
def test_bad_boolean_environment_value_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TROUPE_ALLOW_USER_API_KEYS": text})

    message = str(caught.value)
    assert message.startswith("TROUPE_ALLOW_USER_API_KEYS: not a boolean")
    assert repr(text) in message


def test_unknown_toml_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "foo = 1\nport = 9000\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(caught.value) == f"unknown setting 'foo' in {path}"
    assert caught.value.setting == "foo"


def test_nested_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[troupe]\nport = 9000\n")

    with pytest.raises(ConfigError, match="unknown setting 'troupe'"):
        load_config(path, env={})


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 'x'\nhost = 1\nbogus = 2\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    message = str(caught.value)
    assert "port: expected an integer (got 'x')" in message
    assert "host: expected a string (got 1)" in message
    assert "unknown setting 'bogus'" in message


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_malformed_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = = 3\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    assert str(caught.value).startswith(f"{path}: not valid TOML")


def test_directory_as_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, env={})


def test_secrets_are_absent_from_repr_and_str(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{JWT_SECRET}"\n')

    config = load_config(path, env={"OPENROUTER_API_KEY": API_KEY})

    assert config.upstream_api_key == API_KEY
    assert config.jwt_secret == JWT_SECRET
    for text in (repr(config), str(config)):
        assert API_KEY not in text
        assert JWT_SECRET not in text
        assert "upstream_api_key" not in text
        assert "jwt_secret" not in text
        assert "max_concurrent_jobs=20" in text


def test_secret_of_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "upstream_api_key = 1234567890123\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})

    message = str(caught.value)
    assert message == "upstream_api_key: expected a string (got a value of type int)"
    assert "1234567890123" not in message


def test_blank_secret_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TROUPE_JWT_SECRET": "   "})

    assert str(caught.value) == "TROUPE_JWT_SECRET: must not be empty when set"


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match=r"^max_concurrent_jobs: must be >= 1 \(got 0\)$"):
        ServiceConfig(max_concurrent_jobs=0)


def test_config_is_frozen() -> None:
    config = ServiceConfig()

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_with_overrides_returns_changed_copy() -> None:
    config = ServiceConfig()

    changed = config.with_overrides(port=0, store="memory", data_dir=Path("/srv/troupe-data"))

    assert changed.port == 0
    assert changed.store == "memory"
    assert changed.data_dir == Path("/srv/troupe-data")
    assert changed.max_concurrent_jobs == config.max_concurrent_jobs
    assert config.port == 8000  # the original is untouched


def test_with_overrides_keeps_secrets() -> None:
    config = ServiceConfig(upstream_api_key=API_KEY, jwt_secret=JWT_SECRET)

    changed = config.with_overrides(port=0)

    assert changed.upstream_api_key == API_KEY
    assert changed.jwt_secret == JWT_SECRET


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_jobs_per_user": 0}, "max_jobs_per_user: must be >= 1 (got 0)"),
        ({"port": "80"}, "port: expected an integer (got '80')"),
        ({"flush_interval": -0.1}, "flush_interval: must be > 0 (got -0.1)"),
        ({"no_such_field": 1}, "unknown setting 'no_such_field'"),
    ],
)
def test_with_overrides_validates(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceConfig().with_overrides(**changes)

    assert str(caught.value) == expected


def test_env_var_name_follows_field_name() -> None:
    assert env_var_name("job_timeout") == "TROUPE_JOB_TIMEOUT"
    for field in attrs.fields(ServiceConfig):
        assert env_var_name(field.name) == "TROUPE_" + field.name.upper()


@given(
    max_concurrent_jobs=st.integers(min_value=1, max_value=10**9),
    port=st.integers(min_value=0, max_value=65535),
    job_timeout=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
    drain_timeout=st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    allow_user_api_keys=st.booleans(),
)
def test_valid_values_round_trip_through_environment(
    max_concurrent_jobs: int,
    port: int,
    job_timeout: float,
    drain_timeout: float,
    allow_user_api_keys: bool,
) -> None:
    expected = ServiceConfig(
        max_concurrent_jobs=max_concurrent_jobs,
        port=port,
        job_timeout=job_timeout,
        drain_timeout=drain_timeout,
        allow_user_api_keys=allow_user_api_keys,
    )
    env = {
        "TROUPE_MAX_CONCURRENT_JOBS": str(max_concurrent_jobs),
        "TROUPE_PORT": str(port),
        "TROUPE_JOB_TIMEOUT": repr(job_timeout),
        "TROUPE_DRAIN_TIMEOUT": repr(drain_timeout),
        "TROUPE_ALLOW_USER_API_KEYS": "true" if allow_user_api_keys else "false",
    }

    assert load_config(env=env) == expected


def test_a_short_jwt_secret_is_refused_without_being_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TROUPE_JWT_SECRET": "too-short-secret"})
    assert "at least 32 bytes" in str(caught.value)
    assert "too-short-secret" not in str(caught.value)


@pytest.mark.parametrize(("algorithm", "needed"), [("HS384", 48), ("HS512", 64)])
def test_a_jwt_secret_shorter_than_its_hash_is_refused(algorithm: str, needed: int) -> None:
    secret = "s" * (needed - 1)
    env = {"TROUPE_JWT_SECRET": secret, "TROUPE_JWT_ALGORITHMS": algorithm}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert f"at least {needed} bytes" in str(caught.value)
    assert caught.value.setting == "TROUPE_JWT_SECRET"
    assert secret not in str(caught.value)
    assert load_config(env={**env, "TROUPE_JWT_SECRET": "s" * needed}).jwt_algorithms == (
        algorithm,
    )
