--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: tally; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA tally;


--
-- Name: apply_inbound(uuid, uuid, bigint, text, uuid, timestamp with time zone, jsonb, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.apply_inbound(p_id uuid, p_to uuid, p_amount bigint, p_asset text, p_tx uuid, p_created timestamp with time zone, p_metadata jsonb, p_clearing_id uuid, OUT state text, OUT problem text, OUT transaction_id uuid) RETURNS record
    LANGUAGE sql
    AS $$
  SELECT r.state, r.problem, r.transaction_id
  FROM tally.apply_inbound_batch(ARRAY[p_id], ARRAY[p_to], ARRAY[p_amount], ARRAY[p_asset], ARRAY[p_tx], ARRAY[p_created],
                                 ARRAY[p_metadata], ARRAY[p_clearing_id]) r
$$;


--
-- Name: apply_inbound_batch(uuid[], uuid[], bigint[], text[], uuid[], timestamp with time zone[], jsonb[], uuid[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.apply_inbound_batch(p_ids uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_tx uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_clearing_ids uuid[]) RETURNS TABLE(req integer, state text, problem text, transaction_id uuid)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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


--
-- Name: balance_at(uuid, timestamp with time zone); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.balance_at(p_account uuid, p_at timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET jit TO 'off'
    AS $$
DECLARE
  v_horizon  timestamptz;
  v_until    uuid := tally.uuid_at(p_at + interval '1 millisecond');
  v_cp       timestamptz;
  v_base     bigint;
  v_moved    bigint;
  v_reserved bigint;
BEGIN
  SELECT min(p.starts) INTO v_horizon FROM tally.journal_partitions p WHERE p.state = 'attached';
  IF p_at < v_horizon THEN
    RAISE EXCEPTION 'tally: history before % is archived', v_horizon
      USING ERRCODE = 'TLY02', DETAIL = v_horizon::text;
  END IF;
  SELECT max(c.at) INTO v_cp FROM tally.checkpoints c WHERE c.at <= p_at;
  SELECT coalesce(sum(last.posted), 0) INTO v_base
  FROM (SELECT DISTINCT ON (c.slot) c.posted FROM tally.balance_checkpoints c
        WHERE c.account_id = p_account AND c.at <= v_cp ORDER BY c.slot, c.at DESC) last;
  SELECT coalesce(sum(e.amount), 0) INTO v_moved FROM tally.entries e
  WHERE e.account_id = p_account
    AND e.transaction_id >= coalesce(tally.uuid_at(v_cp), '00000000-0000-0000-0000-000000000000')
    AND e.transaction_id < v_until;
  SELECT coalesce(sum(p.amount), 0) INTO v_reserved FROM tally.pending_transfers p
  WHERE p.from_account = p_account AND p.id < v_until AND (p.resolved_by IS NULL OR p.resolved_by >= v_until);
  RETURN v_base + v_moved + v_reserved;
END $$;


--
-- Name: carry_checkpoints(integer); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.carry_checkpoints(p_batch integer DEFAULT 1000) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
  v_latest timestamptz := (SELECT max(at) FROM tally.checkpoints);
  v_carry  tally.checkpoint_carry;
  v_last   record;
BEGIN
  IF p_batch < 1 THEN
    RAISE EXCEPTION 'tally: carry_checkpoints needs a batch of at least one row, not %', p_batch
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO v_carry FROM tally.checkpoint_carry FOR UPDATE;
  IF v_carry.through IS NOT DISTINCT FROM v_latest THEN
    RETURN true;
  END IF;
  IF v_carry.target IS DISTINCT FROM v_latest THEN
    v_carry.after_account := '00000000-0000-0000-0000-000000000000';
    v_carry.after_slot := -1;
  END IF;
  WITH span AS (
    SELECT b.account_id, b.slot FROM tally.balances b
    WHERE (b.account_id, b.slot) > (v_carry.after_account, v_carry.after_slot)
    ORDER BY b.account_id, b.slot LIMIT p_batch),
  batch AS (
    SELECT b.account_id, b.slot FROM tally.balances b
    WHERE (b.account_id, b.slot) IN (SELECT s.account_id, s.slot FROM span s)
    ORDER BY b.slot <> 0, b.account_id, b.slot -- locked as sorted: the writers' order
    FOR NO KEY UPDATE),
  latest AS (
    SELECT x.account_id, x.slot, k.at, k.last_entry, k.last_balance_after
    FROM batch x
    CROSS JOIN LATERAL (SELECT k.at, k.last_entry, k.last_balance_after FROM tally.balance_checkpoints k
                        WHERE k.account_id = x.account_id AND k.slot = x.slot AND k.at <= v_latest
                        ORDER BY k.account_id DESC, k.slot DESC, k.at DESC LIMIT 1) k),
  carried AS (
    UPDATE tally.balances b
    SET checkpoint_at = l.at, checkpoint_entry = l.last_entry, checkpoint_balance = l.last_balance_after
    FROM latest l
    WHERE b.account_id = l.account_id AND b.slot = l.slot AND b.checkpoint_at IS DISTINCT FROM l.at)
  -- read from batch: every row of the span is locked before the carry moves past it
  SELECT x.account_id, x.slot INTO v_last FROM batch x ORDER BY x.account_id DESC, x.slot DESC LIMIT 1;
  IF v_last.account_id IS NULL THEN
    UPDATE tally.checkpoint_carry SET through = v_latest, target = NULL, after_account = NULL, after_slot = NULL;
    RETURN true;
  END IF;
  UPDATE tally.checkpoint_carry SET target = v_latest, after_account = v_last.account_id, after_slot = v_last.slot;
  RETURN false;
END $$;


--
-- Name: check_account_has_balance(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_account_has_balance() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_rows integer;
  v_lo   integer;
  v_hi   integer;
  v_want integer[];
BEGIN
  SELECT count(*), min(slot), max(slot) INTO v_rows, v_lo, v_hi FROM tally.balances WHERE account_id = NEW.id;
  -- slots 0..0 for an account of one slot, else 1..N (the rows are unique per slot)
  v_want := (SELECT ARRAY[least(NEW.balance_slots - 1, 1), NEW.balance_slots * (NEW.balance_slots > 1)::integer]);
  IF v_rows = 0 THEN
    RAISE EXCEPTION 'tally: account % has no balance row', NEW.id USING ERRCODE = 'check_violation';
  ELSIF v_rows <> NEW.balance_slots OR v_lo <> v_want[1] OR v_hi <> v_want[2] THEN
    RAISE EXCEPTION 'tally: account % has % balance slots but balance rows for slots % to %', NEW.id, NEW.balance_slots, v_lo, v_hi
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;


--
-- Name: check_account_update(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_account_update() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.owner <> OLD.owner OR NEW.asset <> OLD.asset
     OR NEW.scale <> OLD.scale OR NEW.created_at <> OLD.created_at OR NEW.balance_slots <> OLD.balance_slots THEN
    RAISE EXCEPTION 'tally: an account''s id, kind, owner, asset, scale, balance slots and created_at are immutable'
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.status <> OLD.status THEN
    IF OLD.status = 'closed' THEN
      RAISE EXCEPTION 'tally: account % is closed', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'closed' AND (SELECT sum(posted) FROM tally.balances WHERE account_id = OLD.id) <> 0 THEN
      RAISE EXCEPTION 'tally: account % has a non-zero balance and cannot close', OLD.id
        USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'closed' AND EXISTS (
         SELECT FROM tally.pending_transfers p WHERE p.from_account = OLD.id AND p.state = 'pending'
         UNION ALL
         SELECT FROM tally.pending_transfers p WHERE p.to_account = OLD.id AND p.state = 'pending') THEN
      RAISE EXCEPTION 'tally: account % has pending transfers and cannot close', OLD.id
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END
$$;


--
-- Name: check_balances_match_journal(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_balances_match_journal() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_bad     record;
  v_latest  timestamptz := (SELECT max(c.at) FROM tally.checkpoints c);
  v_from    uuid := coalesce(tally.uuid_at(v_latest), '00000000-0000-0000-0000-000000000000');
  v_carried boolean := (SELECT k.through IS NOT DISTINCT FROM v_latest FROM tally.checkpoint_carry k);
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT c.account_id, c.slot, a.balance_slots INTO v_bad
    FROM changed_balances c JOIN tally.accounts a ON a.id = c.account_id
    WHERE CASE WHEN a.balance_slots = 1 THEN c.slot <> 0 ELSE c.slot NOT BETWEEN 1 AND a.balance_slots END
    LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'tally: account % has % balance slots, not slot %', v_bad.account_id, v_bad.balance_slots, v_bad.slot
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  SELECT c.account_id, c.slot, c.posted, coalesce(last.balance_after, 0) AS journal INTO v_bad
  FROM changed_balances c
  LEFT JOIN LATERAL (
    SELECT p.balance_after FROM (
      (SELECT e.id, e.balance_after FROM tally.entries e
       WHERE c.slot = 0 AND e.account_id = c.account_id AND e.slot IS NULL AND e.transaction_id >= v_from
       ORDER BY e.account_id DESC, e.id DESC LIMIT 1)
      UNION ALL
      (SELECT e.id, e.balance_after FROM tally.entries e
       WHERE c.slot > 0 AND e.slot IS NOT NULL AND e.account_id = c.account_id AND e.slot = c.slot AND e.transaction_id >= v_from
       ORDER BY e.account_id DESC, e.slot DESC, e.id DESC LIMIT 1)
      UNION ALL
      SELECT c.checkpoint_entry, c.checkpoint_balance WHERE c.checkpoint_entry IS NOT NULL
      UNION ALL
      (SELECT k.last_entry, k.last_balance_after FROM tally.balance_checkpoints k
       WHERE NOT v_carried AND k.account_id = c.account_id AND k.slot = c.slot
       ORDER BY k.account_id DESC, k.slot DESC, k.at DESC LIMIT 1)) p
    ORDER BY p.id DESC LIMIT 1) last ON true
  WHERE c.posted <> coalesce(last.balance_after, 0)
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: balance of account % slot % is %, the journal says %', v_bad.account_id, v_bad.slot, v_bad.posted, v_bad.journal
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;


--
-- Name: check_holding_moves(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_holding_moves() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_id uuid;
BEGIN
  IF current_setting('tally.moving_holds', true) = 'on' THEN
    RETURN NULL;
  END IF;
  SELECT n.account_id INTO v_id FROM new_entries n JOIN tally.accounts a ON a.id = n.account_id
  WHERE a.kind IN ('holding', 'clearing') LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: account % holds pending transfers or clears between shards; only the ledger moves it', v_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;


--
-- Name: check_ids_on_this_shard(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_ids_on_this_shard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_shard integer;
  v_id    uuid;
BEGIN
  SELECT shard_index INTO v_shard FROM tally.shard;
  IF v_shard IS NULL THEN
    RAISE EXCEPTION 'tally: this database has no shard index; run tally migrate --shard N'
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT n.id INTO v_id FROM new_rows n WHERE tally.id_shard(n.id) <> v_shard LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: id % belongs to shard %, this is shard %', v_id, tally.id_shard(v_id), v_shard
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;


--
-- Name: check_journal_references(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_journal_references() RETURNS trigger
    LANGUAGE plpgsql
    SET jit TO 'off'
    AS $_$
DECLARE
  v_col text;
  v_id  uuid;
BEGIN
  FOREACH v_col IN ARRAY TG_ARGV LOOP
    EXECUTE format('SELECT n.%1$I FROM new_rows n WHERE n.%1$I IS NOT NULL
                    AND NOT EXISTS (SELECT FROM tally.transactions t WHERE t.id = n.%1$I) LIMIT 1', v_col)
      INTO v_id;
    IF v_id IS NOT NULL THEN
      RAISE EXCEPTION 'tally: %.% names transaction %, which is not in the journal', TG_TABLE_NAME, v_col, v_id
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  END LOOP;
  RETURN NULL;
END $_$;


--
-- Name: check_new_entries(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_new_entries() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_bad     record;
  v_xmin    xid;
  v_cmin    cid;
  v_latest  timestamptz := (SELECT max(c.at) FROM tally.checkpoints c);
  v_from    uuid := coalesce(tally.uuid_at(v_latest), '00000000-0000-0000-0000-000000000000');
  v_carried boolean := (SELECT k.through IS NOT DISTINCT FROM v_latest FROM tally.checkpoint_carry k);
BEGIN
  -- Each posting is one credit leg and debit legs from one account, one per slot drawn,
  -- summing to zero in one asset.
  SELECT n.transaction_id, n.posting, count(*) AS legs, sum(n.amount) AS total, min(n.asset) AS asset, max(n.asset) AS other
  INTO v_bad FROM new_entries n
  GROUP BY n.transaction_id, n.posting
  HAVING count(*) FILTER (WHERE n.amount > 0) <> 1
      OR count(DISTINCT n.account_id) FILTER (WHERE n.amount < 0) <> 1
      OR count(*) FILTER (WHERE n.amount < 0) <> count(DISTINCT coalesce(n.slot, 0)) FILTER (WHERE n.amount < 0)
      OR sum(n.amount) <> 0 OR min(n.asset) <> max(n.asset)
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: transaction % posting % is unbalanced (% legs, sum %, in % and %): a posting is one credit and debits from one account, one per slot, summing to zero in one asset',
      v_bad.transaction_id, v_bad.posting, v_bad.legs, v_bad.total, v_bad.asset, v_bad.other
      USING ERRCODE = 'check_violation';
  END IF;

  -- Every entry joins a transaction written by this same statement (see 003): so entries
  -- never join a transaction afterwards, and the legs above are all of each posting.
  SELECT e.xmin, e.cmin INTO v_xmin, v_cmin FROM tally.entries e WHERE e.id = (SELECT min(n.id) FROM new_entries n);
  SELECT n.transaction_id, t.id IS NOT NULL AS found INTO v_bad
  FROM (SELECT DISTINCT transaction_id FROM new_entries) n
  LEFT JOIN LATERAL (SELECT t.id, t.xmin, t.cmin FROM tally.transactions t WHERE t.id = n.transaction_id LIMIT 1) t ON true
  WHERE t.id IS NULL OR t.xmin <> v_xmin OR NOT t.cmin = v_cmin
  LIMIT 1;
  IF FOUND AND NOT v_bad.found THEN
    RAISE EXCEPTION 'tally: entries name transaction %, which does not exist', v_bad.transaction_id
      USING ERRCODE = 'foreign_key_violation';
  ELSIF FOUND THEN
    RAISE EXCEPTION 'tally: entries join transaction %, written by an earlier statement: a transaction and its entries arrive in one statement', v_bad.transaction_id
      USING ERRCODE = 'check_violation';
  END IF;

  -- Each entry, in one pass over the statement's entries by account, slot and id (as 003,
  -- per slot): it continues its slot's running balance; it names an account that exists
  -- and holds the entry's asset; and a slot's last new entry is what its balance row says
  -- (a slot the account does not have has no row, so no entry can land there). The
  -- previous entry is the highest id among the slot's entries since the latest
  -- checkpoint and its checkpoint: carried on its balance row, or while a carry is under
  -- way, its latest row in balance_checkpoints.
  SELECT n.account_id, n.slot, n.asset, n.amount, n.balance_after, coalesce(n.prev, before.balance_after, 0) AS prev,
         n.k, n.last, n.lo, n.hi, coalesce(before.asset, a.asset) AS holds, b.posted
  INTO v_bad
  FROM (SELECT e.account_id, e.slot, e.id, e.asset, e.amount, e.balance_after,
               lag(e.balance_after) OVER w AS prev, row_number() OVER w AS k,
               lead(e.id) OVER w IS NULL AS last,
               first_value(e.asset) OVER w AS lo, e.asset AS hi
        FROM new_entries e WINDOW w AS (PARTITION BY e.account_id, e.slot ORDER BY e.id)) n
  LEFT JOIN LATERAL (
    SELECT p.balance_after, p.asset FROM (
      (SELECT e.id, e.balance_after, e.asset FROM tally.entries e
       WHERE n.k = 1 AND n.slot IS NULL AND e.account_id = n.account_id AND e.slot IS NULL AND e.id < n.id
         AND e.transaction_id >= v_from
       ORDER BY e.account_id DESC, e.id DESC LIMIT 1)
      UNION ALL
      (SELECT e.id, e.balance_after, e.asset FROM tally.entries e
       WHERE n.k = 1 AND n.slot IS NOT NULL AND e.slot IS NOT NULL AND e.account_id = n.account_id AND e.slot = n.slot AND e.id < n.id
         AND e.transaction_id >= v_from
       ORDER BY e.account_id DESC, e.slot DESC, e.id DESC LIMIT 1)
      UNION ALL
      (SELECT c.checkpoint_entry, c.checkpoint_balance, NULL FROM tally.balances c
       WHERE n.k = 1 AND c.account_id = n.account_id AND c.slot = coalesce(n.slot, 0) AND c.checkpoint_entry IS NOT NULL)
      UNION ALL
      (SELECT c.last_entry, c.last_balance_after, NULL FROM tally.balance_checkpoints c
       WHERE n.k = 1 AND NOT v_carried AND c.account_id = n.account_id AND c.slot = coalesce(n.slot, 0)
       ORDER BY c.account_id DESC, c.slot DESC, c.at DESC LIMIT 1)) p
    ORDER BY p.id DESC LIMIT 1) before ON true
  LEFT JOIN LATERAL (SELECT a.asset FROM tally.accounts a
                     WHERE n.k = 1 AND before.asset IS NULL AND a.id = n.account_id LIMIT 1) a ON true
  LEFT JOIN LATERAL (SELECT b.posted FROM tally.balances b
                     WHERE n.last AND b.account_id = n.account_id AND b.slot = coalesce(n.slot, 0) LIMIT 1) b ON true
  WHERE n.balance_after <> coalesce(n.prev, before.balance_after, 0) + n.amount
     OR (n.k = 1 AND coalesce(before.asset, a.asset) IS DISTINCT FROM n.asset) OR n.lo <> n.hi
     OR (n.last AND b.posted IS DISTINCT FROM n.balance_after)
  LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;
  ELSIF v_bad.k = 1 AND v_bad.holds IS NULL THEN
    RAISE EXCEPTION 'tally: entries name account %, which does not exist', v_bad.account_id
      USING ERRCODE = 'foreign_key_violation';
  ELSIF (v_bad.k = 1 AND v_bad.holds <> v_bad.asset) OR v_bad.lo <> v_bad.hi THEN
    RAISE EXCEPTION 'tally: an entry on account % is in %, which is not the account''s asset', v_bad.account_id, v_bad.asset
      USING ERRCODE = 'foreign_key_violation';
  ELSIF v_bad.balance_after <> v_bad.prev + v_bad.amount THEN
    RAISE EXCEPTION 'tally: entry on account % slot % has balance_after %, expected % + %',
      v_bad.account_id, v_bad.slot, v_bad.balance_after, v_bad.prev, v_bad.amount
      USING ERRCODE = 'check_violation';
  END IF;
  RAISE EXCEPTION 'tally: entries take account % slot % to %, but its balance is %', v_bad.account_id, v_bad.slot, v_bad.balance_after, v_bad.posted
    USING ERRCODE = 'check_violation';
END
$$;


--
-- Name: check_new_transactions_balanced(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_new_transactions_balanced() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_id    uuid;
  v_asset text;
  v_total numeric;
  v_seal  timestamptz;
BEGIN
  SELECT max(c.at) INTO v_seal FROM tally.checkpoints c;
  IF v_seal IS NOT NULL THEN
    SELECT n.id INTO v_id FROM new_transactions n WHERE n.id < tally.uuid_at(v_seal) LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'tally: transaction % was made at %, before the checkpoint at %: the journal before it is sealed',
        v_id, tally.uuid_time(v_id), v_seal USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  -- One index probe per transaction: the sums of its entries per asset. No entries at
  -- all leaves bool_or NULL, which counts as unbalanced.
  SELECT n.id INTO v_id
  FROM new_transactions n
  CROSS JOIN LATERAL (SELECT bool_or(s.total <> 0) AS unbalanced
                      FROM (SELECT sum(e.amount) AS total FROM tally.entries e
                            WHERE e.transaction_id = n.id GROUP BY e.asset) s) c
  WHERE c.unbalanced IS DISTINCT FROM false
  LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  SELECT e.asset, sum(e.amount) INTO v_asset, v_total FROM tally.entries e
  WHERE e.transaction_id = v_id GROUP BY e.asset HAVING sum(e.amount) <> 0 LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: transaction % has no entries', v_id USING ERRCODE = 'check_violation';
  END IF;
  RAISE EXCEPTION 'tally: transaction % sums to % in %, not zero', v_id, v_total, v_asset
    USING ERRCODE = 'check_violation';
END
$$;


--
-- Name: check_pending_transfer_update(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.check_pending_transfer_update() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF OLD.state <> 'pending' THEN
    RAISE EXCEPTION 'tally: pending transfer % was already %', OLD.id, OLD.state USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.id <> OLD.id OR NEW.from_account <> OLD.from_account OR NEW.to_account <> OLD.to_account
     OR NEW.asset <> OLD.asset OR NEW.amount <> OLD.amount OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
    RAISE EXCEPTION 'tally: a pending transfer''s accounts, asset, amount and expiry are immutable' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$$;


--
-- Name: claim_keys(text[], text[], bytea[], integer[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.claim_keys(p_callers text[], p_keys text[], p_hashes bytea[], p_shards integer[]) RETURNS TABLE(req integer, status smallint, body text)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  n integer := cardinality(p_callers);
  v_claimed integer[];
  v_gone integer;
BEGIN
  IF n IS NULL OR n < 1 OR n > 1000 OR cardinality(p_keys) IS DISTINCT FROM n
     OR cardinality(p_hashes) IS DISTINCT FROM n OR cardinality(p_shards) IS DISTINCT FROM n
     OR (SELECT count(DISTINCT (c, k)) FROM unnest(p_callers, p_keys) u(c, k)) <> n THEN
    RAISE EXCEPTION 'tally: claim_keys needs 1 to 1000 distinct keys and equal-length arrays'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  WITH ins AS (
    INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, runs_on)
    SELECT c, k, h, 307, s FROM unnest(p_callers, p_keys, p_hashes, p_shards) u(c, k, h, s) ORDER BY c, k
    ON CONFLICT (caller, key) DO NOTHING
    RETURNING caller, key)
  SELECT array_agg(u.i) INTO v_claimed
  FROM unnest(p_callers, p_keys) WITH ORDINALITY u(c, k, i) JOIN ins ON ins.caller = u.c AND ins.key = u.k;
  v_claimed := coalesce(v_claimed, '{}');

  -- A new statement, so it sees the records that made the insert skip their keys.
  SELECT count(*) INTO v_gone
  FROM unnest(p_callers, p_keys) WITH ORDINALITY u(c, k, i)
  WHERE u.i <> ALL (v_claimed)
    AND NOT EXISTS (SELECT FROM tally.idempotency_keys r WHERE r.caller = u.c AND r.key = u.k);
  IF v_gone > 0 THEN
    RAISE EXCEPTION 'tally: an idempotency record vanished during the claim'
      USING ERRCODE = 'serialization_failure'; -- expired and cleaned up meanwhile: retry
  END IF;

  RETURN QUERY
  SELECT u.i::integer, p.status, p.body
  FROM unnest(p_callers, p_keys, p_hashes) WITH ORDINALITY u(c, k, h, i)
  JOIN tally.idempotency_keys r ON r.caller = u.c AND r.key = u.k
  CROSS JOIN LATERAL tally.problem('idempotency_key_reused',
    format('Idempotency-Key %s was first used with a different request', to_json(u.k))) p
  WHERE u.i <> ALL (v_claimed) AND r.request_hash <> u.h;
END
$$;


--
-- Name: clearing_account(text, integer, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.clearing_account(p_asset text, p_peer integer, p_new_id uuid) RETURNS uuid
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_id    uuid;
  v_owner text := 'tally:clearing:' || p_peer;
BEGIN
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.owner = v_owner AND a.kind = 'clearing';
  IF FOUND THEN
    RETURN v_id;
  END IF;
  INSERT INTO tally.accounts (id, kind, owner, asset, scale, balance_floor)
  SELECT p_new_id, 'clearing', v_owner, s.code, s.scale, -9223372036854775808 FROM tally.assets s WHERE s.code = p_asset
  ON CONFLICT (asset, owner) WHERE kind = 'clearing' DO NOTHING;
  IF FOUND THEN
    INSERT INTO tally.balances (account_id, floor) VALUES (p_new_id, -9223372036854775808);
  END IF;
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.owner = v_owner AND a.kind = 'clearing';
  RETURN v_id; -- NULL: no such asset
END
$$;


--
-- Name: count_accounts(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.count_accounts() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$ SELECT count(*) FROM tally.accounts WHERE kind = 'standard' $$;


--
-- Name: drop_archived_partition(text, jsonb); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.drop_archived_partition(p_suffix text, p_archive jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_part tally.journal_partitions;
BEGIN
  SELECT * INTO v_part FROM tally.journal_partitions WHERE suffix = p_suffix FOR UPDATE;
  IF NOT FOUND OR v_part.state <> 'attached' THEN
    RAISE EXCEPTION 'tally: no attached partition %', p_suffix USING ERRCODE = 'undefined_object';
  END IF;
  IF EXISTS (SELECT FROM tally.journal_partitions p WHERE p.state = 'attached' AND p.starts < v_part.starts) THEN
    RAISE EXCEPTION 'tally: partition % is not the oldest attached; archive older ones first', p_suffix
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF NOT EXISTS (SELECT FROM tally.checkpoints c WHERE c.at = v_part.ends) THEN
    RAISE EXCEPTION 'tally: partition % has no checkpoint at its end (%); checkpoints come first', p_suffix, v_part.ends
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  PERFORM tally.lock_for_ddl('{tally.transactions, tally.entries}');
  EXECUTE format('ALTER TABLE tally.transactions DETACH PARTITION tally.%I', 'transactions_' || p_suffix);
  EXECUTE format('ALTER TABLE tally.entries DETACH PARTITION tally.%I', 'entries_' || p_suffix);
  EXECUTE format('DROP TABLE tally.%I, tally.%I', 'transactions_' || p_suffix, 'entries_' || p_suffix);
  UPDATE tally.journal_partitions SET state = 'archived', archive = p_archive WHERE suffix = p_suffix;
END $$;


--
-- Name: ensure_partitions(interval); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.ensure_partitions(p_ahead interval DEFAULT '3 mons'::interval) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_width interval := (SELECT partition_width FROM tally.journal_settings);
  v_from  timestamptz;
  v_to    timestamptz;
  v_made  integer := 0;
  v_sfx   text;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('tally.ensure_partitions')) THEN
    RETURN 0;
  END IF;
  LOOP
    SELECT max(ends) INTO v_from FROM tally.journal_partitions;
    EXIT WHEN v_from > now() + p_ahead;
    IF v_made = 0 THEN
      PERFORM tally.lock_for_ddl('{tally.transactions, tally.entries}', '5 seconds');
    END IF;
    v_to := v_from + v_width;
    v_sfx := 'p' || to_char(v_from AT TIME ZONE 'UTC', 'YYYYMMDD');
    EXECUTE format('CREATE TABLE tally.%I PARTITION OF tally.transactions FOR VALUES FROM (%L) TO (%L)',
                   'transactions_' || v_sfx, tally.uuid_at(v_from), tally.uuid_at(v_to));
    EXECUTE format('CREATE TABLE tally.%I PARTITION OF tally.entries FOR VALUES FROM (%L) TO (%L)',
                   'entries_' || v_sfx, tally.uuid_at(v_from), tally.uuid_at(v_to));
    EXECUTE format('ALTER TABLE tally.%I ADD PRIMARY KEY (id)', 'entries_' || v_sfx);
    INSERT INTO tally.journal_partitions (starts, ends, suffix) VALUES (v_from, v_to, v_sfx);
    v_made := v_made + 1;
  END LOOP;
  RETURN v_made;
EXCEPTION WHEN lock_not_available THEN
  RETURN -1;
END $$;


SET default_tablespace = '';

--
-- Name: entries; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.entries (
    id bigint NOT NULL,
    transaction_id uuid NOT NULL,
    posting smallint NOT NULL,
    account_id uuid NOT NULL,
    asset text NOT NULL,
    amount bigint NOT NULL,
    balance_after bigint NOT NULL,
    slot smallint,
    CONSTRAINT entries_amount_check CHECK ((amount <> 0)),
    CONSTRAINT entries_posting_check CHECK ((posting >= 0)),
    CONSTRAINT entries_slot_check CHECK (((slot >= 1) AND (slot <= 64)))
)
PARTITION BY RANGE (transaction_id);


--
-- Name: entries_page(uuid, bigint, integer); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.entries_page(p_account uuid, p_before bigint, p_limit integer) RETURNS SETOF tally.entries
    LANGUAGE plpgsql STABLE ROWS 50
    SET plan_cache_mode TO 'force_generic_plan'
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
  v_from  timestamptz := (SELECT min(c.at) FROM (SELECT at FROM tally.checkpoints ORDER BY at DESC LIMIT 2) c);
  v_rows  tally.entries[];
  v_older bigint; -- the greatest id the partitions before v_from hold for the account
BEGIN
  IF p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'tally: a page holds at least one entry, not %', p_limit USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF v_from IS NOT NULL THEN
    v_rows := ARRAY(
      SELECT e FROM tally.entries e
      WHERE e.account_id = p_account AND e.id < p_before AND e.transaction_id >= tally.uuid_at(v_from)
      ORDER BY e.account_id DESC, e.id DESC LIMIT p_limit);
    IF cardinality(v_rows) = p_limit THEN
      SELECT max(k.last_entry) INTO v_older FROM tally.balance_checkpoints k
      WHERE k.account_id = p_account AND k.at <= v_from;
      IF v_older IS NULL OR v_older < v_rows[p_limit].id THEN
        RETURN QUERY SELECT x.* FROM unnest(v_rows) x;
        RETURN;
      END IF;
    END IF;
  END IF;
  RETURN QUERY SELECT e.* FROM tally.entries e
    WHERE e.account_id = p_account AND e.id < p_before
    ORDER BY e.account_id DESC, e.id DESC LIMIT p_limit;
END $$;


--
-- Name: holding_account(text, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.holding_account(p_asset text, p_new_id uuid) RETURNS uuid
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_id uuid;
BEGIN
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.kind = 'holding';
  IF FOUND THEN
    RETURN v_id;
  END IF;
  INSERT INTO tally.accounts (id, kind, owner, asset, scale, balance_floor)
  SELECT p_new_id, 'holding', 'tally:holding', s.code, s.scale, 0 FROM tally.assets s WHERE s.code = p_asset
  ON CONFLICT (asset) WHERE kind = 'holding' DO NOTHING;
  IF FOUND THEN
    INSERT INTO tally.balances (account_id, floor) VALUES (p_new_id, 0);
  END IF;
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.kind = 'holding';
  RETURN v_id; -- NULL: no such asset
END
$$;


--
-- Name: id_shard(uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.id_shard(id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (get_byte(uuid_send(id), 9) << 8) | get_byte(uuid_send(id), 10) $$;


--
-- Name: lock_for_ddl(regclass[], interval); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.lock_for_ddl(p_tables regclass[], p_patience interval DEFAULT '00:02:00'::interval) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_until timestamptz := clock_timestamp() + p_patience;
  v_t     regclass;
BEGIN
  PERFORM set_config('lock_timeout', '100ms', true);
  LOOP
    BEGIN
      FOREACH v_t IN ARRAY p_tables LOOP
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_t);
      END LOOP;
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
      IF clock_timestamp() > v_until THEN
        RAISE EXCEPTION 'tally: could not lock % for % (busy)', p_tables, p_patience USING ERRCODE = 'lock_not_available';
      END IF;
      PERFORM pg_sleep(random() * 0.05);
    END;
  END LOOP;
  PERFORM set_config('lock_timeout', '0', true);
END $$;


--
-- Name: make_checkpoints(interval); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.make_checkpoints(p_grace interval DEFAULT '01:00:00'::interval) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $_$
DECLARE
  v_prev  timestamptz;
  v_at    timestamptz;
  v_made  integer := 0;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('tally.make_checkpoints')) THEN
    RETURN 0;
  END IF;
  LOOP
    SELECT max(at) INTO v_prev FROM tally.checkpoints;
    SELECT min(p.ends) INTO v_at FROM tally.journal_partitions p
    WHERE p.ends > coalesce(v_prev, '-infinity') AND p.ends <= now() - p_grace;
    EXIT WHEN v_at IS NULL;
    -- One statement: the checkpoint row and its slots' rows, the previous checkpoint plus
    -- the partition's entries. The bounds are written into the statement, so PostgreSQL
    -- reads the one partition when it plans it (as variables they were looked for in
    -- every partition, once per slot).
    EXECUTE format($q$
    WITH moved AS (
      SELECT e.account_id, coalesce(e.slot, 0)::smallint AS slot, sum(e.amount)::bigint AS total,
             count(DISTINCT e.transaction_id) AS n, max(e.id) AS last_id
      FROM tally.entries e
      WHERE e.transaction_id >= %1$L AND e.transaction_id < %2$L
      GROUP BY 1, 2),
    changed AS (
      SELECT m.account_id, m.slot, coalesce(prev.posted, 0) + m.total AS posted,
             coalesce(prev.transactions, 0) + m.n AS transactions,
             CASE WHEN prev.last_entry > m.last_id THEN prev.last_entry ELSE m.last_id END AS last_entry,
             CASE WHEN prev.last_entry > m.last_id THEN prev.last_balance_after
                  ELSE (SELECT x.balance_after FROM tally.entries x
                        WHERE x.transaction_id >= %1$L AND x.transaction_id < %2$L AND x.id = m.last_id) END AS last_balance_after
      FROM moved m
      LEFT JOIN LATERAL (SELECT c.posted, c.transactions, c.last_entry, c.last_balance_after
                         FROM tally.balance_checkpoints c
                         WHERE c.account_id = m.account_id AND c.slot = m.slot
                         ORDER BY c.at DESC LIMIT 1) prev ON true),
    checkpoint AS (INSERT INTO tally.checkpoints (at, slots) SELECT $1, count(*) FROM changed)
    INSERT INTO tally.balance_checkpoints (account_id, slot, at, posted, transactions, last_entry, last_balance_after)
    SELECT account_id, slot, $1, posted, transactions, last_entry, last_balance_after FROM changed
    $q$, coalesce(tally.uuid_at(v_prev), '00000000-0000-0000-0000-000000000000'), tally.uuid_at(v_at)) USING v_at;
    ANALYZE tally.balance_checkpoints;
    v_made := v_made + 1;
  END LOOP;
  RETURN v_made;
END $_$;


--
-- Name: outbox_accounts_changed(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_accounts_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, accounts, data)
  SELECT CASE WHEN n.status = 'active' THEN 'account.unfrozen' ELSE 'account.' || n.status END,
         n.id, ARRAY[n.id],
         jsonb_build_object('id', n.id, 'status', n.status, 'previous_status', o.status)
  FROM new_rows n JOIN old_rows o ON o.id = n.id
  WHERE n.status <> o.status ORDER BY n.id;
  RETURN NULL;
END $$;


--
-- Name: outbox_accounts_opened(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_accounts_opened() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, accounts, data, occurred_at)
  SELECT 'account.opened', n.id, ARRAY[n.id],
         jsonb_build_object('id', n.id, 'kind', n.kind, 'owner', n.owner, 'asset', n.asset,
                            'status', n.status, 'metadata', n.metadata, 'created_at', n.created_at),
         n.created_at
  FROM new_rows n ORDER BY n.id;
  RETURN NULL;
END $$;


--
-- Name: outbox_amount(bigint, text); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_amount(p_amount bigint, p_asset text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
  SELECT round(p_amount::numeric / 10::numeric ^ a.scale, a.scale)::text FROM tally.assets a WHERE a.code = p_asset
$$;


--
-- Name: outbox_backlog(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_backlog(OUT published bigint, OUT waiting bigint, OUT oldest timestamp with time zone) RETURNS record
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
  SELECT (SELECT p.published FROM tally.outbox_progress p), count(*), min(o.occurred_at) FROM tally.outbox o
$$;


--
-- Name: outbox_inbound_transfers(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_inbound_transfers() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, accounts, data)
  SELECT CASE n.state WHEN 'applied' THEN 'transfer.received' ELSE 'transfer.refused' END,
         n.id, ARRAY[n.to_account],
         jsonb_strip_nulls(jsonb_build_object('id', n.id, 'to_account', n.to_account, 'asset', n.asset,
           'amount', tally.outbox_amount(n.amount, n.asset), 'state', n.state,
           'transaction_id', n.transaction_id, 'problem', n.problem))
  FROM new_rows n ORDER BY n.id;
  RETURN NULL;
END $$;


--
-- Name: outbox_next(bigint, integer); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_next(p_acknowledged bigint, p_limit integer) RETURNS TABLE(sequence bigint, type text, subject uuid, occurred_at timestamp with time zone, accounts uuid[], data jsonb, created_at timestamp with time zone, metadata jsonb, reverses uuid, posting smallint, account uuid, amount bigint, asset text, scale smallint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
DECLARE
  v_published bigint;
  v_batch bigint[];
BEGIN
  -- The row lock makes two relays that both believe they are the one take turns.
  SELECT p.published, p.batch INTO v_published, v_batch FROM tally.outbox_progress p FOR UPDATE;
  IF p_acknowledged IS NOT NULL THEN
    IF v_batch IS NULL OR v_published + cardinality(v_batch) <> p_acknowledged THEN
      RAISE EXCEPTION 'another relay published this shard''s events meanwhile' USING ERRCODE = 'TLY01';
    END IF;
    DELETE FROM tally.outbox WHERE id = ANY (v_batch);
    v_published := p_acknowledged;
    v_batch := NULL;
    UPDATE tally.outbox_progress SET published = v_published, published_at = now(), batch = NULL;
  END IF;
  IF v_batch IS NULL THEN
    SELECT array_agg(f.id ORDER BY f.id) INTO v_batch
    FROM (SELECT o.id FROM tally.outbox o ORDER BY o.id LIMIT p_limit) f;
    IF v_batch IS NULL THEN
      RETURN;
    END IF;
    UPDATE tally.outbox_progress SET batch = v_batch;
  END IF;
  RETURN QUERY
  SELECT v_published + b.n, o.type, o.subject, o.occurred_at, o.accounts, o.data,
         tx.created_at, tx.metadata, r.transaction_id, e.posting, e.account_id, e.amount, e.asset, a.scale
  FROM unnest(v_batch) WITH ORDINALITY AS b(id, n)
  JOIN tally.outbox o ON o.id = b.id
  LEFT JOIN tally.transactions tx ON o.type = 'transaction.committed' AND tx.id = o.subject
  LEFT JOIN tally.reversals r ON r.reversal_id = tx.id
  LEFT JOIN tally.entries e ON e.transaction_id = tx.id
  LEFT JOIN tally.assets a ON a.code = e.asset
  ORDER BY b.n, e.posting, e.amount;
END $$;


SET default_table_access_method = heap;

--
-- Name: pending_transfers; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.pending_transfers (
    id uuid NOT NULL,
    from_account uuid NOT NULL,
    to_account uuid NOT NULL,
    asset text NOT NULL,
    amount bigint NOT NULL,
    expires_at timestamp with time zone,
    state text DEFAULT 'pending'::text NOT NULL,
    posted_amount bigint,
    resolved_by uuid,
    resolved_at timestamp with time zone,
    remote_account uuid,
    CONSTRAINT pending_transfers_amount_check CHECK ((amount > 0)),
    CONSTRAINT pending_transfers_check CHECK (((posted_amount > 0) AND (posted_amount <= amount))),
    CONSTRAINT pending_transfers_posted_amount CHECK (((state = 'posted'::text) = (posted_amount IS NOT NULL))),
    CONSTRAINT pending_transfers_remote_never_expire CHECK (((remote_account IS NULL) OR (expires_at IS NULL))),
    CONSTRAINT pending_transfers_resolved_once CHECK ((((state = 'pending'::text) = (resolved_by IS NULL)) AND ((resolved_by IS NULL) = (resolved_at IS NULL)))),
    CONSTRAINT pending_transfers_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'posted'::text, 'voided'::text, 'expired'::text]))),
    CONSTRAINT pending_transfers_two_accounts CHECK ((from_account <> to_account))
);


--
-- Name: outbox_pending_transfer(tally.pending_transfers); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_pending_transfer(p tally.pending_transfers) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog'
    AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object('id', p.id, 'from_account', p.from_account,
    'to_account', p.to_account, 'remote_account', p.remote_account, 'asset', p.asset,
    'amount', tally.outbox_amount(p.amount, p.asset), 'state', p.state,
    'posted_amount', tally.outbox_amount(p.posted_amount, p.asset),
    'expires_at', p.expires_at, 'resolved_by', p.resolved_by, 'resolved_at', p.resolved_at))
$$;


--
-- Name: outbox_pending_transfers(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_pending_transfers() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO tally.outbox (type, subject, accounts, data)
    SELECT 'transfer.pending', n.id, ARRAY[n.from_account, n.to_account], tally.outbox_pending_transfer(n)
    FROM new_rows n ORDER BY n.id;
  ELSE
    INSERT INTO tally.outbox (type, subject, accounts, data)
    SELECT 'transfer.' || n.state, n.id, ARRAY[n.from_account, n.to_account], tally.outbox_pending_transfer(n)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state <> o.state ORDER BY n.id;
  END IF;
  RETURN NULL;
END $$;


--
-- Name: outbox_transactions(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.outbox_transactions() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog'
    AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, occurred_at)
  SELECT 'transaction.committed', e.transaction_id, now() FROM new_entries e
  GROUP BY e.transaction_id ORDER BY min(e.id);
  RETURN NULL;
END $$;


--
-- Name: post_batch(text[], text[], bytea[], uuid[], timestamp with time zone[], jsonb[], integer[], uuid[], uuid[], bigint[], text[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]) RETURNS TABLE(req integer, status smallint, body text, replayed boolean, transaction_id uuid)
    LANGUAGE plpgsql
    AS $$
BEGIN
  BEGIN
    RETURN QUERY SELECT * FROM tally.post_batch_attempt(p_callers, p_keys, p_hashes, p_ids, p_created, p_metadata,
                                                        p_req, p_from, p_to, p_amount, p_asset, false);
  EXCEPTION WHEN SQLSTATE 'TL001' THEN
    RETURN QUERY SELECT * FROM tally.post_batch_attempt(p_callers, p_keys, p_hashes, p_ids, p_created, p_metadata,
                                                        p_req, p_from, p_to, p_amount, p_asset, true);
  END;
END
$$;


--
-- Name: post_batch(text[], text[], bytea[], uuid[], timestamp with time zone[], jsonb[], text[], integer[], uuid[], uuid[], bigint[], text[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_bodies text[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]) RETURNS TABLE(req integer, status smallint, body text, replayed boolean)
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: post_batch_attempt(text[], text[], bytea[], uuid[], timestamp with time zone[], jsonb[], integer[], uuid[], uuid[], bigint[], text[], boolean); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.post_batch_attempt(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_lock_all boolean) RETURNS TABLE(req integer, status smallint, body text, replayed boolean, transaction_id uuid)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
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
  -- slotted accounts: a_lo..a_hi index their locked slot rows in the l_ arrays (NULL for
  -- an account of one slot), a_all says whether every slot is locked, a_credit is the
  -- slot row credits go to
  a_lo       integer[];
  a_hi       integer[];
  a_all      boolean[];
  a_credit   integer[];
  l_acct     uuid[];
  l_slot     smallint[];
  l_bal      bigint[];
  l_touched  integer[];
  w_acct     uuid[] := '{}';
  w_slot     smallint[] := '{}';
  w_ids      uuid[] := '{}';
  w_want     smallint[] := '{}';
  v_missing  uuid[];
  r_rows     integer[];
  v_short    integer;
  v_need     bigint;
  v_take     bigint;
  v_home     integer;
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
  e_slot     smallint[];
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

  -- 2. Lock every balance row the claimed requests touch, once, in the one global lock
  -- order of every Tally writer, so deadlocks are impossible: first the single balance row
  -- (slot 0) of each account of one slot, in ascending account id; then the chosen slot
  -- rows of slotted accounts, in ascending (account id, slot).
  SELECT array_agg(l.account_id ORDER BY l.account_id), array_agg(l.posted ORDER BY l.account_id),
         array_agg(l.floor ORDER BY l.account_id)
  INTO a_ids, a_bal, a_floor
  FROM (SELECT b.account_id, b.posted, b.floor FROM tally.balances b
        WHERE b.slot = 0
          AND b.account_id IN (SELECT x FROM unnest(p_from || p_to) WITH ORDINALITY u(x, j)
                               WHERE claimed[p_req[((j - 1) % m) + 1]])
        ORDER BY b.account_id
        FOR UPDATE) l;
  a_ids := coalesce(a_ids, '{}');
  a_bal := coalesce(a_bal, '{}');
  a_floor := coalesce(a_floor, '{}');
  -- Accounts touched without a slot-0 row are slotted, or do not exist.
  SELECT array_agg(DISTINCT x) INTO v_missing
  FROM unnest(p_from || p_to) WITH ORDINALITY u(x, j)
  WHERE claimed[p_req[((j - 1) % m) + 1]] AND x NOT IN (SELECT unnest(a_ids));
  IF v_missing IS NOT NULL THEN
    -- Which slots to lock, chosen from a look without locks at what each slot holds and
    -- what this batch may debit: a batch that only credits the account takes one slot
    -- at random, so concurrent batches take different locks; one that debits takes one
    -- slot that holds all it may debit, or else every slot. A slot drained meanwhile by
    -- another batch is found once locked: step 3 raises TL001, and post_batch runs the
    -- batch again with p_lock_all, taking every slot of each account it debits.
    FOR rec IN
      SELECT a.id, a.balance_slots AS n,
             coalesce((SELECT sum(p_amount[j]) FROM generate_subscripts(p_from, 1) j
                       WHERE p_from[j] = a.id AND claimed[p_req[j]]), 0) AS need,
             (SELECT array_agg(b.posted ORDER BY b.slot) FROM tally.balances b WHERE b.account_id = a.id) AS held
      FROM tally.accounts a WHERE a.id = ANY (v_missing) AND a.balance_slots > 1
    LOOP
      v_home := 1 + floor(random() * rec.n)::integer;
      IF rec.need > 0 AND p_lock_all THEN
        v_home := NULL;
      ELSIF rec.need > 0 AND rec.held[v_home] < rec.need THEN
        SELECT s INTO v_home FROM generate_series(1, rec.n) s ORDER BY rec.held[s] DESC LIMIT 1;
        IF rec.held[v_home] < rec.need THEN
          v_home := NULL;
        END IF;
      END IF;
      IF v_home IS NULL THEN
        w_acct := w_acct || array_fill(rec.id, ARRAY[rec.n]);
        w_slot := w_slot || ARRAY(SELECT s::smallint FROM generate_series(1, rec.n) s);
      ELSE
        w_acct := w_acct || rec.id;
        w_slot := w_slot || v_home::smallint;
      END IF;
      w_ids := w_ids || rec.id;
      w_want := w_want || rec.n::smallint;
    END LOOP;
    SELECT array_agg(l.account_id ORDER BY l.account_id, l.slot), array_agg(l.slot ORDER BY l.account_id, l.slot),
           array_agg(l.posted ORDER BY l.account_id, l.slot)
    INTO l_acct, l_slot, l_bal
    FROM (SELECT b.account_id, b.slot, b.posted FROM tally.balances b
          WHERE (b.account_id, b.slot) IN (SELECT * FROM unnest(w_acct, w_slot))
          ORDER BY b.account_id, b.slot
          FOR UPDATE) l;
  END IF;
  l_acct := coalesce(l_acct, '{}');
  l_slot := coalesce(l_slot, '{}');
  l_bal := coalesce(l_bal, '{}');
  l_touched := array_fill(0, ARRAY[greatest(cardinality(l_acct), 1)]);
  -- One list of accounts, in id order: a slotted account's balance here is the sum of its
  -- locked slots, its floor 0 (each slot's floor; such accounts have floor 0).
  SELECT array_agg(x.id ORDER BY x.id), array_agg(x.bal ORDER BY x.id), array_agg(x.fl ORDER BY x.id),
         array_agg(x.lo ORDER BY x.id), array_agg(x.hi ORDER BY x.id), array_agg(x.whole ORDER BY x.id)
  INTO a_ids, a_bal, a_floor, a_lo, a_hi, a_all
  FROM (SELECT u.id, u.bal, u.fl, NULL::integer AS lo, NULL::integer AS hi, true AS whole
        FROM unnest(a_ids, a_bal, a_floor) u(id, bal, fl)
        UNION ALL
        SELECT s.id, sum(s.bal)::bigint, 0, min(s.i)::integer, max(s.i)::integer,
               count(*) = (SELECT w.n FROM unnest(w_ids, w_want) w(id, n) WHERE w.id = s.id)
        FROM unnest(l_acct, l_bal) WITH ORDINALITY s(id, bal, i) GROUP BY s.id) x;
  a_ids := coalesce(a_ids, '{}');
  a_credit := array_fill(NULL::integer, ARRAY[greatest(cardinality(a_ids), 1)]);
  FOR k IN 1 .. cardinality(a_ids) LOOP
    IF a_lo[k] IS NOT NULL THEN
      a_credit[k] := a_lo[k] + floor(random() * (a_hi[k] - a_lo[k] + 1))::integer;
    END IF;
  END LOOP;
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
  e_slot := array_fill(NULL::smallint, ARRAY[2 * m]);
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
          v_short := pf[p];
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
            v_short := v_x;
            v_code := CASE WHEN v_new < a_floor[v_x] THEN 'insufficient_funds' ELSE 'balance_limit_exceeded' END;
            -- The detail names the account, never its balance: a caller refused for
            -- funds must not learn what the account holds.
            v_detail := CASE WHEN v_new < a_floor[v_x] THEN format('account %s has insufficient funds for this transaction', a_ids[v_x])
                             ELSE format('account %s would exceed the largest representable balance', a_ids[v_x]) END;
          END IF;
        END LOOP;
      END IF;
    END IF;

    -- Only a slotted account with every slot locked can be short of funds: if some were
    -- not, the slots chosen in step 2 were drained meanwhile, and post_batch runs the
    -- whole batch again, taking every slot.
    IF v_code = 'insufficient_funds' AND NOT a_all[v_short] THEN
      RAISE EXCEPTION 'tally: the slots of account % chosen for this batch were drained meanwhile', a_ids[v_short]
        USING ERRCODE = 'TL001';
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

    -- Apply: the entries carry each account's running balance, leg by leg; a slotted
    -- account's entries carry their slot's. A debit from a slotted account takes from the
    -- first locked slot that holds it all, and only when none does, from the locked slots
    -- in slot order, one leg per slot drawn. Credits go to the slot chosen for credits.
    n_tx := n_tx + 1;
    t_ids[n_tx] := p_ids[i];
    t_meta[n_tx] := nullif(p_metadata[i], '{}');
    t_created[n_tx] := p_created[i];
    r_rows := '{}';
    FOR p IN first_p[i] .. last_p[i] LOOP
      v_f := pf[p];
      v_t := pt[p];
      a_bal[v_f] := a_bal[v_f] - p_amount[p];
      a_bal[v_t] := a_bal[v_t] + p_amount[p];
      IF a_lo[v_f] IS NULL THEN
        n_e := n_e + 1;
        e_tx[n_e] := p_ids[i];
        e_posting[n_e] := p - first_p[i];
        e_account[n_e] := p_from[p];
        e_asset[n_e] := p_asset[p];
        e_amount[n_e] := -p_amount[p];
        e_after[n_e] := a_bal[v_f];
      ELSE
        v_home := NULL;
        FOR v_x IN a_lo[v_f] .. a_hi[v_f] LOOP
          IF l_bal[v_x] >= p_amount[p] THEN
            v_home := v_x;
            EXIT;
          END IF;
        END LOOP;
        v_need := p_amount[p];
        FOR v_x IN a_lo[v_f] .. a_hi[v_f] LOOP
          CONTINUE WHEN (v_home IS NOT NULL AND v_x <> v_home) OR l_bal[v_x] <= 0;
          v_take := least(l_bal[v_x], v_need);
          l_bal[v_x] := l_bal[v_x] - v_take;
          v_need := v_need - v_take;
          n_e := n_e + 1;
          e_tx[n_e] := p_ids[i];
          e_posting[n_e] := p - first_p[i];
          e_account[n_e] := p_from[p];
          e_asset[n_e] := p_asset[p];
          e_amount[n_e] := -v_take;
          e_after[n_e] := l_bal[v_x];
          e_slot[n_e] := l_slot[v_x];
          IF NOT v_x = ANY (r_rows) THEN
            r_rows := r_rows || v_x;
          END IF;
          EXIT WHEN v_need = 0;
        END LOOP;
        IF v_need <> 0 THEN
          RAISE EXCEPTION 'tally: account % had the funds in sum but not in its slots', p_from[p]
            USING ERRCODE = 'internal_error'; -- step 3 checked the sum of the locked slots
        END IF;
      END IF;
      n_e := n_e + 1;
      e_tx[n_e] := p_ids[i];
      e_posting[n_e] := p - first_p[i];
      e_account[n_e] := p_to[p];
      e_asset[n_e] := p_asset[p];
      e_amount[n_e] := p_amount[p];
      IF a_lo[v_t] IS NULL THEN
        e_after[n_e] := a_bal[v_t];
      ELSE
        v_x := a_credit[v_t];
        l_bal[v_x] := l_bal[v_x] + p_amount[p];
        e_after[n_e] := l_bal[v_x];
        e_slot[n_e] := l_slot[v_x];
        IF NOT v_x = ANY (r_rows) THEN
          r_rows := r_rows || v_x;
        END IF;
      END IF;
    END LOOP;
    FOREACH v_x IN ARRAY d_idx LOOP
      a_touched[v_x] := a_touched[v_x] + 1;
    END LOOP;
    FOREACH v_x IN ARRAY r_rows LOOP
      l_touched[v_x] := l_touched[v_x] + 1;
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
      FROM (SELECT x.id, 0::smallint AS slot, x.bal, x.touched
            FROM unnest(a_ids, a_bal, a_touched, a_lo) x(id, bal, touched, lo) WHERE x.lo IS NULL
            UNION ALL
            SELECT * FROM unnest(l_acct, l_slot, l_bal, l_touched[1:cardinality(l_acct)])) u(id, slot, bal, touched)
      WHERE b.account_id = u.id AND b.slot = u.slot AND u.touched > 0)
    INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after, slot)
    SELECT u.tx, u.posting, u.account, u.asset, u.amount, u.after, u.slot
    FROM unnest(e_tx[1:n_e], e_posting[1:n_e], e_account[1:n_e], e_asset[1:n_e], e_amount[1:n_e], e_after[1:n_e], e_slot[1:n_e])
         WITH ORDINALITY u(tx, posting, account, asset, amount, after, slot, ord)
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


--
-- Name: problem(text, text); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.problem(p_code text, p_detail text, OUT status smallint, OUT body text) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    AS $$
DECLARE
  v_title text;
BEGIN
  SELECT c.s, c.t INTO status, v_title FROM (VALUES
    ('account_not_found',            404::smallint, 'Account not found'),
    ('account_frozen',               422::smallint, 'Account is frozen'),
    ('account_closed',               422::smallint, 'Account is closed'),
    ('asset_mismatch',               422::smallint, 'Asset does not match the account'),
    ('same_account',                 422::smallint, 'Source and destination are the same account'),
    ('insufficient_funds',           422::smallint, 'Insufficient funds'),
    ('balance_limit_exceeded',       422::smallint, 'Balance would exceed the largest representable amount'),
    ('idempotency_key_reused',       409::smallint, 'Idempotency key reused with a different request'),
    ('unavailable',                  503::smallint, 'Service unavailable'),
    ('transfer_not_found',           404::smallint, 'Pending transfer not found'),
    ('transfer_already_resolved',    409::smallint, 'Pending transfer already resolved'),
    ('transfer_expired',             409::smallint, 'Pending transfer expired'),
    ('amount_exceeds_pending',       422::smallint, 'Amount exceeds the pending amount'),
    ('transaction_not_found',        404::smallint, 'Transaction not found'),
    ('transaction_already_reversed', 409::smallint, 'Transaction already reversed'),
    ('transaction_not_reversible',   422::smallint, 'Transaction cannot be reversed'),
    ('transfer_between_shards',      409::smallint, 'Transfer between shards is resolved by the ledger')
  ) AS c(code, s, t) WHERE c.code = p_code;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: unknown problem code %', p_code USING ERRCODE = 'invalid_parameter_value';
  END IF;
  body := format('{"type":%s,"title":%s,"status":%s,"detail":%s,"code":%s}',
    to_json('https://tally.dev/problems/' || p_code), to_json(v_title), status, to_json(p_detail), to_json(p_code));
END
$$;


--
-- Name: record_refusals(text[], text[], bytea[], smallint[], text[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.record_refusals(p_callers text[], p_keys text[], p_hashes bytea[], p_status smallint[], p_bodies text[]) RETURNS void
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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


--
-- Name: refuse(text, text, bytea, text, text); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.refuse(p_caller text, p_key text, p_hash bytea, p_code text, p_detail text, OUT status smallint, OUT body text) RETURNS record
    LANGUAGE plpgsql
    AS $$
BEGIN
  SELECT * INTO status, body FROM tally.problem(p_code, p_detail);
  INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, body)
  VALUES (p_caller, p_key, p_hash, status, body) ON CONFLICT (caller, key) DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: idempotency key % was taken meanwhile', p_key USING ERRCODE = 'serialization_failure';
  END IF;
END
$$;


--
-- Name: register_asset(text, smallint, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.register_asset(p_code text, p_scale smallint, p_external_id uuid, OUT code text, OUT scale smallint, OUT external_account_id uuid, OUT created boolean) RETURNS record
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: reject_change(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.reject_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  RAISE EXCEPTION 'tally: % on %.% is not allowed: rows are immutable', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;


--
-- Name: reject_truncate(); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.reject_truncate() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  RAISE EXCEPTION 'tally: TRUNCATE on %.% is not allowed: the journal is append-only', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;


--
-- Name: replay(text, text, bytea); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.replay(p_caller text, p_key text, p_hash bytea, OUT used boolean, OUT same boolean, OUT status smallint, OUT body text, OUT transaction_id uuid) RETURNS record
    LANGUAGE plpgsql
    AS $$
BEGIN
  UPDATE tally.idempotency_keys k SET status = k.status WHERE k.caller = p_caller AND k.key = p_key
  RETURNING k.request_hash = p_hash, k.status, k.body, k.transaction_id INTO same, status, body, transaction_id;
  used := same IS NOT NULL;
  IF used AND NOT same THEN
    SELECT * INTO status, body FROM tally.problem('idempotency_key_reused',
      format('Idempotency-Key %s was first used with a different request', to_json(p_key)));
    transaction_id := NULL;
  END IF;
END
$$;


--
-- Name: replay_batch(text[], text[], bytea[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.replay_batch(p_callers text[], p_keys text[], p_hashes bytea[]) RETURNS TABLE(req integer, status smallint, body text, replayed boolean, transaction_id uuid)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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


--
-- Name: reserve(text, text, bytea, uuid, timestamp with time zone, jsonb, uuid, uuid, bigint, text, timestamp with time zone, uuid, uuid, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.reserve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_from uuid, p_to uuid, p_amount bigint, p_asset text, p_expires timestamp with time zone, p_holding_id uuid, p_remote uuid, p_clearing_id uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) RETURNS record
    LANGUAGE sql
    AS $$
  SELECT r.status, r.body, r.replayed, r.transaction_id
  FROM tally.reserve_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                           ARRAY[p_from], ARRAY[p_to], ARRAY[p_amount], ARRAY[p_asset], ARRAY[p_expires], ARRAY[p_holding_id],
                           ARRAY[p_remote], ARRAY[p_clearing_id]) r
$$;


--
-- Name: reserve_batch(text[], text[], bytea[], uuid[], timestamp with time zone[], jsonb[], uuid[], uuid[], bigint[], text[], timestamp with time zone[], uuid[], uuid[], uuid[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.reserve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_expires timestamp with time zone[], p_holding_ids uuid[], p_remote uuid[], p_clearing_ids uuid[]) RETURNS TABLE(req integer, status smallint, body text, replayed boolean, transaction_id uuid)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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


--
-- Name: resolve(text, text, bytea, uuid, timestamp with time zone, jsonb, uuid, text, bigint); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.resolve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_pending uuid, p_action text, p_amount bigint, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) RETURNS record
    LANGUAGE sql
    AS $$
  SELECT r.status, r.body, r.replayed, r.transaction_id
  FROM tally.resolve_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                           ARRAY[p_pending], ARRAY[p_action], ARRAY[p_amount]) r
$$;


--
-- Name: resolve_batch(text[], text[], bytea[], uuid[], timestamp with time zone[], jsonb[], uuid[], text[], bigint[]); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.resolve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_pending uuid[], p_action text[], p_amount bigint[]) RETURNS TABLE(req integer, status smallint, body text, replayed boolean, transaction_id uuid)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
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


--
-- Name: reverse(text, text, bytea, uuid, timestamp with time zone, jsonb, uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.reverse(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_original uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_prior   record;
  v_code    text;
  v_detail  text;
  v_from    uuid[];
  v_to      uuid[];
  v_amount  bigint[];
  v_asset   text[];
BEGIN
  replayed := false;
  SELECT * INTO v_prior FROM tally.replay(p_caller, p_key, p_hash);
  IF v_prior.used THEN
    status := v_prior.status; body := v_prior.body; transaction_id := v_prior.transaction_id;
    replayed := v_prior.same;
    RETURN;
  END IF;
  -- The first key names the lock space, so these locks cannot meet another use.
  PERFORM pg_advisory_xact_lock(hashtext('tally.reverse'), hashtext(p_original::text));
  IF NOT EXISTS (SELECT FROM tally.transactions t WHERE t.id = p_original) THEN
    v_code := 'transaction_not_found';
    v_detail := format('transaction %s does not exist', p_original);
  ELSIF EXISTS (SELECT FROM tally.reversals r WHERE r.transaction_id = p_original) THEN
    v_code := 'transaction_already_reversed';
    v_detail := format('transaction %s was already reversed', p_original);
  ELSIF EXISTS (SELECT FROM tally.pending_transfers p WHERE p.id = p_original)
        OR EXISTS (SELECT FROM tally.pending_transfers p WHERE p.resolved_by = p_original)
        OR EXISTS (SELECT FROM tally.inbound_transfers i WHERE i.transaction_id = p_original) THEN
    v_code := 'transaction_not_reversible';
    v_detail := format('transaction %s is part of a pending transfer or a transfer between shards', p_original);
  END IF;
  IF v_code IS NOT NULL THEN
    SELECT * INTO status, body FROM tally.refuse(p_caller, p_key, p_hash, v_code, v_detail);
    RETURN;
  END IF;
  -- Each posting is one credit leg and one debit leg per slot drawn, all on one account.
  SELECT array_agg(c.account_id ORDER BY c.posting), array_agg(d.account_id ORDER BY c.posting),
         array_agg(c.amount ORDER BY c.posting), array_agg(c.asset ORDER BY c.posting)
  INTO v_from, v_to, v_amount, v_asset
  FROM tally.entries c
  CROSS JOIN LATERAL (SELECT e.account_id FROM tally.entries e
                      WHERE e.transaction_id = c.transaction_id AND e.posting = c.posting AND e.amount < 0 LIMIT 1) d
  WHERE c.transaction_id = p_original AND c.amount > 0;
  SELECT r.status, r.body, r.replayed, r.transaction_id INTO status, body, replayed, transaction_id
  FROM tally.post_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                        array_fill(1, ARRAY[cardinality(v_from)]), v_from, v_to, v_amount, v_asset) r;
  IF status = 201 AND NOT replayed THEN
    INSERT INTO tally.reversals (transaction_id, reversal_id) VALUES (p_original, p_id);
  END IF;
END
$$;


--
-- Name: set_account_status(uuid, text); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.set_account_status(p_id uuid, p_status text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_posted numeric;
  v_rows   integer;
  v_kind   text;
  v_status text;
BEGIN
  SELECT sum(l.posted), count(*) INTO v_posted, v_rows
  FROM (SELECT b.posted FROM tally.balances b WHERE b.account_id = p_id ORDER BY b.slot FOR UPDATE) l;
  IF v_rows = 0 THEN
    RETURN 'account_not_found';
  END IF;
  SELECT a.kind, a.status INTO v_kind, v_status FROM tally.accounts a WHERE a.id = p_id;
  IF v_status = p_status THEN
    RETURN '';
  ELSIF v_kind <> 'standard' THEN
    RETURN 'external_account_immutable';
  ELSIF v_status = 'closed' THEN
    RETURN 'account_closed';
  ELSIF p_status = 'closed' AND v_posted <> 0 THEN
    RETURN 'account_balance_not_zero';
  ELSIF p_status = 'closed' AND EXISTS (
      SELECT FROM tally.pending_transfers p WHERE p.from_account = p_id AND p.state = 'pending'
      UNION ALL
      SELECT FROM tally.pending_transfers p WHERE p.to_account = p_id AND p.state = 'pending') THEN
    RETURN 'account_has_pending_transfers';
  END IF;
  UPDATE tally.accounts SET status = p_status WHERE id = p_id;
  RETURN '';
END
$$;


--
-- Name: uuid_at(timestamp with time zone); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.uuid_at(p_at timestamp with time zone) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (SELECT ((((substr(h.h, 1, 8) || '-'::text) || substr(h.h, 9, 4)) || '-0000-0000-000000000000'::text))::uuid AS uuid FROM lpad(to_hex((GREATEST((0)::numeric, LEAST(floor((EXTRACT(epoch FROM GREATEST(uuid_at.p_at, '1970-01-01 00:00:00+00'::timestamp with time zone)) * (1000)::numeric)), ('281474976710655'::bigint)::numeric)))::bigint), 12, '0'::text) h(h));


--
-- Name: FUNCTION uuid_at(p_at timestamp with time zone); Type: COMMENT; Schema: tally; Owner: -
--

COMMENT ON FUNCTION tally.uuid_at(p_at timestamp with time zone) IS 'The smallest UUIDv7 made at or after p_at (to the millisecond): partition bounds and time ranges over transaction ids.';


--
-- Name: uuid_time(uuid); Type: FUNCTION; Schema: tally; Owner: -
--

CREATE FUNCTION tally.uuid_time(p_id uuid) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_timestamp((((((('x'::text || lpad(substr(replace((p_id)::text, '-'::text, ''::text), 1, 12), 16, '0'::text)))::bit(64))::bigint)::numeric / 1000.0))::double precision);


--
-- Name: accounts; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.accounts (
    id uuid NOT NULL,
    kind text DEFAULT 'standard'::text NOT NULL,
    owner text NOT NULL,
    asset text NOT NULL,
    scale smallint NOT NULL,
    status text DEFAULT 'active'::text NOT NULL,
    balance_floor bigint DEFAULT 0 NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    balance_slots smallint DEFAULT 1 NOT NULL,
    CONSTRAINT accounts_balance_slots_check CHECK (((balance_slots >= 1) AND (balance_slots <= 64))),
    CONSTRAINT accounts_kind_known CHECK ((kind = ANY (ARRAY['standard'::text, 'external'::text, 'holding'::text, 'clearing'::text]))),
    CONSTRAINT accounts_metadata_check CHECK ((jsonb_typeof(metadata) = 'object'::text)),
    CONSTRAINT accounts_owner_check CHECK (((length(owner) >= 1) AND (length(owner) <= 200))),
    CONSTRAINT accounts_slotted_have_no_overdraft CHECK (((balance_slots = 1) OR ((kind = 'standard'::text) AND (balance_floor = 0)))),
    CONSTRAINT accounts_status_check CHECK ((status = ANY (ARRAY['active'::text, 'frozen'::text, 'closed'::text]))),
    CONSTRAINT accounts_system_rules CHECK (((kind = 'standard'::text) OR ((status = 'active'::text) AND (balance_slots = 1) AND (balance_floor =
CASE kind
    WHEN 'holding'::text THEN (0)::bigint
    ELSE '-9223372036854775808'::bigint
END))))
);


--
-- Name: assets; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.assets (
    code text NOT NULL,
    scale smallint NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT assets_code_check CHECK ((code ~ '^[A-Z][A-Z0-9_]{1,15}$'::text)),
    CONSTRAINT assets_scale_check CHECK (((scale >= 0) AND (scale <= 18)))
);


--
-- Name: balance_checkpoints; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.balance_checkpoints (
    account_id uuid NOT NULL,
    slot smallint NOT NULL,
    at timestamp with time zone NOT NULL,
    posted bigint NOT NULL,
    transactions bigint NOT NULL,
    last_entry bigint NOT NULL,
    last_balance_after bigint NOT NULL,
    CONSTRAINT balance_checkpoints_slot_check CHECK (((slot >= 0) AND (slot <= 64))),
    CONSTRAINT balance_checkpoints_transactions_check CHECK ((transactions > 0))
);


--
-- Name: balances; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.balances (
    account_id uuid NOT NULL,
    floor bigint NOT NULL,
    posted bigint DEFAULT 0 NOT NULL,
    version bigint DEFAULT 0 NOT NULL,
    slot smallint DEFAULT 0 NOT NULL,
    checkpoint_at timestamp with time zone,
    checkpoint_entry bigint,
    checkpoint_balance bigint,
    CONSTRAINT balance_above_floor CHECK ((posted >= floor)),
    CONSTRAINT balances_checkpoint_whole CHECK ((((checkpoint_at IS NULL) = (checkpoint_entry IS NULL)) AND ((checkpoint_at IS NULL) = (checkpoint_balance IS NULL)))),
    CONSTRAINT balances_slot_check CHECK (((slot >= 0) AND (slot <= 64))),
    CONSTRAINT balances_version_check CHECK ((version >= 0))
)
WITH (fillfactor='70');


--
-- Name: COLUMN balances.checkpoint_at; Type: COMMENT; Schema: tally; Owner: -
--

COMMENT ON COLUMN tally.balances.checkpoint_at IS 'The slot''s latest checkpoint, carried by tally.carry_checkpoints (null: none carried yet).';


--
-- Name: COLUMN balances.checkpoint_entry; Type: COMMENT; Schema: tally; Owner: -
--

COMMENT ON COLUMN tally.balances.checkpoint_entry IS 'The checkpoint''s last entry for the slot (balance_checkpoints.last_entry).';


--
-- Name: COLUMN balances.checkpoint_balance; Type: COMMENT; Schema: tally; Owner: -
--

COMMENT ON COLUMN tally.balances.checkpoint_balance IS 'That entry''s running balance (balance_checkpoints.last_balance_after).';


--
-- Name: checkpoint_carry; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.checkpoint_carry (
    only_row boolean DEFAULT true NOT NULL,
    through timestamp with time zone,
    target timestamp with time zone,
    after_account uuid,
    after_slot smallint,
    CONSTRAINT checkpoint_carry_check CHECK (((after_account IS NULL) = (after_slot IS NULL))),
    CONSTRAINT checkpoint_carry_check1 CHECK (((after_account IS NULL) OR (target IS NOT NULL))),
    CONSTRAINT checkpoint_carry_only_row_check CHECK (only_row)
);


--
-- Name: checkpoints; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.checkpoints (
    at timestamp with time zone NOT NULL,
    made_at timestamp with time zone DEFAULT now() NOT NULL,
    slots bigint NOT NULL,
    CONSTRAINT checkpoints_at_check CHECK (isfinite(at)),
    CONSTRAINT checkpoints_slots_check CHECK ((slots >= 0))
);


--
-- Name: entries_id_seq; Type: SEQUENCE; Schema: tally; Owner: -
--

ALTER TABLE tally.entries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME tally.entries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: idempotency_keys; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.idempotency_keys (
    caller text NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    status smallint NOT NULL,
    body text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    transaction_id uuid,
    runs_on integer,
    CONSTRAINT idempotency_keys_answerable_or_claim CHECK (
CASE
    WHEN (runs_on IS NULL) THEN ((body IS NOT NULL) OR ((status = 201) AND (transaction_id IS NOT NULL)))
    ELSE ((status = 307) AND (body IS NULL) AND (transaction_id IS NULL))
END),
    CONSTRAINT idempotency_keys_caller_check CHECK (((length(caller) >= 1) AND (length(caller) <= 200))),
    CONSTRAINT idempotency_keys_key_check CHECK (((length(key) >= 1) AND (length(key) <= 255))),
    CONSTRAINT idempotency_keys_request_hash_check CHECK ((length(request_hash) = 32)),
    CONSTRAINT idempotency_keys_runs_on_check CHECK (((runs_on >= 0) AND (runs_on <= 65535))),
    CONSTRAINT idempotency_keys_status_check CHECK (((status >= 200) AND (status <= 599)))
);


--
-- Name: inbound_transfers; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.inbound_transfers (
    id uuid NOT NULL,
    to_account uuid NOT NULL,
    asset text NOT NULL,
    amount bigint NOT NULL,
    state text NOT NULL,
    transaction_id uuid,
    problem text,
    CONSTRAINT inbound_transfers_amount_check CHECK ((amount > 0)),
    CONSTRAINT inbound_transfers_outcome CHECK ((((state = 'applied'::text) = (transaction_id IS NOT NULL)) AND ((state = 'refused'::text) = (problem IS NOT NULL)))),
    CONSTRAINT inbound_transfers_state_check CHECK ((state = ANY (ARRAY['applied'::text, 'refused'::text])))
);


--
-- Name: journal_partitions; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.journal_partitions (
    starts timestamp with time zone NOT NULL,
    ends timestamp with time zone NOT NULL,
    suffix text NOT NULL,
    state text DEFAULT 'attached'::text NOT NULL,
    archive jsonb,
    CONSTRAINT journal_partitions_check CHECK ((starts < ends)),
    CONSTRAINT journal_partitions_check1 CHECK (((state = 'archived'::text) = (archive IS NOT NULL))),
    CONSTRAINT journal_partitions_state_check CHECK ((state = ANY (ARRAY['attached'::text, 'archived'::text]))),
    CONSTRAINT journal_partitions_suffix_check CHECK ((suffix ~ '^(history|p[0-9]{8})$'::text))
);


--
-- Name: journal_settings; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.journal_settings (
    only_row boolean DEFAULT true NOT NULL,
    partition_width interval DEFAULT '1 mon'::interval NOT NULL,
    first_bound timestamp with time zone DEFAULT (date_trunc('month'::text, now(), 'UTC'::text) + '2 mons'::interval) NOT NULL,
    CONSTRAINT journal_settings_only_row_check CHECK (only_row),
    CONSTRAINT journal_settings_partition_width_check CHECK (((partition_width >= '1 day'::interval) AND (partition_width <= '1 year'::interval)))
);


--
-- Name: ledger_identity; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.ledger_identity (
    only_row boolean DEFAULT true NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    CONSTRAINT ledger_identity_only_row_check CHECK (only_row)
);


--
-- Name: outbox; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.outbox (
    id bigint NOT NULL,
    type text NOT NULL,
    subject uuid NOT NULL,
    accounts uuid[],
    data jsonb,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT outbox_check CHECK (((type = 'transaction.committed'::text) = ((accounts IS NULL) AND (data IS NULL)))),
    CONSTRAINT outbox_type_check CHECK ((type = ANY (ARRAY['transaction.committed'::text, 'account.opened'::text, 'account.frozen'::text, 'account.unfrozen'::text, 'account.closed'::text, 'transfer.pending'::text, 'transfer.posted'::text, 'transfer.voided'::text, 'transfer.expired'::text, 'transfer.received'::text, 'transfer.refused'::text])))
);


--
-- Name: outbox_id_seq; Type: SEQUENCE; Schema: tally; Owner: -
--

ALTER TABLE tally.outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME tally.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: outbox_progress; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.outbox_progress (
    only_row boolean DEFAULT true NOT NULL,
    published bigint DEFAULT 0 NOT NULL,
    published_at timestamp with time zone,
    batch bigint[],
    CONSTRAINT outbox_progress_batch_check CHECK ((cardinality(batch) > 0)),
    CONSTRAINT outbox_progress_only_row_check CHECK (only_row),
    CONSTRAINT outbox_progress_published_check CHECK ((published >= 0))
);


--
-- Name: reversals; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.reversals (
    transaction_id uuid NOT NULL,
    reversal_id uuid NOT NULL,
    CONSTRAINT reversals_check CHECK ((transaction_id <> reversal_id))
);


--
-- Name: shard; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.shard (
    singleton boolean DEFAULT true NOT NULL,
    shard_index integer NOT NULL,
    CONSTRAINT shard_shard_index_check CHECK (((shard_index >= 0) AND (shard_index <= 65535))),
    CONSTRAINT shard_singleton_check CHECK (singleton)
);


--
-- Name: transactions; Type: TABLE; Schema: tally; Owner: -
--

CREATE TABLE tally.transactions (
    id uuid NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT transactions_metadata_check CHECK ((jsonb_typeof(metadata) = 'object'::text))
)
PARTITION BY RANGE (id);


--
-- Name: accounts accounts_id_asset_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.accounts
    ADD CONSTRAINT accounts_id_asset_key UNIQUE (id, asset);


--
-- Name: accounts accounts_id_balance_floor_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.accounts
    ADD CONSTRAINT accounts_id_balance_floor_key UNIQUE (id, balance_floor);


--
-- Name: accounts accounts_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);


--
-- Name: assets assets_code_scale_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.assets
    ADD CONSTRAINT assets_code_scale_key UNIQUE (code, scale);


--
-- Name: assets assets_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.assets
    ADD CONSTRAINT assets_pkey PRIMARY KEY (code);


--
-- Name: balance_checkpoints balance_checkpoints_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.balance_checkpoints
    ADD CONSTRAINT balance_checkpoints_pkey PRIMARY KEY (account_id, slot, at);


--
-- Name: balances balances_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.balances
    ADD CONSTRAINT balances_pkey PRIMARY KEY (account_id, slot);


--
-- Name: checkpoint_carry checkpoint_carry_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.checkpoint_carry
    ADD CONSTRAINT checkpoint_carry_pkey PRIMARY KEY (only_row);


--
-- Name: checkpoints checkpoints_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.checkpoints
    ADD CONSTRAINT checkpoints_pkey PRIMARY KEY (at);


--
-- Name: idempotency_keys idempotency_keys_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, key);


--
-- Name: inbound_transfers inbound_transfers_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.inbound_transfers
    ADD CONSTRAINT inbound_transfers_pkey PRIMARY KEY (id);


--
-- Name: inbound_transfers inbound_transfers_transaction_id_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.inbound_transfers
    ADD CONSTRAINT inbound_transfers_transaction_id_key UNIQUE (transaction_id);


--
-- Name: journal_partitions journal_partitions_ends_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.journal_partitions
    ADD CONSTRAINT journal_partitions_ends_key UNIQUE (ends);


--
-- Name: journal_partitions journal_partitions_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.journal_partitions
    ADD CONSTRAINT journal_partitions_pkey PRIMARY KEY (starts);


--
-- Name: journal_partitions journal_partitions_suffix_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.journal_partitions
    ADD CONSTRAINT journal_partitions_suffix_key UNIQUE (suffix);


--
-- Name: journal_settings journal_settings_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.journal_settings
    ADD CONSTRAINT journal_settings_pkey PRIMARY KEY (only_row);


--
-- Name: ledger_identity ledger_identity_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.ledger_identity
    ADD CONSTRAINT ledger_identity_pkey PRIMARY KEY (only_row);


--
-- Name: outbox outbox_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);


--
-- Name: outbox_progress outbox_progress_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.outbox_progress
    ADD CONSTRAINT outbox_progress_pkey PRIMARY KEY (only_row);


--
-- Name: pending_transfers pending_transfers_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.pending_transfers
    ADD CONSTRAINT pending_transfers_pkey PRIMARY KEY (id);


--
-- Name: pending_transfers pending_transfers_resolved_by_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.pending_transfers
    ADD CONSTRAINT pending_transfers_resolved_by_key UNIQUE (resolved_by);


--
-- Name: reversals reversals_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.reversals
    ADD CONSTRAINT reversals_pkey PRIMARY KEY (transaction_id);


--
-- Name: reversals reversals_reversal_id_key; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.reversals
    ADD CONSTRAINT reversals_reversal_id_key UNIQUE (reversal_id);


--
-- Name: shard shard_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.shard
    ADD CONSTRAINT shard_pkey PRIMARY KEY (singleton);


--
-- Name: transactions transactions_pkey; Type: CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.transactions
    ADD CONSTRAINT transactions_pkey PRIMARY KEY (id);


--
-- Name: accounts_by_owner; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX accounts_by_owner ON tally.accounts USING btree (owner, id);


--
-- Name: accounts_one_clearing_per_asset_and_peer; Type: INDEX; Schema: tally; Owner: -
--

CREATE UNIQUE INDEX accounts_one_clearing_per_asset_and_peer ON tally.accounts USING btree (asset, owner) WHERE (kind = 'clearing'::text);


--
-- Name: accounts_one_external_per_asset; Type: INDEX; Schema: tally; Owner: -
--

CREATE UNIQUE INDEX accounts_one_external_per_asset ON tally.accounts USING btree (asset) WHERE (kind = 'external'::text);


--
-- Name: accounts_one_holding_per_asset; Type: INDEX; Schema: tally; Owner: -
--

CREATE UNIQUE INDEX accounts_one_holding_per_asset ON tally.accounts USING btree (asset) WHERE (kind = 'holding'::text);


--
-- Name: entries_by_account; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX entries_by_account ON ONLY tally.entries USING btree (account_id, id);


--
-- Name: entries_by_slot; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX entries_by_slot ON ONLY tally.entries USING btree (account_id, slot, id) WHERE (slot IS NOT NULL);


--
-- Name: entries_by_transaction; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX entries_by_transaction ON ONLY tally.entries USING btree (transaction_id);


--
-- Name: idempotency_keys_by_age; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX idempotency_keys_by_age ON tally.idempotency_keys USING btree (created_at);


--
-- Name: pending_transfers_by_source; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX pending_transfers_by_source ON tally.pending_transfers USING btree (from_account, id);


--
-- Name: pending_transfers_in_flight; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX pending_transfers_in_flight ON tally.pending_transfers USING btree (id) WHERE ((state = 'pending'::text) AND (remote_account IS NOT NULL));


--
-- Name: pending_transfers_open_from; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX pending_transfers_open_from ON tally.pending_transfers USING btree (from_account) WHERE (state = 'pending'::text);


--
-- Name: pending_transfers_open_to; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX pending_transfers_open_to ON tally.pending_transfers USING btree (to_account) WHERE (state = 'pending'::text);


--
-- Name: pending_transfers_open_until; Type: INDEX; Schema: tally; Owner: -
--

CREATE INDEX pending_transfers_open_until ON tally.pending_transfers USING btree (expires_at) WHERE ((state = 'pending'::text) AND (expires_at IS NOT NULL));


--
-- Name: accounts accounts_have_balance; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE CONSTRAINT TRIGGER accounts_have_balance AFTER INSERT ON tally.accounts DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.check_account_has_balance();


--
-- Name: accounts accounts_no_delete; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_no_delete BEFORE DELETE ON tally.accounts FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: accounts accounts_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON tally.accounts FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: accounts accounts_on_this_shard; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_on_this_shard AFTER INSERT ON tally.accounts REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_ids_on_this_shard();


--
-- Name: accounts accounts_outbox_changed; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_outbox_changed AFTER UPDATE ON tally.accounts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_accounts_changed();


--
-- Name: accounts accounts_outbox_opened; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_outbox_opened AFTER INSERT ON tally.accounts REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_accounts_opened();


--
-- Name: accounts accounts_update_rules; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER accounts_update_rules BEFORE UPDATE ON tally.accounts FOR EACH ROW EXECUTE FUNCTION tally.check_account_update();


--
-- Name: assets assets_immutable; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER assets_immutable BEFORE DELETE OR UPDATE ON tally.assets FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: balance_checkpoints balance_checkpoints_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balance_checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.balance_checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: balance_checkpoints balance_checkpoints_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balance_checkpoints_no_truncate BEFORE TRUNCATE ON tally.balance_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: balances balances_inserted_match_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balances_inserted_match_journal AFTER INSERT ON tally.balances REFERENCING NEW TABLE AS changed_balances FOR EACH STATEMENT EXECUTE FUNCTION tally.check_balances_match_journal();


--
-- Name: balances balances_no_delete; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balances_no_delete BEFORE DELETE ON tally.balances FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: balances balances_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON tally.balances FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: balances balances_updated_match_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER balances_updated_match_journal AFTER UPDATE ON tally.balances REFERENCING NEW TABLE AS changed_balances FOR EACH STATEMENT EXECUTE FUNCTION tally.check_balances_match_journal();


--
-- Name: checkpoints checkpoints_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: checkpoints checkpoints_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON tally.checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: entries entries_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER entries_append_only BEFORE DELETE OR UPDATE ON tally.entries FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: entries entries_checked; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER entries_checked AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.check_new_entries();


--
-- Name: entries entries_holding_moved_by_two_phase_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER entries_holding_moved_by_two_phase_only AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.check_holding_moves();


--
-- Name: entries entries_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON tally.entries FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: entries entries_outbox; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER entries_outbox AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_transactions();


--
-- Name: inbound_transfers inbound_transfers_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER inbound_transfers_append_only BEFORE DELETE OR UPDATE ON tally.inbound_transfers FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: inbound_transfers inbound_transfers_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER inbound_transfers_no_truncate BEFORE TRUNCATE ON tally.inbound_transfers FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: inbound_transfers inbound_transfers_outbox; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER inbound_transfers_outbox AFTER INSERT ON tally.inbound_transfers REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_inbound_transfers();


--
-- Name: inbound_transfers inbound_transfers_reference_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER inbound_transfers_reference_journal AFTER INSERT ON tally.inbound_transfers REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('transaction_id');


--
-- Name: pending_transfers pending_transfers_no_delete; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_no_delete BEFORE DELETE ON tally.pending_transfers FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: pending_transfers pending_transfers_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_no_truncate BEFORE TRUNCATE ON tally.pending_transfers FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: pending_transfers pending_transfers_outbox_created; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_outbox_created AFTER INSERT ON tally.pending_transfers REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_pending_transfers();


--
-- Name: pending_transfers pending_transfers_outbox_resolved; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_outbox_resolved AFTER UPDATE ON tally.pending_transfers REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_pending_transfers();


--
-- Name: pending_transfers pending_transfers_reference_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_reference_journal AFTER INSERT ON tally.pending_transfers REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('id', 'resolved_by');


--
-- Name: pending_transfers pending_transfers_resolution_in_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_resolution_in_journal AFTER UPDATE ON tally.pending_transfers REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('resolved_by');


--
-- Name: pending_transfers pending_transfers_resolve_once; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER pending_transfers_resolve_once BEFORE UPDATE ON tally.pending_transfers FOR EACH ROW EXECUTE FUNCTION tally.check_pending_transfer_update();


--
-- Name: reversals reversals_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER reversals_append_only BEFORE DELETE OR UPDATE ON tally.reversals FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: reversals reversals_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER reversals_no_truncate BEFORE TRUNCATE ON tally.reversals FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: reversals reversals_reference_journal; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER reversals_reference_journal AFTER INSERT ON tally.reversals REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('transaction_id', 'reversal_id');


--
-- Name: transactions transactions_append_only; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER transactions_append_only BEFORE DELETE OR UPDATE ON tally.transactions FOR EACH ROW EXECUTE FUNCTION tally.reject_change();


--
-- Name: transactions transactions_balanced; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER transactions_balanced AFTER INSERT ON tally.transactions REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION tally.check_new_transactions_balanced();


--
-- Name: transactions transactions_no_truncate; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON tally.transactions FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();


--
-- Name: transactions transactions_on_this_shard; Type: TRIGGER; Schema: tally; Owner: -
--

CREATE TRIGGER transactions_on_this_shard AFTER INSERT ON tally.transactions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_ids_on_this_shard();


--
-- Name: accounts accounts_asset_scale_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.accounts
    ADD CONSTRAINT accounts_asset_scale_fkey FOREIGN KEY (asset, scale) REFERENCES tally.assets(code, scale);


--
-- Name: balance_checkpoints balance_checkpoints_at_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.balance_checkpoints
    ADD CONSTRAINT balance_checkpoints_at_fkey FOREIGN KEY (at) REFERENCES tally.checkpoints(at);


--
-- Name: balances balances_account_id_floor_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.balances
    ADD CONSTRAINT balances_account_id_floor_fkey FOREIGN KEY (account_id, floor) REFERENCES tally.accounts(id, balance_floor) ON UPDATE CASCADE;


--
-- Name: balances balances_checkpoint_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.balances
    ADD CONSTRAINT balances_checkpoint_fkey FOREIGN KEY (account_id, slot, checkpoint_at) REFERENCES tally.balance_checkpoints(account_id, slot, at);


--
-- Name: checkpoint_carry checkpoint_carry_target_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.checkpoint_carry
    ADD CONSTRAINT checkpoint_carry_target_fkey FOREIGN KEY (target) REFERENCES tally.checkpoints(at);


--
-- Name: checkpoint_carry checkpoint_carry_through_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.checkpoint_carry
    ADD CONSTRAINT checkpoint_carry_through_fkey FOREIGN KEY (through) REFERENCES tally.checkpoints(at);


--
-- Name: pending_transfers pending_transfers_from_account_asset_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.pending_transfers
    ADD CONSTRAINT pending_transfers_from_account_asset_fkey FOREIGN KEY (from_account, asset) REFERENCES tally.accounts(id, asset);


--
-- Name: pending_transfers pending_transfers_to_account_asset_fkey; Type: FK CONSTRAINT; Schema: tally; Owner: -
--

ALTER TABLE ONLY tally.pending_transfers
    ADD CONSTRAINT pending_transfers_to_account_asset_fkey FOREIGN KEY (to_account, asset) REFERENCES tally.accounts(id, asset);


--
-- Name: SCHEMA tally; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA tally TO tally_app;
GRANT USAGE ON SCHEMA tally TO tally_monitor;
GRANT USAGE ON SCHEMA tally TO tally_relay;


--
-- Name: FUNCTION apply_inbound(p_id uuid, p_to uuid, p_amount bigint, p_asset text, p_tx uuid, p_created timestamp with time zone, p_metadata jsonb, p_clearing_id uuid, OUT state text, OUT problem text, OUT transaction_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.apply_inbound(p_id uuid, p_to uuid, p_amount bigint, p_asset text, p_tx uuid, p_created timestamp with time zone, p_metadata jsonb, p_clearing_id uuid, OUT state text, OUT problem text, OUT transaction_id uuid) TO tally_app;


--
-- Name: FUNCTION apply_inbound_batch(p_ids uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_tx uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_clearing_ids uuid[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.apply_inbound_batch(p_ids uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_tx uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_clearing_ids uuid[]) TO tally_app;


--
-- Name: FUNCTION balance_at(p_account uuid, p_at timestamp with time zone); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.balance_at(p_account uuid, p_at timestamp with time zone) TO tally_app;


--
-- Name: FUNCTION carry_checkpoints(p_batch integer); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.carry_checkpoints(p_batch integer) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.carry_checkpoints(p_batch integer) TO tally_app;


--
-- Name: FUNCTION check_account_has_balance(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.check_account_has_balance() TO tally_app;


--
-- Name: FUNCTION check_account_update(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.check_account_update() TO tally_app;


--
-- Name: FUNCTION check_holding_moves(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.check_holding_moves() TO tally_app;


--
-- Name: FUNCTION check_pending_transfer_update(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.check_pending_transfer_update() TO tally_app;


--
-- Name: FUNCTION claim_keys(p_callers text[], p_keys text[], p_hashes bytea[], p_shards integer[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.claim_keys(p_callers text[], p_keys text[], p_hashes bytea[], p_shards integer[]) TO tally_app;


--
-- Name: FUNCTION clearing_account(p_asset text, p_peer integer, p_new_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.clearing_account(p_asset text, p_peer integer, p_new_id uuid) TO tally_app;


--
-- Name: FUNCTION count_accounts(); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.count_accounts() FROM PUBLIC;
GRANT ALL ON FUNCTION tally.count_accounts() TO tally_monitor;


--
-- Name: FUNCTION drop_archived_partition(p_suffix text, p_archive jsonb); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.drop_archived_partition(p_suffix text, p_archive jsonb) FROM PUBLIC;


--
-- Name: FUNCTION ensure_partitions(p_ahead interval); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.ensure_partitions(p_ahead interval) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.ensure_partitions(p_ahead interval) TO tally_app;


--
-- Name: TABLE entries; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.entries TO tally_app;


--
-- Name: FUNCTION entries_page(p_account uuid, p_before bigint, p_limit integer); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.entries_page(p_account uuid, p_before bigint, p_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.entries_page(p_account uuid, p_before bigint, p_limit integer) TO tally_app;


--
-- Name: FUNCTION holding_account(p_asset text, p_new_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.holding_account(p_asset text, p_new_id uuid) TO tally_app;


--
-- Name: FUNCTION id_shard(id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.id_shard(id uuid) TO tally_app;


--
-- Name: FUNCTION lock_for_ddl(p_tables regclass[], p_patience interval); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.lock_for_ddl(p_tables regclass[], p_patience interval) FROM PUBLIC;


--
-- Name: FUNCTION make_checkpoints(p_grace interval); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.make_checkpoints(p_grace interval) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.make_checkpoints(p_grace interval) TO tally_app;


--
-- Name: FUNCTION outbox_backlog(OUT published bigint, OUT waiting bigint, OUT oldest timestamp with time zone); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.outbox_backlog(OUT published bigint, OUT waiting bigint, OUT oldest timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.outbox_backlog(OUT published bigint, OUT waiting bigint, OUT oldest timestamp with time zone) TO tally_relay;


--
-- Name: FUNCTION outbox_next(p_acknowledged bigint, p_limit integer); Type: ACL; Schema: tally; Owner: -
--

REVOKE ALL ON FUNCTION tally.outbox_next(p_acknowledged bigint, p_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION tally.outbox_next(p_acknowledged bigint, p_limit integer) TO tally_relay;


--
-- Name: TABLE pending_transfers; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.pending_transfers TO tally_app;


--
-- Name: COLUMN pending_transfers.state; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(state) ON TABLE tally.pending_transfers TO tally_app;


--
-- Name: COLUMN pending_transfers.posted_amount; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(posted_amount) ON TABLE tally.pending_transfers TO tally_app;


--
-- Name: COLUMN pending_transfers.resolved_by; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(resolved_by) ON TABLE tally.pending_transfers TO tally_app;


--
-- Name: COLUMN pending_transfers.resolved_at; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(resolved_at) ON TABLE tally.pending_transfers TO tally_app;


--
-- Name: FUNCTION post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]) TO tally_app;


--
-- Name: FUNCTION post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_bodies text[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.post_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_bodies text[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[]) TO tally_app;


--
-- Name: FUNCTION post_batch_attempt(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_lock_all boolean); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.post_batch_attempt(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_req integer[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_lock_all boolean) TO tally_app;


--
-- Name: FUNCTION problem(p_code text, p_detail text, OUT status smallint, OUT body text); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.problem(p_code text, p_detail text, OUT status smallint, OUT body text) TO tally_app;


--
-- Name: FUNCTION record_refusals(p_callers text[], p_keys text[], p_hashes bytea[], p_status smallint[], p_bodies text[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.record_refusals(p_callers text[], p_keys text[], p_hashes bytea[], p_status smallint[], p_bodies text[]) TO tally_app;


--
-- Name: FUNCTION refuse(p_caller text, p_key text, p_hash bytea, p_code text, p_detail text, OUT status smallint, OUT body text); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.refuse(p_caller text, p_key text, p_hash bytea, p_code text, p_detail text, OUT status smallint, OUT body text) TO tally_app;


--
-- Name: FUNCTION register_asset(p_code text, p_scale smallint, p_external_id uuid, OUT code text, OUT scale smallint, OUT external_account_id uuid, OUT created boolean); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.register_asset(p_code text, p_scale smallint, p_external_id uuid, OUT code text, OUT scale smallint, OUT external_account_id uuid, OUT created boolean) TO tally_app;


--
-- Name: FUNCTION reject_change(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.reject_change() TO tally_app;


--
-- Name: FUNCTION reject_truncate(); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.reject_truncate() TO tally_app;


--
-- Name: FUNCTION replay(p_caller text, p_key text, p_hash bytea, OUT used boolean, OUT same boolean, OUT status smallint, OUT body text, OUT transaction_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.replay(p_caller text, p_key text, p_hash bytea, OUT used boolean, OUT same boolean, OUT status smallint, OUT body text, OUT transaction_id uuid) TO tally_app;


--
-- Name: FUNCTION replay_batch(p_callers text[], p_keys text[], p_hashes bytea[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.replay_batch(p_callers text[], p_keys text[], p_hashes bytea[]) TO tally_app;


--
-- Name: FUNCTION reserve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_from uuid, p_to uuid, p_amount bigint, p_asset text, p_expires timestamp with time zone, p_holding_id uuid, p_remote uuid, p_clearing_id uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.reserve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_from uuid, p_to uuid, p_amount bigint, p_asset text, p_expires timestamp with time zone, p_holding_id uuid, p_remote uuid, p_clearing_id uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) TO tally_app;


--
-- Name: FUNCTION reserve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_expires timestamp with time zone[], p_holding_ids uuid[], p_remote uuid[], p_clearing_ids uuid[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.reserve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_from uuid[], p_to uuid[], p_amount bigint[], p_asset text[], p_expires timestamp with time zone[], p_holding_ids uuid[], p_remote uuid[], p_clearing_ids uuid[]) TO tally_app;


--
-- Name: FUNCTION resolve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_pending uuid, p_action text, p_amount bigint, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.resolve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_pending uuid, p_action text, p_amount bigint, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) TO tally_app;


--
-- Name: FUNCTION resolve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_pending uuid[], p_action text[], p_amount bigint[]); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.resolve_batch(p_callers text[], p_keys text[], p_hashes bytea[], p_ids uuid[], p_created timestamp with time zone[], p_metadata jsonb[], p_pending uuid[], p_action text[], p_amount bigint[]) TO tally_app;


--
-- Name: FUNCTION reverse(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_original uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.reverse(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamp with time zone, p_metadata jsonb, p_original uuid, OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid) TO tally_app;


--
-- Name: FUNCTION set_account_status(p_id uuid, p_status text); Type: ACL; Schema: tally; Owner: -
--

GRANT ALL ON FUNCTION tally.set_account_status(p_id uuid, p_status text) TO tally_app;


--
-- Name: TABLE accounts; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.accounts TO tally_app;


--
-- Name: COLUMN accounts.status; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(status) ON TABLE tally.accounts TO tally_app;


--
-- Name: TABLE assets; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.assets TO tally_app;


--
-- Name: TABLE balance_checkpoints; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.balance_checkpoints TO tally_app;


--
-- Name: TABLE balances; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.balances TO tally_app;


--
-- Name: COLUMN balances.account_id; Type: ACL; Schema: tally; Owner: -
--

GRANT INSERT(account_id) ON TABLE tally.balances TO tally_app;


--
-- Name: COLUMN balances.floor; Type: ACL; Schema: tally; Owner: -
--

GRANT INSERT(floor) ON TABLE tally.balances TO tally_app;


--
-- Name: COLUMN balances.posted; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(posted) ON TABLE tally.balances TO tally_app;


--
-- Name: COLUMN balances.version; Type: ACL; Schema: tally; Owner: -
--

GRANT UPDATE(version) ON TABLE tally.balances TO tally_app;


--
-- Name: COLUMN balances.slot; Type: ACL; Schema: tally; Owner: -
--

GRANT INSERT(slot) ON TABLE tally.balances TO tally_app;


--
-- Name: TABLE checkpoint_carry; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.checkpoint_carry TO tally_app;


--
-- Name: TABLE checkpoints; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.checkpoints TO tally_app;


--
-- Name: TABLE idempotency_keys; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE tally.idempotency_keys TO tally_app;


--
-- Name: TABLE inbound_transfers; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.inbound_transfers TO tally_app;


--
-- Name: TABLE journal_partitions; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.journal_partitions TO tally_app;


--
-- Name: TABLE journal_settings; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.journal_settings TO tally_app;


--
-- Name: TABLE ledger_identity; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.ledger_identity TO tally_app;
GRANT SELECT ON TABLE tally.ledger_identity TO tally_relay;


--
-- Name: TABLE reversals; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.reversals TO tally_app;


--
-- Name: TABLE shard; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT ON TABLE tally.shard TO tally_app;
GRANT SELECT ON TABLE tally.shard TO tally_relay;


--
-- Name: TABLE transactions; Type: ACL; Schema: tally; Owner: -
--

GRANT SELECT,INSERT ON TABLE tally.transactions TO tally_app;


--
-- PostgreSQL database dump complete
--


