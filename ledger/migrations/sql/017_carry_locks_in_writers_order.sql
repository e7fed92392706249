-- The checkpoint carry (016) takes its balance rows' locks in the order every writer
-- takes them, so it cannot deadlock with a transfer.
--
-- 016 locked a batch in key order, (account, slot). Writers lock the slot-0 rows of
-- accounts of one slot first, by account, and only then the slot rows of slotted
-- accounts, by (account, slot). A writer holding an account of one slot and reaching for
-- a slotted account of a lower id met a carry holding that slot and waiting for the
-- first account: PostgreSQL broke the cycle after deadlock_timeout by failing one of
-- them (TestCarryLocksInTheWritersOrder). A batch is still a key range, chosen without
-- locks, but its rows are locked in the writers' order.
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
