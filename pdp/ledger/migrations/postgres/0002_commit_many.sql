-- The decision hot path in one step: reserve for allowed decisions and chain
-- every audit row, batched by each PDP's audit writer into one transaction
-- committed (and flushed) before any of those decisions is answered.
--
-- p_items is a JSON array, one object per decision (one parameter: the PDP
-- encodes it in C instead of adapting eighteen arrays in Python):
--   id, workload, ts, outcome, body   its audit row;
--   release                           release its reservation first (a deny);
--   ask                               an allowed, metered call, with route,
--                                     cost, tokens, tz, daily, monthly, w_rpm,
--                                     w_tpm, r_rpm, r_tpm, ttl_s (limits null
--                                     when the policy sets none).
-- An ask is reserved with aam_reserve's atomic check; when the ledger refuses
-- it, that item writes nothing (no reservation, no audit row) and the PDP
-- decides it again on fresh state.
--
-- Locks are taken in one global order, every workload (class 1) sorted, then
-- every route (class 2) sorted, then the chain (class 3, in aam_finish_many),
-- so two batches, or a batch and aam_reserve / aam_settle, never wait in a
-- cycle. Returns one object per item: {"admission": aam_reserve's state or
-- null, "seq": audit sequence or null}.
CREATE FUNCTION aam_commit_many(p_items jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_sync text := current_setting('synchronous_commit');
    v_key text;
    it record;
    v_adm jsonb;
    v_admissions jsonb[] := '{}';
    v_keep boolean[] := '{}';
    v_release boolean[] := '{}'; v_ts timestamptz[] := '{}'; v_ids text[] := '{}';
    v_workloads text[] := '{}'; v_outcomes text[] := '{}'; v_bodies text[] := '{}';
    v_seqs bigint[];
    v_out jsonb := '[]';
    j integer := 0;
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
            id text, workload text, ts timestamptz, outcome text, body text, release boolean,
            ask boolean, route text, cost bigint, tokens bigint, tz text, daily bigint,
            monthly bigint, w_rpm bigint, w_tpm bigint, r_rpm bigint, r_tpm bigint, ttl_s float8)
    LOOP
        v_adm := NULL;
        IF it.ask THEN
            v_adm := aam_reserve(it.id, it.workload, it.route, it.cost, it.tokens, it.tz,
                                 it.daily, it.monthly, it.w_rpm, it.w_tpm, it.r_rpm, it.r_tpm,
                                 it.ttl_s);
        END IF;
        v_admissions := v_admissions || v_adm;
        v_keep := v_keep || (v_adm IS NULL OR (v_adm ->> 'reserved')::boolean);
        IF v_keep[array_upper(v_keep, 1)] THEN
            v_release := v_release || it.release; v_ts := v_ts || it.ts; v_ids := v_ids || it.id;
            v_workloads := v_workloads || it.workload; v_outcomes := v_outcomes || it.outcome;
            v_bodies := v_bodies || it.body;
        END IF;
    END LOOP;
    -- aam_reserve turns the WAL flush off for its own commit; this one carries
    -- audit rows and must be flushed before the PDP answers.
    PERFORM set_config('synchronous_commit', v_sync, true);
    v_seqs := aam_finish_many(v_release, v_ts, v_ids, v_workloads, v_outcomes, v_bodies);
    FOR i IN 1 .. coalesce(array_length(v_keep, 1), 0) LOOP
        IF v_keep[i] THEN
            j := j + 1;
        END IF;
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'admission', v_admissions[i], 'seq', CASE WHEN v_keep[i] THEN v_seqs[j] END));
    END LOOP;
    RETURN v_out;
END $$;
