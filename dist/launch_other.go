//go:build !unix

package dist

import (
	"os"
	"os/exec"
)

// Without process groups and SIGTERM, a rank is asked to stop by ending it.
var (
	stopSignal = os.Kill
	killSignal = os.Kill
)

func ownProcessGroup(c *exec.Cmd) {}

func signalRank(c *exec.Cmd, sig os.Signal) { c.Process.Signal(sig) }
