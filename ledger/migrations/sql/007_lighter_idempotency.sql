-- A lighter idempotency record (issue 15). A key's record kept the whole response body,
-- about 300 bytes of a transfer's 900 on disk and in WAL, though the journal already holds
-- everything the response says. It now keeps what a replay needs: the status, the request's
-- hash and, for a 201, the transaction's id; the service renders the replayed response from
-- the journal with the same code that rendered the first one (GET /v1/transactions/{id}
-- answers the same bytes, tested). A rejection keeps its problem body: it has no journal.
--
-- Expand, then contract (README): the column is added, body may now be NULL, and a new
-- post_batch without bodies is added beside the old one. The old one, which a service
-- built for version 6 calls, becomes a wrapper over the new one with its own signature
-- and answers: it still stores the bodies its callers send, so their replays answer as
-- before. Only a replay it cannot answer, of a record a newer service wrote without a
-- body, gets that one request a 503 to retry (a newer replica answers it), never a wrong
-- body and never a failed batch.

ALTER TABLE tally.idempotency_keys
  ADD COLUMN transaction_id uuid,
  ALTER COLUMN body DROP NOT NULL;
-- Every record can answer its replay: a body, or a 201's transaction to render. NOT VALID
-- then VALIDATE: the scan of existing records does not block writes.
ALTER TABLE tally.idempotency_keys ADD CONSTRAINT idempotency_keys_answerable
  CHECK (body IS NOT NULL OR (status = 201 AND transaction_id IS NOT NULL)) NOT VALID;
ALTER TABLE tally.idempotency_keys VALIDATE CONSTRAINT idempotency_keys_answerable;

CREATE FUNCTION tally.post_batch(
  p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamptz[],
  p_metadata jsonb[],
  p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[])
RETURNS TABLE (req integer, status smallint, body text, replayed boolean, transaction_id uuid)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off
AS $$
DECLARE
  n          integer := cardinality(p_callers);
  m          integer := cardinality(p_req);
  o_status   smallint[];
  o_body     text[];
  o_replayed boolean[];
  o_tx       uuid[];
  claimed    boolean[];
  -- accounts, sorted by id, with their balance carried through the batch
  a_ids      uuid[];
  a_bal      bigint[];
  a_floor    bigint[];
  a_status   text[];
  a_asset    text[];
  a_touched  integer[];
  -- rows to write
  t_ids      uuid[];
  t_meta     jsonb[];
  t_created  timestamptz[];
  e_tx       uuid[];
  e_posting  smallint[];
  e_account  uuid[];
  e_asset    text[];
  e_amount   bigint[];
  e_after    bigint[];
  r_callers  text[] := '{}';
  r_keys     text[] := '{}';
  r_status   smallint[] := '{}';
  r_body     text[] := '{}';
  first_p    integer[];
  last_p     integer[];
  d_idx      integer[];
  d_delta    numeric[];
  pf         integer[];
  pt         integer[];
  n_tx       integer;
  n_e        integer;
  v_min      integer;
  d_claimed  bigint[];
  rec        record;
  v_code     text;
  v_detail   text;
  v_f        integer;
  v_t        integer;
  v_x        integer;
  v_p        integer;
  v_new      numeric;
  v_s        smallint;
  v_b        text;
