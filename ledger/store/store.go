// Package store is the ledger's PostgreSQL store for one shard. Every write is a single
// statement calling a function from ledger/migrations, so each is one database round
// trip and no row lock is ever held across the network.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
)

// maxAttempts bounds retries of a statement that failed only because of a transient
// conflict; idempotency keys make retrying a transfer safe.
const maxAttempts = 3

// Store reads and writes one shard's database.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a store over the pool; the caller owns and closes the pool. A pool that
// the store writes through must have its configuration passed through ConfigurePool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// ConnectTimeout bounds opening one connection (TCP, TLS and login). One login takes
// milliseconds, but a burst of them queues on the server's cores: 64 at once (a pool
// opening, or reopening after a failover) took 1.7 s on a quiet 2-core machine, so 2 s was
// too tight. A silent server costs a pool slot this long; a request still waits no longer
// than its own deadline.
const ConnectTimeout = 5 * time.Second

// syncRepCancelledKey marks, in a connection's CustomData, that PostgreSQL stopped
// waiting for the synchronous standbys of a commit on it.
const syncRepCancelledKey = "tally.sync_rep_wait_cancelled"

// ConfigurePool makes a pool's connections watch for PostgreSQL's warning that a commit
// stopped waiting for its synchronous standbys (the wait was cancelled, by a statement
// timeout, a client's cancel request or pg_cancel_backend). PostgreSQL then reports the
// commit as a success although it may exist on the primary alone, where a failover can
// lose it; PostBatch must not acknowledge such a commit. PostgreSQL gives the warning no
// code of its own (01000, or 57P01 when it also terminates the connection), so its text is
// matched, as the server's C-locale messages spell it.
//
// It also bounds each new connection to ConnectTimeout, unless the URL set its own
// connect_timeout: a connection opened while the Service still leads to a primary that
// is gone or hung would otherwise wait out the whole batch's timeout, again for each
// batch, until the role labels move.
func ConfigurePool(cfg *pgxpool.Config) {
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = ConnectTimeout
	}
	prev := cfg.ConnConfig.OnNotice
	cfg.ConnConfig.OnNotice = func(c *pgconn.PgConn, n *pgconn.Notice) {
		if strings.Contains(n.Message, "wait for synchronous replication") {
			c.CustomData()[syncRepCancelledKey] = true
		}
		if prev != nil {
			prev(c, n)
		}
	}
}

// Pool returns the underlying connection pool, for health checks and metrics.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Shard reads the shard index this database was migrated as.
func (s *Store) Shard(ctx context.Context) (int, error) {
	var shard int
	if err := s.pool.QueryRow(ctx, "SELECT shard_index FROM tally.shard").Scan(&shard); err != nil {
		return 0, fmt.Errorf("store: read shard index: %w", err)
	}
	return shard, nil
}

// RegisterAsset creates an asset with its external account (externalID) on this shard,
// or returns the existing one; created reports which.
func (s *Store) RegisterAsset(ctx context.Context, code string, scale int, externalID ledger.AccountID) (a ledger.Asset, external ledger.AccountID, created bool, err error) {
	var ext [16]byte
	err = s.pool.QueryRow(ctx, "SELECT code, scale, external_account_id, created FROM tally.register_asset($1, $2, $3)",
		code, scale, [16]byte(externalID)).Scan(&a.Code, &a.Scale, &ext, &created)
	if err != nil {
		return a, external, false, wrap("register asset", err)
	}
	return a, ledger.AccountID(ext), created, nil
}

// Identity is the database's identity, made with its schema and never changed: the
// idempotency fast path keeps answers under it, so a database made anew never inherits
// the answers Redis kept for the one before.
func (s *Store) Identity(ctx context.Context) (string, error) {
	var id string
	if err := s.pool.QueryRow(ctx, `SELECT id::text FROM tally.ledger_identity`).Scan(&id); err != nil {
		return "", wrap("read the ledger identity", err)
	}
	return id, nil
}

