-- Budgets with reservations, rate windows and the hash-chained audit log.
-- Money is bigint micro-dollars so sums are exact. Every function serialises
-- per workload (and per route) with transaction-scoped advisory locks:
-- class 1 = workload, 2 = model route, 3 = the audit chain.

CREATE TABLE aam_reservations (
    decision_id    text PRIMARY KEY,
    workload       text NOT NULL,
    route          text NOT NULL DEFAULT '',
    day_key        text NOT NULL,
    month_key      text NOT NULL,
    reserved_micro bigint NOT NULL CHECK (reserved_micro >= 0),
    tokens         bigint NOT NULL DEFAULT 0,
    cost_micro     bigint,
    state          text NOT NULL CHECK (state IN ('reserved', 'settled', 'released', 'expired')),
    created_at     timestamptz NOT NULL,
    rate_second    bigint NOT NULL,  -- the aam_rate_buckets second it was counted in
    expires_at     timestamptz NOT NULL,
    settled_at     timestamptz
);
CREATE INDEX aam_reservations_open ON aam_reservations (workload, expires_at) WHERE state = 'reserved';

CREATE TABLE aam_budget_windows (
    workload       text NOT NULL,
    window_key     text NOT NULL,  -- 'd:2026-11-26' or 'm:2026-11' in the policy's time zone
    spent_micro    bigint NOT NULL DEFAULT 0,
    reserved_micro bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (workload, window_key)
);

-- Sliding one-minute rate windows in one-second buckets: a window is at most
-- 60 rows however high the rate. scope is 'w:<workload>' or 'r:<model route>'.
CREATE TABLE aam_rate_buckets (
    scope    text NOT NULL,
    sec      bigint NOT NULL,  -- unix time, whole seconds
    requests bigint NOT NULL DEFAULT 0,
    tokens   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, sec)
);

CREATE TABLE aam_audit (
    seq         bigint PRIMARY KEY,
    ts          timestamptz NOT NULL,
    decision_id text NOT NULL UNIQUE,
    workload    text NOT NULL,
    outcome     text NOT NULL,
    body        text NOT NULL,
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);
CREATE INDEX aam_audit_workload_ts ON aam_audit (workload, ts);
CREATE INDEX aam_audit_ts ON aam_audit (ts);

-- Append-only even for the table owner; the PDP's role gets no UPDATE/DELETE grant either.
CREATE FUNCTION aam_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'aam_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER aam_audit_no_update BEFORE UPDATE OR DELETE ON aam_audit
    FOR EACH ROW EXECUTE FUNCTION aam_audit_immutable();
CREATE TRIGGER aam_audit_no_truncate BEFORE TRUNCATE ON aam_audit
    FOR EACH STATEMENT EXECUTE FUNCTION aam_audit_immutable();
REVOKE UPDATE, DELETE, TRUNCATE ON aam_audit FROM PUBLIC;

-- Requests and tokens of the last 60 s (this second and the 59 before) for one
-- scope, and the seconds until the oldest of them leaves the window.
CREATE FUNCTION aam_rate(p_scope text, p_second bigint, p_now timestamptz)
RETURNS TABLE (requests bigint, tokens bigint, retry_after_s double precision)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(b.requests), 0)::bigint, coalesce(sum(b.tokens), 0)::bigint,
           coalesce(greatest(0, min(b.sec) FILTER (WHERE b.requests > 0) + 60
                                - extract(epoch FROM p_now))::float8, 0)
    FROM aam_rate_buckets b WHERE b.scope = p_scope AND b.sec > p_second - 60
$$;

