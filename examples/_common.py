"""What every example does when run as a script: log to stderr and serve on $PORT."""

import logging
import os

from syncws import serve


def run(app, banner: str, **options) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = int(os.environ.get("PORT", "3000"))
    print(banner.format(url=f"http://127.0.0.1:{port}"), "(Ctrl-C to stop)", flush=True)
    serve(app, host="127.0.0.1", port=port, **options)
