-- Issue 16: the steps of two-phase and cross-shard transfers in batches.
--
-- In 008 every reservation, resolution and inbound application was a database
-- transaction of its own around a post_batch of one request. Each paid post_batch's fixed
-- cost (about 1.2-2.4 ms of CPU) and a commit, and all of them took turns on one row: a
-- shard's holding account (every reservation and resolution moves it) or a clearing
-- account (every inbound application moves it), whose lock is held until the commit is
-- flushed. So a shard completed a few hundred steps a second whatever the load. The
-- functions below take a batch of each step, judge each request as 008 did, and post the
-- batch's movements with ONE call to post_batch: one commit, and each hot row written
-- once per commit, as for plain transfers. The service's batcher feeds them (one lane per
-- kind of step: ledger/batcher).
--
-- 008's single-request functions keep their signatures for the previous release's
-- service and become calls of these with one request, so each rule is written once.
-- Only functions change here, so this migration runs in one transaction. Like post_batch,
-- each function looks rows up by key only (no sequential scan, whose cost grows with the
-- tables: the planner cannot tell how few keys an array argument holds) and is never
-- JIT-compiled (a compile costs more than any batch).

-- The outcomes of the batch's keys already used, one row per such request: the same
-- request replays, a different one is 409. The records are locked in (caller, key) order,
-- the order post_batch claims keys in, and touched so that this commit waits for the
-- synchronous standbys (post_batch step 5).
CREATE OR REPLACE FUNCTION tally.replay_batch(p_callers text[], p_keys text[], p_hashes bytea[])
RETURNS TABLE (req integer, status smallint, body text, replayed boolean, transaction_id uuid)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
DECLARE
  rec record;
  v_s smallint;
  v_b text;
BEGIN
  UPDATE tally.idempotency_keys s SET status = s.status
  FROM (SELECT k.caller, k.key FROM tally.idempotency_keys k
        JOIN unnest(p_callers, p_keys) u(c, kk) ON k.caller = u.c AND k.key = u.kk
        ORDER BY k.caller, k.key
        FOR UPDATE OF k) l
  WHERE s.caller = l.caller AND s.key = l.key;
  FOR rec IN
    SELECT u.i, u.kk, k.request_hash = u.h AS same, k.status AS s, k.body AS b, k.transaction_id AS tx
    FROM unnest(p_callers, p_keys, p_hashes) WITH ORDINALITY u(c, kk, h, i)
    JOIN tally.idempotency_keys k ON k.caller = u.c AND k.key = u.kk
  LOOP
    IF rec.same THEN
      RETURN QUERY SELECT rec.i::integer, rec.s, rec.b, true, rec.tx;
    ELSE
      SELECT * INTO v_s, v_b FROM tally.problem('idempotency_key_reused',
        format('Idempotency-Key %s was first used with a different request', to_json(rec.kk)));
      RETURN QUERY SELECT rec.i::integer, v_s, v_b, false, NULL::uuid;
    END IF;
  END LOOP;
END
$$;

-- Records refusals under keys replay_batch found unused. A request with one of these keys
-- that took it meanwhile fails this batch with serialization_failure: the store retries
-- it, and the replays then answer.
CREATE OR REPLACE FUNCTION tally.record_refusals(p_callers text[], p_keys text[], p_hashes bytea[],
  p_status smallint[], p_bodies text[])
RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
DECLARE
  v_n integer;
BEGIN
  IF cardinality(p_callers) = 0 THEN
    RETURN;
  END IF;
  WITH ins AS (
    INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, body)
    SELECT * FROM unnest(p_callers, p_keys, p_hashes, p_status, p_bodies) u(c, k, h, s, b) ORDER BY u.c, u.k
    ON CONFLICT (caller, key) DO NOTHING
    RETURNING 1)
  SELECT count(*) INTO v_n FROM ins;
  IF v_n <> cardinality(p_callers) THEN
    RAISE EXCEPTION 'tally: an idempotency key of this batch was taken meanwhile' USING ERRCODE = 'serialization_failure';
  END IF;
END
$$;

