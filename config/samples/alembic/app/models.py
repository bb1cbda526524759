"""The application's tables, as SQLAlchemy metadata: what `alembic revision
--autogenerate` compares the database with."""

from geoalchemy2 import Geometry
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData()

locations = Table(
    "locations",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("category", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("owner", Text, nullable=False),
    # geometry(Point, 4326); the GIST index is made below, not by GeoAlchemy2.
    Column("geom", Geometry("POINT", srid=4326, spatial_index=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "status IN ('pending', 'approved', 'rejected')", name="locations_status_check"
    ),
)
Index("locations_geom_idx", locations.c.geom, postgresql_using="gist")
Index(
    "locations_search_idx",
    text("to_tsvector('simple', name || ' ' || coalesce(description, ''))"),
    postgresql_using="gin",
)
Index("locations_category_idx", locations.c.category)
Index("locations_status_idx", locations.c.status)
Index("locations_created_at_idx", locations.c.created_at)

images = Table(
    "images",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column(
        "location_id",
        BigInteger,
        ForeignKey("locations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("url", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

moderation_logs = Table(
    "moderation_logs",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column(
        "location_id",
        BigInteger,
        ForeignKey("locations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("action", Text, nullable=False),
    Column("moderator", Text, nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The foreign keys' indexes, named as in ../migrations (V5__indexes.sql).
Index("images_location_id_idx", images.c.location_id)
Index("moderation_logs_location_id_idx", moderation_logs.c.location_id)
