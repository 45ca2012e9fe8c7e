-- The control socket of the runtime that hosts (last started) a sandbox, so
-- that another process can reach that runtime to act on the running sandbox.
ALTER TABLE sandbox ADD COLUMN control_socket TEXT;
