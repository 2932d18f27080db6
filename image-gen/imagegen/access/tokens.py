"""Client tokens: who may call the service, what each may make, and the file that lists them.

The tokens file (a second Docker secret, path in IMAGE_GEN_TOKENS_FILE) has one token per
line, `#` starts a comment:

    # name    token                          limits (all optional)
    alice     sha256:<64 hex digits>         images_per_hour=20 usd_per_day=5 models=gpt-image-2
    ci-bot    sha256:<64 hex digits>         images_per_day=50 sizes=1024x1024 max_count=2
    ops       sha256:<64 hex digits>         admin

The token itself is stored as its SHA-256 (`python -m imagegen tokens new NAME` makes a
token and its line). A plain token is accepted too, with a warning, for local trials.
An `admin` token reads usage and manages images but cannot generate, so no token escapes
the caps. Any mistake in the file stops the service at start-up with the line number.

Run `python -m imagegen tokens new NAME [LIMITS...]` to make a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from imagegen.clock import utc_now

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_MIN_PLAIN_LENGTH = 16
_TOKEN_PREFIX = "igt_"  # noqa: S105 (a prefix, not a secret)
ANONYMOUS = "anonymous"


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the line and what is wrong."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line  # the line at fault, when one is


@dataclass(frozen=True)
class Limits:
    """What one token (or the whole service) may make. None means no limit."""

    images_per_hour: int | None = None
    images_per_day: int | None = None
    usd_per_day: float | None = None
    models: frozenset[str] | None = None
    sizes: frozenset[str] | None = None
    qualities: frozenset[str] | None = None
    max_count: int | None = None

    def caps(self) -> dict[str, float]:
        """The counted caps that are set: images_per_hour, images_per_day, usd_per_day."""
        named = {
            "images_per_hour": self.images_per_hour,
            "images_per_day": self.images_per_day,
            "usd_per_day": self.usd_per_day,
        }
        return {name: value for name, value in named.items() if value is not None}

    def as_dict(self) -> dict[str, object]:
        """The limits as `GET /usage` shows them (sets as sorted lists)."""
        return {
            "images_per_hour": self.images_per_hour,
            "images_per_day": self.images_per_day,
            "usd_per_day": self.usd_per_day,
            "models": sorted(self.models) if self.models is not None else None,
            "sizes": sorted(self.sizes) if self.sizes is not None else None,
            "qualities": sorted(self.qualities) if self.qualities is not None else None,
            "max_count": self.max_count,
        }


@dataclass(frozen=True)
class Token:
    """One client token: its name, the SHA-256 of its secret, its role and limits."""

    name: str
    digest: bytes = field(repr=False)
    admin: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Caller:
    """Who is making the current request: a token's name, role and limits."""

    name: str
    admin: bool = False
    limits: Limits = field(default_factory=Limits)
    authenticated: bool = False


ANONYMOUS_CALLER = Caller(ANONYMOUS)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def find_token(tokens: Iterable[Token], secret: str) -> Token | None:
    """The token whose secret this is, comparing every digest in constant time."""
    presented = digest_of(secret)
    found = None
    for token in tokens:
        # No early exit: the time taken does not depend on which token matched.
        if hmac.compare_digest(token.digest, presented):
            found = token
    return found


def load_tokens(path: Path) -> tuple[Token, ...]:
    """Read and check the whole tokens file; raise TokenFileError at the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenFileError(
            f"the tokens file {path} does not exist (IMAGE_GEN_TOKENS_FILE names it)"
        ) from None
    except OSError as exc:
        raise TokenFileError(f"cannot read the tokens file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"the tokens file {path} is not UTF-8 text") from None
    return parse_tokens(text.splitlines(), source=str(path))


# --- the tokens a process serves with --------------------------------------------------
# Under Gunicorn the master reads the file (gunicorn.conf.py: at start-up and on SIGHUP) and
# holds it; every worker forks from the master and serves with what it holds. So all workers
# agree, a worker respawned after a crash or by GUNICORN_MAX_REQUESTS gets the same tokens as
# its siblings, and a file broken on a reload changes nothing: the last good tokens stay.


@dataclass(frozen=True)
class TokensLoad:
    """Tokens read from `path` at `loaded_at`; `failed_at` and `failed_line` say that a later
    reload of the file failed (the tokens are then the last good ones)."""

    path: Path
    tokens: tuple[Token, ...] = field(repr=False)
    loaded_at: str
    failed_at: str | None = None
    failed_line: int | None = None


_held: TokensLoad | None = None


def hold(path: Path) -> TokensLoad:
    """Read the tokens file and hold it for the processes forked from this one (Gunicorn's
    master, at start-up). Raises TokenFileError, so a bad file stops the start."""
    global _held
    path = Path(path).absolute()
    _held = TokensLoad(path, load_tokens(path), utc_now())
    return _held


def reload_held() -> tuple[TokensLoad, TokenFileError | None] | None:
    """Read the held file again (SIGHUP): the tokens now held, and the error if the file could
    not be used, in which case the last good tokens stay held. None if nothing is held."""
    global _held
    if _held is None:
        return None
    try:
        _held = TokensLoad(_held.path, load_tokens(_held.path), utc_now())
    except TokenFileError as exc:
        _held = replace(_held, failed_at=utc_now(), failed_line=exc.line)
        return _held, exc
    return _held, None


def tokens_for(path: Path) -> TokensLoad:
    """The tokens this process serves with: the ones its Gunicorn master holds for `path`,
    else the file as it is now. Raises TokenFileError."""
    path = Path(path).absolute()
    if _held is not None and _held.path == path:
        return _held
    return TokensLoad(path, load_tokens(path), utc_now())


def parse_tokens(lines: Iterable[str], *, source: str = "tokens file") -> tuple[Token, ...]:
    """Parse token lines. Errors name the line number, never the token's secret."""
    tokens: list[Token] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    plain = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            token = _parse_line(line, f"{source} line {number}", names, digests)
        except TokenFileError as exc:
            raise TokenFileError(str(exc), line=number) from None
        if _DIGEST.match(line.split()[1]) is None:
            plain.append(token.name)
        names.add(token.name)
        digests.add(token.digest)
        tokens.append(token)
    if not tokens:
        raise TokenFileError(f"{source} lists no tokens; remove IMAGE_GEN_TOKENS_FILE to run open")
    if plain:
        log.warning(
            "tokens stored in plain text in the tokens file: %s; store 'sha256:<hex>' instead "
            "(python -m imagegen tokens hash)",
            ", ".join(plain),
        )
    return tuple(tokens)


