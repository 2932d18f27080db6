"""The one operation every face calls: admit, reserve, produce, store, settle.

POST /generate, /edit and /variations, their OpenAI-compatible /v1 forms, asynchronous jobs
and the MCP tools all make images through `ImageMaker`, so they are admitted against the
caps, logged, timed, stored and accounted alike:

    admit     the caller may ask for this (token limits) and the caps have room: reserve it
    produce   the provider makes the images (an edit's produce sends its input images)
    store     the store writes them as one job, atomically (or, a bucket being away, keeps
              them in its spool until it is back: JobKept, 202)
    settle    the reservation becomes the real cost (or is released if nothing was made)
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagegen.access.tokens import Caller
from imagegen.books.caps import retry_after_seconds
from imagegen.books.interfaces import GLOBAL, CapExceeded, CapsBook, Reservation
from imagegen.catalog.pricing import Pricing, pricing_for
from imagegen.errors import (
    JobKept,
    PermissionDenied,
    QuotaExceeded,
    ServiceError,
    ValidationError,
)
from imagegen.imaging.inputs import ImageInputs
from imagegen.imaging.request import ImageRequest, identified
from imagegen.observability import metrics
from imagegen.observability.logs import shorten
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore
from imagegen.upstream.providers import Generation, Provider
from imagegen.upstream.retry import Deadline

log = logging.getLogger(__name__)

# Makes the images of a request (the one `make` sends: with its end user's identifier).
Produce = Callable[[ImageRequest, Deadline], Generation]


@dataclass(frozen=True)
class Admission:
    """A request the caps let through: who asked, what was reserved and how it is priced."""

    caller: Caller
    reservation: Reservation
    estimated_usd: float | None  # None: the model has no per-image price to estimate from
    pricing: Pricing | None  # None: an operator's model without a price


class ImageMaker:
    """Makes images for requests and stores them as jobs, within the caps."""

    def __init__(
        self, settings: Settings, store: ImageStore, provider: Provider, ledger: CapsBook
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.ledger = ledger

    def admit(
        self,
        image_request: ImageRequest,
        caller: Caller,
        *,
        input_images: int = 0,
        request_id: str | None = None,
    ) -> Admission:
        """Check the caller may make these images and reserve them against the caps.

        Raises the error to answer (before any upstream call); returns the admission that
        `make` settles. Routes that answer before generating (asynchronous jobs) call it
        first, so a refusal is the answer instead of a failed job.
        """
        if caller.admin:
            raise PermissionDenied(
                "An admin token manages the service and reads usage; it cannot generate. "
                "Use a client token."
            )
        _check_allowed(image_request, caller)
        self.store.check_available()  # 503 STORAGE_UNAVAILABLE: nothing reserved or paid
        pricing = pricing_for(image_request.model.id)
        estimate: float | None = 0.0
        if self.provider.name != "placeholder":
            estimate = (
                pricing.estimate(
                    quality=image_request.options.get("quality"),
                    size=image_request.size,
                    count=image_request.count * _priced_frames(image_request),
                    input_images=input_images,
                )
                if pricing is not None
                else None
            )
            if estimate is None:
                _check_unpriced(image_request, caller, self.settings)
        try:
            reservation = self.ledger.reserve(
                caller.name,
                token_limits=caller.limits,
                global_limits=self.settings.global_limits,
                images=image_request.count,
                usd=estimate or 0.0,
                model=image_request.model.id,
            )
        except CapExceeded as exc:
            raise _refusal(exc, caller, image_request.count, estimate or 0.0, request_id) from None
        return Admission(caller, reservation, estimate, pricing)

    def release(self, admission: Admission) -> None:
        """Give back what `admit` reserved: the request was refused before anything was made
        (a full queue, say)."""
        _book(self.ledger.release, admission.reservation)

    def make(
        self,
        image_request: ImageRequest,
        *,
        caller: Caller,
        produce: Produce | None = None,
        operation: str = "generate",
        source: dict[str, Any] | None = None,
        admission: Admission | None = None,
        job_id: str | None = None,
        request_id: str | None = None,
        before_store: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Make images and store them as one job; return its metadata.

        `produce` makes the images (by default the provider's `generate`; see `producer`
        for edits and variations); `source` records what an edit or variation started
        from. `admission` is what `admit` returned when the route admitted the request
        itself (else it is admitted here for `caller`). `job_id` stores the job under the
        id an asynchronous job was given when it was accepted. `before_store` runs once the
        images are made (and billed), before they are stored; its JobKept stores nothing and
        settles their cost, as the store's does.
        """
        provider, settings = self.provider, self.settings
        if produce is None:
            produce = provider.generate
        if admission is None:
            admission = self.admit(
                image_request, caller, input_images=input_count(source), request_id=request_id
            )
        caller = admission.caller
        started = time.perf_counter()
        self._log_start(image_request, caller, operation, request_id)
        sent = identified(image_request, caller.name if caller.authenticated else None)
        try:
            self.store.check_available()  # again: a job admitted earlier runs now
            generation = produce(sent, Deadline(settings.request_deadline))
        except BaseException:
            _book(self.ledger.release, admission.reservation)
            raise
        cost = _cost(admission, generation)
        extra: dict[str, Any] = {
            "provider": provider.name,
            "operation": operation,
            "client": caller.name,
            "cost": cost,
        }
        if generation.served_by is not None:  # a named upstream of the models file
            extra["served_by"] = generation.served_by
        if source is not None:
            extra["source"] = source
        try:
            if before_store is not None:  # may say JobKept: the images are not stored
                before_store()
            metadata = self.store.save_job(
                image_request.as_dict(), generation, extra=extra, job_id=job_id
            )
        except JobKept as kept:
            # Made and paid for, and kept until the store takes it: its cost is settled now.
            _book(
                self.ledger.settle,
                admission.reservation,
                usd=cost["usd"] or 0.0,
                job_id=kept.job_id,
            )
            metrics.images_generated(image_request.model.id, operation, len(kept.images))
            raise
        except BaseException:
            # The upstream made (and billed) the images even though they could not be stored.
            _book(self.ledger.settle, admission.reservation, usd=cost["usd"] or 0.0, job_id=None)
            raise
        metrics.images_generated(image_request.model.id, operation, len(metadata["images"]))
        _book(
            self.ledger.settle,
            admission.reservation,
            usd=cost["usd"] or 0.0,
            job_id=metadata["job_id"],
        )
        log.info(
            "generated request_id=%s job_id=%s client=%s model=%s count=%d cost_usd=%s "
            "seconds=%.2f upstream=%s",
            request_id,
            metadata["job_id"],
            caller.name,
            image_request.model.id,
            len(metadata["images"]),
            "unknown" if cost["usd"] is None else f"{cost['usd']:.4f}",
            time.perf_counter() - started,
            generation.served_by or "default",
        )
        return metadata

    def _log_start(
        self, image_request: ImageRequest, caller: Caller, operation: str, request_id: str | None
    ) -> None:
        log.info(
            "generating request_id=%s operation=%s client=%s model=%s count=%d size=%s "
            "provider=%s prompt=%s",
            request_id,
            operation,
            caller.name,
            image_request.model.id,
            image_request.count,
            image_request.size,
            self.provider.name,
            shorten(image_request.prompt) if self.settings.log_prompts else "[not logged]",
        )

    def producer(self, inputs: ImageInputs, operation: str) -> Produce:
        """What makes an edit's or a variation's images: the provider, given these inputs."""
        provider = self.provider
        if operation == "edit":
            return lambda request, deadline: provider.edit(request, inputs, deadline)
        return lambda request, deadline: provider.vary(request, inputs, deadline)


