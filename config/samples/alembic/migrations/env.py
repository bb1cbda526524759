"""Alembic's environment: the application's metadata, and an async runner on asyncpg.

The connection comes from libpq's variables, so the same project runs on a laptop
(`PGHOST=localhost`) and as geodb's migration image (which sets them for the primary,
with `PGSSLMODE=verify-full` and the cluster's CA in `PGSSLROOTCERT`)."""

import asyncio
import os
import ssl

from alembic import context
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from app.models import metadata

target_metadata = metadata


def database_url() -> URL:
    return URL.create(
        "postgresql+asyncpg",
        username=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD"),
        host=os.environ.get("PGHOST", "localhost"),
        port=int(os.environ.get("PGPORT", "5432")),
        database=os.environ.get("PGDATABASE", "app"),
    )


def tls():
    """verify-full checks the chain and the name; disable sends plaintext."""
    mode = os.environ.get("PGSSLMODE", "verify-full")
    if mode == "disable":
        return False
    context_ = ssl.create_default_context(cafile=os.environ.get("PGSSLROOTCERT"))
    context_.check_hostname = mode == "verify-full"
    if mode not in ("verify-ca", "verify-full"):
        context_.check_hostname = False
        context_.verify_mode = ssl.CERT_NONE
    return context_


def run_migrations_offline() -> None:
    context.configure(
        url=database_url().render_as_string(hide_password=True),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(database_url(), connect_args={"ssl": tls()})
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
