-- Every moderation decision on a location, kept with it.
CREATE TABLE moderation_logs (
    id          bigserial PRIMARY KEY,
    location_id bigint NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    action      text NOT NULL,
    moderator   text NOT NULL,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
