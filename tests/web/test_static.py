"""syncws.js: served with its ETag, small, unit-tested in Node, its types checked by tsc."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from syncws import App, client_js, mount
from syncws.web.static import STATIC, client_types

ROOT = Path(__file__).resolve().parents[2]
TSC_HOME = Path.home() / ".cache" / "syncws-node" / "node_modules" / ".bin" / "tsc"


def test_the_client_is_served_with_its_type_and_an_etag(start_server):
    app = App()
    app.get("/syncws.js", client_js)
    app.get("/syncws.d.ts", client_types)
    server = start_server(app)
    answer = requests.get(server.url + "/syncws.js", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.content == (STATIC / "syncws.js").read_bytes()
    etag = answer.headers["ETag"]
    again = requests.get(server.url + "/syncws.js", headers={"If-None-Match": etag}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    assert requests.post(server.url + "/syncws.js", timeout=5).status_code == 405
    types = requests.get(server.url + "/syncws.d.ts", timeout=5)
    assert types.status_code == 200 and b"export declare class Client" in types.content
    assert repr(client_js) == "<StaticFile syncws.js>"


def test_mount_serves_it_in_front_of_any_wsgi_app(start_server):
    def other(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the app"]

    server = start_server(mount(other, {"/static/syncws.js": client_js}))
    assert requests.get(server.url + "/static/syncws.js", timeout=5).text.startswith("// syncws.js")
    assert requests.get(server.url + "/", timeout=5).text == "the app"


def test_it_stays_under_5_kb_gzipped():
    size = len(gzip.compress((STATIC / "syncws.js").read_bytes(), 9))
    assert size < 5 * 1024, f"syncws.js is {size} bytes gzipped"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("Node.js is missing: bash scripts/test installs it (apt-get install nodejs)")
    return found


@pytest.mark.slow
def test_the_node_unit_tests_pass():
    result = subprocess.run([node(), "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"^# pass [1-9]", result.stdout, re.M) and "# fail 0" in result.stdout


def tsc() -> str:
    found = os.environ.get("SYNCWS_TSC") or (str(TSC_HOME) if TSC_HOME.exists() else shutil.which("tsc"))
    if not found:
        pytest.fail("tsc is missing: bash scripts/test installs it (npm install typescript into ~/.cache/syncws-node)")
    return found


@pytest.mark.slow
def test_the_types_and_every_js_example_of_the_docs_type_check(tmp_path):
    """Each ```js block of the docs that imports syncws.js is type-checked against syncws.d.ts."""
    shutil.copy(STATIC / "syncws.js", tmp_path / "syncws.js")
    shutil.copy(STATIC / "syncws.d.ts", tmp_path / "syncws.d.ts")
    checked = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for n, block in enumerate(re.findall(r"^```js\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)):
            if "syncws.js" not in block:
                continue
            source = re.sub(r'from "[^"]*syncws\.js"', 'from "./syncws.js"', block)
            name = tmp_path / f"{page.stem}_{n}.ts"
            name.write_text("export {};\n" + source, encoding="utf-8")
            checked.append(name.name)
    assert len(checked) >= 3, checked
    command = [tsc(), "--strict", "--noEmit", "--target", "es2022", "--module", "es2022", "--lib", "es2022,dom"]
    result = subprocess.run([*command, *checked], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a call the types do not allow is an error.
    (tmp_path / "wrong.ts").write_text('import { connect } from "./syncws.js";\nconnect("ws://x").rpc(5);\n')
    wrong = subprocess.run([*command, "wrong.ts"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "wrong.ts" in wrong.stdout
