-- Issue 21: balance checkpoints at partition boundaries, and balances at any moment.
--
-- A checkpoint at boundary B holds, for every account slot with entries before B, the
-- sum of those entries and how many transactions they belong to. "Before B" is by
-- transaction id, the time the transaction was made (tally.uuid_at), which is also how
-- the journal is partitioned, so a checkpoint is the previous one plus one partition's
-- entries. Only slots with entries in that partition get a row; the others carry their
-- last row forward.
--
-- A row also names the slot's last entry made before B (the highest id) and its running
-- balance. Entry ids follow commit order and transaction ids follow the clock, and the two
-- can cross by a request's lifetime at a boundary, so the sum (by time) and the running
-- balance (by id) are kept apart. With the last entry, the running-balance checks of every
-- new entry look only at partitions from the latest checkpoint on, plus one checkpoint
-- row: the previous entry is the highest id among both, since every entry made before
-- the checkpoint has an id at most its last_entry. That keeps the checks' cost flat as
-- partitions accumulate, and keeps them right once old partitions are archived.
--
-- Once B is checkpointed, no transaction made before B may be written (the seal, checked
-- by the transactions trigger), or the checkpoint would silently be wrong. Ids are made
-- when the service writes, so a transaction is at most a request's lifetime (seconds)
-- older than its write; checkpoints wait an hour past the boundary.

CREATE OR REPLACE FUNCTION tally.uuid_at(p_at timestamptz) RETURNS uuid
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN (SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-0000-0000-000000000000')::uuid
          FROM lpad(to_hex(greatest(0, least(floor(extract(epoch FROM greatest(p_at, 'epoch')) * 1000),
                                             281474976710655))::bigint), 12, '0') h);

CREATE TABLE tally.checkpoints (
  at      timestamptz PRIMARY KEY CHECK (isfinite(at)),
  made_at timestamptz NOT NULL DEFAULT now(),
  slots   bigint NOT NULL CHECK (slots >= 0)
);

CREATE TABLE tally.balance_checkpoints (
  account_id   uuid NOT NULL,
  slot         smallint NOT NULL CHECK (slot BETWEEN 0 AND 64),
  at           timestamptz NOT NULL REFERENCES tally.checkpoints (at),
  posted       bigint NOT NULL,
  transactions bigint NOT NULL CHECK (transactions > 0),
  last_entry   bigint NOT NULL,
  last_balance_after bigint NOT NULL,
  PRIMARY KEY (account_id, slot, at)
);

CREATE TRIGGER checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON tally.checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE TRIGGER balance_checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.balance_checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE TRIGGER balance_checkpoints_no_truncate BEFORE TRUNCATE ON tally.balance_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();

-- Makes the checkpoints of every partition boundary at least p_grace in the past, in
-- order, and returns how many it made. Each is one read of one partition's entries.
CREATE FUNCTION tally.make_checkpoints(p_grace interval DEFAULT '1 hour') RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    -- the partition's entries.
    WITH moved AS (
      SELECT e.account_id, coalesce(e.slot, 0)::smallint AS slot, sum(e.amount)::bigint AS total,
             count(DISTINCT e.transaction_id) AS n, max(e.id) AS last_id
      FROM tally.entries e
      WHERE e.transaction_id >= coalesce(tally.uuid_at(v_prev), '00000000-0000-0000-0000-000000000000')
        AND e.transaction_id < tally.uuid_at(v_at)
      GROUP BY 1, 2),
    changed AS (
      SELECT m.account_id, m.slot, coalesce(prev.posted, 0) + m.total AS posted,
             coalesce(prev.transactions, 0) + m.n AS transactions,
             CASE WHEN prev.last_entry > m.last_id THEN prev.last_entry ELSE m.last_id END AS last_entry,
             CASE WHEN prev.last_entry > m.last_id THEN prev.last_balance_after
                  ELSE (SELECT x.balance_after FROM tally.entries x
                        WHERE x.transaction_id >= coalesce(tally.uuid_at(v_prev), '00000000-0000-0000-0000-000000000000')
                          AND x.transaction_id < tally.uuid_at(v_at) AND x.id = m.last_id) END AS last_balance_after
      FROM moved m
      LEFT JOIN LATERAL (SELECT c.posted, c.transactions, c.last_entry, c.last_balance_after
                         FROM tally.balance_checkpoints c
                         WHERE c.account_id = m.account_id AND c.slot = m.slot
                         ORDER BY c.at DESC LIMIT 1) prev ON true),
    checkpoint AS (INSERT INTO tally.checkpoints (at, slots) SELECT v_at, count(*) FROM changed)
    INSERT INTO tally.balance_checkpoints (account_id, slot, at, posted, transactions, last_entry, last_balance_after)
    SELECT account_id, slot, v_at, posted, transactions, last_entry, last_balance_after FROM changed;
    v_made := v_made + 1;
  END LOOP;
  RETURN v_made;
END $$;
REVOKE ALL ON FUNCTION tally.make_checkpoints(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.make_checkpoints(interval) TO tally_app;
GRANT SELECT ON tally.checkpoints, tally.balance_checkpoints TO tally_app;

-- The seal, added to the transactions' statement check: nothing made before the latest
-- checkpoint joins the journal.
CREATE OR REPLACE FUNCTION tally.check_new_transactions_balanced() RETURNS trigger
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

-- An account's balance (all slots) as of p_at: every transaction made at or before p_at,
-- to the millisecond. It reads the last checkpoint at or before p_at and the account's
-- entries after it, never all history. Before the retention horizon (the start of the
-- oldest partition still attached) it raises TLY02: that history is archived.
CREATE FUNCTION tally.balance_at(p_account uuid, p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql STABLE SET jit = off AS $$
DECLARE
  v_horizon timestamptz;
  v_cp      timestamptz;
  v_base    bigint;
  v_moved   bigint;
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
    AND e.transaction_id < tally.uuid_at(p_at + interval '1 millisecond');
  RETURN v_base + v_moved;
END $$;
GRANT EXECUTE ON FUNCTION tally.balance_at(uuid, timestamptz) TO tally_app;

-- The running-balance checks (003), now reading previous entries from the latest
-- checkpoint on, and the checkpoint's last entry before it.
CREATE OR REPLACE FUNCTION tally.check_new_entries() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_bad  record;
  v_xmin xid;
  v_cmin cid;
  v_from uuid;
BEGIN
  -- Previous entries are looked up from the latest checkpoint on (see above).
  SELECT coalesce(tally.uuid_at(max(c.at)), '00000000-0000-0000-0000-000000000000') INTO v_from FROM tally.checkpoints c;

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
  -- (a slot the account does not have has no row, so no entry can land there).
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
      (SELECT c.last_entry, c.last_balance_after, NULL FROM tally.balance_checkpoints c
       WHERE n.k = 1 AND c.account_id = n.account_id AND c.slot = coalesce(n.slot, 0)
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

CREATE OR REPLACE FUNCTION tally.check_balances_match_journal() RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE
  v_bad  record;
  v_from uuid;
BEGIN
  SELECT coalesce(tally.uuid_at(max(c.at)), '00000000-0000-0000-0000-000000000000') INTO v_from FROM tally.checkpoints c;
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
      (SELECT k.last_entry, k.last_balance_after FROM tally.balance_checkpoints k
       WHERE k.account_id = c.account_id AND k.slot = c.slot
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
