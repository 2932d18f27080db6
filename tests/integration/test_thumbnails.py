"""GET /images/<id>?width=N: downscaled copies, their caching headers and their on-disk cache."""

from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image

from imagegen.imaging import thumbnails as thumbnails_module
from imagegen.services import services
from imagegen.storage.fileblobs import FileBlobs
from imagegen.storage.images import MAX_THUMBNAILS
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.gunicorn_server import run_gunicorn
from tests.support.service import job_files, mounted_tmpfs

SIZE = (300, 200)
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def picture(fmt: str, size: tuple[int, int] = SIZE, *, alpha: bool = False, **save) -> bytes:
    """A gradient image in `fmt` (left half transparent with `alpha`), as the upstream sends."""
    width, height = size
    image = Image.new("RGBA" if alpha else "RGB", size)
    image.putdata(
        [
            (x * 255 // width, y * 255 // height, 128, 0 if x < width // 2 else 255)[
                : 4 if alpha else 3
            ]
            for y in range(height)
            for x in range(width)
        ]
    )
    out = io.BytesIO()
    image.save(out, format=fmt.upper(), **save)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def stored(client, fake_openai, data: bytes, fmt: str = "png", count: int = 1) -> dict:
    """Generate a job whose images are `data` (a `fmt` image); return /generate's answer."""
    fake_openai.image_bytes = data
    response = client.post(
        "/generate", json={"prompt": "a gradient", "count": count, "output_format": fmt}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def thumbs_dir(images_dir: Path, job: dict) -> Path:
    return images_dir / job["job_id"] / "thumbs"


@pytest.fixture
def job(client, fake_openai) -> dict:
    return stored(client, fake_openai, picture("png"), count=2)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_thumbnail_keeps_the_aspect_ratio_and_the_format_of_each_input(client, fake_openai, fmt):
    image = stored(client, fake_openai, picture(fmt), fmt)["images"][0]

    response = client.get(f"{image['url']}?width=150")

    assert response.status_code == 200
    assert response.mimetype == f"image/{fmt}"
    thumbnail = decode(response.data)
    assert thumbnail.format == fmt.upper()
    assert thumbnail.size == (150, 100)
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert response.headers["Cache-Control"] == client.get(image["url"]).headers["Cache-Control"]
    assert response.headers["ETag"] == f'"{image["id"]}-w150.{EXTENSIONS[fmt]}"'


def test_thumbnail_looks_like_the_image(client, job):
    url = job["images"][0]["url"]

    small = decode(client.get(f"{url}?width=30").data).convert("RGB")
    full = decode(client.get(url).data).convert("RGB").resize(small.size)

    # The gradient survives: corners keep their colours within resampling error.
    for corner in [(0, 0), (29, 0), (0, 19), (29, 19)]:
        assert all(
            abs(a - b) <= 12
            for a, b in zip(small.getpixel(corner), full.getpixel(corner), strict=True)
        )


@pytest.mark.parametrize(
    ("query", "size"),
    [
        ("height=50", (75, 50)),
        ("width=150&height=50", (75, 50)),
        ("width=60&height=150", (60, 40)),
        ("width=16", (16, 11)),
    ],
)
def test_height_and_box_keep_the_aspect_ratio(client, job, query, size):
    response = client.get(f"{job['images'][0]['url']}?{query}")

    assert response.status_code == 200
    assert decode(response.data).size == size


@pytest.mark.parametrize("query", ["width=2048", "width=300", "height=2000", "width=301"])
def test_an_image_is_never_enlarged_and_comes_as_stored(client, job, images_dir, query):
    image = job["images"][0]
    original = client.get(image["url"])

    response = client.get(f"{image['url']}?{query}")

    assert response.status_code == 200
    assert decode(response.data).size == SIZE
    assert response.data == original.data
    assert response.headers["ETag"] not in (original.headers["ETag"], None)
    assert not thumbs_dir(images_dir, job).exists()


def test_format_converts_and_flattens_transparency_on_white_for_jpeg(client, fake_openai):
    image = stored(client, fake_openai, picture("png", alpha=True))["images"][0]

    as_jpeg = client.get(f"{image['url']}?width=100&format=jpeg")
    as_webp = client.get(f"{image['url']}?width=100&format=webp")

    assert as_jpeg.mimetype == "image/jpeg"
    jpeg = decode(as_jpeg.data)
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (100, 67))
    assert all(channel >= 245 for channel in jpeg.getpixel((5, 30)))  # was transparent
    assert as_webp.mimetype == "image/webp"
    webp = decode(as_webp.data)
    assert (webp.format, webp.size) == ("WEBP", (100, 67))
    assert webp.convert("RGBA").getpixel((5, 30))[3] == 0  # WebP keeps the alpha
    assert as_jpeg.headers["ETag"] != as_webp.headers["ETag"]


