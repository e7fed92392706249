-- The ledger schema. Every invariant the service relies on is also enforced here, so a
-- bug in Go (or a person with psql) cannot put the books out of balance.

CREATE SCHEMA tally;

-- The group role the ledger service logs in through. It may append to the journal and
-- move balances, but never rewrite history: no UPDATE/DELETE/TRUNCATE on the journal.
DO $$
BEGIN
  CREATE ROLE tally_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL; -- roles are cluster-wide; another database of this cluster made it already
END
$$;

-- Which shard this database is. Account and transaction ids carry their shard, so a row
-- that belongs to another shard can never be written here.
CREATE TABLE tally.shard (
  singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  shard_index integer NOT NULL CHECK (shard_index BETWEEN 0 AND 65535)
);

-- The shard number carried in bytes 9-10 of a Tally UUIDv7 (inside its random bits).
CREATE FUNCTION tally.id_shard(id uuid) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (get_byte(uuid_send(id), 9) << 8) | get_byte(uuid_send(id), 10) $$;

CREATE FUNCTION tally.check_id_shard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_shard integer;
BEGIN
  SELECT shard_index INTO v_shard FROM tally.shard;
  IF v_shard IS NULL THEN
    RAISE EXCEPTION 'tally: this database has no shard index; run tally migrate --shard N'
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF tally.id_shard(NEW.id) <> v_shard THEN
    RAISE EXCEPTION 'tally: id % belongs to shard %, this is shard %', NEW.id, tally.id_shard(NEW.id), v_shard
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$$;

CREATE TABLE tally.assets (
  code       text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9_]{1,15}$'),
  scale      smallint NOT NULL CHECK (scale BETWEEN 0 AND 18),
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (code, scale)
);

-- An asset's code and scale never change: amounts already in the journal are counted in
-- its minor units.
CREATE FUNCTION tally.reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'tally: % on %.% is not allowed: rows are immutable', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER assets_immutable BEFORE UPDATE OR DELETE ON tally.assets
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();

-- The minimum bigint stands for "no floor": a balance can never go below it anyway.
-- External accounts, through which money enters and leaves, have no floor.
CREATE TABLE tally.accounts (
  id            uuid PRIMARY KEY,
  kind          text NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'external')),
  owner         text NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
  asset         text NOT NULL,
  scale         smallint NOT NULL,
  status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
  balance_floor bigint NOT NULL DEFAULT 0,
  metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_at    timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (asset, scale) REFERENCES tally.assets (code, scale),
  -- targets for the composite foreign keys below: an entry's asset must be its
  -- account's asset, and a balance's floor must be its account's floor
  UNIQUE (id, asset),
  UNIQUE (id, balance_floor),
  CHECK (kind = 'standard' OR (status = 'active' AND balance_floor = -9223372036854775808))
);
CREATE UNIQUE INDEX accounts_one_external_per_asset ON tally.accounts (asset) WHERE kind = 'external';
CREATE INDEX accounts_by_owner ON tally.accounts (owner, id);

CREATE TRIGGER accounts_on_this_shard BEFORE INSERT ON tally.accounts
  FOR EACH ROW EXECUTE FUNCTION tally.check_id_shard();

-- Status moves active <-> frozen, and active|frozen -> closed, never back; an account
-- closes only at a zero balance, so no money is stranded in it. Identity never changes.
CREATE FUNCTION tally.check_account_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.owner <> OLD.owner OR NEW.asset <> OLD.asset
     OR NEW.scale <> OLD.scale OR NEW.created_at <> OLD.created_at THEN
    RAISE EXCEPTION 'tally: an account''s id, kind, owner, asset, scale and created_at are immutable'
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.status <> OLD.status THEN
    IF OLD.status = 'closed' THEN
      RAISE EXCEPTION 'tally: account % is closed', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'closed' AND (SELECT posted FROM tally.balances WHERE account_id = OLD.id) <> 0 THEN
      RAISE EXCEPTION 'tally: account % has a non-zero balance and cannot close', OLD.id
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER accounts_update_rules BEFORE UPDATE ON tally.accounts
  FOR EACH ROW EXECUTE FUNCTION tally.check_account_update();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON tally.accounts
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();

