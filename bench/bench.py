"""Benchmark image-gen under real Gunicorn against the fake OpenAI server (issue 2, "Speed").

Starts `tests/support/fake_openai.py` as a subprocess (so it never shares a GIL with the load
generator) and the service as `python -m gunicorn -c image-gen/gunicorn.conf.py wsgi:app`,
then prints four figures and how they compare with their targets:

  (a) wall time of 32 and 128 concurrent POST /generate (gpt-image-2, count=1) / latency L
  (b) wall time of one POST /generate count=4 on dall-e-3 (one image per upstream call) / L
  (c) median time /generate adds to a direct upstream call, at L=0 with a 1 MiB image
  (d) median GET /images/<id> latency with 10,000 jobs stored

It never asserts on timings: it prints, and exits 0. It exits 1 only when the service fails
to answer correctly (wrong status or body) or cannot be started. All traffic goes to
127.0.0.1; every loop is bounded in count and every wait in time.

    .venv/bin/python bench/bench.py [--only a,b,c,d] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import random
import re
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "image-gen"
GUNICORN_CONF = APP_DIR / "gunicorn.conf.py"
FAKE_SCRIPT = REPO / "tests" / "support" / "fake_openai.py"
HOST = "127.0.0.1"
FAKE_KEY = "sk-bench-not-a-real-key"
UPSTREAM_AUTH = {"Authorization": f"Bearer {FAKE_KEY}"}  # the fake wants one; any will do
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ONE_MIB = 1024 * 1024

START_TIMEOUT = 60.0  # seconds for a process to come up (the store sweep scans the root)
STOP_TIMEOUT = 30.0
BARRIER_TIMEOUT = 60.0
POPULATE_TIME_CAP = 600.0
A_TARGETS = {32: 1.2, 128: 1.6}  # figure (a): concurrent calls -> wall / L
C_TARGET_MS = 10.0
D_TARGET_MS = 5.0

_REQUEST_LINE = re.compile(
    r"\[(?P<pid>\d+)\] imagegen\.request: .*method=(?P<method>\S+) path=(?P<path>\S+) "
    r"status=(?P<status>\d+)(?: duration_ms=(?P<ms>[\d.]+))?"
)


# --- results ------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure and how it compares with its target (lower is better)."""

    key: str
    name: str
    measured: float | None
    unit: str
    target: float | None
    errors: int = 0
    calls: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.target:
            return None
        return self.measured / self.target

    @property
    def verdict(self) -> str:
        if self.errors:
            return "ERROR"  # wrong answers: the timing means nothing
        if self.target is None:
            return "info"
        if self.measured is None:
            return "n/a"
        return "pass" if self.measured <= self.target else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_to_target": self.ratio, "verdict": self.verdict}


@dataclass
class Outcome:
    """The result of one HTTP exchange made by the load generator."""

    status: int
    body: bytes
    started: float
    ended: float
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


# --- HTTP client --------------------------------------------------------------------------


def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float,
    conn: http.client.HTTPConnection | None = None,
    headers: dict[str, str] | None = None,
) -> Outcome:
    """One request; a fresh connection with `Connection: close` unless `conn` is given."""
    headers = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if conn is None:
        headers["Connection"] = "close"
    own = conn is None
    connection = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        return Outcome(response.status, payload, started, time.perf_counter())
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(0, b"", started, time.perf_counter(), f"{type(exc).__name__}: {exc}")
    finally:
        if own:
            connection.close()


def concurrent_calls(
    n: int, call: Callable[[], Outcome], *, timeout: float
) -> tuple[float, list[Outcome]]:
    """Run `call` on `n` threads released together by a barrier; return (wall, outcomes)."""
    barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT)
    outcomes: list[Outcome | None] = [None] * n

    def worker(index: int) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            now = time.perf_counter()
            outcomes[index] = Outcome(0, b"", now, now, "barrier broken")
            return
        outcomes[index] = call()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + BARRIER_TIMEOUT + timeout + 10
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    now = time.perf_counter()
    done = [o or Outcome(0, b"", now, now, "thread did not finish in time") for o in outcomes]
    wall = max(o.ended for o in done) - min(o.started for o in done)
    return wall, done


