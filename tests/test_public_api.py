"""The public names of ``syncws`` stay in step with the code and the docs."""

from __future__ import annotations

import pathlib
import re
import types

import syncws

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_public_name_is_in_all_and_every_name_in_all_exists():
    public = {name for name, value in vars(syncws).items() if not name.startswith("_")}
    public -= {name for name in public if isinstance(getattr(syncws, name), types.ModuleType)}  # subpackages
    assert sorted(public - set(syncws.__all__)) == []
    assert [name for name in syncws.__all__ if not hasattr(syncws, name)] == []


def test_every_name_in_all_is_documented_as_code():
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    spans = re.findall(r"`[^`\n]+`", text)
    undocumented = [
        name for name in syncws.__all__ if not any(re.search(rf"\b{re.escape(name)}\b", span) for span in spans)
    ]
    assert undocumented == []
