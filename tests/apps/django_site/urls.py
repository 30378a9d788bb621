from django.urls import path

from . import views

urlpatterns = [
    path("hello/", views.hello),
    path("api/status", views.status),
    path("echo", views.echo),
    path("announce", views.announce),
]
