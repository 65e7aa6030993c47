// Command newbie-train fine-tunes NewBie-image-Exp0.1 with LoRA:
// `newbie-train --config lora.yaml`. Run `newbie-train --help` for the
// commands.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/newbie-train/newbie-train/dist"
)

func main() {
	os.Exit(runWithSignals(os.Args[1:], os.Stdout, os.Stderr))
}

// runWithSignals runs the command line with Ctrl-C and SIGTERM handled as
// a user expects: the first is acknowledged at once, saying what the
// program stops after, and cancels the command (a training run then saves
// a resumable state); a second one exits at once with code 130. Every file
// is written atomically, so quitting mid-write leaves the last complete
// version, and the next start removes what the write left behind.
func runWithSignals(args []string, stdout, stderr io.Writer) int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	notices := stderr
	if rank := os.Getenv(dist.EnvRank); rank != "" && rank != "0" {
		notices = io.Discard // rank 0 says it for the job
	}
	ctx, stop := interruptible(context.Background(), sigs, notices, func() { os.Exit(exitInterrupted) })
	defer stop()
	return run(ctx, args, stdout, stderr)
}
