"""``faxbridge user add|remove|list``: the SMTP AUTH users file (``[smtp] users_file``).

Wired into :mod:`bridge.cli` with :func:`add_user_parser` (the sub-command's parser, with
``--config``) and :func:`run_user` (``run_user(config, args) -> exit code``). A running daemon
picks up the changed file at the next login; no restart.

Passwords are never taken from the command line (it ends up in shell history and ``ps``): they
are asked twice on the terminal, or read from standard input with ``--password-stdin``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

from bridge.config import Config
from bridge.users import UsersFileError, add_user, load_users, save_users

__all__ = ["MIN_PASSWORD_CHARS", "add_user_parser", "run_user"]

# Short passwords fall to guessing even at 3 tries per connection; scrypt only slows an attack
# on a stolen file.
MIN_PASSWORD_CHARS = 10


def add_user_parser(
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Adds ``user`` (with ``add``, ``remove``, ``list``) to the faxbridge sub-commands."""
    p = subparsers.add_parser(
        "user", help="manage SMTP AUTH users (add, remove, list)",
        description="Manage the SMTP AUTH users in [smtp] users_file. Each user may send only "
                    "as the addresses given with --address.")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="config file (default: $FAXBRIDGE_CONFIG or ./bridge.toml)")
    actions = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a user (asks for the password twice)",
                             description="Add a user, or with --replace change an existing one.")
    add.add_argument("name", help="the login name (an email address works)")
    add.add_argument("--address", "-a", action="append", default=[], required=True,
                     metavar="ADDRESS",
                     help="an address the user may send as: user@example.com or *@example.com "
                          "(repeatable; at least one)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--replace", action="store_true",
                     help="replace an existing user's password and addresses")

    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")

    actions.add_parser("list", help="list users and their addresses (never the hashes)")
    return p


def _password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password_stdin:
        line = stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass(f"Password for {args.name}: ")
    second = getpass.getpass("Again: ")
    if first != second:
        raise ValueError("the two passwords differ")
    return first


def run_user(config: Config, args: argparse.Namespace, *, stdin: TextIO | None = None,
             stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs one ``faxbridge user`` action; returns the exit code (0 ok, 1 failed, 2 misconfigured)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if not config.smtp.users_file:
        print("faxbridge: [smtp] users_file is not set in "
              f"{config.source}; set it (e.g. users_file = \"users\") first", file=err)
        return 2
    path = config.path(config.smtp.users_file)
    try:
        users = load_users(path)
    except UsersFileError as exc:
        print(f"faxbridge: {exc}", file=err)
        return 1
    action = args.user_command
    if action == "list":
        if not users:
            print(f"(no users in {path})", file=out)
        for user in sorted(users.values(), key=lambda u: u.name):
            print(f"{user.name}  {' '.join(user.addresses)}", file=out)
        return 0
    if action == "remove":
        if args.name not in users:
            print(f"faxbridge: there is no user {args.name} in {path}", file=err)
            return 1
        del users[args.name]
        save_users(path, users)
        print(f"user {args.name} removed", file=out)
        return 0
    # add
    if args.name in users and not args.replace:
        print(f"faxbridge: user {args.name} exists; use --replace to change it", file=err)
        return 1
    try:
        password = _password(args, stdin or sys.stdin)
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"the password is too short (at least {MIN_PASSWORD_CHARS} characters)")
        users = add_user(users, args.name, password, args.address)
    except (ValueError, EOFError) as exc:
        print(f"faxbridge: {exc or 'no password given'}", file=err)
        return 1
    save_users(path, users)
    print(f"user {args.name} {'changed' if args.replace else 'added'}: may send as "
          f"{' '.join(args.address)}", file=out)
    return 0
