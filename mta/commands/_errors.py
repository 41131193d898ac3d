"""How the `mta` command reports a failure: one line on stderr that says what went
wrong and what to do next, exit status 1 (2 for a usage error, as argparse does).
A traceback only with `--debug`."""

from __future__ import annotations

__all__ = ["CliError", "confirm_delete", "explain"]


class CliError(Exception):
    """A failure the command can explain; `str()` is the whole line after `mta: `."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def confirm_delete(yes: bool, consequences: str, command: str) -> None:
    """Say what a delete takes with it; without `--yes` stop there, nothing deleted."""
    print(consequences)
    if not yes:
        raise CliError(f"nothing deleted; run `{command} --yes` to delete it")


def explain(exc: BaseException) -> str:
    """One line for an error no command anticipated."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    from mta.store.embedded import EmbeddedPostgresError

    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if isinstance(exc, EmbeddedPostgresError):
        return f"embedded PostgreSQL: {first}"
    if isinstance(exc, ProgrammingError) and "does not exist" in first:
        return f"database: {first}; apply the migrations with `mta db upgrade`"
    if isinstance(exc, (OperationalError, OSError, ConnectionError)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return (f"cannot reach the database: {first}; check database.url (or "
                "$MTA_DATABASE_URL) and that PostgreSQL is running")
    return f"{type(exc).__name__}: {first} (run again with --debug for the traceback)"