// Asset reads one asset and its external account on this shard.
func (s *Store) Asset(ctx context.Context, code string) (ledger.Asset, ledger.AccountID, error) {
	var a ledger.Asset
	var ext [16]byte
	err := s.pool.QueryRow(ctx, `
		SELECT s.code, s.scale, x.id FROM tally.assets s
		JOIN tally.accounts x ON x.asset = s.code AND x.kind = 'external'
		WHERE s.code = $1`, code).Scan(&a.Code, &a.Scale, &ext)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, ledger.AccountID{}, ledger.Errorf(ledger.CodeAssetNotFound, "asset %s is not registered", code)
	}
	if err != nil {
		return a, ledger.AccountID{}, wrap("read asset", err)
	}
	return a, ledger.AccountID(ext), nil
}

// AssetCodes lists the registered asset codes in order.
func (s *Store) AssetCodes(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT code FROM tally.assets ORDER BY code")
	if err != nil {
		return nil, wrap("list assets", err)
	}
	codes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, wrap("list assets", err)
	}
	return codes, nil
}

const accountColumns = "a.id, a.kind, a.owner, a.asset, a.scale, a.status, a.balance_floor, a.balance_slots, a.metadata, a.created_at"

func scanAccount(row pgx.Row) (ledger.Account, error) {
	var a ledger.Account
	var id [16]byte
	var kind, status string
	var meta []byte
	err := row.Scan(&id, &kind, &a.Owner, &a.Asset, &a.Scale, &status, &a.BalanceFloor, &a.BalanceSlots, &meta, &a.CreatedAt)
	a.ID, a.Kind, a.Status, a.Metadata = ledger.AccountID(id), ledger.Kind(kind), ledger.Status(status), json.RawMessage(meta)
	return a, err
}

// CreateAccount inserts a standard account with its balance rows: slot 0, or slots 1 to
// BalanceSlots when there are more than one (zero means one). The account's asset must be
// registered; its scale is taken from the asset.
func (s *Store) CreateAccount(ctx context.Context, a ledger.Account) (ledger.Account, error) {
	meta := a.Metadata
	if len(meta) == 0 {
		meta = json.RawMessage("{}")
	}
	row := s.pool.QueryRow(ctx, `
		WITH a AS (
			INSERT INTO tally.accounts (id, owner, asset, scale, balance_floor, balance_slots, metadata)
			SELECT $1, $2, code, scale, $4, $6, $5 FROM tally.assets WHERE code = $3
			RETURNING *
		), b AS (
			INSERT INTO tally.balances (account_id, floor, slot)
			SELECT a.id, a.balance_floor, s FROM a,
			  generate_series(CASE WHEN a.balance_slots = 1 THEN 0 ELSE 1 END,
			                  CASE WHEN a.balance_slots = 1 THEN 0 ELSE a.balance_slots END) s
		)
		SELECT `+accountColumns+` FROM a`, [16]byte(a.ID), a.Owner, a.Asset, a.BalanceFloor, []byte(meta), max(a.BalanceSlots, 1))
	created, err := scanAccount(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return created, ledger.Errorf(ledger.CodeAssetNotFound, "asset %s is not registered", a.Asset)
	}
	if err != nil {
		return created, wrap("create account", err)
	}
	return created, nil
}

// Account reads one account.
func (s *Store) Account(ctx context.Context, id ledger.AccountID) (ledger.Account, error) {
	a, err := scanAccount(s.pool.QueryRow(ctx, "SELECT "+accountColumns+" FROM tally.accounts a WHERE a.id = $1", [16]byte(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
	}
	if err != nil {
		return a, wrap("read account", err)
	}
	return a, nil
}

// AccountsByOwner lists an owner's accounts in id order, starting after the given id
// (the zero id starts at the beginning).
func (s *Store) AccountsByOwner(ctx context.Context, owner string, after ledger.AccountID, limit int) ([]ledger.Account, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+accountColumns+` FROM tally.accounts a
		WHERE a.owner = $1 AND a.id > $2 ORDER BY a.id LIMIT $3`, owner, [16]byte(after), limit)
	if err != nil {
		return nil, wrap("list accounts", err)
	}
	accounts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledger.Account, error) { return scanAccount(r) })
	if err != nil {
		return nil, wrap("list accounts", err)
	}
	return accounts, nil
}

