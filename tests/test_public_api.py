"""The public names of ``syncws`` stay in step with the code and the docs."""

from __future__ import annotations

import pathlib
import re
import types

import syncws

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_public_name_is_in_all_and_every_name_in_all_exists():
    public = {name for name in dir(syncws) if not name.startswith("_")}  # the lazy names too (__dir__)
    public -= {name for name in public if isinstance(getattr(syncws, name), types.ModuleType)}  # subpackages
    assert sorted(public - set(syncws.__all__)) == []
    assert [name for name in syncws.__all__ if not hasattr(syncws, name)] == []


def test_a_lazy_name_is_the_object_of_its_module():
    from syncws.server.server import serve
    from syncws.web.app import App

    assert syncws.serve is serve and syncws.App is App
    try:
        syncws.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_syncws_loads_no_layer_and_no_integration():
    """``import syncws`` loads the exceptions and the version only; the rest comes on first use."""
    import subprocess
    import sys

    script = (
        "import sys, syncws\n"
        "print(sorted(m for m in sys.modules if m.startswith('syncws.')))\n"
        "syncws.Server\n"
        "print('syncws.server.server' in sys.modules, 'syncws.integrations.metrics' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    first, second = done.stdout.splitlines()
    assert first == "['syncws.base', 'syncws.base.errors', 'syncws.base.version']"
    assert second == "True False"  # a server's module on use; an integration only when a server uses it


def test_every_name_in_all_is_documented_as_code():
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    spans = re.findall(r"`[^`\n]+`", text)
    undocumented = [
        name for name in syncws.__all__ if not any(re.search(rf"\b{re.escape(name)}\b", span) for span in spans)
    ]
    assert undocumented == []
