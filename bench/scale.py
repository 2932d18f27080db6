"""Scale figures of issue 15: many waiting calls, held connections, CPU per image.

Starts the fake OpenAI server (`tests/support/fake_openai.py`, its own process) and the
service under Gunicorn with its DEFAULT settings, as bench/bench.py does, drives them with
bench/aload.py (one asyncio loop, no thread per connection) on 127.0.0.1, and prints:

  (e) N (1,000) concurrent POST /generate at L = 5 s: wall / L, errors, and the peak RSS of
      the whole service (master + workers, sampled from /proc)
  (f) with N open GET /jobs/<id>/events streams and N idle keep-alive connections held:
      /health p99 over 200 sequential probes (at most 30 s) and 32 concurrent /generate at
      L = 1 s as a ratio of L
  (g) worker CPU seconds per /generate with a 1 MiB image at L = 0 (utime + stime from
      /proc), and a profile summary from py-spy when it can attach

With `--peer litellm` the same loads also run against LiteLLM's proxy (in its own virtual
environment, bench/.peer-venv, made on demand) and both are printed with their ratio. It
never asserts on timings (errors and refusals under load are figures too); it exits 1 only
when a run could not be made. Every loop is bounded in count and every wait in time.

    .venv/bin/python bench/scale.py [--only e,f,g] [--calls N] [--latency L] [--peer litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aload

from bench import (
    FAKE_KEY,
    HOST,
    ONE_MIB,
    CpuMeter,
    FakeUpstream,
    Figure,
    Service,
    free_port,
    gunicorn_config,
    load_average,
)

BENCH = Path(__file__).resolve().parent
PEER_VENV = BENCH / ".peer-venv"
TOOLS_VENV = BENCH / ".tools-venv"
PEER_REQUIREMENT = "litellm[proxy]"
PEER_MODEL = "gpt-image-1"
PEER_START_TIMEOUT = 180.0  # LiteLLM's proxy imports a great deal before it listens
INSTALL_TIMEOUT = 1200.0
STOP_TIMEOUT = 30.0

TARGETS = {  # issue 15
    "e": 1.3,  # x L
    "e-rss": 600.0,  # MiB
    "f-health-p99": 50.0,  # ms
    "f-generate": 1.1,  # x L
    "g": 3.0,  # ms of worker CPU per call
}


# --- processes under /proc ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants, from the parent pids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [root]
    while pending and len(found) < 10_000:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return sorted(found)


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds the live `pids` have used so far."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Samples the resident memory of a process tree on a thread until stopped.

    `peak_rss_mib` is the highest sum of VmRSS seen (pages shared by forked workers counted
    in each: the figure the target names), `peak_pss_mib` the highest sum of Pss (shared
    pages split between their users), `hwm_sum_mib` the sum of each process's own VmHWM at
    the end (an upper bound of the true peak of the sum)."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_rss_mib = 0.0
        self.peak_pss_mib = 0.0
        self.hwm_sum_mib = 0.0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        pids = self.pids()
        self.hwm_sum_mib = sum(_status_kib(p, "VmHWM:") for p in pids) / 1024
        self.processes = len(pids)

    def _run(self) -> None:
        pids, refreshed, rounds = self.pids(), time.monotonic(), 0
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed > 2.0:  # new workers, gone ones
                pids, refreshed = self.pids(), time.monotonic()
            rss = sum(_status_kib(p, "VmRSS:") for p in pids) / 1024
            self.peak_rss_mib = max(self.peak_rss_mib, rss)
            if rounds % 5 == 0:  # smaps_rollup walks the page tables: less often
                pss = sum(_pss_kib(p) for p in pids) / 1024
                self.peak_pss_mib = max(self.peak_pss_mib, pss)
            rounds += 1

    def line(self) -> str:
        return (
            f"peak RSS of the whole service ({self.processes} processes): "
            f"{self.peak_rss_mib:.0f} MiB sampled (sum of VmRSS), "
            f"{self.peak_pss_mib:.0f} MiB PSS, sum of VmHWM {self.hwm_sum_mib:.0f} MiB"
        )


# --- what is measured: image-gen, or a peer -------------------------------------------------


@dataclass
class Subject:
    """A running service the loads go to, and how to speak to it."""

    name: str
    port: int
    root_pid: int
    work_pids: Callable[[], list[int]]  # processes doing the request work (CPU of g)
    health_path: str
    headers: dict[str, str] = field(default_factory=dict)
    async_jobs: bool = False

    def pids(self) -> list[int]:
        return process_tree(self.root_pid)

    def generate(self, prompt: str) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one one-image call."""
        if self.name == "image-gen":
            return "/generate", {"model": "gpt-image-2", "count": 1, "prompt": prompt}
        return "/v1/images/generations", {
            "model": PEER_MODEL,
            "prompt": prompt,
            "n": 1,
            "size": "1024x1024",
        }

    def check(self, answer: aload.Answer, min_bytes: int = 0) -> str | None:
        """None for a correct one-image answer; otherwise what was wrong."""
        if answer.error:
            return answer.error
        if answer.status != 200:
            return f"HTTP {answer.status}: {answer.body[:160]!r}"
        try:
            body = answer.json()
        except ValueError:
            return f"not JSON: {answer.body[:160]!r}"
        if self.name == "image-gen":
            images = body.get("images") if isinstance(body, dict) else None
            if not isinstance(images, list) or len(images) != 1 or not images[0].get("id"):
                return f"unexpected body: {answer.body[:160]!r}"
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != 1:
            return f"unexpected body: {answer.body[:160]!r}"
        b64 = data[0].get("b64_json") or ""
        if not (b64 or data[0].get("url")) or len(b64) * 3 // 4 < min_bytes:
            return f"no image (or a short one) in the answer: {answer.body[:160]!r}"
        return None

    async def call(self, prompt: str, timeout: float) -> aload.Answer:
        path, body = self.generate(prompt)
        return await aload.request(
            HOST, self.port, "POST", path, body, headers=self.headers, timeout=timeout
        )


