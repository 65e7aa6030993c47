// Command newbie-train fine-tunes NewBie-image-Exp0.1 with LoRA:
// `newbie-train --config lora.yaml`. Run `newbie-train --help` for the
// commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
