"""Job states and the transitions between them: a pure table, no I/O.

A fax or SMS job moves ``queued → submitting → submitted → sent | failed``. Two side states:

- ``uncertain``: a submission whose answer was lost. GoFax may or may not have the fax, so it is
  never resent automatically; only an operator's ``faxbridge retry`` moves it back to ``queued``.
- ``held``: GoFax answered 401 (token wrong or expired). The job keeps its place and goes back
  to ``queued`` once the token works again.

Transitions are monotonic: the store applies one only when the job is still in the state the
caller saw (compare-and-set), so a late or duplicate webhook cannot move a job backwards.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    HELD = "held"


FINAL: frozenset[State] = frozenset({State.SENT, State.FAILED})
# States that end with a notice to the sender.
NOTIFIED: frozenset[State] = frozenset({State.SENT, State.FAILED, State.UNCERTAIN})

_ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SUBMITTING, State.HELD, State.FAILED}),
    # From submitting: the answer came (submitted), a retryable error came before anything was
    # created (queued), a permanent refusal (failed), the answer was lost (uncertain), 401 (held).
    State.SUBMITTING: frozenset({State.SUBMITTED, State.QUEUED, State.FAILED, State.UNCERTAIN,
                                 State.HELD}),
    # Uncertain from submitted: GoFax never gave a final status within the status lifetime.
    State.SUBMITTED: frozenset({State.SENT, State.FAILED, State.UNCERTAIN}),
    State.HELD: frozenset({State.QUEUED}),
    # Only by an operator's decision.
    State.UNCERTAIN: frozenset({State.QUEUED, State.SENT, State.FAILED}),
    State.FAILED: frozenset({State.QUEUED}),
    State.SENT: frozenset(),
}

# Transitions that only an operator may make (``faxbridge retry``).
OPERATOR_ONLY: frozenset[tuple[State, State]] = frozenset({
    (State.UNCERTAIN, State.QUEUED), (State.FAILED, State.QUEUED),
    (State.UNCERTAIN, State.SENT), (State.UNCERTAIN, State.FAILED),
})


class TransitionError(ValueError):
    pass


def can_move(current: State | str, new: State | str, *, operator: bool = False) -> bool:
    cur, nxt = State(current), State(new)
    if nxt not in _ALLOWED[cur]:
        return False
    return operator or (cur, nxt) not in OPERATOR_ONLY


def check_move(current: State | str, new: State | str, *, operator: bool = False) -> None:
    if not can_move(current, new, operator=operator):
        who = "" if operator else " automatically"
        raise TransitionError(f"a job cannot move{who} from {current} to {new}")


def after_restart(state: State | str) -> State:
    """What a job found in ``state`` at start-up becomes.

    A job caught in ``submitting`` had its PUT in flight when the process died: the fax may
    exist, so it is uncertain rather than queued (never send twice).
    """
    s = State(state)
    return State.UNCERTAIN if s is State.SUBMITTING else s
