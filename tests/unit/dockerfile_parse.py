"""Just enough Dockerfile reading to check an image without a Docker engine: instructions with
their continuation lines joined, COPY sources, and the .dockerignore patterns."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def copy_sources(dockerfile: Path) -> list[str]:
    """Build-context paths that COPY instructions take (multi-stage --from copies excluded)."""
    sources: list[str] = []
    for word, args in instructions(dockerfile):
        parts = args.split()
        if word == "COPY" and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes `rel` (a path relative to the context, or a parent)."""
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for p in prefixes for pat in patterns)


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def assemble(context: Path, sources: list[str], into: Path) -> None:
    """What the image's COPY steps put in its work directory, .dockerignore applied."""
    patterns = dockerignore(context)
    for src in sources:
        origin = context / src
        if origin.is_file():
            shutil.copy2(origin, into / src)
            continue
        for f in origin.rglob("*"):
            rel = f.relative_to(context).as_posix()
            if f.is_file() and not ignored(rel, patterns) and "__pycache__" not in rel:
                (into / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, into / rel)
