---- tern: disable-tx ----
-- Issue 21: a transfer's running-balance check stops reading checkpoint history.
--
-- The checks of 014 find each slot's previous entry among the entries since the latest
-- checkpoint and the slot's latest checkpoint row, looked up in balance_checkpoints, which
-- holds a row per slot per month. At 10 million accounts that table was most of the
-- database's working set (945 of about 1,460 bytes per account), and reading it from
-- outside shared buffers was where transfers waited (make bench-scale). So each balance
-- row now carries its slot's latest checkpoint (when, its last entry, and that entry's
-- running balance): 24 bytes on a row the transfer reads and locks anyway.
--
-- Carrying is not part of making a checkpoint: it writes every balance row whose slot
-- moved in the month, and those rows are what transfers lock. tally.carry_checkpoints
-- carries a batch at a time, each its own short transaction, in the order transfers lock
-- (account, then slot). Until it has carried the latest checkpoint to every row,
-- the checks read balance_checkpoints as before; a carried value is never wrong, only
-- possibly older, and the previous entry is the highest id among what is read.
--
-- The carried columns are written only by tally.carry_checkpoints (the service may
-- insert a balance's account, slot and floor, and update its posted and version), and
-- name their checkpoint row by foreign key.
--
-- Locks: adding the columns and the foreign key (NOT VALID) takes ACCESS EXCLUSIVE on
-- balances and SHARE ROW EXCLUSIVE on balance_checkpoints for milliseconds, taken as
-- 014 does, without deadlocking writers; validating reads balances under SHARE UPDATE
-- EXCLUSIVE, which lets reads and writes go on. No row is rewritten.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tally.balances'::regclass AND attname = 'checkpoint_at') THEN
    PERFORM tally.lock_for_ddl('{tally.balances, tally.balance_checkpoints}');
    ALTER TABLE tally.balances
      ADD COLUMN checkpoint_at timestamptz,
      ADD COLUMN checkpoint_entry bigint,
      ADD COLUMN checkpoint_balance bigint,
      ADD CONSTRAINT balances_checkpoint_whole
        CHECK ((checkpoint_at IS NULL) = (checkpoint_entry IS NULL) AND (checkpoint_at IS NULL) = (checkpoint_balance IS NULL)) NOT VALID,
      ADD CONSTRAINT balances_checkpoint_fkey FOREIGN KEY (account_id, slot, checkpoint_at)
        REFERENCES tally.balance_checkpoints (account_id, slot, at) NOT VALID;
  END IF;
END $$;

ALTER TABLE tally.balances VALIDATE CONSTRAINT balances_checkpoint_whole;
ALTER TABLE tally.balances VALIDATE CONSTRAINT balances_checkpoint_fkey;

COMMENT ON COLUMN tally.balances.checkpoint_at IS
  'The slot''s latest checkpoint, carried by tally.carry_checkpoints (null: none carried yet).';
COMMENT ON COLUMN tally.balances.checkpoint_entry IS
  'The checkpoint''s last entry for the slot (balance_checkpoints.last_entry).';
COMMENT ON COLUMN tally.balances.checkpoint_balance IS
  'That entry''s running balance (balance_checkpoints.last_balance_after).';

REVOKE INSERT ON tally.balances FROM tally_app;
GRANT INSERT (account_id, slot, floor) ON tally.balances TO tally_app;

-- How far carrying has got. "through" is the latest checkpoint every balance row carries
-- (each row its slot's latest at or before it); "target" is the one being carried, and
-- the rows up to (after_account, after_slot) carry it.
CREATE TABLE IF NOT EXISTS tally.checkpoint_carry (
  only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  through       timestamptz REFERENCES tally.checkpoints (at),
  target        timestamptz REFERENCES tally.checkpoints (at),
  after_account uuid,
  after_slot    smallint,
  CHECK ((after_account IS NULL) = (after_slot IS NULL)),
  CHECK (after_account IS NULL OR target IS NOT NULL)
);
INSERT INTO tally.checkpoint_carry DEFAULT VALUES ON CONFLICT DO NOTHING;
GRANT SELECT ON tally.checkpoint_carry TO tally_app;

-- Carries the latest checkpoint to the next p_batch balance rows and returns whether
-- every row carries it (true: nothing left to do). Rows are locked in the order
-- transfers lock them, and only those whose carried checkpoint changes are written.
-- A new checkpoint made while carrying starts the pass again.
CREATE OR REPLACE FUNCTION tally.carry_checkpoints(p_batch integer DEFAULT 1000) RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
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
  WITH batch AS (
    SELECT b.account_id, b.slot FROM tally.balances b
    WHERE (b.account_id, b.slot) > (v_carry.after_account, v_carry.after_slot)
    ORDER BY b.account_id, b.slot LIMIT p_batch
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
  SELECT x.account_id, x.slot INTO v_last FROM batch x ORDER BY x.account_id DESC, x.slot DESC LIMIT 1;
  IF v_last.account_id IS NULL THEN
    UPDATE tally.checkpoint_carry SET through = v_latest, target = NULL, after_account = NULL, after_slot = NULL;
    RETURN true;
  END IF;
  UPDATE tally.checkpoint_carry SET target = v_latest, after_account = v_last.account_id, after_slot = v_last.slot;
  RETURN false;
END $$;
REVOKE ALL ON FUNCTION tally.carry_checkpoints(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.carry_checkpoints(integer) TO tally_app;

-- The running-balance checks of 014, reading the carried checkpoint from the balance row
-- and balance_checkpoints only while a carry is under way.
CREATE OR REPLACE FUNCTION tally.check_new_entries() RETURNS trigger
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

CREATE OR REPLACE FUNCTION tally.check_balances_match_journal() RETURNS trigger
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
