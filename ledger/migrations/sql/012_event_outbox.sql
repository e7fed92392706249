-- Issue 19: events written with the money (a transactional outbox).
--
-- Every change a consumer must learn about adds a row here in the transaction that makes
-- it, through statement triggers: one INSERT per statement whatever the batch size, and
-- no lock on any row another transaction writes (the identity is a sequence, not a row).
-- A transaction's row names it only: the journal it points at never changes, so the
-- relay reads the postings from there when it publishes. Rows of things that change
-- again (an account's status, a pending transfer's state) carry their state as of the
-- change.
--
-- The relay (tally relay, role tally_relay) numbers the rows it can see in the order of
-- their ids, and publishes them in that order. That order is each account's commit
-- order: every writer takes the locks that serialize it with others on the same accounts
-- (the balances' rows) before it writes its outbox row, so of two transactions on one
-- account the second takes its id only once the first committed; and a row becomes
-- visible only after its commit (and its synchronous standbys' ack), so a row the relay
-- does not see yet can only be one that shares no account with those it sees after it.
-- Within one commit (a batch of requests) the ids follow the order the batch applied
-- them: the transactions' rows come from their entries, in the entries' order.
--
-- Numbers are given a batch at a time and kept (outbox_progress.batch: the ids, in order,
-- numbered from published + 1) until Kafka acknowledged the batch, so a relay that dies
-- meanwhile is followed by one that publishes the very same events under the very same
-- numbers. Then the batch's rows go: one INSERT and one DELETE per event, and one commit
-- of the relay's per batch.

CREATE TABLE tally.outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  type text NOT NULL CHECK (type IN ('transaction.committed',
    'account.opened', 'account.frozen', 'account.unfrozen', 'account.closed',
    'transfer.pending', 'transfer.posted', 'transfer.voided', 'transfer.expired',
    'transfer.received', 'transfer.refused')),
  subject uuid NOT NULL,          -- the transaction, account or transfer
  accounts uuid[],                -- the accounts it concerns; NULL for a transaction (its entries say)
  data jsonb,                     -- the subject's state as of the change; NULL for a transaction
  occurred_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((type = 'transaction.committed') = (accounts IS NULL AND data IS NULL))
);

-- How far the relay got: the highest sequence Kafka acknowledged, and the batch numbered
-- after it, not yet acknowledged.
CREATE TABLE tally.outbox_progress (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  published bigint NOT NULL DEFAULT 0 CHECK (published >= 0),
  published_at timestamptz,
  batch bigint[] CHECK (cardinality(batch) > 0)
);
INSERT INTO tally.outbox_progress DEFAULT VALUES;

-- The triggers run as the schema's owner: the service may not write the outbox itself.
CREATE FUNCTION tally.outbox_accounts_opened() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, accounts, data, occurred_at)
  SELECT 'account.opened', n.id, ARRAY[n.id],
         jsonb_build_object('id', n.id, 'kind', n.kind, 'owner', n.owner, 'asset', n.asset,
                            'status', n.status, 'metadata', n.metadata, 'created_at', n.created_at),
         n.created_at
  FROM new_rows n ORDER BY n.id;
  RETURN NULL;
END $$;

CREATE FUNCTION tally.outbox_accounts_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, accounts, data)
  SELECT CASE WHEN n.status = 'active' THEN 'account.unfrozen' ELSE 'account.' || n.status END,
         n.id, ARRAY[n.id],
         jsonb_build_object('id', n.id, 'status', n.status, 'previous_status', o.status)
  FROM new_rows n JOIN old_rows o ON o.id = n.id
  WHERE n.status <> o.status ORDER BY n.id;
  RETURN NULL;
END $$;

CREATE FUNCTION tally.outbox_transactions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO tally.outbox (type, subject, occurred_at)
  SELECT 'transaction.committed', e.transaction_id, now() FROM new_entries e
  GROUP BY e.transaction_id ORDER BY min(e.id);
  RETURN NULL;
END $$;

-- outbox_amount renders an amount in minor units in its asset's units, as the API does.
-- (No SET clause, so PostgreSQL inlines it into its callers, which all set search_path;
-- pg_catalog comes first in any search_path anyway.)
CREATE FUNCTION tally.outbox_amount(p_amount bigint, p_asset text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT round(p_amount::numeric / 10::numeric ^ a.scale, a.scale)::text FROM tally.assets a WHERE a.code = p_asset
$$;

CREATE FUNCTION tally.outbox_pending_transfer(p tally.pending_transfers) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object('id', p.id, 'from_account', p.from_account,
    'to_account', p.to_account, 'remote_account', p.remote_account, 'asset', p.asset,
    'amount', tally.outbox_amount(p.amount, p.asset), 'state', p.state,
    'posted_amount', tally.outbox_amount(p.posted_amount, p.asset),
    'expires_at', p.expires_at, 'resolved_by', p.resolved_by, 'resolved_at', p.resolved_at))
