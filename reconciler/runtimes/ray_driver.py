"""The Ray driver: a child process of modelplane that holds the connection to the Ray cluster.

Why a process of its own: a Ray driver whose cluster goes away is terminated by Ray itself (the
core worker exits the whole process once the GCS has been unreachable for a while), and a Ray
Client whose server goes away starts a fresh local cluster on the next call (auto-init). Neither
may happen to the service that routes every other model. So modelplane runs this module as
``python -m reconciler.runtimes.ray_driver ADDRESS NAMESPACE``, talks to it over its stdin and
stdout (:mod:`reconciler.runtimes.ray_link` frames), and starts a new one when it dies: a cluster
that cannot be reached then looks exactly like a docker daemon that is down.

Each request runs in a thread of its own, so a start that waits minutes for an engine never
holds up listing or logs. One thread keeps a ``wait_exit`` call pending on every actor: when it
returns (the engine exited) or fails (the actor or its node died), the driver keeps a record of
why (until the controller cleans up) and tells the controller at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .ray_actor import PROTOCOL, BackendSpec, ModelBackend
from .ray_link import read_frame, write_frame
from .ray_nodes import node_names

CALL_TIMEOUT = 5.0  # seconds for an actor's describe/logs answer
CREATE_TIMEOUT = 60.0  # seconds for Ray to place and create an actor
PROBE_TIMEOUT = 30.0  # seconds for a node's GPU probe
NAME_RELEASE = 15.0  # seconds to wait for a killed actor's name to become free


@dataclass(frozen=True)
class StartRequest:
    """Where and with what Ray resources to start one model's actor."""

    spec: BackendSpec
    node_id: str | None  # hard node affinity; None lets Ray choose
    num_gpus: float = 0.0


