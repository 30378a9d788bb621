"""Django's WSGI application with a WebSocket chat and an event stream mounted in front.

Run: DJANGO_SETTINGS_MODULE=tests.apps.django_site.settings \\
     python -m syncws tests.apps.django_site.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

import syncws

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_site.settings")


def _open(peer):
    peer.subscribe("chat")
    peer.send({"joined": peer.namespace})


def _message(peer, message):
    peer.publish("chat", f"{peer.namespace}: {message.text()}")  # everyone else in this room


chat = syncws.define_websocket_handler(open=_open, message=_message)


def events(request):
    stream = syncws.create_event_stream(request)
    stream.subscribe("news")  # /announce?text=... publishes here
    stream.push({"event": "ready", "data": request.args.get("who", "anonymous")})
    return stream


application = syncws.mount(
    get_wsgi_application(),
    {
        "/chat/<room>": chat,
        "/events": events,
    },
)
