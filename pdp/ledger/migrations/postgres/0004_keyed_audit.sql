-- The keyed audit chain (pdp/ledger/chain.py has the formula).
--
-- Until now aam_finish_many computed each row's hash in SQL with a public
-- formula, so a database superuser who disabled the triggers
-- (session_replication_role = replica) could rewrite a row and recompute every
-- later hash. Each new row's hash is now an HMAC-SHA256 under an audit key that
-- only the PDP holds; the PDP computes it in Python and sends the database the
-- result and the key's id, never the key. A batch is still one transaction and
-- one WAL flush:
--
--   BEGIN;
--   SELECT aam_prepare_many(items, mine);   -- reservations, releases, chain lock,
--                                           -- chain head, which rows exist already
--   INSERT INTO aam_audit ... ;             -- the rows, hashed by the PDP
--   COMMIT;                                 -- before any decision is answered
--
-- The chain lock (advisory class 3) is held from aam_prepare_many to COMMIT, so
-- no other writer can append between the head this batch chained to and its rows.
--
-- Existing rows keep key_id '' (legacy: the public SHA-256 formula; verify says
-- so); the first keyed row chains to the last legacy hash. New rows must carry a
-- key id: an older PDP still running aam_commit_many would write unkeyed rows, so
-- that function is dropped and the check refuses them (a guard against old
-- writers, not against a superuser, who can drop a constraint).

ALTER TABLE aam_audit ADD COLUMN key_id text NOT NULL DEFAULT '';
ALTER TABLE aam_audit ADD CONSTRAINT aam_audit_keyed CHECK (key_id <> '') NOT VALID;

DROP FUNCTION aam_commit_many(jsonb);
DROP FUNCTION aam_finish_many(boolean[], timestamptz[], text[], text[], text[], text[]);

-- Everything a batch does before its rows are chained. p_items is the JSON array
-- aam_commit_many took (0002), without the audit row fields: id, workload,
-- release, ask and the ask's route, cost, tokens, tz, limits and ttl_s.
-- p_mine is the seq of the newest row this PDP wrote or anchored (0: none);
-- the PDP checks the chain still holds it with the hash it wrote.
--
-- Locks in the one global order (workloads sorted, routes sorted, then the
-- chain), as before. Returns {"items": [{"admission": ..., "keep": bool}],
-- "seq": head seq, "hash": head hash, "mine": hash at p_mine or null,
-- "existing": {decision id: seq} for decisions already in the chain}.
CREATE FUNCTION aam_prepare_many(p_items jsonb, p_mine bigint) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_sync text := current_setting('synchronous_commit');
    v_key text;
    it record;
    v aam_reservations%ROWTYPE;
    v_adm jsonb;
    v_out jsonb := '[]';
    v_release text[] := '{}';
    v_ids text[] := '{}';
    v_seq bigint; v_hash text; v_mine text; v_seq_of bigint; v_existing jsonb := '{}';
BEGIN
    FOR v_key IN SELECT DISTINCT x ->> 'workload' FROM jsonb_array_elements(p_items) AS x
                 WHERE (x ->> 'ask')::boolean OR (x ->> 'release')::boolean ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(1, hashtext(v_key));
    END LOOP;
    FOR v_key IN SELECT DISTINCT x ->> 'route' FROM jsonb_array_elements(p_items) AS x
                 WHERE (x ->> 'ask')::boolean AND x ->> 'route' <> '' ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(2, hashtext(v_key));
    END LOOP;
    FOR it IN SELECT * FROM jsonb_to_recordset(p_items) AS x(
            id text, workload text, release boolean, ask boolean, route text, cost bigint,
            tokens bigint, tz text, daily bigint, monthly bigint, w_rpm bigint, w_tpm bigint,
            r_rpm bigint, r_tpm bigint, ttl_s float8)
    LOOP
        v_adm := NULL;
        IF it.ask THEN
            v_adm := aam_reserve(it.id, it.workload, it.route, it.cost, it.tokens, it.tz,
                                 it.daily, it.monthly, it.w_rpm, it.w_tpm, it.r_rpm, it.r_tpm,
                                 it.ttl_s);
        END IF;
        IF v_adm IS NULL OR (v_adm ->> 'reserved')::boolean THEN
            v_ids := v_ids || it.id;
            IF it.release THEN
                v_release := v_release || it.id;
            END IF;
        END IF;
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'admission', v_adm, 'keep', v_adm IS NULL OR (v_adm ->> 'reserved')::boolean));
    END LOOP;
    -- aam_reserve turns the WAL flush off for its own commit; this transaction
    -- carries audit rows and must be flushed before the PDP answers.
    PERFORM set_config('synchronous_commit', v_sync, true);
    IF cardinality(v_release) > 0 THEN
        FOR v IN SELECT r.* FROM aam_reservations r
                 WHERE r.decision_id = ANY (v_release) AND r.state = 'reserved'
                 ORDER BY r.workload, r.decision_id LOOP
            PERFORM pg_advisory_xact_lock(1, hashtext(v.workload));
            UPDATE aam_reservations SET state = 'released'
                WHERE decision_id = v.decision_id AND state = 'reserved';
            IF FOUND THEN
                UPDATE aam_budget_windows SET reserved_micro = reserved_micro - v.reserved_micro
                    WHERE workload = v.workload AND window_key IN (v.day_key, v.month_key);
                -- A denied call does not count against the rate.
                UPDATE aam_rate_buckets SET requests = requests - 1, tokens = tokens - v.tokens
                    WHERE sec = v.rate_second AND scope IN ('w:' || v.workload, 'r:' || v.route);
            END IF;
        END LOOP;
    END IF;
    PERFORM pg_advisory_xact_lock(3, 0);
    SELECT a.seq, a.hash INTO v_seq, v_hash FROM aam_audit a ORDER BY a.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        v_seq := 0; v_hash := repeat('0', 64);
    END IF;
    IF p_mine > 0 THEN
        SELECT a.hash INTO v_mine FROM aam_audit a WHERE a.seq = p_mine;
    END IF;
    -- One index probe per decision: an "= ANY (array)" plan cached while the table was
    -- small would scan the whole chain on every batch once it has grown (see 0003).
    FOREACH v_key IN ARRAY v_ids LOOP
        SELECT a.seq INTO v_seq_of FROM aam_audit a WHERE a.decision_id = v_key;
        IF FOUND THEN
            v_existing := v_existing || jsonb_build_object(v_key, v_seq_of);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('items', v_out, 'seq', v_seq, 'hash', v_hash, 'mine', v_mine,
                              'existing', v_existing);
END $$;
