package service

import (
	"context"
	"encoding/base64"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
)

// Following an account's entries: how often the shard is asked for new ones, and how
// many of each balance slot one ask brings.
const (
	followPoll  = 100 * time.Millisecond
	followBatch = 200
)

// FollowEntries sends the account's entries as they are posted, oldest first (a user:
// its own account's), until ctx ends or send fails. It starts after resume (a token an
// earlier send carried), else after the entry afterID (exact for an account of one
// balance slot; one of several slots may also see entries that committed after it with
// lower ids), else from now on. Each entry goes with the token to resume after it.
func (s *Service) FollowEntries(ctx context.Context, c auth.Caller, id, afterID, resume string, send func(document.Entry, string) error) error {
	aid, err := accountID(id)
	if err != nil {
		return err
	}
	if err := s.mayUse(ctx, c, aid); err != nil {
		return err
	}
	marks, err := s.set.EntryMarks(ctx, aid)
	if err != nil {
		return err
	}
	switch {
	case resume != "" && afterID != "":
		return ledger.Errorf(ledger.CodeInvalidRequest, "give a resume token or an entry id to start after, not both")
	case resume != "":
		if marks, err = decodeMarks(resume, marks); err != nil {
			return err
		}
	case afterID != "":
		after, err := strconv.ParseInt(afterID, 10, 64)
		if err != nil || after < 0 {
			return ledger.Errorf(ledger.CodeInvalidRequest, "after_entry_id %q is not an entry id", Truncate(afterID))
		}
		for slot := range marks {
			marks[slot] = after
		}
	}
	scales := map[string]int{}
	for {
		entries, err := s.set.EntriesAfter(ctx, aid, marks, followBatch)
		if err != nil {
			return err
		}
		for _, e := range entries {
			scale, ok := scales[e.Asset]
			if !ok {
				asset, err := s.set.Asset(ctx, e.Asset)
				if err != nil {
					return err
				}
				scale, scales[e.Asset] = asset.Scale, asset.Scale
			}
			marks[e.Slot] = e.ID
			if err := send(document.EntryOf(e, scale), encodeMarks(marks)); err != nil {
				return err
			}
		}
		if len(entries) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(followPoll):
		}
	}
}

// encodeMarks is a resume token: each slot's mark, opaque to clients.
func encodeMarks(marks map[int]int64) string {
	slots := make([]int, 0, len(marks))
	for slot := range marks {
		slots = append(slots, slot)
	}
	sort.Ints(slots)
	parts := make([]string, len(slots))
	for i, slot := range slots {
		parts[i] = strconv.Itoa(slot) + ":" + strconv.FormatInt(marks[slot], 10)
	}
	return encodeCursor(strings.Join(parts, ","))
}

// decodeMarks reads a resume token for an account whose slots are those of now.
func decodeMarks(token string, now map[int]int64) (map[int]int64, error) {
	bad := ledger.Errorf(ledger.CodeInvalidRequest, "resume token %q is not one this API issued for this account", Truncate(token))
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, bad
	}
	marks := map[int]int64{}
	for _, part := range strings.Split(string(raw), ",") {
		slotText, idText, ok := strings.Cut(part, ":")
		slot, err1 := strconv.Atoi(slotText)
		id, err2 := strconv.ParseInt(idText, 10, 64)
		if _, known := now[slot]; !ok || err1 != nil || err2 != nil || id < 0 || !known {
			return nil, bad
		}
		marks[slot] = id
	}
	if len(marks) != len(now) {
		return nil, bad
	}
	return marks, nil
}