-- Balances live apart from accounts so that the hot write (posted, version) touches a
-- narrow row; fillfactor leaves room for HOT updates.
CREATE TABLE tally.balances (
  account_id uuid PRIMARY KEY,
  floor      bigint NOT NULL,
  posted     bigint NOT NULL DEFAULT 0,
  version    bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
  FOREIGN KEY (account_id, floor) REFERENCES tally.accounts (id, balance_floor) ON UPDATE CASCADE,
  CONSTRAINT balance_above_floor CHECK (posted >= floor)
) WITH (fillfactor = 70);

CREATE TRIGGER balances_no_delete BEFORE DELETE ON tally.balances
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();

-- Every account has exactly one balance row, checked when the creating transaction commits.
CREATE FUNCTION tally.check_account_has_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tally.balances WHERE account_id = NEW.id) THEN
    RAISE EXCEPTION 'tally: account % has no balance row', NEW.id USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER accounts_have_balance AFTER INSERT ON tally.accounts
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.check_account_has_balance();

-- The journal: transactions and their entries. Append-only.
CREATE TABLE tally.transactions (
  id         uuid PRIMARY KEY,
  metadata   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz NOT NULL
);

CREATE TRIGGER transactions_on_this_shard BEFORE INSERT ON tally.transactions
  FOR EACH ROW EXECUTE FUNCTION tally.check_id_shard();

-- One row per leg. A posting moves amount from one account to another and has exactly two
-- legs: the debit (negative) and the credit (positive). balance_after is the account's
-- posted balance just after this entry.
CREATE TABLE tally.entries (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  transaction_id uuid NOT NULL REFERENCES tally.transactions (id),
  posting        smallint NOT NULL CHECK (posting >= 0),
  account_id     uuid NOT NULL,
  asset          text NOT NULL,
  amount         bigint NOT NULL CHECK (amount <> 0),
  balance_after  bigint NOT NULL,
  FOREIGN KEY (account_id, asset) REFERENCES tally.accounts (id, asset)
);
CREATE UNIQUE INDEX entries_one_leg_per_side ON tally.entries (transaction_id, posting, (amount > 0));
CREATE INDEX entries_by_account ON tally.entries (account_id, id);

CREATE FUNCTION tally.reject_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'tally: TRUNCATE on %.% is not allowed: the journal is append-only', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON tally.transactions
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON tally.entries
  FOR EACH ROW EXECUTE FUNCTION tally.reject_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON tally.transactions
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON tally.entries
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON tally.balances
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON tally.accounts
  FOR EACH STATEMENT EXECUTE FUNCTION tally.reject_truncate();

-- Double entry, checked when the writing transaction commits: every posting is exactly
-- one debit and one credit of one asset that cancel. Each entry checks its own posting,
-- so every posting is checked; and since every posting sums to zero in a single asset,
-- every transaction sums to zero per asset.
CREATE FUNCTION tally.check_transaction_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_legs   bigint;
  v_total  numeric;
  v_assets bigint;
BEGIN
  SELECT count(*), sum(amount), count(DISTINCT asset) INTO v_legs, v_total, v_assets
  FROM tally.entries WHERE transaction_id = NEW.transaction_id AND posting = NEW.posting;
  IF v_legs <> 2 OR v_total <> 0 OR v_assets <> 1 THEN
    RAISE EXCEPTION 'tally: transaction % posting % is unbalanced (% legs, sum %, % assets): a transaction must sum to zero per asset',
      NEW.transaction_id, NEW.posting, v_legs, v_total, v_assets
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON tally.entries
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.check_transaction_balanced();

