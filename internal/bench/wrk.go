package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/ledger"
)

// ModeWrk drives the HTTP API from wrk, a load generator written in C, in its own
// process: the Go client of ModeHTTP shares the process and, on a small machine, spends
// as much CPU as the service it measures.
const ModeWrk = "wrk"

// wrkScript makes wrk's requests: the scenario's transfers, each with its own
// idempotency key, or balance reads; its done hook prints the totals as one JSON line.
const wrkScript = `
local accounts = {%s}
local others = {%s}
local hot = accounts[1]
local scenario = %q
local run = %q
local threads = 0
local seq = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + tid)
end

local function other()
  return accounts[math.random(2, #accounts)]
end

request = function()
  if scenario == "reads" then
    return wrk.format("GET", "/v1/accounts/" .. accounts[math.random(#accounts)] .. "/balance")
  end
  local from, to
  if scenario == "cross-shard" then
    from, to = other(), others[math.random(#others)]
    if math.random(2) == 1 then from, to = to, from end
  elseif scenario == "hot-credit" then
    from, to = other(), hot
  elseif scenario == "hot" or (scenario == "mixed" and math.random(10) == 1) then
    if math.random(2) == 1 then from, to = hot, other() else from, to = other(), hot end
  else
    from = other()
    repeat to = other() until to ~= from
  end
  seq = seq + 1
  return wrk.format("POST", "/v1/transfers",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = run .. "-" .. tid .. "-" .. seq},
    '{"from_account":"' .. from .. '","to_account":"' .. to .. '","amount":"1.00","asset":"USD"}')
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%%d,"duration_us":%%d,"errors":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
`

type wrkTotals struct {
	Requests   int64 `json:"requests"`
	DurationUs int64 `json:"duration_us"`
	Errors     int64 `json:"errors"`
	P50us      int64 `json:"p50_us"`
	P90us      int64 `json:"p90_us"`
	P99us      int64 `json:"p99_us"`
	MaxUs      int64 `json:"max_us"`
}

// wrk runs one scenario from wrk with the given connections and fills r's counts.
func (e *env) wrk(ctx context.Context, scenario string, clients int, d time.Duration, r *Result) error {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return fmt.Errorf("mode wrk needs wrk on the PATH (Debian: apt-get install wrk): %w", err)
	}
	quoted := func(accounts []ledger.AccountID) string {
		ids := make([]string, len(accounts))
		for i, id := range accounts {
			ids[i] = strconv.Quote(id.String())
		}
		return strings.Join(ids, ",")
	}
	script := filepath.Join(e.dir, "bench.lua")
	if err := os.WriteFile(script, fmt.Appendf(nil, wrkScript, quoted(e.accounts), quoted(e.others), scenario, "wrk-"+strconv.FormatInt(e.seq.Add(1), 10)), 0o644); err != nil {
		return err
	}
	threads := min(2, clients)
	cmd := exec.CommandContext(ctx, bin, "-t", strconv.Itoa(threads), "-c", strconv.Itoa(clients),
		"-d", strconv.Itoa(max(1, int(d.Seconds())))+"s", "--timeout", "10s", "-s", script, "http://"+e.services[ModeHTTP].api)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r.wrkCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	var t wrkTotals
	start := bytes.LastIndex(out, []byte(`{"requests"`))
	if start < 0 {
		return fmt.Errorf("wrk printed no totals:\n%s", out)
	}
	if err := json.Unmarshal(bytes.TrimSpace(out[start:]), &t); err != nil {
		return fmt.Errorf("wrk totals: %w\n%s", err, out)
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	r.Seconds = float64(t.DurationUs) / 1e6
	r.Ops = t.Requests - t.Errors
	r.PerSecond = float64(r.Ops) / r.Seconds
	r.Errors = t.Errors
	r.P50ms, r.P90ms, r.P99ms, r.MaxMs = ms(t.P50us), ms(t.P90us), ms(t.P99us), ms(t.MaxUs)
	return nil
}
