"""A config file that is not UTF-8, a [procpoold] that is not a table, an integer TOML cannot
convert and a NUL byte in a path are one-line errors naming the file, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpoold.config import ConfigError, load


@pytest.mark.parametrize(
    "content",
    [
        b"workers = 2\n\xff\n",
        b"procpoold = 5\n",
        b"workers = 1" + b"0" * 5000 + b"\n",
        b'state_dir = "/tmp/x\\u0000y"\n',
        b'[procpoold]\nsocket = "/tmp/s\\u0000.sock"\n',
        b'group = "g\\u0000"\n',
    ],
)
def test_a_bad_config_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load(cfg, {})
    assert str(cfg) in str(info.value) or "NUL" in str(info.value)
    assert len(str(info.value)) < 400