BEGIN
  -- Preconditions the service guarantees; here they are loud errors, never silent fixes.
  IF n IS NULL OR n < 1 OR n > 1000
     OR cardinality(p_keys) IS DISTINCT FROM n OR cardinality(p_hashes) IS DISTINCT FROM n
     OR cardinality(p_ids) IS DISTINCT FROM n OR cardinality(p_created) IS DISTINCT FROM n
     OR cardinality(p_metadata) IS DISTINCT FROM n
     OR m IS NULL OR cardinality(p_from) IS DISTINCT FROM m OR cardinality(p_to) IS DISTINCT FROM m
     OR cardinality(p_amount) IS DISTINCT FROM m OR cardinality(p_asset) IS DISTINCT FROM m THEN
    RAISE EXCEPTION 'tally: post_batch needs 1 to 1000 requests and equal-length arrays'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM unnest(p_req, p_from, p_to, p_amount, p_asset) u(r, f, t, a, s)
             WHERE r IS NULL OR r < 1 OR r > n OR f IS NULL OR t IS NULL OR a IS NULL OR a <= 0 OR s IS NULL)
     OR EXISTS (SELECT FROM unnest(p_req) WITH ORDINALITY u(r, i) GROUP BY r HAVING count(*) > 64 OR max(i) - min(i) + 1 <> count(*))
     OR (SELECT count(DISTINCT r) FROM unnest(p_req) r) <> n
     OR (SELECT count(DISTINCT (c, k)) FROM unnest(p_callers, p_keys) u(c, k)) <> n THEN
    RAISE EXCEPTION 'tally: post_batch needs 1 to 64 contiguous postings per request, positive amounts, distinct keys'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  o_status := array_fill(NULL::smallint, ARRAY[n]);
  o_body := array_fill(NULL::text, ARRAY[n]);
  o_replayed := array_fill(false, ARRAY[n]);
  o_tx := array_fill(NULL::uuid, ARRAY[n]);
  claimed := array_fill(false, ARRAY[n]);
  SELECT array_agg(lo ORDER BY r), array_agg(hi ORDER BY r) INTO first_p, last_p
  FROM (SELECT r, min(i) AS lo, max(i) AS hi FROM unnest(p_req) WITH ORDINALITY u(r, i) GROUP BY r) x;

  -- 1. Claim the idempotency keys, in (caller, key) order: every writer claims keys in
  -- that one order and before any balance lock, so key waits cannot form a cycle either.
  -- A key held by a concurrent, uncommitted batch makes us wait here for its outcome.
  WITH ins AS (
    INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, transaction_id)
    SELECT c, k, h, 201, t FROM unnest(p_callers, p_keys, p_hashes, p_ids) u(c, k, h, t) ORDER BY c, k
    ON CONFLICT (caller, key) DO NOTHING
    RETURNING caller, key)
  SELECT array_agg(u.i) INTO d_claimed
  FROM unnest(p_callers, p_keys) WITH ORDINALITY u(c, k, i) JOIN ins ON ins.caller = u.c AND ins.key = u.k;
  FOREACH v_x IN ARRAY coalesce(d_claimed, '{}') LOOP
    claimed[v_x] := true;
  END LOOP;

  -- Requests whose key was already used replay its outcome, or are 409 if the request differs.
  FOR rec IN
    SELECT u.i, u.k, s.request_hash = u.h AS same, s.status, s.body, s.transaction_id
    FROM unnest(p_callers, p_keys, p_hashes) WITH ORDINALITY u(c, k, h, i)
    LEFT JOIN tally.idempotency_keys s ON s.caller = u.c AND s.key = u.k
    WHERE NOT claimed[u.i]
  LOOP
    IF rec.same IS NULL THEN
      RAISE EXCEPTION 'tally: idempotency record % vanished during the request', rec.k
        USING ERRCODE = 'serialization_failure'; -- expired and cleaned up meanwhile: retry
    ELSIF rec.same THEN
      o_status[rec.i] := rec.status;
      o_body[rec.i] := rec.body;
      o_tx[rec.i] := rec.transaction_id;
      o_replayed[rec.i] := true;
    ELSE
      SELECT * INTO v_s, v_b FROM tally.problem('idempotency_key_reused',
        format('Idempotency-Key %s was first used with a different request', to_json(rec.k)));
      o_status[rec.i] := v_s;
      o_body[rec.i] := v_b;
    END IF;
  END LOOP;

  -- 2. Lock every balance row the claimed requests touch, once, in ascending account id
  -- order: the one global lock order of every Tally writer, so deadlocks are impossible.
  SELECT array_agg(l.account_id ORDER BY l.account_id), array_agg(l.posted ORDER BY l.account_id),
         array_agg(l.floor ORDER BY l.account_id)
  INTO a_ids, a_bal, a_floor
  FROM (SELECT b.account_id, b.posted, b.floor FROM tally.balances b
        WHERE b.account_id IN (SELECT x FROM unnest(p_from || p_to) WITH ORDINALITY u(x, j)
                               WHERE claimed[p_req[((j - 1) % m) + 1]])
        ORDER BY b.account_id
        FOR UPDATE) l;
  a_ids := coalesce(a_ids, '{}');
  a_touched := array_fill(0, ARRAY[greatest(cardinality(a_ids), 1)]);
  -- Status and asset are read only now, in a statement whose snapshot starts after the
  -- locks are held: freeze and close take the same lock first, so these cannot change
  -- until we commit.
  SELECT array_agg(a.status ORDER BY a.id), array_agg(a.asset ORDER BY a.id) INTO a_status, a_asset
  FROM tally.accounts a WHERE a.id = ANY (a_ids);
  -- Assigning one element turns a text array into plpgsql's expanded form, where reading
  -- element i is O(1) instead of a walk over the elements before it.
  IF cardinality(a_ids) > 0 THEN
    a_status[1] := a_status[1];
    a_asset[1] := a_asset[1];
  END IF;
  p_asset[1] := p_asset[1];

  -- Where each posting's accounts sit in the sorted account arrays (NULL: no such
  -- account), found for the whole batch in one hash join rather than per posting.
  SELECT array_agg(af.n ORDER BY u.i), array_agg(at.n ORDER BY u.i) INTO pf, pt
  FROM unnest(p_from, p_to) WITH ORDINALITY u(f, t, i)
  LEFT JOIN unnest(a_ids) WITH ORDINALITY af(id, n) ON af.id = u.f
  LEFT JOIN unnest(a_ids) WITH ORDINALITY at(id, n) ON at.id = u.t;
  -- Output rows, filled in place (element assignment does not copy the array).
  t_ids := array_fill(NULL::uuid, ARRAY[n]);
  t_meta := array_fill(NULL::jsonb, ARRAY[n]);
  t_created := array_fill(NULL::timestamptz, ARRAY[n]);
  e_tx := array_fill(NULL::uuid, ARRAY[2 * m]);
  e_posting := array_fill(NULL::smallint, ARRAY[2 * m]);
  e_account := array_fill(NULL::uuid, ARRAY[2 * m]);
  e_asset := array_fill(NULL::text, ARRAY[2 * m]);
  e_amount := array_fill(NULL::bigint, ARRAY[2 * m]);
  e_after := array_fill(NULL::bigint, ARRAY[2 * m]);
  n_tx := 0;
  n_e := 0;

  -- 3. Judge each claimed request in arrival order against the balances as the requests
  -- before it left them.
  FOR i IN 1 .. n LOOP
    CONTINUE WHEN NOT claimed[i];
    v_code := NULL;
    FOR p IN first_p[i] .. last_p[i] LOOP
      v_f := pf[p];
      v_t := pt[p];
      v_p := p - first_p[i];
      IF v_f IS NULL OR v_t IS NULL THEN
        v_code := 'account_not_found';
        v_detail := format('account %s does not exist', CASE WHEN v_f IS NULL THEN p_from[p] ELSE p_to[p] END);
      ELSIF v_f = v_t THEN
        v_code := 'same_account';
        v_detail := format('posting %s moves money from account %s to itself', v_p, p_from[p]);
      ELSIF a_status[v_f] = 'closed' OR a_status[v_t] = 'closed' THEN
        v_code := 'account_closed';
        v_detail := format('account %s is closed', CASE WHEN a_status[v_f] = 'closed' THEN p_from[p] ELSE p_to[p] END);
      ELSIF a_status[v_f] = 'frozen' OR a_status[v_t] = 'frozen' THEN
        v_code := 'account_frozen';
        v_detail := format('account %s is frozen', CASE WHEN a_status[v_f] = 'frozen' THEN p_from[p] ELSE p_to[p] END);
      ELSIF a_asset[v_f] <> p_asset[p] OR a_asset[v_t] <> p_asset[p] THEN
        v_code := 'asset_mismatch';
        v_detail := format('posting %s is in %s but account %s holds %s', v_p, p_asset[p],
          CASE WHEN a_asset[v_f] <> p_asset[p] THEN p_from[p] ELSE p_to[p] END,
          CASE WHEN a_asset[v_f] <> p_asset[p] THEN a_asset[v_f] ELSE a_asset[v_t] END);
      END IF;
      EXIT WHEN v_code IS NOT NULL;
    END LOOP;

    IF v_code IS NULL THEN
      -- Funds: each account's net movement in this request, against its running balance.
      -- A request touches few accounts, so a short list beats a query. On the way, every
      -- leg's running balance must fit a bigint too (it is stored with the entry), or one
      -- request's arithmetic error would fail its whole batch.
      d_idx := '{}';
      d_delta := '{}';
      FOR p IN first_p[i] .. last_p[i] LOOP
        v_x := array_position(d_idx, pf[p]);
        IF v_x IS NULL THEN
          d_idx := d_idx || pf[p];
          d_delta := d_delta || (-p_amount[p])::numeric;
          v_x := cardinality(d_idx);
        ELSE
          d_delta[v_x] := d_delta[v_x] - p_amount[p];
        END IF;
        v_f := v_x;
        v_x := array_position(d_idx, pt[p]);
        IF v_x IS NULL THEN
          d_idx := d_idx || pt[p];
          d_delta := d_delta || p_amount[p]::numeric;
          v_x := cardinality(d_idx);
        ELSE
          d_delta[v_x] := d_delta[v_x] + p_amount[p];
        END IF;
        IF a_bal[pf[p]] + d_delta[v_f] < -9223372036854775808 OR a_bal[pt[p]] + d_delta[v_x] > 9223372036854775807 THEN
          v_code := 'balance_limit_exceeded';
          v_detail := format('posting %s would take a running balance beyond the largest representable amount', p - first_p[i]);
          EXIT;
        END IF;
        -- Every leg's running balance is stored with its entry, so each must respect the
        -- account's floor, not only the net at the end: no entry ever shows a balance
        -- the account may not have. Postings are applied in the order given.
        IF a_bal[pf[p]] + d_delta[v_f] < a_floor[pf[p]] THEN
          v_code := 'insufficient_funds';
          v_detail := format('account %s has insufficient funds for posting %s', p_from[p], p - first_p[i]);
          EXIT;
        END IF;
      END LOOP;
      -- Then each account's net movement against its floor. Of several accounts short,
      -- report the one with the smallest id, so the answer does not depend on posting order.
      IF v_code IS NULL THEN
        FOR k IN 1 .. cardinality(d_idx) LOOP
          v_x := d_idx[k];
          v_new := a_bal[v_x]::numeric + d_delta[k];
          IF (v_new < a_floor[v_x] OR v_new > 9223372036854775807) AND (v_code IS NULL OR v_x < v_min) THEN
            v_min := v_x;
            v_code := CASE WHEN v_new < a_floor[v_x] THEN 'insufficient_funds' ELSE 'balance_limit_exceeded' END;
            -- The detail names the account, never its balance: a caller refused for
            -- funds must not learn what the account holds.
            v_detail := CASE WHEN v_new < a_floor[v_x] THEN format('account %s has insufficient funds for this transaction', a_ids[v_x])
                             ELSE format('account %s would exceed the largest representable balance', a_ids[v_x]) END;
          END IF;
        END LOOP;
      END IF;
    END IF;

    IF v_code IS NOT NULL THEN
      SELECT * INTO v_s, v_b FROM tally.problem(v_code, v_detail);
      o_status[i] := v_s;
      o_body[i] := v_b;
      r_callers := r_callers || p_callers[i];
      r_keys := r_keys || p_keys[i];
      r_status := r_status || v_s;
      r_body := r_body || v_b;
      CONTINUE;
    END IF;

    -- Apply: the entries carry each account's running balance, leg by leg.
    n_tx := n_tx + 1;
    t_ids[n_tx] := p_ids[i];
    t_meta[n_tx] := coalesce(p_metadata[i], '{}');
    t_created[n_tx] := p_created[i];
    FOR p IN first_p[i] .. last_p[i] LOOP
      v_f := pf[p];
      v_t := pt[p];
      a_bal[v_f] := a_bal[v_f] - p_amount[p];
      a_bal[v_t] := a_bal[v_t] + p_amount[p];
      n_e := n_e + 1;
      e_tx[n_e] := p_ids[i];
      e_posting[n_e] := p - first_p[i];
      e_account[n_e] := p_from[p];
      e_asset[n_e] := p_asset[p];
      e_amount[n_e] := -p_amount[p];
      e_after[n_e] := a_bal[v_f];
      n_e := n_e + 1;
      e_tx[n_e] := p_ids[i];
      e_posting[n_e] := p - first_p[i];
      e_account[n_e] := p_to[p];
      e_asset[n_e] := p_asset[p];
      e_amount[n_e] := p_amount[p];
      e_after[n_e] := a_bal[v_t];
    END LOOP;
    FOREACH v_x IN ARRAY d_idx LOOP
      a_touched[v_x] := a_touched[v_x] + 1;
    END LOOP;
    o_status[i] := 201;
    o_tx[i] := p_ids[i];
  END LOOP;

  -- 4. Write: one statement for the journal and the balances, one update for the
  -- recorded rejections.
  IF n_tx > 0 THEN
    -- One statement writes the transactions, moves the balances and inserts the entries:
    -- the checks at its end see all three, and none is ever visible without the others.
    WITH journal AS (
      INSERT INTO tally.transactions (id, metadata, created_at)
      SELECT * FROM unnest(t_ids[1:n_tx], t_meta[1:n_tx], t_created[1:n_tx])),
    moved AS (
      UPDATE tally.balances b SET posted = u.bal, version = b.version + u.touched
      FROM unnest(a_ids, a_bal, a_touched) u(id, bal, touched)
      WHERE b.account_id = u.id AND u.touched > 0)
    INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
    SELECT u.tx, u.posting, u.account, u.asset, u.amount, u.after
    FROM unnest(e_tx[1:n_e], e_posting[1:n_e], e_account[1:n_e], e_asset[1:n_e], e_amount[1:n_e], e_after[1:n_e])
         WITH ORDINALITY u(tx, posting, account, asset, amount, after, ord)
    ORDER BY u.ord;
  END IF;
  IF cardinality(r_keys) > 0 THEN
    UPDATE tally.idempotency_keys k SET status = u.s, body = u.b, transaction_id = NULL
    FROM unnest(r_callers, r_keys, r_status, r_body) u(c, key, s, b)
    WHERE k.caller = u.c AND k.key = u.key;
  END IF;

  -- 5. A replay acknowledges an outcome committed earlier, perhaps by a commit whose wait
  -- for the synchronous standbys was cancelled: on this primary, on no standby yet. A
  -- batch of replays alone writes no WAL, so its commit would not wait either (an xid
  -- alone is not enough: PostgreSQL waits only for commits that wrote WAL). Touching the
  -- replayed records writes WAL, so this commit waits for the standbys like any other;
  -- WAL is one ordered stream, so when it returns the replayed outcome is on the
  -- standbys too. Nothing is acknowledged that a failover could lose.
  -- The records are locked in (caller, key) order, the order step 1 claims keys in, so
  -- two batches replaying the same keys cannot wait for each other in a cycle.
  IF true = ANY (o_replayed) THEN
    UPDATE tally.idempotency_keys s SET status = s.status
    FROM (SELECT k.caller, k.key FROM tally.idempotency_keys k
          JOIN unnest(p_callers, p_keys) WITH ORDINALITY u(c, k, i) ON k.caller = u.c AND k.key = u.k
          WHERE o_replayed[u.i]
          ORDER BY k.caller, k.key
          FOR UPDATE OF k) l
    WHERE s.caller = l.caller AND s.key = l.key;
  END IF;

  RETURN QUERY SELECT i::integer, o_status[i], o_body[i], o_replayed[i], o_tx[i] FROM generate_series(1, n) i;
