package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// cpuTimes is CPU used so far by the three parties of a run: PostgreSQL (every process of
// its group, and the backends that have exited and been reaped), this process (the
// ledger service, and the Go load generator in modes other than wrk) and wrk.
type cpuTimes struct{ postgres, service time.Duration }

// serverCPU sums user and system time over a server process, its live children and
// what it has reaped from exited ones. PostgreSQL's backends each start their own
// session, so they are found by parent, not by process group. Zero where /proc is not.
func serverCPU(pid int) time.Duration {
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// The command name in parentheses may hold spaces; the fields follow its ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
		self := e.Name() == strconv.Itoa(pid)
		if len(f) < 15 || (!self && f[1] != strconv.Itoa(pid)) {
			continue
		}
		last := 12
		if self {
			last = 14 // add the children it has reaped
		}
		for _, v := range f[11 : last+1] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// selfCPU is this process's user and system time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (e *env) cpu() cpuTimes {
	return cpuTimes{postgres: serverCPU(e.pg.Pid()), service: selfCPU()}
}
