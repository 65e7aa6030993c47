//go:build unix

package dist

import (
	"os"
	"os/exec"
	"syscall"
)

// stopSignal asks a rank to stop; killSignal ends it.
var (
	stopSignal os.Signal = syscall.SIGTERM
	killSignal os.Signal = syscall.SIGKILL
)

// ownProcessGroup starts the rank as the leader of a process group of its
// own: a Ctrl-C in the terminal reaches the launcher alone, which passes it
// on, and a signal to the group reaches whatever the rank started too.
func ownProcessGroup(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalRank sends sig to the process group rank c leads.
func signalRank(c *exec.Cmd, sig os.Signal) {
	if s, ok := sig.(syscall.Signal); ok {
		syscall.Kill(-c.Process.Pid, s)
	}
}