-- Reservations (see 008's tally.reserve, now a call of this): each request reserves
-- p_amount from p_from for p_to, or for p_remote on another shard through this shard's
-- clearing account for it. Destinations are share-locked, in id order, so none can close
-- before its record exists.
CREATE OR REPLACE FUNCTION tally.reserve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[],
  p_created timestamptz[], p_metadata jsonb[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[],
  p_expires timestamptz[], p_holding_ids uuid[], p_remote uuid[], p_clearing_ids uuid[])
RETURNS TABLE (req integer, status smallint, body text, replayed boolean, transaction_id uuid)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
DECLARE
  n          integer := cardinality(p_callers);
  v_shard    integer := (SELECT s.shard_index FROM tally.shard s);
  o_status   smallint[];
  o_body     text[];
  o_replayed boolean[];
  o_tx       uuid[];
  v_to       uuid[];
  v_holding  uuid;
  v_acct     record;
  v_code     text;
  v_detail   text;
  v_s        smallint;
  v_b        text;
  rec        record;
  -- refusals to record
  f_callers  text[] := '{}';
  f_keys     text[] := '{}';
  f_hashes   bytea[] := '{}';
  f_status   smallint[] := '{}';
  f_bodies   text[] := '{}';
  -- the accepted requests (g_req: their positions here) and post_batch's arguments
  g_req      integer[] := '{}';
  g_callers  text[] := '{}';
  g_keys     text[] := '{}';
  g_hashes   bytea[] := '{}';
  g_ids      uuid[] := '{}';
  g_created  timestamptz[] := '{}';
  g_meta     jsonb[] := '{}';
  g_from     uuid[] := '{}';
  g_holding  uuid[] := '{}';
  g_amount   bigint[] := '{}';
  g_asset    text[] := '{}';
BEGIN
  IF n IS NULL OR n < 1 OR n > 1000
     OR cardinality(p_keys) IS DISTINCT FROM n OR cardinality(p_hashes) IS DISTINCT FROM n
     OR cardinality(p_ids) IS DISTINCT FROM n OR cardinality(p_created) IS DISTINCT FROM n
     OR cardinality(p_metadata) IS DISTINCT FROM n OR cardinality(p_from) IS DISTINCT FROM n
     OR cardinality(p_to) IS DISTINCT FROM n OR cardinality(p_amount) IS DISTINCT FROM n
     OR cardinality(p_asset) IS DISTINCT FROM n OR cardinality(p_expires) IS DISTINCT FROM n
     OR cardinality(p_holding_ids) IS DISTINCT FROM n OR cardinality(p_remote) IS DISTINCT FROM n
     OR cardinality(p_clearing_ids) IS DISTINCT FROM n
     OR (SELECT count(DISTINCT (c, k)) FROM unnest(p_callers, p_keys) u(c, k)) <> n THEN
    RAISE EXCEPTION 'tally: reserve_batch needs 1 to 1000 requests, equal-length arrays and distinct keys'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM unnest(p_remote, p_expires, p_created, p_amount) u(r, e, c, a)
             WHERE (r IS NOT NULL AND (tally.id_shard(r) = v_shard OR e IS NOT NULL)) OR e <= c OR a IS NULL OR a <= 0) THEN
    RAISE EXCEPTION 'tally: a reservation needs a positive amount and an expiry after it is made; one to another shard names an account there and never expires'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('tally.moving_holds', 'on', true);
  o_status := array_fill(NULL::smallint, ARRAY[n]);
  o_body := array_fill(NULL::text, ARRAY[n]);
  o_replayed := array_fill(false, ARRAY[n]);
  o_tx := array_fill(NULL::uuid, ARRAY[n]);
  FOR rec IN SELECT * FROM tally.replay_batch(p_callers, p_keys, p_hashes) LOOP
    o_status[rec.req] := rec.status;
    o_body[rec.req] := rec.body;
    o_replayed[rec.req] := rec.replayed;
    o_tx[rec.req] := rec.transaction_id;
  END LOOP;

  v_to := p_to;
  FOR i IN 1 .. n LOOP
    IF o_status[i] IS NULL AND p_remote[i] IS NOT NULL THEN
      v_to[i] := tally.clearing_account(p_asset[i], tally.id_shard(p_remote[i]), p_clearing_ids[i]);
    END IF;
  END LOOP;
  PERFORM FROM tally.accounts a WHERE a.id IN (SELECT unnest(v_to)) ORDER BY a.id FOR SHARE;

  FOR i IN 1 .. n LOOP
    CONTINUE WHEN o_status[i] IS NOT NULL;
    v_code := NULL;
    SELECT a.status, a.asset, a.kind INTO v_acct FROM tally.accounts a WHERE a.id = v_to[i];
    IF v_to[i] IS NULL AND p_remote[i] IS NOT NULL THEN
      v_code := 'asset_mismatch';
      v_detail := format('asset %s is not registered', p_asset[i]);
    ELSIF NOT FOUND OR (v_acct.kind IN ('holding', 'clearing') AND p_remote[i] IS NULL) THEN
      v_code := 'account_not_found';
      v_detail := format('account %s does not exist', p_to[i]);
    ELSIF v_to[i] = p_from[i] THEN
      v_code := 'same_account';
      v_detail := format('the transfer moves money from account %s to itself', p_from[i]);
    ELSIF v_acct.status IN ('closed', 'frozen') THEN
      v_code := 'account_' || v_acct.status;
      v_detail := format('account %s is %s', v_to[i], v_acct.status);
    ELSIF v_acct.asset <> p_asset[i] THEN
      v_code := 'asset_mismatch';
      v_detail := format('the transfer is in %s but account %s holds %s', p_asset[i], v_to[i], v_acct.asset);
    ELSE
      v_holding := tally.holding_account(p_asset[i], p_holding_ids[i]);
      IF v_holding IS NULL THEN
        v_code := 'asset_mismatch';
        v_detail := format('asset %s is not registered', p_asset[i]);
      END IF;
    END IF;
    IF v_code IS NOT NULL THEN
      SELECT * INTO v_s, v_b FROM tally.problem(v_code, v_detail);
      o_status[i] := v_s;
      o_body[i] := v_b;
      f_callers := f_callers || p_callers[i];
      f_keys := f_keys || p_keys[i];
      f_hashes := f_hashes || p_hashes[i];
      f_status := f_status || v_s;
      f_bodies := f_bodies || v_b;
      CONTINUE;
    END IF;
    g_req := g_req || i;
    g_callers := g_callers || p_callers[i];
    g_keys := g_keys || p_keys[i];
    g_hashes := g_hashes || p_hashes[i];
    g_ids := g_ids || p_ids[i];
    g_created := g_created || p_created[i];
    g_meta := g_meta || p_metadata[i];
    g_from := g_from || p_from[i];
    g_holding := g_holding || v_holding;
    g_amount := g_amount || p_amount[i];
    g_asset := g_asset || p_asset[i];
  END LOOP;
  PERFORM tally.record_refusals(f_callers, f_keys, f_hashes, f_status, f_bodies);

  IF cardinality(g_req) > 0 THEN
    FOR rec IN
      SELECT * FROM tally.post_batch(g_callers, g_keys, g_hashes, g_ids, g_created, g_meta,
                                     ARRAY(SELECT generate_series(1, cardinality(g_req))), g_from, g_holding, g_amount, g_asset)
    LOOP
      o_status[g_req[rec.req]] := rec.status;
      o_body[g_req[rec.req]] := rec.body;
      o_replayed[g_req[rec.req]] := rec.replayed;
      o_tx[g_req[rec.req]] := rec.transaction_id;
    END LOOP;
    INSERT INTO tally.pending_transfers (id, from_account, to_account, asset, amount, expires_at, remote_account)
    SELECT p_ids[g.i], p_from[g.i], v_to[g.i], p_asset[g.i], p_amount[g.i], p_expires[g.i], p_remote[g.i]
    FROM unnest(g_req) g(i)
    WHERE o_status[g.i] = 201 AND NOT o_replayed[g.i];
  END IF;
  RETURN QUERY SELECT i::integer, o_status[i], o_body[i], o_replayed[i], o_tx[i] FROM generate_series(1, n) i;
