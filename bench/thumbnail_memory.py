"""How much memory a Gunicorn worker spends on thumbnails, and whether it gives it back.

Starts the service under real Gunicorn (placeholder provider, 127.0.0.1 only), stores large
PNGs straight through `ImageStore` (6000x6000, beyond what any model makes, as an image
stored before upstream sizes were bounded would be; and 3840x2160, gpt-image-2's largest),
then asks for thumbnails of each: one request, then eight at once. For every phase it prints
each worker's resident set before, its peak during (VmHWM, reset before each phase through
/proc/<pid>/clear_refs) and after the requests ended. Each request asks for a width not asked
before, so every one decodes (no cache hit). It asserts nothing about memory: it exits 0
unless an answer is neither a thumbnail nor the documented "too large" error.

    .venv/bin/python bench/thumbnail_memory.py [--workers 2] [--keep]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import APP_DIR, Service, http_call

sys.path.insert(0, str(APP_DIR))
from PIL import Image

from imagegen.storage.images import ImageStore
from imagegen.storage.layout import Layout
from imagegen.upstream.providers import GeneratedImage, Generation

SIZES = {"6000x6000": (6000, 6000), "3840x2160": (3840, 2160)}
_widths = itertools.count(200)


def large_png(width: int, height: int) -> bytes:
    """An RGB PNG of gradients (compresses well, decodes to width*height*4 bytes)."""
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = red.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def store_images(images_dir: Path) -> dict[str, str]:
    """Store one image of each size; their ids by size."""
    Layout(images_dir).prepare()
    store = ImageStore.on_disk(images_dir, fsync=False)
    ids = {}
    for name, (width, height) in SIZES.items():
        data = large_png(width, height)
        generation = Generation([GeneratedImage(data, "png", width, height)])
        job = store.save_job({"prompt": f"a {name} gradient", "size": name}, generation)
        ids[name] = job["images"][0]["id"]
        print(f"stored {name}: {len(data) / 1e6:.1f} MB PNG, image {ids[name]}")
    return ids


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def thumbnails(service: Service, image_id: str, count: int) -> list[str]:
    """`count` thumbnail requests at once, each a new width; the problems found."""
    problems: list[str] = []
    start = threading.Barrier(count, timeout=30)

    def fetch(width: int) -> None:
        start.wait()
        outcome = http_call(service.port, "GET", f"/images/{image_id}?width={width}", timeout=120)
        if outcome.status == 200:
            if Image.open(io.BytesIO(outcome.body)).width != width:
                problems.append(f"width {width}: wrong size")
        elif outcome.status != 500 or b"too large" not in outcome.body:
            problems.append(f"width {width}: HTTP {outcome.status} {outcome.body[:200]!r}")

    threads = [threading.Thread(target=fetch, args=(next(_widths),)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return problems


def phase(service: Service, title: str, image_id: str, count: int) -> tuple[dict, list[str]]:
    pids = service.worker_pids()
    before = {pid: status_kib(pid, "VmRSS") for pid in pids}
    for pid in pids:
        reset_peak(pid)
    started = time.perf_counter()
    problems = thumbnails(service, image_id, count)
    seconds = time.perf_counter() - started
    time.sleep(1.0)  # the workers finish sending and free what they will
    row = {
        "phase": title,
        "seconds": round(seconds, 2),
        "workers": {
            pid: {
                "before_mb": round(before[pid] / 1024),
                "peak_mb": round(status_kib(pid, "VmHWM") / 1024),
                "after_mb": round(status_kib(pid, "VmRSS") / 1024),
            }
            for pid in pids
        },
    }
    cells = "  ".join(
        f"pid {pid}: {w['before_mb']:>4} -> peak {w['peak_mb']:>4} -> {w['after_mb']:>4} MB"
        for pid, w in row["workers"].items()
    )
    print(f"{title:<28} {seconds:6.2f} s  {cells}")
    return row, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    opts = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="thumbnail-memory-"))
    images_dir = workdir / "images"
    ids = store_images(images_dir)
    os.environ["IMAGE_GEN_PROVIDER"] = "placeholder"
    rows, problems = [], []
    with Service(
        workdir, images_dir, "http://127.0.0.1:9", workers=opts.workers, threads=None
    ) as service:
        service.wait_for_workers(opts.workers)
        print(f"gunicorn master {service.pid}, workers {service.worker_pids()}")
        for name, image_id in ids.items():
            for count in (1, 8, 8):
                row, found = phase(service, f"{name} x{count} at once", image_id, count)
                rows.append(row)
                problems += found
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    if not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print("ERROR", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
