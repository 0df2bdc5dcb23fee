"""bridge.inbox (the receiver's SQL) on a real Store, and the ``faxbridge inbox`` listing."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge import inbox
from bridge.cli_inbox import add_inbox_parser, run_inbox
from bridge.config import Config, StoreConfig, defaults
from bridge.gofax.models import ReceivedFax, SmsReply
from bridge.states import State
from bridge.store import NewJob, NewMail, NewOutgoing, Store

NOW = 1796374800.0  # 2026-12-04 09:00 UTC
WHEN = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "faxbridge.db", clock=lambda: NOW)
    yield s
    s.close()


def fax(gofax_id: int, **kw: Any) -> ReceivedFax:
    values: dict[str, Any] = {"id": gofax_id, "from_number": "61733334444",
                              "to_number": "61298765432", "csid": "ACME", "pages": 2,
                              "received_utc": WHEN, "retrieved": None}
    return ReceivedFax(**{**values, **kw})


def fax_mail(gofax_id: int, rcpt: str) -> NewOutgoing:
    return NewOutgoing("fax_in", f"fax:{gofax_id}:{rcpt}", "faxbridge@localhost", [rcpt],
                       b"Subject: fax\r\n\r\nbody\r\n")


def reply(reply_id: int, *, message_id: int | None = None, sender: str = "61412345678",
          received: datetime | None = WHEN) -> SmsReply:
    return SmsReply(reply_id, message_id, sender, "61400000000", "hi", received)


def sms_mail(reply_id: int, rcpt: str) -> NewOutgoing:
    return NewOutgoing("sms_in", f"sms:{reply_id}:{rcpt}", "faxbridge@localhost", [rcpt],
                       b"Subject: sms\r\n\r\nhi\r\n")


def states(store: Store) -> dict[int, str]:
    return {r[0]: r[1] for r in store.db.execute("SELECT gofax_id, state FROM received_faxes")}


def send_all(store: Store, hook: Any = None) -> None:
    for row in store.due_mail(100):
        store.mail_sent(row.id, on_sent=(lambda db, r=row: hook(db, r)) if hook else None)


# --- received faxes ------------------------------------------------------------------------------

def test_record_listed_is_idempotent_and_keeps_state(store: Store) -> None:
    assert inbox.record_listed(store, [fax(1), fax(2, from_number="")], now=NOW) == [1, 2]
    assert inbox.record_listed(store, [fax(1), fax(3)], now=NOW + 5) == [3]
    inbox.store_document(store, 1, "1.pdf", "application/pdf", b"%PDF", [], now=NOW)
    assert inbox.record_listed(store, [fax(1)], now=NOW + 9) == []
    assert states(store) == {1: "fetched", 2: "listed", 3: "listed"}
    withheld = inbox.get_fax(store, 2)
    assert withheld is not None and withheld.from_number == "" and withheld.received_utc == WHEN


def test_due_faxes_respects_next_attempt(store: Store) -> None:
    inbox.record_listed(store, [fax(1), fax(2)], now=NOW)
    inbox.record_fetch_failure(store, 1, "503", now=NOW, next_attempt_at=NOW + 60)
    assert [f.gofax_id for f in inbox.due_faxes(store, now=NOW)] == [2]
    assert [f.gofax_id for f in inbox.due_faxes(store, now=NOW + 60)] == [2, 1]
    assert inbox.next_fax_due_at(store) == NOW


def test_store_document_writes_document_and_mails_in_one_transaction(store: Store) -> None:
    inbox.record_listed(store, [fax(7)], now=NOW)
    mails = [fax_mail(7, "a@x.test"), fax_mail(7, "b@x.test")]
    assert inbox.store_document(store, 7, "7.pdf", "application/pdf", b"%PDF-doc", mails,
                                now=NOW, pages=3)
    assert inbox.fax_document(store, 7) == ("7.pdf", "application/pdf", b"%PDF-doc")
    assert sorted(m.ref for m in store.outbox()) == ["fax:7:a@x.test", "fax:7:b@x.test"]
    stored = inbox.get_fax(store, 7)
    assert stored is not None and stored.pages == 2 and stored.size == 8  # GoFax's count wins
    # A second store (a duplicate poll, a restart) writes and queues nothing.
    assert not inbox.store_document(store, 7, "7.pdf", "application/pdf", b"other", mails,
                                    now=NOW)
    assert len(store.outbox()) == 2


def test_store_document_rolls_back_when_queueing_fails(store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    inbox.record_listed(store, [fax(7)], now=NOW)

    def broken(*_args: Any) -> bool:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_queue", broken)
    with pytest.raises(OSError):
        inbox.store_document(store, 7, "7.pdf", "application/pdf", b"%PDF", [fax_mail(7, "a@x")],
                             now=NOW)
    assert states(store) == {7: "listed"}
    assert inbox.fax_document(store, 7) is None


def test_store_document_refuses_refs_it_could_not_track(store: Store) -> None:
    inbox.record_listed(store, [fax(7)], now=NOW)
    with pytest.raises(ValueError, match="convention"):
        inbox.store_document(store, 7, "7.pdf", "application/pdf", b"%PDF",
                             [fax_mail(70, "a@x")], now=NOW)


def test_parking_keeps_the_document_and_alerts_once(store: Store) -> None:
    inbox.record_listed(store, [fax(1), fax(2)], now=NOW)
    alert = NewOutgoing("alert", "fax-parked:1", "f@l", ["postmaster@x"], b"alert")
    assert inbox.store_document(store, 1, "1.pdf", "application/pdf", b"junk", [], now=NOW,
                                park_reason="not a PDF", alert=("fax-parked:1", alert))
    assert inbox.fax_document(store, 1) == ("1.pdf", "application/pdf", b"junk")
    for attempt in range(1, 4):
        alert2 = NewOutgoing("alert", "fax-parked:2", "f@l", ["postmaster@x"], b"alert")
        got = inbox.record_fetch_failure(store, 2, "500", now=NOW, next_attempt_at=NOW,
                                         park=attempt == 3, alert=("fax-parked:2", alert2))
        assert got == attempt
    assert states(store) == {1: "parked", 2: "parked"}
    assert sorted(m.ref for m in store.outbox()) == ["fax-parked:1", "fax-parked:2"]
    # Once parked, further failures change nothing and alert no more.
    inbox.record_fetch_failure(store, 2, "500", now=NOW, next_attempt_at=NOW, park=True,
                               alert=("fax-parked:2", alert2))
    assert len(store.outbox()) == 2
    assert inbox.requeue_fax(store, 2, now=NOW)
    assert not inbox.requeue_fax(store, 2, now=NOW)
    requeued = inbox.get_fax(store, 2)
    assert requeued is not None and requeued.state == "listed" and requeued.attempts == 0


def test_delivered_only_when_every_mail_was_accepted(store: Store) -> None:
    inbox.record_listed(store, [fax(9), fax(90)], now=NOW)
    inbox.store_document(store, 9, "9.pdf", "application/pdf", b"%PDF",
                         [fax_mail(9, "a@x"), fax_mail(9, "b@x")], now=NOW)
    inbox.store_document(store, 90, "90.pdf", "application/pdf", b"%PDF",
                         [fax_mail(90, "a@x")], now=NOW)
    mails = {m.ref: m for m in store.outbox()}
    store.mail_sent(mails["fax:9:a@x"].id)
    store.mail_sent(mails["fax:90:a@x"].id)  # fax 90's mail must not count for fax 9
    assert inbox.settle_delivered(store, now=NOW) == ([90], [])
    assert states(store) == {9: "fetched", 90: "delivered"}
    store.mail_sent(mails["fax:9:b@x"].id)
    assert inbox.settle_delivered(store, now=NOW) == ([9], [])
    assert inbox.settle_delivered(store, now=NOW) == ([], [])


def test_sent_hooks_mark_delivery_in_the_sending_transaction(store: Store) -> None:
    inbox.record_listed(store, [fax(9)], now=NOW)
    inbox.store_document(store, 9, "9.pdf", "application/pdf", b"%PDF",
                         [fax_mail(9, "a@x"), fax_mail(9, "b@x")], now=NOW)
    inbox.record_reply(store, reply(5), "61400000000", None, [sms_mail(5, "a@x")], now=NOW)
    [first, *_] = store.due_mail(100)
    store.mail_sent(first.id, on_sent=lambda db: inbox.fax_mail_sent(db, first))
    assert states(store) == {9: "fetched"}
    for row in store.due_mail(100):
        hook = inbox.fax_mail_sent if row.kind == "fax_in" else inbox.sms_mail_sent
        store.mail_sent(row.id, on_sent=lambda db, r=row, h=hook: h(db, r))
    assert states(store) == {9: "delivered"}
    stored = inbox.get_reply(store, 5)
    assert stored is not None and stored.state == "delivered"


def test_unstored_faxes_are_reported_once(store: Store) -> None:
    alert = NewOutgoing("alert", "faxes-unstored:1+2", "f@l", ["pm@x"], b"x")
    assert inbox.unreported(store, [1, 2]) == [1, 2]
    assert inbox.report_unstored(store, [1, 2], alert, now=NOW) == [1, 2]
    assert inbox.unreported(store, [1, 2, 3]) == [3]
    alert3 = NewOutgoing("alert", "faxes-unstored:3+1", "f@l", ["pm@x"], b"x")
    assert inbox.report_unstored(store, [2, 3], alert3, now=NOW) == [3]
    assert inbox.report_unstored(store, [1, 3], alert3, now=NOW) == []
    assert sorted(m.ref for m in store.outbox()) == ["faxes-unstored:1+2", "faxes-unstored:3+1"]


def test_seen_and_known_fax_numbers(store: Store) -> None:
    inbox.record_listed(store, [fax(1), fax(2, to_number="61299990000")], now=NOW)
    assert inbox.seen_fax_numbers(store) == ["61298765432", "61299990000"]
    assert inbox.known_fax_ids(store, [1, 5]) == {1}
    assert inbox.known_fax_ids(store, []) == set()


# --- SMS replies ---------------------------------------------------------------------------------

def sms_job(store: Store, sender: str, gofax_id: int | None, *, to: str = "61412345678",
            key: str = "") -> int:
    result = store.accept(NewMail(mail_from=sender, header_from=sender,
                                  message_id=f"<{key or gofax_id}@x>", subject="", notify=True,
                                  jobs=[NewJob("sms", to, key or f"k{gofax_id}", "hi", 1)]))
    [job_id] = result.job_ids
    if gofax_id is not None:
        store.move(job_id, State.QUEUED, State.SUBMITTING)
        store.move(job_id, State.SUBMITTING, State.SUBMITTED, gofax_id=gofax_id)
    return job_id


def test_find_sms_job_for_reply(tmp_path: Path) -> None:
    clock = [NOW - 1000]
    store = Store(tmp_path / "db", clock=lambda: clock[0])
    first = sms_job(store, "alice@x", 77001)
    clock[0] = NOW - 500
    second = sms_job(store, "carol@x", 77002)
    unsent = sms_job(store, "eve@x", None, key="unsent")  # never submitted: cannot be answered
    clock[0] = NOW + 3600
    later = sms_job(store, "late@x", 77003)               # created after the reply arrived
    find = inbox.find_sms_job_for_reply

    def job_id(*args: Any, **kw: Any) -> int | None:
        job = find(store, *args, **kw)
        return job.id if job else None

    assert job_id(77001, "61412345678", received_at=NOW) == first
    assert job_id(None, "61412345678", received_at=NOW) == second
    assert job_id(424242, "61412345678", received_at=NOW) == second  # unknown id: fall back
    assert job_id(None, "61412345678") == later                       # no time: the latest
    assert job_id(None, "61499999999", received_at=NOW) is None
    assert job_id(None, "", received_at=NOW) is None
    assert unsent not in (first, second, later)
    store.close()


def test_record_reply_dedupes_and_advances_the_cursor(store: Store) -> None:
    assert store.cursor(inbox.reply_cursor("61400000000")) is None
    assert inbox.record_reply(store, reply(600), "61400000000", None, [sms_mail(600, "a@x")],
                              now=NOW)
    assert not inbox.record_reply(store, reply(600), "61400000000", None,
                                  [sms_mail(600, "a@x")], now=NOW)
    assert inbox.record_reply(store, reply(42), "61400000000", None, [], now=NOW,
                              state=inbox.SKIPPED)
    assert store.cursor(inbox.reply_cursor("61400000000")) == "600"  # the highest, not the last
    inbox.mark_polled(store, "61400000000", 0)
    assert store.cursor(inbox.reply_cursor("61400000000")) == "600"
    assert inbox.known_reply_ids(store, [42, 600, 601]) == {42, 600}
    assert len(store.outbox()) == 1
    with pytest.raises(ValueError):
        inbox.record_reply(store, reply(601), "61400000000", None, [fax_mail(601, "a@x")],
                           now=NOW)


# --- faxbridge inbox -----------------------------------------------------------------------------

def config_for(tmp_path: Path) -> Config:
    return defaults(store=StoreConfig(path=str(tmp_path / "faxbridge.db")))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="faxbridge")
    add_inbox_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["inbox", *argv])


def test_inbox_lists_parked_first_with_mail_states(store: Store, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inbox.record_listed(store, [fax(1), fax(2, from_number=""), fax(3)], now=NOW)
    inbox.store_document(store, 1, "1.pdf", "application/pdf", b"%PDF",
                         [fax_mail(1, "a@x"), fax_mail(1, "b@x")], now=NOW)
    inbox.store_document(store, 2, "2.pdf", "application/pdf", b"junk", [], now=NOW,
                         park_reason="the document is neither a PDF nor a TIFF")
    [a, b] = sorted(store.outbox(), key=lambda m: m.ref)
    store.mail_sent(a.id)
    store.mail_retry(b.id, "451 later", NOW + 60)
    inbox.record_reply(store, reply(600), "61400000000", None, [sms_mail(600, "desk@x")],
                       now=NOW)

    assert run_inbox(config_for(tmp_path), parse([])) == 0
    out = capsys.readouterr().out
    fax_lines = out.split("SMS replies:")[0].strip().splitlines()[2:]
    assert [line.split()[0] for line in fax_lines] == ["2", "3", "1"]  # parked first
    assert "a@x: sent; b@x: pending (1 tries)" in out and "451 later" not in fax_lines[0]
    assert "withheld" in fax_lines[0] and "neither a PDF" in fax_lines[0]
    assert "desk@x: pending" in out

    assert run_inbox(config_for(tmp_path), parse(["--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["gofax_id"] for f in data["faxes"]] == [2, 3, 1]
    assert data["faxes"][2]["mails"][1] == {"rcpt": "b@x", "state": "pending", "attempts": 1,
                                            "last_error": "451 later"}
    assert data["sms_replies"][0]["gofax_id"] == 600


def test_inbox_retry_and_save(store: Store, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    inbox.record_listed(store, [fax(2), fax(3)], now=NOW)
    inbox.store_document(store, 2, "2.pdf", "application/pdf", b"junk", [], now=NOW,
                         park_reason="bad")
    config = config_for(tmp_path)
    target = tmp_path / "out.pdf"
    assert run_inbox(config, parse(["--save", "2", "--output", str(target)])) == 0
    assert target.read_bytes() == b"junk"
    assert run_inbox(config, parse(["--save", "2", "--output", str(target)])) == 1  # no overwrite
    assert run_inbox(config, parse(["--save", "3"])) == 1  # nothing stored yet
    assert run_inbox(config, parse(["--retry", "3"])) == 1  # not parked
    assert run_inbox(config, parse(["--retry", "99"])) == 1
    assert run_inbox(config, parse(["--retry", "2"])) == 0
    assert states(store) == {2: "listed", 3: "listed"}
    assert "fetched again" in capsys.readouterr().out


def test_inbox_without_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_inbox(config_for(tmp_path / "none"), parse([])) == 1
    assert "no store" in capsys.readouterr().err