$$;

CREATE FUNCTION tally.outbox_pending_transfers() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
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

CREATE FUNCTION tally.outbox_inbound_transfers() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
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

CREATE TRIGGER accounts_outbox_opened AFTER INSERT ON tally.accounts
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_accounts_opened();
CREATE TRIGGER accounts_outbox_changed AFTER UPDATE ON tally.accounts
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_accounts_changed();
-- A transaction's entries are written by one statement, with the transaction (post_batch).
CREATE TRIGGER entries_outbox AFTER INSERT ON tally.entries
  REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_transactions();
CREATE TRIGGER pending_transfers_outbox_created AFTER INSERT ON tally.pending_transfers
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_pending_transfers();
CREATE TRIGGER pending_transfers_outbox_resolved AFTER UPDATE ON tally.pending_transfers
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_pending_transfers();
CREATE TRIGGER inbound_transfers_outbox AFTER INSERT ON tally.inbound_transfers
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_inbound_transfers();

-- outbox_next records that Kafka acknowledged the batch ending with sequence
-- p_acknowledged (NULL: nothing to record) and removes its rows, then returns the batch
-- of events to publish, numbered: the one numbered before and not yet acknowledged, or
-- else the first p_limit rows visible now (see above). One call, one commit, a round.
-- Each event comes with the accounts it concerns and its data (a transaction's from the
-- journal: postings as the API shows them). A relay whose batch another one published
-- meanwhile (it lost its turn) gets SQLSTATE TLY01.
CREATE FUNCTION tally.outbox_next(p_acknowledged bigint, p_limit integer)
RETURNS TABLE (sequence bigint, type text, subject uuid, occurred_at timestamptz, accounts uuid[], data jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
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
  SELECT v_published + b.n, o.type, o.subject, o.occurred_at,
         coalesce(o.accounts, t.accounts), coalesce(o.data, t.data)
  FROM unnest(v_batch) WITH ORDINALITY AS b(id, n)
  JOIN tally.outbox o ON o.id = b.id
  LEFT JOIN LATERAL (
    SELECT array_agg(DISTINCT p.from_account) || array_agg(DISTINCT p.to_account) AS accounts,
           jsonb_build_object('id', tx.id, 'created_at', tx.created_at, 'metadata', tx.metadata,
             'postings', jsonb_agg(jsonb_build_object('from_account', p.from_account, 'to_account', p.to_account,
               'amount', tally.outbox_amount(p.amount::bigint, p.asset), 'asset', p.asset)
               ORDER BY p.posting))
           || coalesce((SELECT jsonb_build_object('reverses', r.transaction_id)
                        FROM tally.reversals r WHERE r.reversal_id = tx.id), '{}') AS data
    FROM tally.transactions tx
    JOIN LATERAL (
      -- a posting is one credit leg and one debit leg per slot drawn from
      SELECT e.posting, (array_agg(e.account_id) FILTER (WHERE e.amount < 0))[1] AS from_account,
             (array_agg(e.account_id) FILTER (WHERE e.amount > 0))[1] AS to_account,
             sum(e.amount) FILTER (WHERE e.amount > 0) AS amount, min(e.asset) AS asset
      FROM tally.entries e WHERE e.transaction_id = tx.id GROUP BY e.posting) p ON true
    WHERE o.type = 'transaction.committed' AND tx.id = o.subject
    GROUP BY tx.id) t ON true
  ORDER BY b.n;
END $$;

-- outbox_backlog is what the relay's metrics say: the highest sequence acknowledged, the
-- events not yet acknowledged, and when the oldest of them was written (NULL: none).
CREATE FUNCTION tally.outbox_backlog(OUT published bigint, OUT waiting bigint, OUT oldest timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT (SELECT p.published FROM tally.outbox_progress p), count(*), min(o.occurred_at) FROM tally.outbox o
$$;

DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally_relay') THEN
    CREATE ROLE tally_relay NOLOGIN;
  END IF;
END $$;
REVOKE ALL ON FUNCTION tally.outbox_next(bigint, integer), tally.outbox_backlog() FROM PUBLIC;
GRANT USAGE ON SCHEMA tally TO tally_relay;
GRANT EXECUTE ON FUNCTION tally.outbox_next(bigint, integer), tally.outbox_backlog() TO tally_relay;
GRANT SELECT ON tally.shard, tally.ledger_identity TO tally_relay;
