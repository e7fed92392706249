package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/internal/redistest"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/server"
)

// The Redis modes (issue 18): through the API of a service that has Redis for one job,
// each compared with ModeHTTP, the same service without it, in the same round.
const (
	// ModeHTTPCache keeps completed writes' answers in Redis and answers replays there.
	ModeHTTPCache = "http-cache"
	// ModeHTTPLimits limits every caller's writes and reads through Redis, at a limit
	// nobody reaches: what the check itself costs.
	ModeHTTPLimits = "http-limits"
)

// Replays sends again, with the same key, transfers already answered: the retries of
// clients that lost an answer. From PostgreSQL in ModeHTTP, from Redis in ModeHTTPCache.
const Replays = "replays"

// replayKeys is how many distinct answered transfers Replays draws from.
const replayKeys = 2000

// unreached is a limit far beyond what the machine can serve.
var unreached = ratelimit.Limit{Rate: 1_000_000, Period: time.Second, Burst: 1_000_000}

func viaHTTP(mode string) bool {
	return mode == ModeHTTP || mode == ModeHTTPCache || mode == ModeHTTPLimits || viaEvents(mode)
}

func viaRedis(mode string) bool { return mode == ModeHTTPCache || mode == ModeHTTPLimits }

// modesFor is the modes a scenario runs in, the reference first where it applies.
func modesFor(scenario string, asked []string) []string {
	modes := slices.Clone(asked)
	drop := func(unfit func(string) bool) { modes = slices.DeleteFunc(modes, unfit) }
	switch scenario {
	case CrossShard: // Tally's transaction function alone does not cross shards
		drop(func(m string) bool { return m == ModeOneCall })
	case PendingPost: // nor make pending transfers; and wrk does not chain two requests
		drop(func(m string) bool { return m == ModeOneCall || m == ModeWrk })
	case Reads: // one-call reads as store does; the cache keeps no reads
		drop(func(m string) bool { return m == ModeOneCall || m == ModeHTTPCache })
	case Replays: // a replay is an API request, one the cache answers and a limiter does not change
		return slices.DeleteFunc(modes, func(m string) bool { return m != ModeHTTP && m != ModeHTTPCache })
	}
	if scenario != Uniform && scenario != Hot && scenario != Reads {
		drop(viaRedis) // the Redis modes are compared where the issue asks
	}
	if scenario != Uniform && scenario != Hot {
		drop(viaEvents) // and the event modes too
	}
	if scenario != Uniform && scenario != Hot && scenario != Reads {
		drop(func(m string) bool { return m == ModeGRPC }) // and gRPC
	}
	if scenario == Reads {
		return modes
	}
	return append([]string{ModeReference}, modes...)
}

// redisServer is the bench's own redis-server.
type redisServer struct {
	cmd  *exec.Cmd
	done <-chan struct{}
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// startRedisServices starts Redis and a service for each Redis mode asked for.
func (e *env) startRedisServices(ctx context.Context, modes []string, base server.Config) error {
	if !slices.ContainsFunc(modes, viaRedis) {
		return nil
	}
	dir := filepath.Join(e.dir, "redis")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	port, err := postgres.FreePort()
	if err != nil {
		return err
	}
	cmd, done, err := redistest.Launch(dir, port)
	if err != nil {
		return fmt.Errorf("bench: %w (hack/ensure-deps.sh installs redis-server)", err)
	}
	e.redis = &redisServer{cmd: cmd, done: done}
	url := "redis://127.0.0.1:" + strconv.Itoa(port) + "/0"
	for _, mode := range modes {
		cfg := base
		cfg.RedisURL = url
		switch mode {
		case ModeHTTPCache:
		case ModeHTTPLimits:
			cfg.NoIdempotencyCache = true
			cfg.RateLimits = map[ratelimit.Class]ratelimit.Limit{ratelimit.Writes: unreached, ratelimit.Reads: unreached}
		default:
			continue
		}
		if e.services[mode], err = startService(ctx, cfg); err != nil {
			return fmt.Errorf("bench: the %s service: %w", mode, err)
		}
	}
	return nil
}

// replayRequest is answered transfer i of the mode: its body and key.
func (e *env) replayRequest(mode string, i int) (body string, headers map[string]string) {
	n := len(e.accounts) - 1 // never the hot account
	from, to := e.accounts[1+i%n], e.accounts[1+(i+1)%n]
	body = `{"from_account":"` + from.String() + `","to_account":"` + to.String() + `","amount":"0.01","asset":"USD"}`
	return body, map[string]string{"Idempotency-Key": "replay-" + mode + "-" + strconv.Itoa(i)}
}

// applyReplayed answers every transfer Replays sends again, through the mode's service
// (so that one with the cache kept their answers), if not done before.
func (e *env) applyReplayed(ctx context.Context, mode string, clients int) error {
	next := make(chan int)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				body, headers := e.replayRequest(mode, i)
				if _, err := e.httpDoAt(ctx, mode, http.MethodPost, "/v1/transfers", body, headers); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range replayKeys {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	return <-errs // nil when none failed
}

// replayOp sends one answered transfer again.
func (e *env) replayOp(mode string) opFunc {
	return func(ctx context.Context, rng *rand.Rand) (bool, error) {
		body, headers := e.replayRequest(mode, rng.IntN(replayKeys))
		return e.httpDoAt(ctx, mode, http.MethodPost, "/v1/transfers", body, headers)
	}
}

// printRedisTargets sets issue 18's figures, each Redis mode over plain HTTP at the
// largest client count, beside its target.
func printRedisTargets(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printRatios(tw, "Redis (issue 18)", results, []ratioTarget{
		{"replays from Redis >= 3x from PostgreSQL", Replays, ModeHTTPCache, ModeHTTP, 3},
		{"uniform with the idempotency fast path >= 0.9x without", Uniform, ModeHTTPCache, ModeHTTP, 0.9},
		{"hot with the idempotency fast path >= 0.9x without", Hot, ModeHTTPCache, ModeHTTP, 0.9},
		{"uniform with rate limits (none reached) >= 0.9x without", Uniform, ModeHTTPLimits, ModeHTTP, 0.9},
		{"hot with rate limits (none reached) >= 0.9x without", Hot, ModeHTTPLimits, ModeHTTP, 0.9},
		{"balance reads with rate limits (none reached) >= 0.9x without", Reads, ModeHTTPLimits, ModeHTTP, 0.9},
	})
	tw.Flush()
}

// ratioTarget is a figure of one mode over another, in one scenario, with its target.
type ratioTarget struct {
	target, scenario, mode, over string
	least                        float64
}

// printRatios writes, under a header, each target whose two modes were measured (at the
// largest client count, the smaller database's) and whether it was met; it reports
// whether it wrote anything.
func printRatios(tw *tabwriter.Writer, title string, results []Result, targets []ratioTarget) bool {
	clients := 0
	for _, r := range results {
		clients = max(clients, r.Clients)
	}
	perSecond := func(scenario, mode string) float64 {
		for _, r := range results {
			if r.Scenario == scenario && r.Mode == mode && r.Clients == clients {
				return r.PerSecond // the first: the smaller database's
			}
		}
		return 0
	}
	header := false
	for _, t := range targets {
		with, without := perSecond(t.scenario, t.mode), perSecond(t.scenario, t.over)
		if with == 0 || without == 0 {
			continue
		}
		if !header {
			fmt.Fprintf(tw, "\n%s, %d clients\tmode\tmeasured\tmet\n", title, clients)
			header = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2fx (%.0f/s vs %.0f/s)\t%s\n", t.target, t.mode, with/without, with, without, yes(with/without >= t.least))
	}
	return header
}