def test_a_larger_width_in_another_format_is_converted_at_full_size(client, job):
    response = client.get(f"{job['images'][0]['url']}?width=2048&format=webp")

    assert response.mimetype == "image/webp"
    assert decode(response.data).size == SIZE


def test_exif_orientation_is_applied_like_a_viewer_would(client, fake_openai):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated a quarter turn: portrait
    image = stored(client, fake_openai, picture("jpeg", exif=exif.tobytes()), "jpeg")["images"][0]

    thumbnail = decode(client.get(f"{image['url']}?width=100").data)

    assert thumbnail.size == (100, 150)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("width=15", "width"),
        ("width=0", "width"),
        ("width=2049", "width"),
        ("width=-16", "width"),
        ("width=abc", "width"),
        ("width=1.5", "width"),
        ("width=1e3", "width"),
        ("width=", "width"),
        ("width=%2016", "width"),
        ("width=256px", "width"),
        ("width=" + "9" * 5000, "width"),
        ("width=100&width=200", "width"),
        ("height=8", "height"),
        ("width=100&height=x", "height"),
        ("width=100&format=gif", "format"),
        ("width=100&format=PNG", "format"),
        ("format=webp", "format"),
    ],
)
def test_bad_thumbnail_parameters_are_validation_errors_that_change_nothing(
    client, job, images_dir, query, field
):
    before = job_files(images_dir)

    response = client.get(f"{job['images'][0]['url']}?{query}")

    assert response.status_code == 400
    body = response.get_json()
    assert (body["status"], body["code"], body["field"]) == ("failed", "VALIDATION_ERROR", field)
    assert field in body["error"]
    assert len(body["error"]) < 200
    assert job_files(images_dir) == before


def test_conditional_get_with_the_thumbnail_etag_is_304(client, job):
    url = f"{job['images'][0]['url']}?width=64"
    first = client.get(url)

    again = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    full_etag = client.get(job["images"][0]["url"]).headers["ETag"]
    other_variant = client.get(url, headers={"If-None-Match": full_etag})

    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert other_variant.status_code == 200
    assert decode(other_variant.data).size == (64, 43)


def test_head_answers_the_thumbnail_headers_without_a_body(client, job):
    url = f"{job['images'][0]['url']}?width=64&format=webp"
    got = client.get(url)

    head = client.head(url)

    assert head.status_code == 200
    assert head.data == b""
    assert head.mimetype == "image/webp"
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Length"] == got.headers["Content-Length"]


def test_byte_ranges_work_on_thumbnails(client, job):
    url = f"{job['images'][0]['url']}?width=64"
    whole = client.get(url).data

    part = client.get(url, headers={"Range": "bytes=0-9"})

    assert part.status_code == 206
    assert part.data == whole[:10]


def test_without_thumbnail_parameters_the_image_is_answered_as_before(client, job):
    url = job["images"][0]["url"]
    plain = client.get(url)

    other = client.get(f"{url}?size=10&foo=bar")

    assert other.status_code == 200
    assert other.data == plain.data
    assert other.headers["ETag"] == plain.headers["ETag"] == f'"{job["images"][0]["id"]}"'
    assert decode(client.get(f"{url}?width=64&foo=bar").data).size == (64, 43)


def test_second_request_reads_the_cached_file_instead_of_encoding_again(client, job, images_dir):
    image = job["images"][0]
    url = f"{image['url']}?width=120&format=webp"
    first = client.get(url)
    cached = thumbs_dir(images_dir, job) / f"{image['id']}-w120.webp"
    before = os.stat(cached)

    second = client.get(url)

    after = os.stat(cached)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second.data == first.data == cached.read_bytes()
    assert second.headers["ETag"] == first.headers["ETag"]
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


def test_each_variant_is_cached_under_its_own_name(client, job, images_dir):
    image_id = job["images"][0]["id"]
    for query in ("width=64", "width=64&format=jpeg", "height=32", "width=64&height=32"):
        assert client.get(f"/images/{image_id}?{query}").status_code == 200

    names = sorted(p.name for p in thumbs_dir(images_dir, job).iterdir())

    assert names == sorted(
        f"{image_id}-{variant}" for variant in ("w64.png", "w64.jpg", "h32.png", "w64-h32.png")
    )


