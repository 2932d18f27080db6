"""Speed with the shared store of issue 14: images in S3, books and the index in PostgreSQL.

Starts a SeaweedFS S3 server (`weed server -filer -s3`, tests/support/seaweed.py) and a
throwaway PostgreSQL server (tests/support/postgres.py), and the fake upstream and the
service as bench/bench.py does (its plumbing, reused: the same calls, checks and figures),
with IMAGE_GEN_STORAGE_URL=s3://... and IMAGE_GEN_DATABASE_URL_FILE set, and prints:

  (c)  added latency per /generate (1 MiB image, L = 0) on the images directory and on
       S3 + PostgreSQL, measured in the same run, and their ratio (target <= 2x)
  (a)  32 and 128 concurrent /generate at L = 1 s on one replica and spread over three
       (three Gunicorn services on the same bucket and database), wall / L
  (d)  GET /images/<id> median with 10,000 jobs in the bucket and its index

It never asserts on timings; it exits 1 only when the service answers wrongly or a server
cannot be started. Everything listens on 127.0.0.1; every loop is bounded in count and
every wait in time.

    .venv/bin/python bench/replicas.py [--only c,a,d] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scale import cpu_times, process_tree

import bench
from bench import APP_DIR, HOST, REPO, FakeUpstream, Figure, Service

sys.path[:0] = [str(APP_DIR), str(REPO)]  # imagegen, and tests.support for the servers

from tests.support.postgres import ThrowawayPostgres  # noqa: E402
from tests.support.seaweed import SeaweedFS  # noqa: E402

BUCKET = "bench"
C_RATIO_TARGET = 2.0  # (c) on S3 + PostgreSQL / (c) on the images directory
D_TARGET_MS = 10.0  # issue 14
POPULATE_CAP = 300.0  # seconds for writing (d)'s jobs
POPULATE_THREADS = 16
FLOOR_PAIRS = 30  # PUT pairs for the S3 server's own floor under (c)
FLOOR_SECONDS = 60.0


class Shared:
    """The bucket and the database server every phase stores in (a prefix and a database
    of its own each), and the environment that points a service at them."""

    def __init__(self, workdir: Path, seaweed: SeaweedFS, postgres: ThrowawayPostgres) -> None:
        self.workdir = workdir
        self.seaweed = seaweed
        self.postgres = postgres
        seaweed.create_bucket(BUCKET)

    def cpu_seconds(self) -> float:
        """CPU time SeaweedFS and PostgreSQL (every backend now alive) have used so far."""
        roots = [p.pid for p in (self.seaweed.process, self.postgres.process) if p is not None]
        return sum(cpu_times([pid for root in roots for pid in process_tree(root)]))

    def place(self, tag: str) -> tuple[str, str, dict[str, str]]:
        """(prefix, database URL, service environment) for a new, empty place."""
        prefix = f"{tag}-{uuid.uuid4().hex[:8]}"
        dsn = self.postgres.create_database()
        secret = self.workdir / f"database-url-{prefix}"
        secret.write_text(dsn + "\n")
        secret.chmod(0o600)
        env = {
            **self.seaweed.variables(),
            "IMAGE_GEN_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
            "IMAGE_GEN_DATABASE_URL_FILE": str(secret),
        }
        return prefix, dsn, env


@contextlib.contextmanager
def shared_servers(workdir: Path) -> Iterator[Shared]:
    """SeaweedFS and PostgreSQL, both stopped on exit."""
    postgres = ThrowawayPostgres()
    try:
        postgres.start()
        with SeaweedFS.started(workdir / "seaweed") as seaweed:
            print(f"  SeaweedFS S3 at {seaweed.endpoint}, PostgreSQL on port {postgres.port}")
            yield Shared(workdir, seaweed, postgres)
    finally:
        postgres.stop()


# --- (c) ------------------------------------------------------------------------------------


def phase_c(opts: argparse.Namespace, workdir: Path, shared: Shared) -> list[Figure]:
    """(c) on the images directory and on S3 + PostgreSQL, alternately `opts.c_rounds`
    times (so that the machine's drift touches both alike); each figure is the median of
    its rounds, the ratio the median of the rounds' ratios."""
    _, _, env = shared.place("c")
    rounds: dict[str, list[Figure]] = {"c-fs": [], "c-s3pg": []}
    for _ in range(opts.c_rounds):
        rounds["c-fs"] += bench.bench_added_latency(
            opts, workdir, key="c-fs", store="the images directory"
        )[0]
        rounds["c-s3pg"] += bench.bench_added_latency(
            opts, workdir, env=env, key="c-s3pg", store="S3 + PostgreSQL"
        )[0]
    figures = []
    for found in rounds.values():
        measured = [f.measured for f in found if f.measured is not None]
        figure = found[0]
        figure.detail = {"rounds_ms": measured, "first_round": figure.detail}
        figure.measured = bench._median(measured)
        figure.errors = sum(f.errors for f in found)
        figure.calls = sum(f.calls for f in found)
        figures.append(figure)
    ratios = [
        s3.measured / fs.measured
        for fs, s3 in zip(rounds["c-fs"], rounds["c-s3pg"], strict=True)
        if fs.measured and s3.measured is not None and fs.measured > 0
    ]
    print(f"  (c) S3 + PostgreSQL / images directory, per round: {[round(r, 2) for r in ratios]}")
    floor = store_floor(shared, FLOOR_PAIRS if not opts.quick else 5)
    s3pg = figures[1].measured
    beyond = s3pg - floor.measured if s3pg is not None and floor.measured is not None else None
    figures += [
        floor,
        Figure(
            "c-s3pg-beyond",
            "c-s3pg less the S3 server's floor: what the service and PostgreSQL add",
            beyond,
            "ms",
            None,
        ),
    ]
    figures.append(
        Figure(
            "c-ratio",
            f"(c) on S3 + PostgreSQL / on the images directory, median of {len(ratios)} rounds",
            bench._median(ratios),
            "x",
            C_RATIO_TARGET,
            errors=sum(f.errors for f in figures),
            detail={"rounds": ratios},
        )
    )
    return figures


def store_floor(shared: Shared, pairs: int) -> Figure:
    """What the S3 server itself takes for the two objects every job puts one after the
    other (the 1 MiB image, then a 2 KiB metadata.json), sent from this process through a
    client configured as the service's is: the part of c-s3pg no change to the service can
    take away. Median over `pairs` pairs after a warm-up; bounded by FLOOR_SECONDS."""
    from imagegen.storage.s3blobs import S3Blobs

    prefix, _, _ = shared.place("floor")
    blobs = S3Blobs(BUCKET, prefix, shared.seaweed.client())  # configured as the service's
    image, metadata = os.urandom(1 << 20), b"{" + b" " * 2046 + b"}"
    times: list[float] = []
    deadline = time.monotonic() + FLOOR_SECONDS
    for n in range(pairs + 3):
        job = uuid.uuid4()
        started = time.perf_counter()
        blobs.put(f"{job}/001-{uuid.uuid4()}.png", image)
        blobs.put(f"{job}/metadata.json", metadata)
        if n >= 3:  # the first pairs warm the connection pool up
            times.append((time.perf_counter() - started) * 1000)
        if time.monotonic() > deadline:
            break
    floor = bench._median(times) if times else None
    print(
        f"  the S3 server's own floor: a 1 MiB PUT then a 2 KiB PUT from this process, "
        f"median {floor:.1f} ms over {len(times)} pairs (prefix {prefix})"
        if floor is not None
        else "  the S3 server's own floor: not measured"
    )
    return Figure(
        "c-s3-floor",
        "the S3 server alone: a 1 MiB PUT then a 2 KiB PUT, one after the other, median",
        floor,
        "ms",
        None,
        calls=len(times),
    )


# --- (a) ------------------------------------------------------------------------------------


def phase_a(opts: argparse.Namespace, workdir: Path, shared: Shared) -> list[Figure]:
    """(a) at 32 and 128 calls on one replica, then spread over `opts.replicas`, all on
    the same bucket and database and the same fake upstream."""
    bench._header(f"(a) replicas on S3 + PostgreSQL: fake upstream latency L = {opts.latency:g} s")
    _, _, env = shared.place("a")
    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeUpstream(workdir, latency=opts.latency, image_bytes=None))
        replicas: list[Service] = []
        for count in (1, opts.replicas):
            while len(replicas) < count:
                images = workdir / f"images-a-{len(replicas)}"
                images.mkdir()
                replica = stack.enter_context(
                    Service(
                        workdir,
                        images,
                        fake.base_url,
                        workers=opts.workers,
                        threads=opts.threads,
                        app=opts.app,
                        env=env,
                    )
                )
                replica.wait_for_workers(opts.expected_workers)
                replicas.append(replica)
            warm_n = max(4, 2 * opts.expected_workers * count)
            body = {"model": "gpt-image-2", "count": 1, "prompt": "warm-up"}
            _, warm = bench.concurrent_calls(
                warm_n, bench._generate(replicas, body, opts), timeout=opts.timeout
            )
            print(
                f"  {count} replica(s), ports {[r.port for r in replicas]}: warm-up {warm_n} "
                f"calls, {len(bench.tally(warm, 1)[1])} error(s)"
            )
            for n, target in bench.A_TARGETS.items():
                found = bench.figure_a(replicas, fake, n, target, opts)
                for figure in found:
                    if figure.key.endswith("-direct") and count > 1:
                        continue  # the fake alone is the same whatever the replicas
                    figure.key = f"{figure.key}-r{count}"
                    figure.name += f" ({count} replica{'s' if count > 1 else ''}, S3 + PG)"
                    figures.append(figure)
    return figures