// SetStatus moves an account to the given status (see tally.set_account_status).
func (s *Store) SetStatus(ctx context.Context, id ledger.AccountID, status ledger.Status) (ledger.Account, error) {
	var code string
	if err := s.pool.QueryRow(ctx, "SELECT tally.set_account_status($1, $2)", [16]byte(id), string(status)).Scan(&code); err != nil {
		return ledger.Account{}, wrap("set account status", err)
	}
	switch ledger.Code(code) {
	case "":
		return s.Account(ctx, id)
	case ledger.CodeAccountNotFound:
		return ledger.Account{}, ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
	case ledger.CodeAccountClosed:
		return ledger.Account{}, ledger.Errorf(ledger.CodeAccountClosed, "account %s is closed; a closed account never changes status", id)
	case ledger.CodeAccountNotEmpty:
		return ledger.Account{}, ledger.Errorf(ledger.CodeAccountNotEmpty, "account %s must have a zero balance to close", id)
	case ledger.CodeExternalAccountReadOnly:
		return ledger.Account{}, ledger.Errorf(ledger.CodeExternalAccountReadOnly, "account %s is a system account (external or holding)", id)
	case ledger.CodeAccountHasPending:
		return ledger.Account{}, ledger.Errorf(ledger.CodeAccountHasPending, "account %s has pending transfers: post or void them before closing it", id)
	default:
		return ledger.Account{}, fmt.Errorf("store: set account status: unexpected code %q", code)
	}
}

// Balance reads an account's balance from this database (the primary).
func (s *Store) Balance(ctx context.Context, id ledger.AccountID) (ledger.Balance, error) {
	bs, missing, err := s.Balances(ctx, []ledger.AccountID{id})
	if err != nil {
		return ledger.Balance{AccountID: id}, err
	}
	return bs[0], missing[0]
}

// Balances reads many accounts' balances with one query, so all from one snapshot;
// missing[i] is an account-not-found error if ids[i] is no account, else nil. An id may
// appear more than once.
func (s *Store) Balances(ctx context.Context, ids []ledger.AccountID) (balances []ledger.Balance, missing []error, err error) {
	keys := make([][16]byte, len(ids))
	balances = make([]ledger.Balance, len(ids))
	for i, id := range ids {
		keys[i] = [16]byte(id)
		balances[i].AccountID = id
	}
	found := make([]bool, len(ids))
	rows, err := s.pool.Query(ctx, `
		SELECT u.i, a.asset, a.scale, b.posted, o.amount, i.amount, b.version
		FROM unnest($1::uuid[]) WITH ORDINALITY u(id, i)
		JOIN tally.accounts a ON a.id = u.id
		CROSS JOIN LATERAL (SELECT sum(b.posted)::bigint AS posted, sum(b.version)::bigint AS version
		                    FROM tally.balances b WHERE b.account_id = u.id) b
		CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount), 0)::bigint AS amount FROM tally.pending_transfers p
		                    WHERE p.from_account = u.id AND p.state = 'pending') o
		CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount), 0)::bigint AS amount FROM tally.pending_transfers p
		                    WHERE p.to_account = u.id AND p.state = 'pending') i`, keys)
	if err != nil {
		s.reconnectAfter(err)
		return nil, nil, wrap("read balances", err)
	}
	var i int64
	var b ledger.Balance
	_, err = pgx.ForEachRow(rows, []any{&i, &b.Asset, &b.Scale, &b.Available, &b.Reserved, &b.Incoming, &b.Version}, func() error {
		if i < 1 || int(i) > len(ids) {
			return fmt.Errorf("store: read balances: row for id %d of %d", i, len(ids))
		}
		b.AccountID = ids[i-1]
		balances[i-1], found[i-1] = b, true
		return nil
	})
	if err != nil {
		return nil, nil, wrap("read balances", err)
	}
	missing = make([]error, len(ids))
	for i, id := range ids {
		if !found[i] {
			missing[i] = ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
		}
	}
	return balances, missing, nil
}

// Request is one idempotent transaction request as the store records it.
type Request struct {
	Caller      string
	Key         string
	Hash        [32]byte // SHA-256 of the canonical request
	Transaction ledger.Transaction
	Body        []byte // the success response, rendered in advance
}