-- A transaction with no entries moves nothing and is not allowed either.
CREATE FUNCTION tally.check_transaction_has_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tally.entries WHERE transaction_id = NEW.id) THEN
    RAISE EXCEPTION 'tally: transaction % has no entries', NEW.id USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER transactions_have_entries AFTER INSERT ON tally.transactions
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.check_transaction_has_entries();

-- Each entry continues its account's running balance: balance_after is the previous
-- entry's balance_after plus this amount, and the last one is the account's balance. Checked once per INSERT statement over all its
-- rows (a transition table), after they are all in place, so a multi-row insert is
-- checked row by row at the cost of one query.
CREATE FUNCTION tally.check_entry_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_bad record;
BEGIN
  SELECT n.account_id, n.balance_after, n.amount, coalesce(prev.balance_after, 0) AS prev INTO v_bad
  FROM new_entries n
  LEFT JOIN LATERAL (SELECT e.balance_after FROM tally.entries e
                     WHERE e.account_id = n.account_id AND e.id < n.id
                     ORDER BY e.id DESC LIMIT 1) prev ON true
  WHERE n.balance_after <> coalesce(prev.balance_after, 0) + n.amount
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: entry on account % has balance_after %, expected % + %',
      v_bad.account_id, v_bad.balance_after, v_bad.prev, v_bad.amount
      USING ERRCODE = 'check_violation';
  END IF;
  -- Entries never land without their balance: the balance row must already say what the
  -- journal now ends with (writers update balances first, then insert the entries).
  SELECT l.account_id, l.balance_after, b.posted INTO v_bad
  FROM (SELECT DISTINCT ON (n.account_id) n.account_id, n.balance_after
        FROM new_entries n ORDER BY n.account_id, n.id DESC) l
  JOIN tally.balances b ON b.account_id = l.account_id
  WHERE b.posted <> l.balance_after
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tally: entries take account % to %, but its balance is %', v_bad.account_id, v_bad.balance_after, v_bad.posted
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER entries_continue_running_balance AFTER INSERT ON tally.entries
  REFERENCING NEW TABLE AS new_entries
  FOR EACH STATEMENT EXECUTE FUNCTION tally.check_entry_chain();

-- A balance is always its account's last running balance in the journal, checked when the
-- writing transaction commits: a balance cannot move without entries that explain it.
CREATE FUNCTION tally.check_balance_matches_journal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_posted bigint;
  v_last   bigint;
BEGIN
  SELECT b.posted INTO v_posted FROM tally.balances b WHERE b.account_id = NEW.account_id;
  SELECT e.balance_after INTO v_last FROM tally.entries e
  WHERE e.account_id = NEW.account_id ORDER BY e.id DESC LIMIT 1;
  IF v_posted <> coalesce(v_last, 0) THEN
    RAISE EXCEPTION 'tally: balance of account % is %, the journal says %', NEW.account_id, v_posted, coalesce(v_last, 0)
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER balances_match_journal AFTER INSERT OR UPDATE ON tally.balances
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.check_balance_matches_journal();

-- Idempotency records: the outcome of a request, keyed by (caller, key). The response is
-- stored as the exact bytes sent, so a replay is byte-identical.
CREATE TABLE tally.idempotency_keys (
  caller       text NOT NULL CHECK (length(caller) BETWEEN 1 AND 200),
  key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
  request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
  status       smallint NOT NULL CHECK (status BETWEEN 200 AND 599),
  body         text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_by_age ON tally.idempotency_keys (created_at);

GRANT USAGE ON SCHEMA tally TO tally_app;
GRANT SELECT ON public.tally_schema_version TO tally_app; -- the service checks it at start
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO tally_app;
GRANT INSERT ON tally.assets, tally.accounts, tally.balances, tally.transactions, tally.entries TO tally_app;
GRANT UPDATE (status) ON tally.accounts TO tally_app;
GRANT UPDATE (posted, version) ON tally.balances TO tally_app;
GRANT INSERT, UPDATE, DELETE ON tally.idempotency_keys TO tally_app;
