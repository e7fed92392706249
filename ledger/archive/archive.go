// Package archive takes journal partitions past the retention horizon out of a shard's
// database: it writes each to a compressed file with the checkpoints around it, checks
// the file against those checkpoints, and only then has the database detach and drop
// the partition. A file restored into any PostgreSQL database can be verified on its own
// (Restore, VerifyRestored).
package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/ledger/store"
)

// Format is the version of the archive's layout.
const Format = 1

// Manifest describes one archive: the partition, where it came from, and each member's
// rows and SHA-256.
type Manifest struct {
	Format    int               `json:"format"`
	Ledger    string            `json:"ledger"` // the shard database's identity
	Shard     int               `json:"shard"`
	Partition string            `json:"partition"`
	Starts    *time.Time        `json:"starts,omitempty"` // absent: from the beginning
	Ends      time.Time         `json:"ends"`
	Rows      map[string]int64  `json:"rows"`
	SHA256    map[string]string `json:"sha256"`
	File      string            `json:"file"`
}

const manifestName = "manifest.json"

func memberName(m string) string { return m + ".copy" }

// Run archives, oldest first, every partition that ended before before and is
// checkpointed, into dir, and returns the manifests of what it archived. A partition is
// dropped only after its archive is written, synced and checked.
func Run(ctx context.Context, st *store.Store, dir string, before time.Time, log *slog.Logger) ([]Manifest, error) {
	parts, err := st.ArchivablePartitions(ctx, before)
	if err != nil {
		return nil, err
	}
	var done []Manifest
	for _, p := range parts {
		m, err := Write(ctx, st, p, dir)
		if err != nil {
			return done, err
		}
		if err := Check(m.File, m); err != nil {
			return done, fmt.Errorf("archive: %s was written but does not check out, so the partition stays: %w", m.File, err)
		}
		record, err := json.Marshal(m)
		if err != nil {
			return done, fmt.Errorf("archive: manifest: %w", err)
		}
		if err := st.DropArchivedPartition(ctx, p.Suffix, record); err != nil {
			return done, err
		}
		log.Info("journal partition archived", "partition", p.Suffix, "file", m.File, "entries", m.Rows["entries"])
		done = append(done, m)
	}
	return done, nil
}

// Write exports the partition into dir as <ledger>-<partition>.tar.gz (written to a
// temporary name, synced, then renamed) and returns its manifest.
func Write(ctx context.Context, st *store.Store, p store.Partition, dir string) (Manifest, error) {
	identity, err := st.Identity(ctx)
	if err != nil {
		return Manifest{}, err
	}
	shard, err := st.Shard(ctx)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{Format: Format, Ledger: identity, Shard: shard, Partition: p.Suffix, Ends: p.Ends.UTC(),
		SHA256: map[string]string{}, File: filepath.Join(dir, identity+"-"+p.Suffix+".tar.gz")}
	if !p.Starts.IsZero() {
		s := p.Starts.UTC()
		m.Starts = &s
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return m, fmt.Errorf("archive: %w", err)
	}
	scratch, err := os.MkdirTemp(dir, ".export-") // on the archive volume: the members can be large
	if err != nil {
		return m, fmt.Errorf("archive: %w", err)
	}
	defer os.RemoveAll(scratch)
	files := map[string]*os.File{}
	hashes := map[string]hash.Hash{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	m.Rows, err = st.ExportPartition(ctx, p, func(member string) (io.Writer, error) {
		f, err := os.Create(filepath.Join(scratch, memberName(member)))
		if err != nil {
			return nil, fmt.Errorf("archive: %w", err)
		}
		files[member], hashes[member] = f, sha256.New()
		return io.MultiWriter(f, hashes[member]), nil
	})
	if err != nil {
		return m, err
	}
	for member, h := range hashes {
		m.SHA256[member] = hex.EncodeToString(h.Sum(nil))
	}
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, fmt.Errorf("archive: manifest: %w", err)
	}
	tmp := m.File + ".tmp"
	// A run that stopped part-way left its temporary file; this run writes it anew.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("archive: %w", err)
	}
	if err := writeTarGz(tmp, manifest, scratch); err != nil {
		os.Remove(tmp)
		return m, err
	}
	if err := os.Rename(tmp, m.File); err != nil {
		return m, fmt.Errorf("archive: %w", err)
	}
	return m, syncDir(dir)
}

func writeTarGz(path string, manifest []byte, scratch string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: manifestName, Mode: 0o640, Size: int64(len(manifest)), ModTime: time.Now()}); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if _, err := tw.Write(manifest); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	for _, member := range store.ArchiveMembers {
		if err := addFile(tw, filepath.Join(scratch, memberName(member))); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return f.Close()
}

func addFile(tw *tar.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: filepath.Base(path), Mode: 0o640, Size: info.Size(), ModTime: info.ModTime()}); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("archive: sync %s: %w", dir, err)
	}
	return nil
}

