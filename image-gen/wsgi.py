"""The WSGI entry point Gunicorn loads: `gunicorn wsgi:app`."""

from imagegen import create_app

app = create_app()