// Validate checks everything a request carries into a batch, so that PostgreSQL cannot
// refuse a batch because of it: strings PostgreSQL's text stores (valid UTF-8, no NUL),
// the bounds post_batch asserts, metadata in canonical form, and times it can represent.
// The batcher calls it before a request joins a batch.
func (r Request) Validate() error {
	tx := r.Transaction
	if err := validateEnvelope(r.Caller, r.Key, tx.ID, tx.CreatedAt, tx.Metadata); err != nil {
		return err
	}
	switch {
	case !storableText(string(r.Body)):
		return fmt.Errorf("store: the rendered response is not UTF-8 text without NUL")
	case len(tx.Postings) == 0 || len(tx.Postings) > ledger.MaxPostings:
		return ledger.Errorf(ledger.CodeInvalidRequest, "a transaction needs 1 to %d postings", ledger.MaxPostings)
	}
	for i, p := range tx.Postings {
		if p.Amount <= 0 || p.Asset == "" || !storableText(p.Asset) {
			return ledger.Errorf(ledger.CodeInvalidRequest, "posting %d needs a positive amount and an asset", i)
		}
	}
	return nil
}

// validateEnvelope checks what every idempotent write carries besides its postings.
func validateEnvelope(caller, key string, id ledger.TransactionID, created time.Time, meta []byte) error {
	if err := validateKey(caller, key); err != nil {
		return err
	}
	switch {
	case id == ledger.TransactionID{}:
		return fmt.Errorf("store: the transaction has no id")
	case created.Year() < 1 || created.Year() > 9999:
		return fmt.Errorf("store: created_at %s is outside the years 1 to 9999", created)
	case len(meta) > 0 && !metadata.IsCanonical(meta):
		return ledger.Errorf(ledger.CodeInvalidRequest, "metadata must be a JSON object in canonical form (see ledger/metadata)")
	}
	return nil
}

// validateKey checks an idempotency key and its caller.
func validateKey(caller, key string) error {
	switch {
	case !storableText(caller) || caller == "" || len(caller) > ledger.MaxCallerLength:
		return ledger.Errorf(ledger.CodeInvalidRequest, "the caller must be 1 to %d characters of UTF-8 without NUL", ledger.MaxCallerLength)
	case !storableText(key) || key == "" || len(key) > ledger.MaxIdempotencyKey:
		return ledger.Errorf(ledger.CodeInvalidRequest, "the idempotency key must be 1 to %d characters of UTF-8 without NUL", ledger.MaxIdempotencyKey)
	}
	return nil
}

// storableText reports whether PostgreSQL's text type (UTF-8 database) accepts s.
func storableText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// RequestFault reports whether err is PostgreSQL refusing a statement for what it was
// given (a data exception, a violated constraint or check, a program limit) rather than
// for the state of the connection or the server: the kind of failure one request of a
// batch can cause, which posting the batch without it avoids.
func RequestFault(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23", "54", "P0":
		return true
	}
	return false
}

// PostTransaction applies one request: a batch of one. See PostBatch.
func (s *Store) PostTransaction(ctx context.Context, req Request) (ledger.Outcome, error) {
	if err := req.Validate(); err != nil {
		return ledger.Outcome{}, err
	}
	outs, err := s.PostBatch(ctx, []Request{req})
	if err != nil {
		return ledger.Outcome{}, err
	}
	return outs[0], nil
}

// PostBatch applies the requests in one database transaction and one round trip (see
// tally.post_batch), and returns each request's own outcome, in order. Requests must have
// distinct (caller, key) and pass Validate.
//
// An error from PostgreSQL (a *pgconn.PgError) means the transaction rolled back: nothing
// of the batch was applied. Any other error may have come after PostgreSQL committed (the
// connection broke while the answer was on its way), so the batch may or may not have
// been applied: only a replay of each request with its idempotency key, within the
// retention window, tells which. A replay never applies a request twice.
func (s *Store) PostBatch(ctx context.Context, reqs []Request) ([]ledger.Outcome, error) {
	args := BatchArgs(reqs)
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		var outs []ledger.Outcome
		outs, err = s.postBatchOnce(ctx, len(reqs), args...)
		if err == nil {
			for i := range outs {
				if outs[i].Status == http.StatusCreated && !outs[i].Replayed {
					outs[i].Body = reqs[i].Body
				}
			}
			return outs, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	s.reconnectAfter(err)
	return nil, wrapWrite("post batch", err)
}

// reconnectAfter drops every pooled connection when err says the server may be gone (a
// timeout, a broken connection): the other connections lead to the same server, and
// after a failover the Service leads elsewhere, so the next statements connect again
// rather than each wait out a timeout on a connection to a hung primary in turn.
func (s *Store) reconnectAfter(err error) {
	if Unavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		s.pool.Reset()
	}
}

