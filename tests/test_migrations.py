"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from evochips.db.migrate import script_location


def test_models_and_migrations_agree(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["database_url"] = database_url
    command.check(config)  # raises if autogenerate would write anything


def test_downgrade_and_upgrade_again(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["database_url"] = database_url
    command.downgrade(config, "base")
    command.upgrade(config, "head")
