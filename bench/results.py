"""Appending benchmark tables to bench/RESULTS.md with date, machine and command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _module_name() -> str:
    """`bench.x` for a script run as `python -m bench.x` (argv[0] is then its file path)."""
    script = Path(sys.argv[0]).resolve().with_suffix("")
    try:
        return ".".join(script.relative_to(RESULTS.parent.parent).parts)
    except ValueError:
        return script.name


def append_results(title: str, table: str, notes: str = "") -> None:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python -m {_module_name()} {' '.join(sys.argv[1:])}".strip()
    block = f"\n## {title}\n{when} · {machine_description()} · `{command}`\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nNewest last. Compare ratios within one run.\n")
    with RESULTS.open("a") as f:
        f.write(block)
