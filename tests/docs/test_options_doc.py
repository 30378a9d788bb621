"""The generated parts of the docs (the options table, the state diagrams) must not go stale."""

from __future__ import annotations

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_generated_section_is_current():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_docs"))
    for page, start, end, make in gen["SECTIONS"]:
        text = page.read_text(encoding="utf-8")
        assert gen["regenerate"](text, start, end, make) == text, f"{page} is stale: run python scripts/gen_docs"


def test_staleness_is_detected():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_docs"))
    (options_page, start, end, make), (architecture, a_start, a_end, a_make) = gen["SECTIONS"]
    page = options_page.read_text(encoding="utf-8")
    stale = page.replace("| `max_message_size` | 1 MiB |", "| `max_message_size` | 2 MiB |")
    assert stale != page and gen["regenerate"](stale, start, end, make) == page
    diagram = architecture.read_text(encoding="utf-8")
    stale = diagram.replace("OPEN --> FINAL", "OPEN --> DONE")
    assert stale != diagram and gen["regenerate"](stale, a_start, a_end, a_make) == diagram


def test_the_diagrams_name_every_state():
    from syncws.protocol.connection import State
    from syncws.protocol.frames import ParserState
    from syncws.server.outbox import OutboxState

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for enum in (State, ParserState, OutboxState):
        assert all(f" {member.name} " in text or f" {member.name}:" in text for member in enum), enum
