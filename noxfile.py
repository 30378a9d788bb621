"""nox sessions for syncws.

``fast``: the fast test loop (``pytest -m "not slow" -n 2``) on each supported
Python.  ``bash scripts/test`` runs the whole suite on the interpreter it is
given, then this session on every *other* supported interpreter it finds;
nox reports a version that is not installed as skipped, never as passed.

Run one version by hand: ``nox -s fast-3.13``.
"""

import nox

#: The Python versions syncws supports (setup.py's python_requires and classifiers say the same).
SUPPORTED = ["3.11", "3.12", "3.13"]

nox.options.error_on_missing_interpreters = False  # a missing Python is a skip, announced by nox
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=SUPPORTED)
def fast(session: nox.Session) -> None:
    session.install("-q", "-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-n", "2", *session.posargs,
        env={"SYNCWS_DEBUG": "1"},  # hub-thread contracts asserted, as in scripts/test
    )  # fmt: skip
