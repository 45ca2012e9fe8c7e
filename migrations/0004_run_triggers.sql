-- A sandbox's status follows its runs in the same statement: opening a run
-- marks the sandbox with the run's status, closing one with its final status.
-- One statement per transition instead of a multi-statement transaction.
CREATE TRIGGER run_opened AFTER INSERT ON run
BEGIN
    UPDATE sandbox SET status = NEW.status, updated_at = NEW.started_at WHERE id = NEW.sandbox_id;
END;

CREATE TRIGGER run_closed AFTER UPDATE OF terminated_at ON run
WHEN NEW.terminated_at IS NOT NULL AND OLD.terminated_at IS NULL
BEGIN
    UPDATE sandbox SET status = NEW.status, updated_at = NEW.terminated_at WHERE id = NEW.sandbox_id;
END;