def _parse_line(line: str, where: str, names: set[str], digests: set[bytes]) -> Token:
    """One token line (comments stripped), checked against the names and digests before it."""
    fields = line.split()
    if len(fields) < 2:
        raise TokenFileError(f"{where}: expected 'NAME TOKEN [LIMITS...]'")
    name, secret, options = fields[0], fields[1], fields[2:]
    if not _NAME.match(name):
        raise TokenFileError(
            f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    if name == ANONYMOUS:
        raise TokenFileError(f"{where}: the name {ANONYMOUS!r} is reserved")
    if name in names:
        raise TokenFileError(f"{where}: the name {name!r} is used twice")
    digest = _parse_secret(secret, where)
    if digest in digests:
        raise TokenFileError(f"{where}: the same token is listed twice")
    admin, limits = _parse_options(options, where)
    return Token(name, digest, admin, limits)


def _parse_secret(secret: str, where: str) -> bytes:
    match = _DIGEST.match(secret)
    if match:
        return bytes.fromhex(match.group(1))
    if secret.lower().startswith("sha256:"):
        raise TokenFileError(f"{where}: 'sha256:' must be followed by 64 lower-case hex digits")
    if len(secret) < _MIN_PLAIN_LENGTH or "=" in secret:
        raise TokenFileError(
            f"{where}: the second field must be 'sha256:<hex>' or a token of at least "
            f"{_MIN_PLAIN_LENGTH} characters without '='"
        )
    return digest_of(secret)


_INT_OPTIONS = ("images_per_hour", "images_per_day", "max_count")
_SET_OPTIONS = ("models", "sizes", "qualities")


def _parse_options(options: list[str], where: str) -> tuple[bool, Limits]:
    admin = False
    values: dict[str, object] = {}
    for option in options:
        if option == "admin":
            admin = True
            continue
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise TokenFileError(f"{where}: expected KEY=VALUE or 'admin', not {option!r}")
        if key in values:
            raise TokenFileError(f"{where}: {key} is given twice")
        if key in _INT_OPTIONS:
            if not value.isdigit() or (key == "max_count" and int(value) < 1):
                raise TokenFileError(f"{where}: {key} must be a whole number, not {value!r}")
            values[key] = int(value)
        elif key == "usd_per_day":
            values[key] = _usd(value, where)
        elif key in _SET_OPTIONS:
            items = frozenset(item for item in value.split(",") if item)
            if not items:
                raise TokenFileError(f"{where}: {key} needs at least one value")
            values[key] = items
        else:
            known = ", ".join((*_INT_OPTIONS, "usd_per_day", *_SET_OPTIONS, "admin"))
            raise TokenFileError(f"{where}: unknown option {key!r} (known: {known})")
    _check_known_values(values, where)
    if admin and values:
        raise TokenFileError(f"{where}: an admin token cannot generate, so it takes no limits")
    # values maps Limits' field names (the option names) to what each was parsed as above;
    # mypy cannot match a dict's keys to the fields.
    return admin, Limits(**values)  # type: ignore[arg-type]


def _usd(value: str, where: str) -> float:
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        raise TokenFileError(f"{where}: usd_per_day must be an amount like 2.50, not {value!r}")
    return amount


def _check_known_values(values: Mapping[str, object], where: str) -> None:
    """Model names must be in the catalog, so a typo cannot silently lock a token out."""
    from imagegen.catalog.models import CATALOG

    models = values.get("models")
    if isinstance(models, frozenset):
        unknown = sorted(models - set(CATALOG))
        if unknown:
            raise TokenFileError(f"{where}: unknown model(s) {', '.join(unknown)}")


def new_token() -> str:
    """A fresh random token (256 bits), recognisable by its prefix in leak scanners."""
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


def main(argv: list[str]) -> int:
    """`python -m imagegen tokens ...`: make a token and its line, or hash a token."""
    try:
        return _command(argv)
    except TokenFileError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2


def _command(argv: list[str]) -> int:
    usage = (
        "usage: python -m imagegen tokens new NAME [LIMITS...]   make a token and its line\n"
        "       python -m imagegen tokens hash                   hash a token read from stdin\n"
    )
    if argv[:1] == ["new"] and len(argv) >= 2:
        name, options = argv[1], argv[2:]
        secret = new_token()
        line = " ".join([name, "sha256:" + digest_of(secret).hex(), *options])
        parse_tokens([line], source="the new line")  # same checks as at start-up
        print(f"token (give it to the client; it is not stored): {secret}")
        print(f"line for the tokens file:\n{line}")
        return 0
    if argv == ["hash"]:
        secret = sys.stdin.readline().strip()
        if not secret:
            sys.stderr.write("no token on stdin\n")
            return 2
        print("sha256:" + digest_of(secret).hex())
        return 0
    sys.stderr.write(usage)
    return 2
