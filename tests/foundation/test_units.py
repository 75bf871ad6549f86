"""Durations, sizes and listen addresses as people write them in manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.manifests.manifest_set import load
from reconciler.units import (
    format_duration,
    format_size,
    is_loopback,
    parse_duration,
    parse_listen,
    parse_size,
)
from tests.helpers.manifests import ManifestDir, doc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1d", 86400),
        ("0", 0),
        ("10", 10),
        (0, 0),
        (42, 42),
        ("1.5m", 90),
        (" 10s ", 10),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10 minutes", "1h 30m", "5x", "-5s", -1, True, None])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("6GiB", 6 * 2**30),
        ("24GB", 24 * 10**9),
        ("1.5GiB", 3 * 2**29),
        ("100", 100),
        (100, 100),
        ("2 kib", 2048),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "6GX", "-1GiB", "six GiB", -1, 1.5, False, None])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (60, "1m"),
        (900, "15m"),
        (5400, "1h30m"),
        (5430, "1h30m"),
        (183600, "2d3h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 1536, 14.2 * 2**30)] == ["512 B", "1.5 KiB", "14.2 GiB"]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8400", ("127.0.0.1", 8400)),
        ("[::1]:8400", ("::1", 8400)),
        (":8400", ("0.0.0.0", 8400)),  # every interface
        ("localhost:8400", ("localhost", 8400)),
        ("gpu-box-1.lan:80", ("gpu-box-1.lan", 80)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),  # the system picks a port (modelplane mirror)
    ],
)
def test_parse_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8400", "is not HOST:PORT"),
        ("localhost", "is not HOST:PORT"),
        ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("::1:8400", "in brackets, [::1]:8400"),
        ("[localhost]:8400", "'localhost' is not an IPv6 address"),
        ("my box:8400", "'my box' is not an IP address or host name"),
    ],
)
def test_parse_listen_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_listen(text)


def test_is_loopback() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "gpu-box")] == [False] * 4


def test_a_bad_node_listen_is_a_manifest_error(tmp_path: Path) -> None:
    manifests = ManifestDir(tmp_path)
    manifests.write("node.yaml", doc("Node", "box", {"listen": "::1:8400"}))
    (error,) = load(tmp_path).errors
    assert (error.line, error.kind, error.name) == (4, "Node", "box")
    assert "spec.listen: listen address '::1:8400': write an IPv6 address in brackets" in str(error)
    manifests.write("node.yaml", doc("Node", "box", {"listen": "127.0.0.1:0"}))
    (error,) = load(tmp_path).errors
    assert "spec.listen: listen address '127.0.0.1:0': the proxy needs a fixed port" in str(error)
    manifests.write("node.yaml", doc("Node", "box", {"listen": "[::1]:9000"}))
    assert load(tmp_path).node.listen == "[::1]:9000"