END
$$;


-- The catalogue gains unavailable, for the wrapper below (same codes as ledger/problem.go).
CREATE OR REPLACE FUNCTION tally.problem(p_code text, p_detail text, OUT status smallint, OUT body text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  v_title text;
BEGIN
  SELECT c.s, c.t INTO status, v_title FROM (VALUES
    ('account_not_found',      404::smallint, 'Account not found'),
    ('account_frozen',         422::smallint, 'Account is frozen'),
    ('account_closed',         422::smallint, 'Account is closed'),
    ('asset_mismatch',         422::smallint, 'Asset does not match the account'),
    ('same_account',           422::smallint, 'Source and destination are the same account'),
    ('insufficient_funds',     422::smallint, 'Insufficient funds'),
    ('balance_limit_exceeded', 422::smallint, 'Balance would exceed the largest representable amount'),
    ('idempotency_key_reused', 409::smallint, 'Idempotency key reused with a different request'),
    ('unavailable',            503::smallint, 'Service unavailable')
  ) AS c(code, s, t) WHERE c.code = p_code;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: unknown problem code %', p_code USING ERRCODE = 'invalid_parameter_value';
  END IF;
  body := format('{"type":%s,"title":%s,"status":%s,"detail":%s,"code":%s}',
    to_json('https://tally.dev/problems/' || p_code), to_json(v_title), status, to_json(p_detail), to_json(p_code));
END
$$;

-- The version 6 signature, for services built for it: the same answers as before, from
-- the function above.
CREATE OR REPLACE FUNCTION tally.post_batch(
  p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamptz[],
  p_metadata jsonb[], p_bodies text[],
  p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[])
RETURNS TABLE (req integer, status smallint, body text, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
  n          integer := cardinality(p_callers);
  o_status   smallint[];
  o_body     text[];
  o_replayed boolean[];
  applied    integer[] := '{}';
  rec        record;
  v_s        smallint;
  v_b        text;
BEGIN
  IF cardinality(p_bodies) IS DISTINCT FROM n THEN
    RAISE EXCEPTION 'tally: post_batch needs 1 to 1000 requests and equal-length arrays'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  o_status := array_fill(NULL::smallint, ARRAY[n]);
  o_body := array_fill(NULL::text, ARRAY[n]);
  o_replayed := array_fill(false, ARRAY[n]);
  FOR rec IN SELECT * FROM tally.post_batch(p_callers, p_keys, p_hashes, p_ids, p_created, p_metadata,
                                            p_req, p_from, p_to, p_amount, p_asset) LOOP
    o_status[rec.req] := rec.status;
    o_replayed[rec.req] := rec.replayed;
    IF rec.body IS NOT NULL THEN
      o_body[rec.req] := rec.body;
    ELSIF NOT rec.replayed THEN
      o_body[rec.req] := p_bodies[rec.req];
      applied := applied || rec.req;
    ELSE
      SELECT * INTO v_s, v_b FROM tally.problem('unavailable',
        format('Idempotency-Key %s was first used through a newer ledger service; retry with the same key', to_json(p_keys[rec.req])));
      o_status[rec.req] := v_s;
      o_body[rec.req] := v_b;
    END IF;
  END LOOP;
  IF cardinality(applied) > 0 THEN
    UPDATE tally.idempotency_keys k SET body = p_bodies[u.i]
    FROM unnest(applied) u(i)
    WHERE k.caller = p_callers[u.i] AND k.key = p_keys[u.i];
  END IF;
  RETURN QUERY SELECT i::integer, o_status[i], o_body[i], o_replayed[i] FROM generate_series(1, n) i;
END
$$;

GRANT EXECUTE ON FUNCTION tally.post_batch(text[], text[], bytea[], uuid[], timestamptz[], jsonb[],
  integer[], uuid[], uuid[], bigint[], text[]) TO tally_app;
