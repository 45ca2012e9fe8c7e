-- Sandboxes and their runs (SPEC §5). Times are RFC 3339 UTC text.
CREATE TABLE sandbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    config      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE run (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id          INTEGER NOT NULL REFERENCES sandbox(id) ON DELETE CASCADE,
    pid                 INTEGER NOT NULL,
    status              TEXT    NOT NULL,
    exit_code           INTEGER,
    exit_signal         INTEGER,
    termination_reason  TEXT,
    started_at          TEXT    NOT NULL,
    terminated_at       TEXT,
    -- The host process that owns the run, so that a later runtime can tell a
    -- live owner (leave it alone) from a dead one (reconcile).
    host_pid            INTEGER NOT NULL,
    host_start_ticks    INTEGER NOT NULL
);

CREATE INDEX run_by_sandbox ON run (sandbox_id, id);
