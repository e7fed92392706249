package localshard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// locator is the local shard's record of which instance is primary, kept in a file so a
// restarted shard remembers it. It implements instance.Locator.
type locator struct {
	dir string

	mu     sync.Mutex
	target string
}

const primaryFile = "primary"

func readPrimary(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, primaryFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("localshard: read primary: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// TargetPrimary is the instance the record names primary.
func (l *locator) TargetPrimary(context.Context) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.target, nil
}

func (l *locator) set(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	path := filepath.Join(l.dir, primaryFile)
	if err := os.WriteFile(path+".tmp", []byte(name+"\n"), 0o644); err != nil {
		return fmt.Errorf("localshard: record primary: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("localshard: record primary: %w", err)
	}
	l.target = name
	return nil
}

// proxy plays the -rw Service: each connection goes to the current primary. When the
// primary changes, open connections are closed, as they would be when the old primary
// shuts down.
type proxy struct {
	ln net.Listener

	mu     sync.Mutex
	target int // port on 127.0.0.1; 0 while no primary
	conns  map[net.Conn]struct{}
}

func startProxy(port int) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return nil, fmt.Errorf("localshard: proxy: %w", err)
	}
	p := &proxy{ln: ln, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *proxy) setTarget(port int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.target == port {
		return
	}
	p.target = port
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(client net.Conn) {
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	if target == 0 {
		client.Close()
		return
	}
	server, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(target), 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.target != target { // the primary moved while we dialled
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[client], p.conns[server] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
	client.Close()
	server.Close()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.setTarget(-1)
}
