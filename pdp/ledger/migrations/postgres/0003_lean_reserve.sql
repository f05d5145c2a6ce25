-- The decision hot path with fewer statements, and without a scan that grew
-- with history.
--
-- aam_finish_many looked up the reservations to release with a join that
-- PL/pgSQL's cached plan could run as a sequential scan of aam_reservations.
-- That table keeps every settled row, so each audit batch cost more as the
-- ledger aged: about 0.5 ms of PostgreSQL CPU per batch on an empty ledger,
-- 2.2 ms with 3,000 reservations. It now runs only when a batch releases
-- something, and looks the rows up by primary key.
--
-- aam_reserve keeps its contract (arguments, atomic check, returned state) and
-- takes 9 statements instead of 14 and four nested function calls:
--   - both budget windows are read in one statement, both rate scopes in another;
--   - both rate buckets are counted in one upsert;
--   - buckets that have left the one-minute window are pruned when a scope
--     opens a new second, not on every call. Readers only count
--     sec > now - 60, so pruning bounds the table; it does not change an answer.
CREATE OR REPLACE FUNCTION aam_reserve(
    p_decision_id text, p_workload text, p_route text, p_cost bigint, p_tokens bigint,
    p_tz text, p_daily bigint, p_monthly bigint,
    p_w_rpm bigint, p_w_tpm bigint, p_r_rpm bigint, p_r_tpm bigint, p_ttl_s float8
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_epoch  float8 := extract(epoch FROM v_now);
    v_sec    bigint := floor(v_epoch)::bigint;
    v_local  timestamp := v_now AT TIME ZONE p_tz;
    v_day    text := 'd:' || to_char(v_local, 'YYYY-MM-DD');
    v_month  text := 'm:' || to_char(v_local, 'YYYY-MM');
    v_wscope text := 'w:' || p_workload;
    -- NULL without a route: "scope IN (v_wscope, NULL)" then matches the workload only.
    v_rscope text := CASE WHEN p_route <> '' THEN 'r:' || p_route END;
    d_spent bigint; d_res bigint; m_spent bigint; m_res bigint;
    w_req bigint; w_tok bigint; w_retry float8;
    r_req bigint; r_tok bigint; r_retry float8;
    e record;
    v_ok boolean;
    v_opened integer := 0;
BEGIN
    -- No WAL flush of its own: the audit commit that follows (before the PDP
    -- answers) flushes this record too, so one fsync serves the decision.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(1, hashtext(p_workload));
    IF p_route <> '' THEN
        PERFORM pg_advisory_xact_lock(2, hashtext(p_route));
    END IF;
    FOR e IN UPDATE aam_reservations SET state = 'expired'
             WHERE workload = p_workload AND state = 'reserved' AND expires_at <= v_now
             RETURNING day_key, month_key, reserved_micro LOOP
        UPDATE aam_budget_windows SET reserved_micro = reserved_micro - e.reserved_micro
        WHERE workload = p_workload AND window_key IN (e.day_key, e.month_key);
    END LOOP;
    SELECT coalesce(sum(b.spent_micro) FILTER (WHERE b.window_key = v_day), 0),
           coalesce(sum(b.reserved_micro) FILTER (WHERE b.window_key = v_day), 0),
           coalesce(sum(b.spent_micro) FILTER (WHERE b.window_key = v_month), 0),
           coalesce(sum(b.reserved_micro) FILTER (WHERE b.window_key = v_month), 0)
        INTO d_spent, d_res, m_spent, m_res
        FROM aam_budget_windows b
        WHERE b.workload = p_workload AND b.window_key IN (v_day, v_month);
    -- Requests and tokens of the last 60 s (this second and the 59 before) per
    -- scope, and the seconds until the oldest of them leaves the window.
    SELECT coalesce(sum(b.requests) FILTER (WHERE b.scope = v_wscope), 0)::bigint,
           coalesce(sum(b.tokens) FILTER (WHERE b.scope = v_wscope), 0)::bigint,
           coalesce(greatest(0, min(b.sec) FILTER (WHERE b.scope = v_wscope AND b.requests > 0)
                                + 60 - v_epoch)::float8, 0),
           coalesce(sum(b.requests) FILTER (WHERE b.scope = v_rscope), 0)::bigint,
           coalesce(sum(b.tokens) FILTER (WHERE b.scope = v_rscope), 0)::bigint,
           coalesce(greatest(0, min(b.sec) FILTER (WHERE b.scope = v_rscope AND b.requests > 0)
                                + 60 - v_epoch)::float8, 0)
        INTO w_req, w_tok, w_retry, r_req, r_tok, r_retry
        FROM aam_rate_buckets b
        WHERE b.scope IN (v_wscope, v_rscope) AND b.sec > v_sec - 60;
    v_ok := (p_daily IS NULL OR d_spent + d_res + p_cost <= p_daily)
        AND (p_monthly IS NULL OR m_spent + m_res + p_cost <= p_monthly)
        AND (p_w_rpm IS NULL OR w_req < p_w_rpm)
        AND (p_w_tpm IS NULL OR w_tok + p_tokens <= p_w_tpm)
        AND (p_r_rpm IS NULL OR r_req < p_r_rpm)
        AND (p_r_tpm IS NULL OR r_tok + p_tokens <= p_r_tpm);
    IF v_ok THEN
        INSERT INTO aam_budget_windows AS b (workload, window_key, reserved_micro)
            VALUES (p_workload, v_day, p_cost), (p_workload, v_month, p_cost)
            ON CONFLICT (workload, window_key)
            DO UPDATE SET reserved_micro = b.reserved_micro + EXCLUDED.reserved_micro;
        INSERT INTO aam_reservations (decision_id, workload, route, day_key, month_key,
                                      reserved_micro, tokens, state, created_at, rate_second,
                                      expires_at)
            VALUES (p_decision_id, p_workload, p_route, v_day, v_month, p_cost, p_tokens,
                    'reserved', v_now, v_sec, v_now + p_ttl_s * interval '1 second');
        -- xmax = 0 on an upserted row means it was inserted: this scope opened a second.
        WITH counted AS (
            INSERT INTO aam_rate_buckets AS b (scope, sec, requests, tokens)
                SELECT s, v_sec, 1, p_tokens FROM unnest(ARRAY[v_wscope, v_rscope]) AS s
                WHERE s IS NOT NULL
                ON CONFLICT (scope, sec) DO UPDATE
                SET requests = b.requests + EXCLUDED.requests, tokens = b.tokens + EXCLUDED.tokens
                RETURNING (b.xmax = 0) AS opened)
        SELECT count(*) FILTER (WHERE opened) INTO v_opened FROM counted;
        IF v_opened > 0 THEN
            DELETE FROM aam_rate_buckets WHERE scope IN (v_wscope, v_rscope) AND sec <= v_sec - 60;
        END IF;
    END IF;
    RETURN jsonb_build_object(
        'reserved', v_ok,
        'day', substr(v_day, 3), 'day_spent', d_spent, 'day_reserved', d_res,
        'day_resets_s', extract(epoch FROM ((date_trunc('day', v_local) + interval '1 day')
                                            AT TIME ZONE p_tz) - v_now),
        'month', substr(v_month, 3), 'month_spent', m_spent, 'month_reserved', m_res,
        'month_resets_s', extract(epoch FROM ((date_trunc('month', v_local) + interval '1 month')
                                              AT TIME ZONE p_tz) - v_now),
        'w_requests', w_req, 'w_tokens', w_tok, 'w_retry_s', w_retry,
        'r_requests', r_req, 'r_tokens', r_tok, 'r_retry_s', r_retry);
END $$;

DROP FUNCTION aam_rate(text, bigint, timestamptz);
DROP FUNCTION aam_rate_add(text, bigint, bigint, bigint);

CREATE OR REPLACE FUNCTION aam_finish_many(
    p_release boolean[], p_ts timestamptz[], p_ids text[], p_workloads text[],
    p_outcomes text[], p_bodies text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v aam_reservations%ROWTYPE;
    v_release text[] := ARRAY(SELECT u.id FROM unnest(p_ids, p_release) AS u(id, rel) WHERE u.rel);
    v_out bigint[] := '{}';
    v_seq bigint; v_prev text; v_hash text; v_existing bigint;
BEGIN
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
    SELECT a.seq, a.hash INTO v_seq, v_prev FROM aam_audit a ORDER BY a.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        v_seq := 0; v_prev := repeat('0', 64);
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT a.seq INTO v_existing FROM aam_audit a WHERE a.decision_id = p_ids[i];
        IF FOUND THEN
            v_out := v_out || v_existing;
            CONTINUE;
        END IF;
        v_seq := v_seq + 1;
        v_hash := encode(sha256(convert_to(v_prev || E'\n' || v_seq::text || E'\n' || p_bodies[i],
                                           'UTF8')), 'hex');
        INSERT INTO aam_audit (seq, ts, decision_id, workload, outcome, body, prev_hash, hash)
            VALUES (v_seq, p_ts[i], p_ids[i], p_workloads[i], p_outcomes[i], p_bodies[i], v_prev, v_hash);
        v_prev := v_hash;
        v_out := v_out || v_seq;
    END LOOP;
    RETURN v_out;
END $$;
