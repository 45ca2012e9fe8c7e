-- Health checks (issue 18). On each run: its health and its latest check
-- results, as JSON {status, failing_streak, log: [{start, end, exit_code,
-- signal, timed_out, output}]} (at most 5 results, 4 KiB of output each);
-- NULL when the sandbox has no health check (or the run predates it).
ALTER TABLE run ADD COLUMN health TEXT;
