"""Mail intake: SMTP sessions → checked, parsed mails → jobs in the store.

- :mod:`.server`     the listener (``SmtpIntake``) and its connection cap
- :mod:`.handler`    the aiosmtpd hooks: MAIL / RCPT / DATA → replies
- :mod:`.addresses`  RCPT addresses → numbers (pure)
- :mod:`.message`    a mail → documents, cover page, jobs (pure)
- :mod:`.documents`  attachment types, file names, PDF checks (pure)
- :mod:`.cover`      the cover page PDF from ``templates/cover.txt.j2``

Policy (who may send) is :mod:`bridge.policy`; every reply text is in :mod:`bridge.replies`.
"""
