"""Which user the service runs as, who owns the paths it needs, and the change that matches them.

docker-compose.yml runs the service as IMAGE_GEN_USER (default 1000:1000, the usual owner of
a Linux checkout); the image on its own runs as uid 10001. When the images directory or the
key file belongs to someone else, the start-up message names the fix computed from the
path's real owner. The process cannot tell how it was started, so a message gives the
docker compose fix (one line in .env, or one command beside docker-compose.yml) and the
general one side by side. Messages name paths and ids only, never file contents.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_UID_MAP = Path("/proc/self/uid_map")
_ENV_LINE = "add the line IMAGE_GEN_USER={uid}:{gid} to the .env file beside docker-compose.yml"
# Docker Desktop for Linux (4.34 and earlier, by its FAQ) shows the user's own files as
# root's, and its containers' root is that user, which nothing inside the container can tell.
_DESKTOP_LINUX = (
    "(Docker Desktop for Linux can show your own files as root's: if so, add {lines} "
    "IMAGE_GEN_ALLOW_ROOT=true to .env {then}.)"
)


@dataclass(frozen=True)
class Need:
    """What the service needs of a path: to write in a directory, or to read a file."""

    verb: str
    owner_bits: int
    chmod: str
    chown: str


WRITE_DIRECTORY = Need("write", stat.S_IWUSR | stat.S_IXUSR, "chmod u+rwx", "chown -R")
READ_FILE = Need("read", stat.S_IRUSR, "chmod u+r", "chown")


@dataclass(frozen=True)
class Process:
    """Who this process is: its uid and gid, and the host uid that uid 0 here stands for."""

    uid: int
    gid: int
    # 0 when there is no user namespace (root here is root on the host); under rootless
    # Docker, the unprivileged host user that the container's root is. None: unknown.
    root_on_host: int | None

    @classmethod
    def current(cls) -> Process:
        try:
            uid_map = _UID_MAP.read_text(encoding="ascii")
        except OSError:
            uid_map = ""
        return cls(os.getuid(), os.getgid(), host_uid_of_root(uid_map))

    @property
    def is_host_root(self) -> bool:
        """Root with root's power on the host (a user namespace's root is not)."""
        return self.uid == 0 and self.root_on_host in (0, None)


def host_uid_of_root(uid_map: str) -> int | None:
    """The host uid that uid 0 maps to in a /proc/<pid>/uid_map text, None if unmapped."""
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields) and fields[0] == "0":
            return int(fields[1])
    return None


def denied(
    path: Path,
    need: Need,
    compose_path: str,
    *,
    process: Process | None = None,
    status: os.stat_result | None = None,
) -> str:
    """Who owns `path`, who this process is, and the one change that lets it `need` the path.

    `compose_path` is the path's name in a docker compose checkout ("images").
    """
    me = process or Process.current()
    if status is None:
        try:
            status = os.stat(path)
        except OSError:
            return (
                f"This service runs as uid {me.uid}, gid {me.gid} and cannot look at {path}: "
                f"let it into the directories above."
            )
    owner, group, mode = status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)
    said = (
        f"It is owned by uid {owner}, gid {group} (mode {mode:o}); "
        f"this service runs as uid {me.uid}, gid {me.gid}."
    )
    owner_may = mode & need.owner_bits == need.owner_bits
    give = f"sudo {need.chown} {me.uid}:{me.gid} {compose_path}"
    if owner == me.uid:
        if not owner_may:
            return (
                f"{said} With docker compose, run `{need.chmod} {compose_path}` beside "
                f"docker-compose.yml; elsewhere, {need.chmod} it."
            )
        return (
            f"{said} Its owner may {need.verb} it, so something else refuses: an ACL, a "
            "read-only mount, or SELinux (mount it with the :z option)."
        )
    if owner == 0 and me.root_on_host not in (0, None):
        return (
            f"{said} uid 0 in this container is uid {me.root_on_host} on the host (a user "
            f"namespace, as rootless Docker makes), so it is that user's: with docker compose, "
            f"{_ENV_LINE.format(uid=0, gid=0)}."
        )
    if owner == 0 and owner_may:
        return (
            f"{said} The service does not run as root: with docker compose, run `{give}` "
            f"beside docker-compose.yml; elsewhere, let uid {me.uid} {need.verb} it. "
            f"{_DESKTOP_LINUX.format(lines='the lines IMAGE_GEN_USER=0:0 and', then='instead')}"
        )
    if owner == 0 or not owner_may:
        return (
            f"{said} With docker compose, run `{give}` beside docker-compose.yml; elsewhere, "
            f"let uid {me.uid} {need.verb} it."
        )
    return (
        f"{said} With docker compose, {_ENV_LINE.format(uid=owner, gid=group)} "
        f"(or run `{give}` there). Elsewhere, run the service as uid {owner} or let uid "
        f"{me.uid} {need.verb} it."
    )


def denied_within(
    directory: Path,
    path: Path,
    need: Need,
    compose_path: str,
    *,
    process: Process | None = None,
    status: os.stat_result | None = None,
    outer: os.stat_result | None = None,
) -> str:
    """Like `denied`, for `path` inside `directory` (`compose_path` in a checkout), which this
    process may use: the fix named covers both, and a folder left half another uid's."""
    me = process or Process.current()
    try:
        status = status or os.stat(path)
        outer = outer or os.stat(directory)
    except OSError:
        return denied(path, need, compose_path, process=me)
    inner = f"{compose_path}/{path.relative_to(directory)}"
    if status.st_uid == outer.st_uid:
        return denied(path, need, inner, process=me, status=status)
    mode = stat.S_IMODE(status.st_mode)
    return (
        f"It is owned by uid {status.st_uid}, gid {status.st_gid} (mode {mode:o}), "
        f"{compose_path} itself by uid {outer.st_uid}; this service runs as uid {me.uid}, "
        f"gid {me.gid}. With docker compose, run `sudo {need.chown} {me.uid}:{me.gid} "
        f"{compose_path}` beside docker-compose.yml; elsewhere, let uid {me.uid} {need.verb} "
        "all of it."
    )


def root_refusal(images_dir: Path, *, process: Process | None = None) -> str | None:
    """Why this process must not run, if it is the host's root; None otherwise.

    Root in a user namespace (rootless Docker) is an unprivileged host user, and may run.
    """
    me = process or Process.current()
    if not me.is_host_root:
        return None
    try:
        status = os.stat(images_dir)
    except OSError:
        status = None
    if status is not None and status.st_uid != 0:
        who = f"IMAGE_GEN_USER={status.st_uid}:{status.st_gid}"
        return (
            f"image-gen does not run as root (uid 0). With docker compose, set the line {who} "
            f"(the owner of {images_dir}) in the .env file beside docker-compose.yml. "
            f"Elsewhere, run it as that user (docker run --user {status.st_uid}:{status.st_gid})."
        )
    return (
        "image-gen does not run as root (uid 0). With docker compose, set "
        "IMAGE_GEN_USER=<uid>:<gid> of your user (`id -u`, `id -g`) in the .env file beside "
        "docker-compose.yml and give that user ./images (`sudo chown -R <uid>:<gid> images`). "
        "Elsewhere, run it as any other uid. "
        + _DESKTOP_LINUX.format(lines="the line", then="as well")
    )