def check_generate(outcome: Outcome, count: int) -> list[str]:
    """The image ids of a correct /generate answer; raise ValueError describing a wrong one."""
    if outcome.error:
        raise ValueError(outcome.error)
    if outcome.status != 200:
        raise ValueError(f"HTTP {outcome.status}: {outcome.body[:200]!r}")
    answer = json.loads(outcome.body)
    if not isinstance(answer, dict):
        raise ValueError(f"not a JSON object: {outcome.body[:200]!r}")
    images = answer.get("images")
    if not answer.get("job_id") or not isinstance(images, list) or len(images) != count:
        raise ValueError(f"unexpected body: {outcome.body[:200]!r}")
    ids = []
    for image in images:
        if image.get("url") != f"/images/{image.get('id')}":
            raise ValueError(f"bad image entry: {image!r}")
        ids.append(image["id"])
    return ids


def tally(outcomes: list[Outcome], count: int) -> tuple[list[str], list[str]]:
    """(image ids, error messages) across many /generate outcomes."""
    ids: list[str] = []
    errors: list[str] = []
    for outcome in outcomes:
        try:
            ids.extend(check_generate(outcome, count))
        except ValueError as exc:
            errors.append(str(exc))
    return ids, errors


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine have used (the first line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How busy the machine was during a measurement, split into ours and everyone else's."""

    def __init__(self, *ours: Callable[[], float]) -> None:
        self.ours = (lambda: process_cpu_seconds(os.getpid()), *ours)

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), machine_busy_seconds(), [f() for f in self.ours])
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, ours0 = self._start
        self.wall = time.perf_counter() - wall0
        self.busy = machine_busy_seconds() - busy0
        self.deltas = [f() - before for f, before in zip(self.ours, ours0, strict=True)]

    @property
    def others_share(self) -> float:
        """CPU used by processes other than the bench, service and fake, as a share of all."""
        capacity = self.wall * (os.cpu_count() or 1)
        return max(0.0, self.busy - sum(self.deltas)) / capacity if capacity else 0.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def _stop(process: subprocess.Popen[bytes], before_kill: Callable[[], None] | None = None) -> None:
    """SIGTERM a process we started; SIGKILL it (after `before_kill`) if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        if before_kill is not None:
            before_kill()
        process.kill()
        process.wait(STOP_TIMEOUT)


class FakeUpstream:
    """`tests/support/fake_openai.py` in its own process, on a free loopback port."""

    def __init__(self, workdir: Path, *, latency: float, image_bytes: int | None) -> None:
        self.workdir = workdir
        self.args = ["--host", HOST, "--port", "0", "--latency", str(latency)]
        if image_bytes is not None:
            self.args += ["--image-size-bytes", str(image_bytes)]
        self.base_url = ""
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeUpstream:
        out = self.workdir / f"fake-{time.monotonic_ns()}.out"
        with open(out, "wb") as stdout:
            self._process = subprocess.Popen(
                [sys.executable, str(FAKE_SCRIPT), *self.args],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

        def announced() -> bool:
            match = re.search(r"base_url=(http://[^:]+:(\d+)/v1)", out.read_text())
            if match:
                self.base_url, self.port = match[1], int(match[2])
            return bool(match) or self._process.poll() is not None  # type: ignore[union-attr]

        if not _wait_for(announced, START_TIMEOUT) or not self.base_url:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the fake OpenAI server did not start: {out.read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _stop(self._process)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self._process.pid) if self._process else 0.0


class Service:
    """The service under `python -m gunicorn -c image-gen/gunicorn.conf.py wsgi:app`."""

    def __init__(
        self,
        workdir: Path,
        images_dir: Path,
        base_url: str,
        *,
        workers: int | None,
        threads: int | None,
        app: str = "wsgi:app",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env` adds to (or overrides) the service's environment: a storage URL, say."""
        self.workdir = workdir
        self.app = app
        self.port = free_port()
        self.log = workdir / f"gunicorn-{self.port}.log"
        key_file = workdir / "openai_api_key"
        key_file.write_text(FAKE_KEY + "\n")
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")])
            ),
            "GUNICORN_BIND": f"{HOST}:{self.port}",
            "IMAGE_GEN_IMAGES_DIR": str(images_dir),
            "OPENAI_API_KEY_FILE": str(key_file),
            "OPENAI_BASE_URL": base_url,
            **(env or {}),
        }
        self.env.pop("OPENAI_API_KEY", None)
        if workers is not None:
            self.env["GUNICORN_WORKERS"] = str(workers)
        if threads is not None:
            self.env["GUNICORN_THREADS"] = str(threads)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        with open(self.log, "wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), self.app],
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
            )
        _wait_for(self._healthy, START_TIMEOUT, step=0.2)
        if self._process.poll() is not None or not self._healthy():
            self.__exit__(None, None, None)
            raise RuntimeError(f"the service did not become healthy: {self.log_tail()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _stop(self._process, before_kill=self._kill_workers)

    def _kill_workers(self) -> None:
        """SIGKILL the master's live children (checked by parent pid), so none outlive it."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _healthy(self) -> bool:
        """GET /health answers 200; also True when the master has exited, to stop waiting."""
        if self._process is not None and self._process.poll() is not None:
            return True
        return http_call(self.port, "GET", "/health", timeout=2).status == 200

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def worker_pids(self) -> list[int]:
        """Children of the Gunicorn master (its workers), from /proc."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.pid:
                pids.append(int(entry))
        return sorted(pids)

    def wait_for_workers(self, expected: int) -> None:
        """Wait (bounded) until the master has booted its workers, so each one can accept."""
        _wait_for(lambda: len(self.worker_pids()) >= expected, 10.0, step=0.1)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the workers (the master does no request work)."""
        return sum(process_cpu_seconds(pid) for pid in self.worker_pids())

    def peak_rss_kib(self) -> dict[int, int]:
        """VmHWM (peak resident set) of each live worker, in KiB."""
        peaks = {}
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[pid] = int(line.split()[1])
        return peaks

    def log_size(self) -> int:
        return self.log.stat().st_size

    def logged_requests(self, since: int, path_prefix: str) -> list[tuple[int, float | None]]:
        """(worker pid, in-app ms) of each request the app logged since byte offset `since`."""
        with open(self.log, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode("utf-8", "replace")
        return [
            (int(match["pid"]), float(match["ms"]) if match["ms"] else None)
            for match in _REQUEST_LINE.finditer(text)
            if match["path"].startswith(path_prefix)
        ]

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def gunicorn_config(workers: int | None, threads: int | None) -> dict[str, Any]:
    """The worker class and counts gunicorn.conf.py yields with these overrides."""
    overrides = {}
    if workers is not None:
        overrides["GUNICORN_WORKERS"] = str(workers)
    if threads is not None:
        overrides["GUNICORN_THREADS"] = str(threads)
    with mock.patch.dict(os.environ, overrides):
        conf = runpy.run_path(str(GUNICORN_CONF))
    return {key: conf.get(key) for key in ("worker_class", "workers", "threads", "keepalive")}


# --- measurements -------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _times_1000(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _rss_summary(service: Service) -> dict[str, Any]:
    peaks = service.peak_rss_kib()
    if not peaks:
        return {}
    summary = {
        "workers": len(peaks),
        "max_mib": max(peaks.values()) / 1024,
        "sum_mib": sum(peaks.values()) / 1024,
        "per_worker_mib": {str(pid): kib / 1024 for pid, kib in peaks.items()},
    }
    print(
        f"  peak RSS (VmHWM) of {summary['workers']} workers: "
        f"max {summary['max_mib']:.1f} MiB, sum {summary['sum_mib']:.1f} MiB"
    )
    return summary


def _verify_images(port: int, ids: list[str], sample: int, min_bytes: int = 0) -> list[str]:
    """GET a random sample of generated images; the errors found."""
    errors = []
    for image_id in random.sample(ids, min(sample, len(ids))):
        outcome = http_call(port, "GET", f"/images/{image_id}", timeout=30)
        if outcome.status != 200 or not outcome.body.startswith(PNG_SIGNATURE):
            errors.append(f"GET /images/{image_id}: HTTP {outcome.status} {outcome.error or ''}")
        elif len(outcome.body) < min_bytes:
            errors.append(f"GET /images/{image_id}: only {len(outcome.body)} bytes")
    return errors


def _header(title: str) -> None:
    print(f"\n== {title}\n  machine load average (1/5/15 min): {load_average()}")


def _report_errors(errors: list[str]) -> None:
    if errors:
        print(f"  {len(errors)} error(s); first: {errors[0][:300]}")


@contextlib.contextmanager
def running(
    opts: argparse.Namespace,
    workdir: Path,
    images_dir: Path,
    *,
    latency: float,
    image_bytes: int | None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[FakeUpstream, Service]]:
    """The fake upstream and the service under Gunicorn (`env` added to its environment),
    with every worker up."""
    with (
        FakeUpstream(workdir, latency=latency, image_bytes=image_bytes) as fake,
        Service(
            workdir,
            images_dir,
            fake.base_url,
            workers=opts.workers,
            threads=opts.threads,
            app=opts.app,
            env=env,
        ) as service,
    ):
        service.wait_for_workers(opts.expected_workers)
        yield fake, service


def bench_concurrency(opts: argparse.Namespace, workdir: Path) -> tuple[list[Figure], dict]:
    """Figures (a) and (b): one fake at latency L, one service."""
    _header(f"(a)/(b) concurrency: fake upstream latency L = {opts.latency:g} s")
    figures: list[Figure] = []
    with running(opts, workdir, workdir / "images-ab", latency=opts.latency, image_bytes=None) as (
        fake,
        service,
    ):
        print(f"  gunicorn master {service.pid}, workers {service.worker_pids()}")
        warm_n = max(4, 2 * len(service.worker_pids()))
        body = {"model": "gpt-image-2", "count": 1, "prompt": "warm-up"}
        _, warm = concurrent_calls(warm_n, _generate(service, body, opts), timeout=opts.timeout)
        print(f"  warm-up: {warm_n} concurrent calls, {len(tally(warm, 1)[1])} error(s)")
        if "a" in opts.only:
            for n, target in A_TARGETS.items():
                figures += figure_a([service], fake, n, target, opts)
        if "b" in opts.only:
            figures.append(_figure_b(service, opts))
        rss = _rss_summary(service)
    return figures, rss


def _generate(
    service: Service | list[Service], body: dict[str, Any], opts: argparse.Namespace
) -> Callable[[], Outcome]:
    """One /generate call; with several services, each call goes to the next in turn."""
    services = service if isinstance(service, list) else [service]
    turn = itertools.count()  # next() on a count is atomic under the GIL
    return lambda: http_call(
        services[next(turn) % len(services)].port, "POST", "/generate", body, timeout=opts.timeout
    )


def figure_a(
    services: list[Service], fake: FakeUpstream, n: int, target: float, opts: argparse.Namespace
) -> list[Figure]:
    """`n` concurrent count=1 calls spread over `services` in turn, `opts.repeat` times;
    also the same load on the fake alone."""
    latency = opts.latency
    upstream_body = {"model": "gpt-image-2", "prompt": "direct", "n": 1, "size": "1024x1024"}

    def direct() -> Outcome:
        return http_call(
            fake.port,
            "POST",
            "/v1/images/generations",
            upstream_body,
            timeout=opts.timeout,
            headers=UPSTREAM_AUTH,
        )

    baseline: list[float] = []
    direct_errors = 0
    for _ in range(opts.repeat):
        wall, outcomes = concurrent_calls(n, direct, timeout=opts.timeout)
        baseline.append(wall / latency)
        direct_errors += sum(1 for o in outcomes if o.status != 200)
    ratios: list[float] = []
    ids: list[str] = []
    errors: list[str] = []
    per_call: list[float] = []
    distribution: Counter[int] = Counter()
    cpu: list[float] = []
    others: list[float] = []

    def workers_cpu() -> float:
        return sum(service.cpu_seconds() for service in services)

    for run in range(opts.repeat):
        offsets = [service.log_size() for service in services]
        body = {"model": "gpt-image-2", "count": 1, "prompt": f"bench a{n} run {run}"}
        with CpuMeter(workers_cpu, fake.cpu_seconds) as meter:
            wall, outcomes = concurrent_calls(
                n, _generate(services, body, opts), timeout=opts.timeout
            )
        _, worker_cpu, fake_cpu = meter.deltas
        cpu.append(worker_cpu)
        others.append(meter.others_share)
        found, errs = tally(outcomes, 1)
        ids += found
        errors += errs
        ratios.append(wall / latency)
        per_call += [o.seconds for o in outcomes if not o.error]
        time.sleep(0.2)  # let the last request log lines land
        logged = [
            entry
            for service, offset in zip(services, offsets, strict=True)
            for entry in service.logged_requests(offset, "/generate")
        ]
        spread = Counter(pid for pid, _ in logged)
        distribution.update(spread)
        in_app = [ms / 1000 for _, ms in logged if ms is not None]
        print(
            f"  a{n} run {run + 1}: wall {wall:.3f} s = {wall / latency:.3f} L, "
            f"errors {len(errs)}, requests per worker {sorted(spread.values())}, "
            f"in-app time p50 {_ms(_pct(in_app, 0.5))} max {_ms(max(in_app, default=None))}, "
            f"CPU: workers {worker_cpu:.2f} s, fake {fake_cpu:.2f} s, "
            f"other processes {meter.others_share:.0%} of the machine"
        )
    errors += _verify_images(services[-1].port, ids, sample=5)
    _report_errors(errors)
    print(
        f"  a{n}: per-call p50 {_ms(_pct(per_call, 0.5))}, max {_ms(max(per_call, default=None))};"
        f" the same load straight to the fake: {statistics.median(baseline):.3f} L"
        f" ({direct_errors} non-200)"
    )
    return [
        Figure(
            f"a{n}",
            f"{n} concurrent /generate, wall / L",
            statistics.median(ratios),
            "x L",
            target,
            errors=len(errors),
            calls=n * opts.repeat,
            detail={
                "runs": ratios,
                "requests_per_worker": dict(distribution),
                "per_call_p50_s": _pct(per_call, 0.5),
                "worker_cpu_s_per_run": cpu,
                "other_processes_cpu_share_per_run": others,
            },
        ),
        Figure(
            f"a{n}-direct",
            f"{n} concurrent straight to the fake, wall / L",
            statistics.median(baseline),
            "x L",
            None,
            calls=n * opts.repeat,
            detail={"runs": baseline, "non_200": direct_errors},
        ),
    ]


def _figure_b(service: Service, opts: argparse.Namespace) -> Figure:
    """One count=4 call on dall-e-3 (four upstream calls), `opts.repeat` times."""
    ratios: list[float] = []
    errors: list[str] = []
    for run in range(opts.repeat):
        body = {"model": "dall-e-3", "count": 4, "prompt": f"bench b run {run}"}
        outcome = _generate(service, body, opts)()
        try:
            ids = check_generate(outcome, 4)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        errors += _verify_images(service.port, ids, sample=4)
        ratios.append(outcome.seconds / opts.latency)
        print(f"  b run {run + 1}: {outcome.seconds:.3f} s = {ratios[-1]:.3f} L")
    _report_errors(errors)
    return Figure(
        "b",
        "dall-e-3 count=4 (4 upstream calls), wall / L",
        _median(ratios),
        "x L",
        1.3,
        errors=len(errors),
        calls=opts.repeat,
        detail={"runs": ratios},
    )


def bench_added_latency(
    opts: argparse.Namespace,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    key: str = "c",
    store: str = "",
) -> tuple[list[Figure], dict]:
    """Figure (c): what the service adds to one upstream call at L=0 with a 1 MiB image
    (on the store `env` configures, named `store` in the output; the images directory by
    default)."""
    on = f" on {store}" if store else ""
    _header(f"({key}) added latency{on}: L = 0, 1 MiB PNG (b64 in JSON), sequential calls")
    images_dir = workdir / f"images-{key}"
    with running(opts, workdir, images_dir, latency=0.0, image_bytes=ONE_MIB, env=env) as (
        fake,
        service,
    ):
        upstream_body = {
            "model": "gpt-image-2",
            "prompt": "bench c",
            "n": 1,
            "size": "1024x1024",
            "output_format": "png",
        }
        service_body = {"model": "gpt-image-2", "prompt": "bench c", "count": 1}

        def direct() -> Outcome:
            return http_call(
                fake.port,
                "POST",
                "/v1/images/generations",
                upstream_body,
                timeout=30,
                headers=UPSTREAM_AUTH,
            )

        def through() -> Outcome:
            return http_call(service.port, "POST", "/generate", service_body, timeout=30)

        errors: list[str] = []
        for _ in range(opts.c_warmup):
            direct()
            errors += tally([through()], 1)[1]
        direct_s: list[float] = []
        through_s: list[float] = []
        ids: list[str] = []
        pairs: list[float] = []
        direct_errors = 0
        offset = service.log_size()
        with CpuMeter(service.cpu_seconds, fake.cpu_seconds) as meter:
            for _ in range(opts.c_calls):  # interleaved, so drift affects both alike
                outcome = direct()
                ok = outcome.status == 200 and len(outcome.body) > ONE_MIB
                if ok:
                    direct_s.append(outcome.seconds)
                else:
                    direct_errors += 1
                outcome = through()
                found, errs = tally([outcome], 1)
                errors += errs
                if found:
                    ids += found
                    through_s.append(outcome.seconds)
                    if ok:
                        pairs.append(outcome.seconds - direct_s[-1])
        time.sleep(0.2)  # let the last request log lines land
        in_app = [ms / 1000 for _, ms in service.logged_requests(offset, "/generate") if ms]
        worker_cpu = meter.deltas[1] / max(1, len(through_s))
        fake_cpu = meter.deltas[2] / max(1, len(direct_s) + len(through_s))
        errors += _verify_images(service.port, ids, sample=3, min_bytes=ONE_MIB)
        _report_errors(errors)
        direct_median, through_median = _median(direct_s), _median(through_s)
        added = (
            through_median - direct_median
            if direct_median is not None and through_median is not None
            else None
        )
        fsync_s = _fsync_cost(images_dir, ONE_MIB, 20)
        print(
            f"  direct to fake: min {_ms(min(direct_s, default=None))} median"
            f" {_ms(direct_median)} p90 {_ms(_pct(direct_s, 0.9))} ({direct_errors} failed);"
            f" through the service: min {_ms(min(through_s, default=None))} median"
            f" {_ms(through_median)} p90 {_ms(_pct(through_s, 0.9))}"
        )
        print(
            f"  per pair (service - direct): median {_ms(_median(pairs))}, "
            f"p10 {_ms(_pct(pairs, 0.1))}; in-app time of /generate (the request log, "
            f"upstream wait included): median {_ms(_median(in_app))}"
        )
        print(
            f"  CPU per call: service workers {_ms(worker_cpu)}, fake {_ms(fake_cpu)} "
            f"(clock-tick resolution, averaged over the calls); other processes used "
            f"{meter.others_share:.0%} of the machine meanwhile"
        )
        print(
            f"  write+fsync of 1 MiB + fsync dir in the images dir ({_fs_type(images_dir)}): "
            f"median {_ms(fsync_s)}"
        )
        figure = Figure(
            key,
            f"added latency per /generate, 1 MiB image, L=0{on}",
            _times_1000(added),
            "ms",
            C_TARGET_MS,
            errors=len(errors),
            calls=len(through_s),
            detail={
                "direct_median_ms": _times_1000(direct_median),
                "service_median_ms": _times_1000(through_median),
                "pair_difference_median_ms": _times_1000(_median(pairs)),
                "in_app_median_ms": _times_1000(_median(in_app)),
                "direct_failures": direct_errors,
                "fsync_1mib_median_ms": _times_1000(fsync_s),
                "worker_cpu_ms_per_call": _times_1000(worker_cpu),
                "fake_cpu_ms_per_call": _times_1000(fake_cpu),
                "other_processes_cpu_share": meter.others_share,
            },
        )
        rss = _rss_summary(service)
    return [figure], rss


def bench_load(opts: argparse.Namespace, workdir: Path) -> tuple[list[Figure], dict]:
    """Sustained load: many clients generating against a slow fake for a bounded time."""
    clients, seconds = opts.load_clients, opts.load_seconds
    _header(f"(load) {clients} clients for {seconds:g} s, fake latency L = {opts.latency:g} s")
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    with running(
        opts, workdir, workdir / "images-load", latency=opts.latency, image_bytes=None
    ) as (fake, service):
        stop_at = time.monotonic() + seconds
        body = {"model": "gpt-image-2", "count": 1, "prompt": "load"}

        def client() -> None:
            mine: list[Outcome] = []
            while time.monotonic() < stop_at:  # bounded by time; each call by its timeout
                mine.append(
                    http_call(service.port, "POST", "/generate", body, timeout=opts.timeout)
                )
            with lock:
                outcomes.extend(mine)

        with CpuMeter(service.cpu_seconds, fake.cpu_seconds) as meter:
            started = time.perf_counter()
            threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + opts.timeout + 10)
            wall = time.perf_counter() - started
        ids, errors = tally(outcomes, 1)
        errors += _verify_images(service.port, ids, sample=20)
        latencies = [o.seconds for o in outcomes if o.status == 200]
        print(
            f"  {len(outcomes)} calls in {wall:.1f} s: {len(ids) / wall:.1f} images/s, "
            f"p50 {_ms(_median(latencies))}, p99 {_ms(_pct(latencies, 0.99))}, "
            f"{len(errors)} error(s); other processes used {meter.others_share:.0%}"
        )
        _report_errors(errors)
        rss = _rss_summary(service)
    figures = [
        Figure(
            "load-throughput",
            f"images/s with {clients} clients for {seconds:g} s, L = {opts.latency:g} s",
            len(ids) / wall,
            "images/s",
            None,
            errors=len(errors),
            calls=len(outcomes),
        ),
        Figure(
            "load-p50",
            "per-call latency under that load, median",
            _times_1000(_median(latencies)),
            "ms",
            None,
        ),
        Figure(
            "load-p99",
            "per-call latency under that load, 99th percentile",
            _times_1000(_pct(latencies, 0.99)),
            "ms",
            None,
        ),
    ]
    return figures, rss


def _fsync_cost(directory: Path, nbytes: int, rounds: int) -> float:
    """Median time to write and fsync an `nbytes` file, then fsync its directory."""
    data = os.urandom(nbytes)
    times = []
    for index in range(rounds):
        path = directory / f".bench-fsync-{index}"
        started = time.perf_counter()
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - started)
        path.unlink()
    return statistics.median(times)


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path`, from /proc/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(
                mount
            ) >= len(best):
                best, kind = mount, parts[2]
    return kind


def populate_store(root: Path, jobs: int, image_bytes: int) -> tuple[list[tuple[str, int]], float]:
    """Write `jobs` one-image jobs with the store API (no fsync); ([(id, size)], seconds)."""
    sys.path.insert(0, str(APP_DIR))
    sys.path.insert(0, str(REPO))
    from imagegen.storage.images import ImageStore
    from imagegen.storage.layout import Layout
    from imagegen.upstream.providers import GeneratedImage, Generation
    from tests.support.fake_openai import make_png

    Layout(root).prepare()
    store = ImageStore.on_disk(root, fsync=False)
    png = make_png(64, 64, (40, 120, 200), pad_to=image_bytes)
    request = {"prompt": "bench d", "model": "gpt-image-2", "count": 1, "size": "1024x1024"}
    stored = []
    started = time.perf_counter()
    for _ in range(jobs):
        metadata = store.save_job(request, Generation([GeneratedImage(png, "png", 64, 64)]))
        stored.append((metadata["images"][0]["id"], len(png)))
        if time.perf_counter() - started > POPULATE_TIME_CAP:
            print(f"  stopped populating after {POPULATE_TIME_CAP:.0f} s")
            break
    return stored, time.perf_counter() - started


Populate = Callable[[Path, int, int], tuple[list[tuple[str, int]], float]]


def bench_lookup(
    opts: argparse.Namespace,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    populate: Populate = populate_store,
    key: str = "d",
    store: str = "",
    target: float = D_TARGET_MS,
) -> tuple[list[Figure], dict]:
    """Figure (d): GET /images/<id> with many jobs stored (on disk by default; `populate`
    writes them where `env` points the service)."""
    on = f" on {store}" if store else ""
    _header(f"({key}) GET /images/<id> with {opts.d_jobs} jobs stored{on}")
    root = workdir / f"images-{key}"
    stored, seconds = populate(root, opts.d_jobs, opts.d_image_bytes)
    print(f"  wrote {len(stored)} jobs ({opts.d_image_bytes} B PNG each) in {seconds:.1f} s")
    if not stored:
        raise RuntimeError("no job could be written")
    figures = []
    with Service(
        workdir,
        root,
        f"http://{HOST}:{free_port()}/v1",  # never called: no /generate here
        workers=opts.workers,
        threads=opts.threads,
        app=opts.app,
        env=env,
    ) as service:
        service.wait_for_workers(opts.expected_workers)
        rng = random.Random(2)
        sizes = dict(stored)

        def get(image_id: str, conn: http.client.HTTPConnection | None = None) -> Outcome:
            return http_call(service.port, "GET", f"/images/{image_id}", timeout=30, conn=conn)

        for image_id, _ in rng.sample(stored, min(10, len(stored))):  # warm-up
            get(image_id)
        for mode in ("fresh", "keep-alive"):
            conn = None
            if mode == "keep-alive":
                conn = http.client.HTTPConnection(HOST, service.port, timeout=30)
            times, errors = [], []
            try:
                for _ in range(opts.d_gets):
                    image_id = rng.choice(stored)[0]
                    outcome = get(image_id, conn)
                    if (
                        outcome.status != 200
                        or len(outcome.body) != sizes[image_id]
                        or not outcome.body.startswith(PNG_SIGNATURE)
                    ):
                        errors.append(f"{image_id}: HTTP {outcome.status} {outcome.error or ''}")
                        if conn is not None:  # a broken keep-alive connection: start again
                            conn.close()
                            conn = http.client.HTTPConnection(HOST, service.port, timeout=30)
                    else:
                        times.append(outcome.seconds)
            finally:
                if conn is not None:
                    conn.close()
            _report_errors(errors)
            median = _median(times)
            print(
                f"  {mode} connection per GET: median {_ms(median)}, "
                f"p90 {_ms(_pct(times, 0.9))}, max {_ms(max(times, default=None))}"
            )
            figures.append(
                Figure(
                    key if mode == "fresh" else f"{key}-keepalive",
                    f"GET /images/<id> median, {len(stored)} jobs{on}, {mode} connection",
                    _times_1000(median),
                    "ms",
                    target if mode == "fresh" else None,
                    errors=len(errors),
                    calls=opts.d_gets,
                    detail={"p90_ms": _times_1000(_pct(times, 0.9))},
                )
            )
        rss = _rss_summary(service)
    return figures, rss


# --- main ---------------------------------------------------------------------------------


def print_table(figures: list[Figure]) -> None:
    rows = [("figure", "measured", "target", "ratio", "verdict", "errors", "what")]
    for f in figures:
        measured = "n/a" if f.measured is None else f"{f.measured:.3f} {f.unit}"
        target = "-" if f.target is None else f"<= {f.target:g} {f.unit}"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        rows.append((f.key, measured, target, ratio, f.verdict, str(f.errors), f.name))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="a,b,c,d,l", help="figures to run, e.g. a,c,l")
    parser.add_argument("--clients", type=int, default=300, help="clients in the load run (l)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load run")
    parser.add_argument("--latency", type=float, default=1.0, help="fake latency L for (a)/(b)")
    parser.add_argument("--workers", type=int, help="GUNICORN_WORKERS (default: the conf's)")
    parser.add_argument("--threads", type=int, help="GUNICORN_THREADS (default: the conf's)")
    parser.add_argument("--repeat", type=int, help="runs of (a) and (b); the median is shown")
    parser.add_argument("--pairs", type=int, help="direct/service call pairs for (c) (50)")
    parser.add_argument("--quick", action="store_true", help="smaller counts for a smoke run")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--tmp-dir", type=Path, help="where the images dirs go (fsync cost!)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--app", default="wsgi:app", help="the WSGI app Gunicorn loads")
    opts = parser.parse_args(argv)
    opts.only = {part.strip() for part in opts.only.split(",") if part.strip()}
    if not opts.only <= set("abcdl"):
        parser.error("--only takes a comma-separated subset of a,b,c,d,l")
    if opts.latency <= 0 and opts.only & set("ab"):
        parser.error("--latency must be positive: (a) and (b) divide by it")
    opts.repeat = max(1, opts.repeat or (1 if opts.quick else 3))
    opts.c_warmup, opts.c_calls = (3, 10) if opts.quick else (5, 50)
    opts.c_calls = max(1, opts.pairs or opts.c_calls)
    opts.d_jobs, opts.d_gets = (1_000, 50) if opts.quick else (10_000, 200)
    opts.d_image_bytes = 4096
    opts.load_clients = min(opts.clients, 50) if opts.quick else opts.clients
    opts.load_seconds = min(opts.seconds, 5.0) if opts.quick else opts.seconds
    opts.timeout = 30 + 10 * opts.latency
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    config = gunicorn_config(opts.workers, opts.threads)
    opts.expected_workers = int(config["workers"] or 1)
    print(
        f"image-gen bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"gunicorn {config}, figures {','.join(sorted(opts.only))}"
        + (" (--quick: counts are smaller than the targets assume)" if opts.quick else "")
    )
    figures: list[Figure] = []
    rss: dict[str, Any] = {}
    failed = False
    with _workdir(opts.tmp_dir, opts.keep) as workdir:
        print(f"work dir: {workdir} ({_fs_type(workdir)})")
        phases = [
            ("ab", bench_concurrency),
            ("c", bench_added_latency),
            ("d", bench_lookup),
            ("l", bench_load),
        ]
        for keys, phase in phases:
            if not opts.only & set(keys):
                continue
            try:
                found, peak = phase(opts, workdir)
            except RuntimeError as exc:
                print(f"  {phase.__name__} failed: {exc}")
                failed = True
                continue
            figures += found
            rss[keys] = peak
    print(f"\nmachine load average at the end: {load_average()}")
    print_table(figures)
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "config": {**config, "latency": opts.latency, "quick": opts.quick},
                    "figures": [f.as_dict() for f in figures],
                    "peak_rss": rss,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nwrote {opts.json}")
    return 1 if failed or any(f.errors for f in figures) else 0


@contextlib.contextmanager
def _workdir(base: Path | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="image-gen-bench-", dir=base))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
