"""Per-sender daily quotas (``[limits]``): pure decisions over counts taken from the store.

A fax bridge that accepts mail spends money on every fax page and SMS part. The quotas cap what
one envelope sender can queue in a **rolling 24 hours**; the counts come from the jobs in the
store (``Store.sender_usage_since``), so a restart does not reset them, and every job counts
whatever became of it (a failed fax was still an attempt to spend money). A limit of 0 is off.

Two answers, because an MTA treats them differently:

- ``452 4.7.1`` (:data:`~bridge.replies.QUOTA_REACHED`), temporary: the sender has used up the
  allowance, or this mail would go over what is left. The window moves on, so the MTA keeps
  the mail and retries; it goes through once older jobs fall out of the 24 hours. Given at RCPT
  when the allowance is already used up (before the client sends the data), else at DATA.
- ``550 5.7.1`` (:data:`~bridge.replies.QUOTA_EXCEEDED`), permanent, at DATA: this one mail
  needs more than the whole daily limit (a 300-page fax against a 200-page limit). No retry can
  ever succeed, so the sender is told at once rather than after days of retries.

Counting: a fax job counts 1 fax and its pages (all documents of the mail, cover included;
documents whose page count is unknown until GoFax converts them count 1 page, as the store
does); an SMS job counts its parts.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from bridge.config import LimitsConfig
from bridge.store import NewMail

__all__ = ["WINDOW_SECONDS", "Quota", "Usage", "Verdict", "check_mail", "check_recipient", "cost"]

WINDOW_SECONDS = 86_400.0


@dataclass(frozen=True)
class Usage:
    faxes: int = 0
    fax_pages: int = 0
    sms_parts: int = 0


@dataclass(frozen=True)
class Quota:
    faxes_per_day: int = 0
    fax_pages_per_day: int = 0
    sms_parts_per_day: int = 0

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> Quota:
        return cls(limits.faxes_per_day, limits.fax_pages_per_day, limits.sms_parts_per_day)

    @property
    def active(self) -> bool:
        return bool(self.faxes_per_day or self.fax_pages_per_day or self.sms_parts_per_day)


@dataclass(frozen=True)
class Verdict:
    temporary: bool  # True: 452 4.7.1 (try later); False: 550 5.7.1 (never)
    detail: str


def _noun(n: int, nouns: tuple[str, str]) -> str:
    return f"{n} {nouns[0] if n == 1 else nouns[1]}"


# (Usage field, [limits] key, (singular, plural)) for each dimension.
_DIMENSIONS = (("faxes", "faxes_per_day", ("fax", "faxes")),
               ("fax_pages", "fax_pages_per_day", ("fax page", "fax pages")),
               ("sms_parts", "sms_parts_per_day", ("SMS part", "SMS parts")))


def cost(mail: NewMail, fresh_keys: Collection[str] | None = None) -> Usage:
    """What accepting ``mail`` adds to its sender's usage. Only jobs whose dedupe key is in
    ``fresh_keys`` count (``None``: all): a re-sent copy of an accepted mail costs nothing."""
    jobs = [j for j in mail.jobs if fresh_keys is None or j.dedupe_key in fresh_keys]
    faxes = sum(1 for j in jobs if j.kind == "fax")
    # The same rule as Store.accept: pages of all documents, 1 for an unknown count.
    per_fax = sum(d.pages or 1 for d in mail.documents) if mail.documents else 1
    parts = sum((j.sms_parts or 1) for j in jobs if j.kind == "sms")
    return Usage(faxes=faxes, fax_pages=faxes * per_fax, sms_parts=parts)


def check_recipient(kind: str, used: Usage, quota: Quota) -> Verdict | None:
    """At RCPT: refuse (temporarily) a recipient of a kind whose allowance is used up."""
    dims = _DIMENSIONS[:2] if kind == "fax" else _DIMENSIONS[2:]
    for attr, key, noun in dims:
        limit = getattr(quota, key)
        spent = getattr(used, attr)
        if limit and spent >= limit:
            return Verdict(True, f"{_noun(spent, noun)} in the last 24 hours, the limit is "
                                 f"{limit} ([limits] {key})")
    return None


def check_mail(used: Usage, adds: Usage, quota: Quota) -> Verdict | None:
    """At DATA: refuse a mail that would take the sender over a limit (see the module docstring
    for 452 vs 550). A permanent reason wins over a temporary one."""
    temporary: Verdict | None = None
    for attr, key, noun in _DIMENSIONS:
        limit = getattr(quota, key)
        need = getattr(adds, attr)
        if not limit or not need:
            continue
        if need > limit:
            return Verdict(False, f"it needs {_noun(need, noun)}, the limit is {limit} a day "
                                  f"([limits] {key})")
        spent = getattr(used, attr)
        if spent + need > limit and temporary is None:
            temporary = Verdict(True, f"{_noun(spent, noun)} in the last 24 hours plus "
                                      f"{need} in this mail would exceed {limit} ([limits] {key})")
    return temporary
