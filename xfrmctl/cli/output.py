"""Human tables and --json output."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def col(header: str, key: str) -> Column:
    return header, lambda row: row.get(key)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[_cell(fn(row)) for _, fn in columns] for row in rows]
    headers = [h for h, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def emit_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    click.echo(table(rows, columns))


def emit_fields(obj: dict[str, Any]) -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def ago(iso: str | None, now: datetime | None = None) -> str:
    """'5m ago' / 'in 2h' relative to now."""
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:  # the API's times are UTC
        moment = moment.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    text = human_seconds(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def human_seconds(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_PROTOCOLS = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
              58: "ipv6-icmp", 132: "sctp"}


def protocol(number: int | None) -> str:
    """An IP protocol number as `ip xfrm` and swanctl name it: 0 is any."""
    if number is None:
        return "any"
    return _PROTOCOLS.get(number, str(number))


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{count}B"


def why(item: dict[str, Any]) -> str | None:
    """The reason with what the detail adds: the message, or each side's selectors."""
    reason, detail = item.get("reason"), item.get("detail") or {}
    if reason is None:
        return None
    extra = [str(detail["message"])] if detail.get("message") else []
    if detail.get("local_ts") or detail.get("remote_ts"):
        extra.append(f"ours {','.join(detail.get('local_ts', []))} === "
                     f"{','.join(detail.get('remote_ts', []))}")
    return f"{reason}: {'; '.join(extra)}" if extra else str(reason)
