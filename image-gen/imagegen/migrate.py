"""`python -m imagegen.migrate [SOURCE]`: move a single-node images directory, with its books,
to where replicas on several nodes share them (README, "Moving from one node to several").

    IMAGE_GEN_STORAGE_URL=s3://...  every job: metadata.json, its images, deletion marks
                                    (the index, in PostgreSQL or, without it, in SQLite)
    IMAGE_GEN_DATABASE_URL=...      the caps ledger, the Idempotency-Keys, the asynchronous
                                    jobs (queued, running, finished, webhooks pending)

The target is read from the same settings as the service's (imagegen.settings), so the
operator runs this with the replicas' environment; the source is SOURCE, else
IMAGE_GEN_IMAGES_DIR. Nothing in the source is changed. Each job is copied blobs first and
indexed last, in one transaction, so a run killed at any point leaves jobs that are whole or
absent, and a second run carries on where the first stopped; a job the target has already
takes the source's deletions since, and what was deleted through the target (an image, a
whole job: moved_jobs remembers it) stays deleted. Ledger entries and keys are each added
once, however often this runs. Cached thumbnails are not copied: they are made again when
first asked for.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from imagegen import strictjson
from imagegen.errors import DatabaseUnavailable, ServiceError
from imagegen.settings import Settings, SettingsError
from imagegen.storage.blobs import BadKey, BlobNotFound, BlobStoreUnavailable, check_key
from imagegen.storage.images import ImageStore
from imagegen.storage.index import normalize_id
from imagegen.storage.layout import Layout, job_key, metadata_key

if TYPE_CHECKING:
    from imagegen.books.open import Books
    from imagegen.books.postgres import PostgresCapsBook, PostgresIdempotencyBook
    from imagegen.books.postgres_jobs import PostgresJobBook

USAGE_ERROR = 2
_IN_MEMORY = 16 << 20  # images up to this size are read whole and put in one request

DESCRIPTION = """\
Copy a single-node image-gen store, with its books, to S3 and PostgreSQL, so that
replicas on several nodes serve every image and keep every cap of the one node.

Run it with the replicas' environment: IMAGE_GEN_STORAGE_URL=s3://<bucket>/<prefix> and
the AWS variables for the images, IMAGE_GEN_DATABASE_URL (or _FILE) for the books. With
only a database, the images stay in the directory the replicas share (SOURCE must be
IMAGE_GEN_IMAGES_DIR); with only a bucket, the books stay in that directory too.

