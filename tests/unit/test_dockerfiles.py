"""The images, checked without a Docker engine (none here): every COPY source exists and is not
dockerignored, every package the project ships is copied, and the file set the COPY steps
assemble, with the image's own proto step, is enough to run duet: the CLI, the tiny model build
the CPU image runs, and a generation from that model, token for token what this checkout's
tiny model generates (the image's dependencies are this checkout's: pip is not run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.unit.dockerfile_parse import (
    assemble,
    copy_sources,
    dockerignore,
    ignored,
    instructions,
)

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "docker").glob("Dockerfile.*"))


def _shipped_packages() -> set[str]:
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {p.rstrip("*") for p in found["packages"]["find"]["include"]}


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_copy_sources_exist_and_cover_every_package(image: Path) -> None:
    sources = copy_sources(image)
    patterns = dockerignore(REPO)
    for src in sources:
        assert (REPO / src).exists(), f"{image.name}: COPY {src}: no such path"
        assert not ignored(src, patterns), f"{image.name}: COPY {src} is dockerignored"
    assert _shipped_packages() <= set(sources), f"{image.name}: packages not copied"
    assert {"requirements.txt", "pyproject.toml", "Makefile", "proto"} <= set(sources)


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_images_run_as_a_user_expose_the_chart_ports_and_pin_torch(image: Path) -> None:
    steps = instructions(image)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    exposed = {int(p) for word, args in steps if word == "EXPOSE" for p in args.split()}
    assert {8000, 50051} <= exposed  # the chart's default HTTP and gRPC ports
    pin = next(ln for ln in (REPO / "requirements.txt").read_text().splitlines()
               if ln.startswith("torch=="))  # fmt: skip
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert pin in runs, f"{image.name} must install {pin}, the version requirements.txt pins"
    assert "make gen-proto PY=python" in runs  # not `make proto`: that builds a second venv


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU image's /opt/duet after its COPY steps and `make gen-proto`."""
    root = tmp_path_factory.mktemp("image")
    assemble(REPO, copy_sources(REPO / "docker" / "Dockerfile.cpu"), root)
    assert not (root / "duet" / "v1" / "worker_pb2.py").exists()  # generated, never copied
    subprocess.run(
        ["make", "--no-print-directory", "gen-proto", f"PY={sys.executable}"],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return root


def _in_image(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_assembled_image_runs_duet_from_its_own_files(
    image_tree: Path, tiny_model_dir: Path
) -> None:
    where = _in_image(image_tree, "-c", "import duet.cli, engine; print(engine.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(image_tree))  # not this checkout's copy
    assert _in_image(image_tree, "-m", "duet", "--help").returncode == 0
    model = image_tree / "models" / "ling-tiny"
    built = _in_image(image_tree, "-m", "duet", "build-tiny-model", "--out", str(model))
    assert built.returncode == 0, built.stderr
    ask = ("--prompt-ids", "1,2,3", "--max-tokens", "3", "--json")
    gen = _in_image(image_tree, "-m", "duet", "generate", "--model", str(model), *ask)
    assert gen.returncode == 0, gen.stderr
    here = subprocess.run(
        [sys.executable, "-m", "duet", "generate", "--model", str(tiny_model_dir), *ask],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    tokens = json.loads(gen.stdout)["tokens"]
    assert len(tokens) == 3 and tokens == json.loads(here.stdout)["tokens"]
