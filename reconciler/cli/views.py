"""What the commands print, rendered from the JSON the service's admin API returns (the same JSON
an offline command builds from the database), so both ways look the same. Pure."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from reconciler.units import format_duration, format_size

SOURCES = {"nvml": "NVML", "static": "Node manifest", "nvml+static": "NVML + Node manifest"}


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def models_table(models: Sequence[Mapping[str, Any]], nodes: bool = False) -> Table:
    """``modelplane status``: one row per model, with phase, sync and why; with ``nodes`` (a Ray
    cluster), the node each one runs on."""
    nodes = nodes or any(row.get("node") for row in models)
    table = Table(box=None, pad_edge=False)
    columns = ("MODEL", "PHASE", "SYNC", "RUNTIME", *(("NODE",) if nodes else ()), "GPUS")
    for column in (*columns, "ENDPOINT", "IDLE", "REVISION", "SIZE", "QUANT", "REASON"):
        table.add_column(column, overflow="fold")
    for row in models:
        name = row["name"] + (" (pinned)" if row["pinned"] else "")
        name += " (loaded by hand)" if row.get("override") else ""
        idle = row.get("idleFor")
        table.add_row(
            escape(name),
            row["phase"],
            row["sync"],
            row["runtime"] or "-",
            *((row.get("node") or "-",) if nodes else ()),
            ",".join(map(str, row["gpus"])) or "-",
            row["endpoint"] or "-",
            format_duration(idle) if idle is not None else "-",
            (row.get("revision") or "-")[:12],
            _size(row.get("size")),
            row.get("quantization") or "-",
            escape(row["reason"]),
        )
    return table


def node_table(cluster: Mapping[str, Any]) -> Table:
    """A Ray cluster's nodes: alive or not, GPUs (claimed of total), labels, models."""
    table = Table(title=f"Ray cluster at {cluster['address']}", box=None, pad_edge=False)
    for column in ("NODE", "STATE", "GPUS", "LABELS", "MODELS"):
        table.add_column(column, overflow="fold")
    for node in cluster["nodes"]:
        state = "alive" if node["alive"] else f"dead: {node['death'] or 'lost'}"
        gpus = ", ".join(
            f"{g['index']}: {format_size(g['claimed'])}/{format_size(g['total'])}"
            for g in node["gpus"]
        )
        # Ray's own labels (ray.io/node-id...) are noise here
        own = sorted((k, v) for k, v in node["labels"].items() if not k.startswith("ray.io/"))
        table.add_row(
            escape(node["name"] + (" (head)" if node["head"] else "")),
            escape(state),
            gpus or escape(node["problem"]) or "-",
            escape(", ".join(f"{k}={v}" for k, v in own)) or "-",
            ", ".join(node["models"]) or "-",
        )
    return table


def gpu_table(gpus: Mapping[str, Any]) -> Table:
    """``modelplane gpus`` (and under ``status``): each GPU with what modelplane claims on it;
    the caption carries the inventory's messages (no NVML, a static list, ...)."""
    title = f"GPUs ({SOURCES.get(gpus.get('source', 'none'), 'none')})"
    if gpus.get("driver"):
        title += f", driver {gpus['driver']}"
    table = Table(title=title, caption="; ".join(gpus.get("messages", [])) or None)
    right = ("GPU", "Free", "Available", "Util", "Temp")
    for col in (*right[:1], "Name", "Used / total", *right[1:], "Processes", "Claims"):
        table.add_column(col, justify="right" if col in right else "left")
    for g in gpus.get("gpus", []):
        procs = ", ".join(_process(p) for p in g.get("processes", []))
        claims = ", ".join(f"{c['model']} {format_size(c['bytes'])}" for c in g.get("claims", []))
        table.add_row(
            str(g["index"]),
            g.get("name") or "-",
            f"{_size(g.get('used'))} / {format_size(g['total'])}",
            _size(g.get("free")),
            _size(g.get("available")),
            "-" if g.get("utilization") is None else f"{g['utilization']}%",
            "-" if g.get("temperature") is None else f"{g['temperature']}°C",
            procs or "-",
            claims or "-",
        )
    return table


def _process(p: Mapping[str, Any]) -> str:
    used = "?" if p.get("used") is None else format_size(p["used"])
    return f"{p['pid']} {p.get('name') or ''} ({used})".replace("  ", " ")


def event_line(event: Mapping[str, Any]) -> str:
    model = event.get("model") or "-"
    return f"{when(event['time'])}  {event['kind']:<12} {model:<20} {event['message']}"


def history_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("GEN", "TIME", "COMMIT", "OUTCOME", "CHANGES"):
        table.add_column(column)
    for row in rows:
        commit = (row.get("commit") or "-")[:12] + (" (dirty)" if row.get("dirty") else "")
        subject = row.get("subject") or ""
        detail = row["changes"] + (f"  [{subject}]" if subject else "")
        cells = (str(row["generation"]), when(row["time"]), commit, row["outcome"], detail)
        table.add_row(*(escape(cell) for cell in cells))  # "[subject]" is not rich markup
    return table


LOADED = ("Ready", "Starting", "Draining")


def until(row: Mapping[str, Any], now: float) -> str:
    """When a loaded model is unloaded if no request comes, as Ollama's ``ps`` says it."""
    if row.get("pinned"):
        return "Forever (pinned)"
    if row.get("held"):
        return "until unloaded (loaded by hand)"
    due = row.get("unloadAt")
    if due is None:
        return "after its requests in flight" if row.get("inFlight") else "-"
    left = due - now
    return "now" if left <= 0 else f"{format_duration(left)} from now ({when(due)[11:]})"


def ps_table(models: Sequence[Mapping[str, Any]], now: float) -> Table:
    """``modelplane ps``: the loaded models given (phases in :data:`LOADED`), where, how big,
    and until when."""
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "PHASE", "PROCESSOR", "SIZE", "IN FLIGHT", "UNTIL"):
        table.add_column(column)
    for row in models:
        gpus = row.get("gpus") or []
        where = f"GPU {','.join(map(str, gpus))}" if gpus else "CPU"
        where += f" on {row['node']}" if row.get("node") else ""
        size = row.get("vram") if row.get("vram") is not None else row.get("size")
        table.add_row(
            escape(row["name"]),
            row["phase"],
            where,
            _size(size),
            str(row.get("inFlight", 0)),
            until(row, now),
        )
    return table


def requests_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """``modelplane requests``: the request log, newest first."""
    table = Table(box=None, pad_edge=False)
    for column in ("TIME", "CLIENT", "MODEL", "PATH", "STATUS", "LATENCY", "TTFT", "TOKENS"):
        table.add_column(column, justify="right" if column in ("LATENCY", "TTFT") else "left")
    for r in rows:
        tokens = "-"
        if r.get("promptTokens") is not None or r.get("completionTokens") is not None:
            tokens = f"{r.get('promptTokens') or 0} in / {r.get('completionTokens') or 0} out"
        table.add_row(
            when(r["time"]),
            escape(r.get("client") or "-"),
            escape(r.get("model") or "-"),
            escape(r.get("path") or "-"),
            str(r.get("status") or "-"),
            _millis(r.get("latency")),
            _millis(r.get("ttft")),
            tokens,
        )
    return table


def _millis(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"
