"""Settings: typed values from the environment, one clear line for a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meter.settings import ConfigError, Secret, Settings, documented

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_work_on_one_machine() -> None:
    s = Settings.from_env({})
    assert (s.gateway_port, s.admin_port, s.shards) == (8080, 8081, 16)
    assert s.prices_path is None and s.refund_upstream_errors is True
    assert not s.admin_token


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {"METER_SHARDS": "64", "METER_REFUND_UPSTREAM_ERRORS": "no", "METER_ADMIN_TOKEN": "t0k"}
    )
    assert s.shards == 64 and s.refund_upstream_errors is False
    assert s.admin_token.reveal() == "t0k"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METER_SHARDS", "zero"),
        ("METER_SHARDS", "0"),
        ("METER_GATEWAY_PORT", "70000"),
        ("METER_REDIS_URL", "http://x"),
        ("METER_DATABASE_URL", "mysql://x"),
        ("METER_UPSTREAM_URL", "ftp://x"),
        ("METER_REFUND_UPSTREAM_ERRORS", "maybe"),
        ("METER_PRICES", "/no/such/prices.toml"),
        ("METER_LOG_LEVEL", "loud"),
        ("METER_UPSTREAM_TIMEOUT", "-1"),
        ("METER_REDIS_URL", "rediss://h:1/0?ssl_cert_reqs=maybe"),
        ("METER_REDIS_URL", "rediss://h:1/0?ssl_check_hostname=perhaps"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert str(err.value).startswith(f"{name}=")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METER_REDIS_URL", "rediss://:hunter2@h:1/0?ssl_cert_reqs=maybe"),
        ("METER_DATABASE_URL", "mysql://meter:hunter2@h/meter"),
    ],
)
def test_a_bad_url_is_named_without_its_password(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert "hunter2" not in str(err.value) and ":***@h" in str(err.value)


def test_secret_never_reaches_a_repr() -> None:
    s = Settings.from_env({"METER_ADMIN_TOKEN": "hunter2"})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.admin_token)
    assert s.admin_token == Secret("hunter2")


def test_bad_config_stops_the_command_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meter", "migrate"],
        env={"METER_SHARDS": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "meter: configuration error: METER_SHARDS='lots':"
        " invalid literal for int() with base 10: 'lots'"
    ]


def test_portal_url_is_another_name_for_the_portal_public_url() -> None:
    assert Settings.from_env({}).portal_public_url == "http://127.0.0.1:8083"
    url = "https://billing.example.com"
    assert Settings.from_env({"METER_PORTAL_URL": url}).portal_public_url == url
    assert Settings.from_env({"METER_PORTAL_PUBLIC_URL": url}).portal_public_url == url
    both = {"METER_PORTAL_URL": url, "METER_PORTAL_PUBLIC_URL": url + " "}
    assert Settings.from_env(both).portal_public_url == url


def test_portal_url_and_its_alias_must_agree() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(
            {
                "METER_PORTAL_PUBLIC_URL": "https://a.example",
                "METER_PORTAL_URL": "https://b.example",
            }
        )
    assert str(err.value) == "METER_PORTAL_PUBLIC_URL and METER_PORTAL_URL differ: set one of them"


def test_a_bad_alias_value_names_the_alias() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"METER_PORTAL_URL": "ftp://x"})
    assert str(err.value).startswith("METER_PORTAL_URL=")


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _ in documented() if f"`{name}`" not in readme]
    assert missing == []