def test_concurrent_requests_for_one_thumbnail_all_get_it(app, job, images_dir):
    url = f"{job['images'][0]['url']}?width=100"
    answers: list[tuple[int, bytes]] = []
    start = threading.Barrier(8, timeout=10)

    def fetch() -> None:
        with app.test_client() as own:
            start.wait()
            response = own.get(url)
            answers.append((response.status_code, response.data))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(answers) == 8
    assert {status for status, _ in answers} == {200}
    assert len({data for _, data in answers}) == 1
    assert decode(answers[0][1]).size == (100, 67)
    assert [p.name for p in thumbs_dir(images_dir, job).iterdir()] == [
        f"{job['images'][0]['id']}-w100.png"
    ]


# --- the cache's bound ----------------------------------------------------------------------


def cached_names(images_dir: Path, job: dict, image_id: str) -> list[str]:
    folder = thumbs_dir(images_dir, job)
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(image_id))


def test_150_distinct_widths_leave_at_most_16_cached_files_and_every_answer_is_right(
    client, job, images_dir
):
    first, second = (image["id"] for image in job["images"])
    assert client.get(f"/images/{second}?width=50").status_code == 200

    for width in range(16, 166):
        response = client.get(f"/images/{first}?width={width}")
        assert response.status_code == 200
        assert decode(response.data).size == (width, round(200 * width / 300))

    names = cached_names(images_dir, job, first)
    assert names == sorted(f"{first}-w{width}.png" for width in range(150, 166))  # the newest
    assert cached_names(images_dir, job, second) == [f"{second}-w50.png"]  # per image
    assert MAX_THUMBNAILS == 16


def test_the_thumbnail_served_most_recently_stays_cached_when_older_ones_go(
    client, job, images_dir
):
    image_id = job["images"][0]["id"]
    client.get(f"/images/{image_id}?width=256")
    for width in range(100, 115):  # 15 more: the cache is full
        client.get(f"/images/{image_id}?width={width}")
    again = client.get(f"/images/{image_id}?width=256")  # a cache hit makes it the newest
    for width in range(115, 117):
        client.get(f"/images/{image_id}?width={width}")

    names = cached_names(images_dir, job, image_id)
    assert f"{image_id}-w256.png" in names
    assert f"{image_id}-w100.png" not in names and f"{image_id}-w101.png" not in names
    assert len(names) == 16
    assert decode(again.data).size == (256, 171)


def test_a_cached_thumbnail_dropped_before_it_is_sent_is_made_again(
    client, job, images_dir, monkeypatch
):
    image_id = job["images"][0]["id"]
    made = client.get(f"/images/{image_id}?width=120")
    touched = FileBlobs.touch

    def dropped_meanwhile(self, key):  # another worker trims the cache just then
        touched(self, key)
        if "/thumbs/" in key:
            os.unlink(self.root / key)

    monkeypatch.setattr(FileBlobs, "touch", dropped_meanwhile)
    response = client.get(f"/images/{image_id}?width=120")

    assert response.status_code == 200
    assert response.data == made.data
    assert response.headers["ETag"] == made.headers["ETag"]


