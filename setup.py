from setuptools import find_packages, setup

setup(
    name="syncws",
    version="0.1.0",
    description="Hook-based WebSockets, pub/sub and Server-Sent Events for synchronous Python (Flask, WSGI)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["syncws", "syncws.*"]),
    # py.typed: PEP 561, the package is typed (mypy --strict clean); the browser client and its types
    package_data={"syncws": ["py.typed", "web/static/syncws.js", "web/static/syncws.d.ts"]},
    python_requires=">=3.11",  # tested on 3.11, 3.12 and 3.13 (noxfile.py SUPPORTED)
    install_requires=["gevent>=23.9", "gevent-websocket>=0.10.1", "werkzeug>=3.0"],
    extras_require={
        "flask": ["flask>=3.0"],
        "django": ["django>=4.2"],
        "redis": ["redis>=5.0", "hiredis>=2.0"],
        # Prometheus metrics on an address of their own (docs/operations.md)
        "metrics": ["prometheus_client>=0.17"],
        # OpenTelemetry spans (docs/operations.md): the API only; the SDK and exporters are the app's choice
        "otel": ["opentelemetry-api>=1.20"],
        # the channels client, syncws.client (docs/channels.md): websockets' sync client
        "client": ["websockets>=13"],
        # websockets' C mask function: unmasking large messages about 5 times faster (docs/performance.md)
        "speedups": ["websockets>=13"],
        # scripts/bench and scripts/bench_compare: the websockets reference server and the profiler
        "bench": ["websockets>=13", "py-spy>=0.3", "redis>=5.0", "hiredis>=2.0"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # the fast loop runs on both cores (-n 2)
            "hypothesis>=6.100",
            "flask>=3.0",
            "django>=4.2",
            "requests>=2.31",
            "websocket-client>=1.7",
            "websockets>=13",
            "playwright>=1.40",
            "redis>=5.0",
            "hiredis>=2.0",
            "gunicorn>=21",
            "nox>=2024.3",
            "ruff>=0.6",
            "mypy>=1.11",
            "coverage>=7.10",
            "trustme>=1.1",
            "pyjwt>=2.8",  # the JWT snippet of docs/how-to/tokens.md
            "prometheus_client>=0.17",
            "opentelemetry-api>=1.20",  # the tracing tests: spans recorded by the SDK's in-memory exporter
            "opentelemetry-sdk>=1.20",
            "pyyaml>=6",  # examples/deploy/kubernetes.yaml is parsed and checked
        ],
    },
    entry_points={
        "console_scripts": ["syncws=syncws.cli.main:main"],
        # the syncws_client fixture for users' tests (syncws/integrations/pytest_plugin.py)
        "pytest11": ["syncws = syncws.integrations.pytest_plugin"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Flask",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
    ],
)
