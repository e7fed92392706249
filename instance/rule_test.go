package instance

import "testing"

func TestSyncStandbyNames(t *testing.T) {
	members := []string{"s-1", "s-2", "s-3"}
	tests := []struct {
		name      string
		rule      SyncRule
		streaming []string
		want      string
	}{
		{"required lists every other member, streaming or not", SyncRule{Method: SyncAny, Number: 1, Required: true}, nil, `ANY 1 ("s-2", "s-3")`},
		{"first", SyncRule{Method: SyncFirst, Number: 1, Required: true}, []string{"s-3"}, `FIRST 1 ("s-2", "s-3")`},
		{"preferred lists the streaming ones", SyncRule{Method: SyncAny, Number: 1}, []string{"s-3"}, `ANY 1 ("s-3")`},
		{"preferred lowers the number to what streams", SyncRule{Method: SyncAny, Number: 2}, []string{"s-2"}, `ANY 1 ("s-2")`},
		{"preferred with nothing streaming is asynchronous", SyncRule{Method: SyncAny, Number: 1}, nil, ""},
		{"preferred ignores standbys that are not members", SyncRule{Method: SyncAny, Number: 1}, []string{"gone"}, ""},
		{"asynchronous", SyncRule{}, members, ""},
	}
	for _, tt := range tests {
		if got := SyncStandbyNames(tt.rule, "s-1", members, tt.streaming); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestParseSyncRule(t *testing.T) {
	r, err := ParseSyncRule("ANY 2", true)
	if err != nil || r != (SyncRule{Method: SyncAny, Number: 2, Required: true}) {
		t.Fatalf("got %+v %v", r, err)
	}
	if r, err := ParseSyncRule("", false); err != nil || r.Number != 0 {
		t.Fatalf("empty: %+v %v", r, err)
	}
	for _, bad := range []string{"ANY", "SOME 1", "ANY x", "ANY -1", "ANY 1 2"} {
		if _, err := ParseSyncRule(bad, true); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestPlanStart(t *testing.T) {
	tests := []struct {
		name               string
		hasData, isStandby bool
		target             string
		want               startAction
		err                error
	}{
		{"first primary", false, false, "me", startInitPrimary, nil},
		{"new replica", false, false, "other", startClone, nil},
		{"new replica during a failover", false, false, "", 0, errNoTarget},
		{"primary restarts, still primary", true, false, "me", startPrimary, nil},
		{"primary restarts after a failover", true, false, "other", startRewind, nil},
		{"primary restarts during a failover", true, false, "", 0, errNoTarget},
		{"replica restarts", true, true, "other", startReplica, nil},
		{"replica about to be promoted restarts", true, true, "me", startReplica, nil},
	}
	for _, tt := range tests {
		got, err := planStart(tt.hasData, tt.isStandby, "me", tt.target)
		if got != tt.want || err != tt.err {
			t.Errorf("%s: got %v %v, want %v %v", tt.name, got, err, tt.want, tt.err)
		}
	}
}

func TestLSNText(t *testing.T) {
	var l LSN
	if err := l.UnmarshalText([]byte("16/B374D848")); err != nil || l.String() != "16/B374D848" {
		t.Fatalf("got %s %v", l, err)
	}
	if err := l.UnmarshalText([]byte("nonsense")); err == nil {
		t.Fatal("want an error")
	}
}

func TestDivergedFrom(t *testing.T) {
	history := "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n"
	for _, tt := range []struct {
		name       string
		history    string
		primaryTLI int64
		ourTLI     int64
		ourLSN     LSN
		want       bool
	}{
		{"same timeline", "", 1, 1, 0x9000000, false},
		{"behind the fork", history, 3, 1, 0x3000158, false},
		{"past the fork", history, 3, 1, 0x3000159, true},
		{"past the second fork", history, 3, 2, 0x5000001, true},
		{"on the second timeline before its end", history, 3, 2, 0x4000000, false},
		{"a branch the primary never had", "1\t0/3000158\tx\n", 2, 4, 0x100, true},
	} {
		got, err := divergedFrom(tt.history, tt.primaryTLI, tt.ourTLI, tt.ourLSN)
		if err != nil || got != tt.want {
			t.Errorf("%s: got %v %v, want %v", tt.name, got, err, tt.want)
		}
	}
	if _, err := divergedFrom("x\t0/1\ty\n", 2, 1, 5); err == nil {
		t.Error("a malformed history: want an error")
	}
}
