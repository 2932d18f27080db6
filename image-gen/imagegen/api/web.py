"""GET /: the web page, a form to generate and a gallery of recent images."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from imagegen import __version__
from imagegen.apidoc import errors, operation, text_response
from imagegen.services import services

bp = Blueprint("web", __name__)

# Everything the page uses is served by the app itself; nothing inline, nothing third-party.
# `blob:` images: with client tokens the script fetches images with the token and shows them
# through object URLs, since an <img src> cannot send an Authorization header.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.get("/")
@operation(
    "webPage",
    tag="service",
    summary="The web page: a form to generate and a gallery of recent images",
    responses={"200": text_response("An HTML page.", "text/html"), **errors(500)},
)
def index() -> ResponseReturnValue:
    """The page; its script asks for a client token if /health says so, then calls the API."""
    settings = services().settings
    html = render_template(
        "index.html",
        version=__version__,
        placeholder=settings.provider == "placeholder",
        key_missing=settings.provider != "placeholder" and not settings.api_key_configured,
        default_model=settings.default_model,
    )
    return (
        html,
        200,
        {
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
