-- Restart policies (issue 18). On each run: how many restarts by the policy
-- came before it since a user started the sandbox (0: that start), and why
-- the policy did not follow it with another (NULL: one followed, or the
-- sandbox has no policy). On the sandbox: the restart waiting for its
-- backoff delay while the status is Starting, as JSON {attempt, delay, at};
-- NULL when none waits.
ALTER TABLE run ADD COLUMN restart_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run ADD COLUMN restart_end TEXT;
ALTER TABLE sandbox ADD COLUMN restart_pending TEXT;
