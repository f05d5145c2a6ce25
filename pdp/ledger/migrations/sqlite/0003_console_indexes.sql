-- Indexes for the read-only console (pdp/console/) and `aam audit query` (postgres
-- 0005_console_indexes.sql says why). The filters on the JSON body (reason, tool, model)
-- read VIRTUAL generated columns (SQLite 3.31+): computed from the body, stored only in
-- their indexes, no second write and the body and its chain untouched. Guarded by
-- json_valid, as the queries were, so an unreadable body is NULL, not a failed insert.
--
--   reason   the first reason code; reason_n the number of reasons (a row with more
--            than one is also searched by its other codes: pdp/ledger/types.py)
ALTER TABLE aam_audit ADD COLUMN tool TEXT GENERATED ALWAYS AS
    (CASE WHEN json_valid(body) THEN json_extract(body, '$.action.tool') END) VIRTUAL;
ALTER TABLE aam_audit ADD COLUMN model TEXT GENERATED ALWAYS AS
    (CASE WHEN json_valid(body) THEN json_extract(body, '$.action.model') END) VIRTUAL;
ALTER TABLE aam_audit ADD COLUMN reason TEXT GENERATED ALWAYS AS
    (CASE WHEN json_valid(body) THEN json_extract(body, '$.reasons[0].code') END) VIRTUAL;
ALTER TABLE aam_audit ADD COLUMN reason_n INTEGER GENERATED ALWAYS AS
    (CASE WHEN json_valid(body) AND json_type(body, '$.reasons') = 'array'
          THEN json_array_length(body, '$.reasons') ELSE 0 END) VIRTUAL;

CREATE INDEX aam_audit_workload_seq ON aam_audit (workload, seq);
CREATE INDEX aam_audit_tool_seq ON aam_audit (tool, seq) WHERE tool IS NOT NULL;
CREATE INDEX aam_audit_model_seq ON aam_audit (model, seq) WHERE model IS NOT NULL;
CREATE INDEX aam_audit_reason_seq ON aam_audit (reason, seq) WHERE reason IS NOT NULL;
CREATE INDEX aam_audit_reasons_more ON aam_audit (seq) WHERE reason_n > 1;
CREATE INDEX aam_audit_outcome_ts ON aam_audit (outcome, ts, reason, reason_n);