def _check_allowed(image_request: ImageRequest, caller: Caller) -> None:
    """A token limited to some models, sizes, qualities or counts asks only for those."""
    limits = caller.limits
    model, quality = image_request.model, image_request.options.get("quality", "auto")
    asked = {  # field: (value, the allowed values, whether they cover it)
        # A snapshot is covered by its base's name (ModelSpec.named_in).
        "model": (model.id, limits.models, model.named_in(limits.models or set())),
        "size": (image_request.size, limits.sizes, image_request.size in (limits.sizes or ())),
        "quality": (quality, limits.qualities, quality in (limits.qualities or ())),
    }
    for field_name, (value, allowed, covered) in asked.items():
        if allowed is not None and not covered:
            raise PermissionDenied(
                f"This token may not use {field_name} {value!r}; it may use: "
                f"{', '.join(sorted(allowed))}.",
                details={"field": field_name, "allowed": sorted(allowed)},
            )
    if limits.max_count is not None and image_request.count > limits.max_count:
        raise PermissionDenied(
            f"This token may ask for at most {limits.max_count} image(s) per request.",
            details={"field": "count", "allowed_max": limits.max_count},
        )


def _check_unpriced(image_request: ImageRequest, caller: Caller, settings: Settings) -> None:
    """A model with no per-image price cannot be counted against a dollar cap before the
    call: refused when the token or the service has one."""
    capped = [
        (scope, whose)
        for scope, whose, limits in (
            ("token", "this token's", caller.limits),
            ("global", "the service's", settings.global_limits),
        )
        if limits.usd_per_day is not None
    ]
    if not capped:
        return
    scope, whose = capped[0]
    model = image_request.model.id
    raise PermissionDenied(
        f"Model {model} has no per-image price (its models-file entry gives none), so a "
        f"request cannot be counted against {whose} usd_per_day cap before the call. Use a "
        "priced model (GET /models shows each one's `pricing`), or ask the operator to give "
        f"{model} a `price`.",
        details={"field": "model", "cap": "usd_per_day", "scope": scope},
    )


