---- tern: disable-tx ----
-- Issue 21: the journal (transactions and entries) is range-partitioned by time, balances
-- are checkpointed at partition boundaries, and a balance can be read as of any moment.
-- One migration, so that a release moves the schema one version (CheckCompatible).
--
-- The partition key is the transaction id. Ids are UUIDv7 made by the service when it
-- writes (ledger.newID), so their first 48 bits are the millisecond they were made, and a
-- bound such as "2027-02-01" is the UUID whose first 48 bits are that moment and whose
-- other bits are zero (tally.uuid_at). A transaction's entries land in its partition, no
-- column is added, and a read by transaction id prunes to one partition.
--
-- A populated database is converted without rewriting a row. The statements run one at a
-- time, each in its own transaction, and each can run again:
--   1. a check "transaction_id < bound" is added NOT VALID to the existing tables (an
--      instant ACCESS EXCLUSIVE lock);
--   2. it is validated: one sequential read of each table under SHARE UPDATE EXCLUSIVE,
--      which lets reads and writes go on;
--   3. the swap, one statement: the existing tables become one partition, "history",
--      holding everything before the bound, under new parents with the old names. It
--      holds ACCESS EXCLUSIVE on the journal tables and on the three tables that named
--      transactions by foreign key, for milliseconds: the validated check lets ATTACH
--      skip its scan, and the existing indexes are attached, not rebuilt.
-- The bound is the start of the month after next, so writes between steps 1 and 3 fit.
--
-- Foreign keys into the journal become statement triggers that check the same thing when
-- rows are written (tally.check_journal_references): PostgreSQL refuses to detach a
-- partition that a foreign key still points into, and archival (retention) detaches old
-- partitions on purpose.
--
-- Idempotency keys and the outbox are not partitioned: both are working sets, not history
-- (keys are deleted after the retention window, outbox rows once Kafka has them), and a
-- time-partitioned key table could not keep one key once across a partition boundary, so
-- two concurrent requests under one key at midnight could both post.

CREATE OR REPLACE FUNCTION tally.uuid_at(p_at timestamptz) RETURNS uuid
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN (SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-0000-0000-000000000000')::uuid
          FROM lpad(to_hex(greatest(0, least(floor(extract(epoch FROM greatest(p_at, 'epoch')) * 1000),
                                             281474976710655))::bigint), 12, '0') h);
COMMENT ON FUNCTION tally.uuid_at(timestamptz) IS
  'The smallest UUIDv7 made at or after p_at (to the millisecond): partition bounds and time ranges over transaction ids.';