# --- (d) ------------------------------------------------------------------------------------


def populate_bucket(shared: Shared, prefix: str, dsn: str) -> bench.Populate:
    """A `populate` for bench.bench_lookup: jobs written through the store's own API in
    this process (S3Blobs + PostgresImageIndex, as the service would), on
    POPULATE_THREADS threads, for at most POPULATE_CAP seconds."""

    def populate(root: Path, jobs: int, image_bytes: int) -> tuple[list[tuple[str, int]], float]:
        from imagegen.books.migrations import migrate
        from imagegen.books.postgres import open_pool
        from imagegen.storage.images import ImageStore
        from imagegen.storage.s3blobs import S3Blobs
        from imagegen.storage.tableindex import PostgresImageIndex
        from imagegen.upstream.providers import GeneratedImage, Generation
        from tests.support.fake_openai import make_png

        pool = open_pool(dsn, max_size=POPULATE_THREADS)
        try:
            migrate(pool)
            store = ImageStore(
                S3Blobs(BUCKET, prefix, shared.seaweed.client()), PostgresImageIndex(pool)
            )
            png = make_png(64, 64, (40, 120, 200), pad_to=image_bytes)
            request = {"prompt": "bench d", "model": "gpt-image-2", "count": 1}
            generation = Generation([GeneratedImage(png, "png", 64, 64)])
            stored: list[tuple[str, int]] = []
            lock = threading.Lock()
            started = time.perf_counter()
            stop_at = time.monotonic() + POPULATE_CAP

            def write(_: int) -> None:
                if time.monotonic() > stop_at:
                    return
                metadata = store.save_job(request, generation)
                with lock:
                    stored.append((metadata["images"][0]["id"], len(png)))

            with ThreadPoolExecutor(POPULATE_THREADS) as pool_of_writers:
                for _ in pool_of_writers.map(write, range(jobs)):
                    pass
            if len(stored) < jobs:
                print(f"  stopped populating after {POPULATE_CAP:.0f} s")
            return stored, time.perf_counter() - started
        finally:
            pool.close(timeout=5.0)

    return populate


