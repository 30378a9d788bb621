"""OpenTelemetry spans, when ``syncws[otel]`` (opentelemetry-api) is installed; nothing otherwise.

syncws depends on the OpenTelemetry *API* only: the app chooses the SDK,
the exporter and the sampler, configured the standard way (the global
tracer provider).  Without the API, :func:`make_tracer` returns None and
nothing is imported: a traced code path costs one ``is None`` test, once
per upgrade, RPC, publish or read, never per recipient.  With the API and
no SDK yet, :meth:`Tracer.configured` is False and no span is made either
(``Runtime.active_tracer``).

The spans (docs/operations.md lists their attributes): ``syncws.upgrade``
(the handshake, the ``upgrade`` hook included; its parent is the request's
W3C ``traceparent``), ``syncws.rpc`` (a channels RPC, a child of its
connection's upgrade), ``syncws.publish`` (a publish with the number of
local deliveries; a child of whatever span was current where it was
published), ``syncws.deliver`` (a publish that came back through the
broker, with its deliveries), ``syncws.recovery`` (a subscribe that resumes
from an offset: replayed, recovered) and ``syncws.broker.history`` /
``syncws.broker.presence`` (reads from Redis).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .errors import DependencyMissing
from .version import __version__

if TYPE_CHECKING:  # an optional dependency: imported at run time only when tracing is on
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind

#: Seconds between two looks for a tracer provider while none is set (see ``Tracer.span``).
PROVIDER_CHECK_INTERVAL = 1.0


class Tracer:
    """syncws's spans on opentelemetry-api's global tracer provider."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace

        self._context = context
        self._propagate = propagate
        self._trace = trace
        self._tracer = trace.get_tracer("syncws", __version__)
        self._configured = False
        self._next_check = 0.0
        self.SERVER = trace.SpanKind.SERVER
        self.PRODUCER = trace.SpanKind.PRODUCER
        self.CLIENT = trace.SpanKind.CLIENT
        self.CONSUMER = trace.SpanKind.CONSUMER
        self.INTERNAL = trace.SpanKind.INTERNAL

    def extract(self, environ: Mapping[str, Any]) -> Context:
        """The context a WSGI request's ``traceparent`` (and ``tracestate``) names; empty without one."""
        carrier = {}
        for header in ("traceparent", "tracestate"):
            value = environ.get("HTTP_" + header.upper())
            if value:
                carrier[header] = value
        return self._propagate.extract(carrier)

    def current(self) -> Context:
        """The context of the caller (the parent of a span started elsewhere for it)."""
        return self._context.get_current()

    def context_of(self, span: Span) -> Context:
        """A context whose current span is ``span``: the parent of later spans of the same connection."""
        return self._trace.set_span_in_context(span)

    def configured(self) -> bool:
        """Whether the app has set a tracer provider (an SDK): else no span would record anything.

        Callers skip their spans altogether until then (``Runtime.active_tracer``):
        through the API's no-op spans, a fan-out to 10 subscribers ran at 0.66
        of its untraced throughput (scripts/bench_tracing); skipped, at 0.94.
        """
        return self._configured or self._check_provider()

    def _check_provider(self) -> bool:
        """Whether the app has set a tracer provider, asked at most once a second.

        An app may configure its SDK after the server started; a provider,
        once set, is set for good (OpenTelemetry sets it once per process).
        """
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + PROVIDER_CHECK_INTERVAL
        self._configured = not isinstance(self._trace.get_tracer_provider(), self._trace.ProxyTracerProvider)
        return self._configured

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        parent: Context | None = None,
        kind: SpanKind | None = None,
    ) -> AbstractContextManager[Span]:
        """Start ``name`` as the current span (a child of ``parent``, else of the current one)."""
        return self._tracer.start_as_current_span(
            name, context=parent, kind=self.INTERNAL if kind is None else kind, attributes=attributes
        )


def installed() -> bool:
    """Whether opentelemetry can be imported (``find_spec`` imports nothing)."""
    try:
        return importlib.util.find_spec("opentelemetry") is not None
    except (ImportError, ValueError):
        return False


def make_tracer(mode: str) -> Tracer | None:
    """The tracer for the ``tracing`` option: ``auto`` traces when the API is installed, ``on`` requires it."""
    if mode == "off":
        return None
    if installed():
        try:
            return Tracer()
        except ImportError:  # another opentelemetry package, without the API
            pass
    if mode == "on":
        raise DependencyMissing("tracing='on' needs the OpenTelemetry API: pip install 'syncws[otel]'")
    return None
