"""The options reference is generated from the option table; it must not go stale."""

from __future__ import annotations

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_options_page_is_the_generated_table():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_docs"))
    page = (ROOT / "docs" / "reference" / "options.md").read_text(encoding="utf-8")
    assert gen["regenerate"](page) == page, "docs/reference/options.md is stale: run python scripts/gen_docs"


def test_staleness_is_detected():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_docs"))
    page = (ROOT / "docs" / "reference" / "options.md").read_text(encoding="utf-8")
    stale = page.replace("| `max_message_size` | 1 MiB |", "| `max_message_size` | 2 MiB |")
    assert stale != page and gen["regenerate"](stale) == page
