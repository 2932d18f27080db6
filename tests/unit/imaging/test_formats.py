"""The base64 decoder for upstream images: the SIMD one and the stdlib fallback agree, except
that the SIMD one also refuses stray padding after a complete group."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagegen.imaging.formats import decode_base64, decode_base64_stdlib

# Mostly base64's own alphabet, so that many drawn texts are almost valid.
ALMOST_BASE64 = st.text(
    alphabet=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" + "====" + "-_ \n\\é"
    ),
    max_size=40,
)


def outcome(decode, text: str) -> bytes | str:
    try:
        return decode(text)
    except ValueError:
        return "refused"


@given(st.binary(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_every_encoding_decodes_back_to_its_bytes(data):
    text = base64.b64encode(data).decode()

    assert decode_base64(text) == data
    assert decode_base64(text.encode()) == data
    assert decode_base64_stdlib(text) == data


@given(ALMOST_BASE64)
@settings(max_examples=2000, deadline=None)
@example("QQ==")
@example("QQ")  # unpadded
@example("QQ==QQ==")  # data after the padding
@example("Q===")
@example("=QQQ")
@example("QQ=Q")
@example("QUJD\nREVG")  # a MIME line break
@example("QUJD REVG")
@example("QUJD-_EF")  # the URL-safe alphabet
@example("QUJDé")
@example("0000=")  # padding after a full quad: the stdlib lets it pass, pybase64 does not
def test_the_fast_decoder_is_never_more_lenient_than_the_stdlib(text):
    fast, stdlib = outcome(decode_base64, text), outcome(decode_base64_stdlib, text)

    assert fast == stdlib or (
        fast == "refused" and stdlib == base64.b64decode(text.rstrip("="), validate=True)
    )


@pytest.mark.parametrize("text", ["", "QQ==", "QUJD"])
def test_what_strict_base64_accepts(text):
    assert decode_base64(text) == base64.b64decode(text, validate=True)
