-- The relay renders a transaction's event itself, from its journal rows (issue 19).
--
-- outbox_next (migration 012) built each transaction's document in jsonb; that cost the
-- primary about 40 µs per event, three quarters of the relay's whole share of it, on the
-- cores the transfers need. It now hands over the rows the document is made of (one per
-- entry, in the order of the postings, debit legs first) and the relay writes the
-- document in Go, as the API writes a transaction. Everything else is as in 012: the
-- same batches, numbers, acknowledgement and SQLSTATE TLY01.
--
-- The result's shape changes, so the function is replaced, not altered: a relay of the
-- previous release fails its rounds (and retries) until its pod is replaced.

DROP FUNCTION tally.outbox_next(bigint, integer);

-- outbox_next records that Kafka acknowledged the batch ending with sequence
-- p_acknowledged (NULL: nothing to record) and removes its rows, then returns the batch
-- of events to publish, numbered: the one numbered before and not yet acknowledged, or
-- else the first p_limit rows visible now (see 012). An event other than a transaction
-- is one row with its accounts and data; a transaction is one row per entry, with the
-- transaction's time, metadata and the transaction it reverses (if any) on each, ordered
-- by posting and debit legs first. A relay whose batch another one published meanwhile
-- (it lost its turn) gets SQLSTATE TLY01.
CREATE FUNCTION tally.outbox_next(p_acknowledged bigint, p_limit integer)
RETURNS TABLE (sequence bigint, type text, subject uuid, occurred_at timestamptz, accounts uuid[], data jsonb,
               created_at timestamptz, metadata jsonb, reverses uuid,
               posting smallint, account uuid, amount bigint, asset text, scale smallint)
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

REVOKE ALL ON FUNCTION tally.outbox_next(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.outbox_next(bigint, integer) TO tally_relay;
