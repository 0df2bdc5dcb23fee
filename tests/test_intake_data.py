"""DATA framing: :class:`bridge.intake.data.DataAssembler` keeps aiosmtpd 1.4.6's ``smtp_DATA``.

aiosmtpd reads DATA a line at a time with ``StreamReader.readuntil(b"\\r\\n")`` (stream limit
``line_length_limit`` = 1001) and decides, line by line:

- a line that is exactly ``.\\r\\n`` (and not the tail of a longer line) ends DATA;
- a line whose text (before CRLF) is longer than the stream limit raises
  ``LimitOverrunError`` at once: TOO_LONG, before its bytes are counted;
- otherwise the line's bytes (CRLF included, before unstuffing) are added to the count and
  ``count > data_size_limit`` means TOO_MUCH; then a line longer than ``line_length_limit``
  with its CRLF is TOO_LONG;
- the first of these problems wins; a line starting with ``.`` loses that dot;
- what follows ``.\\r\\n`` stays in the reader for the command loop.

:func:`reference` is that loop over a byte string (and is itself checked against a stock
aiosmtpd ``SMTP`` over a socket, :func:`test_the_reference_is_what_stock_aiosmtpd_does`). The
tests compare DataAssembler with it on hand-picked streams, fed in every chunking, and on random
streams (hypothesis); then the real intake is driven over SMTP.

When one message both holds a too-long line and goes over the size limit, aiosmtpd answers for
whichever comes first in the stream; so must DataAssembler, however the bytes were chunked
(:func:`test_the_first_problem_in_the_stream_wins`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import given, settings
from hypothesis import strategies as st
from test_intake_message import make_mail, make_pdf
from test_intake_smtp import Answer, Intake, IntakeFactory, Raw, send

from bridge import replies
from bridge.intake.data import END, LINE_LIMIT, DataAssembler, DataProblem

TOO_BIG = DataProblem.TOO_BIG
TOO_LONG = DataProblem.LINE_TOO_LONG


# --- the reference: aiosmtpd's smtp_DATA loop over a byte string -------------------------------

@dataclass(frozen=True)
class Outcome:
    message: bytes
    problem: DataProblem | None
    leftover: bytes


@dataclass(frozen=True)
class Reference:
    outcome: Outcome | None  # None: the stream never ends DATA
    crossed: frozenset[DataProblem]  # every limit the lines before the end cross, in any order
    counted: int  # the bytes of all lines before the end line (or of all whole lines so far)


def reference(stream: bytes, size_limit: int | None, line_limit: int = LINE_LIMIT) -> Reference:
    """aiosmtpd 1.4.6 ``SMTP.smtp_DATA`` with ``StreamReader(limit=line_limit)``.

    ``readuntil(b"\\r\\n")`` returns the bytes up to the first CRLF; when that CRLF starts
    beyond the limit it raises LimitOverrunError and aiosmtpd drains the line in fragments,
    but a fragment never ends between CR and LF (the reader keeps the last byte back), and a
    fragment that looks like ``.\\r\\n`` does not end DATA (``line_fragments`` is not empty).
    So the lines are exactly the CRLF-terminated pieces of the stream, and the only thing the
    fragments change is *when* TOO_LONG is set: before the line is counted.
    """
    pos = 0
    counted = 0
    state: DataProblem | None = None
    kept: list[bytes] = []
    crossed: set[DataProblem] = set()
    while True:
        crlf = stream.find(b"\r\n", pos)
        if crlf < 0:
            return Reference(None, frozenset(crossed), counted)
        line = stream[pos:crlf + 2]
        pos = crlf + 2
        if line == b".\r\n":
            break
        if len(line) - 2 > line_limit:  # LimitOverrunError: set before the bytes are counted
            crossed.add(TOO_LONG)
            if state is None:
                state = TOO_LONG
        counted += len(line)
        if size_limit and counted > size_limit:
            crossed.add(TOO_BIG)
            if state is None:
                state = TOO_BIG
        if len(line) > line_limit:
            crossed.add(TOO_LONG)
            if state is None:
                state = TOO_LONG
        if state is None:
            kept.append(line)
    message = b"" if state else b"".join(x[1:] if x.startswith(b".") else x for x in kept)
    return Reference(Outcome(message, state, stream[pos:]), frozenset(crossed), counted)


# --- feeding DataAssembler -----------------------------------------------------------------------

def chunks(stream: bytes, sizes: Iterable[int] | int | None) -> Iterator[bytes]:
    """``stream`` cut into pieces of the given sizes (cycled); None: all at once."""
    if sizes is None:
        yield stream
        return
    cycle = itertools.cycle([sizes] if isinstance(sizes, int) else list(sizes))
    pos = 0
    while pos < len(stream):
        n = next(cycle)
        yield stream[pos:pos + n]
        pos += n


def assemble(pieces: Iterable[bytes], size_limit: int | None,
             line_limit: int = LINE_LIMIT) -> Outcome | None:
    """Feeds the pieces in order; None if DATA never ended. The leftover is what the assembler
    handed back plus the pieces it was never fed (the session would read those as commands)."""
    assembler = DataAssembler(size_limit, line_limit)
    rest = list(pieces)
    while rest:
        if assembler.feed(rest.pop(0)):
            assert assembler.done
            return Outcome(bytes(assembler.message), assembler.problem,
                           assembler.leftover + b"".join(rest))
        assert not assembler.done
    return None


CHUNKINGS: list[int | None] = [1, 2, 3, 7, 64, None]


def outcomes(stream: bytes, size_limit: int | None, line_limit: int = LINE_LIMIT,
             chunkings: Iterable[int | None] = CHUNKINGS) -> dict[int | None, Outcome | None]:
    return {n: assemble(chunks(stream, n), size_limit, line_limit) for n in chunkings}


def stuffed(message: bytes) -> bytes:
    """``message`` as a client sends it in DATA (RFC 5321 4.5.2), without the end line."""
    return (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")


# --- pure unit tests ----------------------------------------------------------------------------

def test_the_end_marker_is_crlf_dot_crlf() -> None:
    assert END == b"\r\n.\r\n"
    assert LINE_LIMIT == SMTP.line_length_limit == 1001


@pytest.mark.parametrize("n", CHUNKINGS)
def test_empty_message(n: int | None) -> None:
    assert assemble(chunks(b".\r\n", n), 1000) == Outcome(b"", None, b"")


@pytest.mark.parametrize("n", CHUNKINGS)
def test_simple_message(n: int | None) -> None:
    mail = b"From: alice@example.com\r\nSubject: hi\r\n\r\nHello\r\n\r\nAlice\r\n"
    assert assemble(chunks(mail + b".\r\n", n), 1000) == Outcome(mail, None, b"")


def test_feed_says_when_data_ends() -> None:
    a = DataAssembler(None)
    assert a.feed(b"Subject: x\r\n\r\nbody") is False
    assert (a.done, a.problem, a.message) == (False, None, b"")
    assert a.feed(b"\r\n.") is False
    assert a.feed(b"\r") is False
    assert a.feed(b"\n") is True
    assert (a.done, a.problem, a.message, a.leftover) == (True, None, b"Subject: x\r\n\r\nbody\r\n", b"")


@pytest.mark.parametrize("n", CHUNKINGS)
def test_dot_unstuffing(n: int | None) -> None:
    sent = (b".first line had a dot\r\n..\r\n...\r\n..two\r\n.x.\r\nmid.dle\r\n . \r\n"
            b"\r\n.\r\n")
    expected = b"first line had a dot\r\n.\r\n..\r\n.two\r\nx.\r\nmid.dle\r\n . \r\n\r\n"
    assert assemble(chunks(sent, n), None) == Outcome(expected, None, b"")


def test_stuffed_helper_round_trips() -> None:
    mail = b".a\r\n.\r\n..\r\nb.\r\n"
    sent = stuffed(mail)
    assert sent == b"..a\r\n..\r\n...\r\nb.\r\n"
    assert assemble([sent + b".\r\n"], None) == Outcome(mail, None, b"")


def test_end_marker_split_across_every_chunk_boundary() -> None:
    stream = b"Subject: x\r\n\r\n..\r\n..\r\nbody\r\n..dots\r\n.\r\nNOOP\r\n"
    expected = Outcome(b"Subject: x\r\n\r\n.\r\n.\r\nbody\r\n.dots\r\n", None, b"NOOP\r\n")
    for n, got in outcomes(stream, 1000).items():
        assert got == expected, n
    for i in range(len(stream) + 1):
        assert assemble([stream[:i], stream[i:]], 1000) == expected, i
        for j in range(i, len(stream) + 1):
            assert assemble([stream[:i], stream[i:j], stream[j:]], 1000) == expected, (i, j)


def test_the_first_dot_line_ends_data() -> None:
    stream = b"Subject: x\r\n\r\n.\r\n..\r\nbody\r\n..dots\r\n.\r\nNOOP\r\n"
    for n, got in outcomes(stream, 1000).items():
        assert got == Outcome(b"Subject: x\r\n\r\n", None, b"..\r\nbody\r\n..dots\r\n.\r\nNOOP\r\n"), n


def test_feed_returns_true_exactly_on_the_chunk_that_completes_the_end() -> None:
    stream = b"a\r\n..\r\nb\r\n.\r\nQUIT\r\n"
    completes = stream.index(END) + len(END)  # offset just past the end marker
    for n in (1, 2, 3, 4, 5, 6):
        a = DataAssembler(None)
        pos = 0
        for chunk in chunks(stream, n):
            pos += len(chunk)
            ended = a.feed(chunk)
            assert ended is (pos >= completes), (n, pos)
            if ended:
                assert a.leftover == stream[completes:pos]
                break


FAKE_ENDS = {  # bare LF / CR / other near-misses, and the message aiosmtpd makes of them
    "LF.LF": (b"\n.\n", b"a\n.\nb\r\n"),
    "CRLF.LF": (b"\r\n.\n", b"a\r\n\nb\r\n"),  # the line ".\nb" loses its dot, as in aiosmtpd
    "LF.CRLF": (b"\n.\r\n", b"a\n.\r\nb\r\n"),
    "CR.CRLF": (b"\r.\r\n", b"a\r.\r\nb\r\n"),
    "CRLF.CR": (b"\r\n.\r", b"a\r\n\rb\r\n"),
    "CR.CR": (b"\r.\r", b"a\r.\rb\r\n"),
    "CRLF.SP.CRLF": (b"\r\n. \r\n", b"a\r\n \r\nb\r\n"),
    "CRLF.NUL.CRLF": (b"\r\n.\x00\r\n", b"a\r\n\x00\r\nb\r\n"),
}


@pytest.mark.parametrize("name", FAKE_ENDS)
def test_a_bare_line_ending_never_ends_data(name: str) -> None:
    fake, expected = FAKE_ENDS[name]
    smuggle = b"a" + fake + b"b"
    for n in CHUNKINGS:
        a = DataAssembler(None)
        assert not any(a.feed(c) for c in chunks(smuggle, n)), (name, n)
        assert not a.done
        assert a.feed(b"\r\n.\r\n") is True
        assert (a.message, a.problem, a.leftover) == (expected, None, b""), (name, n)
    assert reference(smuggle + b"\r\n.\r\n", None).outcome == Outcome(expected, None, b"")


@pytest.mark.parametrize("start", [b".\n", b".\r", b". ", b".\n.\n"])
def test_a_fake_end_as_the_very_first_line(start: bytes) -> None:
    stream = start + b"x\r\n.\r\n"
    expected = reference(stream, None).outcome
    assert expected is not None and expected.message == start[1:] + b"x\r\n"
    for n, got in outcomes(stream, None).items():
        assert got == expected, n


# The size: every line before the "." line, CRLF included, counted as sent (before unstuffing).
SIZED = b"..dot\r\n" + b"y" * 91 + b"\r\n"  # 7 + 93 = 100 bytes as sent, 99 after unstuffing


def test_sized_is_100_bytes_as_sent() -> None:
    assert (len(SIZED), len(SIZED.replace(b"\r\n.", b"\r\n").removeprefix(b"."))) == (100, 99)


@pytest.mark.parametrize("n", [*CHUNKINGS, 99, 100, 101, 102])
def test_a_message_exactly_at_the_size_limit_is_accepted(n: int | None) -> None:
    # The ".\r\n" end line takes it to 103 bytes: not counted.
    got = assemble(chunks(SIZED + b".\r\nNOOP\r\n", n), 100)
    assert got == Outcome(b".dot\r\n" + b"y" * 91 + b"\r\n", None, b"NOOP\r\n")


@pytest.mark.parametrize("n", [*CHUNKINGS, 99, 100, 101, 102])
def test_one_byte_over_the_size_limit_is_too_big(n: int | None) -> None:
    # 99 bytes unstuffed would fit; aiosmtpd counts the 100 sent.
    got = assemble(chunks(SIZED + b".\r\nNOOP\r\n", n), 99)
    assert got == Outcome(b"", TOO_BIG, b"NOOP\r\n")


@pytest.mark.parametrize("limit", [None, 0])
def test_no_size_limit(limit: int | None) -> None:
    big = b"z" * 998 + b"\r\n"
    assert assemble(chunks(big * 3000 + b".\r\n", 65536), limit) == Outcome(big * 3000, None, b"")


def long_line(text_length: int) -> bytes:
    return b"L" * (text_length - 1) + b"!\r\n"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize(("text_length", "problem"), [(998, None), (999, None), (1000, TOO_LONG),
                                                      (1001, TOO_LONG), (1002, TOO_LONG),
                                                      (5000, TOO_LONG)])
def test_line_length_limit(where: str, text_length: int, problem: DataProblem | None) -> None:
    """999 characters + CRLF is the longest line (aiosmtpd: ``len(line) > 1001`` is too long),
    also when the line arrives in pieces and when it is the last line before the end marker."""
    line = long_line(text_length)
    body = {"first": line + b"b\r\n", "middle": b"a\r\n" + line + b"b\r\n", "last": b"a\r\n" + line}[where]
    expected = Outcome(b"" if problem else body, problem, b"MAIL FROM:<x@y>\r\n")
    stream = body + b".\r\nMAIL FROM:<x@y>\r\n"
    assert reference(stream, None).outcome == expected
    for n, got in outcomes(stream, None, chunkings=[*CHUNKINGS, 998, 999, 1000, 1001, 1002, 1003]).items():
        assert got == expected, n


def test_a_too_long_line_ending_in_a_dot_does_not_end_data() -> None:
    """aiosmtpd drains a too-long line in fragments; its tail ``.\\r\\n`` is not the end line."""
    stream = b"L" * 1500 + b".\r\nstill data\r\n.\r\nNOOP\r\n"
    expected = Outcome(b"", TOO_LONG, b"NOOP\r\n")
    assert reference(stream, None).outcome == expected
    for n, got in outcomes(stream, None, chunkings=[*CHUNKINGS, 1003, 1500, 1501]).items():
        assert got == expected, n


def test_leftover_is_what_follows_the_end() -> None:
    a = DataAssembler(None)
    assert a.feed(b"hi\r\n.") is False
    assert a.feed(b"\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDA") is True
    assert (a.message, a.leftover) == (b"hi\r\n", b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDA")
    # The end in one chunk, with nothing after it.
    a = DataAssembler(None)
    assert a.feed(b"hi\r\n.\r\n") is True
    assert a.leftover == b""


@pytest.mark.parametrize(("stream", "problem"), [
    (b"x" * 200 + b"\r\n.\r\nQUIT\r\n", TOO_BIG),
    (b"x" * 1200 + b"\r\n.\r\nQUIT\r\n", TOO_LONG),
])
def test_leftover_is_kept_after_a_problem(stream: bytes, problem: DataProblem) -> None:
    size_limit = 100 if problem is TOO_BIG else None
    for n, got in outcomes(stream, size_limit).items():
        assert got == Outcome(b"", problem, b"QUIT\r\n"), n


@pytest.mark.parametrize("stream", [b".\r\n", b"x" * 200 + b"\r\n.\r\n", b"x" * 1200 + b"\r\n.\r\n"])
@pytest.mark.parametrize("more", [b"", b"x", b".\r\n"])
def test_feed_after_the_end_raises(stream: bytes, more: bytes) -> None:
    a = DataAssembler(100)
    assert a.feed(stream) is True
    before = (a.done, a.message, a.problem, a.leftover)
    with pytest.raises(RuntimeError):
        a.feed(more)
    assert (a.done, a.message, a.problem, a.leftover) == before


MB = 1 << 20


@pytest.mark.parametrize("kind", ["too big", "line too long"])
def test_after_a_problem_the_buffer_does_not_grow(kind: str) -> None:
    """Several MB of a refused message, in 64 KB reads: once the problem is known, only what the
    end marker could start with is kept."""
    if kind == "too big":
        size_limit: int | None = MB
        data = (b"w" * 998 + b"\r\n") * (6 * MB // 1000)  # 6 MB of good lines, too many
        problem = TOO_BIG
    else:
        size_limit = None
        data = b"w" * (6 * MB)  # one line of 6 MB
        problem = TOO_LONG
    a = DataAssembler(size_limit)
    fed = 0
    found_at = 0
    sizes_after_problem: list[int] = []
    for chunk in chunks(data, 65536):
        assert a.feed(chunk) is False
        fed += len(chunk)
        if a.problem is not None:
            found_at = found_at or fed
            sizes_after_problem.append(len(a._buf))
    assert a.problem is problem
    # Found in the read that crossed the limit, not at the end.
    assert found_at == (MB + 65536 if kind == "too big" else 65536)
    assert len(sizes_after_problem) > 60  # ~5 MB were fed after the problem was known...
    assert max(sizes_after_problem) <= 64  # ...and not kept
    assert a.feed(b"\r\n.\r\nNOOP\r\n") is True
    assert (a.problem, a.message, a.leftover) == (problem, b"", b"NOOP\r\n")


# --- differential: DataAssembler vs the reference, on random streams -------------------------------

# A line is made of a few pieces (a "\r\n" among them splits it), then CRLF; a line of just "."
# ends DATA early, now and then.
PIECES = [b".", b"..", b"\r", b"\n", b"\r\n", b"x", b"a" * 7, b"a" * 18, b"a" * 30]
LINES = st.lists(st.sampled_from(PIECES), max_size=6).map(lambda p: b"".join(p) + b"\r\n")
TAILS = st.sampled_from([b"", b"NOOP\r\n", b"\r\n.\r\n", b"MAIL FROM:<a@b.c>\r\n.\r\n"]) | \
    st.lists(st.sampled_from([*PIECES, b".\r\n"]), max_size=8).map(b"".join)


@given(body=st.lists(LINES, max_size=15).map(b"".join),
       # No end (DATA goes on), the end line, an empty line and the end line, a bare-LF "end".
       end=st.sampled_from([b"", b".\r\n", b".\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b".\n"]),
       tail=TAILS,
       sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6)
       | st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=3),
       data=st.data())
@settings(max_examples=400, deadline=None)
def test_data_assembler_matches_aiosmtpd(body: bytes, end: bytes, tail: bytes, sizes: list[int],
                                         data: st.DataObject) -> None:
    stream = body + end + tail
    # Limits picked at random, or right at the length of the longest line before the end (or of
    # any line) / of the message, to hit the off-by-ones: a line of text length n is too long
    # for a limit below n + 2, and overruns the stream reader's limit (TOO_LONG before it is
    # counted) below n. Or no limit in effect, so that more messages get through whole.
    ended = reference(stream, None, 1 << 20)
    before_end = stream[:len(stream) - len(ended.outcome.leftover)] if ended.outcome else stream
    lengths = [len(line) for line in before_end.split(b"\r\n")]

    def near(n: int) -> st.SearchStrategy[int]:  # n - 1 ... n + 2
        return st.sampled_from([max(3, n + d) for d in (-1, 0, 1, 2)])

    line_limit = data.draw(st.integers(min_value=4, max_value=40) | near(max(lengths))
                           | near(max(lengths)) | st.sampled_from(lengths).flatmap(near)
                           | st.just(LINE_LIMIT), label="line_limit")
    counted = ended.counted
    size_limit = data.draw(st.none() | st.integers(min_value=50, max_value=300)
                           | st.sampled_from([max(1, counted - 1), max(1, counted)])
                           | st.just(max(1, counted - 1)), label="size_limit")
    want = reference(stream, size_limit, line_limit)
    got = assemble(chunks(stream, sizes), size_limit, line_limit)
    if want.outcome is None:
        assert got is None
        return
    assert got is not None
    assert (got.message, got.leftover) == (want.outcome.message, want.outcome.leftover)
    assert got.problem == want.outcome.problem


# Streams where the order of the two limits matters (size limit 60, line limit 20), and what
# aiosmtpd answers (checked against it in test_the_reference_is_what_stock_aiosmtpd_does).
S18 = b"s" * 18 + b"\r\n"  # a 20-byte line
PRIORITY_CASES = {
    # A line too long for the stream reader comes first, the size is crossed later: TOO_LONG.
    "overrun line, then too big": (b"L" * 30 + b"\r\n" + S18 * 2 + b".\r\n", TOO_LONG),
    # The too-long line (overrun) is itself what takes the count over: TOO_LONG.
    "overrun line over the size": (S18 * 2 + b"L" * 40 + b"\r\n.\r\n", TOO_LONG),
    # A 21-byte line is read whole, counted (61 > 60), then found too long: TOO_BIG.
    "long line counted first": (S18 * 2 + b"L" * 19 + b"\r\n.\r\n", TOO_BIG),
    # Too big first, a too-long line after it: TOO_BIG.
    "too big, then long line": (S18 * 4 + b"L" * 30 + b"\r\n.\r\n", TOO_BIG),
}


def test_the_priority_cases_are_what_the_reference_says() -> None:
    for name, (stream, problem) in PRIORITY_CASES.items():
        want = reference(stream, 60, 20)
        assert want.crossed == {TOO_BIG, TOO_LONG}, name
        assert want.outcome == Outcome(b"", problem, b""), name


@pytest.mark.parametrize("name", list(PRIORITY_CASES))
def test_the_first_problem_in_the_stream_wins(name: str) -> None:
    stream, problem = PRIORITY_CASES[name]
    got = outcomes(stream, 60, 20, chunkings=[*CHUNKINGS, 19, 20, 21, 22, 23, 40, 41, 42])
    assert {n: o.problem if o else None for n, o in got.items()} == dict.fromkeys(got, problem)


def test_a_long_line_in_a_big_mail_is_too_long_however_it_is_read() -> None:
    """A 2000-byte line in a mail over a 1500-byte limit: aiosmtpd always says "line too long",
    also when the line arrives in one read (~ a local MTA's write)."""
    stream = b"a" * 2000 + b"\r\n.\r\n"
    assert reference(stream, 1500).outcome == Outcome(b"", TOO_LONG, b"")
    assert outcomes(stream, 1500) == dict.fromkeys(CHUNKINGS, Outcome(b"", TOO_LONG, b""))


# --- the reference against stock aiosmtpd, over a socket ------------------------------------------

class _Capture:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.messages.append(envelope.original_content)
        return "250 OK"


class _SmallLimits(SMTP):
    line_length_limit = 20  # also the StreamReader's limit (set in SMTP.__init__)


REFERENCE_CASES: dict[str, bytes] = {
    "simple": b"hello\r\n..dot\r\n.\r\n",
    "empty": b".\r\n",
    "18+CRLF": b"s" * 18 + b"\r\n.\r\n",
    "19+CRLF": b"s" * 19 + b"\r\n.\r\n",
    "20+CRLF": b"s" * 20 + b"\r\n.\r\n",
    "30+CRLF, dot tail": b"s" * 29 + b".\r\n.\r\n",
    "exactly 60": S18 * 2 + b".u" + b"u" * 16 + b"\r\n.\r\n",  # 59 bytes after unstuffing
    "61": S18 * 2 + b"u" * 16 + b"\r\nv\r\n.\r\n",
    "bare LF": b"a\n.\nb\r\n.\n\r\n.\r\n",
    **{name: stream for name, (stream, _) in PRIORITY_CASES.items()},
}


@pytest.mark.parametrize("write", [None, 4])
async def test_the_reference_is_what_stock_aiosmtpd_does(write: int | None) -> None:
    """aiosmtpd's own smtp_DATA (size limit 60, line limit 20), each stream followed by NOOP in
    the same write, or in 4-byte writes: its answers are the reference's, however it is read."""
    capture = _Capture()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _SmallLimits(capture, hostname="stock.test", data_size_limit=60, loop=loop),
        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for name, stream in REFERENCE_CASES.items():
            want = reference(stream + b"NOOP\r\n", 60, 20).outcome
            assert want is not None and want.leftover == b"NOOP\r\n", name
            raw = await Raw.connect(port)
            try:
                assert (await raw.reply()).code == 220
                for command in (b"EHLO x", b"MAIL FROM:<a@b.c>", b"RCPT TO:<r@b.c>"):
                    assert (await raw.command(command)).code == 250, command
                assert (await raw.command(b"DATA")).code == 354
                for piece in chunks(stream + b"NOOP\r\n", write):
                    raw.writer.write(piece)
                    await raw.writer.drain()
                    if write:
                        await asyncio.sleep(0.001)
                answer = await raw.reply()
                assert (await raw.reply()).code == 250, name  # the NOOP: the leftover was read
            finally:
                raw.close()
            if want.problem is None:
                assert answer.code == 250, name
                assert capture.messages.pop() == want.message, name
            else:
                code = {TOO_BIG: 552, TOO_LONG: 500}[want.problem]
                assert answer.code == code, (name, answer)
            assert capture.messages == [], name
    finally:
        server.close()
        await server.wait_closed()


# --- the real intake, over SMTP ----------------------------------------------------------------

def capture_data(intake: Intake, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The message bytes each DATA hands the handler (sessions opened after this call)."""
    got: list[bytes] = []
    handler = intake.server.handler
    original = handler.handle_DATA

    async def spy(server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes | bytearray)  # the buffer itself
        got.append(bytes(envelope.original_content))
        return await original(server, session, envelope)

    monkeypatch.setattr(handler, "handle_DATA", spy)
    return got


def capture_reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk the server feeds to a DataAssembler."""
    reads: list[bytes] = []
    original = DataAssembler.feed

    def spy(self: DataAssembler, chunk: bytes) -> bool:
        reads.append(bytes(chunk))
        return original(self, chunk)

    monkeypatch.setattr(DataAssembler, "feed", spy)
    return reads


async def write_slowly(raw: Raw, data: bytes, sizes: Iterable[int]) -> None:
    for piece in chunks(data, sizes):
        raw.writer.write(piece)
        await raw.writer.drain()
        await asyncio.sleep(0.001)


def stored(intake: Intake) -> list[tuple[Any, ...]]:
    """What the store holds of the mails, without ids and times (cover pages: their page count)."""
    rows: list[tuple[Any, ...]] = []
    for job in intake.jobs():
        docs = [(d.seq, d.filename, d.content_type, d.pages, d.is_cover,
                 None if d.is_cover else d.data) for d in intake.documents(job.mail_id)]
        rows.append((job.kind, job.to_number, job.state, job.pages, job.mail_from, job.header_from,
                     job.message_id, job.subject, tuple(docs)))
    return rows


async def still_serving(intake: Intake, message_id: str = "<after@example.com>") -> None:
    assert (await send(intake.port, make_mail(message_id=message_id)))["DATA"].is_(replies.QUEUED)


async def test_data_in_tiny_writes_is_stored_as_when_sent_at_once(
        start_intake: IntakeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = make_pdf(1)
    # Body lines ".", "..", ".hidden": smtplib stuffs them, and so do we below.
    mail = make_mail(body=".hidden\n..two\n.\nend", attachments=[(pdf, "application/pdf", "a.pdf")])
    assert b"\r\n.\r\n" in mail and b"\r\n..two" in mail
    normal, tiny = await start_intake(), await start_intake()
    got_normal, got_tiny = capture_data(normal, monkeypatch), capture_data(tiny, monkeypatch)
    reads = capture_reads(monkeypatch)

    assert (await send(normal.port, mail))["DATA"].is_(replies.QUEUED)
    reads.clear()
    raw = await Raw.connect(tiny.port)
    try:
        await raw.envelope()
        data = stuffed(mail) + b".\r\n"
        # Writes of 1 to 13 bytes; the last five bytes (the end marker) one at a time.
        await write_slowly(raw, data[:-5], [1, 2, 3, 5, 1, 7, 11, 13, 2])
        await write_slowly(raw, data[-5:], [1])
        assert (await raw.reply()).is_(replies.QUEUED)
        assert (await raw.command(b"NOOP")).code == 250
    finally:
        raw.close()

    assert len(reads) > 100  # the server really got it in pieces
    assert reads[-1] == b"\n" and b"".join(reads) == data
    assert got_normal == got_tiny == [mail]
    assert stored(normal) == stored(tiny)
    [(*_, docs)] = stored(tiny)
    assert [(d[1], d[5]) for d in docs if not d[4]] == [("a.pdf", pdf)]


async def test_a_command_pipelined_after_the_end_is_answered(
        intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = capture_reads(monkeypatch)
    got = capture_data(intake, monkeypatch)
    mail = make_mail(message_id="<p1@example.com>")
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(stuffed(mail) + b".\r\nNOOP\r\n")
        await raw.writer.drain()
        assert (await raw.reply()).is_(replies.QUEUED)
        assert (await raw.reply()).code == 250  # the NOOP
        assert any(b"\r\n.\r\nNOOP\r\n" in r for r in reads)  # it came in the same read
        assert (await raw.command(b"NOOP")).code == 250  # in step: no reply was left over
    finally:
        raw.close()
    assert got == [mail]
    assert len(intake.jobs()) == 1


async def test_a_pipelined_next_transaction_and_quit_are_answered(
        intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 2920: MAIL, RCPT and DATA right after the end marker, then the next message and QUIT
    right after its end marker."""
    reads = capture_reads(monkeypatch)
    first = make_mail(message_id="<p1@example.com>", subject="first")
    second = make_mail(message_id="<p2@example.com>", subject="second", to="0398765432@fax.local")
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(stuffed(first) + b".\r\nMAIL FROM:<alice@example.com>\r\n"
                         b"RCPT TO:<0398765432@fax.local>\r\nDATA\r\n")
        await raw.writer.drain()
        answers = [await raw.reply() for _ in range(4)]
        assert answers[0].is_(replies.QUEUED)
        assert answers[1].is_(replies.SENDER_OK)
        assert answers[2].is_(replies.RECIPIENT_OK)
        assert answers[3].code == 354
        raw.writer.write(stuffed(second) + b".\r\nQUIT\r\n")
        await raw.writer.drain()
        assert (await raw.reply()).is_(replies.QUEUED)
        assert (await raw.reply()).code == 221
        assert await asyncio.wait_for(raw.reader.read(), 5) == b""
    finally:
        raw.close()
    assert any(r.endswith(b"\r\n.\r\nQUIT\r\n") for r in reads)
    assert [(j.to_number, j.subject) for j in intake.jobs()] == [("61298765432", "first"),
                                                                 ("61398765432", "second")]


async def test_a_whole_second_transaction_in_the_same_write(intake: Intake) -> None:
    """Not how a client should pipeline (it must wait for 354), but all CRLF-framed: aiosmtpd
    answers every command in turn, and so must we."""
    first = make_mail(message_id="<w1@example.com>", subject="first")
    second = make_mail(message_id="<w2@example.com>", subject="second")
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(stuffed(first) + b".\r\nMAIL FROM:<alice@example.com>\r\n"
                         b"RCPT TO:<0298765432@fax.local>\r\nDATA\r\n" + stuffed(second) +
                         b".\r\nQUIT\r\n")
        await raw.writer.drain()
        answers = [await raw.reply() for _ in range(6)]
    finally:
        raw.close()
    assert answers[0].is_(replies.QUEUED) and answers[4].is_(replies.QUEUED)
    assert [a.code for a in answers] == [250, 250, 250, 354, 250, 221]
    assert [j.subject for j in intake.jobs()] == ["first", "second"]


def sized_mail(size: int, message_id: str) -> bytes:
    """A plain mail of exactly ``size`` bytes (no line starts with a dot)."""
    head = (b"From: alice@example.com\r\nTo: 0298765432@fax.local\r\nSubject: size\r\n"
            b"Message-ID: " + message_id.encode() + b"\r\n\r\n")
    n, rest = divmod(size - len(head), 72)
    lines = [b"p" * 70 + b"\r\n"] * n
    lines[-1] = b"p" * (70 + rest) + b"\r\n"
    mail = head + b"".join(lines)
    assert len(mail) == size and b"\r\n." not in mail
    return mail


async def test_a_mail_exactly_at_max_message_bytes_is_accepted(start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=10_000)
    answers = await send(intake.port, sized_mail(10_000, "<exact@example.com>"))
    assert answers["DATA"].is_(replies.QUEUED)
    assert len(intake.jobs()) == 1


@pytest.mark.parametrize("pipelined", [False, True])
async def test_one_byte_over_max_message_bytes_is_too_big(start_intake: IntakeFactory,
                                                          pipelined: bool) -> None:
    intake = await start_intake(max_message_bytes=10_000)
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(sized_mail(10_001, "<over@example.com>") + b".\r\n" +
                         (b"NOOP\r\n" if pipelined else b""))
        await raw.writer.drain()
        reply = await raw.reply()
        assert reply.is_(replies.TOO_BIG) and "at most 10000 bytes" in reply.text
        if pipelined:
            assert (await raw.reply()).code == 250
        assert (await raw.command(b"NOOP")).code == 250  # the session goes on...
        assert (await raw.command(b"RSET")).code == 250
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).code == 250  # ...from scratch
    finally:
        raw.close()
    intake.assert_empty()
    await still_serving(intake)


async def test_a_several_mb_mail_over_the_limit_is_refused_and_the_session_goes_on(
        start_intake: IntakeFactory) -> None:
    intake = await start_intake(max_message_bytes=1_000_000)
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        raw.writer.write(b"Subject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 4000 + b".\r\n")
        await raw.writer.drain()
        assert (await raw.reply()).is_(replies.TOO_BIG)
        assert (await raw.command(b"NOOP")).code == 250
    finally:
        raw.close()
    intake.assert_empty()


LONG_LINE_CASES = {
    "header": b"From: alice@example.com\r\nSubject: " + b"y" * 991 + b"\r\n\r\nHi\r\n.\r\n",
    "last line": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\r\n" + b"z" * 1000 + b"\r\n.\r\n",
    "no line end for 50 KB": b"From: alice@example.com\r\nSubject: x\r\n\r\n" + b"z" * 50_000 + b"\r\n.\r\n",
}


@pytest.mark.parametrize(("case", "write"), [  # 7-byte writes of 50 KB would be slow
    (case, write) for case in LONG_LINE_CASES for write in (None, 7, 300)
    if not (write == 7 and len(LONG_LINE_CASES[case]) > 5000)])
async def test_a_data_line_too_long(intake: Intake, case: str, write: int | None) -> None:
    data = LONG_LINE_CASES[case]
    raw = await Raw.connect(intake.port)
    try:
        await raw.envelope()
        if write is None:
            raw.writer.write(data)
            await raw.writer.drain()
        else:
            await write_slowly(raw, data, [write])
        reply = await raw.reply()
        assert reply.is_(replies.LINE_TOO_LONG) and "at most 999 characters" in reply.text
        assert (await raw.command(b"NOOP")).code == 250
        # And a good mail right after it, on the same connection.
        assert (await raw.command(b"MAIL FROM:<alice@example.com>")).code == 250
        assert (await raw.command(b"RCPT TO:<0298765432@fax.local>")).code == 250
        assert (await raw.command(b"DATA")).code == 354
        assert (await raw.command(make_mail(message_id="<next@example.com>") + b".")).is_(replies.QUEUED)
    finally:
        raw.close()
    assert [j.message_id for j in intake.jobs()] == ["<next@example.com>"]


async def test_a_line_of_999_characters_is_accepted(intake: Intake) -> None:
    mail = (b"From: alice@example.com\r\nSubject: x\r\nX-Long: " + b"v" * (999 - 8) + b"\r\n\r\n"
            b"Hi\r\n" + b"w" * 999 + b"\r\n")
    assert max(len(x) for x in mail.split(b"\r\n")) == 999
    assert (await send(intake.port, mail))["DATA"].is_(replies.QUEUED)


HANG_UPS = {
    "in the headers": b"From: alice@example.com\r\nSubj",
    "before the end line": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\r\n",
    "in the end marker": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\r\n.\r",
    "after a bare-LF end": b"From: alice@example.com\r\nSubject: x\r\n\r\nHi\n.\n",
    "too big already": b"Subject: x\r\n\r\n" + b"q" * 20_000,
}


@pytest.mark.parametrize("case", HANG_UPS)
async def test_a_client_that_hangs_up_in_data_leaves_nothing(start_intake: IntakeFactory,
                                                              case: str) -> None:
    intake = await start_intake(max_message_bytes=10_000)
    raw = await Raw.connect(intake.port)
    await raw.envelope()
    raw.writer.write(HANG_UPS[case])
    await raw.writer.drain()
    await asyncio.sleep(0.05)  # let the server read it
    raw.close()
    for _ in range(200):
        if intake.server.live_sessions == 0:
            break
        await asyncio.sleep(0.01)
    assert intake.server.live_sessions == 0
    intake.assert_empty()
    await still_serving(intake)
    assert len(intake.jobs()) == 1


async def test_a_hang_up_in_data_does_not_disturb_another_session(intake: Intake) -> None:
    patient = await Raw.connect(intake.port)
    leaver = await Raw.connect(intake.port)
    try:
        await patient.envelope()
        await leaver.envelope()
        patient.writer.write(b"From: alice@example.com\r\nSubject: patient\r\n\r\nHi")
        leaver.writer.write(b"From: alice@example.com\r\nSubject: leaver\r\n\r\nBye")
        await asyncio.sleep(0.05)
        leaver.close()
        await asyncio.sleep(0.05)
        patient.writer.write(b"\r\n.\r\n")
        answer: Answer = await patient.reply()
        assert answer.is_(replies.QUEUED)
    finally:
        patient.close()
        leaver.close()
    assert [j.subject for j in intake.jobs()] == ["patient"]
