"""Which asynchronous jobs can be started again after their process died, and how.

A job whose process died (SIGKILL, a crash, a recycled worker) is rebuilt from its record:
its request, and for an edit or variation the input images kept with the record until the
job ends. `REBUILDERS` is the whole list; a job of an operation not in it, or one whose
inputs were not kept, fails with JOB_INTERRUPTED instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imagegen.books.interfaces import JobBook
from imagegen.errors import JobInterrupted
from imagegen.imaging.core import ImageMaker, Produce
from imagegen.imaging.formats import EXTENSIONS
from imagegen.imaging.inputs import ImageInputs, InputImage, default_model_for, parse_edit_request
from imagegen.imaging.request import ImageRequest, parse_generate_request
from imagegen.imaging.uploads import MARKUP_FIELD, MASK_FIELD
from imagegen.settings import Settings


@dataclass(frozen=True)
class Rebuilt:
    """A job rebuilt from its record: the request and what makes its images (None: the
    provider's generate)."""

    request: ImageRequest
    produce: Produce | None = None


# From the record, the settings, the records (for inputs kept with the job) and the maker.
Rebuild = Callable[[dict[str, Any], Settings, JobBook, ImageMaker], Rebuilt]

_DESCRIBED = ("format", "width", "height", "bytes", "sha256")  # what InputImage.record adds


def rebuild_generation(
    record: dict[str, Any], settings: Settings, records: JobBook, maker: ImageMaker
) -> Rebuilt:
    """A generation: its request is all there is."""
    return Rebuilt(parse_generate_request(record["request"], default_model=settings.default_model))


def rebuild_from_inputs(
    record: dict[str, Any], settings: Settings, records: JobBook, maker: ImageMaker
) -> Rebuilt:
    """An edit or variation, from its record and the input images kept with it."""

    def kept(name: str, entry: dict[str, Any], field: str, label: str) -> InputImage:
        data = records.read_input(record["job_id"], f"{name}.{EXTENSIONS[entry['format']]}")
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise JobInterrupted(
                f"The process running this {record['operation']} stopped, and its input "
                "images are no longer on disk, so it cannot be started again. Submit it again."
            )
        origin = {key: value for key, value in entry.items() if key not in _DESCRIBED}
        return InputImage.from_bytes(data, field=field, label=label, origin=origin)

    source, operation = record["source"], record["operation"]
    images = tuple(
        kept(f"image-{n}", entry, "image", f"image {n}")
        for n, entry in enumerate(source["images"], start=1)
    )
    mask = kept("mask", source["mask"], MASK_FIELD, "the mask") if source.get("mask") else None
    markup = None
    if source.get("markup"):
        markup = kept("markup", source["markup"], MARKUP_FIELD, "the markup")
    inputs = ImageInputs(images, mask, markup)
    image_request = parse_edit_request(
        record["request"],
        inputs,
        operation=operation,
        default_model=default_model_for(operation, settings.default_model),
    )
    return Rebuilt(image_request, maker.producer(inputs, operation))


REBUILDERS: Mapping[str, Rebuild] = {
    "generate": rebuild_generation,
    "edit": rebuild_from_inputs,
    "variation": rebuild_from_inputs,
}


def kept_inputs(inputs: ImageInputs) -> dict[str, bytes]:
    """The files an asynchronous edit keeps with its record until it ends, named by position
    (what `rebuild_from_inputs` reads back)."""
    kept = {
        f"image-{n}.{EXTENSIONS[image.format]}": image.data
        for n, image in enumerate(inputs.images, start=1)
    }
    if inputs.mask is not None:
        kept[f"mask.{EXTENSIONS[inputs.mask.format]}"] = inputs.mask.data
    if inputs.markup is not None:
        kept[f"markup.{EXTENSIONS[inputs.markup.format]}"] = inputs.markup.data
    return kept
