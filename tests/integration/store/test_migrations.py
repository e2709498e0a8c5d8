"""The migrations build exactly the schema the models describe: a model changed without a migration
(or the reverse) shows here, not in production."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import gateway.twilio.sandbox.models  # noqa: F401  (its tables are part of the metadata the migrations build)
from gateway.store.models import Base


def test_the_migrated_store_matches_the_models(db):
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
