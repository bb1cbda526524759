-- Places users add; every new one waits for a moderator ('pending').
CREATE TABLE locations (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    description text,
    category    text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CONSTRAINT locations_status_check
                CHECK (status IN ('pending', 'approved', 'rejected')),
    owner       text NOT NULL,
    geom        geometry(Point, 4326) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