What moves: every job (metadata.json, its images, deletion marks: a deleted image stays
deleted), the listing order, the caps ledger (what each token used in the current windows),
the Idempotency-Keys (a retry after the move replays the first answer), and the
asynchronous jobs (a queued or unfinished one is taken up by a replica, as a dead
replica's is). Cached thumbnails are not copied: they are made again when first asked for.

Stop the single-node service first: a job it is running is skipped (run again once it is
stopped). The command can be killed and run again at any time: it continues, and copies
nothing twice. A job the target has already takes the source's deletions since; an image
or a job deleted through the replicas stays deleted.
"""

EPILOG = """\
exit status: 0 everything moved (or was there already); 1 something was not moved (the
summary says what and why; run again once fixed); 2 the settings or the arguments are wrong.
"""


class _Skip(Exception):
    """This item is not moved; the message says why (it never holds a secret)."""


class _TargetLost(Exception):
    """The bucket or the database cannot be reached: the run ends here."""


@dataclass
class Tally:
    """What happened to the items of one kind."""

    copied: int = 0
    already: int = 0
    kept: int = 0  # keys the target holds under a claim of its own
    skipped: list[str] = field(default_factory=list)

    def line(self, name: str, verb: str, *, kept: bool = False) -> str:
        text = f"{name}: {self.copied} {verb}, {self.already} already there"
        if kept:
            text += f", {self.kept} kept as the target has them"
        return text + f", {len(self.skipped)} skipped"


@dataclass
class Report:
    """The run's counts, its progress lines (stderr) and its summary (stdout)."""

    dry_run: bool
    progress: TextIO = sys.stderr
    jobs: Tally = field(default_factory=Tally)
    ledger: Tally = field(default_factory=Tally)
    keys: Tally = field(default_factory=Tally)
    async_jobs: Tally = field(default_factory=Tally)
    images: int = 0
    image_bytes: int = 0
    deleted: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_moved: list[str] = field(default_factory=list)  # what this target does not take

    def say(self, line: str) -> None:
        print(line, file=self.progress, flush=True)

    @property
    def complete(self) -> bool:
        tallies = (self.jobs, self.ledger, self.keys, self.async_jobs)
        return not self.errors and not any(tally.skipped for tally in tallies)

    def summary(self) -> str:
        verb = "would be copied" if self.dry_run else "copied"
        lines = ["image-gen migrate: " + ("dry run, nothing written" if self.dry_run else "done")]
        if self.dry_run:
            lines.append(
                "target: not looked at (a dry run connects to nothing); what it has already "
                "is counted by a real run"
            )
        lines.append(self.jobs.line("jobs", verb))
        lines.append(
            f"images: {self.images} {verb} ({_size(self.image_bytes)}), "
            f"{self.deleted} deleted kept as deleted"
        )
        lines.append("thumbnails: not copied (made again when first asked for)")
        lines.append(self.ledger.line("caps ledger entries", verb))
        lines.append(self.keys.line("idempotency keys", verb, kept=True))
        lines.append(self.async_jobs.line("asynchronous jobs", verb))
        lines += [f"not moved: {what}" for what in self.not_moved]
        for name, tally in (
            ("job", self.jobs),
            ("ledger", self.ledger),
            ("key", self.keys),
            ("asynchronous job", self.async_jobs),
        ):
            lines += [f"skipped {name} {why}" for why in tally.skipped]
        lines += [f"warning: {warning}" for warning in self.warnings]
        lines += [f"error: {error}" for error in self.errors]
        if not self.dry_run:
            lines.append(
                "result: complete"
                if self.complete
                else "result: NOT complete: fix what is said above and run again"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class TargetBooks:
    """The books in PostgreSQL, which take what other books kept."""

    caps: PostgresCapsBook
    idempotency: PostgresIdempotencyBook
    jobs: PostgresJobBook

    @classmethod
    def of(cls, books: Books) -> TargetBooks:
        """The books `open_books` opened on a database."""
        from imagegen.books.postgres import PostgresCapsBook, PostgresIdempotencyBook
        from imagegen.books.postgres_jobs import PostgresJobBook

        assert isinstance(books.caps, PostgresCapsBook)
        assert isinstance(books.idempotency, PostgresIdempotencyBook)
        assert isinstance(books.jobs, PostgresJobBook)
        return cls(books.caps, books.idempotency, books.jobs)


class Migration:
    """One run: the source directory, the target's store and books, and the report."""

    def __init__(
        self,
        source: Path,
        report: Report,
        *,
        store: ImageStore | None = None,
        books: TargetBooks | None = None,
    ) -> None:
        self.layout = Layout(source)
        self.source = ImageStore.on_disk(self.layout, fsync=False)
        self.report = report
        self.store = store  # None: the images stay where they are
        self.books = books  # None: the books stay where they are

    # --- jobs and images ------------------------------------------------------------------

    def move_jobs(self) -> None:
        """Every stored job, oldest first (a listing's newest jobs come last)."""
        from imagegen.storage.index import FileIndex

        index = self.source.index
        assert isinstance(index, FileIndex)
        order = list(reversed(index.scan_order()))
        total = len(order)
        for number, (stamp, job_id) in enumerate(order, start=1):
            where = f"[{number}/{total}] job {job_id}"
            try:
                outcome = self._move_job(job_id, stamp)
            except _Skip as exc:
                self.report.jobs.skipped.append(f"{job_id}: {exc}")
                self.report.say(f"{where}: skipped: {exc}")
                continue
            except (BlobStoreUnavailable, DatabaseUnavailable) as exc:
                raise _TargetLost(_unreachable(exc)) from None
            except OSError as exc:
                self.report.errors.append(f"job {job_id}: {_why(exc)}")
                self.report.say(f"{where}: error: {_why(exc)}")
                continue
            self.report.say(f"{where}: {outcome}")

    def _source_images(self, job_id: str, metadata: dict[str, Any]) -> list[tuple[str, str, bool]]:
        """(image id, blob key, deleted) of each image of a source job. Deleted: not in the
        source's index, as the source service goes by (metadata.json marks it too)."""
        entries = metadata.get("images")
        if not isinstance(entries, list):
            raise _Skip("its metadata.json has no list of images")
        images = []
        for entry in entries:
            image_id = normalize_id(str(entry.get("id", ""))) if isinstance(entry, dict) else None
            name = entry.get("file") if isinstance(entry, dict) else None
            if image_id is None or not isinstance(name, str):
                raise _Skip("its metadata.json names an image without a well-formed id or file")
            try:
                key = check_key(job_key(job_id, name))
            except BadKey:
                raise _Skip("its metadata.json names an image file outside the job") from None
            deleted = self.source.index.find(image_id) != (job_id, key)
            images.append((image_id, key, deleted))
        return images

    def _move_job(self, job_id: str, stamp: int) -> str:
        metadata = self.source.index.metadata(job_id)
        if metadata is None or metadata.get("job_id") != job_id:
            raise _Skip("its metadata.json is missing or damaged")
        images = self._source_images(job_id, metadata)
        deleted = sum(gone for _, _, gone in images)
        described = f"{len(images)} images, {deleted} deleted"
        if self.store is None:  # a dry run
            self.report.deleted += deleted
            for image_id, key, gone in images:
                if not gone:
                    self.report.images += 1
                    self.report.image_bytes += self._source_size(image_id, key) or 0
            self.report.jobs.copied += 1
            return f"would be copied ({described})"
        from imagegen.storage.tableindex import PostgresImageIndex, SQLiteImageIndex

        index = self.store.index
        assert isinstance(index, PostgresImageIndex | SQLiteImageIndex)
        there = index.metadata(job_id)
        if there is None and index.moved(job_id):
            self.report.jobs.already += 1
            return "already moved, and deleted through the target since: left deleted"
        if there is not None:
            metadata, images = _keep_deletions(metadata, images, there)
            if metadata == there and index.stamp(job_id) == stamp:
                self.report.jobs.already += 1
                return "already there"
        blobs = self.store.blobs
        # The mirror first: the bucket's sweep never takes a job whose metadata.json is there,
        # so images an earlier, interrupted run left (over an hour old, no row yet) stay
        # while the rest are copied; nothing reads the job before its rows are written.
        blobs.put(metadata_key(job_id), _dump(metadata))
        for image_id, key, gone in images:
            if gone:
                blobs.delete(key)  # a run before the source deleted it put it there
                self.report.deleted += 1
            else:
                self._copy_image(image_id, key)
        index.import_job(job_id, stamp, metadata, images)
        self.report.jobs.copied += 1
        return f"copied ({described})"

    def _source_size(self, image_id: str, key: str) -> int | None:
        try:
            return self.source.blobs.info(key).size
        except BlobNotFound:
            self.report.warnings.append(
                f"image {image_id}: its file is missing in the source (it was not served "
                "there either); its entry is copied"
            )
            return None

    def _copy_image(self, image_id: str, key: str) -> None:
        """Put the image's bytes in the target unless the same size is there already (a
        put is atomic: a blob there is whole)."""
        assert self.store is not None
        size = self._source_size(image_id, key)
        if size is None:
            return
        try:
            if self.store.blobs.info(key).size == size:
                return
        except BlobNotFound:
            pass
        if size <= _IN_MEMORY:
            self.store.blobs.put(key, self.source.blobs.get(key))
        else:
            with self.source.blobs.open(key) as stream:
                self.store.blobs.put(key, stream)
        self.report.images += 1
        self.report.image_bytes += size

    # --- the books --------------------------------------------------------------------------

    def move_ledger(self) -> None:
        """The caps ledger and the Idempotency-Keys, each in one transaction."""
        from imagegen.books.sqlite import SQLiteCapsBook, SQLiteIdempotencyBook

        if not self.layout.ledger_file.is_file():
            self.report.say("caps ledger: none in the source")
            return
        entries = SQLiteCapsBook(self.layout.ledger_file).entries()
        keys = SQLiteIdempotencyBook(self.layout.ledger_file).stored_keys()
        if self.books is None:
            self.report.ledger.copied += len(entries)
            self.report.keys.copied += len(keys)
            return
        try:
            added, already = self.books.caps.import_entries(entries)
            self.report.ledger.copied += added
            self.report.ledger.already += already
            self.report.say(f"caps ledger: {added} entries copied, {already} already there")
            added, already, kept = self.books.idempotency.import_keys(keys)
        except DatabaseUnavailable as exc:
            raise _TargetLost(_unreachable(exc)) from None
        self.report.keys.copied += added
        self.report.keys.already += already
        self.report.keys.kept += kept
        self.report.say(
            f"idempotency keys: {added} copied, {already} already there, {kept} kept as the "
            "target has them"
        )

    def move_async_jobs(self) -> None:
        """Every asynchronous job's record, inputs, previews and webhook secret."""
        from imagegen.books.files import FileJobBook

        jobs = FileJobBook(self.layout.root, fsync=False)
        ids = jobs.job_ids()
        for number, job_id in enumerate(ids, start=1):
            where = f"[{number}/{len(ids)}] asynchronous job {job_id}"
            if jobs.is_held(job_id):
                why = (
                    "a running process holds it (is the single-node service still running? "
                    "stop it, then run this again)"
                )
                self.report.async_jobs.skipped.append(f"{job_id}: {why}")
                self.report.say(f"{where}: skipped: {why}")
                continue
            moved = jobs.export(job_id)
            if moved is None:
                why = "its record is missing or damaged"
                self.report.async_jobs.skipped.append(f"{job_id}: {why}")
                self.report.say(f"{where}: skipped: {why}")
                continue
            if self._deleted_since(job_id, moved.record):
                self.report.async_jobs.already += 1
                self.report.say(f"{where}: deleted through the target since it moved: left so")
                continue
            state = f"{moved.record.get('status')}, {moved.listed or 'on no list'}"
            if self.books is None:
                self.report.async_jobs.copied += 1
                self.report.say(f"{where}: would be copied ({state})")
                continue
            try:
                added = self.books.jobs.import_job(moved)
            except DatabaseUnavailable as exc:
                raise _TargetLost(_unreachable(exc)) from None
            if added:
                self.report.async_jobs.copied += 1
                self.report.say(f"{where}: copied ({state})")
            else:
                self.report.async_jobs.already += 1
                self.report.say(f"{where}: already there")

    def _deleted_since(self, job_id: str, record: dict[str, Any]) -> bool:
        """Whether a finished job was moved and then deleted through the target (DELETE
        /jobs/<id> removes its images and its record): it is not brought back."""
        from imagegen.books.interfaces import FINAL
        from imagegen.storage.tableindex import PostgresImageIndex, SQLiteImageIndex

        index = self.store.index if self.store is not None else None
        if not isinstance(index, PostgresImageIndex | SQLiteImageIndex):
            return False
        return record.get("status") in FINAL and index.moved(job_id) and not index.metadata(job_id)


def _keep_deletions(
    metadata: dict[str, Any], images: list[tuple[str, str, bool]], there: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str, bool]]]:
    """The source's job with what the target deleted since kept deleted: an image deleted
    through the replicas must not come back when this runs again."""
    gone = {
        str(entry.get("id")): entry
        for entry in there.get("images", [])
        if isinstance(entry, dict) and entry.get("status", "available") != "available"
    }
    if not gone:
        return metadata, images
    merged = copy.deepcopy(metadata)
    for entry in merged.get("images", []):
        if entry.get("id") in gone and entry.get("status", "available") == "available":
            entry["status"] = "deleted"
            if "deleted_at" in gone[entry["id"]]:
                entry["deleted_at"] = gone[entry["id"]]["deleted_at"]
    return merged, [(image_id, key, gone_ or image_id in gone) for image_id, key, gone_ in images]


