"""The hub token (Node.hfTokenFile or HF_TOKEN) is sent to the hub and written nowhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.weights import MirrorServer
from tests.weights.hubgen import HubRepos

from .conftest import Box, hub_model

TOKEN = "hf_secretTOKENvalue1234567890"
WRONG = "hf_wrongTOKENvalue0987654321"


@pytest.fixture
def private_hub(repos: HubRepos) -> Iterator[MirrorServer]:
    with MirrorServer(repos.root, token=TOKEN, record=True) as server:
        yield server


def _leaks(secret: str, *texts: str, files: list[Path]) -> list[str]:
    found = [f"text #{i}" for i, text in enumerate(texts) if secret in text]
    found += [str(p) for p in files if p.is_file() and secret.encode() in p.read_bytes()]
    return found


def _state_files(box: Box) -> list[Path]:
    return [p for p in box.state.rglob("*") if p.is_file()]


def test_a_token_file_is_sent_and_never_logged_or_stored(
    box: Box, private_hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes, tmp_path: Path
) -> None:
    repos.commit("org/private", {"p.gguf": gguf_bytes})
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    box.hub_url = private_hub.url
    box.write(hub_model("m", "org/private", pin=True), hfTokenFile=str(token_file))

    with box.service() as svc:
        ready = svc.wait_phase("m", "Ready")
        texts = [json.dumps(svc.events()), json.dumps(svc.status()), json.dumps(ready)]
    texts += [svc.log_text(), box.events(), json.dumps(box.status())]

    sent = {r.authorization for r in private_hub.requests}
    assert sent == {f"Bearer {TOKEN}"}, [(r.path, r.authorization) for r in private_hub.requests]
    assert any("/resolve/" in r.path and r.status == 200 for r in private_hub.requests)
    assert _leaks(TOKEN, *texts, files=_state_files(box)) == []


def test_a_wrong_token_from_the_environment_fails_clearly_without_showing_it(
    box: Box, private_hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/private", {"p.gguf": b"p" * 1000})
    box.hub_url = private_hub.url
    box.write(hub_model("m", "org/private", pin=True))

    wrong = box.cli("apply", box.manifests.root, env={"HF_TOKEN": WRONG})

    assert wrong.code == 1
    assert "refused access to org/private@main (401): check the token" in wrong.stderr
    right = box.cli("apply", box.manifests.root, env={"HF_TOKEN": TOKEN})
    assert right.code == 0, right.output
    assert {r.authorization for r in private_hub.requests} == {f"Bearer {WRONG}", f"Bearer {TOKEN}"}
    texts = [wrong.output, right.output, box.events(), json.dumps(box.status())]
    assert _leaks(WRONG, *texts, files=_state_files(box)) == []
    assert _leaks(TOKEN, *texts, files=_state_files(box)) == []