def _refusal(
    exc: CapExceeded, caller: Caller, count: int, estimate: float, request_id: str | None
) -> ServiceError:
    """The answer to a request over a cap: 429 with when to retry, or 400 if it never fits."""
    whose = "the service's" if exc.scope == GLOBAL else "this token's"
    unit = "US dollars" if exc.cap == "usd_per_day" else "images"
    asked = f"${estimate:.4f} (estimated)" if exc.cap == "usd_per_day" else f"{count} image(s)"
    scope = "global" if exc.scope == GLOBAL else "token"
    details = {
        "scope": scope,
        "cap": exc.cap,
        "limit": exc.limit,
        "used": round(exc.used, 6),
    }
    log.info(
        "cap refused request_id=%s client=%s scope=%s cap=%s",
        request_id,
        caller.name,
        scope,
        exc.cap,
    )
    metrics.cap_refused(scope, exc.cap)
    if exc.retry_after is None:
        return ValidationError(
            f"This request ({asked}) is larger than {whose} whole {exc.cap} cap of "
            f"{exc.limit:g} {unit}; ask for less.",
            details={**details, "field": "count"},
        )
    wait = retry_after_seconds(exc.retry_after)
    return QuotaExceeded(
        f"This request ({asked}) would cross {whose} {exc.cap} cap of {exc.limit:g} {unit} "
        f"({round(exc.used, 4):g} used). Room frees up in {wait} s: retry after Retry-After. "
        "This is the key holder's cap, not OpenAI's rate limit.",
        retry_after=wait,
        details=details,
    )


def input_count(source: dict[str, Any] | None) -> int:
    """How many input images a job sends upstream, from its `source` (0 for a generation)."""
    return len(source.get("images", ())) if source else 0


def _book(update: Callable[..., None], reservation: Reservation, **figures: Any) -> None:
    """Settle or release a reservation; if the books cannot be written (a full disk), the
    reservation keeps counting at its estimate, and the answer is not lost over it."""
    try:
        update(reservation, **figures)
    except (ServiceError, sqlite3.Error) as exc:
        log.error(
            "cannot update the ledger (%s); reservation %d stays at its estimate",
            exc,
            reservation.id,
        )


def _cost(admission: Admission, generation: Generation) -> dict[str, Any]:
    """The job's cost: from the upstream's token usage when it reports it, else the table
    (`price_table_invalid_usage` when the report could not be true); `unpriced` (null
    dollars) for an operator's model with neither a per-image price nor usage to cost."""
    if generation.placeholder:
        return {"estimated_usd": 0.0, "usd": 0.0, "basis": "placeholder"}
    real = admission.pricing.cost(generation.usage) if admission.pricing else None
    if real is not None:
        basis = "usage"
    elif admission.estimated_usd is None:
        basis = "unpriced"  # no per-image price, and no usage to cost: unknown
    else:
        basis = "price_table_invalid_usage" if generation.usage_invalid else "price_table"
    return {
        "estimated_usd": admission.estimated_usd,
        "usd": real if real is not None else admission.estimated_usd,
        "basis": basis,
    }


def _priced_frames(image_request: ImageRequest) -> int:
    """The stills an image's estimate prices: one, or for an animation the cells of the
    sheet its frames are laid out on (the frame step it is billed at). An SVG is estimated
    as its reference image; the authoring model's tokens settle from the upstream's usage."""
    rule = image_request.output_rule
    if rule is None or rule.frames is None:
        return 1
    return rule.frames.cells(int(image_request.option("frame_count") or 1))