// BatchArgs are tally.post_batch's eleven arguments for the requests, in order; tests
// that call the function directly use them too. The responses stay here: the database
// keeps a 201's transaction id, not its body (see PostBatch).
func BatchArgs(reqs []Request) []any {
	n := len(reqs)
	callers, keys, hashes := make([]string, n), make([]string, n), make([][]byte, n)
	ids, created, metas := make([][16]byte, n), make([]time.Time, n), make([][]byte, n)
	var reqIdx []int32
	var from, to [][16]byte
	var amounts []int64
	var assets []string
	for i, r := range reqs {
		tx := r.Transaction
		callers[i], keys[i], hashes[i] = r.Caller, r.Key, r.Hash[:]
		ids[i], created[i] = [16]byte(tx.ID), tx.CreatedAt
		metas[i] = tx.Metadata
		if len(metas[i]) == 0 {
			metas[i] = []byte("{}")
		}
		for _, p := range tx.Postings {
			reqIdx = append(reqIdx, int32(i+1))
			from, to = append(from, [16]byte(p.From)), append(to, [16]byte(p.To))
			amounts, assets = append(amounts, p.Amount), append(assets, p.Asset)
		}
	}
	return []any{callers, keys, hashes, ids, created, metas, reqIdx, from, to, amounts, assets}
}

// errNotDurable is a commit whose wait for the synchronous standbys was cancelled.
var errNotDurable = &ledger.Error{Code: ledger.CodeUnavailable, Detail: "the request was committed on the shard's primary " +
	"but not confirmed by its synchronous standbys, so it is not acknowledged: retry with the same Idempotency-Key, " +
	"whose replay answers once the standbys hold it"}

func (s *Store) postBatchOnce(ctx context.Context, n int, args ...any) (outs []ledger.Outcome, err error) {
	err = s.durably(ctx, func(conn *pgxpool.Conn) error {
		outs, err = postBatchOn(ctx, conn, n, args...)
		return err
	})
	return outs, err
}

// durably runs one write statement on a pooled connection, and fails it with
// errNotDurable if its commit's wait for the synchronous standbys was cancelled.
func (s *Store) durably(ctx context.Context, write func(*pgxpool.Conn) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	pgConn := conn.Conn().PgConn()
	delete(pgConn.CustomData(), syncRepCancelledKey)
	err = write(conn)
	if pgConn.CustomData()[syncRepCancelledKey] == true {
		// Whatever the statement answered, its commit may be on the primary alone.
		delete(pgConn.CustomData(), syncRepCancelledKey)
		return errNotDurable
	}
	return err
}

