"""Minimal settings: no database, no apps, no CSRF middleware (the POST echo view is plain)."""

SECRET_KEY = "syncws-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.apps.django_site.urls"
INSTALLED_APPS: list = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict = {}
USE_TZ = True
WSGI_APPLICATION = "tests.apps.django_site.wsgi.application"
