package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tallyhq/tally/internal/cli"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/internal/redistest"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/server"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// serve runs the service with cfg on loopback ports until stop, which returns Run's error.
func serve(t *testing.T, cfg server.Config) (addr, ops string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	ops = "127.0.0.1:" + freePort(t)
	cfg.Listen, cfg.OpsListen, cfg.Ready = "127.0.0.1:0", ops, ready
	if cfg.GRPCListen == "" {
		cfg.GRPCListen = "127.0.0.1:0"
	}
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- server.Run(ctx, cfg) }()
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("server stopped: %v", err)
	case <-time.After(5 * time.Minute): // only a hung start; a slow one is fine
		cancel()
		t.Fatal("server not ready")
	}
	return addr, ops, func() error {
		cancel()
		return <-done
	}
}

// TestServeSizesPoolsForBatching: each shard's pool holds a connection for every writer
// and reader and spares for the other queries, even when a smaller pool was asked for.
func TestServeSizesPoolsForBatching(t *testing.T) {
	db := pgtest.NewDB(t)
	for _, c := range []struct {
		asked int32
		batch batcher.Config
		want  string
	}{
		{2, batcher.Config{Writers: 5, Readers: 3}, "16"}, // 5 + 3, a writer per kind of step (reserve, resolve, inbound, claim), 4 spares
		{30, batcher.Config{}, "30"},
	} {
		_, ops, stop := serve(t, server.Config{ShardDSNs: []string{db.AppDSN()}, MaxConnsPerShard: c.asked, Batching: c.batch})
		_, metrics := get(t, "http://"+ops+"/metrics")
		if err := stop(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if want := `tally_db_pool_max_conns{shard="0"} ` + c.want + "\n"; !strings.Contains(metrics, want) {
			t.Errorf("asked for %d connections with %+v: metrics lack %q", c.asked, c.batch, want)
		}
	}
}

// TestDevScriptOnThreeShards runs the script `tally dev --shards 3` prints: its payment
// to carol, placed on another shard than alice, crosses shards.
func TestDevScriptOnThreeShards(t *testing.T) {
	var dsns []string
	for i := range 3 {
		dsns = append(dsns, pgtest.NewShardDB(t, i).AppDSN())
	}
	addr, _, stop := serve(t, server.Config{ShardDSNs: dsns})
	defer stop() //nolint:errcheck
	out, err := exec.Command("bash", "-euo", "pipefail", "-c", cli.DevCurlScript(addr, 3)).CombinedOutput()
	if err != nil {
		t.Fatalf("dev script: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{`"balance":"12.34"`, "a transfer between shards", `"state":"posted"`, `"balance":"7.00"`} {
		if !strings.Contains(text, want) {
			t.Errorf("dev script output lacks %s:\n%s", want, text)
		}
	}
}

// TestServeRunsTheDevScript serves the ledger as `tally dev` does and runs the curl
// commands `tally dev` prints, exactly as printed.
func TestServeRunsTheDevScript(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (hack/ensure-deps.sh installs it)")
	}
	db := pgtest.NewDB(t)
	addr, ops, stop := serve(t, server.Config{ShardDSNs: []string{db.AppDSN()}})

	out, err := exec.Command("bash", "-euo", "pipefail", "-c", cli.DevCurlScript(addr, 1)).CombinedOutput()
	if err != nil {
		t.Fatalf("dev script: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{`"code":"USD"`, `"amount":"100.00"`, `"amount":"12.34"`, `"balance":"12.34"`, `"balance_after":"87.66"`} {
		if !strings.Contains(text, want) {
			t.Errorf("dev script output lacks %s:\n%s", want, text)
		}
	}
	// Pasting it a second time works too (new accounts, no key clash).
	if out, err := exec.Command("bash", "-euo", "pipefail", "-c", cli.DevCurlScript(addr, 1)).CombinedOutput(); err != nil || strings.Contains(string(out), "problems/") {
		t.Errorf("second run: %v\n%s", err, out)
	}

	if code, body := get(t, "http://"+ops+"/healthz"); code != 200 {
		t.Errorf("healthz: %d %s", code, body)
	}
	if code, body := get(t, "http://"+ops+"/readyz"); code != 200 {
		t.Errorf("readyz: %d %s", code, body)
	}
	_, metrics := get(t, "http://"+ops+"/metrics")
	for _, want := range []string{
		`tally_transactions_total{code="",kind="transfer",outcome="applied"} 4`,
		`tally_http_request_duration_seconds_bucket{route="POST /v1/transfers",status="201"`,
		`tally_db_pool_max_conns{shard="0"}`,
		`tally_batch_requests_total{shard="0"} 4`,
		`tally_batch_batches_total{shard="0"}`,
		`tally_batch_queued_requests{shard="0"} 0`,
		`tally_batch_queued_reads{shard="0"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if err := stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	violations, err := store.New(db.AppPool(t, 2)).Verify(context.Background())
	if err != nil || len(violations) > 0 {
		t.Errorf("verify: %v %v", err, violations)
	}
}

// TestServeRefusesWrongDatabase checks the start-up guards: an unmigrated database and a
// database listed under the wrong shard index are refused with a clear error.
func TestServeRefusesWrongDatabase(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	empty := pgtest.NewEmptyDB(t)
	err := server.Run(context.Background(), server.Config{Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", ShardDSNs: []string{empty.SuperDSN()}, Log: quiet})
	if err == nil || !strings.Contains(err.Error(), "tally migrate") {
		t.Errorf("unmigrated: %v", err)
	}
	shard1 := pgtest.NewShardDB(t, 1)
	err = server.Run(context.Background(), server.Config{Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", ShardDSNs: []string{shard1.AppDSN()}, Log: quiet})
	if err == nil || !strings.Contains(err.Error(), "is shard 1 but is listed as shard 0") {
		t.Errorf("wrong shard: %v", err)
	}
}

// TestMigrateAndVerifyCommands runs the CLI the way an operator's Job would.
func TestMigrateAndVerifyCommands(t *testing.T) {
	pgtest.NewDB(t) // the service's login role exists once a template was made
	db := pgtest.NewEmptyDB(t)
	var out strings.Builder
	ctx := context.Background()
	if code := cli.Run(ctx, []string{"migrate", "--database-url", db.SuperDSN(), "--shard", "0", "--grant-login", pgtest.AppRole}, &out, &out); code != 0 {
		t.Fatalf("migrate: %d %s", code, out.String())
	}
	if !strings.Contains(out.String(), "schema version") {
		t.Errorf("migrate output: %s", out.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"verify", "--database-url", db.AppDSN()}, &out, &out); code != 0 {
		t.Fatalf("verify on a clean ledger: %d %s", code, out.String())
	}
	// Corrupt a balance behind the triggers' back; verify must fail and say which.
	conn, err := pgx.Connect(ctx, db.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, stmt := range []string{
		"SET session_replication_role = replica",
		"INSERT INTO tally.assets (code, scale) VALUES ('USD', 2)",
		"INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('01a20ccb-8be0-72d1-ad00-00342cb369ae', 'x', 'USD', 2)",
		"INSERT INTO tally.balances (account_id, floor, posted) VALUES ('01a20ccb-8be0-72d1-ad00-00342cb369ae', 0, 500)",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"verify", "--database-url", db.AppDSN()}, &out, &out); code != 1 {
		t.Fatalf("verify on a corrupt ledger exited %d: %s", code, out.String())
	}
	if !strings.Contains(out.String(), "01a20ccb-8be0-72d1-ad00-00342cb369ae slot 0: balance 500, entries sum to 0") {
		t.Errorf("verify output: %s", out.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"verify", "--incremental", "--database-url", db.AppDSN()}, &out, &out); code != 1 ||
		!strings.Contains(out.String(), "balance 500, entries sum to 0") {
		t.Errorf("incremental verify on a corrupt ledger exited %d: %s", code, out.String())
	}
	if code := cli.Run(ctx, []string{"migrate", "--database-url", db.SuperDSN(), "--shard", "1"}, &out, &out); code == 0 {
		t.Error("migrate let a database change shard")
	}
	if code := cli.Run(ctx, []string{"no-such-command"}, &out, &out); code != 2 {
		t.Errorf("unknown command exited %d", code)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	port, err := postgres.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(port)
}

// One shard down (here: its database refuses connections, as during a failover) leaves
// the service ready and the other shard serving; requests for the lost shard get 503
// unavailable with Retry-After, and serve again once it is back.
func TestOneShardDownLeavesOthersServing(t *testing.T) {
	shard0, shard1 := pgtest.NewShardDB(t, 0), pgtest.NewShardDB(t, 1)
	addr, ops, stop := serve(t, server.Config{ShardDSNs: []string{shard0.AppDSN(), shard1.AppDSN()}})
	defer stop() //nolint:errcheck
	api := "http://" + addr
	if code, body := post(t, api+"/v1/assets", `{"code":"USD","scale":2}`, ""); code != 201 {
		t.Fatalf("asset: %d %s", code, body)
	}
	accounts := map[int]string{}
	for shard, owner := range ownersByShard(t, 2) {
		code, body := post(t, api+"/v1/accounts", `{"owner":"`+owner+`","asset":"USD"}`, "")
		if code != 201 {
			t.Fatalf("account: %d %s", code, body)
		}
		accounts[shard] = jsonField(body, "id")
	}
	deposit := func(shard int, key string) (int, string, http.Header) {
		return postHeaders(t, api+"/v1/transfers", `{"from_account":"external","to_account":"`+accounts[shard]+`","amount":"1","asset":"USD"}`, key)
	}
	setConnections := func(allow bool) { allowConnections(t, shard1, allow) }
	setConnections(false)
	if code, body := get(t, "http://"+ops+"/readyz"); code != 200 || !strings.Contains(body, "shard 0: ok") || strings.Contains(body, "shard 1: ok") {
		t.Errorf("readyz with shard 1 down: %d %s", code, body)
	}
	if code, body, _ := deposit(0, "a"); code != 201 {
		t.Errorf("shard 0 with shard 1 down: %d %s", code, body)
	}
	for i := range 3 { // the first finds a terminated connection, the next a refusal
		code, body, h := deposit(1, "b"+strconv.Itoa(i))
		if code != 503 || !strings.Contains(body, `"code":"unavailable"`) || h.Get("Retry-After") == "" {
			t.Errorf("shard 1 down, try %d: %d %s Retry-After %q", i, code, body, h.Get("Retry-After"))
		}
	}
	if code, body := get(t, api+"/v1/accounts/"+accounts[1]+"/balance"); code != 503 {
		t.Errorf("balance on shard 1 down: %d %s", code, body)
	}
	setConnections(true)
	// Back: it serves again, at once or after a pooled connection that died with the
	// shard is found dead (a 503, retried with the same key as a client would).
	postUntilServed(t, "a deposit on shard 1 once back", api+"/v1/transfers",
		`{"from_account":"external","to_account":"`+accounts[1]+`","amount":"1","asset":"USD"}`, "c")
}

func post(t *testing.T, url, body, key string) (int, string) {
	t.Helper()
	code, b, _ := postHeaders(t, url, body, key)
	return code, b
}

func postHeaders(t *testing.T, url, body, key string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func jsonField(body, name string) string {
	var m map[string]any
	_ = json.Unmarshal([]byte(body), &m)
	s, _ := m[name].(string)
	return s
}

// allowConnections lets a shard's database take connections or not (then ending those it
// has), as a shard failing over would.
func allowConnections(t *testing.T, db *pgtest.DB, allow bool) {
	t.Helper()
	admin, err := pgx.Connect(context.Background(), pgtest.Server(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(context.Background(), "ALTER DATABASE "+db.Name+" ALLOW_CONNECTIONS "+strconv.FormatBool(allow)); err != nil {
		t.Fatal(err)
	}
	if !allow {
		if _, err := admin.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db.Name); err != nil {
			t.Fatal(err)
		}
	}
}

// A shard that does not answer when the service starts (a ledger pod restarting during
// that shard's failover) does not keep the service from serving the others: it starts,
// the other shard serves, the lost one answers 503, and once it answers it serves too,
// with every asset registered on it. Before, the service refused to start at all.
func TestShardDownAtStartIsServedOnceBack(t *testing.T) {
	shard0, shard1 := pgtest.NewShardDB(t, 0), pgtest.NewShardDB(t, 1)
	allowConnections(t, shard1, false)
	addr, _, stop := serve(t, server.Config{ShardDSNs: []string{shard0.AppDSN(), shard1.AppDSN()}})
	defer stop() //nolint:errcheck
	api := "http://" + addr
	if code, body := post(t, api+"/v1/assets", `{"code":"USD","scale":2}`, ""); code != 503 {
		t.Errorf("registering an asset with shard 1 down: %d %s", code, body)
	}
	owners := ownersByShard(t, 2)
	if code, body := post(t, api+"/v1/accounts", `{"owner":"`+owners[0]+`","asset":"USD"}`, ""); code != 201 {
		t.Fatalf("account on shard 0 with shard 1 down: %d %s", code, body)
	}
	if code, body := get(t, api+"/v1/assets/USD"); code != 503 {
		t.Errorf("an asset shown while a shard's external account is unknown: %d %s", code, body)
	}
	allowConnections(t, shard1, true)
	id := jsonField(postUntilServed(t, "an account on shard 1 once back", api+"/v1/accounts", `{"owner":"`+owners[1]+`","asset":"USD"}`, ""), "id")
	postUntilServed(t, "a transfer on shard 1 once back", api+"/v1/transfers",
		`{"from_account":"external","to_account":"`+id+`","amount":"1","asset":"USD"}`, "after")
}

// ownersByShard finds an owner name that places on each of n shards.
func ownersByShard(t *testing.T, n int) map[int]string {
	t.Helper()
	placement, err := shardset.New(make([]*store.Store, n), nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[int]string{}
	for i := 0; len(owners) < n; i++ {
		owner := "owner" + strconv.Itoa(i)
		if _, ok := owners[placement.Placement(owner)]; !ok {
			owners[placement.Placement(owner)] = owner
		}
	}
	return owners
}

// postUntilServed posts until the answer is 201, retrying 503s (with the same key, as
// a client would) for up to a minute, and returns the body; any other answer fails.
func postUntilServed(t *testing.T, what, url, body, key string) string {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		code, got, _ := postHeaders(t, url, body, key)
		if code == 201 {
			return got
		}
		if code != 503 || time.Now().After(deadline) {
			t.Fatalf("%s: %d %s", what, code, got)
		}
	}
}

// TestServesHTTPS: with a certificate the API is HTTPS only, the gRPC API TLS only, and
// a renewed certificate is served to new connections without a restart.
func TestServesHTTPS(t *testing.T) {
	db := pgtest.NewDB(t)
	files, err := pki.WriteFiles(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := "127.0.0.1:" + freePort(t)
	addr, _, stop := serve(t, server.Config{ShardDSNs: []string{db.AppDSN()}, TLSCertFile: files.CertFile, TLSKeyFile: files.KeyFile, GRPCListen: grpcAddr})
	defer stop() //nolint:errcheck
	for name, creds := range map[string]credentials.TransportCredentials{"TLS": credentials.NewTLS(pki.ClientConfig(files.CAFile)), "plaintext": insecure.NewCredentials()} {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = ledgerv1.NewLedgerServiceClient(conn).ListAssets(ctx, &ledgerv1.ListAssetsRequest{})
		cancel()
		conn.Close()
		if (err == nil) != (name == "TLS") {
			t.Errorf("gRPC over %s: %v", name, err)
		}
	}
	var served *big.Int
	verify := pki.ClientConfig(files.CAFile)
	check := verify.VerifyConnection
	verify.VerifyConnection = func(cs tls.ConnectionState) error {
		served = cs.PeerCertificates[0].SerialNumber
		return check(cs)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: verify, DisableKeepAlives: true}}
	resp, err := client.Get("https://" + addr + "/v1/assets")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("over HTTPS: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, err := http.Get("http://" + addr + "/v1/assets"); err == nil && resp.StatusCode == http.StatusOK {
		t.Error("the API answered plain HTTP")
	}
	renewed, err := files.Renew(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = client.Get("https://" + addr + "/v1/assets")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if served.Cmp(renewed.SerialNumber) != 0 {
		t.Error("the renewed certificate is not served")
	}
}

// TestServeKeepsAnswersInRedis: given Redis, the service keeps completed writes'
// answers there and answers replays from it, which its metrics show, even while the
// database is gone; with NoIdempotencyCache it does not.
func TestServeKeepsAnswersInRedis(t *testing.T) {
	for _, off := range []bool{false, true} {
		redisSrv := redistest.Start(t)
		db := pgtest.NewDB(t)
		addr, ops, stop := serve(t, server.Config{ShardDSNs: []string{db.AppDSN()}, RedisURL: "redis://" + redisSrv.Addr(), NoIdempotencyCache: off})
		base := "http://" + addr
		if code, body := post(t, base+"/v1/assets", `{"code":"USD","scale":2}`, ""); code != 201 {
			t.Fatalf("asset: %d %s", code, body)
		}
		_, acc := post(t, base+"/v1/accounts", `{"owner":"alice","asset":"USD"}`, "")
		deposit := `{"from_account":"external","to_account":"` + jsonField(acc, "id") + `","amount":"5","asset":"USD"}`
		_, first := post(t, base+"/v1/transfers", deposit, "d1")
		hit := func() bool {
			_, metrics := get(t, "http://"+ops+"/metrics")
			return strings.Contains(metrics, `tally_idempotency_cache_lookups_total{result="hit"}`)
		}
		wait := 10 * time.Second // kept in the background: soon, on a busy machine later
		if off {
			wait = time.Second
		}
		deadline := time.Now().Add(wait)
		for !hit() && time.Now().Before(deadline) {
			if _, again := post(t, base+"/v1/transfers", deposit, "d1"); again != first {
				t.Fatalf("replay %s, first %s", again, first)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if hit() == off {
			t.Errorf("cache off %v, yet replays answered from Redis: %v", off, hit())
		}
		// With the database gone, a replay is answered from Redis alone.
		allowConnections(t, db, false)
		code, again := post(t, base+"/v1/transfers", deposit, "d1")
		if served := code == 201 && again == first; served == off {
			t.Errorf("cache off %v, database gone: replay %d %s, first %s", off, code, again, first)
		}
		allowConnections(t, db, true)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}
