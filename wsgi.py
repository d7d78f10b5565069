"""The WSGI entry point: `gunicorn wsgi:app`."""

from casehub import create_app

app = create_app()