// ReadManifest reads the archive at path and returns its manifest, having checked every
// member against it.
func ReadManifest(path string) (Manifest, error) {
	m, _, err := read(path, func(string, io.Reader) (int64, error) { return 0, nil })
	return m, err
}

// slot names an account's balance slot in an archive's rows.
type slot struct{ account, slot string }

// Check reads the archive at path back and checks it against want: the same manifest,
// every member's rows and SHA-256, and for every account slot that moved, the opening
// checkpoint plus the partition's entries is the closing one, with a row on each side
// for exactly the slots that moved.
func Check(path string, want Manifest) error {
	got, members, err := read(path, func(member string, r io.Reader) (int64, error) { return 0, nil })
	if err != nil {
		return err
	}
	if !sameManifest(got, want) {
		return fmt.Errorf("archive: %s holds the manifest of another export", path)
	}
	for member, rows := range members {
		if rows != want.Rows[member] {
			return fmt.Errorf("archive: %s has %d %s rows, the database exported %d", path, rows, member, want.Rows[member])
		}
	}
	return checkSums(path)
}

func sameManifest(a, b Manifest) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// read walks the archive: it returns its manifest and each member's row count, checks
// each member's SHA-256 against the manifest, and hands each member to visit too.
func read(path string, visit func(member string, r io.Reader) (int64, error)) (Manifest, map[string]int64, error) {
	var m Manifest
	f, err := os.Open(path)
	if err != nil {
		return m, nil, fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return m, nil, fmt.Errorf("archive: %s: %w", path, err)
	}
	tr := tar.NewReader(gz)
	rows := map[string]int64{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return m, nil, fmt.Errorf("archive: %s: %w", path, err)
		}
		if h.Name == manifestName {
			if err := json.NewDecoder(tr).Decode(&m); err != nil {
				return m, nil, fmt.Errorf("archive: %s: manifest: %w", path, err)
			}
			continue
		}
		member := strings.TrimSuffix(h.Name, ".copy")
		digest := sha256.New()
		lines := &lineCounter{}
		if _, err := visit(member, io.TeeReader(io.TeeReader(tr, digest), lines)); err != nil {
			return m, nil, err
		}
		if _, err := io.Copy(io.Discard, io.TeeReader(io.TeeReader(tr, digest), lines)); err != nil {
			return m, nil, fmt.Errorf("archive: %s: %s: %w", path, member, err)
		}
		if m.SHA256 == nil || hex.EncodeToString(digest.Sum(nil)) != m.SHA256[member] {
			return m, nil, fmt.Errorf("archive: %s: %s does not match its SHA-256 in the manifest", path, member)
		}
		rows[member] = lines.n
	}
	for _, member := range store.ArchiveMembers {
		if _, ok := rows[member]; !ok {
			return m, nil, fmt.Errorf("archive: %s has no %s", path, member)
		}
	}
	return m, rows, nil
}

type lineCounter struct{ n int64 }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n += int64(bytes.Count(p, []byte{'\n'}))
	return len(p), nil
}

// checkSums checks, from the archive alone, that each moved slot's opening checkpoint plus
// its entries is its closing checkpoint.
func checkSums(path string) error {
	moved := map[slot]int64{}
	opening := map[slot]int64{}
	closing := map[slot]int64{}
	_, _, err := read(path, func(member string, r io.Reader) (int64, error) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<26)
		for sc.Scan() {
			f := strings.Split(sc.Text(), "\t")
			switch member {
			case "entries": // id, transaction_id, posting, account_id, asset, amount, balance_after, slot
				if len(f) != 8 {
					return 0, fmt.Errorf("archive: %s: an entry has %d columns", path, len(f))
				}
				amount, err := strconv.ParseInt(f[5], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("archive: %s: entry %s amount: %w", path, f[0], err)
				}
				s := f[7]
				if s == `\N` {
					s = "0"
				}
				moved[slot{f[3], s}] += amount
			case "opening", "closing": // account_id, slot, at, posted, transactions, last_entry, last_balance_after
				if len(f) != 7 {
					return 0, fmt.Errorf("archive: %s: a %s checkpoint has %d columns", path, member, len(f))
				}
				posted, err := strconv.ParseInt(f[3], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("archive: %s: %s checkpoint of %s: %w", path, member, f[0], err)
				}
				map[string]map[slot]int64{"opening": opening, "closing": closing}[member][slot{f[0], f[1]}] = posted
			}
		}
		return 0, sc.Err()
	})
	if err != nil {
		return err
	}
	if len(moved) != len(closing) {
		return fmt.Errorf("archive: %s: %d slots moved, %d closing checkpoints", path, len(moved), len(closing))
	}
	for s, total := range moved {
		end, ok := closing[s]
		if !ok {
			return fmt.Errorf("archive: %s: account %s slot %s moved but has no closing checkpoint", path, s.account, s.slot)
		}
		if opening[s]+total != end {
			return fmt.Errorf("archive: %s: account %s slot %s opens at %d, moves %d and closes at %d", path, s.account, s.slot, opening[s], total, end)
		}
	}
	return nil
}