def _dump(metadata: dict[str, Any]) -> bytes:
    """metadata.json as the store writes it."""
    return strictjson.dumps(metadata, indent=2, ensure_ascii=False).encode() + b"\n"


def _size(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB" if count >= 1 << 20 else f"{count} bytes"


def _why(exc: OSError) -> str:
    """An OSError's reason without the path or URL it may carry."""
    return exc.strerror or type(exc).__name__


def _unreachable(exc: BaseException) -> str:
    what = "the database" if isinstance(exc, DatabaseUnavailable) else "the bucket"
    detail = _why(exc) if isinstance(exc, OSError) else type(exc).__name__
    return (
        f"{what} cannot be reached ({detail}); the run stopped there, and what was copied "
        "stays: run again once it answers"
    )


# --- the command ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imagegen.migrate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="the single-node images directory (default: IMAGE_GEN_IMAGES_DIR)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count what the source holds and would be copied; connect to nothing, write nothing",
    )
    return parser


def _refusal(settings: Settings, source: Path) -> str | None:
    """Why this source and these settings cannot be migrated; None if they can."""
    if not (source / ".").is_dir():
        return f"the source {source} is not a directory"
    if settings.storage_url is None and settings.database_url is None:
        return (
            "nothing to move to: set IMAGE_GEN_STORAGE_URL=s3://<bucket>/<prefix> (and the AWS "
            "variables) and/or IMAGE_GEN_DATABASE_URL (or _FILE), as for the replicas"
        )
    stays = source.absolute() != settings.images_dir
    if settings.storage_url is None and stays:
        return (
            "with a database only, the images stay in the directory the replicas share: "
            "SOURCE must be IMAGE_GEN_IMAGES_DIR (to copy files elsewhere, use cp -a or rsync)"
        )
    if settings.database_url is None and stays:
        return (
            "with a bucket but no database, the books stay in the node's images directory: "
            "SOURCE must be IMAGE_GEN_IMAGES_DIR"
        )
    return None


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Run the command; its exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
    except SettingsError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return USAGE_ERROR
    source = Path(args.source).absolute() if args.source else settings.images_dir
    refusal = _refusal(settings, source)
    if refusal is not None:
        print(f"migrate: {refusal}", file=sys.stderr)
        return USAGE_ERROR
    report = Report(dry_run=args.dry_run)
    targets = []
    if settings.storage_url is not None:
        targets.append("the bucket of IMAGE_GEN_STORAGE_URL")
    if settings.database_url is not None:
        targets.append("the database of IMAGE_GEN_DATABASE_URL")
    report.say(f"migrate: from {source} to {' and '.join(targets)}")
    try:
        run(settings, source, report)
    except _TargetLost as exc:
        report.errors.append(str(exc))
    except KeyboardInterrupt:
        report.errors.append("interrupted; run again to continue")
        print(report.summary())
        return 130
    except ServiceError as exc:  # no credentials, a database that cannot be reached...
        report.errors.append(str(exc))
    print(report.summary())
    return 0 if report.complete else 1


