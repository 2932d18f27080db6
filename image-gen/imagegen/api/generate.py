"""POST /generate: make images for a prompt and store them as one job."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue

from imagegen.access.auth import current_caller
from imagegen.api.parts import ASYNC_DESCRIPTION, ASYNC_PARAMETERS, STORED_JOB, accepted_response
from imagegen.apidoc import errors, json_body, operation
from imagegen.imaging.answers import answer_body
from imagegen.imaging.request import ImageRequest, parse_generate_request, read_json
from imagegen.jobs.submit import respond_async
from imagegen.services import services

bp = Blueprint("generate", __name__)


@bp.post("/generate")
@operation(
    "generate",
    tag="images",
    summary="Generate images for a prompt and store them as one job",
    description="The body is checked against the model's catalog entry: fields the model does "
    "not take, values outside its ranges and shut-down models are refused with 400 before any "
    "upstream call. A deprecated model works and adds `warnings`. " + ASYNC_DESCRIPTION,
    parameters=ASYNC_PARAMETERS,
    body=json_body("GenerateRequest"),
    responses={
        "200": STORED_JOB,
        **accepted_response(),
        **errors(400, 413, 415, 429, 500, 502, 504, 507),
        **errors(503),
    },
    links={
        "GetImage": ("getImage", {"image_id": "$response.body#/images/0/id"}),
        "DeleteImage": ("deleteImage", {"image_id": "$response.body#/images/0/id"}),
        "GetJob": ("getJob", {"job_id": "$response.body#/job_id"}),
        "DeleteJob": ("deleteJob", {"job_id": "$response.body#/job_id"}),
    },
)
def generate() -> ResponseReturnValue:
    """Generate `count` images; answer the job id and a URL for each stored image."""
    settings = services().settings
    image_request = parse_generate_request(read_json(request), default_model=settings.default_model)
    if (accepted := respond_async(image_request)) is not None:
        return accepted
    return jsonify(answer_body(image_request, make_images(image_request)))


def make_images(image_request: ImageRequest, **options: Any) -> dict[str, Any]:
    """`ImageMaker.make` for the current request's caller; the stored job's metadata.
    `options` are `make`'s (produce, operation, source)."""
    return services().maker.make(
        image_request, caller=current_caller(), request_id=g.get("request_id"), **options
    )
