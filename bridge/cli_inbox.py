"""``faxbridge inbox``: received faxes and SMS replies, and how far their mails got.

Parked ones come first (a fax whose download kept failing or whose document is unusable, or any
mail the smarthost refused for good), then the newest. ``--retry ID`` makes the running daemon
fetch a parked fax again; ``--save ID`` writes a stored document to a file for the operator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bridge import inbox
from bridge.config import Config
from bridge.numbers import display_number
from bridge.store import Store


def add_inbox_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``inbox`` command to ``faxbridge``'s subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inbox", help="list received faxes and SMS replies and whether they were mailed",
        description="List received faxes and SMS replies, parked ones first, with the delivery "
                    "state of each mail (pending, sent, parked).")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="config file (default: $FAXBRIDGE_CONFIG or ./bridge.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50, help="at most this many of each (default 50)")
    p.add_argument("--retry", type=int, metavar="ID",
                   help="fetch the parked fax with this GoFax id again")
    p.add_argument("--save", type=int, metavar="ID",
                   help="write the stored document of the fax with this GoFax id to a file")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="file for --save (default: fax-<ID>.pdf or .tif in the current folder)")
    return p


def run_inbox(config: Config, args: argparse.Namespace) -> int:
    path = config.path(config.store.path)
    if not path.exists():
        print(f"faxbridge: no store at {path} yet (the daemon has not run)", file=sys.stderr)
        return 1
    store = Store(path)
    try:
        if getattr(args, "retry", None) is not None:
            return _retry(store, args.retry)
        if getattr(args, "save", None) is not None:
            return _save(store, args.save, getattr(args, "output", None))
        return _list(store, limit=getattr(args, "limit", 50), as_json=getattr(args, "json", False))
    finally:
        store.close()


# --- actions -------------------------------------------------------------------------------------

def _retry(store: Store, gofax_id: int) -> int:
    fax = inbox.get_fax(store, gofax_id)
    if fax is None:
        print(f"faxbridge: there is no received fax {gofax_id}", file=sys.stderr)
        return 1
    if not inbox.requeue_fax(store, gofax_id, now=time.time()):
        print(f"faxbridge: fax {gofax_id} is {fax.state}; only parked faxes can be retried",
              file=sys.stderr)
        return 1
    print(f"fax {gofax_id} will be fetched again by the running daemon at its next poll")
    return 0


def _save(store: Store, gofax_id: int, output: str | None) -> int:
    found = inbox.fax_document(store, gofax_id)
    if found is None:
        print(f"faxbridge: no stored document for fax {gofax_id}", file=sys.stderr)
        return 1
    _filename, content_type, data = found
    ext = "tif" if content_type == "image/tiff" else "pdf"
    target = Path(output or f"fax-{gofax_id}.{ext}")
    if target.exists():
        print(f"faxbridge: {target} exists; choose another with --output", file=sys.stderr)
        return 1
    target.write_bytes(data)
    print(f"wrote {len(data)} bytes ({content_type or 'unknown type'}) to {target}")
    return 0


# --- the listing ---------------------------------------------------------------------------------

def _mail_summary(deliveries: list[inbox.Delivery]) -> str:
    if not deliveries:
        return "-"
    return "; ".join(f"{d.rcpt}: {d.state}" + (f" ({d.attempts} tries)" if d.state != "sent"
                                                  and d.attempts else "") for d in deliveries)


def _problem(error: str, deliveries: list[inbox.Delivery]) -> str:
    failing = [d.last_error for d in deliveries if d.state != "sent" and d.last_error]
    return " ".join((error or (failing[0] if failing else "")).split())[:70]


def _age(now: float, then: float) -> str:
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _status(state: str, deliveries: list[inbox.Delivery]) -> str:
    """The fax/reply's own state, or "parked" when one of its mails is."""
    if state != inbox.PARKED and any(d.state == "parked" for d in deliveries):
        return "parked (mail)"
    return state


def _list(store: Store, *, limit: int, as_json: bool) -> int:
    faxes = inbox.list_faxes(store, limit=limit)
    replies = inbox.list_replies(store, limit=limit)
    if as_json:
        print(json.dumps({"faxes": [_fax_json(f, d) for f, d in faxes],
                          "sms_replies": [_reply_json(r, d) for r, d in replies]}, indent=2))
        return 0
    now = time.time()
    print("received faxes:")
    rows = [("GOFAX ID", "STATE", "FROM", "TO", "PAGES", "AGE", "MAIL", "PROBLEM")]
    for fax, deliveries in faxes:
        rows.append((str(fax.gofax_id), _status(fax.state, deliveries),
                     display_number(fax.from_number), display_number(fax.to_number),
                     str(fax.pages or "?"), _age(now, fax.created_at), _mail_summary(deliveries),
                     _problem(fax.last_error, deliveries)))
    _print_rows(rows)
    print("\nSMS replies:")
    rows = [("GOFAX ID", "STATE", "FROM", "JOB", "AGE", "MAIL", "MESSAGE")]
    for reply, deliveries in replies:
        rows.append((str(reply.gofax_id), _status(reply.state, deliveries),
                     display_number(reply.from_number), str(reply.job_id or "-"),
                     _age(now, reply.created_at), _mail_summary(deliveries),
                     " ".join(reply.message.split())[:40]))
    _print_rows(rows)
    return 0


def _fax_json(fax: inbox.StoredFax, deliveries: list[inbox.Delivery]) -> dict[str, Any]:
    return {"gofax_id": fax.gofax_id, "state": _status(fax.state, deliveries),
            "from": fax.from_number, "to": fax.to_number, "csid": fax.csid, "pages": fax.pages,
            "received_utc": fax.received_utc.isoformat() if fax.received_utc else None,
            "attempts": fax.attempts, "error": fax.last_error, "filename": fax.filename,
            "content_type": fax.content_type, "size": fax.size,
            "mails": [asdict(d) for d in deliveries]}


def _reply_json(reply: inbox.StoredReply, deliveries: list[inbox.Delivery]) -> dict[str, Any]:
    return {"gofax_id": reply.gofax_id, "state": _status(reply.state, deliveries),
            "from": reply.from_number, "to": reply.to_number, "job_id": reply.job_id,
            "message_id": reply.message_id, "message": reply.message,
            "received_utc": reply.received_utc.isoformat() if reply.received_utc else None,
            "mails": [asdict(d) for d in deliveries]}


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    """A table of header + rows, or "(none)" when there is only the header."""
    if len(rows) == 1:
        print("  (none)")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


__all__ = ["add_inbox_parser", "run_inbox"]
