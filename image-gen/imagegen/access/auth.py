"""Who is calling: the bearer token on each request, checked before any route runs.

With no tokens file the service is open, as the original was: every caller is
"anonymous" (the global caps still hold). With one, every endpoint but `/health` and the
web page's shell needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flask import Flask, g, request

from imagegen.access.tokens import ANONYMOUS, ANONYMOUS_CALLER, Caller, Token, find_token
from imagegen.errors import AuthenticationRequired, InvalidToken, PermissionDenied, ServiceError
from imagegen.services import services

log = logging.getLogger(__name__)

# The page's HTML and assets hold no data; it asks for a token and sends it with each call.
PUBLIC_ENDPOINTS = frozenset({"health.health", "web.index", "static", "web.static"})
# Only the key holder's admin tokens see these.
ADMIN_ENDPOINTS = frozenset({"metrics.scrape"})


def register_auth(app: Flask) -> None:
    """Identify the caller of every request (g.caller) or refuse it with 401."""
    settings = services(app).settings
    if settings.tokens is not None:  # auth_required, in a form that tells mypy tokens is set
        log.info(
            "client tokens required: %d token(s) from %s",
            len(settings.tokens),
            settings.tokens_file,
        )
    else:
        log.warning(
            "no IMAGE_GEN_TOKENS_FILE: the service is open to anyone who can reach it "
            "(global caps still apply)"
        )

    @app.before_request
    def _authenticate() -> None:
        tokens = services().settings.tokens
        if tokens is None:  # not settings.auth_required: the service is open
            g.caller = ANONYMOUS_CALLER
            return
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
            return  # unknown routes answer 404/405 as usual
        caller = g.caller = authenticate(request.headers.get("Authorization"), tokens)
        if request.endpoint in ADMIN_ENDPOINTS and not caller.admin:
            raise PermissionDenied("Only an admin token may read this.")
        if request.method == "DELETE" and not caller.admin:
            _check_owner(caller)


def _check_owner(caller: Caller) -> None:
    """Only the token that made a job (or an admin) may delete it or its images."""
    store = services().store
    args = request.view_args or {}
    job_id = args.get("job_id")
    if "image_id" in args:
        try:
            job_id = store.find_image(args["image_id"]).job_id
        except ServiceError:
            return  # the route answers 404
    owner = _owner(job_id) if isinstance(job_id, str) else None
    if owner is not None and owner != caller.name:
        raise PermissionDenied(
            "Only the token that made this job, or an admin token, may delete it."
        )


def _owner(job_id: str) -> str | None:
    """The name of the token that made the job, None if there is no such job: from its
    metadata once stored, else from its asynchronous record (queued, running or failed)."""
    parts = services()
    metadata = parts.store.job_metadata(job_id)
    if metadata is not None:
        client: str | None = metadata.get("client", ANONYMOUS)
        return client
    record = parts.records.read(job_id)
    return None if record is None else record.get("caller") or ANONYMOUS


def authenticate(header: str | None, tokens: Iterable[Token]) -> Caller:
    """The caller a bearer `Authorization` header names; 401 errors when it names none."""
    if not header:
        raise AuthenticationRequired(
            "This service needs a client token: send 'Authorization: Bearer <token>'. "
            "The service's operator issues tokens."
        )
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or " " in secret:
        raise InvalidToken("Send the token as 'Authorization: Bearer <token>'.")
    token = find_token(tokens, secret)
    if token is None:
        raise InvalidToken("The client token is not valid (unknown, mistyped or revoked).")
    return Caller(token.name, admin=token.admin, limits=token.limits, authenticated=True)


def identified_caller() -> Caller | None:
    """The caller `register_auth` identified for this request; None before it ran and on the
    public endpoints of a service with tokens."""
    caller = g.get("caller")
    return caller if isinstance(caller, Caller) else None


def current_caller() -> Caller:
    """The current request's caller (anonymous outside a request or when the service is open)."""
    return identified_caller() or ANONYMOUS_CALLER
