"""The job state machine (pure) and the store's transactional promises (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.backoff import backoff_seconds
from bridge.states import State, TransitionError, after_restart, can_move, check_move
from bridge.store import NewDocument, NewJob, NewMail, NewOutgoing, StaleState, Store

# --- states ---------------------------------------------------------------------------------

ALLOWED = [
    (State.QUEUED, State.SUBMITTING), (State.SUBMITTING, State.SUBMITTED),
    (State.SUBMITTING, State.QUEUED), (State.SUBMITTING, State.UNCERTAIN),
    (State.SUBMITTING, State.FAILED), (State.SUBMITTING, State.HELD),
    (State.SUBMITTED, State.SENT), (State.SUBMITTED, State.FAILED),
    (State.SUBMITTED, State.UNCERTAIN), (State.HELD, State.QUEUED),
]
FORBIDDEN = [
    (State.SENT, State.QUEUED), (State.SENT, State.FAILED), (State.FAILED, State.SENT),
    (State.SUBMITTED, State.QUEUED), (State.SUBMITTED, State.SUBMITTING),
    (State.QUEUED, State.SENT), (State.UNCERTAIN, State.SUBMITTING),
    (State.HELD, State.SUBMITTING),
]


@pytest.mark.parametrize(("a", "b"), ALLOWED)
def test_allowed_moves(a: State, b: State) -> None:
    assert can_move(a, b)


@pytest.mark.parametrize(("a", "b"), FORBIDDEN)
def test_forbidden_moves(a: State, b: State) -> None:
    assert not can_move(a, b) and not can_move(a, b, operator=True)
    with pytest.raises(TransitionError):
        check_move(a, b)


def test_only_an_operator_resends_an_uncertain_or_failed_job() -> None:
    assert not can_move(State.UNCERTAIN, State.QUEUED)
    assert not can_move(State.FAILED, State.QUEUED)
    assert can_move(State.UNCERTAIN, State.QUEUED, operator=True)
    assert can_move(State.FAILED, State.QUEUED, operator=True)


def test_a_job_caught_submitting_is_uncertain_after_a_restart() -> None:
    assert after_restart(State.SUBMITTING) is State.UNCERTAIN
    assert {after_restart(s) for s in State if s is not State.SUBMITTING} == (
        set(State) - {State.SUBMITTING})


@pytest.mark.parametrize("attempt", [1, 2, 5, 20])
def test_backoff_is_bounded_jittered_and_honours_retry_after(attempt: int) -> None:
    low = backoff_seconds(attempt, initial=5, maximum=900, rng=lambda: 0.0)
    high = backoff_seconds(attempt, initial=5, maximum=900, rng=lambda: 1.0)
    ceiling = min(900, 5 * 2 ** (attempt - 1))
    assert (low, high) == (ceiling / 2, ceiling)
    assert backoff_seconds(attempt, initial=5, maximum=900, retry_after=1000, rng=lambda: 0) == 1000


# --- store ----------------------------------------------------------------------------------

def mail(*keys: str, kind: str = "fax") -> NewMail:
    return NewMail("alice@example.com", "Alice <alice@example.com>", "<m@x>", "Report", True,
                   [NewJob(kind, "61298765432", k) for k in keys],
                   [NewDocument("a.pdf", "application/pdf", b"%PDF-1", 2)])


def notice(ref: str) -> NewOutgoing:
    return NewOutgoing("notice", ref, "fb@localhost", ["alice@example.com"], b"Subject: x\r\n\r\n")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s.db")


def test_accept_is_durable_and_dedupes_per_key(tmp_path: Path, store: Store) -> None:
    first = store.accept(mail("k1", "k2"))
    again = store.accept(mail("k1", "k2"))
    partly = store.accept(mail("k2", "k3"))
    assert len(first.job_ids) == 2 and again.job_ids == () and len(partly.job_ids) == 1
    store.close()
    reopened = Store(tmp_path / "s.db")
    assert len(reopened.jobs()) == 3
    assert reopened.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reopened.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_move_is_compare_and_set(store: Store) -> None:
    [job_id] = store.accept(mail("k1")).job_ids
    store.move(job_id, State.QUEUED, State.SUBMITTING)
    with pytest.raises(StaleState):
        store.move(job_id, State.QUEUED, State.SUBMITTING)   # a second sender lost the race


def test_the_final_state_and_its_notice_are_one_transaction(store: Store) -> None:
    [job_id] = store.accept(mail("k1")).job_ids
    store.move(job_id, State.QUEUED, State.SUBMITTING)
    store.move(job_id, State.SUBMITTING, State.SUBMITTED, gofax_id=7)
    store.move(job_id, State.SUBMITTED, State.SENT, notice=notice("job:1:sent:1"))
    assert [m.ref for m in store.due_mail()] == ["job:1:sent:1"]
    with pytest.raises(StaleState):   # a duplicate webhook's poll cannot notify twice
        store.move(job_id, State.SUBMITTED, State.SENT, notice=notice("job:1:sent:1"))
    assert len(store.outbox()) == 1


def test_a_failed_notice_write_rolls_the_move_back(store: Store) -> None:
    [job_id] = store.accept(mail("k1")).job_ids
    store.move(job_id, State.QUEUED, State.SUBMITTING)
    bad = NewOutgoing("notice", "r", "a@b", ["c@d"], None)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="NOT NULL"):
        store.move(job_id, State.SUBMITTING, State.FAILED, notice=bad)
    job = store.job(job_id)
    assert job is not None and job.state is State.SUBMITTING and store.outbox() == []


def test_restart_recovery_makes_uncertain_and_queues_the_notice(store: Store) -> None:
    ids = store.accept(mail("k1", "k2")).job_ids
    store.move(ids[0], State.QUEUED, State.SUBMITTING)
    moved = store.recover_after_restart(lambda job: notice(f"job:{job.id}:{job.state}"))
    assert moved == [ids[0]]
    job = store.job(ids[0])
    assert job is not None and job.state is State.UNCERTAIN
    assert [m.ref for m in store.due_mail()] == [f"job:{ids[0]}:uncertain"]
    assert store.job(ids[1]).state is State.QUEUED  # type: ignore[union-attr]


def test_documents_are_shared_by_the_jobs_of_a_mail(store: Store) -> None:
    result = store.accept(mail("k1", "k2"))
    jobs = [store.job(i) for i in result.job_ids]
    assert {j.mail_id for j in jobs if j} == {result.mail_id}
    [doc] = store.documents(result.mail_id)
    assert (doc.filename, doc.data, doc.pages) == ("a.pdf", b"%PDF-1", 2)


def test_usage_counts_for_quotas(store: Store) -> None:
    store.accept(mail("k1", "k2"))
    store.accept(NewMail("ALICE@example.com", "", "<n@x>", "", True,
                         [NewJob("sms", "61412345678", "s1", sms_text="hi", sms_parts=3)]))
    assert store.sender_usage_since("alice@example.com", 0) == (2, 4, 3)
    assert store.sender_usage_since("bob@example.com", 0) == (0, 0, 0)


def test_document_info_lists_without_the_bytes(store: Store) -> None:
    result = store.accept(mail("k1"))
    [info] = store.document_info(result.mail_id)
    assert (info.filename, info.pages, info.data) == ("a.pdf", 2, b"")


def test_documents_of_every_size_come_back_byte_exact(store: Store) -> None:
    """Written and read through blob handles: empty, small, and bigger than many pages."""
    docs = [NewDocument(f"d{i}.pdf", "application/pdf", bytes([i]) * n, 1)
            for i, n in enumerate([0, 1, 4095, 4096, 4097, 3_000_001])]
    result = store.accept(NewMail("alice@example.com", "", "<big@x>", "", True,
                                  [NewJob("fax", "61298765432", "big")], docs))
    back = store.documents(result.mail_id)
    assert [(d.seq, d.filename, d.data) for d in back] == [
        (i, d.filename, d.data) for i, d in enumerate(docs)]
    assert all(isinstance(d.data, bytes) for d in back)


def test_next_due_at_leaves_out_the_jobs_being_worked_on(store: Store) -> None:
    first, second = store.accept(mail("k1", "k2")).job_ids
    store.update_job(second, State.QUEUED, next_attempt_at=5000.0)
    store.update_job(first, State.QUEUED, next_attempt_at=1000.0)
    assert store.next_due_at([State.QUEUED]) == 1000.0
    assert store.next_due_at([State.QUEUED], exclude=[first]) == 5000.0
    assert store.next_due_at([State.QUEUED], exclude=[first, second]) is None
