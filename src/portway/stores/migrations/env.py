"""Alembic environment: portway runs migrations itself at start, on the connection it passes in."""

from alembic import context

from portway.stores.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("portway applies its migrations itself when it starts: run `portway serve`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
