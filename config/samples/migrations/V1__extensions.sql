-- PostGIS: the geometry type, its GIST operator classes and geometry_columns.
CREATE EXTENSION IF NOT EXISTS postgis;
