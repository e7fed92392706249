---- tern: disable-tx ----
-- Issue 21: the journal (transactions and entries) is range-partitioned by time.
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
          FROM lpad(to_hex(floor(extract(epoch FROM p_at) * 1000)::bigint), 12, '0') h);
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
