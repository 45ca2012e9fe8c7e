-- Images (issue 15, SPEC §8). The unpacked layers live under
-- <home>/images/layers/sha256/<hex of the diff id>/; these rows say which
-- images exist, what their layers are and which names point at them.

-- One unpacked layer, by the digest of its uncompressed tar (its diff id).
CREATE TABLE layer (
    diff_id     TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL     -- bytes of the files unpacked
);

-- One image, by the digest of its config (docker's image id).
CREATE TABLE image (
    id          TEXT    PRIMARY KEY,
    manifest    TEXT,                -- digest of the manifest it came with
    config      TEXT    NOT NULL,    -- the config JSON, digest-verified
    layers      TEXT    NOT NULL,    -- JSON array of diff ids, base first
    size        INTEGER NOT NULL,    -- sum of its layers' sizes
    created_at  TEXT    NOT NULL     -- when it was stored here
);

-- Names of images: "registry/repository:tag" or "registry/repository@digest".
CREATE TABLE image_ref (
    reference   TEXT    PRIMARY KEY,
    image_id    TEXT    NOT NULL REFERENCES image(id) ON DELETE CASCADE
);
CREATE INDEX image_ref_by_image ON image_ref (image_id);

-- The image a sandbox was created from (its lower layers): an image in use
-- cannot be removed.
ALTER TABLE sandbox ADD COLUMN image_id TEXT REFERENCES image(id);
CREATE INDEX sandbox_by_image ON sandbox (image_id);
