package batcher

import (
	"context"
	"errors"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// TestAbandonedRequestsLeaveTheBatch: a request whose caller gave up while its batch
// was collected (a replay answered from the idempotency cache meanwhile) is answered
// with its context's error and left out; the others keep their order.
func TestAbandonedRequestsLeaveTheBatch(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	var batch []*job[store.Request, ledger.Outcome]
	for i, ctx := range []context.Context{context.Background(), gone, context.Background()} {
		batch = append(batch, &job[store.Request, ledger.Outcome]{ctx: ctx, req: store.Request{Key: string(rune('a' + i))}, done: make(chan answer[ledger.Outcome], 1)})
	}
	abandoned := batch[1]
	kept := dropAbandoned(batch)
	if len(kept) != 2 || kept[0].req.Key != "a" || kept[1].req.Key != "c" {
		t.Fatalf("kept %d requests", len(kept))
	}
	if a := <-abandoned.done; !errors.Is(a.err, context.Canceled) {
		t.Errorf("the abandoned request was answered %v", a.err)
	}
}
