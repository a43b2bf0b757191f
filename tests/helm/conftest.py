"""Fixtures: the chart loaded once, and a renderer of releases (real Helm engine, offline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chart_render import CHART_DIR, RELEASE, Manifest, Renderer, manifests_of
from helm_python.chart import Chart


@pytest.fixture(scope="session")
def chart() -> Iterator[Chart]:
    with Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Chart) -> Renderer:
    """render(values) -> the release's manifests (NOTES.txt left out), as dicts."""

    def _render(values: dict[str, Any] | None = None, name: str = RELEASE) -> list[Manifest]:
        return manifests_of(chart.render(values=values or {}, name=name, namespace="serving"))

    return _render