func postBatchOn(ctx context.Context, conn *pgxpool.Conn, n int, args ...any) ([]ledger.Outcome, error) {
	rows, err := conn.Query(ctx, `SELECT req, status, body, replayed, transaction_id FROM tally.post_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	outs := make([]ledger.Outcome, n)
	got := 0
	for rows.Next() {
		var idx int
		var body *string
		var txID *[16]byte
		var o ledger.Outcome
		if err := rows.Scan(&idx, &o.Status, &body, &o.Replayed, &txID); err != nil {
			return nil, err
		}
		if idx < 1 || idx > n {
			return nil, fmt.Errorf("post_batch answered for request %d of %d", idx, n)
		}
		switch {
		case body != nil:
			o.Body = []byte(*body)
		case o.Status != http.StatusCreated || txID == nil:
			return nil, fmt.Errorf("post_batch answered request %d with status %d and neither a body nor a transaction", idx, o.Status)
		case o.Replayed:
			o.ReplayOf = ledger.TransactionID(*txID)
		}
		outs[idx-1] = o
		got++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("post_batch answered %d of %d requests", got, n)
	}
	return outs, nil
}

// Transaction reads one transaction with its postings.
func (s *Store) Transaction(ctx context.Context, id ledger.TransactionID) (ledger.Transaction, error) {
	tx := ledger.Transaction{ID: id}
	var meta []byte
	var reverses *[16]byte
	err := s.pool.QueryRow(ctx, `
		SELECT t.metadata, t.created_at, r.transaction_id
		FROM tally.transactions t LEFT JOIN tally.reversals r ON r.reversal_id = t.id
		WHERE t.id = $1`, [16]byte(id)).Scan(&meta, &tx.CreatedAt, &reverses)
	if errors.Is(err, pgx.ErrNoRows) {
		if horizon, archived, herr := s.Horizon(ctx); herr == nil && archived && id.Time().Before(horizon) {
			return tx, ledger.Errorf(ledger.CodeHistoryArchived, "transaction %s was made before %s, the retention horizon: it is archived", id, horizon.UTC().Format(time.RFC3339))
		}
		return tx, ledger.Errorf(ledger.CodeTransactionNotFound, "transaction %s does not exist", id)
	}
	if err != nil {
		return tx, wrap("read transaction", err)
	}
	tx.Metadata = meta
	if reverses != nil {
		tx.Reverses = ledger.TransactionID(*reverses)
	}
	// Each posting is a credit leg (positive) and debit legs (negative) from one account:
	// one, or one per slot a debit from a slotted account drew from.
	rows, err := s.pool.Query(ctx, `
		SELECT (array_agg(e.account_id) FILTER (WHERE e.amount < 0))[1], (array_agg(e.account_id) FILTER (WHERE e.amount > 0))[1],
		       sum(e.amount) FILTER (WHERE e.amount > 0)::bigint, min(e.asset)
		FROM tally.entries e WHERE e.transaction_id = $1
		GROUP BY e.posting ORDER BY e.posting`, [16]byte(id))
	if err != nil {
		return tx, wrap("read postings", err)
	}
	tx.Postings, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledger.Posting, error) {
		var p ledger.Posting
		var from, to [16]byte
		err := r.Scan(&from, &to, &p.Amount, &p.Asset)
		p.From, p.To = ledger.AccountID(from), ledger.AccountID(to)
		return p, err
	})
	if err != nil {
		return tx, wrap("read postings", err)
	}
	return tx, nil
}

// Entries lists an account's journal entries newest first, starting below the given
// entry id (0 starts at the newest). tally.entries_page reads the recent partitions when
// they hold the page, and the whole journal only when they do not (migration 015).
func (s *Store) Entries(ctx context.Context, account ledger.AccountID, before int64, limit int) ([]ledger.Entry, error) {
	if _, err := s.Account(ctx, account); err != nil {
		return nil, err
	}
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.pool.Query(ctx, `
		SELECT e.id, e.transaction_id, e.posting, e.account_id, e.asset, e.amount, e.balance_after, coalesce(e.slot, 0),
		       (SELECT t.created_at FROM tally.transactions t WHERE t.id = e.transaction_id) -- by key: a join would hash them all
		FROM tally.entries_page($1, $2, $3) e
		ORDER BY e.id DESC`, [16]byte(account), before, limit)
	if err != nil {
		return nil, wrap("list entries", err)
	}
	entries, err := pgx.CollectRows(rows, scanEntry)
	if err != nil {
		return nil, wrap("list entries", err)
	}
	return entries, nil
}

// EntryMarks is where a follower of the account's entries starts to see only those
// posted from now on: for each of its balance slots (0 for an account of one slot), the
// id of its latest entry (0: none yet).
func (s *Store) EntryMarks(ctx context.Context, account ledger.AccountID) (map[int]int64, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT b.slot, coalesce((SELECT max(e.id) FROM tally.entries e
		                         WHERE e.account_id = b.account_id AND coalesce(e.slot, 0) = b.slot), 0)
		FROM tally.balances b WHERE b.account_id = $1`, [16]byte(account))
	if err != nil {
		return nil, wrap("mark entries", err)
	}
	marks := map[int]int64{}
	var slot int
	var id int64
	if _, err := pgx.ForEachRow(rows, []any{&slot, &id}, func() error { marks[slot] = id; return nil }); err != nil {
		return nil, wrap("mark entries", err)
	}
	if len(marks) == 0 {
		return nil, ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", account)
	}
	return marks, nil
}