-- Count one admitted call (or, with negative deltas, take one back).
CREATE FUNCTION aam_rate_add(p_scope text, p_second bigint, p_requests bigint, p_tokens bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO aam_rate_buckets AS b (scope, sec, requests, tokens)
        VALUES (p_scope, p_second, p_requests, p_tokens)
        ON CONFLICT (scope, sec) DO UPDATE
        SET requests = b.requests + EXCLUDED.requests, tokens = b.tokens + EXCLUDED.tokens
$$;

-- Read budget and rate state and, when every limit allows, reserve: one round trip.
-- Limits are NULL when the policy sets none. Returns the state before this reservation.
CREATE FUNCTION aam_reserve(
    p_decision_id text, p_workload text, p_route text, p_cost bigint, p_tokens bigint,
    p_tz text, p_daily bigint, p_monthly bigint,
    p_w_rpm bigint, p_w_tpm bigint, p_r_rpm bigint, p_r_tpm bigint, p_ttl_s float8
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := clock_timestamp();
    v_sec   bigint := floor(extract(epoch FROM v_now))::bigint;
    v_local timestamp := v_now AT TIME ZONE p_tz;
    v_day   text := 'd:' || to_char(v_local, 'YYYY-MM-DD');
    v_month text := 'm:' || to_char(v_local, 'YYYY-MM');
    d_spent bigint := 0; d_res bigint := 0; m_spent bigint := 0; m_res bigint := 0;
    w record; r record; e record;
    v_ok boolean;
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
    SELECT b.spent_micro, b.reserved_micro INTO d_spent, d_res
        FROM aam_budget_windows b WHERE b.workload = p_workload AND b.window_key = v_day;
    SELECT b.spent_micro, b.reserved_micro INTO m_spent, m_res
        FROM aam_budget_windows b WHERE b.workload = p_workload AND b.window_key = v_month;
    d_spent := coalesce(d_spent, 0); d_res := coalesce(d_res, 0);
    m_spent := coalesce(m_spent, 0); m_res := coalesce(m_res, 0);
    DELETE FROM aam_rate_buckets WHERE scope = 'w:' || p_workload AND sec <= v_sec - 60;
    SELECT * INTO w FROM aam_rate('w:' || p_workload, v_sec, v_now);
    IF p_route <> '' THEN
        DELETE FROM aam_rate_buckets WHERE scope = 'r:' || p_route AND sec <= v_sec - 60;
        SELECT * INTO r FROM aam_rate('r:' || p_route, v_sec, v_now);
    ELSE
        SELECT 0::bigint AS requests, 0::bigint AS tokens, 0::float8 AS retry_after_s INTO r;
    END IF;
    v_ok := (p_daily IS NULL OR d_spent + d_res + p_cost <= p_daily)
        AND (p_monthly IS NULL OR m_spent + m_res + p_cost <= p_monthly)
        AND (p_w_rpm IS NULL OR w.requests < p_w_rpm)
        AND (p_w_tpm IS NULL OR w.tokens + p_tokens <= p_w_tpm)
        AND (p_r_rpm IS NULL OR r.requests < p_r_rpm)
        AND (p_r_tpm IS NULL OR r.tokens + p_tokens <= p_r_tpm);
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
        PERFORM aam_rate_add('w:' || p_workload, v_sec, 1, p_tokens);
        IF p_route <> '' THEN
            PERFORM aam_rate_add('r:' || p_route, v_sec, 1, p_tokens);
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
        'w_requests', w.requests, 'w_tokens', w.tokens, 'w_retry_s', w.retry_after_s,
        'r_requests', r.requests, 'r_tokens', r.tokens, 'r_retry_s', r.retry_after_s);
END $$;

-- Settle with the actual cost. Idempotent: only a 'reserved' or 'expired' row changes.
-- A non-empty p_owner finds only that workload's decisions.
CREATE FUNCTION aam_settle(p_decision_id text, p_tokens bigint, p_cost bigint, p_owner text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v aam_reservations%ROWTYPE;
BEGIN
    SELECT * INTO v FROM aam_reservations WHERE decision_id = p_decision_id;
    IF NOT FOUND OR (p_owner <> '' AND v.workload <> p_owner) THEN
        RETURN 'unknown';
    END IF;
    PERFORM pg_advisory_xact_lock(1, hashtext(v.workload));
    SELECT * INTO v FROM aam_reservations WHERE decision_id = p_decision_id FOR UPDATE;
    IF v.state IN ('settled', 'released') THEN
        RETURN v.state;
    END IF;
    UPDATE aam_budget_windows
        SET spent_micro = spent_micro + p_cost,
            reserved_micro = reserved_micro - CASE WHEN v.state = 'reserved' THEN v.reserved_micro ELSE 0 END
        WHERE workload = v.workload AND window_key IN (v.day_key, v.month_key);
    UPDATE aam_reservations SET state = 'settled', cost_micro = p_cost, tokens = p_tokens,
                                settled_at = clock_timestamp()
        WHERE decision_id = p_decision_id;
    -- The rate window counts actual tokens from now on (a no-op once it has moved on).
    UPDATE aam_rate_buckets SET tokens = tokens + (p_tokens - v.tokens)
        WHERE sec = v.rate_second AND scope IN ('w:' || v.workload, 'r:' || v.route);
    RETURN 'applied';
END $$;

-- End of decisions, batched by each PDP's audit writer: release the
-- reservations of denied ones, then chain their audit rows, all in one
-- transaction committed before any of those decisions is answered.
-- Releases go first and in workload order, and the chain lock is taken last,
-- so two batches never wait on each other in a cycle. Idempotent per decision.
CREATE FUNCTION aam_finish_many(
    p_release boolean[], p_ts timestamptz[], p_ids text[], p_workloads text[],
    p_outcomes text[], p_bodies text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v aam_reservations%ROWTYPE;
    v_out bigint[] := '{}';
    v_seq bigint; v_prev text; v_hash text; v_existing bigint;
BEGIN
    FOR v IN SELECT r.* FROM aam_reservations r
             JOIN unnest(p_ids, p_release) AS u(id, rel) ON r.decision_id = u.id
             WHERE u.rel AND r.state = 'reserved' ORDER BY r.workload, r.decision_id LOOP
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
