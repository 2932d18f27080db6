"""The services an app runs with, built once by `create_app`, and the one way to reach them.

Routes ask `services()` for what they need instead of a string-keyed bag of extensions:

    image_request = ...
    metadata = services().maker.make(image_request, caller=current_caller())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from imagegen.books.interfaces import CapsBook, IdempotencyBook, JobBook
    from imagegen.imaging.core import ImageMaker
    from imagegen.jobs.hub import StreamHub
    from imagegen.jobs.runner import JobRunner
    from imagegen.jobs.streams import StreamLimiter
    from imagegen.settings import Settings
    from imagegen.storage.images import ImageStore
    from imagegen.upstream.providers import Provider

_EXTENSION = "imagegen"


@dataclass(frozen=True)
class Services:
    """Everything one app's requests and jobs share; one per process."""

    settings: Settings
    store: ImageStore  # stored jobs and their images
    records: JobBook  # asynchronous jobs while they run
    provider: Provider  # where images come from
    ledger: CapsBook  # what each token made and spent, against the caps
    idempotency: IdempotencyBook  # Idempotency-Keys and the answers they replay
    maker: ImageMaker  # the one core operation
    jobs: JobRunner  # this process's share of the asynchronous jobs
    streams: StreamLimiter  # bounds on open event streams
    hub: StreamHub  # the thread that serves event streams handed off by Gunicorn's threads


def attach(app: Flask, services: Services) -> None:
    """Give `app` its services (create_app does, once)."""
    app.extensions[_EXTENSION] = services


def services(app: Flask | None = None) -> Services:
    """The services of `app`, by default the app handling the current request."""
    found: Services = (app or current_app).extensions[_EXTENSION]  # Flask's bag is untyped
    return found


def loaded_services(app: object) -> Services | None:
    """The services of `app` if `create_app` made it, else None (Gunicorn's worker_exit asks
    of whatever its worker loaded, or of nothing)."""
    found = app.extensions.get(_EXTENSION) if isinstance(app, Flask) else None
    return found if isinstance(found, Services) else None
