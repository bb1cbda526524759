-- Nearby and bounding-box searches (ST_DWithin, &&, <->).
CREATE INDEX locations_geom_idx ON locations USING gist (geom);

-- Full-text search over name and description; queries must use the same expression:
--   to_tsvector('simple', name || ' ' || coalesce(description, '')) @@ plainto_tsquery('simple', $1)
CREATE INDEX locations_search_idx ON locations
    USING gin (to_tsvector('simple', name || ' ' || coalesce(description, '')));

-- Filters and sorting of lists.
CREATE INDEX locations_category_idx ON locations (category);
CREATE INDEX locations_status_idx ON locations (status);
CREATE INDEX locations_created_at_idx ON locations (created_at);

-- Foreign keys: the cascade from locations and the joins.
CREATE INDEX images_location_id_idx ON images (location_id);
CREATE INDEX moderation_logs_location_id_idx ON moderation_logs (location_id);
