-- The keyed audit chain (pdp/ledger/chain.py has the formula; postgres
-- 0004_keyed_audit.sql says why). Each row records the id of the audit key its
-- HMAC was computed under; rows written before this migration keep key_id ''
-- (legacy: the public SHA-256 formula) and the first keyed row chains to the
-- last of them. New rows must be keyed: a guard against an older PDP writing
-- unkeyed rows, not against someone who can edit the file.

ALTER TABLE aam_audit ADD COLUMN key_id TEXT NOT NULL DEFAULT '';

CREATE TRIGGER aam_audit_keyed BEFORE INSERT ON aam_audit WHEN NEW.key_id = ''
BEGIN SELECT RAISE(ABORT, 'aam_audit rows must be keyed (key_id)'); END;
