package instance

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// API paths of the status server. /healthz and /readyz are open (the kubelet probes
// them, and they tell nothing); everything under /v1 needs the bearer token.
const (
	PathStatus   = "/v1/status"
	PathPromote  = "/v1/promote"
	PathFence    = "/v1/fence"
	PathUnfence  = "/v1/unfence"
	PathFollow   = "/v1/follow"
	PathDetach   = "/v1/detach"
	PathDemote   = "/v1/demote" // the same as follow, named for a primary stepping down
	PathHealthz  = "/healthz"
	PathReadyz   = "/readyz"
	maxBodyBytes = 4 << 10
)

// primaryTimelineSQL is a primary's current timeline: the first eight hex digits of
// the name of its current WAL file. (A primary's control file learns a new timeline
// only at its next checkpoint.)
const primaryTimelineSQL = `('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`

// FollowRequest is the body of POST /v1/follow and /v1/demote.
type FollowRequest struct {
	Primary string `json:"primary"`
}

// Handler serves the status API.
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET "+PathReadyz, func(w http.ResponseWriter, r *http.Request) {
		if st := m.Status(r.Context()); !st.Running {
			http.Error(w, "postgres is not running", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET "+PathStatus, m.authed(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.Status(r.Context()))
	}))
	action := func(f func(context.Context) error) http.HandlerFunc {
		return m.authed(func(w http.ResponseWriter, r *http.Request) {
			if err := f(r.Context()); err != nil {
				writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, m.Status(r.Context()))
		})
	}
	mux.HandleFunc("POST "+PathPromote, action(m.Promote))
	mux.HandleFunc("POST "+PathFence, action(m.Fence))
	mux.HandleFunc("POST "+PathUnfence, action(m.Unfence))
	mux.HandleFunc("POST "+PathDetach, action(m.Detach))
	follow := m.authed(func(w http.ResponseWriter, r *http.Request) {
		var req FollowRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req.Primary == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be {\"primary\": NAME}"})
			return
		}
		action(func(ctx context.Context) error { return m.Follow(ctx, req.Primary) })(w, r)
	})
	mux.HandleFunc("POST "+PathFollow, follow)
	mux.HandleFunc("POST "+PathDemote, follow)
	return mux
}

func (m *Manager) authed(h http.HandlerFunc) http.HandlerFunc {
	want := []byte("Bearer " + m.cfg.Token)
	return func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Status observes the instance now. It never waits on an action in progress.
func (m *Manager) Status(ctx context.Context) Status {
	st := Status{Name: m.cfg.Name, Fenced: m.fenced(), Upstream: m.currentUpstream()}
	pg := m.server()
	if pg == nil || pg.Exited() {
		st.Error = "postgres is not running"
		return st
	}
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	if err := m.observe(ctx, &st); err != nil {
		st.Running, st.Role, st.Error = false, RoleNone, err.Error()
	}
	return st
}

func (m *Manager) observe(ctx context.Context, st *Status) error {
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var recovery bool
	var flush, received, replayed *int64
	err = conn.QueryRow(ctx, `
		SELECT pg_is_in_recovery(),
		       CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_flush_lsn() - '0/0')::bigint END,
		       (pg_last_wal_receive_lsn() - '0/0')::bigint,
		       (pg_last_wal_replay_lsn() - '0/0')::bigint,
		       current_setting('synchronous_standby_names')`).
		Scan(&recovery, &flush, &received, &replayed, &st.SyncStandbyNames)
	if err != nil {
		return fmt.Errorf("instance: status: %w", err)
	}
	st.Running = true
	lsn := func(p *int64) LSN {
		if p == nil {
			return 0
		}
		return LSN(*p)
	}
	if !recovery {
		st.Role, st.WAL = RolePrimary, lsn(flush)
		err = conn.QueryRow(ctx, `SELECT `+primaryTimelineSQL).Scan(&st.Timeline)
		if err != nil {
			return fmt.Errorf("instance: timeline: %w", err)
		}
		rows, err := conn.Query(ctx, `
			SELECT application_name, state, sync_state, COALESCE((flush_lsn - '0/0')::bigint, 0)
			FROM pg_stat_replication ORDER BY application_name`)
		if err != nil {
			return fmt.Errorf("instance: standbys: %w", err)
		}
		st.Standbys, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Standby, error) {
			var s Standby
			var f int64
			err := row.Scan(&s.Name, &s.State, &s.SyncState, &f)
			s.FlushLSN = LSN(f)
			return s, err
		})
		if err != nil {
			return fmt.Errorf("instance: standbys: %w", err)
		}
		st.Upstream = ""
		return nil
	}
	st.Role = RoleReplica
	st.ReceivedLSN, st.ReplayedLSN = lsn(received), lsn(replayed)
	st.WAL = max(st.ReceivedLSN, st.ReplayedLSN)
	var receiver *string
	var tli *int64
	err = conn.QueryRow(ctx, `
		SELECT (SELECT status FROM pg_stat_wal_receiver),
		       COALESCE((SELECT received_tli::bigint FROM pg_stat_wal_receiver WHERE received_tli > 0),
		                (SELECT timeline_id::bigint FROM pg_control_checkpoint()))`).Scan(&receiver, &tli)
	if err != nil {
		return fmt.Errorf("instance: wal receiver: %w", err)
	}
	if receiver != nil {
		st.WALReceiver = *receiver
	}
	if tli != nil {
		st.Timeline = *tli
	}
	return nil
}

