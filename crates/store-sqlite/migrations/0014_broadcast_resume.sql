-- Resolving a broadcast survives the process that started it. The resolver holds a lease on
-- the row (`owner`, `lease_until`) and writes its place in the recipients (`position`) with
-- each batch, in the transaction that stores the batch; when a lease runs out, another
-- process takes the broadcast over from that place. `spec` is the request in the form the
-- resolver reads, `api_key_id` the key that sent it.
ALTER TABLE broadcasts ADD COLUMN spec TEXT;
ALTER TABLE broadcasts ADD COLUMN api_key_id BLOB;
ALTER TABLE broadcasts ADD COLUMN position TEXT;
ALTER TABLE broadcasts ADD COLUMN owner BLOB;
ALTER TABLE broadcasts ADD COLUMN lease_until INTEGER;
-- Messages canceled with the broadcast before they were sent.
ALTER TABLE broadcasts ADD COLUMN canceled INTEGER NOT NULL DEFAULT 0;

CREATE INDEX broadcasts_resolving ON broadcasts (lease_until) WHERE status = 'resolving';
