"""SMTP DATA → the message bytes, in one buffer. Pure: fed chunks, no sockets.

aiosmtpd reads DATA a line at a time (``readuntil(b"\\r\\n")``), keeps a ``bytearray`` per line
and joins them at the end: for a 28 MB mail that is ~370,000 objects and ~110 MB at the peak,
and one trip through the event loop per line. :class:`DataAssembler` takes what the socket
gives, appends it to one buffer, and finds the end with a search, keeping aiosmtpd's rules:

- the end is a line holding only ``.``, i.e. ``CRLF . CRLF`` (``.CRLF`` as the very first line):
  a bare LF never ends DATA (SMTP smuggling, see ``tests/test_security_smuggling.py``);
- a line longer than ``line_limit`` bytes (CRLF included; RFC 5321 4.5.3.1.6) or a message of
  more than ``size_limit`` bytes (before unstuffing, as aiosmtpd counts) is read to its end and
  then refused; what was read is dropped at once, not kept until the reply;
- dot-unstuffing (RFC 5321 4.5.2): a line starting with ``.`` loses that first dot;
- bytes after the end (a client that pipelines its next command) are handed back as
  :attr:`leftover`, for the session to read as commands.
"""

from __future__ import annotations

import enum

__all__ = ["END", "DataAssembler", "DataProblem"]

END = b"\r\n.\r\n"

# aiosmtpd's SMTP.line_length_limit: 1000 octets of text plus CRLF, and one more of slack.
LINE_LIMIT = 1001


class DataProblem(enum.Enum):
    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"


class DataAssembler:
    """Feed it what the client sends after ``354``; :meth:`feed` returns True at the end.

    Then :attr:`problem` is None and :attr:`message` holds the message, or :attr:`problem` says
    why it is refused (and :attr:`message` is empty).
    """

    def __init__(self, size_limit: int | None, line_limit: int = LINE_LIMIT) -> None:
        self.size_limit = size_limit or None
        self.line_limit = line_limit
        # A CRLF in front, so that a message of no lines (".CRLF" first) is found as END too.
        self._buf = bytearray(b"\r\n")
        self._checked = 2  # lines before this offset passed the length check
        self.problem: DataProblem | None = None
        self.done = False
        # The buffer itself, not a bytes copy of it (that copy would double the peak memory of
        # a big mail); nothing changes it after the end.
        self.message: bytes | bytearray = b""
        self.leftover = b""

    def feed(self, chunk: bytes) -> bool:
        if self.done:
            raise RuntimeError("DATA already ended")
        buf = self._buf
        start = max(len(buf) - 4, 0)  # END may straddle the previous chunk
        buf += chunk
        end = buf.find(END, start)
        if self.problem is None:
            self._check(end)
        if end >= 0:
            self.done = True
            self.leftover = bytes(buf[end + len(END):])
            if self.problem is None:
                self.message = self._finish(end)
            self._buf = bytearray()
            return True
        if self.problem is not None:
            del buf[:-4]  # keep only what the end marker could start with
        return False

    def _check(self, end: int) -> None:
        """Checks the lines completed by the last chunk, in order, as aiosmtpd meets them: so
        the reply does not depend on how the network cut the data into reads."""
        buf = self._buf
        upto = end + 2 if end >= 0 else buf.rfind(b"\r\n", self._checked - 2) + 2
        if upto > self._checked:
            fine = upto - 2 <= (self.size_limit or upto)  # data bytes so far, as aiosmtpd counts
            if fine:
                region = bytes(buf[self._checked:upto])
                fine = max(map(len, region.split(b"\r\n"))) + 2 <= self.line_limit
            if not fine:  # the rare case: find which limit the stream crossed first
                self.problem = self._first_problem(bytes(buf[self._checked:upto]),
                                                   self._checked - 2)
                if self.problem is not None:
                    return
            self._checked = upto
        # The line still arriving: too long already once it cannot end in time.
        if end < 0 and len(buf) - self._checked - 1 > self.line_limit:
            self.problem = DataProblem.LINE_TOO_LONG

    def _first_problem(self, region: bytes, counted: int) -> DataProblem | None:
        """aiosmtpd's order for each line: its stream reader refuses a line whose CRLF starts
        beyond ``line_limit``; a shorter line is counted first, then checked for length."""
        for line in region.split(b"\r\n")[:-1]:
            if len(line) > self.line_limit:
                return DataProblem.LINE_TOO_LONG
            counted += len(line) + 2
            if self.size_limit is not None and counted > self.size_limit:
                return DataProblem.TOO_BIG
            if len(line) + 2 > self.line_limit:
                return DataProblem.LINE_TOO_LONG
        return None

    def _finish(self, end: int) -> bytearray:
        buf = self._buf
        del buf[end + 2:]  # keep the last line's CRLF, drop ". CRLF" and what follows
        if buf.find(b"\r\n.") >= 0:
            buf = buf.replace(b"\r\n.", b"\r\n")
        del buf[:2]  # O(1) for a bytearray: it moves its start
        return buf
