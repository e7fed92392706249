---- tern: disable-tx ----
-- Issue 16, part 1: two-phase transfers and reversals, on one shard.
--
-- A PENDING TRANSFER reserves money now and moves it later. The reservation is a real
-- journal transaction: the amount moves from the source into the asset's HOLDING account
-- on this shard (kind 'holding', one per asset, created the first time it is needed).
-- Posting it moves the posted amount from the holding account to the destination and any
-- rest back to the source; voiding it, or its timeout, moves all of it back. So every
-- invariant the journal has (each transaction balanced, balances equal to the journal,
-- floors, append-only) holds for reservations with no new machinery, and the money held
-- is counted where it is: the holding account's balance is the sum of the transfers still
-- pending (tally verify checks it). An account's journal balance is what it may spend
-- (its available balance); its posted balance is that plus what it has reserved.
--
-- tally.pending_transfers is the record of each one: what was reserved, for whom, until
-- when, and how it ended. It moves from 'pending' to 'posted', 'voided' or 'expired'
-- once, never back (trigger), and the transaction that resolved it is recorded and unique.
-- Only tally.reserve and tally.resolve may move money in or out of a holding account: the
-- entries trigger below refuses any other transaction that touches one.
--
-- A CROSS-SHARD TRANSFER is built on it (ledger/crossshard drives it; README "Transfers
-- between shards"). On the source shard a pending transfer reserves the amount for the
-- CLEARING account that stands for the destination shard (kind 'clearing', one per asset
-- and peer shard) and names the account on the other shard (remote_account): that record
-- is what the destination must do. The destination applies it once, keyed by the
-- transfer's id in tally.inbound_transfers, from its clearing account for the source
-- shard, or records why it refuses; then the source settles (posts it to its clearing
-- account) or returns it (voids it). Clearing accounts, like holding accounts, are moved
-- only by these functions.
--
-- A REVERSAL undoes a posted transaction with a new transaction of the opposite postings;
-- tally.reversals links the two, and a transaction is reversed at most once.
--
-- Like 007 this runs one statement at a time outside a transaction and can run again
-- after a failure part way; the previous release's service does not know these tables
-- and is not affected by them.

-- Holding accounts: active, floor 0 (they can only hold what was reserved), one per asset.
-- Clearing accounts: active, no floor (one side of each pair owes the other), one per
-- asset and peer shard, which their owner names.
ALTER TABLE tally.accounts DROP CONSTRAINT IF EXISTS accounts_kind_known;
ALTER TABLE tally.accounts ADD CONSTRAINT accounts_kind_known
  CHECK (kind IN ('standard', 'external', 'holding', 'clearing')) NOT VALID;
ALTER TABLE tally.accounts VALIDATE CONSTRAINT accounts_kind_known;
ALTER TABLE tally.accounts DROP CONSTRAINT IF EXISTS accounts_kind_check;
ALTER TABLE tally.accounts DROP CONSTRAINT IF EXISTS accounts_system_rules;
ALTER TABLE tally.accounts ADD CONSTRAINT accounts_system_rules
  CHECK (kind = 'standard'
         OR (status = 'active' AND balance_slots = 1
             AND balance_floor = CASE kind WHEN 'holding' THEN 0 ELSE -9223372036854775808 END)) NOT VALID;
ALTER TABLE tally.accounts VALIDATE CONSTRAINT accounts_system_rules;
ALTER TABLE tally.accounts DROP CONSTRAINT IF EXISTS accounts_check;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_one_holding_per_asset ON tally.accounts (asset) WHERE kind = 'holding';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_one_clearing_per_asset_and_peer ON tally.accounts (asset, owner) WHERE kind = 'clearing';

CREATE TABLE IF NOT EXISTS tally.pending_transfers (
  id            uuid PRIMARY KEY REFERENCES tally.transactions (id), -- the reservation
  from_account  uuid NOT NULL,
  to_account    uuid NOT NULL,
  asset         text NOT NULL,
  amount        bigint NOT NULL CHECK (amount > 0),
  expires_at    timestamptz,
  state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
  posted_amount bigint CHECK (posted_amount > 0 AND posted_amount <= amount),
  resolved_by   uuid UNIQUE REFERENCES tally.transactions (id),
  resolved_at   timestamptz,
  -- a transfer to another shard: the account there; to_account is then this shard's
  -- clearing account for that shard, and the ledger, not a caller, resolves it
  remote_account uuid,
  CONSTRAINT pending_transfers_remote_never_expire CHECK (remote_account IS NULL OR expires_at IS NULL),
  CONSTRAINT pending_transfers_resolved_once
    CHECK ((state = 'pending') = (resolved_by IS NULL) AND (resolved_by IS NULL) = (resolved_at IS NULL)),
  CONSTRAINT pending_transfers_posted_amount CHECK ((state = 'posted') = (posted_amount IS NOT NULL)),
  CONSTRAINT pending_transfers_two_accounts CHECK (from_account <> to_account),
  FOREIGN KEY (from_account, asset) REFERENCES tally.accounts (id, asset),
  FOREIGN KEY (to_account, asset) REFERENCES tally.accounts (id, asset)
);
-- Balance reads, closing an account and the expiry sweep look only at open transfers.
CREATE INDEX CONCURRENTLY IF NOT EXISTS pending_transfers_open_from ON tally.pending_transfers (from_account) WHERE state = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pending_transfers_open_to ON tally.pending_transfers (to_account) WHERE state = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pending_transfers_open_until ON tally.pending_transfers (expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS pending_transfers_in_flight ON tally.pending_transfers (id) WHERE state = 'pending' AND remote_account IS NOT NULL;

-- What this shard did with each transfer another shard sent it: applied (by its
-- transaction) or refused (and the problem why). Once, by the transfer's id: the source
-- may ask again any number of times and is told the same.
CREATE TABLE IF NOT EXISTS tally.inbound_transfers (
  id             uuid PRIMARY KEY, -- the source's pending transfer; it carries the source shard
  to_account     uuid NOT NULL,
  asset          text NOT NULL,
  amount         bigint NOT NULL CHECK (amount > 0),
  state          text NOT NULL CHECK (state IN ('applied', 'refused')),
  transaction_id uuid UNIQUE REFERENCES tally.transactions (id),
  problem        text,
  CONSTRAINT inbound_transfers_outcome
    CHECK ((state = 'applied') = (transaction_id IS NOT NULL) AND (state = 'refused') = (problem IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS tally.reversals (
  transaction_id uuid PRIMARY KEY REFERENCES tally.transactions (id), -- the one reversed
  reversal_id    uuid NOT NULL UNIQUE REFERENCES tally.transactions (id),
  CHECK (transaction_id <> reversal_id)
);

-- A pending transfer resolves once: only its state, posted amount and resolution change,
-- and only from 'pending'. Neither table ever loses a row.
CREATE OR REPLACE FUNCTION tally.check_pending_transfer_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.state <> 'pending' THEN
    RAISE EXCEPTION 'tally: pending transfer % was already %', OLD.id, OLD.state USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.id <> OLD.id OR NEW.from_account <> OLD.from_account OR NEW.to_account <> OLD.to_account
     OR NEW.asset <> OLD.asset OR NEW.amount <> OLD.amount OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
    RAISE EXCEPTION 'tally: a pending transfer''s accounts, asset, amount and expiry are immutable' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER pending_transfers_resolve_once BEFORE UPDATE ON tally.pending_transfers
  FOR EACH ROW EXECUTE FUNCTION tally.check_pending_transfer_update();
CREATE OR REPLACE TRIGGER pending_transfers_no_delete BEFORE DELETE ON tally.pending_transfers
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE OR REPLACE TRIGGER pending_transfers_no_truncate BEFORE TRUNCATE ON tally.pending_transfers
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE OR REPLACE TRIGGER reversals_append_only BEFORE DELETE OR UPDATE ON tally.reversals
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE OR REPLACE TRIGGER reversals_no_truncate BEFORE TRUNCATE ON tally.reversals
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE OR REPLACE TRIGGER inbound_transfers_append_only BEFORE DELETE OR UPDATE ON tally.inbound_transfers
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE OR REPLACE TRIGGER inbound_transfers_no_truncate BEFORE TRUNCATE ON tally.inbound_transfers
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();

-- Money enters or leaves a holding or clearing account only through tally.reserve,
-- tally.resolve and tally.apply_inbound, which say so for their own transaction with a
-- transaction-local setting; a transfer that names one by its id is refused whole.
CREATE OR REPLACE FUNCTION tally.check_holding_moves() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off AS $$
DECLARE
  v_id uuid;
BEGIN
  IF current_setting('tally.moving_holds', true) = 'on' THEN
    RETURN NULL;
  END IF;
  SELECT n.account_id INTO v_id FROM new_entries n JOIN tally.accounts a ON a.id = n.account_id
  WHERE a.kind IN ('holding', 'clearing') LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: account % holds pending transfers or clears between shards; only the ledger moves it', v_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER entries_holding_moved_by_two_phase_only AFTER INSERT ON tally.entries
  REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tally.check_holding_moves();

-- Closing: also refused while the account has a transfer pending, either way (its void
-- or post could not complete).
CREATE OR REPLACE FUNCTION tally.check_account_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.owner <> OLD.owner OR NEW.asset <> OLD.asset
     OR NEW.scale <> OLD.scale OR NEW.created_at <> OLD.created_at OR NEW.balance_slots <> OLD.balance_slots THEN
    RAISE EXCEPTION 'tally: an account''s id, kind, owner, asset, scale, balance slots and created_at are immutable'
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.status <> OLD.status THEN
    IF OLD.status = 'closed' THEN
      RAISE EXCEPTION 'tally: account % is closed', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'closed' AND (SELECT sum(posted) FROM tally.balances WHERE account_id = OLD.id) <> 0 THEN
      RAISE EXCEPTION 'tally: account % has a non-zero balance and cannot close', OLD.id
        USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'closed' AND EXISTS (
         SELECT FROM tally.pending_transfers p WHERE p.from_account = OLD.id AND p.state = 'pending'
         UNION ALL
         SELECT FROM tally.pending_transfers p WHERE p.to_account = OLD.id AND p.state = 'pending') THEN
      RAISE EXCEPTION 'tally: account % has pending transfers and cannot close', OLD.id
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION tally.set_account_status(p_id uuid, p_status text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  v_posted numeric;
  v_rows   integer;
  v_kind   text;
  v_status text;
BEGIN
  SELECT sum(l.posted), count(*) INTO v_posted, v_rows
  FROM (SELECT b.posted FROM tally.balances b WHERE b.account_id = p_id ORDER BY b.slot FOR UPDATE) l;
  IF v_rows = 0 THEN
    RETURN 'account_not_found';
  END IF;
  SELECT a.kind, a.status INTO v_kind, v_status FROM tally.accounts a WHERE a.id = p_id;
  IF v_status = p_status THEN
    RETURN '';
  ELSIF v_kind <> 'standard' THEN
    RETURN 'external_account_immutable';
  ELSIF v_status = 'closed' THEN
    RETURN 'account_closed';
  ELSIF p_status = 'closed' AND v_posted <> 0 THEN
    RETURN 'account_balance_not_zero';
  ELSIF p_status = 'closed' AND EXISTS (
      SELECT FROM tally.pending_transfers p WHERE p.from_account = p_id AND p.state = 'pending'
      UNION ALL
      SELECT FROM tally.pending_transfers p WHERE p.to_account = p_id AND p.state = 'pending') THEN
    RETURN 'account_has_pending_transfers';
  END IF;
  UPDATE tally.accounts SET status = p_status WHERE id = p_id;
  RETURN '';
END
$$;

CREATE OR REPLACE FUNCTION tally.problem(p_code text, p_detail text, OUT status smallint, OUT body text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  v_title text;
BEGIN
  SELECT c.s, c.t INTO status, v_title FROM (VALUES
    ('account_not_found',            404::smallint, 'Account not found'),
    ('account_frozen',               422::smallint, 'Account is frozen'),
    ('account_closed',               422::smallint, 'Account is closed'),
    ('asset_mismatch',               422::smallint, 'Asset does not match the account'),
    ('same_account',                 422::smallint, 'Source and destination are the same account'),
    ('insufficient_funds',           422::smallint, 'Insufficient funds'),
    ('balance_limit_exceeded',       422::smallint, 'Balance would exceed the largest representable amount'),
    ('idempotency_key_reused',       409::smallint, 'Idempotency key reused with a different request'),
    ('unavailable',                  503::smallint, 'Service unavailable'),
    ('transfer_not_found',           404::smallint, 'Pending transfer not found'),
    ('transfer_already_resolved',    409::smallint, 'Pending transfer already resolved'),
    ('transfer_expired',             409::smallint, 'Pending transfer expired'),
    ('amount_exceeds_pending',       422::smallint, 'Amount exceeds the pending amount'),
    ('transaction_not_found',        404::smallint, 'Transaction not found'),
    ('transaction_already_reversed', 409::smallint, 'Transaction already reversed'),
    ('transaction_not_reversible',   422::smallint, 'Transaction cannot be reversed'),
    ('transfer_between_shards',      409::smallint, 'Transfer between shards is resolved by the ledger')
  ) AS c(code, s, t) WHERE c.code = p_code;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: unknown problem code %', p_code USING ERRCODE = 'invalid_parameter_value';
  END IF;
  body := format('{"type":%s,"title":%s,"status":%s,"detail":%s,"code":%s}',
    to_json('https://tally.dev/problems/' || p_code), to_json(v_title), status, to_json(p_detail), to_json(p_code));
END
$$;

-- The outcome of a key already used, as post_batch gives it: the same request replays
-- (touching the record, so that this commit waits for the standbys: see post_batch step
-- 5), a different one is 409. used is false for a key not used yet; same says whether
-- it was used for this request.
CREATE OR REPLACE FUNCTION tally.replay(p_caller text, p_key text, p_hash bytea,
  OUT used boolean, OUT same boolean, OUT status smallint, OUT body text, OUT transaction_id uuid)
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE tally.idempotency_keys k SET status = k.status WHERE k.caller = p_caller AND k.key = p_key
  RETURNING k.request_hash = p_hash, k.status, k.body, k.transaction_id INTO same, status, body, transaction_id;
  used := same IS NOT NULL;
  IF used AND NOT same THEN
    SELECT * INTO status, body FROM tally.problem('idempotency_key_reused',
      format('Idempotency-Key %s was first used with a different request', to_json(p_key)));
    transaction_id := NULL;
  END IF;
END
$$;

-- Records a refusal under a key found unused by tally.replay. A request with the same key
-- that took it meanwhile makes this one fail with serialization_failure: the store
-- retries it, and its replay then answers.
CREATE OR REPLACE FUNCTION tally.refuse(p_caller text, p_key text, p_hash bytea, p_code text, p_detail text,
  OUT status smallint, OUT body text)
LANGUAGE plpgsql AS $$
BEGIN
  SELECT * INTO status, body FROM tally.problem(p_code, p_detail);
  INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, body)
  VALUES (p_caller, p_key, p_hash, status, body) ON CONFLICT (caller, key) DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tally: idempotency key % was taken meanwhile', p_key USING ERRCODE = 'serialization_failure';
  END IF;
END
$$;

-- The asset's holding account on this shard, opened with p_new_id the first time.
CREATE OR REPLACE FUNCTION tally.holding_account(p_asset text, p_new_id uuid) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
  v_id uuid;
BEGIN
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.kind = 'holding';
  IF FOUND THEN
    RETURN v_id;
  END IF;
  INSERT INTO tally.accounts (id, kind, owner, asset, scale, balance_floor)
  SELECT p_new_id, 'holding', 'tally:holding', s.code, s.scale, 0 FROM tally.assets s WHERE s.code = p_asset
  ON CONFLICT (asset) WHERE kind = 'holding' DO NOTHING;
  IF FOUND THEN
    INSERT INTO tally.balances (account_id, floor) VALUES (p_new_id, 0);
  END IF;
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.kind = 'holding';
  RETURN v_id; -- NULL: no such asset
END
$$;

-- The asset's clearing account for the peer shard, opened with p_new_id the first time.
CREATE OR REPLACE FUNCTION tally.clearing_account(p_asset text, p_peer integer, p_new_id uuid) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
  v_id    uuid;
  v_owner text := 'tally:clearing:' || p_peer;
BEGIN
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.owner = v_owner AND a.kind = 'clearing';
  IF FOUND THEN
    RETURN v_id;
  END IF;
  INSERT INTO tally.accounts (id, kind, owner, asset, scale, balance_floor)
  SELECT p_new_id, 'clearing', v_owner, s.code, s.scale, -9223372036854775808 FROM tally.assets s WHERE s.code = p_asset
  ON CONFLICT (asset, owner) WHERE kind = 'clearing' DO NOTHING;
  IF FOUND THEN
    INSERT INTO tally.balances (account_id, floor) VALUES (p_new_id, -9223372036854775808);
  END IF;
  SELECT a.id INTO v_id FROM tally.accounts a WHERE a.asset = p_asset AND a.owner = v_owner AND a.kind = 'clearing';
  RETURN v_id; -- NULL: no such asset
END
$$;

-- Reserve p_amount from p_from for p_to: one transaction from p_from to the holding
-- account, and the pending transfer's record, under one idempotency key. The
-- destination is checked now too (and share-locked, so it cannot close before the
-- record exists); resolving checks both accounts again. With p_remote, the destination
-- is that account on another shard: the transfer is reserved for this shard's clearing
-- account for that shard (opened with p_clearing_id if need be), and the destination
-- shard checks the account when it applies it.
CREATE OR REPLACE FUNCTION tally.reserve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamptz,
  p_metadata jsonb, p_from uuid, p_to uuid, p_amount bigint, p_asset text, p_expires timestamptz, p_holding_id uuid,
  p_remote uuid, p_clearing_id uuid,
  OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
  v_prior   record;
  v_holding uuid;
  v_to      record;
  v_code    text;
  v_detail  text;
BEGIN
  replayed := false;
  SELECT * INTO v_prior FROM tally.replay(p_caller, p_key, p_hash);
  IF v_prior.used THEN
    status := v_prior.status; body := v_prior.body; transaction_id := v_prior.transaction_id;
    replayed := v_prior.same;
    RETURN;
  END IF;
  PERFORM set_config('tally.moving_holds', 'on', true);
  IF p_remote IS NOT NULL THEN
    IF tally.id_shard(p_remote) = (SELECT shard_index FROM tally.shard) OR p_expires IS NOT NULL THEN
      RAISE EXCEPTION 'tally: a transfer to another shard names an account there, and never expires' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    p_to := tally.clearing_account(p_asset, tally.id_shard(p_remote), p_clearing_id);
  END IF;
  SELECT a.status, a.asset, a.kind INTO v_to FROM tally.accounts a WHERE a.id = p_to FOR SHARE;
  IF NOT FOUND OR (v_to.kind IN ('holding', 'clearing') AND p_remote IS NULL) THEN
    v_code := 'account_not_found';
    v_detail := format('account %s does not exist', p_to);
  ELSIF p_to = p_from THEN
    v_code := 'same_account';
    v_detail := format('the transfer moves money from account %s to itself', p_from);
  ELSIF v_to.status IN ('closed', 'frozen') THEN
    v_code := 'account_' || v_to.status;
    v_detail := format('account %s is %s', p_to, v_to.status);
  ELSIF v_to.asset <> p_asset THEN
    v_code := 'asset_mismatch';
    v_detail := format('the transfer is in %s but account %s holds %s', p_asset, p_to, v_to.asset);
  ELSIF p_expires IS NOT NULL AND p_expires <= p_created THEN
    RAISE EXCEPTION 'tally: a pending transfer must expire after it is made' USING ERRCODE = 'invalid_parameter_value';
  ELSE
    v_holding := tally.holding_account(p_asset, p_holding_id);
    IF v_holding IS NULL THEN
      v_code := 'asset_mismatch';
      v_detail := format('asset %s is not registered', p_asset);
    END IF;
  END IF;
  IF v_code IS NOT NULL THEN
    SELECT * INTO status, body FROM tally.refuse(p_caller, p_key, p_hash, v_code, v_detail);
    RETURN;
  END IF;
  SELECT r.status, r.body, r.replayed, r.transaction_id INTO status, body, replayed, transaction_id
  FROM tally.post_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                        ARRAY[1], ARRAY[p_from], ARRAY[v_holding], ARRAY[p_amount], ARRAY[p_asset]) r;
  IF status = 201 AND NOT replayed THEN
    INSERT INTO tally.pending_transfers (id, from_account, to_account, asset, amount, expires_at, remote_account)
    VALUES (p_id, p_from, p_to, p_asset, p_amount, p_expires, p_remote);
  END IF;
END
$$;

-- Resolve a pending transfer: 'post' moves p_amount (NULL: all of it) to the destination
-- and the rest back, 'void' and 'expire' move all of it back; one transaction, p_id,
-- under its own idempotency key. The record is locked first, so two resolutions of one
-- transfer queue, and the second finds it resolved. A transfer to another shard is
-- resolved only by the ledger's driver, once the destination has answered: 'settle'
-- (applied there: all of it to the clearing account) or 'return' (refused: all back).
CREATE OR REPLACE FUNCTION tally.resolve(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamptz,
  p_metadata jsonb, p_pending uuid, p_action text, p_amount bigint,
  OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
  v_prior   record;
  v_p       record;
  v_holding uuid;
  v_code    text;
  v_detail  text;
  v_post    bigint;
  v_from    uuid[] := '{}';
  v_to      uuid[] := '{}';
  v_amount  bigint[] := '{}';
BEGIN
  IF p_action NOT IN ('post', 'void', 'expire', 'settle', 'return') OR (p_amount IS NOT NULL AND (p_action <> 'post' OR p_amount <= 0)) THEN
    RAISE EXCEPTION 'tally: resolve needs post (with an optional positive amount), void, expire, settle or return' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  replayed := false;
  SELECT * INTO v_prior FROM tally.replay(p_caller, p_key, p_hash);
  IF v_prior.used THEN
    status := v_prior.status; body := v_prior.body; transaction_id := v_prior.transaction_id;
    replayed := v_prior.same;
    RETURN;
  END IF;
  PERFORM set_config('tally.moving_holds', 'on', true);
  SELECT * INTO v_p FROM tally.pending_transfers p WHERE p.id = p_pending FOR UPDATE;
  v_post := coalesce(p_amount, v_p.amount);
  IF NOT FOUND THEN
    v_code := 'transfer_not_found';
    v_detail := format('no pending transfer %s', p_pending);
  ELSIF v_p.state <> 'pending' THEN
    v_code := 'transfer_already_resolved';
    v_detail := format('transfer %s was already %s', p_pending, v_p.state);
  ELSIF (v_p.remote_account IS NULL) <> (p_action IN ('post', 'void', 'expire')) THEN
    IF v_p.remote_account IS NULL THEN
      RAISE EXCEPTION 'tally: transfer % stays on this shard: post, void or expire it', p_pending USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_code := 'transfer_between_shards';
    v_detail := format('transfer %s goes to another shard; the ledger completes or returns it', p_pending);
  ELSIF p_action = 'expire' AND (v_p.expires_at IS NULL OR v_p.expires_at > p_created) THEN
    RAISE EXCEPTION 'tally: transfer % has not expired', p_pending USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_action = 'post' AND v_p.expires_at <= p_created THEN
    v_code := 'transfer_expired';
    v_detail := format('transfer %s expired at %s', p_pending, to_json(v_p.expires_at) #>> '{}');
  ELSIF p_action = 'post' AND v_post > v_p.amount THEN
    v_code := 'amount_exceeds_pending';
    v_detail := format('transfer %s holds less than the amount to post', p_pending);
  END IF;
  IF v_code IS NOT NULL THEN
    SELECT * INTO status, body FROM tally.refuse(p_caller, p_key, p_hash, v_code, v_detail);
    RETURN;
  END IF;
  SELECT a.id INTO v_holding FROM tally.accounts a WHERE a.asset = v_p.asset AND a.kind = 'holding';
  IF p_action NOT IN ('post', 'settle') THEN
    v_post := 0;
  END IF;
  IF v_post > 0 THEN
    v_from := v_from || v_holding; v_to := v_to || v_p.to_account; v_amount := v_amount || v_post;
  END IF;
  IF v_post < v_p.amount THEN
    v_from := v_from || v_holding; v_to := v_to || v_p.from_account; v_amount := v_amount || (v_p.amount - v_post);
  END IF;
  SELECT r.status, r.body, r.replayed, r.transaction_id INTO status, body, replayed, transaction_id
  FROM tally.post_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                        array_fill(1, ARRAY[cardinality(v_from)]), v_from, v_to, v_amount,
                        array_fill(v_p.asset, ARRAY[cardinality(v_from)])) r;
  IF status = 201 AND NOT replayed THEN
    UPDATE tally.pending_transfers p
    SET state = CASE p_action WHEN 'expire' THEN 'expired' WHEN 'void' THEN 'voided' WHEN 'return' THEN 'voided' ELSE 'posted' END,
        posted_amount = nullif(v_post, 0), resolved_by = p_id, resolved_at = p_created
    WHERE p.id = p_pending;
  END IF;
END
$$;

-- Reverse a transaction: a new transaction p_id with each posting turned around, linked
-- in tally.reversals. Reservations and resolutions are not reversed (void the transfer,
-- or reverse what posting it did not). The original's id is locked for the
-- transaction's length, so two reversals of one queue, and the second finds it reversed.
CREATE OR REPLACE FUNCTION tally.reverse(p_caller text, p_key text, p_hash bytea, p_id uuid, p_created timestamptz,
  p_metadata jsonb, p_original uuid,
  OUT status smallint, OUT body text, OUT replayed boolean, OUT transaction_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
  v_prior   record;
  v_code    text;
  v_detail  text;
  v_from    uuid[];
  v_to      uuid[];
  v_amount  bigint[];
  v_asset   text[];
BEGIN
  replayed := false;
  SELECT * INTO v_prior FROM tally.replay(p_caller, p_key, p_hash);
  IF v_prior.used THEN
    status := v_prior.status; body := v_prior.body; transaction_id := v_prior.transaction_id;
    replayed := v_prior.same;
    RETURN;
  END IF;
  -- The first key names the lock space, so these locks cannot meet another use.
  PERFORM pg_advisory_xact_lock(hashtext('tally.reverse'), hashtext(p_original::text));
  IF NOT EXISTS (SELECT FROM tally.transactions t WHERE t.id = p_original) THEN
    v_code := 'transaction_not_found';
    v_detail := format('transaction %s does not exist', p_original);
  ELSIF EXISTS (SELECT FROM tally.reversals r WHERE r.transaction_id = p_original) THEN
    v_code := 'transaction_already_reversed';
    v_detail := format('transaction %s was already reversed', p_original);
  ELSIF EXISTS (SELECT FROM tally.pending_transfers p WHERE p.id = p_original)
        OR EXISTS (SELECT FROM tally.pending_transfers p WHERE p.resolved_by = p_original)
        OR EXISTS (SELECT FROM tally.inbound_transfers i WHERE i.transaction_id = p_original) THEN
    v_code := 'transaction_not_reversible';
    v_detail := format('transaction %s is part of a pending transfer or a transfer between shards', p_original);
  END IF;
  IF v_code IS NOT NULL THEN
    SELECT * INTO status, body FROM tally.refuse(p_caller, p_key, p_hash, v_code, v_detail);
    RETURN;
  END IF;
  -- Each posting is one credit leg and one debit leg per slot drawn, all on one account.
  SELECT array_agg(c.account_id ORDER BY c.posting), array_agg(d.account_id ORDER BY c.posting),
         array_agg(c.amount ORDER BY c.posting), array_agg(c.asset ORDER BY c.posting)
  INTO v_from, v_to, v_amount, v_asset
  FROM tally.entries c
  CROSS JOIN LATERAL (SELECT e.account_id FROM tally.entries e
                      WHERE e.transaction_id = c.transaction_id AND e.posting = c.posting AND e.amount < 0 LIMIT 1) d
  WHERE c.transaction_id = p_original AND c.amount > 0;
  SELECT r.status, r.body, r.replayed, r.transaction_id INTO status, body, replayed, transaction_id
  FROM tally.post_batch(ARRAY[p_caller], ARRAY[p_key], ARRAY[p_hash], ARRAY[p_id], ARRAY[p_created], ARRAY[p_metadata],
                        array_fill(1, ARRAY[cardinality(v_from)]), v_from, v_to, v_amount, v_asset) r;
  IF status = 201 AND NOT replayed THEN
    INSERT INTO tally.reversals (transaction_id, reversal_id) VALUES (p_original, p_id);
  END IF;
END
$$;

-- Apply, once, a transfer another shard reserved for an account here: from this shard's
-- clearing account for the source shard to p_to, as transaction p_tx; or record why it
-- is refused. Asked again, it answers what it did the first time. Appliers of one
-- transfer queue on a lock of its id, so it is decided once.
CREATE OR REPLACE FUNCTION tally.apply_inbound(p_id uuid, p_to uuid, p_amount bigint, p_asset text, p_tx uuid,
  p_created timestamptz, p_metadata jsonb, p_clearing_id uuid,
  OUT state text, OUT problem text, OUT transaction_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
  v_source   integer := tally.id_shard(p_id);
  v_clearing uuid;
  v_to       record;
  v_code     text;
  v_detail   text;
  v_r        record;
BEGIN
  SELECT i.state, i.problem, i.transaction_id INTO state, problem, transaction_id FROM tally.inbound_transfers i WHERE i.id = p_id;
  IF FOUND THEN
    RETURN;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('tally.apply_inbound'), hashtext(p_id::text));
  SELECT i.state, i.problem, i.transaction_id INTO state, problem, transaction_id FROM tally.inbound_transfers i WHERE i.id = p_id;
  IF FOUND THEN
    RETURN;
  END IF;
  IF v_source = (SELECT shard_index FROM tally.shard) OR p_amount <= 0 THEN
    RAISE EXCEPTION 'tally: an inbound transfer comes from another shard, with a positive amount' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('tally.moving_holds', 'on', true);
  SELECT a.asset, a.kind INTO v_to FROM tally.accounts a WHERE a.id = p_to;
  IF NOT FOUND OR v_to.kind IN ('holding', 'clearing') THEN
    v_code := 'account_not_found';
    v_detail := format('account %s does not exist', p_to);
  ELSIF v_to.asset <> p_asset THEN
    v_code := 'asset_mismatch';
    v_detail := format('the transfer is in %s but account %s holds %s', p_asset, p_to, v_to.asset);
  ELSE
    v_clearing := tally.clearing_account(p_asset, v_source, p_clearing_id);
  END IF;
  IF v_code IS NOT NULL THEN
    state := 'refused';
    SELECT x.body INTO problem FROM tally.problem(v_code, v_detail) x;
  ELSE
    -- Status, funds and the rest are judged as for any posting, under its locks.
    SELECT r.status, r.body, r.replayed, r.transaction_id INTO v_r
    FROM tally.post_batch(ARRAY['tally:shard:' || v_source], ARRAY['inbound:' || p_id], ARRAY[sha256(uuid_send(p_id))],
                          ARRAY[p_tx], ARRAY[p_created], ARRAY[p_metadata], ARRAY[1], ARRAY[v_clearing], ARRAY[p_to],
                          ARRAY[p_amount], ARRAY[p_asset]) r;
    IF v_r.replayed THEN
      RAISE EXCEPTION 'tally: inbound transfer % has an idempotency record but no inbound record', p_id USING ERRCODE = 'internal_error';
    ELSIF v_r.status = 201 THEN
      state := 'applied';
      transaction_id := v_r.transaction_id;
    ELSE
      state := 'refused';
      problem := v_r.body;
    END IF;
  END IF;
  INSERT INTO tally.inbound_transfers (id, to_account, asset, amount, state, transaction_id, problem)
  VALUES (p_id, p_to, p_asset, p_amount, state, transaction_id, problem);
END
$$;

GRANT SELECT, INSERT ON tally.pending_transfers TO tally_app;
GRANT SELECT, INSERT ON tally.inbound_transfers TO tally_app;
GRANT UPDATE (state, posted_amount, resolved_by, resolved_at) ON tally.pending_transfers TO tally_app;
GRANT SELECT, INSERT ON tally.reversals TO tally_app;
GRANT EXECUTE ON FUNCTION tally.replay(text, text, bytea), tally.refuse(text, text, bytea, text, text),
  tally.holding_account(text, uuid), tally.clearing_account(text, integer, uuid),
  tally.reserve(text, text, bytea, uuid, timestamptz, jsonb, uuid, uuid, bigint, text, timestamptz, uuid, uuid, uuid),
  tally.apply_inbound(uuid, uuid, bigint, text, uuid, timestamptz, jsonb, uuid),
  tally.resolve(text, text, bytea, uuid, timestamptz, jsonb, uuid, text, bigint),
  tally.reverse(text, text, bytea, uuid, timestamptz, jsonb, uuid),
  tally.check_pending_transfer_update(), tally.check_holding_moves() TO tally_app;
