"""A container killed by hand, and the daemon going away and coming back."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.runtimes.base import RuntimeUnavailable
from reconciler.runtimes.docker_events import ContainerEvent, ContainerEvents
from tests.docker_env import IMAGE, TEST_LABEL


async def next_event(events: ContainerEvents, timeout: float = 20.0) -> ContainerEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def test_a_killed_container_is_drift_and_an_event(
    runtime, make_spec, docker_client, docker_daemon
):
    async with ContainerEvents(docker_daemon.host) as events:
        await events.wait_connected()
        instance = await runtime.start(make_spec("tiny"))
        stranger = docker_client.containers.run(
            IMAGE, ["sleep", "300"], labels={TEST_LABEL: "true"}, network_mode="none", detach=True
        )
        stranger.kill()  # not managed: no event for it
        docker_client.containers.get(instance.ident).kill()

        event = await next_event(events)

    assert (event.model, event.action, event.container_id) == ("tiny", "die", instance.ident)
    assert event.exit_code == 137
    (listed,) = await runtime.list()
    assert listed.ident == instance.ident and listed.state == "exited"
    assert listed.exit_reason.startswith("exited with code 137")
    assert "listening on" in listed.exit_reason  # the log tail comes with it
    assert listed.endpoint is None


async def test_daemon_down_is_a_clear_error_and_the_runtime_recovers(
    runtime, make_spec, docker_daemon
):
    if not docker_daemon.owned:
        pytest.skip("the daemon is not ours to stop (MODELPLANE_TEST_DOCKER_HOST)")
    instance = await runtime.start(make_spec("tiny"))
    events = ContainerEvents(docker_daemon.host, reconnect_initial=0.2, reconnect_max=0.5)
    async with events:
        await events.wait_connected()

        docker_daemon.stop()  # dockerd stops its containers on the way down
        message = f"docker daemon at {docker_daemon.host} is unreachable"
        with pytest.raises(RuntimeUnavailable, match=message):
            await runtime.list()
        with pytest.raises(RuntimeUnavailable, match=message):
            await runtime.start(make_spec("tiny"))
        with pytest.raises(RuntimeUnavailable, match=message):
            await runtime.ping()

        docker_daemon.start()
        (listed,) = await runtime.list()
        assert listed.ident == instance.ident and listed.state == "exited"
        again = await runtime.start(make_spec("tiny"))
        assert await runtime.healthy(again)

        # the event stream reconnected by itself
        await runtime.stop(again, grace=5)
        event = await next_event(events)
        while event.container_id != again.ident:  # the shutdown's own events may come first
            event = await next_event(events)
        assert event.model == "tiny" and event.action in ("stop", "die")


async def test_closing_the_event_stream_ends_a_waiting_consumer(docker_daemon):
    events = ContainerEvents(docker_daemon.host)
    events.start()
    await events.wait_connected()
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)

    await events.aclose()

    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
