-- The write paths of the ledger, each one database round trip: the caller sends one
-- statement, the server does all locking, checking and writing, and commits. No row lock
-- is ever held while waiting on the network.

-- Rejections the database decides, as RFC 9457 problem documents. The Go catalogue in
-- ledger/problem.go carries the same codes, statuses and titles (a test keeps them equal).
CREATE FUNCTION tally.problem(p_code text, p_detail text, OUT status smallint, OUT body text)
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
    ('idempotency_key_reused', 409::smallint, 'Idempotency key reused with a different request')
  ) AS c(code, s, t) WHERE c.code = p_code;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: unknown problem code %', p_code USING ERRCODE = 'invalid_parameter_value';
  END IF;
  body := format('{"type":%s,"title":%s,"status":%s,"detail":%s,"code":%s}',
    to_json('https://tally.dev/problems/' || p_code), to_json(v_title), status, to_json(p_detail), to_json(p_code));
END
$$;

-- post_transaction applies N postings (from, to, amount, asset) atomically, or records why
-- not. The caller renders the success response (p_body) in advance; the outcome, success
-- or rejection, is stored under (caller, key) in the same database transaction, so a
-- replay returns the same bytes and a request is never applied twice.
CREATE FUNCTION tally.post_transaction(
  p_caller text, p_key text, p_request_hash bytea,
  p_id uuid, p_created_at timestamptz, p_metadata jsonb,
  p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[],
  p_body text,
  OUT status smallint, OUT body text, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
  v_n      integer := cardinality(p_from);
  v_ids    uuid[];
  v_posted bigint[];
  v_floor  bigint[];
  v_status text[];
  v_assets text[];
  v_hash   bytea;
  v_code   text;
  v_detail text;
  v_from   integer;
  v_to     integer;
BEGIN
  -- Preconditions the API checks first; here they are a loud error, never a silent fix.
  IF v_n IS NULL OR v_n < 1 OR v_n > 64 OR cardinality(p_to) IS DISTINCT FROM v_n
     OR cardinality(p_amount) IS DISTINCT FROM v_n OR cardinality(p_asset) IS DISTINCT FROM v_n THEN
    RAISE EXCEPTION 'tally: post_transaction needs 1 to 64 postings in equal-length arrays'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM unnest(p_from, p_to, p_amount, p_asset) u(f, t, a, s)
             WHERE f IS NULL OR t IS NULL OR a IS NULL OR s IS NULL OR a <= 0) THEN
    RAISE EXCEPTION 'tally: postings need accounts, an asset and a positive amount'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  replayed := false;

  -- Claim the idempotency key before touching any balance. A concurrent request with the
  -- same key waits here, on the key's index entry, until the first one commits, and then
  -- replays its outcome; while it waits it holds no balance lock.
  INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, body)
  VALUES (p_caller, p_key, p_request_hash, 201, p_body)
  ON CONFLICT (caller, key) DO NOTHING;
  IF NOT FOUND THEN
    SELECT k.request_hash, k.status, k.body INTO v_hash, status, body
    FROM tally.idempotency_keys k WHERE k.caller = p_caller AND k.key = p_key;
    IF NOT FOUND THEN
      -- expired and cleaned up between our insert and this read: the caller retries
      RAISE EXCEPTION 'tally: idempotency record % vanished during the request', p_key
        USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_hash <> p_request_hash THEN
      SELECT * INTO status, body FROM tally.problem('idempotency_key_reused',
        format('Idempotency-Key %s was first used with a different request', to_json(p_key)));
      RETURN;
    END IF;
    replayed := true;
    RETURN;
  END IF;

  -- Lock every balance row this transaction touches, in ascending account id order. Every
  -- writer in Tally takes balance locks in this one global order, so no two writers can
  -- each hold a lock the other waits for: deadlocks are impossible by construction.
  SELECT array_agg(l.account_id ORDER BY l.account_id), array_agg(l.posted ORDER BY l.account_id),
         array_agg(l.floor ORDER BY l.account_id)
  INTO v_ids, v_posted, v_floor
  FROM (SELECT b.account_id, b.posted, b.floor FROM tally.balances b
        WHERE b.account_id = ANY (p_from || p_to)
        ORDER BY b.account_id
        FOR UPDATE) l;
  v_ids := coalesce(v_ids, '{}');

  -- Read status and asset only now, in a new statement whose snapshot starts after the
  -- locks are held: freeze and close take the same balance lock before changing status,
  -- so what we read here cannot change until we commit.
  SELECT array_agg(a.status ORDER BY a.id), array_agg(a.asset ORDER BY a.id)
  INTO v_status, v_assets
  FROM tally.accounts a WHERE a.id = ANY (v_ids);

  SELECT 'account_not_found', format('account %s does not exist', x) INTO v_code, v_detail
  FROM unnest(p_from || p_to) x WHERE x <> ALL (v_ids) ORDER BY x LIMIT 1;

  IF v_code IS NULL THEN
    FOR i IN 1 .. v_n LOOP
      v_from := array_position(v_ids, p_from[i]);
      v_to := array_position(v_ids, p_to[i]);
      IF p_from[i] = p_to[i] THEN
        v_code := 'same_account';
        v_detail := format('posting %s moves money from account %s to itself', i - 1, p_from[i]);
      ELSIF v_status[v_from] = 'closed' OR v_status[v_to] = 'closed' THEN
        v_code := 'account_closed';
        v_detail := format('account %s is closed',
          CASE WHEN v_status[v_from] = 'closed' THEN p_from[i] ELSE p_to[i] END);
      ELSIF v_status[v_from] = 'frozen' OR v_status[v_to] = 'frozen' THEN
        v_code := 'account_frozen';
        v_detail := format('account %s is frozen',
          CASE WHEN v_status[v_from] = 'frozen' THEN p_from[i] ELSE p_to[i] END);
      ELSIF v_assets[v_from] <> p_asset[i] OR v_assets[v_to] <> p_asset[i] THEN
        v_code := 'asset_mismatch';
        v_detail := format('posting %s is in %s but account %s holds %s', i - 1, p_asset[i],
          CASE WHEN v_assets[v_from] <> p_asset[i] THEN p_from[i] ELSE p_to[i] END,
          CASE WHEN v_assets[v_from] <> p_asset[i] THEN v_assets[v_from] ELSE v_assets[v_to] END);
      END IF;
      EXIT WHEN v_code IS NOT NULL;
    END LOOP;
  END IF;

  -- Funds are checked on each account's net movement in this transaction, in numeric so
  -- the check itself cannot overflow.
  IF v_code IS NULL THEN
    SELECT CASE WHEN b.posted::numeric + d.delta < b.floor THEN 'insufficient_funds' ELSE 'balance_limit_exceeded' END,
           format('account %s would go from %s to %s minor units', d.id, b.posted, b.posted::numeric + d.delta)
    INTO v_code, v_detail
    FROM (SELECT m.id, sum(m.delta) AS delta
          FROM (SELECT f, -a FROM unnest(p_from, p_amount) u(f, a)
                UNION ALL
                SELECT t, a FROM unnest(p_to, p_amount) u(t, a)) m(id, delta)
          GROUP BY m.id) d
    JOIN unnest(v_ids, v_posted, v_floor) b(id, posted, floor) ON b.id = d.id
    WHERE b.posted::numeric + d.delta < b.floor OR b.posted::numeric + d.delta > 9223372036854775807
    ORDER BY d.id LIMIT 1;
  END IF;

  IF v_code IS NOT NULL THEN
    SELECT * INTO status, body FROM tally.problem(v_code, v_detail);
    UPDATE tally.idempotency_keys k SET status = post_transaction.status, body = post_transaction.body
    WHERE k.caller = p_caller AND k.key = p_key;
    RETURN;
  END IF;

  INSERT INTO tally.transactions (id, metadata, created_at)
  VALUES (p_id, coalesce(p_metadata, '{}'), p_created_at);

  INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
  SELECT p_id, l.posting, l.account_id, l.asset, l.amount,
         b.posted + sum(l.amount) OVER (PARTITION BY l.account_id ORDER BY l.posting, l.leg)
  FROM (SELECT (u.n - 1)::smallint, 0, u.f, u.s, -u.a
        FROM unnest(p_from, p_amount, p_asset) WITH ORDINALITY u(f, a, s, n)
        UNION ALL
        SELECT (u.n - 1)::smallint, 1, u.t, u.s, u.a
        FROM unnest(p_to, p_amount, p_asset) WITH ORDINALITY u(t, a, s, n)
       ) l(posting, leg, account_id, asset, amount)
  JOIN unnest(v_ids, v_posted) b(id, posted) ON b.id = l.account_id
  ORDER BY l.posting, l.leg;

  UPDATE tally.balances b SET posted = b.posted + d.delta, version = b.version + 1
  FROM (SELECT m.id, sum(m.delta)::bigint AS delta
        FROM (SELECT f, -a FROM unnest(p_from, p_amount) u(f, a)
              UNION ALL
              SELECT t, a FROM unnest(p_to, p_amount) u(t, a)) m(id, delta)
        GROUP BY m.id) d
  WHERE b.account_id = d.id;

  status := 201;
  body := p_body;
