-- An account's history page reads only the journal's recent partitions when they hold the
-- page, and the whole journal only when they do not (issue 21: "indexes keep history
-- reads on recent partitions").
--
-- A page is an account's entries below a cursor, newest (highest id) first. Read as one
-- query over the partitioned journal, it descends the account's index in every attached
-- partition, however few of them the page needs. So the page is first read from the
-- partitions since the checkpoint before the latest one (the month before this one and
-- this one, by default): at least a partition's width of history. Entry ids follow
-- commit order and partitions follow the time transaction ids were made, so the two
-- orders agree except across a boundary, where a transaction made just before it may
-- commit after one made just after; that is why a full read is kept by a bound, not by a
-- count. The account's checkpoint rows at or before that boundary say the greatest entry
-- id any older partition holds for it (last_entry, per slot); when the recent read
-- filled the page with entries all above it, no older entry belongs to the page.
-- Otherwise (an account quiet of late, a cursor deep in the past, no checkpoint yet) the
-- page is read over every partition, as before: one short read more.
--
-- Only a function is added: a binary of the previous release reads history as before.

CREATE OR REPLACE FUNCTION tally.entries_page(p_account uuid, p_before bigint, p_limit integer)
  RETURNS SETOF tally.entries
  LANGUAGE plpgsql STABLE ROWS 50
  -- Generic plans: pruned as each execution starts, not planned again for each call.
  SET plan_cache_mode = force_generic_plan
  SET search_path = pg_catalog, pg_temp AS $$
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
REVOKE ALL ON FUNCTION tally.entries_page(uuid, bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.entries_page(uuid, bigint, integer) TO tally_app;
