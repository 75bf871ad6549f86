"""The token reaches the hub, and nothing else: no log line, no error, no result, no output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub.utils import logging as hf_logging

from reconciler.weights import HubError, HubSettings, MirrorServer, TokenFileError, fetch, resolve

from .hubgen import HubRepos, config_bytes, safetensors_bytes

TOKEN = "hf_modelplaneTestSecret0123456789abcdef"


@pytest.fixture
def private_hub(repos: HubRepos) -> Iterator[MirrorServer]:
    repos.commit(
        "org/private", {"config.json": config_bytes(), "m.safetensors": safetensors_bytes(9)}
    )
    with MirrorServer(repos.root, token=TOKEN, record=True) as server:
        yield server


@pytest.fixture
def loud_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, huggingface_hub's included, captured."""
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    hf_logging.get_logger().propagate = True
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        hf_logging.set_verbosity(before)


def test_token_from_file_is_sent_and_never_shown(
    cache: Path,
    tmp_path: Path,
    private_hub: MirrorServer,
    loud_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "hf-token"
    token_file.write_text(f"{TOKEN}\n")
    settings = HubSettings.from_env(token_file, environ={"HF_ENDPOINT": private_hub.url})

    result = fetch(cache, "org/private", "main", None, settings)

    assert len(result.downloaded) == 2
    assert private_hub.requests
    assert {r.authorization for r in private_hub.requests} == {f"Bearer {TOKEN}"}
    out, err = capfd.readouterr()
    shown = [loud_logs.text, out, err, repr(result), repr(settings), str(result.events())]
    assert "Request" in loud_logs.text  # huggingface_hub's debug lines were captured
    assert not [text for text in shown if TOKEN in text]


def test_hf_token_from_the_environment(private_hub: MirrorServer, cache: Path) -> None:
    settings = HubSettings.from_env(environ={"HF_ENDPOINT": private_hub.url, "HF_TOKEN": TOKEN})
    assert resolve(cache, "org/private", "main", None, settings).commit


def test_a_refused_token_is_a_clear_error_without_the_token(
    cache: Path, private_hub: MirrorServer, loud_logs: pytest.LogCaptureFixture
) -> None:
    wrong = TOKEN[::-1]
    settings = HubSettings(endpoint=private_hub.url, token=wrong)

    with pytest.raises(HubError, match=r"refused access to org/private@main \(401\)") as err:
        fetch(cache, "org/private", "main", None, settings)

    assert wrong not in str(err.value) and wrong not in loud_logs.text


def test_no_token_means_no_authorization_header(
    cache: Path,
    settings: HubSettings,
    hub: MirrorServer,
    repos: HubRepos,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's implicit token must not be used
    repos.commit("org/public", {"config.json": config_bytes()})

    fetch(cache, "org/public", "main", None, settings)

    assert {r.authorization for r in hub.requests} == {None}


def test_unreadable_token_file_names_the_file_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"cannot read hfTokenFile .*missing"):
        HubSettings.from_env(tmp_path / "missing", environ={})