def test_threads_making_many_variants_at_once_keep_the_bound(app, job, images_dir):
    image_id = job["images"][0]["id"]
    start = threading.Barrier(8, timeout=10)
    wrong: list[tuple[int, int, tuple[int, int] | None]] = []

    def fetch(offset: int) -> None:
        with app.test_client() as own:
            start.wait()
            for width in range(16 + offset, 216, 8):
                response = own.get(f"/images/{image_id}?width={width}")
                size = decode(response.data).size if response.status_code == 200 else None
                if size != (width, round(200 * width / 300)):
                    wrong.append((width, response.status_code, size))

    threads = [threading.Thread(target=fetch, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert wrong == []
    assert len(cached_names(images_dir, job, image_id)) <= 16
    assert [p.name for p in thumbs_dir(images_dir, job).iterdir() if p.name.startswith(".")] == []


def test_deleting_an_image_removes_its_thumbnails_only(client, job, images_dir):
    deleted, kept = job["images"]
    for image in (deleted, kept):
        client.get(f"{image['url']}?width=64")
    client.get(f"{deleted['url']}?width=32&format=jpeg")

    assert client.delete(deleted["url"]).status_code == 200

    assert [p.name for p in thumbs_dir(images_dir, job).iterdir()] == [f"{kept['id']}-w64.png"]
    response = client.get(f"{deleted['url']}?width=64")
    assert response.status_code == 404
    assert response.get_json()["code"] == "IMAGE_NOT_FOUND"
    assert client.get(f"{kept['url']}?width=64").status_code == 200


def test_deleting_a_job_removes_its_thumbnails(client, job, images_dir):
    client.get(f"{job['images'][0]['url']}?width=64")

    assert client.delete(f"/jobs/{job['job_id']}").status_code == 200

    assert not (images_dir / job["job_id"]).exists()
    assert client.get(f"{job['images'][0]['url']}?width=64").status_code == 404


def test_thumbnails_never_show_up_in_listings_or_metadata(client, job, images_dir):
    metadata = (images_dir / job["job_id"] / "metadata.json").read_bytes()
    listed = client.get("/images").get_json()
    shown = client.get(f"/jobs/{job['job_id']}").get_json()
    for image in job["images"]:
        for query in ("width=64", "width=32&format=webp"):
            assert client.get(f"{image['url']}?{query}").status_code == 200

    assert client.get("/images").get_json() == listed
    assert [i["id"] for i in listed["images"]] == [i["id"] for i in job["images"]]
    assert client.get(f"/jobs/{job['job_id']}").get_json() == shown
    assert (images_dir / job["job_id"] / "metadata.json").read_bytes() == metadata
    assert sorted(os.listdir(images_dir / ".index")) == sorted(i["id"] for i in job["images"])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 3], id="truncated"),
        pytest.param(lambda data: b"not an image at all" * 10, id="garbage"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(
            lambda data: data[:16] + struct.pack(">II", 0, 0) + data[24:], id="zero-size-header"
        ),
    ],
)
def test_a_damaged_stored_file_is_a_clean_json_error(client, job, images_dir, caplog, damage):
    image = job["images"][0]
    path = images_dir / job["job_id"] / f"001-{image['id']}.png"
    path.write_bytes(damage(path.read_bytes()))

    response = client.get(f"{image['url']}?width=64")

    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "SERVICE_ERROR"
    assert image["id"] in body["error"] and "without 'width'" in body["error"]
    assert "Traceback" not in caplog.text
    assert not thumbs_dir(images_dir, job).exists()
    assert client.get(image["url"]).status_code == 200  # the bytes as stored, as before


def test_a_decompression_bomb_is_refused_without_decoding_it(app, client, images_dir):
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    # 100,000 x 100,000 pixels (30 GB of RGB) claimed by a file of a few hundred bytes.
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    # The upstream's answers are bounded by the model's largest image, so only an image
    # stored before that (or by other means) can be one.
    generation = Generation([GeneratedImage(bomb, "png", 100_000, 100_000)])
    job = services(app).store.save_job({"prompt": "a bomb"}, generation)
    image = {**job["images"][0], "url": f"/images/{job['images'][0]['id']}"}

    response = client.get(f"{image['url']}?width=64")

    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "SERVICE_ERROR"
    assert image["id"] in body["error"]
    assert not thumbs_dir(images_dir, job).exists()


def test_images_above_the_pixel_cap_are_refused(client, job, images_dir, monkeypatch):
    from imagegen.imaging import thumbnails

    monkeypatch.setattr(thumbnails, "MAX_PIXELS", SIZE[0] * SIZE[1] - 1)

    response = client.get(f"{job['images'][0]['url']}?width=64")

    assert response.status_code == 500
    assert "too large" in response.get_json()["error"]
    assert not thumbs_dir(images_dir, job).exists()


