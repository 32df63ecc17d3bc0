"""Daemon settings: file < environment < command line, and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE
from procpoold.config import ConfigError, load


def test_file_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text('[procpoold]\nworkers = 3\nsocket = "/tmp/from-file.sock"\nlog-level = "debug"\n')
    monkeypatch.delenv("PROCPOOL_SOCKET", raising=False)
    c = load(cfg, {})
    assert (c.workers, str(c.socket), c.log_level) == (3, "/tmp/from-file.sock", "debug")
    monkeypatch.setenv("PROCPOOL_SOCKET", "/tmp/from-env.sock")
    assert str(load(cfg, {}).socket) == "/tmp/from-env.sock"
    c = load(cfg, {"socket": Path("/tmp/from-cli.sock"), "workers": 5})
    assert (str(c.socket), c.workers) == ("/tmp/from-cli.sock", 5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("workers = 0", "workers must be between"),
        ('workers = "4"', "workers must be an integer"),
        ("bogus = 1", "unknown setting 'bogus'"),
        ('log_level = "loud"', "log_level must be one of"),
        ("workers = [", "not valid TOML"),
        ('group = "no-such-group-xyz"', "does not exist"),
        ("prefetch = 0", "prefetch must be at least 1"),
    ],
)
def test_bad_settings_name_themselves(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=fragment):
        load(cfg, {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml", {})


def test_socket_path_length_limit() -> None:
    with pytest.raises(ConfigError, match="longer than 107"):
        load(None, {"socket": Path("/tmp/" + "x" * 120)})


def test_store_switch_is_a_boolean(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("store = false\n")
    assert load(cfg, {}).store is False
    cfg.write_text('store = "no"\n')
    with pytest.raises(ConfigError, match="store must be true or false"):
        load(cfg, {})


def test_prefetch_reaches_the_pool(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("prefetch = 1\n")
    assert load(cfg, {}).pool_settings().prefetch == 1
    assert load(None, {}).pool_settings().prefetch == 64


def test_max_result_bytes_reaches_the_pool(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_result_bytes = 100000\n")
    assert load(cfg, {}).pool_settings().max_result_bytes == 100_000
    # 0 (the default) follows max_message_size: a bigger result could not be sent in a reply.
    assert load(None, {}).pool_settings().max_result_bytes == DEFAULT_MAX_MESSAGE_SIZE
    for bad in ("-1", str(2**41)):
        cfg.write_text(f"max_result_bytes = {bad}\n")
        with pytest.raises(ConfigError, match="max_result_bytes"):
            load(cfg, {})
