-- The operator counts a shard's customer accounts before it may remove the shard. It
-- needs nothing else, so it gets nothing else: a role that may run this one function,
-- which reads as its owner (SECURITY DEFINER) and returns a number. No table, no other
-- function, no write.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally_monitor') THEN
    CREATE ROLE tally_monitor NOLOGIN;
  END IF;
END $$;

CREATE FUNCTION tally.count_accounts() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
AS $$ SELECT count(*) FROM tally.accounts WHERE kind = 'standard' $$;

REVOKE ALL ON FUNCTION tally.count_accounts() FROM PUBLIC;
GRANT USAGE ON SCHEMA tally TO tally_monitor;
GRANT EXECUTE ON FUNCTION tally.count_accounts() TO tally_monitor;
