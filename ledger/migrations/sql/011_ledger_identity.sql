-- Issue 18: an identity for the database, which changes when the database is made anew.
--
-- The service keeps completed requests' answers in Redis (the idempotency fast path)
-- under this identity, so a Redis that outlives its database (a ledger deleted and made
-- again with the same name, a test database recreated) never answers for keys the new
-- database has not seen: those entries sit under the old identity until they expire.
-- One row, written once here, and never changed: the service may only read it.

CREATE TABLE tally.ledger_identity (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  id uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO tally.ledger_identity DEFAULT VALUES;
GRANT SELECT ON tally.ledger_identity TO tally_app;
