"""The folder tree's promises that import-linter cannot check: lazy package edges."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    """The project and server modules a fresh interpreter has loaded after ``statement``."""
    code = (
        f"{statement}\nimport sys\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in "
        "('actors', 'runtime', 'hypercorn', 'starlette', 'trio')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return set(out.split())


def test_importing_the_client_loads_neither_the_service_nor_the_server() -> None:
    loaded = loaded_after("import actors.client")
    assert "actors.client.client" in loaded
    assert not {m for m in loaded if m.startswith(("actors.http", "actors.jobs", "runtime"))}
    assert not {m for m in loaded if m.startswith(("actors.service", "hypercorn", "starlette"))}


def test_the_package_hands_on_its_public_names_lazily() -> None:
    loaded = loaded_after("import actors")
    assert "actors.service" not in loaded
    loaded = loaded_after("from actors import open_service")
    assert "actors.service" in loaded
    assert "actors.http.app" not in loaded
