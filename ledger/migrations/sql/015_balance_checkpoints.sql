-- Issue 21: balance checkpoints at partition boundaries, and balances at any moment.
--
-- A checkpoint at boundary B holds, for every account slot with entries before B, the
-- sum of those entries and how many transactions they belong to. "Before B" is by
-- transaction id, the time the transaction was made (tally.uuid_at), which is also how
-- the journal is partitioned, so a checkpoint is the previous one plus one partition's
-- entries. Only slots with entries in that partition get a row; the others carry their
-- last row forward.
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
    WITH changed AS (
      SELECT s.account_id, s.slot, coalesce(prev.posted, 0) + s.total AS posted,
             coalesce(prev.transactions, 0) + s.n AS transactions
      FROM (SELECT e.account_id, coalesce(e.slot, 0)::smallint AS slot, sum(e.amount)::bigint AS total,
                   count(DISTINCT e.transaction_id) AS n
            FROM tally.entries e
            WHERE e.transaction_id >= coalesce(tally.uuid_at(v_prev), '00000000-0000-0000-0000-000000000000')
              AND e.transaction_id < tally.uuid_at(v_at)
            GROUP BY 1, 2) s
      LEFT JOIN LATERAL (SELECT c.posted, c.transactions FROM tally.balance_checkpoints c
                         WHERE c.account_id = s.account_id AND c.slot = s.slot
                         ORDER BY c.at DESC LIMIT 1) prev ON true),
    checkpoint AS (INSERT INTO tally.checkpoints (at, slots) SELECT v_at, count(*) FROM changed)
    INSERT INTO tally.balance_checkpoints (account_id, slot, at, posted, transactions)
    SELECT account_id, slot, v_at, posted, transactions FROM changed;
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
