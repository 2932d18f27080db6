"""The tokens file: its format, its checks at start-up, and the command that makes tokens."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagegen.access import tokens as tokens_module
from imagegen.access.tokens import Limits, TokenFileError, digest_of, find_token, parse_tokens
from imagegen.settings import Settings, SettingsError
from tests.support.gunicorn_server import REPO

SECRET_A = "igt_alice-0123456789abcdefghijklmnop"
SECRET_B = "igt_bob-0123456789abcdefghijklmnopqr"


def hashed(secret: str) -> str:
    return "sha256:" + digest_of(secret).hex()


def test_a_hashed_token_line_with_limits_is_read_into_name_role_and_limits():
    (token,) = parse_tokens(
        [
            f"alice {hashed(SECRET_A)} images_per_hour=20 images_per_day=100 usd_per_day=2.5 "
            "models=gpt-image-2,dall-e-3 sizes=1024x1024 qualities=low,medium max_count=4"
        ]
    )
    assert token.name == "alice" and not token.admin
    assert token.limits == Limits(
        images_per_hour=20,
        images_per_day=100,
        usd_per_day=2.5,
        models=frozenset({"gpt-image-2", "dall-e-3"}),
        sizes=frozenset({"1024x1024"}),
        qualities=frozenset({"low", "medium"}),
        max_count=4,
    )
    assert find_token([token], SECRET_A) is token
    assert find_token([token], SECRET_B) is None


def test_comments_blank_lines_admin_and_plain_tokens_are_accepted():
    tokens = parse_tokens(
        [
            "# the team",
            "",
            f"ops   {hashed(SECRET_A)}   admin   # the operator",
            f"bob   {SECRET_B}",
        ]
    )
    assert [(t.name, t.admin) for t in tokens] == [("ops", True), ("bob", False)]
    assert find_token(tokens, SECRET_B).name == "bob"


def test_a_token_never_appears_in_its_repr():
    (token,) = parse_tokens([f"bob {SECRET_B}"])
    assert SECRET_B not in repr(token) and digest_of(SECRET_B).hex() not in repr(token)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected 'NAME TOKEN"),
        (f"alice {hashed(SECRET_A)} lots", "expected KEY=VALUE"),
        (f"-alice {hashed(SECRET_A)}", "the name must be"),
        (f"anonymous {hashed(SECRET_A)}", "reserved"),
        ("alice sha256:abc", "64 lower-case hex"),
        ("alice short-token", "at least 16"),
        (f"alice {hashed(SECRET_A)} images_per_hour=ten", "whole number"),
        (f"alice {hashed(SECRET_A)} images_per_hour=-1", "whole number"),
        (f"alice {hashed(SECRET_A)} max_count=0", "whole number"),
        (f"alice {hashed(SECRET_A)} usd_per_day=nan", "amount"),
        (f"alice {hashed(SECRET_A)} usd_per_day=-3", "amount"),
        (f"alice {hashed(SECRET_A)} colour=blue", "unknown option 'colour'"),
        (f"alice {hashed(SECRET_A)} models=gpt-image-9", "unknown model(s) gpt-image-9"),
        (f"alice {hashed(SECRET_A)} models=", "KEY=VALUE"),
        (f"alice {hashed(SECRET_A)} max_count=2 max_count=3", "given twice"),
        (f"alice {hashed(SECRET_A)} admin max_count=3", "admin token cannot generate"),
    ],
)
def test_a_bad_line_is_refused_with_its_line_number(line, message):
    with pytest.raises(TokenFileError) as raised:
        parse_tokens(["# header", line], source="tokens.txt")
    assert "tokens.txt line 2" in str(raised.value)
    assert message in str(raised.value)
    assert SECRET_A not in str(raised.value)


def test_duplicate_names_and_duplicate_tokens_are_refused():
    with pytest.raises(TokenFileError, match="line 2: the name 'alice' is used twice"):
        parse_tokens([f"alice {hashed(SECRET_A)}", f"alice {hashed(SECRET_B)}"])
    with pytest.raises(TokenFileError, match="line 2: the same token is listed twice"):
        parse_tokens([f"alice {hashed(SECRET_A)}", f"bob {SECRET_A}"])


def test_a_file_without_tokens_is_refused():
    with pytest.raises(TokenFileError, match="lists no tokens"):
        parse_tokens(["# nobody yet", ""])


def test_settings_refuse_to_start_with_a_bad_or_missing_tokens_file(tmp_path):
    bad = tmp_path / "tokens"
    bad.write_text(f"alice {hashed(SECRET_A)}\nbob {hashed(SECRET_B)} images_per_day=many\n")
    with pytest.raises(SettingsError, match="line 2: images_per_day must be a whole number"):
        Settings.from_env({"IMAGE_GEN_TOKENS_FILE": str(bad)})
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.from_env({"IMAGE_GEN_TOKENS_FILE": str(tmp_path / "missing")})


def test_settings_read_tokens_and_global_caps_from_the_environment(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"alice {hashed(SECRET_A)} images_per_hour=3\n")
    settings = Settings.from_env(
        {
            "IMAGE_GEN_TOKENS_FILE": str(path),
            "IMAGE_GEN_CAP_IMAGES_PER_HOUR": "100",
            "IMAGE_GEN_CAP_USD_PER_DAY": "12.5",
        }
    )
    assert settings.auth_required
    assert [t.name for t in settings.tokens] == ["alice"]
    assert settings.global_limits.caps() == {"images_per_hour": 100, "usd_per_day": 12.5}
    assert SECRET_A not in repr(settings) and digest_of(SECRET_A).hex() not in repr(settings)
    assert not Settings.from_env({}).auth_required


def _tokens_command(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegen", "tokens", *args],
        cwd=REPO / "image-gen",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_tokens_command_makes_a_token_whose_line_the_service_accepts():
    result = _tokens_command("new", "ci-bot", "images_per_day=50", "max_count=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no RuntimeWarning about imagegen.access.tokens in sys.modules
    lines = result.stdout.splitlines()
    secret = lines[0].rsplit(" ", 1)[1]
    line = lines[-1]
    assert secret.startswith("igt_") and len(secret) > 40
    assert secret not in line
    (token,) = parse_tokens([line])
    assert token.name == "ci-bot" and token.limits.max_count == 2
    assert find_token([token], secret) is token


def test_the_tokens_command_hashes_a_token_and_refuses_bad_limits():
    hashed_out = _tokens_command("hash", stdin=SECRET_A + "\n")
    assert hashed_out.stdout.strip() == hashed(SECRET_A)
    refused = _tokens_command("new", "bob", "images_per_hour=lots")
    assert refused.returncode == 2 and "whole number" in refused.stderr


# --- the tokens a process serves with (held by Gunicorn's master, reloaded on SIGHUP) --------


@pytest.fixture
def held_nothing(monkeypatch):
    """No tokens held, as in a process that is not a Gunicorn worker; restored afterwards."""
    monkeypatch.setattr(tokens_module, "_held", None)


def test_a_held_tokens_file_is_what_every_later_reader_gets(tmp_path, held_nothing):
    path = tmp_path / "tokens"
    path.write_text(f"alice {hashed(SECRET_A)}\n")
    held = tokens_module.hold(path)
    path.write_text(f"bob {hashed(SECRET_B)}\n")  # changed, but not reloaded yet

    served = Settings.from_env({"IMAGE_GEN_TOKENS_FILE": str(path)})

    assert [t.name for t in served.tokens] == ["alice"]
    assert served.tokens_load is held and held.failed_at is None
    # Another file is read as it is.
    other = tmp_path / "other"
    other.write_text(f"carol {hashed(SECRET_B)}\n")
    assert [t.name for t in tokens_module.tokens_for(other).tokens] == ["carol"]


def test_a_reload_reads_the_file_again(tmp_path, held_nothing):
    path = tmp_path / "tokens"
    path.write_text(f"alice {hashed(SECRET_A)}\n")
    tokens_module.hold(path)
    path.write_text(f"bob {hashed(SECRET_B)}\n")

    held, error = tokens_module.reload_held()

    assert error is None
    assert [t.name for t in held.tokens] == ["bob"]
    assert [t.name for t in tokens_module.tokens_for(path).tokens] == ["bob"]


def test_a_bad_file_on_reload_keeps_the_last_good_tokens_and_says_which_line(
    tmp_path, held_nothing
):
    path = tmp_path / "tokens"
    path.write_text(f"alice {hashed(SECRET_A)}\nbob {hashed(SECRET_B)}\n")
    first = tokens_module.hold(path)
    path.write_text(f"alice {hashed(SECRET_A)}\n# a comment\ncarol not-a-token\n")

    held, error = tokens_module.reload_held()

    assert isinstance(error, TokenFileError) and error.line == 3
    assert "line 3" in str(error)
    assert held.tokens == first.tokens and held.loaded_at == first.loaded_at
    assert held.failed_line == 3 and held.failed_at is not None
    path.unlink()  # a file that is gone keeps them too
    held, error = tokens_module.reload_held()
    assert held.tokens == first.tokens and "does not exist" in str(error)
    assert error.line is None and held.failed_line is None


def test_nothing_is_reloaded_where_nothing_is_held(held_nothing):
    assert tokens_module.reload_held() is None
