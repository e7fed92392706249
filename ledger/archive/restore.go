package archive

import (
	"context"
	"fmt"
	"io"
	"regexp"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/ledger/store"
)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Restore loads the archive at path into a new schema of the database behind conn, as
// plain tables (transactions, entries, opening, closing), and returns its manifest. The
// database need not be a ledger's.
func Restore(ctx context.Context, conn *pgx.Conn, path, schema string) (Manifest, error) {
	if !schemaName.MatchString(schema) {
		return Manifest{}, fmt.Errorf("archive: schema %q: lowercase letters, digits and _ only", schema)
	}
	checkpoint := `(account_id uuid NOT NULL, slot smallint NOT NULL, at timestamptz NOT NULL, posted bigint NOT NULL,
		transactions bigint NOT NULL, last_entry bigint NOT NULL, last_balance_after bigint NOT NULL, PRIMARY KEY (account_id, slot))`
	for _, stmt := range []string{
		"CREATE SCHEMA " + schema,
		"CREATE TABLE " + schema + ".transactions (id uuid PRIMARY KEY, metadata jsonb, created_at timestamptz NOT NULL)",
		"CREATE TABLE " + schema + `.entries (id bigint PRIMARY KEY, transaction_id uuid NOT NULL, posting smallint NOT NULL,
			account_id uuid NOT NULL, asset text NOT NULL, amount bigint NOT NULL, balance_after bigint NOT NULL, slot smallint)`,
		"CREATE TABLE " + schema + ".opening " + checkpoint,
		"CREATE TABLE " + schema + ".closing " + checkpoint,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return Manifest{}, fmt.Errorf("archive: restore into %s: %w", schema, err)
		}
	}
	m, _, err := read(path, func(member string, r io.Reader) (int64, error) {
		tag, err := conn.PgConn().CopyFrom(ctx, r, "COPY "+schema+"."+member+" FROM STDIN")
		if err != nil {
			return 0, fmt.Errorf("archive: restore %s: %w", member, err)
		}
		return tag.RowsAffected(), nil
	})
	if err != nil {
		return m, err
	}
	_, err = conn.Exec(ctx, "CREATE INDEX ON "+schema+".entries (transaction_id)")
	if err != nil {
		return m, fmt.Errorf("archive: restore: %w", err)
	}
	return m, nil
}

// restoredChecks are VerifyRestored's invariants over a restored archive (schema S):
// each a query returning one row per violation.
var restoredChecks = []struct{ name, query string }{
	{"closing checkpoint is opening plus entries", `
		SELECT format('account %s slot %s: %s', coalesce(c.account_id, e.account_id), coalesce(c.slot, e.slot),
		              CASE WHEN c.account_id IS NULL THEN 'moved but has no closing checkpoint'
		                   WHEN e.account_id IS NULL THEN 'has a closing checkpoint but did not move'
		                   ELSE format('opens at %s over %s transactions, moves %s in %s, closes at %s over %s',
		                               coalesce(o.posted, 0), coalesce(o.transactions, 0), e.total, e.n, c.posted, c.transactions) END)
		FROM (SELECT account_id, coalesce(slot, 0) AS slot, sum(amount) AS total, count(DISTINCT transaction_id) AS n, max(id) AS last_id
		      FROM S.entries GROUP BY 1, 2) e
		FULL JOIN S.closing c ON c.account_id = e.account_id AND c.slot = e.slot
		LEFT JOIN S.opening o ON o.account_id = coalesce(c.account_id, e.account_id) AND o.slot = coalesce(c.slot, e.slot)
		WHERE c.account_id IS NULL OR e.account_id IS NULL OR c.posted <> coalesce(o.posted, 0) + e.total
		   OR c.transactions <> coalesce(o.transactions, 0) + e.n OR c.last_entry <> greatest(o.last_entry, e.last_id)`},
	{"running balances are consistent", `
		SELECT format('entry %s of account %s slot %s: balance_after %s does not follow', e.id, e.account_id, e.slot, e.balance_after)
		FROM (SELECT id, account_id, slot, amount, balance_after, lag(balance_after) OVER w AS prev, lag(id) OVER w AS prev_id
		      FROM S.entries WINDOW w AS (PARTITION BY account_id, slot ORDER BY id)) e
		LEFT JOIN S.opening o ON o.account_id = e.account_id AND o.slot = coalesce(e.slot, 0)
		WHERE CASE WHEN o.last_entry IS NOT NULL AND e.id < o.last_entry THEN false
		           WHEN o.last_entry IS NOT NULL AND (e.prev_id IS NULL OR e.prev_id < o.last_entry)
		             THEN e.balance_after <> o.last_balance_after + e.amount
		           ELSE e.balance_after <> coalesce(e.prev, 0) + e.amount END`},
	{"closing checkpoint names its last entry's running balance", `
		SELECT format('account %s slot %s: last entry %s ran to %s, the checkpoint says %s', c.account_id, c.slot, e.id, e.balance_after, c.last_balance_after)
		FROM S.closing c JOIN S.entries e ON e.id = c.last_entry WHERE e.balance_after <> c.last_balance_after`},
	{"transaction sums to zero per asset", `
		SELECT format('transaction %s: %s sums to %s', transaction_id, asset, sum(amount))
		FROM S.entries GROUP BY transaction_id, asset HAVING sum(amount) <> 0`},
	{"posting is one credit and debits from one account, one per slot", `
		SELECT format('transaction %s posting %s: %s legs summing to %s', transaction_id, posting, count(*), sum(amount))
		FROM S.entries GROUP BY transaction_id, posting
		HAVING count(*) FILTER (WHERE amount > 0) <> 1 OR count(DISTINCT account_id) FILTER (WHERE amount < 0) <> 1
		    OR count(*) FILTER (WHERE amount < 0) <> count(DISTINCT coalesce(slot, 0)) FILTER (WHERE amount < 0)
		    OR sum(amount) <> 0 OR count(DISTINCT asset) <> 1`},
	{"transactions and entries name each other", `
		SELECT format('transaction %s has no entries', t.id) FROM S.transactions t
		WHERE NOT EXISTS (SELECT FROM S.entries e WHERE e.transaction_id = t.id)
		UNION ALL
		SELECT format('entry %s names transaction %s, which is not in the archive', e.id, e.transaction_id) FROM S.entries e
		WHERE NOT EXISTS (SELECT FROM S.transactions t WHERE t.id = e.transaction_id)`},
}

// VerifyRestored checks a restored archive on its own: every moved slot's closing
// checkpoint is its opening one plus its entries, running balances follow from the
// opening checkpoint, and every transaction is balanced and whole.
func VerifyRestored(ctx context.Context, conn *pgx.Conn, schema string) ([]store.Violation, error) {
	if !schemaName.MatchString(schema) {
		return nil, fmt.Errorf("archive: schema %q: lowercase letters, digits and _ only", schema)
	}
	var found []store.Violation
	for _, c := range restoredChecks {
		rows, err := conn.Query(ctx, replaceSchema(c.query, schema)+" LIMIT 20")
		if err != nil {
			return nil, fmt.Errorf("archive: verify %s: %w", c.name, err)
		}
		details, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("archive: verify %s: %w", c.name, err)
		}
		for _, d := range details {
			found = append(found, store.Violation{Check: c.name, Detail: d})
		}
	}
	return found, nil
}

var schemaRef = regexp.MustCompile(`\bS\.`)

func replaceSchema(q, schema string) string { return schemaRef.ReplaceAllString(q, schema+".") }