// EntriesAfter lists the account's entries after marks, oldest first: for each balance
// slot in marks (0 for an account of one slot), those with an id above its mark, at most
// limit of each. Within one slot ids follow the order the entries committed, because
// every writer holds the slot's balance row from before it numbers its entries until it
// commits; across slots they do not (two batches on two slots of a hot account commit
// in either order), which is why a follower keeps a mark per slot.
func (s *Store) EntriesAfter(ctx context.Context, account ledger.AccountID, marks map[int]int64, limit int) ([]ledger.Entry, error) {
	slots, after := make([]int16, 0, len(marks)), make([]int64, 0, len(marks))
	for slot, id := range marks {
		slots, after = append(slots, int16(slot)), append(after, id)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT e.id, e.transaction_id, e.posting, e.account_id, e.asset, e.amount, e.balance_after, coalesce(e.slot, 0), t.created_at
		FROM unnest($2::smallint[], $3::bigint[]) m(slot, after)
		CROSS JOIN LATERAL (
		  SELECT * FROM tally.entries x
		  WHERE x.account_id = $1 AND coalesce(x.slot, 0) = m.slot AND x.id > m.after
		  ORDER BY x.account_id, x.id LIMIT $4) e
		JOIN tally.transactions t ON t.id = e.transaction_id
		ORDER BY e.id`, [16]byte(account), slots, after, limit)
	if err != nil {
		return nil, wrap("follow entries", err)
	}
	entries, err := pgx.CollectRows(rows, scanEntry)
	if err != nil {
		return nil, wrap("follow entries", err)
	}
	return entries, nil
}

func scanEntry(r pgx.CollectableRow) (ledger.Entry, error) {
	var e ledger.Entry
	var tx, acc [16]byte
	err := r.Scan(&e.ID, &tx, &e.Posting, &acc, &e.Asset, &e.Amount, &e.BalanceAfter, &e.Slot, &e.CreatedAt)
	e.TransactionID, e.AccountID = ledger.TransactionID(tx), ledger.AccountID(acc)
	return e, err
}

// idempotencyCleanupBatch bounds how many records one cleanup statement deletes, so it
// never holds many locks or runs long.
const idempotencyCleanupBatch = 1000

// DeleteExpiredIdempotencyKeys removes records older than the retention window and
// returns how many it removed.
func (s *Store) DeleteExpiredIdempotencyKeys(ctx context.Context, retention time.Duration) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `
			DELETE FROM tally.idempotency_keys WHERE (caller, key) IN (
				SELECT caller, key FROM tally.idempotency_keys
				WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)`,
			retention.Seconds(), idempotencyCleanupBatch)
		if err != nil {
			return total, wrap("delete expired idempotency keys", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < idempotencyCleanupBatch {
			return total, nil
		}
	}
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return pgconn.SafeToRetry(err)
}

// wrap adds the operation's name, and turns a database that cannot serve now (unreachable,
// restarting, shutting down, read-only after a failover, out of connections) into
// CodeUnavailable, so the API answers 503 with Retry-After rather than 500.
func wrap(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	if Unavailable(err) {
		return fmt.Errorf("store: %s: %w: %w", op, &ledger.Error{Code: ledger.CodeUnavailable, Detail: "the shard's database is unavailable (restarting or failing over); retry shortly"}, err)
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// wrapWrite is wrap for a write, which must also say whether it may have been applied:
// PostgreSQL's own error means it rolled back, and so does an error before anything was
// sent; otherwise the connection broke while the commit may have happened.
func wrapWrite(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || pgconn.SafeToRetry(err) || !Unavailable(err) {
		return wrap(op, err)
	}
	return fmt.Errorf("store: %s: %w: %w", op, &ledger.Error{Code: ledger.CodeUnavailable, Detail: "the connection to the shard's database broke " +
		"while the request was committing, so it may or may not have been applied: retry with the same Idempotency-Key " +
		"(within the idempotency retention) to learn its outcome; a retry never applies it twice"}, err)
}

// Unavailable reports whether err says the database cannot serve now (unreachable,
// restarting, shutting down, read-only after a failover, out of connections), rather
// than that it refused what it was asked.
func Unavailable(err error) bool {
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) { // whatever the server said while refusing the connection
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "57P"), // admin or crash shutdown, starting up
			pgErr.Code == "25006",                // read-only transaction: a standby now
			pgErr.Code == "53300":                // too many connections
			return true
		}
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || pgconn.Timeout(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgx.ErrTxClosed) ||
		strings.Contains(err.Error(), "conn closed")
}