def run(settings: Settings, source: Path, report: Report) -> None:
    """Open the target (unless a dry run) and move the jobs, then the books: the jobs
    first, so that an unfinished asynchronous job whose images were stored is found
    complete by the replica that takes it up."""
    if settings.storage_url is None:
        report.not_moved.append("images: they stay in the images directory the replicas share")
    if settings.database_url is None:
        report.not_moved.append(
            "caps ledger, idempotency keys, asynchronous jobs: they stay in the images "
            "directory (no database)"
        )
    if report.dry_run:
        migration = Migration(source, report)
        if settings.storage_url is not None:
            migration.move_jobs()
        if settings.database_url is not None:
            migration.move_ledger()
            migration.move_async_jobs()
        return
    from imagegen.books.open import open_books
    from imagegen.storage.open import open_store

    pool = books = store = None
    layout = Layout(settings.images_dir, metrics=settings.metrics_dir)
    if settings.database_url is not None:
        from psycopg_pool import PoolTimeout

        from imagegen.books.postgres import open_pool

        pool = open_pool(settings.database_url, max_size=2)
        try:
            books = TargetBooks.of(
                open_books(
                    layout,
                    fsync=settings.fsync,
                    max_running=settings.max_running_jobs,
                    database_url=settings.database_url,
                    pool=pool,
                )
            )
        except (PoolTimeout, DatabaseUnavailable) as exc:
            pool.close()
            raise _TargetLost(_unreachable(DatabaseUnavailable())) from exc
    try:
        if settings.storage_url is not None:
            store = open_store(
                layout, fsync=settings.fsync, storage_url=settings.storage_url, pool=pool
            )
            if not store.blobs.writable():
                raise _TargetLost(
                    "the bucket cannot be reached or written with these credentials "
                    "(AWS variables): nothing was copied"
                )
        migration = Migration(source, report, store=store, books=books)
        if store is not None:
            migration.move_jobs()
        if books is not None:
            migration.move_ledger()
            migration.move_async_jobs()
    finally:
        if pool is not None:
            pool.close()


if __name__ == "__main__":
    sys.exit(main())
