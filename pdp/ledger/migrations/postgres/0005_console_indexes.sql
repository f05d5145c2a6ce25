-- Indexes for the read-only console (pdp/console/) and `aam audit query`: on a ledger of
-- a million rows every page reads a bounded range of an index, never the whole table.
--
-- The filters on the JSON body (reason, tool, model) read generated columns: derived
-- from the body by the database as each row is inserted (no second write, nothing the
-- PDP sends, the body and its hash chain untouched). body is text, so each expression
-- casts it to jsonb (jsonb_in is immutable, as is jsonb_path_query_array without a
-- timezone); every body the PDP writes is a JSON object (chain.canonical).
--
--   tool, model  action.tool / action.model, NULL when absent
--   reasons      every reason code of the row as a JSON array of strings
--                (["budget_exhausted"]), NULL for a row without reasons
--
-- Adding a STORED column rewrites the table once (an existing large ledger: expect the
-- migration to take as long as copying it). Each insert then parses the body three more
-- times and writes four more index entries (docs/benchmarks.md has the cost).
ALTER TABLE aam_audit
    ADD COLUMN tool text GENERATED ALWAYS AS ((body::jsonb -> 'action') ->> 'tool') STORED,
    ADD COLUMN model text GENERATED ALWAYS AS ((body::jsonb -> 'action') ->> 'model') STORED,
    ADD COLUMN reasons jsonb GENERATED ALWAYS AS (
        NULLIF(jsonb_path_query_array(body::jsonb, '$.reasons[*].code'), '[]'::jsonb)) STORED;

-- The newest rows of one workload / tool / model (WHERE x = ... ORDER BY seq DESC LIMIT n).
CREATE INDEX aam_audit_workload_seq ON aam_audit (workload, seq);
CREATE INDEX aam_audit_tool_seq ON aam_audit (tool, seq) WHERE tool IS NOT NULL;
CREATE INDEX aam_audit_model_seq ON aam_audit (model, seq) WHERE model IS NOT NULL;
-- Rows with a reason code (reasons ? 'code'): the planner knows from the column's
-- statistics how common a code is, so a rare one is read here and a common one by
-- walking the primary key from the newest row.
CREATE INDEX aam_audit_reasons ON aam_audit USING gin (reasons) WHERE reasons IS NOT NULL;
-- The denials of a time window, with their reason codes: the denials chart's
-- GROUP BY bucket, reasons reads this index only, once a VACUUM has marked the pages
-- all-visible. Autovacuum does that on an insert-only table too, by default after
-- inserts of 20% of its size (a fifth of the ledger read from the table instead);
-- here after 1%, a cheap VACUUM: it reads only pages not yet all-visible.
CREATE INDEX aam_audit_outcome_ts ON aam_audit (outcome, ts) INCLUDE (reasons);
ALTER TABLE aam_audit SET (autovacuum_vacuum_insert_scale_factor = 0.01);
