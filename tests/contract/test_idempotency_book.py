"""The contract of an IdempotencyBook: a key is claimed once, however many race for it;
its answer is replayed; a dead request's claim lapses. Runs against every implementation
(conftest.KEYS)."""

from __future__ import annotations

from imagegen.books.interfaces import Claim
from tests.support.books import race

LEASE, TTL = 60.0, 86400.0
ANSWER = {"status": 202, "headers": {"Location": "/jobs/x"}, "body": b'{"job_id": "x"}\n'}


def claim(book, key="key-1", fingerprint="request-a", token="alice") -> Claim:
    return book.claim(token, key, fingerprint, lease=LEASE, ttl=TTL)


def test_a_new_key_is_claimed_and_then_running_for_everyone_else(key_books):
    first, other = key_books(), key_books()

    claimed = claim(first)

    assert claimed.state == "new" and claimed.claim
    assert claim(other).state == "running"
    assert claim(first).state == "running"  # the same handle is no exception


def test_a_completed_key_replays_its_answer(key_books):
    book = key_books()
    claimed = claim(book)

    book.complete("alice", "key-1", claimed.claim, **ANSWER)

    replay = claim(key_books())
    assert replay.state == "replay"
    assert (replay.status, replay.headers, replay.body) == (
        ANSWER["status"],
        ANSWER["headers"],
        ANSWER["body"],
    )


def test_the_same_key_with_another_request_is_a_mismatch(key_books):
    book = key_books()
    claimed = claim(book)
    assert claim(book, fingerprint="request-b").state == "mismatch"  # while it runs

    book.complete("alice", "key-1", claimed.claim, **ANSWER)

    assert claim(book, fingerprint="request-b").state == "mismatch"  # and once done


def test_an_abandoned_key_is_free_again(key_books):
    book = key_books()
    claimed = claim(book)

    book.abandon("alice", "key-1", claimed.claim)

    again = claim(key_books())
    assert again.state == "new" and again.claim != claimed.claim


def test_keys_belong_to_their_token(key_books):
    book = key_books()
    claim(book, token="alice")

    assert claim(book, token="bob", fingerprint="request-b").state == "new"


def test_a_claim_whose_lease_ran_out_is_taken_over_and_loses_its_say(key_books, clock):
    book = key_books()
    stale = claim(book)
    clock.advance(LEASE + 1)

    taken = claim(key_books())

    assert taken.state == "new" and taken.claim != stale.claim
    book.complete("alice", "key-1", stale.claim, **ANSWER)  # the dead request's: ignored
    book.abandon("alice", "key-1", stale.claim)
    assert claim(book).state == "running"
    book.complete("alice", "key-1", taken.claim, **{**ANSWER, "status": 201})
    assert claim(book).status == 201


def test_keys_are_forgotten_after_their_ttl(key_books, clock):
    book = key_books()
    book.complete("alice", "key-1", claim(book).claim, **ANSWER)
    clock.advance(TTL - 10)
    assert claim(book).state == "replay"

    clock.advance(20)

    assert claim(book, fingerprint="request-b").state == "new"


def test_racing_claims_of_one_key_make_one_new_claim(key_books):
    handles = [key_books() for _ in range(6)]  # as six processes would

    results = race(24, lambda n: claim(handles[n % 6]))

    states = sorted(r.state if isinstance(r, Claim) else repr(r) for r in results)
    assert states == ["new"] + ["running"] * 23


def test_racing_claims_of_a_completed_key_all_replay(key_books):
    book = key_books()
    book.complete("alice", "key-1", claim(book).claim, **ANSWER)
    handles = [key_books() for _ in range(4)]

    results = race(12, lambda n: claim(handles[n % 4]))

    assert [r.state if isinstance(r, Claim) else repr(r) for r in results] == ["replay"] * 12