@contextlib.contextmanager
def image_gen(workdir: Path, fake: FakeUpstream, tag: str) -> Iterator[Subject]:
    """The service under Gunicorn with its default settings (workers, threads, fsync...)."""
    images = workdir / f"images-{tag}"
    with Service(workdir, images, fake.base_url, workers=None, threads=None) as service:
        expected = int(gunicorn_config(None, None)["workers"] or 1)
        service.wait_for_workers(expected)
        yield Subject(
            "image-gen",
            service.port,
            service.pid,
            service.worker_pids,
            "/health",
            async_jobs=True,
        )


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_venv(venv: Path, requirement: str, probe: list[str]) -> tuple[bool, str]:
    """Make `venv` (python -m venv) and pip-install `requirement` unless `probe` (a command
    run with the venv's python) already succeeds; (usable, what happened)."""
    python = venv / "bin" / "python"

    def works() -> bool:
        if not python.exists():
            return False
        try:
            run = subprocess.run(
                [str(python), *probe], capture_output=True, timeout=120, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return run.returncode == 0

    if works():
        return True, f"{venv.name} ready"
    print(f"  setting up {venv} with pip install {requirement!r} (once; a few minutes)")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        log = venv / "install.log"
        with open(log, "wb") as out:
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", requirement],
                check=True,
                timeout=INSTALL_TIMEOUT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"could not install {requirement}: {exc} (see {venv}/install.log)"
    return works(), f"installed {requirement} into {venv}"


def _peer_version() -> str:
    run = subprocess.run(
        [str(_peer_python()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return run.stdout.strip() or "unknown"


def _peer_environment() -> dict[str, str]:
    """LiteLLM's environment: no outside network (its cost-map fetch and telemetry are
    turned off, and any other outbound HTTP goes to a closed local port), no database."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "LITELLM_", "DATABASE_", "IMAGE_GEN_", "GUNICORN_"))
    }
    environment.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return environment


@contextlib.contextmanager
def litellm_peer(workdir: Path, fake: FakeUpstream, tag: str) -> Iterator[Subject]:
    """LiteLLM's proxy (one uvicorn worker, its default) with one image model whose
    api_base is the fake, behind a master key."""
    port = free_port()
    master_key = "sk-bench-" + secrets.token_hex(12)  # a throwaway, never printed
    config = {
        "model_list": [
            {
                "model_name": PEER_MODEL,
                "litellm_params": {
                    "model": f"openai/{PEER_MODEL}",
                    "api_base": fake.base_url,
                    "api_key": FAKE_KEY,
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": master_key},
    }
    config_path = workdir / f"litellm-{tag}.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = workdir / f"litellm-{tag}.log"
    command = [
        str(PEER_VENV / "bin" / "litellm"),
        "--config",
        str(config_path),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=_peer_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + PEER_START_TIMEOUT
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            answer = asyncio.run(aload.request(HOST, port, "GET", "/health/liveliness", timeout=2))
            if answer.status == 200:
                ready = True
                break
            time.sleep(0.5)
        if not ready:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"LiteLLM's proxy did not start: {tail}")
        subject = Subject(
            "litellm",
            port,
            process.pid,
            lambda: process_tree(process.pid),
            "/health/liveliness",
            headers={"Authorization": f"Bearer {master_key}"},
        )
        yield subject
    finally:
        _stop_tree(process)


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (its own session); SIGKILL what lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


SUBJECTS = {"image-gen": image_gen, "litellm": litellm_peer}


# --- small helpers --------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _errors(messages: list[str]) -> str:
    """The kinds of error, most frequent first (each cut short)."""
    if not messages:
        return "no errors"
    kinds = Counter(m[:90] for m in messages)
    shown = "; ".join(f"{count} x {kind}" for kind, count in kinds.most_common(3))
    return f"{len(messages)} error(s): {shown}"


def _header(title: str) -> None:
    print(f"\n== {title}\n  machine load average (1/5/15 min): {load_average()}")


def _settle_time(fake_latency: float, calls: int) -> float:
    """A generous bound for one call in a burst of `calls` (today's service queues them)."""
    return 60.0 + fake_latency * max(4.0, calls / 40)


# --- (e) ----------------------------------------------------------------------------------


def figure_e(opts: argparse.Namespace, workdir: Path, kind: str) -> list[Figure]:
    """N concurrent one-image calls at L: wall / L, errors and the whole service's peak RSS."""
    n, latency = opts.calls, opts.latency
    _header(f"(e) {kind}: {n} concurrent one-image calls, fake latency L = {latency:g} s")
    timeout = _settle_time(latency, n)
    with (
        FakeUpstream(workdir, latency=latency, image_bytes=None) as fake,
        SUBJECTS[kind](workdir, fake, "e") as subject,
    ):

        async def run() -> tuple[float, list[aload.Answer], list[aload.Answer]]:
            warm = [subject.call(f"[latency=0] warm-up {i}", 30) for i in range(16)]
            warmed = await aload.gather_bounded(warm, limit=8, timeout=60)
            wall, answers = await aload.burst(
                n, lambda i: subject.call(f"scale e call {i}", timeout), timeout=timeout
            )
            return wall, answers, warmed

        with (
            MemorySampler(subject.pids) as memory,
            CpuMeter(lambda: sum(cpu_times(subject.pids())), fake.cpu_seconds) as meter,
        ):
            wall, answers, warmed = asyncio.run(run())
        warm_errors = sum(1 for a in warmed if not isinstance(a, aload.Answer) or a.status != 200)
        errors = [e for e in (subject.check(a) for a in answers) if e]
        times = [a.seconds for a in answers if not a.error]
        print(f"  warm-up: 16 calls at L = 0, {warm_errors} not 200")
        print(
            f"  wall {wall:.2f} s = {wall / latency:.2f} L; per call p50 {_ms(_pct(times, 0.5))}"
            f", p99 {_ms(_pct(times, 0.99))}, max {_ms(max(times, default=None))}; "
            f"{_errors(errors)}"
        )
        print(f"  {memory.line()}")
        _, service_cpu, fake_cpu = meter.deltas
        print(
            f"  CPU: service {service_cpu:.1f} s, fake {fake_cpu:.1f} s, this client "
            f"{meter.deltas[0]:.1f} s; other processes used {meter.others_share:.0%} of the "
            "machine meanwhile"
        )
    suffix = "" if kind == "image-gen" else f"@{kind}"
    ours = kind == "image-gen"
    return [
        Figure(
            "e" + suffix,
            f"{n} concurrent calls at L = {latency:g} s, wall / L",
            wall / latency,
            "x L",
            TARGETS["e"] if ours else None,
            errors=len(errors),
            calls=n,
            detail={
                "wall_s": wall,
                "p50_s": _pct(times, 0.5),
                "p99_s": _pct(times, 0.99),
                "errors": dict(Counter(e[:90] for e in errors)),
                "service_cpu_s": service_cpu,
                "other_processes_cpu_share": meter.others_share,
            },
        ),
        Figure(
            "e-rss" + suffix,
            "peak RSS of the whole service in (e), sum over its processes",
            memory.peak_rss_mib,
            "MiB",
            TARGETS["e-rss"] if ours else None,
            detail={
                "pss_mib": memory.peak_pss_mib,
                "vmhwm_sum_mib": memory.hwm_sum_mib,
                "processes": memory.processes,
            },
        ),
    ]


# --- (f) ----------------------------------------------------------------------------------


async def _create_jobs(
    subject: Subject, n: int, hold_latency: float, bound: float
) -> tuple[list[str], Counter[str]]:
    """Up to `n` asynchronous jobs whose upstream call waits `hold_latency`, eight requests
    at a time; stops after 20 refusals in a row (a full queue). (job ids, outcomes)."""
    ids: list[str] = []
    outcomes: Counter[str] = Counter()
    refused_in_a_row = 0
    deadline = time.monotonic() + bound
    headers = {**subject.headers, "Prefer": "respond-async"}
    index = 0
    while index < n and time.monotonic() < deadline and refused_in_a_row < 20:
        batch = range(index, min(n, index + 8))
        index = batch.stop
        calls = []
        for i in batch:
            path, body = subject.generate(f"[latency={hold_latency:g}] scale f job {i}")
            calls.append(
                aload.request(HOST, subject.port, "POST", path, body, headers=headers, timeout=30)
            )
        for answer in await asyncio.gather(*calls):
            job_id = None
            if answer.status == 202:
                with contextlib.suppress(ValueError, AttributeError):
                    job_id = answer.json().get("job_id")
            if job_id:
                ids.append(job_id)
                outcomes["202"] += 1
                refused_in_a_row = 0
            else:
                code = ""
                with contextlib.suppress(ValueError, AttributeError):
                    code = answer.json().get("code", "")
                outcomes[f"{answer.status or answer.error} {code}".strip()] += 1
                refused_in_a_row += 1
    return ids, outcomes


def _stream_outcomes(held: aload.Held) -> Counter[str]:
    """How the stream requests were answered: opened, or status and error code."""
    found: Counter[str] = Counter()
    for item in held.items:
        if item.opened_at is not None:
            found["opened"] += 1
            continue
        code = ""
        with contextlib.suppress(ValueError, AttributeError):
            code = json.loads(item.body).get("code", "")
        found[f"{item.status or item.error} {code}".strip()] += 1
    return found


async def _probe_health(subject: Subject, probes: int, bound: float) -> list[aload.Answer]:
    """Sequential GETs of the health path, a fresh connection each, stopping at `bound` s."""
    answers = []
    deadline = time.monotonic() + bound
    for _ in range(probes):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        answers.append(
            await aload.request(
                HOST,
                subject.port,
                "GET",
                subject.health_path,
                headers=subject.headers,
                timeout=min(5.0, left),
            )
        )
    return answers


def figure_f(opts: argparse.Namespace, workdir: Path, kind: str) -> list[Figure]:
    """/health p99 and 32 concurrent calls at L = 1 s while N event streams and N idle
    keep-alive connections are held (for a peer without jobs: N slow calls in flight)."""
    n, latency, hold = opts.calls, opts.f_latency, opts.hold
    hold_latency = hold + 60  # jobs still running (or queued) when the figure ends
    _header(
        f"(f) {kind}: {n} event streams + {n} idle keep-alive connections held (at most "
        f"{hold:g} s); /health p99 and 32 concurrent calls at L = {latency:g} s"
    )
    fake = FakeUpstream(workdir, latency=latency, image_bytes=None)
    with fake, SUBJECTS[kind](workdir, fake, "f") as subject:

        async def run() -> dict[str, Any]:
            result: dict[str, Any] = {}
            streams = aload.Held()
            if subject.async_jobs:
                ids, created = await _create_jobs(subject, n, hold_latency, bound=60)
                result["jobs"] = dict(created)
                print(f"  asynchronous jobs: {dict(created)}")
                if ids:
                    paths = [f"/jobs/{ids[i % len(ids)]}/events" for i in range(n)]
                    await aload.open_streams(
                        HOST,
                        subject.port,
                        paths,
                        headers=subject.headers,
                        open_timeout=20,
                        hold_for=hold,
                        held=streams,
                    )
            else:  # no job streams: the nearest thing is a call left waiting
                path, body = subject.generate(f"[latency={hold_latency:g}] scale f held")
                await aload.hold_requests(
                    HOST,
                    subject.port,
                    n,
                    "POST",
                    path,
                    body,
                    headers=subject.headers,
                    hold_for=hold,
                    held=streams,
                )
            await aload.settle(
                streams,
                lambda h: all(i.opened_at or i.status or i.error for i in h.items),
                25,
            )
            result["streams"] = dict(_stream_outcomes(streams))
            print(f"  streams asked {n}: {result['streams']}")
            idle = await aload.hold_idle(
                HOST,
                subject.port,
                n,
                subject.health_path,
                headers=subject.headers,
                open_timeout=15,
                hold_for=hold,
            )
            await aload.settle(
                idle, lambda h: all(i.opened_at or i.status or i.error for i in h.items), 16
            )
            result["idle_at_start"] = idle.summary()
            result["streams_at_start"] = streams.summary()
            print(f"  idle keep-alive asked {n}: {result['idle_at_start']}")
            probes = await _probe_health(subject, opts.probes, bound=30)
            wall, answers = await aload.burst(
                32,
                lambda i: subject.call(f"[latency={latency:g}] scale f call {i}", 60),
                timeout=60,
            )
            result.update(probes=probes, wall=wall, answers=answers)
            result["idle_at_end"] = idle.summary()
            result["streams_at_end"] = streams.summary()
            await streams.close()
            await idle.close()
            return result

        with MemorySampler(subject.pids) as memory:
            result = asyncio.run(run())
        if kind == "image-gen":
            fake.__exit__(None, None, None)  # the held jobs fail at once: a quick shutdown
        probes: list[aload.Answer] = result["probes"]
        probe_ok = [p.seconds for p in probes if p.status == 200]
        probe_all = [p.seconds for p in probes]  # a failed probe counts with its time
        probe_failed = len(probes) - len(probe_ok)
        p99 = _pct(probe_all, 0.99)
        errors = [e for e in (subject.check(a) for a in result["answers"]) if e]
        wall = result["wall"]
        print(
            f"  {len(probes)} /health probes: p50 {_ms(_pct(probe_all, 0.5))}, p99 {_ms(p99)}, "
            f"max {_ms(max(probe_all, default=None))}, {probe_failed} failed "
            f"({_errors([p.error or f'HTTP {p.status}' for p in probes if p.status != 200])})"
        )
        print(
            f"  32 concurrent calls at L = {latency:g} s: wall {wall:.2f} s = "
            f"{wall / latency:.2f} L, {_errors(errors)}"
        )
        print(
            f"  held at the end: streams {result['streams_at_end']}, idle {result['idle_at_end']}"
        )
        print(f"  {memory.line()}")
    suffix = "" if kind == "image-gen" else f"@{kind}"
    ours = kind == "image-gen"
    held_detail = {
        k: result[k]
        for k in ("streams", "streams_at_start", "streams_at_end", "idle_at_start", "idle_at_end")
    }
    held_detail["jobs"] = result.get("jobs")
    held_streams = result["streams_at_start"]["open_now"]
    held_idle = result["idle_at_start"]["open_now"]
    if held_streams < n or held_idle < n:
        print(
            f"  NOTE: only {held_streams} of {n} streams and {held_idle} of {n} idle "
            "connections were open when the probes began: (f) ran under less than its load"
        )
    return [
        Figure(
            "f-health-p99" + suffix,
            f"/health p99, {len(probes)} probes, with {held_streams} streams and {held_idle} "
            f"idle connections of {n} + {n} open at the start",
            None if p99 is None else p99 * 1000,
            "ms",
            TARGETS["f-health-p99"] if ours else None,
            errors=probe_failed,
            calls=len(probes),
            detail={"p50_ms": (_pct(probe_all, 0.5) or 0) * 1000, **held_detail},
        ),
        Figure(
            "f-generate" + suffix,
            f"32 concurrent calls at L = {latency:g} s meanwhile, wall / L",
            wall / latency,
            "x L",
            TARGETS["f-generate"] if ours else None,
            errors=len(errors),
            calls=32,
            detail={
                "errors": dict(Counter(e[:90] for e in errors)),
                "rss_mib": memory.peak_rss_mib,
            },
        ),
    ]


# --- (g) ----------------------------------------------------------------------------------


def _pyspy() -> tuple[Path | None, str]:
    """py-spy from bench/.tools-venv (installed on demand); (binary or None, why not)."""
    binary = TOOLS_VENV / "bin" / "py-spy"
    usable, message = ensure_venv(
        TOOLS_VENV, "py-spy", ["-c", f"import os; os.stat({str(binary)!r})"]
    )
    return (binary if usable and binary.exists() else None), message


def _frame_parts(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame `function (path:line)`, the line dropped."""
    function, _, location = frame.rpartition(" (")
    return function or frame, location.rstrip(")").rsplit(":", 1)[0]


def _short(path: str) -> str:
    """A path as a reader finds it: imagegen/..., a distribution's, or the stdlib module."""
    for marker in ("/image-gen/", "site-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name if path.startswith("/") else path


def _frame_area(path: str) -> str:
    """Where code lives: imagegen.<package>, a distribution, or stdlib:<module>."""
    if "/imagegen/" in path:
        parts = path.split("/imagegen/", 1)[1].split("/")
        return "imagegen." + (parts[0] if len(parts) > 1 else parts[0].removesuffix(".py"))
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if path.startswith("<") or not path:
        return "(native or unknown)"
    return "stdlib:" + Path(path).name.removesuffix(".py")


def summarize_profile(raw: Path, top: int = 12) -> list[str]:
    """Lines summarising py-spy's collapsed stacks: by area, by function (self, inclusive)."""
    by_self: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_parts(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        function, path = frames[-1]
        by_self[f"{function} ({_short(path)})"] += count
        areas[_frame_area(path)] += count
        for name in {f"{f} ({_short(p)})" for f, p in frames if "/imagegen/" in p}:
            inclusive[name] += count
    if not total:
        return ["  (no samples: the workers were idle, or py-spy saw none)"]
    out = [f"  profile: {total} samples of running worker threads; by where the code is:"]
    out += [f"    {100 * c / total:5.1f}%  {area}" for area, c in areas.most_common(top)]
    out.append("  functions by their own samples (self):")
    out += [f"    {100 * c / total:5.1f}%  {name}" for name, c in by_self.most_common(top)]
    out.append("  image-gen functions by samples including what they call:")
    out += [f"    {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    out.append(
        "  (py-spy takes a thread blocked in some system calls, an fsync or a lock taken in C, "
        "for running: read these as where the busy threads are, and stime above as the kernel's)"
    )
    return out


def _profile(
    opts: argparse.Namespace, subject: Subject, workdir: Path, call: Callable[[], None]
) -> list[str]:
    """Run `call` (a series of calls) under py-spy attached to the service's processes."""
    binary, message = _pyspy()
    if binary is None:
        return [f"  profile skipped: py-spy is not available ({message})"]
    raw = workdir / f"profile-{subject.name}.txt"
    log = workdir / f"py-spy-{subject.name}.log"
    command = [
        str(binary),
        "record",
        "--pid",
        str(subject.root_pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        "200",
        "--full-filenames",
        "--format",
        "raw",
        "--output",
        str(raw),
    ]
    with open(log, "wb") as out:
        spy = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(2.0)  # attach to every process
        if spy.poll() is not None:
            why = log.read_text(errors="replace").strip()[-400:]
            return [f"  profile skipped: py-spy could not attach: {why}"]
        call()
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)
    if not raw.exists():
        why = log.read_text(errors="replace").strip()[-400:]
        return [f"  profile skipped: py-spy wrote nothing: {why}"]
    return summarize_profile(raw)


def disk_floor(directory: Path, rounds: int = 40) -> tuple[float, float, float]:
    """CPU seconds this process spends writing a new 1 MiB file in `directory` and on its
    fsync (medians of `rounds`): what storing one image durably costs the kernel on this
    disk, whatever the service does around it. Two ways, as the service may: each file's
    pages given back to the kernel once synced (POSIX_FADV_DONTNEED, what the service does
    with an image, storage/durable.py), so the next write fills recycled pages; and each
    file's pages kept in the page cache, so every write fills pages the cache has not used
    yet. Returns (write given back, write kept, fsync)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(ONE_MIB)
    writes: dict[bool, list[float]] = {True: [], False: []}
    syncs = []
    for uncache in (True, False):
        for n in range(rounds):
            path = directory / f"floor-{uncache}-{n}"
            before = time.process_time()
            with open(path, "xb") as handle:
                handle.write(data)
                written = time.process_time()
                os.fsync(handle.fileno())
                synced = time.process_time()
                if uncache and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            writes[uncache].append(written - before)
            syncs.append(synced - written)
    for path in directory.glob("floor-*"):  # kept to the end: their pages stay cached
        path.unlink()
    return (
        statistics.median(writes[True]),
        statistics.median(writes[False]),
        statistics.median(syncs),
    )


def page_cache_mib() -> float | None:
    """The kernel's page cache now (`Cached` in /proc/meminfo), in MiB; None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def figure_g(opts: argparse.Namespace, workdir: Path, kind: str) -> list[Figure]:
    """CPU seconds of the serving processes per one-image call, 1 MiB image, L = 0."""
    calls = opts.g_calls
    _header(f"(g) {kind}: worker CPU per call, {calls} sequential calls, 1 MiB image, L = 0")
    with (
        FakeUpstream(workdir, latency=0.0, image_bytes=ONE_MIB) as fake,
        SUBJECTS[kind](workdir, fake, "g") as subject,
    ):

        async def series(count: int, label: str) -> list[str]:
            errors = []
            for i in range(count):
                answer = await subject.call(f"scale g {label} {i}", 60)
                error = subject.check(answer, min_bytes=ONE_MIB)
                if error:
                    errors.append(error)
            return errors

        asyncio.run(series(10, "warm-up"))
        pids = subject.work_pids()
        idle_user, idle_system = cpu_times(pids)
        time.sleep(3.0)
        idle_rate = (sum(cpu_times(pids)) - idle_user - idle_system) / 3.0
        user0, system0 = cpu_times(pids)
        started, cached_before = time.perf_counter(), page_cache_mib()
        with CpuMeter(fake.cpu_seconds) as meter:
            errors = asyncio.run(series(calls, "run"))
        wall, cached_after = time.perf_counter() - started, page_cache_mib()
        user1, system1 = cpu_times(pids)
        ok = max(1, calls - len(errors))
        user, system = (user1 - user0) / ok, (system1 - system0) / ok
        corrected = max(0.0, user + system - idle_rate * wall / ok)
        print(
            f"  {calls} calls in {wall:.1f} s ({_errors(errors)}); CPU of {len(pids)} serving "
            f"processes per call: {_ms(user + system)} (user {_ms(user)}, system "
            f"{_ms(system)}); less their idle rate ({idle_rate * 1000:.1f} ms/s): "
            f"{_ms(corrected)}; fake {_ms(meter.deltas[1] / ok)} per call; other processes "
            f"used {meter.others_share:.0%} of the machine"
        )
        grown = (
            "unknown"
            if cached_before is None or cached_after is None
            else f"{cached_after - cached_before:+.0f} MiB"
        )
        print(
            f"  page cache over the run: {grown} for {calls} MiB of images stored (the "
            f"service gives an image's pages back once it is synced)"
        )
        write_cpu, write_kept_cpu, sync_cpu = disk_floor(workdir / "floor")
        print(
            f"  floor on this disk (this bench's own process, median): writing a new 1 MiB "
            f"file {_ms(write_cpu)} of CPU into pages given back ({_ms(write_kept_cpu)} when "
            f"every file stays in the page cache), its fsync {_ms(sync_cpu)}; the rest of a "
            f"call is the service's: {_ms(max(0.0, user + system - write_cpu - sync_cpu))}"
        )
        profile: list[str] = []
        if opts.profile:
            profile = _profile(
                opts, subject, workdir, lambda: asyncio.run(series(calls, "profiled"))
            )
            print("\n".join(profile))
    suffix = "" if kind == "image-gen" else f"@{kind}"
    return [
        Figure(
            "g" + suffix,
            "CPU of the serving processes per call, 1 MiB image, L = 0",
            (user + system) * 1000,
            "ms",
            TARGETS["g"] if kind == "image-gen" else None,
            errors=len(errors),
            calls=calls,
            detail={
                "user_ms": user * 1000,
                "system_ms": system * 1000,
                "idle_corrected_ms": corrected * 1000,
                "idle_rate_ms_per_s": idle_rate * 1000,
                "processes": len(pids),
                "disk_write_floor_ms": write_cpu * 1000,
                "disk_write_kept_floor_ms": write_kept_cpu * 1000,
                "page_cache_growth_mib": (
                    None
                    if cached_before is None or cached_after is None
                    else cached_after - cached_before
                ),
                "disk_fsync_floor_ms": sync_cpu * 1000,
                "profile": profile,
            },
        )
    ]


# --- main ---------------------------------------------------------------------------------

FIGURES = {"e": figure_e, "f": figure_f, "g": figure_g}


def print_tables(figures: list[Figure], peer: str | None) -> None:
    rows = [("figure", "measured", "target", "verdict", "errors", "what")]
    for f in figures:
        if "@" in f.key:
            continue
        measured = "n/a" if f.measured is None else f"{f.measured:.2f} {f.unit}"
        target = "-" if f.target is None else f"<= {f.target:g} {f.unit}"
        rows.append((f.key, measured, target, f.verdict, str(f.errors), f.name))
    _table(rows)
    if not peer:
        return
    theirs = {f.key.split("@")[0]: f for f in figures if f.key.endswith("@" + peer)}
    rows = [("figure", "image-gen", peer, f"image-gen / {peer}", "errors (ours, theirs)")]
    for f in figures:
        other = theirs.get(f.key)
        if "@" in f.key or other is None:
            continue
        ratio = (
            f"{f.measured / other.measured:.2f}"
            if f.measured is not None and other.measured
            else "n/a"
        )
        rows.append(
            (
                f.key,
                "n/a" if f.measured is None else f"{f.measured:.2f} {f.unit}",
                "n/a" if other.measured is None else f"{other.measured:.2f} {other.unit}",
                ratio,
                f"{f.errors}, {other.errors}",
            )
        )
    print(f"\nside by side (lower is better; a ratio above 1 means {peer} did better):")
    _table(rows)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="e,f,g", help="figures to run, e.g. e,g")
    parser.add_argument("--calls", type=int, default=1000, help="N: calls in (e), held in (f)")
    parser.add_argument("--latency", type=float, default=5.0, help="fake latency L of (e)")
    parser.add_argument("--f-latency", type=float, default=1.0, help="latency of (f)'s calls")
    parser.add_argument("--hold", type=float, default=150.0, help="bound on (f)'s held conns")
    parser.add_argument("--probes", type=int, default=200, help="/health probes in (f)")
    parser.add_argument("--g-calls", type=int, default=200, help="sequential calls in (g)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="(g): no py-spy")
    parser.add_argument("--peer", choices=["litellm"], help="run the same loads against a peer")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--tmp-dir", type=Path, help="where the work directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    opts = parser.parse_args(argv)
    opts.only = [p.strip() for p in opts.only.split(",") if p.strip()]
    if not opts.only or not set(opts.only) <= set(FIGURES):
        parser.error("--only takes a comma-separated subset of e,f,g")
    if opts.latency <= 0 or opts.f_latency <= 0:
        parser.error("--latency and --f-latency must be positive: figures divide by them")
    for name in ("calls", "probes", "g_calls"):
        if not 1 <= getattr(opts, name) <= 20_000:
            parser.error(f"--{name.replace('_', '-')} must be from 1 to 20000")
    if not 10 <= opts.hold <= 600:
        parser.error("--hold must be from 10 to 600 seconds")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    config = gunicorn_config(None, None)
    print(
        f"image-gen scale bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"gunicorn defaults {config}, figures {','.join(opts.only)}"
        + (f", peer {opts.peer}" if opts.peer else "")
    )
    kinds = ["image-gen"]
    if opts.peer:
        usable, message = ensure_venv(PEER_VENV, PEER_REQUIREMENT, ["-c", "import litellm"])
        print(f"peer: {message}")
        if not usable:
            print("  the peer cannot run; measuring image-gen alone")
        else:
            print(f"peer: LiteLLM {_peer_version()} (its proxy, one uvicorn worker)")
            kinds.append(opts.peer)
    figures: list[Figure] = []
    failed = False
    workdir = Path(tempfile.mkdtemp(prefix="image-gen-scale-", dir=opts.tmp_dir))
    try:
        for key in opts.only:
            for kind in kinds:
                try:
                    figures += FIGURES[key](opts, workdir, kind)
                except RuntimeError as exc:
                    print(f"  ({key}) {kind} failed: {exc}")
                    failed = True
    finally:
        if opts.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine load average at the end: {load_average()}")
    print_tables(figures, opts.peer if len(kinds) > 1 else None)
    if opts.json:
        document = {
            "config": {**config, "calls": opts.calls, "latency": opts.latency},
            "figures": [f.as_dict() for f in figures],
        }
        opts.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nwrote {opts.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
