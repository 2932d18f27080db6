"""A running job's progress: its previews and finished images as the provider reports them,
kept in the job book and told as events (`partial_image`, `image`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from imagegen.books.interfaces import JobBook
from imagegen.errors import DatabaseUnavailable
from imagegen.jobs.answers import emit, preview_name
from imagegen.upstream.providers import GeneratedImage

log = logging.getLogger(__name__)

Update = Callable[[Callable[[dict[str, Any]], None]], None]


class JobProgress:
    """Records a running job's previews and finished images as the provider reports them."""

    def __init__(self, records: JobBook, job_id: str, update: Update) -> None:
        self.records = records
        self.job_id = job_id
        self.update = update  # applies a change to the owned record, in memory and stored

    def partial(self, image: int, index: int, data: bytes, fmt: str) -> None:
        url = self._save(preview_name(image, fmt, index), data)
        if url is None:
            return
        entry = {"image": image, "partial_image_index": index, "url": url}

        def mutate(record: dict[str, Any]) -> None:
            record["previews"].append(entry)
            record["progress"]["partial_images"] += 1
            emit(record, "partial_image", {"job_id": record["job_id"], **entry})

        self._update(mutate)

    def image(self, image: int, generated: GeneratedImage) -> None:
        url = self._save(preview_name(image, generated.format), generated.data)
        entry = {"image": image, "partial_image_index": None, "url": url}

        def mutate(record: dict[str, Any]) -> None:
            progress = record["progress"]
            progress["images_done"] += 1
            if url is not None:
                record["previews"].append(entry)
            emit(
                record,
                "image",
                {
                    "job_id": record["job_id"],
                    **entry,
                    "images_done": progress["images_done"],
                    "count": progress["count"],
                },
            )

        self._update(mutate)

    def _save(self, name: str, data: bytes) -> str | None:
        try:
            self.records.save_preview(self.job_id, name, data)
        except (OSError, DatabaseUnavailable) as exc:
            log.warning("preview %s of job %s not kept: %s", name, self.job_id, exc)
            return None
        return f"/jobs/{self.job_id}/previews/{name}"

    def _update(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        try:
            self.update(mutate)
        except (OSError, DatabaseUnavailable) as exc:
            # Progress is a courtesy: never fail the generation for it. A lost lease
            # (LeaseLost) does stop it: another process may be running the job.
            log.warning("progress of job %s not recorded: %s", self.job_id, exc)