class Driver:
    """What the controller asks of the cluster; every method is called from its own thread."""

    def __init__(self, namespace: str, emit: Callable[[dict[str, Any]], None]) -> None:
        import ray

        self.ray = ray
        self.namespace = namespace
        self.emit = emit  # unsolicited messages to the controller (an actor exited or died)
        self.remote_backend = ray.remote(ModelBackend)
        self._lock = threading.Lock()
        self._watches: dict[str, tuple[str, Any]] = {}  # model -> (actor id, wait_exit ref)
        self._exits: dict[str, dict[str, Any]] = {}  # model -> its last description, exited
        self._last: dict[str, dict[str, Any]] = {}  # model -> its last description
        self._gpus: dict[str, list[dict[str, Any]]] = {}  # node id -> NVML GPUs (probed once)
        threading.Thread(target=self._watch_exits, name="watch-exits", daemon=True).start()

    # --- listing ----------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every modelplane actor's description; actors that did not answer in time appear as
        last seen (or ``unknown``), and ones that died as ``exited`` with the cause."""
        ray = self.ray
        pending: dict[str, Any] = {}
        for name in ray.util.list_named_actors():
            with contextlib.suppress(ValueError):  # died between the two calls
                pending[name] = ray.get_actor(name).describe.remote()
        found: dict[str, dict[str, Any]] = {}
        refs = list(pending.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CALL_TIMEOUT) if refs else ([], [])
        for name, ref in pending.items():
            if ref in ready:
                with contextlib.suppress(ray.exceptions.RayError):
                    found[name] = ray.get(ref)
                    continue
            with self._lock:
                last = self._last.get(name)
            found[name] = last or {"model": name, "state": "unknown", "protocol": PROTOCOL}
        with self._lock:
            self._last.update({n: d for n, d in found.items() if d.get("state") != "unknown"})
            for name, record in self._exits.items():
                live = found.get(name)
                if live is None or live.get("actor_id") == record.get("actor_id"):
                    found[name] = record
        names = node_names(self._node_records())
        for name, description in found.items():
            if description.get("state") in ("starting", "running"):
                self._ensure_watch(name, description)
            node_id = description.get("node_id") or ""
            description["node"] = names.get(node_id, node_id[:12])
        return sorted(found.values(), key=lambda d: d["model"])

    def _node_records(self) -> list[dict[str, Any]]:
        return [
            {
                "id": n["NodeID"],
                "ip": n.get("NodeManagerAddress", ""),
                "alive": bool(n.get("Alive")),
                "labels": dict(n.get("Labels") or {}),
                "resources": dict(n.get("Resources") or {}),
                "death": n.get("DeathReasonMessage") or "",
            }
            for n in self.ray.nodes()
        ]

    def nodes(self, probe: Callable[[], list[dict[str, Any]]] | None) -> list[dict[str, Any]]:
        """Ray's view of every node; with ``probe``, the GPUs it reports on each node that has
        some (run there once per node: NVML sizes do not change)."""
        nodes = self._node_records()
        todo = [
            n["id"]
            for n in nodes
            if probe and n["alive"] and n["resources"].get("GPU") and n["id"] not in self._gpus
        ]
        if probe and todo:
            remote = self.ray.remote(probe)
            refs = {node_id: self._on_node(remote, node_id).remote() for node_id in todo}
            for node_id, ref in refs.items():
                try:
                    self._gpus[node_id] = self.ray.get(ref, timeout=PROBE_TIMEOUT)
                except Exception:  # no NVML there, or modelplane missing: the labels decide
                    self._gpus[node_id] = []
        for node in nodes:
            node["gpus"] = self._gpus.get(node["id"], [])
        return nodes

    @staticmethod
    def _on_node(remote: Any, node_id: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return remote.options(num_cpus=0, scheduling_strategy=strategy)

    # --- starting and stopping --------------------------------------------------------------

    def start(self, request: StartRequest, ready_within: float | None) -> dict[str, Any]:
        """Create the actor where asked, start the engine, and wait until it is ready.

        Returns its description; on failure, ``{"error": ..., "permanent": bool}`` after the
        actor is killed (nothing is left behind)."""
        ray = self.ray
        name = request.spec.model
        self._release(name)
        options: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "lifetime": "detached",
            "num_cpus": 0,
            "num_gpus": request.num_gpus,
            "max_restarts": 0,  # modelplane reschedules, with its own placement and backoff
        }
        if request.node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                request.node_id, soft=False
            )
        where = f"node {request.node_id[:12]}" if request.node_id else "the cluster"
        handle = self.remote_backend.options(**options).remote(request.spec)
        try:
            ray.get(handle.describe.remote(), timeout=CREATE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            self._kill(handle)
            return {
                "error": f"Ray did not create the actor on {where} within {CREATE_TIMEOUT:.0f}s "
                f"(num_gpus={request.num_gpus:g}: are the node's GPUs taken by other Ray work?)"
            }
        except ray.exceptions.RayError as exc:
            self._kill(handle)
            cause = _cause(exc)
            if "No module named 'reconciler" in cause:
                cause += " (install modelplane, the same version, on every Ray node)"
            return {"error": f"the actor could not be created on {where}: {cause}"}
        try:
            description = ray.get(handle.start.remote(), timeout=ready_within)
        except ray.exceptions.GetTimeoutError:
            description = {"state": "exited", "detail": f"not ready within {ready_within:.0f}s"}
        except ray.exceptions.RayError as exc:
            description = {"state": "exited", "detail": f"the actor died: {_cause(exc)}"}
        if description.get("state") != "running":
            self._kill(handle)
            return {"error": description.get("detail") or "the engine did not start"}
        names = node_names(self._node_records())
        description["node"] = names.get(description["node_id"], description["node_id"][:12])
        with self._lock:
            self._exits.pop(name, None)
            self._last[name] = description
        self._ensure_watch(name, description, handle)
        return description

    def stop(self, name: str, actor_id: str, grace: float) -> None:
        """Stop the engine (SIGTERM, then SIGKILL) and kill the actor, if it is ``actor_id``."""
        with self._lock:
            record = self._exits.get(name)
            if record is not None and record.get("actor_id") == actor_id:
                del self._exits[name]  # cleaned up after a crash: forget it
        try:
            handle = self.ray.get_actor(name)
        except ValueError:
            return  # already gone
        try:
            description = self.ray.get(handle.describe.remote(), timeout=CALL_TIMEOUT)
        except self.ray.exceptions.RayError:
            description = {}
        if description and description.get("actor_id") != actor_id:
            return  # replaced by a newer actor meanwhile
        with self._lock:  # an exit from here on is the one asked for, not a crash
            self._watches.pop(name, None)
            self._last.pop(name, None)
        with contextlib.suppress(self.ray.exceptions.RayError):
            self.ray.get(handle.stop.remote(grace), timeout=grace + CALL_TIMEOUT)
        self._kill(handle)
        self._release(name)

    def logs(self, name: str, lines: int) -> str:
        with self._lock:
            record = self._exits.get(name)
        try:
            handle = self.ray.get_actor(name)
            return self.ray.get(handle.logs.remote(lines), timeout=CALL_TIMEOUT)
        except (ValueError, self.ray.exceptions.RayError):
            return (record or {}).get("detail", "")

    def _kill(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(handle, no_restart=True)

    def _release(self, name: str) -> None:
        """Kill a leftover actor of this name and wait until the name is free again."""
        deadline = time.monotonic() + NAME_RELEASE
        while time.monotonic() < deadline:
            try:
                self._kill(self.ray.get_actor(name))
            except ValueError:
                return
            time.sleep(0.1)

    # --- exits ------------------------------------------------------------------------------

    def _ensure_watch(self, name: str, description: dict[str, Any], handle: Any = None) -> None:
        actor_id = description.get("actor_id", "")
        with self._lock:
            if self._watches.get(name, ("", None))[0] == actor_id:
                return
        try:
            handle = handle or self.ray.get_actor(name)
        except ValueError:
            return
        with self._lock:
            self._watches[name] = (actor_id, handle.wait_exit.remote())

    def _watch_exits(self) -> None:
        ray = self.ray
        while True:
            with self._lock:
                watched = {ref: (name, actor_id) for name, (actor_id, ref) in self._watches.items()}
            if not watched:
                time.sleep(0.5)
                continue
            ready, _ = ray.wait(list(watched), num_returns=1, timeout=0.5)
            for ref in ready:
                name, actor_id = watched[ref]
                try:
                    record = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:
                    # not (yet) dead: a network blip, or a node Ray has not declared dead
                    self._rewatch(name, actor_id)
                    continue
                except ray.exceptions.RayError as exc:
                    with self._lock:
                        last = self._last.get(name, {"model": name})
                    record = last | {
                        "state": "exited",
                        "endpoint": None,
                        "detail": self._death(exc, last.get("node_id", "")),
                    }
                record["actor_id"] = actor_id
                with self._lock:
                    if self._watches.get(name, ("", None))[0] != actor_id:
                        continue  # stopped on purpose, or replaced
                    del self._watches[name]
                    self._exits[name] = record
                self.emit({"event": "exited", "model": name, "reason": record.get("detail", "")})

    def _rewatch(self, name: str, actor_id: str) -> None:
        """Ask again, a moment later; the answer is the actor's exit, or its death."""
        time.sleep(0.2)
        with self._lock:
            if self._watches.get(name, ("", None))[0] != actor_id:
                return
        try:
            handle = self.ray.get_actor(name)
        except ValueError:  # its name is gone: it died, and the next list says how
            handle = None
        with self._lock:
            if self._watches.get(name, ("", None))[0] != actor_id:
                return
            if handle is None:
                del self._watches[name]
                self._exits[name] = self._last.get(name, {"model": name}) | {
                    "state": "exited",
                    "endpoint": None,
                    "actor_id": actor_id,
                    "detail": "the actor is gone",
                }
            else:
                self._watches[name] = (actor_id, handle.wait_exit.remote())

    def _death(self, exc: BaseException, node_id: str) -> str:
        """Why an actor died, with its node by name: ``node worker-b was lost (health check
        failed ...)`` or ``the actor died on node worker-a: ...``."""
        records = []
        with contextlib.suppress(Exception):
            records = self._node_records()
        names = node_names(records)
        node = names.get(node_id, node_id[:12] or "?")
        dead = next((n for n in records if n["id"] == node_id and not n["alive"]), None)
        if dead is not None or "its node has died" in str(exc):
            why = (dead or {}).get("death") or "it stopped answering"
            return f"node {node} was lost ({why})"
        return f"the actor died on node {node}: {_cause(exc)}"


