-- The sandbox's user-namespace id range (issue 13): slot n maps ids 0..65536
-- inside to host ids 0x40000000 + n * 65536 onward. NULL without a user
-- namespace. Allocated lowest-free when the sandbox is created (or first
-- started, for sandboxes created before this migration), kept across runs,
-- freed with the row. Slot 49151 would reach host id 4294967295, which is
-- no id at all: 49,151 slots.
ALTER TABLE sandbox ADD COLUMN id_slot INTEGER CHECK (id_slot BETWEEN 0 AND 49150);
CREATE UNIQUE INDEX sandbox_by_id_slot ON sandbox (id_slot);