def test_images_beyond_the_largest_any_model_makes_are_refused_from_their_header(
    app, client, images_dir
):
    # 2881x2880 is one column more than 8,294,400 pixels (gpt-image-2's 3840x2160); the
    # pixel data is a few bytes: only the header is read before the refusal.
    header = struct.pack(">IIBBBBB", 2881, 2880, 8, 2, 0, 0, 0)
    small = picture("png", (8, 8))
    ihdr = b"IHDR" + header
    png = small[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    png += small[33:]
    generation = Generation([GeneratedImage(png, "png", 2881, 2880)])
    job = services(app).store.save_job({"prompt": "wide"}, generation)

    response = client.get(f"/images/{job['images'][0]['id']}?width=64")

    assert response.status_code == 500
    assert "2881x2880 pixels, too large" in response.get_json()["error"]


def gradient_png(size: tuple[int, int]) -> bytes:
    """A large RGB PNG, quickly (Pillow's own gradients, stretched)."""
    red = Image.linear_gradient("L").resize(size)
    out = io.BytesIO()
    Image.merge("RGB", (red, red.transpose(Image.Transpose.FLIP_LEFT_RIGHT), red)).save(
        out, format="PNG", compress_level=1
    )
    return out.getvalue()


def test_the_largest_image_a_model_makes_gets_its_thumbnail(client, fake_openai):
    job = stored(client, fake_openai, gradient_png((3840, 2160)))

    response = client.get(f"{job['images'][0]['url']}?width=256")

    assert response.status_code == 200
    assert decode(response.data).size == (256, 144)


_MEMORY_PROBE = """
import sys, threading
from pathlib import Path
from imagegen.imaging import memory
from imagegen.imaging import thumbnails

if not memory.keep_large_allocations_returnable():  # as create_app does in every worker
    sys.exit("not glibc")

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

source = Path(sys.argv[1])
before = rss_mb()
for round in range(3):
    threads = [
        threading.Thread(
            target=thumbnails.render,
            args=(source, thumbnails.Variant(200 + 8 * round + n, None, None), "png", "x"),
        )
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
print(rss_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_a_worker_gives_thumbnail_memory_back_after_eight_at_once(tmp_path):
    source = tmp_path / "large.png"
    source.write_bytes(gradient_png((3840, 2160)))

    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(thumbnails_module.__file__).parents[2])},
    )

    if probe.stderr.strip() == "not glibc":
        pytest.skip("giving memory back uses glibc's malloc calls")
    assert probe.returncode == 0, probe.stderr
    # Three rounds of eight 33 MB decodes: without giving memory back, 29-70 MB stayed.
    assert int(probe.stdout) < 10, probe.stdout


# --- a full disk and real Gunicorn ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A fresh 2 MiB tmpfs (needs root; skipped, saying why, without it)."""
    with mounted_tmpfs(tmp_path / "disk", "size=2m") as mount:
        yield mount


def test_on_a_full_disk_the_thumbnail_is_still_answered_but_not_cached(
    small_disk, settings, make_app, fake_openai
):
    images = small_disk / "images"
    client = make_app(settings, images_dir=images).test_client()
    job = stored(client, fake_openai, picture("png"))
    image = job["images"][0]
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # fill every byte left
        for _ in range(4096):  # 2 MiB disk: at most 2048 writes of 1 KiB fit
            try:
                filler.write(b"\0" * 1024)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break

    response = client.get(f"{image['url']}?width=64")

    assert response.status_code == 200
    assert decode(response.data).size == (64, 43)
    leftovers = list(thumbs_dir(images, job).iterdir()) if thumbs_dir(images, job).exists() else []
    assert leftovers == []


@pytest.mark.slow
def test_workers_making_one_thumbnail_at_once_all_answer_it(tmp_path):
    with run_gunicorn(tmp_path, {"IMAGE_GEN_PROVIDER": "placeholder"}) as service:
        job = service.request("POST", "/generate", {"prompt": "x", "size": "1536x1024"}).json()
        url = f"{job['images'][0]['url']}?width=200&format=webp"
        answers: list[tuple[int, bytes]] = []
        start = threading.Barrier(12, timeout=10)

        def fetch() -> None:
            start.wait()
            status, _, body = service.get(url, timeout=20)
            answers.append((status, body))

        threads = [threading.Thread(target=fetch) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert len(answers) == 12
        assert {status for status, _ in answers} == {200}
        assert len({body for _, body in answers}) == 1
        assert decode(answers[0][1]).size == (200, 133)
        folder = service.images / job["job_id"] / "thumbs"
        assert [p.name for p in folder.iterdir()] == [f"{job['images'][0]['id']}-w200.webp"]


@pytest.mark.slow
def test_workers_making_many_variants_at_once_keep_the_bound_and_answer_each(tmp_path):
    with run_gunicorn(tmp_path, {"IMAGE_GEN_PROVIDER": "placeholder"}) as service:
        job = service.request("POST", "/generate", {"prompt": "x", "size": "1536x1024"}).json()
        image_id = job["images"][0]["id"]
        start = threading.Barrier(8, timeout=10)
        wrong: list[tuple[int, int, tuple[int, int] | None]] = []

        def fetch(offset: int) -> None:
            start.wait()
            for width in range(100 + offset, 420, 8):  # 40 distinct widths over 8 callers
                status, _, body = service.get(f"/images/{image_id}?width={width}", timeout=30)
                size = decode(body).size if status == 200 else None
                if size != (width, round(1024 * width / 1536)):
                    wrong.append((width, status, size))

        threads = [threading.Thread(target=fetch, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        assert wrong == []
        folder = service.images / job["job_id"] / "thumbs"
        names = [p.name for p in folder.iterdir()]
        assert len(names) <= 16 and all(name.startswith(image_id) for name in names), names
