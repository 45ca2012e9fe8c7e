-- Start time (clock ticks since boot) of the run's PID 1, so that
-- reconciliation never kills a process that merely reuses its pid.
ALTER TABLE run ADD COLUMN pid_start_ticks INTEGER;
