-- Photos of a location; they go with it.
CREATE TABLE images (
    id          bigserial PRIMARY KEY,
    location_id bigint NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    url         text NOT NULL,
    owner       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
