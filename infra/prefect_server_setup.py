"""One-shot set-up of the Prefect server's database, before its API workers start (the
`prefect-migrate` container; tests/test_production_stack.py runs it the same way):

1. schema migrations;
2. block type registration. Every API worker would otherwise register the block types at start-up,
   and two workers doing it at once collide on a unique key and stop the server; with this done once,
   the workers run with PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false (prefect-server.env).

Reads the same settings as the server (PREFECT_API_DATABASE_CONNECTION_URL, ...).
"""

from __future__ import annotations

import asyncio


async def set_up() -> None:
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    database = provide_database_interface()
    await database.create_db()  # alembic migrations to head
    session = await database.session()
    async with session:
        await run_block_auto_registration(session=session)
        await session.commit()


if __name__ == "__main__":
    asyncio.run(set_up())
    print("prefect database migrated; block types registered")
