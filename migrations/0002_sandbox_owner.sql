-- The host process that last claimed a sandbox (inserted or started it), so
-- that reconciliation can tell a sandbox still starting under a live host
-- from one left behind by a dead host.
ALTER TABLE sandbox ADD COLUMN owner_pid INTEGER;
ALTER TABLE sandbox ADD COLUMN owner_start_ticks INTEGER;