-- The time a transaction id was made, to the millisecond.
CREATE OR REPLACE FUNCTION tally.uuid_time(p_id uuid) RETURNS timestamptz
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN to_timestamp(('x' || lpad(substr(replace(p_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0);

-- How wide a new partition is. Changing it applies to partitions made after the change.
CREATE TABLE IF NOT EXISTS tally.journal_settings (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  partition_width interval NOT NULL DEFAULT '1 month'
    CHECK (partition_width >= interval '1 day' AND partition_width <= interval '1 year'),
  first_bound timestamptz NOT NULL DEFAULT date_trunc('month', now(), 'UTC') + interval '2 months'
);
INSERT INTO tally.journal_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Every partition of the journal, attached or archived. "history" (from -infinity) holds
-- everything written before partitioning.
CREATE TABLE IF NOT EXISTS tally.journal_partitions (
  starts    timestamptz PRIMARY KEY,
  ends      timestamptz NOT NULL UNIQUE,
  suffix    text NOT NULL UNIQUE CHECK (suffix ~ '^(history|p[0-9]{8})$'),
  state     text NOT NULL DEFAULT 'attached' CHECK (state IN ('attached', 'archived')),
  archive   jsonb,
  CHECK (starts < ends),
  CHECK ((state = 'archived') = (archive IS NOT NULL))
);

-- Takes ACCESS EXCLUSIVE on the tables for the calling transaction without deadlocking
-- the writers: a writer locks the journal's tables one by one as its statement starts, so
-- waiting for all of them in any fixed order can meet a writer holding one and waiting
-- for another. Each try waits at most 100 ms (well under deadlock_timeout), lets go of
-- what it took, and tries again, for up to p_patience.
CREATE OR REPLACE FUNCTION tally.lock_for_ddl(p_tables regclass[], p_patience interval DEFAULT '2 minutes')
  RETURNS void LANGUAGE plpgsql AS $$
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
REVOKE ALL ON FUNCTION tally.lock_for_ddl(regclass[], interval) FROM PUBLIC;

DO $$
DECLARE v_bound text := tally.uuid_at((SELECT first_bound FROM tally.journal_settings))::text;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'tally.transactions'::regclass) = 'r'
     AND NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'transactions_before_partitioning') THEN
    PERFORM tally.lock_for_ddl('{tally.transactions, tally.entries}');
    EXECUTE format('ALTER TABLE tally.transactions ADD CONSTRAINT transactions_before_partitioning CHECK (id < %L::uuid) NOT VALID', v_bound);
    EXECUTE format('ALTER TABLE tally.entries ADD CONSTRAINT entries_before_partitioning CHECK (transaction_id < %L::uuid) NOT VALID', v_bound);
  END IF;
END $$;

DO $$
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'tally.transactions'::regclass) = 'r' THEN
    ALTER TABLE tally.transactions VALIDATE CONSTRAINT transactions_before_partitioning;
    ALTER TABLE tally.entries VALIDATE CONSTRAINT entries_before_partitioning;
  END IF;
END $$;

-- References into the journal, checked as the foreign keys did: every row written by the
-- statement names transactions that exist. TG_ARGV names the columns.
CREATE OR REPLACE FUNCTION tally.check_journal_references() RETURNS trigger
  LANGUAGE plpgsql SET jit = off AS $$
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
END $$;

-- The swap.
DO $swap$
DECLARE
  v_bound   timestamptz := (SELECT first_bound FROM tally.journal_settings);
  v_next    bigint;
  v_acl     record;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'tally.transactions'::regclass) = 'p' THEN
    RETURN;
  END IF;
  PERFORM tally.lock_for_ddl('{tally.transactions, tally.entries, tally.reversals, tally.pending_transfers, tally.inbound_transfers}');

  ALTER TABLE tally.reversals DROP CONSTRAINT reversals_transaction_id_fkey, DROP CONSTRAINT reversals_reversal_id_fkey;
  ALTER TABLE tally.pending_transfers DROP CONSTRAINT pending_transfers_id_fkey, DROP CONSTRAINT pending_transfers_resolved_by_fkey;
  ALTER TABLE tally.inbound_transfers DROP CONSTRAINT inbound_transfers_transaction_id_fkey;

  -- Statement triggers with transition tables cannot sit on a partition, and the row
  -- triggers come back as clones of the parent's.
  DROP TRIGGER transactions_append_only ON tally.transactions;
  DROP TRIGGER transactions_balanced ON tally.transactions;
  DROP TRIGGER transactions_no_truncate ON tally.transactions;
  DROP TRIGGER transactions_on_this_shard ON tally.transactions;
  DROP TRIGGER entries_append_only ON tally.entries;
  DROP TRIGGER entries_checked ON tally.entries;
  DROP TRIGGER entries_holding_moved_by_two_phase_only ON tally.entries;
  DROP TRIGGER entries_no_truncate ON tally.entries;
  DROP TRIGGER entries_outbox ON tally.entries;

  SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END INTO v_next FROM tally.entries_id_seq;
  ALTER TABLE tally.entries ALTER COLUMN id DROP IDENTITY;

  ALTER TABLE tally.transactions RENAME TO transactions_history;
  ALTER TABLE tally.transactions_history RENAME CONSTRAINT transactions_pkey TO transactions_history_pkey;
  ALTER TABLE tally.entries RENAME TO entries_history;
  ALTER TABLE tally.entries_history RENAME CONSTRAINT entries_pkey TO entries_history_pkey;
  ALTER INDEX tally.entries_by_account RENAME TO entries_history_by_account;
  ALTER INDEX tally.entries_by_slot RENAME TO entries_history_by_slot;
  ALTER INDEX tally.entries_by_transaction RENAME TO entries_history_by_transaction;

  CREATE TABLE tally.transactions (
    id uuid NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL,
    CONSTRAINT transactions_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT transactions_pkey PRIMARY KEY (id)
  ) PARTITION BY RANGE (id);

  -- Entry ids stay unique through the one identity sequence; each partition also has its
  -- own primary key on id (PostgreSQL cannot index uniqueness across partitions without
  -- the partition key).
  CREATE TABLE tally.entries (
    id bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME tally.entries_id_seq),
    transaction_id uuid NOT NULL,
    posting smallint NOT NULL,
    account_id uuid NOT NULL,
    asset text NOT NULL,
    amount bigint NOT NULL,
    balance_after bigint NOT NULL,
    slot smallint,
    CONSTRAINT entries_amount_check CHECK (amount <> 0),
    CONSTRAINT entries_posting_check CHECK (posting >= 0),
    CONSTRAINT entries_slot_check CHECK (slot >= 1 AND slot <= 64)
  ) PARTITION BY RANGE (transaction_id);
  PERFORM setval('tally.entries_id_seq', v_next, false);
  CREATE INDEX entries_by_account ON tally.entries (account_id, id);
  CREATE INDEX entries_by_slot ON tally.entries (account_id, slot, id) WHERE slot IS NOT NULL;
  CREATE INDEX entries_by_transaction ON tally.entries (transaction_id);

  EXECUTE format('ALTER TABLE tally.transactions ATTACH PARTITION tally.transactions_history FOR VALUES FROM (MINVALUE) TO (%L)',
                 tally.uuid_at(v_bound));
  EXECUTE format('ALTER TABLE tally.entries ATTACH PARTITION tally.entries_history FOR VALUES FROM (MINVALUE) TO (%L)',
                 tally.uuid_at(v_bound));
  ALTER TABLE tally.transactions_history DROP CONSTRAINT transactions_before_partitioning;
  ALTER TABLE tally.entries_history DROP CONSTRAINT entries_before_partitioning;
  INSERT INTO tally.journal_partitions (starts, ends, suffix) VALUES ('-infinity', v_bound, 'history');

  -- Whoever could use the tables (the service, change data capture's login) may use
  -- the parents; nobody is granted the partitions themselves.
  FOR v_acl IN
    SELECT c.relname, a.privilege_type, a.grantee::regrole::text AS grantee
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid IN ('tally.transactions_history'::regclass, 'tally.entries_history'::regclass)
      AND a.grantee <> c.relowner AND a.grantee <> 0
  LOOP
    EXECUTE format('GRANT %s ON tally.%I TO %s', v_acl.privilege_type,
                   replace(v_acl.relname, '_history', ''), v_acl.grantee);
    EXECUTE format('REVOKE %s ON tally.%I FROM %s', v_acl.privilege_type, v_acl.relname, v_acl.grantee);
  END LOOP;

  CREATE TRIGGER transactions_append_only BEFORE DELETE OR UPDATE ON tally.transactions FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
  CREATE TRIGGER transactions_balanced AFTER INSERT ON tally.transactions REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION tally.check_new_transactions_balanced();
  CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON tally.transactions FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
  CREATE TRIGGER transactions_on_this_shard AFTER INSERT ON tally.transactions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.check_ids_on_this_shard();
  CREATE TRIGGER entries_append_only BEFORE DELETE OR UPDATE ON tally.entries FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
  CREATE TRIGGER entries_checked AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.check_new_entries();
  CREATE TRIGGER entries_holding_moved_by_two_phase_only AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.check_holding_moves();
  CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON tally.entries FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
  CREATE TRIGGER entries_outbox AFTER INSERT ON tally.entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_transactions();

  CREATE TRIGGER reversals_reference_journal AFTER INSERT ON tally.reversals REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('transaction_id', 'reversal_id');
  CREATE TRIGGER pending_transfers_reference_journal AFTER INSERT ON tally.pending_transfers REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('id', 'resolved_by');
  CREATE TRIGGER pending_transfers_resolution_in_journal AFTER UPDATE ON tally.pending_transfers REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('resolved_by');
  CREATE TRIGGER inbound_transfers_reference_journal AFTER INSERT ON tally.inbound_transfers REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally.check_journal_references('transaction_id');

  IF EXISTS (SELECT FROM pg_publication WHERE pubname = 'tally_cdc') THEN
    ALTER PUBLICATION tally_cdc SET TABLE tally.transactions, tally.entries, tally.accounts, tally.pending_transfers,
      tally.inbound_transfers, tally.reversals;
    ALTER PUBLICATION tally_cdc SET (publish_via_partition_root = true);
  END IF;
END $swap$;

-- Makes the journal's partitions from the last one's end until p_ahead from now, each as
-- wide as journal_settings says, and returns how many it made. The service calls it when
-- it starts and every hour, and there is nothing to do but once a partition's width; it
-- gives up (returning -1) rather than wait more than seconds behind a long reader for
-- the lock that adding a partition takes, and tries again next time.
CREATE OR REPLACE FUNCTION tally.ensure_partitions(p_ahead interval DEFAULT '3 months') RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
REVOKE ALL ON FUNCTION tally.ensure_partitions(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.ensure_partitions(interval) TO tally_app;
GRANT SELECT ON tally.journal_partitions, tally.journal_settings TO tally_app;

SELECT tally.ensure_partitions();

-- Balance checkpoints at partition boundaries, and balances at any moment.
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

CREATE TABLE IF NOT EXISTS tally.checkpoints (
  at      timestamptz PRIMARY KEY CHECK (isfinite(at)),
  made_at timestamptz NOT NULL DEFAULT now(),
  slots   bigint NOT NULL CHECK (slots >= 0)
);

CREATE TABLE IF NOT EXISTS tally.balance_checkpoints (
  account_id   uuid NOT NULL,
  slot         smallint NOT NULL CHECK (slot BETWEEN 0 AND 64),
  at           timestamptz NOT NULL REFERENCES tally.checkpoints (at),
  posted       bigint NOT NULL,
  transactions bigint NOT NULL CHECK (transactions > 0),
  last_entry   bigint NOT NULL,
  last_balance_after bigint NOT NULL,
  PRIMARY KEY (account_id, slot, at)
);

CREATE OR REPLACE TRIGGER checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE OR REPLACE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON tally.checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE OR REPLACE TRIGGER balance_checkpoints_append_only BEFORE DELETE OR UPDATE ON tally.balance_checkpoints FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE OR REPLACE TRIGGER balance_checkpoints_no_truncate BEFORE TRUNCATE ON tally.balance_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();

-- Makes the checkpoints of every partition boundary at least p_grace in the past, in
-- order, and returns how many it made. Each is one read of one partition's entries.
-- Each slot's previous row is found by its key, never by reading the table: the table
-- grows by a partition's slots each time round, faster than its statistics know.
CREATE OR REPLACE FUNCTION tally.make_checkpoints(p_grace interval DEFAULT '1 hour') RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
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

-- An account's balance as of p_at, as GET .../balance shows it now: what the account
-- held, reserved or not (its entries, plus what pending transfers from it had reserved
-- and not yet resolved), counting every transaction made at or before p_at, to the
-- millisecond. It reads the last checkpoint at or before p_at and the account's entries
-- after it, never all history. Before the retention horizon (the start of the oldest
-- partition still attached) it raises TLY02: that history is archived.
CREATE OR REPLACE FUNCTION tally.balance_at(p_account uuid, p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql STABLE SET jit = off AS $$
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

-- A balance as of a moment counts what pending transfers from the account had
-- reserved then (tally.balance_at), so pending transfers are found by source, resolved
-- or not. Built without blocking writes; a build interrupted before it was valid is
-- dropped and made again.
DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_index i WHERE i.indexrelid = to_regclass('tally.pending_transfers_by_source') AND NOT i.indisvalid) THEN
    DROP INDEX tally.pending_transfers_by_source;
  END IF;
END $$;
CREATE INDEX CONCURRENTLY IF NOT EXISTS pending_transfers_by_source ON tally.pending_transfers (from_account, id);

-- Archival (spec.retention): once a partition's rows are in an archive that was written
-- and checked (ledger/archive), the partition is detached and dropped here, oldest first
-- and only after its end was checkpointed (so the checks and balances that stand on the
-- checkpoint lose nothing), and the registry keeps what the archive is. The owner runs it;
-- nobody else may.
CREATE OR REPLACE FUNCTION tally.drop_archived_partition(p_suffix text, p_archive jsonb) RETURNS void
  LANGUAGE plpgsql AS $$
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
REVOKE ALL ON FUNCTION tally.drop_archived_partition(text, jsonb) FROM PUBLIC;
