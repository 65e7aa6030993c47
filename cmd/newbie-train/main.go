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
)

func main() {
	os.Exit(runWithSignals(os.Args[1:], os.Stdout, os.Stderr))
}

// runWithSignals runs the command line with Ctrl-C and SIGTERM turned into a
// cancellation, which a training run answers by saving a resumable state.
func runWithSignals(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, stdout, stderr)
}