def _cause(exc: BaseException) -> str:
    """A Ray error in a line or two: why the actor died (its node, a kill, its own error)."""
    text = str(exc).strip()
    marker = "The actor died because"  # Ray's phrasing for deaths: keep from there on
    if marker in text:
        text = text[text.index(marker) :]
    text = text.split("\t")[0]  # Ray appends "\tclass_name: ...\tactor_id: ..."
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3])[:500]


# --- the process --------------------------------------------------------------------------------


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with the reason when nothing listens at ``address`` (``ray.init`` would wait
    minutes for a GCS that is not there). ``auto`` is Ray's to find."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise ConnectionError(
            f"not an address: {address!r} (host:port, ray://host:port or auto)"
        ) from None
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def serve(address: str, namespace: str) -> int:
    """Connect, say hello, then answer requests until stdin closes."""
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # never start a cluster by accident
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a driver whose GCS is gone exits after this long (Ray's default: 60 s); the controller
    # starts a new one, which reports the cluster unreachable until it answers again
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "15")
    out = sys.stdout.buffer
    stdin = sys.stdin.buffer
    sys.stdout = sys.stderr  # Ray prints; only frames go to the controller
    write_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with write_lock:
            write_frame(out, message)

    try:
        reachable(address)
        try:
            import ray
        except ImportError as exc:
            raise ImportError(f"{exc}: install it with pip install 'modelplane[ray]'") from exc

        context = ray.init(
            address=address,
            namespace=namespace,
            logging_level="WARNING",
            log_to_driver=False,
        )
        driver = Driver(namespace, send)
    except Exception as exc:
        send({"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"id": 0, "ok": True, "value": {"ray": ray.__version__, "context": str(context)[:200]}})

    def answer(message: dict[str, Any]) -> None:
        try:
            method = getattr(driver, message["op"])
            value = method(**message.get("args", {}))
            reply = {"id": message["id"], "ok": True, "value": value}
        except Exception as exc:
            reply = {"id": message["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        send(reply)

    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="op") as pool:
        while (message := read_frame(stdin)) is not None:
            pool.submit(answer, message)
    os._exit(0)  # the controller went away: do not wait for calls still in flight


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2]))