// Client calls one instance manager's status API.
type Client struct {
	// BaseURL is like https://10.0.0.7:8000.
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// NewClient returns a client with a bounded timeout; tlsConfig verifies an HTTPS
// server (nil: the system's roots).
func NewClient(baseURL, token string, tlsConfig *tls.Config) *Client {
	c := &http.Client{Timeout: 2 * time.Minute}
	if tlsConfig != nil {
		c.Transport = &http.Transport{TLSClientConfig: tlsConfig}
	}
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: c}
}

// Status reads the instance's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.call(ctx, http.MethodGet, PathStatus, nil)
}

// Promote asks the replica to become primary.
func (c *Client) Promote(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodPost, PathPromote, nil)
	return err
}

// Fence asks the instance to stop PostgreSQL and stay stopped.
func (c *Client) Fence(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodPost, PathFence, nil)
	return err
}

// Unfence lets a fenced instance start again.
func (c *Client) Unfence(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodPost, PathUnfence, nil)
	return err
}

// Detach asks a replica to stop streaming from its upstream and stay where it is.
func (c *Client) Detach(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodPost, PathDetach, nil)
	return err
}

// Follow asks the instance to replicate from primary, rewinding if it must.
func (c *Client) Follow(ctx context.Context, primary string) error {
	_, err := c.call(ctx, http.MethodPost, PathFollow, FollowRequest{Primary: primary})
	return err
}

func (c *Client) call(ctx context.Context, method, path string, body any) (Status, error) {
	var st Status
	var rd *strings.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return st, err
		}
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return st, fmt.Errorf("instance client: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return st, fmt.Errorf("instance client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return st, fmt.Errorf("instance client: %s %s: %s: %s", method, path, resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("instance client: decode status: %w", err)
	}
	return st, nil
}

// peerChecker asks the shard's other managers whether they are there.
type peerChecker struct {
	urls []string
	http *http.Client
}

func newPeerChecker(self string, members []Member, t *TLS) *peerChecker {
	p := &peerChecker{http: peerHTTPClient(t, time.Second)}
	for _, mb := range members {
		if mb.Name != self && mb.StatusURL != "" {
			p.urls = append(p.urls, strings.TrimRight(mb.StatusURL, "/")+PathHealthz)
		}
	}
	return p
}

func (p *peerChecker) anyReachable(ctx context.Context) bool {
	for _, u := range p.urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			continue
		}
		resp, err := p.http.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
	}
	return false
}
