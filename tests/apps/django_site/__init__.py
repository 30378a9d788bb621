"""A minimal Django project served by ``python -m syncws`` through ``syncws.mount`` (see wsgi.py)."""