END
$$;

-- Resolutions (see 008's tally.resolve, now a call of this). The records are locked in
-- id order first, so resolutions of one transfer in different batches queue and the
-- second finds it resolved; one batch resolves a transfer at most once.
CREATE OR REPLACE FUNCTION tally.resolve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[],
  p_created timestamptz[], p_metadata jsonb[], p_pending uuid[], p_action text[], p_amount bigint[])
RETURNS TABLE (req integer, status smallint, body text, replayed boolean, transaction_id uuid)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
DECLARE
  n          integer := cardinality(p_callers);
  o_status   smallint[];
  o_body     text[];
  o_replayed boolean[];
  o_tx       uuid[];
  v_p        record;
  v_holding  uuid;
  v_post     bigint;
  v_code     text;
  v_detail   text;
  v_s        smallint;
  v_b        text;
  rec        record;
  f_callers  text[] := '{}';
  f_keys     text[] := '{}';
  f_hashes   bytea[] := '{}';
  f_status   smallint[] := '{}';
  f_bodies   text[] := '{}';
  g_req      integer[] := '{}';
  g_state    text[] := '{}';
  g_posted   bigint[] := '{}';
  g_callers  text[] := '{}';
  g_keys     text[] := '{}';
  g_hashes   bytea[] := '{}';
  g_ids      uuid[] := '{}';
  g_created  timestamptz[] := '{}';
  g_meta     jsonb[] := '{}';
  g_rq       integer[] := '{}';
  g_from     uuid[] := '{}';
  g_to       uuid[] := '{}';
  g_amount   bigint[] := '{}';
  g_asset    text[] := '{}';
