"""Fixtures of the fault tests: a fake host in a tmp directory, its tools first on PATH."""

from __future__ import annotations

import os

import pytest

from tests.fakes.docker_api import DockerScenario
from tests.fakes.host import FakeHost
from tests.fakes.tools import MIXED


@pytest.fixture
def host(tmp_path, monkeypatch) -> FakeHost:
    made = FakeHost.make(tmp_path)
    # The CLI finds tools on $PATH; every tool it may run is faked, so no real one runs.
    monkeypatch.setenv("PATH", made.tools.path + os.pathsep + os.environ.get("PATH", ""))
    return made


@pytest.fixture
def scenario() -> DockerScenario:
    return DockerScenario.from_fixture(MIXED)
