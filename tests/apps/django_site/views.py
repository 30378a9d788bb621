"""Ordinary Django views; ``announce`` publishes into the syncws server that serves them."""

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

import syncws


def hello(request):
    name = request.GET.get("name", "world")
    response = HttpResponse(f"<h1>Hello, {name}!</h1>")
    response["X-Django"] = "yes"
    return response


def status(request):
    return JsonResponse({"framework": "django", "method": request.method, "path": request.path})


@csrf_exempt
def echo(request):
    return HttpResponse(request.body, content_type=request.content_type or "application/octet-stream", status=201)


def announce(request):
    text = request.GET.get("text", "")
    syncws.publish("news", {"announce": text}, namespace="/events")
    return JsonResponse({"published": text})
