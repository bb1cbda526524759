"""The task list's schema: locations (geometry(Point, 4326)), images, moderation_logs,
and the GIST, GIN and B-Tree indexes.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
from geoalchemy2 import Geometry

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.create_table(
        "locations",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("geom", Geometry("POINT", srid=4326, spatial_index=False), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')", name="locations_status_check"
        ),
    )
    op.create_index("locations_geom_idx", "locations", ["geom"], postgresql_using="gist")
    op.execute(
        "CREATE INDEX locations_search_idx ON locations USING gin "
        "(to_tsvector('simple', name || ' ' || coalesce(description, '')))"
    )
    op.create_index("locations_category_idx", "locations", ["category"])
    op.create_index("locations_status_idx", "locations", ["status"])
    op.create_index("locations_created_at_idx", "locations", ["created_at"])
    for table, columns in (
        ("images", [sa.Column("url", sa.Text, nullable=False), sa.Column("owner", sa.Text, nullable=False)]),
        (
            "moderation_logs",
            [
                sa.Column("action", sa.Text, nullable=False),
                sa.Column("moderator", sa.Text, nullable=False),
                sa.Column("reason", sa.Text),
            ],
        ),
    ):
        op.create_table(
            table,
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column(
                "location_id",
                sa.BigInteger,
                sa.ForeignKey("locations.id", ondelete="CASCADE"),
                nullable=False,
            ),
            *columns,
            sa.Column(
                "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
            ),
        )
        # Named as in ../migrations (V5__indexes.sql), so the same queries' plans name them.
        op.create_index(f"{table}_location_id_idx", table, ["location_id"])


def downgrade() -> None:
    op.drop_table("moderation_logs")
    op.drop_table("images")
    op.drop_table("locations")
