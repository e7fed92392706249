---- tern: disable-tx ----
-- Issue 13 item 6: an idempotency key is the caller's across the whole ledger, not per shard.
--
-- A request runs on the shard of its accounts and records its key there, so before this a
-- key reused for a request on another shard was applied there instead of answering 409.
-- Now every key has a home shard, a hash of (caller, key) over the shards (the service's
-- shardset.KeyHome). A request that runs on its key's home records the key as before. One
-- that runs elsewhere first claims the key at home with claim_keys below: a row in the
-- same table, saying which shard the request runs on. Keys at home, claimed or recorded,
-- share one primary key, so whichever comes first wins, and any other request under the
-- key (a different hash) is 409 on every shard. A retry of the claiming request finds its
-- own claim and goes on to its shard, whose record replays its outcome.
--
-- It runs outside a transaction, one statement at a time, so that validating the new
-- checks scans the table without blocking writes; every statement can run again. The
-- previous release's service never writes claims, and treats one as a key used by another
-- request (409), which is right.

ALTER TABLE tally.idempotency_keys ADD COLUMN IF NOT EXISTS runs_on integer;
ALTER TABLE tally.idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_runs_on_check;
ALTER TABLE tally.idempotency_keys ADD CONSTRAINT idempotency_keys_runs_on_check
  CHECK (runs_on BETWEEN 0 AND 65535) NOT VALID;
ALTER TABLE tally.idempotency_keys VALIDATE CONSTRAINT idempotency_keys_runs_on_check;

-- A record answers its replay here (a body, or a 201's transaction to render); a claim
-- (runs_on set) answers nothing here, and is nothing else: status 307, the outcome lives
-- on shard runs_on. The old check, which refuses claims, goes once this one holds.
ALTER TABLE tally.idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_answerable_or_claim;
ALTER TABLE tally.idempotency_keys ADD CONSTRAINT idempotency_keys_answerable_or_claim CHECK (
  CASE WHEN runs_on IS NULL THEN body IS NOT NULL OR (status = 201 AND transaction_id IS NOT NULL)
       ELSE status = 307 AND body IS NULL AND transaction_id IS NULL END) NOT VALID;
ALTER TABLE tally.idempotency_keys VALIDATE CONSTRAINT idempotency_keys_answerable_or_claim;
ALTER TABLE tally.idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_answerable;

-- Claims the keys at their home (this shard) for requests that run on p_shards, in one
-- round trip for a batch. It answers one row per request whose key was used by a different
-- request: 409, as every other function does; a request not answered may go on. Keys are
-- claimed in (caller, key) order, the order of every writer of this table, before any
-- other lock, so claims cannot deadlock with batches. A claim already made by the same
-- request (a retry) is not touched: if a failover of this shard lost it, only the check
-- against a later different request is lost, never an outcome (that lives on its shard).
CREATE OR REPLACE FUNCTION tally.claim_keys(p_callers text[], p_keys text[], p_hashes bytea[], p_shards integer[])
RETURNS TABLE (req integer, status smallint, body text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off AS $$
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

GRANT EXECUTE ON FUNCTION tally.claim_keys(text[], text[], bytea[], integer[]) TO tally_app;