END
$$;

-- set_account_status freezes, unfreezes or closes an account and returns '' or the code
-- of the rejection. It takes the account's balance lock first, the same lock every
-- transfer holds while it checks status, so a status change and a transfer are strictly
-- ordered. Reaching the state the account is already in is a no-op.
CREATE FUNCTION tally.set_account_status(p_id uuid, p_status text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  v_posted bigint;
  v_kind   text;
  v_status text;
BEGIN
  SELECT b.posted INTO v_posted FROM tally.balances b WHERE b.account_id = p_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN 'account_not_found';
  END IF;
  SELECT a.kind, a.status INTO v_kind, v_status FROM tally.accounts a WHERE a.id = p_id;
  IF v_status = p_status THEN
    RETURN '';
  ELSIF v_kind = 'external' THEN
    RETURN 'external_account_immutable';
  ELSIF v_status = 'closed' THEN
    RETURN 'account_closed';
  ELSIF p_status = 'closed' AND v_posted <> 0 THEN
    RETURN 'account_balance_not_zero';
  END IF;
  UPDATE tally.accounts SET status = p_status WHERE id = p_id;
  RETURN '';
END
$$;

-- register_asset creates an asset and its external account on this shard, or returns the
-- existing one. created is false when the asset already existed.
CREATE FUNCTION tally.register_asset(p_code text, p_scale smallint, p_external_id uuid,
  OUT code text, OUT scale smallint, OUT external_account_id uuid, OUT created boolean)
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tally.assets (code, scale) VALUES (p_code, p_scale) ON CONFLICT DO NOTHING;
  created := FOUND;
  IF created THEN
    INSERT INTO tally.accounts (id, kind, owner, asset, scale, balance_floor)
    VALUES (p_external_id, 'external', 'tally:external', p_code, p_scale, -9223372036854775808);
    INSERT INTO tally.balances (account_id, floor) VALUES (p_external_id, -9223372036854775808);
  END IF;
  SELECT s.code, s.scale, a.id INTO code, scale, external_account_id
  FROM tally.assets s JOIN tally.accounts a ON a.asset = s.code AND a.kind = 'external'
  WHERE s.code = p_code;
END
$$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tally TO tally_app;