def phase_d(opts: argparse.Namespace, workdir: Path, shared: Shared) -> list[Figure]:
    """(d) through bench.bench_lookup, its jobs in the bucket and the database."""
    prefix, dsn, env = shared.place("d")
    figures, _ = bench.bench_lookup(
        opts,
        workdir,
        env=env,
        populate=populate_bucket(shared, prefix, dsn),
        key="d-s3pg",
        store="S3 + PostgreSQL",
        target=D_TARGET_MS,
    )
    return figures


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="c,a,d", help="figures to run, e.g. c,d")
    parser.add_argument("--replicas", type=int, default=3, help="replicas for (a) (3)")
    parser.add_argument("--latency", type=float, default=1.0, help="fake latency L for (a)")
    parser.add_argument("--repeat", type=int, help="runs of (a); the median is shown (3)")
    parser.add_argument("--pairs", type=int, help="direct/service call pairs for (c) (50)")
    parser.add_argument("--c-rounds", type=int, default=3, help="alternate (c) rounds (3)")
    parser.add_argument("--quick", action="store_true", help="smaller counts for a smoke run")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--tmp-dir", type=Path, help="where the work directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    own = parser.parse_args(argv)
    wanted = {part.strip() for part in own.only.split(",") if part.strip()}
    if not wanted <= set("acd"):
        parser.error("--only takes a comma-separated subset of a,c,d")
    if own.latency <= 0:
        parser.error("--latency must be positive: (a) divides by it")
    passed = ["--latency", str(own.latency)]
    for flag, value in (("--repeat", own.repeat), ("--pairs", own.pairs)):
        if value is not None:
            passed += [flag, str(value)]
    opts = bench.parse_args(passed + (["--quick"] if own.quick else []))  # bench's counts
    opts.wanted, opts.replicas, opts.json = wanted, max(1, own.replicas), own.json
    opts.tmp_dir, opts.keep = own.tmp_dir, own.keep
    opts.c_rounds = max(1, 1 if own.quick else own.c_rounds)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    config = bench.gunicorn_config(opts.workers, opts.threads)
    opts.expected_workers = int(config["workers"] or 1)
    print(
        f"image-gen replicas bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"gunicorn {config} per replica, figures {','.join(sorted(opts.wanted))}"
        + (" (--quick: counts are smaller than the targets assume)" if opts.quick else "")
    )
    figures: list[Figure] = []
    failed = False
    with bench._workdir(opts.tmp_dir, opts.keep) as workdir:
        print(f"work dir: {workdir} ({bench._fs_type(workdir)})")
        try:
            with shared_servers(workdir) as shared:
                for key, phase in (("c", phase_c), ("a", phase_a), ("d", phase_d)):
                    if key not in opts.wanted:
                        continue
                    try:
                        before = shared.cpu_seconds()
                        figures += phase(opts, workdir, shared)
                        print(
                            f"  SeaweedFS and PostgreSQL used {shared.cpu_seconds() - before:.1f}"
                            " CPU-s in this phase (within 'other processes' above)"
                        )
                    except RuntimeError as exc:
                        print(f"  {phase.__name__} failed: {exc}")
                        failed = True
        except (OSError, RuntimeError) as exc:
            print(f"the S3 or PostgreSQL server could not be started: {exc}")
            failed = True
    print(f"\nmachine load average at the end: {bench.load_average()}")
    print(f"(the {os.cpu_count()} CPUs run the load generator, the fake, S3, PostgreSQL and")
    print(" every replica, and whatever else the machine runs: compare runs under like load)")
    bench.print_table(figures)
    if opts.json:
        report = {
            "config": {**config, "latency": opts.latency, "replicas": opts.replicas},
            "host": HOST,
            "figures": [f.as_dict() for f in figures],
        }
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {opts.json}")
    return 1 if failed or any(f.errors for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
