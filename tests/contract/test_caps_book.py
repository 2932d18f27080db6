"""The contract of a CapsBook: exact caps, also under concurrent reservations, sliding
windows, settling and releasing. Runs against every implementation (conftest.CAPS)."""

from __future__ import annotations

import math

import pytest

from imagegen.access.tokens import Limits
from imagegen.books.interfaces import GLOBAL, CapExceeded, Reservation
from tests.support.books import race

NONE = Limits()


def reserve(book, token="alice", *, images=1, usd=0.0, token_caps=NONE, global_caps=NONE):
    return book.reserve(
        token,
        token_limits=token_caps,
        global_limits=global_caps,
        images=images,
        usd=usd,
        model="gpt-image-2",
    )


def test_a_reservation_is_counted_for_its_token_and_the_service(caps_books):
    book = caps_books()

    held = reserve(book, images=2, usd=0.5)

    assert isinstance(held, Reservation)
    assert (held.token, held.images, held.usd) == ("alice", 2, 0.5)
    expected = {
        "images_last_hour": 2,
        "images_last_day": 2,
        "usd_last_day": 0.5,
        "usd_reserved": 0.5,
    }
    assert book.usage("alice") == expected
    assert book.usage(None) == expected
    assert book.usage("bob") == {key: 0 for key in expected}
    assert book.tokens_seen() == ["alice"]


def test_every_handle_sees_the_reservations_of_the_others(caps_books):
    first, second = caps_books(), caps_books()

    reserve(first, "alice", images=2)
    reserve(second, "bob", images=1)

    assert first.usage(None)["images_last_hour"] == 3
    assert second.usage("alice")["images_last_hour"] == 2
    assert first.tokens_seen() == second.tokens_seen() == ["alice", "bob"]


def test_settling_books_the_real_cost_in_place_of_the_estimate(caps_books):
    book = caps_books()
    held = reserve(book, images=1, usd=0.5)

    book.settle(held, usd=0.2, job_id="0b6c3f4e-8a51-4f0e-9a57-5d1f3c2b1a00")

    usage = book.usage("alice")
    assert (usage["usd_last_day"], usage["usd_reserved"]) == (0.2, 0.0)
    assert usage["images_last_hour"] == 1  # settling changes the dollars, not the images


def test_a_cost_that_is_not_finite_dollars_is_never_booked(caps_books):
    book = caps_books()
    held = reserve(book, images=1, usd=0.25)

    book.settle(held, usd=math.nan, job_id=None)

    assert book.usage(None)["usd_last_day"] == 0.25  # the estimate stays
    for bad in (math.inf, -0.5, math.nan):
        with pytest.raises(ValueError):
            reserve(book, usd=bad)
    assert book.usage(None)["images_last_hour"] == 1


def test_releasing_gives_the_room_back(caps_books):
    book = caps_books()
    cap = Limits(images_per_hour=2)
    held = reserve(book, images=2, token_caps=cap)
    with pytest.raises(CapExceeded):
        reserve(book, token_caps=cap)

    book.release(held)

    assert book.usage("alice")["images_last_hour"] == 0
    reserve(book, images=2, token_caps=cap)


def test_a_request_over_a_cap_says_which_cap_and_when_room_comes_back(caps_books, clock):
    book = caps_books()
    cap = Limits(images_per_hour=3)
    reserve(book, images=2, token_caps=cap)
    clock.advance(100)
    reserve(book, images=1, token_caps=cap)
    clock.advance(100)

    with pytest.raises(CapExceeded) as one:
        reserve(book, images=1, token_caps=cap)
    with pytest.raises(CapExceeded) as three:
        reserve(book, images=3, token_caps=cap)

    refused = one.value
    assert (refused.scope, refused.cap, refused.limit, refused.used) == (
        "alice",
        "images_per_hour",
        3,
        3,
    )
    assert refused.retry_after == pytest.approx(3400)  # the first 2 images leave first
    assert three.value.retry_after == pytest.approx(3500)  # all three must leave
    assert book.usage("alice")["images_last_hour"] == 3  # refusals hold nothing


def test_a_request_larger_than_the_whole_cap_is_told_that_waiting_cannot_help(caps_books):
    book = caps_books()

    with pytest.raises(CapExceeded) as refused:
        reserve(book, images=5, token_caps=Limits(images_per_day=4))

    assert refused.value.cap == "images_per_day"
    assert refused.value.retry_after is None


def test_the_service_cap_counts_every_token(caps_books):
    book = caps_books()
    service = Limits(images_per_hour=3)
    reserve(book, "alice", images=2, global_caps=service)
    reserve(book, "bob", images=1, global_caps=service)

    with pytest.raises(CapExceeded) as refused:
        reserve(book, "carol", global_caps=service)

    assert (refused.value.scope, refused.value.used) == (GLOBAL, 3)


def test_the_dollar_cap_counts_estimates_and_settled_costs(caps_books):
    book = caps_books()
    cap = Limits(usd_per_day=1.0)
    settled = reserve(book, usd=0.5, token_caps=cap)
    book.settle(settled, usd=0.7, job_id=None)
    reserve(book, usd=0.3, token_caps=cap)  # 0.7 + 0.3: exactly the cap

    with pytest.raises(CapExceeded) as refused:
        reserve(book, usd=0.01, token_caps=cap)

    assert refused.value.cap == "usd_per_day"
    assert refused.value.used == pytest.approx(1.0)


def test_windows_slide_on_the_books_clock(caps_books, clock):
    book = caps_books()
    cap = Limits(images_per_hour=2, images_per_day=3)
    reserve(book, images=2, token_caps=cap)

    clock.advance(3601)
    reserve(book, images=1, token_caps=cap)  # the hour has room again, the day has 1

    assert book.usage("alice")["images_last_hour"] == 1
    assert book.usage("alice")["images_last_day"] == 3
    with pytest.raises(CapExceeded) as refused:
        reserve(book, images=1, token_caps=cap)
    assert refused.value.cap == "images_per_day"
    clock.advance(86401)
    assert book.usage("alice")["images_last_day"] == 0
    assert book.tokens_seen() == []


@pytest.mark.parametrize("scope", ["token", "service"])
def test_concurrent_reservations_admit_exactly_the_cap(caps_books, scope):
    """30 at once against room for 10, from six handles (as six processes would): the
    token's cap for one token, or the service's for three."""
    cap = Limits(images_per_hour=10)
    caps = {"token_caps": cap} if scope == "token" else {"global_caps": cap}
    handles = [caps_books() for _ in range(6)]

    def attempt(n: int) -> Reservation:
        token = "alice" if scope == "token" else ("alice", "bob", "carol")[n % 3]
        return reserve(handles[n % 6], token, **caps)

    results = race(30, attempt)

    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, CapExceeded)]
    assert len(admitted) + len(refused) == 30, results  # nothing else went wrong
    assert len(admitted) == 10
    assert len({r.id for r in admitted}) == 10
    assert caps_books().usage(None)["images_last_hour"] == 10