BEGIN
  IF n IS NULL OR n < 1 OR n > 1000
     OR cardinality(p_keys) IS DISTINCT FROM n OR cardinality(p_hashes) IS DISTINCT FROM n
     OR cardinality(p_ids) IS DISTINCT FROM n OR cardinality(p_created) IS DISTINCT FROM n
     OR cardinality(p_metadata) IS DISTINCT FROM n OR cardinality(p_pending) IS DISTINCT FROM n
     OR cardinality(p_action) IS DISTINCT FROM n OR cardinality(p_amount) IS DISTINCT FROM n
     OR (SELECT count(DISTINCT (c, k)) FROM unnest(p_callers, p_keys) u(c, k)) <> n
     OR (SELECT count(DISTINCT x) FROM unnest(p_pending) x) <> n THEN
    RAISE EXCEPTION 'tally: resolve_batch needs 1 to 1000 requests, equal-length arrays, distinct keys and distinct transfers'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM unnest(p_action, p_amount) u(a, x)
             WHERE a IS NULL OR a NOT IN ('post', 'void', 'expire', 'settle', 'return') OR (x IS NOT NULL AND (a <> 'post' OR x <= 0))) THEN
    RAISE EXCEPTION 'tally: resolve needs post (with an optional positive amount), void, expire, settle or return' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('tally.moving_holds', 'on', true);
  o_status := array_fill(NULL::smallint, ARRAY[n]);
  o_body := array_fill(NULL::text, ARRAY[n]);
  o_replayed := array_fill(false, ARRAY[n]);
  o_tx := array_fill(NULL::uuid, ARRAY[n]);
  FOR rec IN SELECT * FROM tally.replay_batch(p_callers, p_keys, p_hashes) LOOP
    o_status[rec.req] := rec.status;
    o_body[rec.req] := rec.body;
    o_replayed[rec.req] := rec.replayed;
    o_tx[rec.req] := rec.transaction_id;
  END LOOP;
  PERFORM FROM tally.pending_transfers p
  WHERE p.id IN (SELECT x FROM unnest(p_pending) WITH ORDINALITY u(x, i) WHERE o_status[u.i] IS NULL)
  ORDER BY p.id FOR UPDATE;

  FOR i IN 1 .. n LOOP
    CONTINUE WHEN o_status[i] IS NOT NULL;
    v_code := NULL;
    SELECT * INTO v_p FROM tally.pending_transfers p WHERE p.id = p_pending[i];
    v_post := coalesce(p_amount[i], v_p.amount);
    IF NOT FOUND THEN
      v_code := 'transfer_not_found';
      v_detail := format('no pending transfer %s', p_pending[i]);
    ELSIF v_p.state <> 'pending' THEN
      v_code := 'transfer_already_resolved';
      v_detail := format('transfer %s was already %s', p_pending[i], v_p.state);
    ELSIF (v_p.remote_account IS NULL) <> (p_action[i] IN ('post', 'void', 'expire')) THEN
      IF v_p.remote_account IS NULL THEN
        RAISE EXCEPTION 'tally: transfer % stays on this shard: post, void or expire it', p_pending[i] USING ERRCODE = 'invalid_parameter_value';
      END IF;
      v_code := 'transfer_between_shards';
      v_detail := format('transfer %s goes to another shard; the ledger completes or returns it', p_pending[i]);
    ELSIF p_action[i] = 'expire' AND (v_p.expires_at IS NULL OR v_p.expires_at > p_created[i]) THEN
      RAISE EXCEPTION 'tally: transfer % has not expired', p_pending[i] USING ERRCODE = 'invalid_parameter_value';
    ELSIF p_action[i] = 'post' AND v_p.expires_at <= p_created[i] THEN
      v_code := 'transfer_expired';
      v_detail := format('transfer %s expired at %s', p_pending[i], to_json(v_p.expires_at) #>> '{}');
    ELSIF p_action[i] = 'post' AND v_post > v_p.amount THEN
      v_code := 'amount_exceeds_pending';
      v_detail := format('transfer %s holds less than the amount to post', p_pending[i]);
    END IF;
    IF v_code IS NOT NULL THEN
      SELECT * INTO v_s, v_b FROM tally.problem(v_code, v_detail);
      o_status[i] := v_s;
      o_body[i] := v_b;
      f_callers := f_callers || p_callers[i];
      f_keys := f_keys || p_keys[i];
      f_hashes := f_hashes || p_hashes[i];
      f_status := f_status || v_s;
      f_bodies := f_bodies || v_b;
      CONTINUE;
    END IF;
    SELECT a.id INTO v_holding FROM tally.accounts a WHERE a.asset = v_p.asset AND a.kind = 'holding';
    IF p_action[i] NOT IN ('post', 'settle') THEN
      v_post := 0;
    END IF;
    g_req := g_req || i;
    g_state := g_state || CASE p_action[i] WHEN 'expire' THEN 'expired' WHEN 'void' THEN 'voided' WHEN 'return' THEN 'voided' ELSE 'posted' END;
    g_posted := g_posted || nullif(v_post, 0);
    g_callers := g_callers || p_callers[i];
    g_keys := g_keys || p_keys[i];
    g_hashes := g_hashes || p_hashes[i];
    g_ids := g_ids || p_ids[i];
    g_created := g_created || p_created[i];
    g_meta := g_meta || p_metadata[i];
    -- What is posted goes to the destination, the rest back to the source.
    IF v_post > 0 THEN
      g_rq := g_rq || cardinality(g_req);
      g_from := g_from || v_holding;
      g_to := g_to || v_p.to_account;
      g_amount := g_amount || v_post;
      g_asset := g_asset || v_p.asset;
    END IF;
    IF v_post < v_p.amount THEN
      g_rq := g_rq || cardinality(g_req);
      g_from := g_from || v_holding;
      g_to := g_to || v_p.from_account;
      g_amount := g_amount || (v_p.amount - v_post);
      g_asset := g_asset || v_p.asset;
    END IF;
  END LOOP;
  PERFORM tally.record_refusals(f_callers, f_keys, f_hashes, f_status, f_bodies);

  IF cardinality(g_req) > 0 THEN
    FOR rec IN
      SELECT * FROM tally.post_batch(g_callers, g_keys, g_hashes, g_ids, g_created, g_meta, g_rq, g_from, g_to, g_amount, g_asset)
    LOOP
      o_status[g_req[rec.req]] := rec.status;
      o_body[g_req[rec.req]] := rec.body;
      o_replayed[g_req[rec.req]] := rec.replayed;
      o_tx[g_req[rec.req]] := rec.transaction_id;
    END LOOP;
    UPDATE tally.pending_transfers p
    SET state = u.state, posted_amount = u.posted, resolved_by = p_ids[u.i], resolved_at = p_created[u.i]
    FROM unnest(g_req, g_state, g_posted) u(i, state, posted)
    WHERE p.id = p_pending[u.i] AND o_status[u.i] = 201 AND NOT o_replayed[u.i];
  END IF;
  RETURN QUERY SELECT i::integer, o_status[i], o_body[i], o_replayed[i], o_tx[i] FROM generate_series(1, n) i;
END
$$;

-- Inbound applications (see 008's tally.apply_inbound, now a call of this): each
-- transfer another shard reserved for an account here is applied once, from this shard's
-- clearing account for the source shard, or refused with the reason recorded; asked
-- again, it answers the same. Appliers of one transfer queue on the lock of its id (taken
-- in lock order), so it is decided once.
CREATE OR REPLACE FUNCTION tally.apply_inbound_batch(p_ids uuid[], p_to uuid[], p_amount bigint[], p_asset text[],
  p_tx uuid[], p_created timestamptz[], p_metadata jsonb[], p_clearing_ids uuid[])
RETURNS TABLE (req integer, state text, problem text, transaction_id uuid)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
DECLARE
  n          integer := cardinality(p_ids);
  v_shard    integer := (SELECT s.shard_index FROM tally.shard s);
  o_state    text[];
  o_problem  text[];
  o_tx       uuid[];
  o_new      boolean[];
  v_to       record;
  v_source   integer;
  v_clearing uuid;
  v_code     text;
  v_detail   text;
  rec        record;
  g_req      integer[] := '{}';
  g_callers  text[] := '{}';
  g_keys     text[] := '{}';
  g_hashes   bytea[] := '{}';
  g_clearing uuid[] := '{}';
BEGIN
  IF n IS NULL OR n < 1 OR n > 1000
     OR cardinality(p_to) IS DISTINCT FROM n OR cardinality(p_amount) IS DISTINCT FROM n
     OR cardinality(p_asset) IS DISTINCT FROM n OR cardinality(p_tx) IS DISTINCT FROM n
     OR cardinality(p_created) IS DISTINCT FROM n OR cardinality(p_metadata) IS DISTINCT FROM n
     OR cardinality(p_clearing_ids) IS DISTINCT FROM n
     OR (SELECT count(DISTINCT x) FROM unnest(p_ids) x) <> n
     OR EXISTS (SELECT FROM unnest(p_ids, p_amount) u(x, a) WHERE x IS NULL OR tally.id_shard(x) = v_shard OR a IS NULL OR a <= 0) THEN
    RAISE EXCEPTION 'tally: an inbound transfer comes from another shard, with a positive amount, once per batch' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  o_state := array_fill(NULL::text, ARRAY[n]);
  o_problem := array_fill(NULL::text, ARRAY[n]);
  o_tx := array_fill(NULL::uuid, ARRAY[n]);
  o_new := array_fill(false, ARRAY[n]);
  -- Decided before: answered without a lock; the rest are locked, then looked at again.
  FOR v_round IN 1 .. 2 LOOP
    FOR rec IN
      SELECT u.i, t.state AS s, t.problem AS p, t.transaction_id AS tx
      FROM unnest(p_ids) WITH ORDINALITY u(x, i) JOIN tally.inbound_transfers t ON t.id = u.x
      WHERE o_state[u.i] IS NULL
    LOOP
      o_state[rec.i] := rec.s;
      o_problem[rec.i] := rec.p;
      o_tx[rec.i] := rec.tx;
    END LOOP;
    EXIT WHEN v_round = 2 OR NOT EXISTS (SELECT FROM unnest(o_state) s WHERE s IS NULL);
    PERFORM pg_advisory_xact_lock(hashtext('tally.apply_inbound'), l.h)
    FROM (SELECT DISTINCT hashtext(x::text) AS h FROM unnest(p_ids) WITH ORDINALITY u(x, i) WHERE o_state[u.i] IS NULL ORDER BY 1) l;
  END LOOP;

  PERFORM set_config('tally.moving_holds', 'on', true);
  FOR i IN 1 .. n LOOP
    CONTINUE WHEN o_state[i] IS NOT NULL;
    o_new[i] := true;
    v_code := NULL;
    v_source := tally.id_shard(p_ids[i]);
    SELECT a.asset, a.kind INTO v_to FROM tally.accounts a WHERE a.id = p_to[i];
    IF NOT FOUND OR v_to.kind IN ('holding', 'clearing') THEN
      v_code := 'account_not_found';
      v_detail := format('account %s does not exist', p_to[i]);
    ELSIF v_to.asset <> p_asset[i] THEN
      v_code := 'asset_mismatch';
      v_detail := format('the transfer is in %s but account %s holds %s', p_asset[i], p_to[i], v_to.asset);
    ELSE
      v_clearing := tally.clearing_account(p_asset[i], v_source, p_clearing_ids[i]);
    END IF;
    IF v_code IS NOT NULL THEN
      o_state[i] := 'refused';
      o_problem[i] := (SELECT x.body FROM tally.problem(v_code, v_detail) x);
      CONTINUE;
    END IF;
    g_req := g_req || i;
    g_callers := g_callers || ('tally:shard:' || v_source);
    g_keys := g_keys || ('inbound:' || p_ids[i]);
    g_hashes := g_hashes || sha256(uuid_send(p_ids[i]));
    g_clearing := g_clearing || v_clearing;
  END LOOP;

  -- Status, funds and the rest are judged as for any posting, under its locks.
  IF cardinality(g_req) > 0 THEN
    FOR rec IN
      SELECT * FROM tally.post_batch(g_callers, g_keys, g_hashes,
                                     ARRAY(SELECT p_tx[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o),
                                     ARRAY(SELECT p_created[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o),
                                     ARRAY(SELECT p_metadata[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o),
                                     ARRAY(SELECT generate_series(1, cardinality(g_req))), g_clearing,
                                     ARRAY(SELECT p_to[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o),
                                     ARRAY(SELECT p_amount[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o),
                                     ARRAY(SELECT p_asset[g] FROM unnest(g_req) WITH ORDINALITY u(g, o) ORDER BY u.o))
    LOOP
      IF rec.replayed THEN
        RAISE EXCEPTION 'tally: inbound transfer % has an idempotency record but no inbound record', p_ids[g_req[rec.req]]
          USING ERRCODE = 'internal_error';
      ELSIF rec.status = 201 THEN
        o_state[g_req[rec.req]] := 'applied';
        o_tx[g_req[rec.req]] := rec.transaction_id;
      ELSE
        o_state[g_req[rec.req]] := 'refused';
        o_problem[g_req[rec.req]] := rec.body;
      END IF;
    END LOOP;
  END IF;
  INSERT INTO tally.inbound_transfers (id, to_account, asset, amount, state, transaction_id, problem)
  SELECT p_ids[i], p_to[i], p_asset[i], p_amount[i], o_state[i], o_tx[i], o_problem[i]
  FROM generate_series(1, n) i WHERE o_new[i];
  RETURN QUERY SELECT i::integer, o_state[i], o_problem[i], o_tx[i] FROM generate_series(1, n) i;
END
$$;

-- 008's single-request functions, for the previous release's service: the same answers,
-- from the batch functions.
CREATE OR REPLACE FUNCTION tally.reserve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamptz,
  p_metadata jsonb, p_from uuid, p_to uuid, p_amount bigint, p_asset text, p_expires timestamptz, p_holding_id uuid,
  p_remote uuid, p_clearing_id uuid,
  OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid)
LANGUAGE sql AS $$
  SELECT r.status, r.body, r.replayed, r.transaction_id
  FROM tally.reserve_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                           ARRAY[p_from], ARRAY[p_to], ARRAY[p_amount], ARRAY[p_asset], ARRAY[p_expires], ARRAY[p_holding_id],
                           ARRAY[p_remote], ARRAY[p_clearing_id]) r
$$;

CREATE OR REPLACE FUNCTION tally.resolve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamptz,
  p_metadata jsonb, p_pending uuid, p_action text, p_amount bigint,
  OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid)
LANGUAGE sql AS $$
  SELECT r.status, r.body, r.replayed, r.transaction_id
  FROM tally.resolve_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                           ARRAY[p_pending], ARRAY[p_action], ARRAY[p_amount]) r
$$;

CREATE OR REPLACE FUNCTION tally.apply_inbound(p_id uuid, p_to uuid, p_amount bigint, p_asset text, p_tx uuid,
  p_created timestamptz, p_metadata jsonb, p_clearing_id uuid,
  OUT state text, OUT problem text, OUT transaction_id uuid)
LANGUAGE sql AS $$
  SELECT r.state, r.problem, r.transaction_id
  FROM tally.apply_inbound_batch(ARRAY[p_id], ARRAY[p_to], ARRAY[p_amount], ARRAY[p_asset], ARRAY[p_tx], ARRAY[p_created],
                                 ARRAY[p_metadata], ARRAY[p_clearing_id]) r
$$;

GRANT EXECUTE ON FUNCTION tally.replay_batch(text[], text[], bytea[]),
  tally.record_refusals(text[], text[], bytea[], smallint[], text[]),
  tally.reserve_batch(text[], text[], bytea[], uuid[], timestamptz[], jsonb[], uuid[], uuid[], bigint[], text[], timestamptz[],
                      uuid[], uuid[], uuid[]),
  tally.resolve_batch(text[], text[], bytea[], uuid[], timestamptz[], jsonb[], uuid[], text[], bigint[]),
  tally.apply_inbound_batch(uuid[], uuid[], bigint[], text[], uuid[], timestamptz[], jsonb[], uuid[]) TO tally_app;
