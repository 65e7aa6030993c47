package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"
)

// stageKey carries, in a command's context, the function a long command
// calls to say what an interrupt would stop after (train.Options.Stage).
type stageKey struct{}

// stageFrom returns the context's stage reporter (one that does nothing
// when there is none).
func stageFrom(ctx context.Context) func(string) {
	if f, ok := ctx.Value(stageKey{}).(func(string)); ok {
		return f
	}
	return func(string) {}
}

// interruptible returns a context that the first signal on sigs cancels,
// after printing on w what the command stops after (the last stage the
// command reported); the second signal calls quit. stop ends the watch.
func interruptible(parent context.Context, sigs <-chan os.Signal, w io.Writer, quit func()) (context.Context, func()) {
	var stage atomic.Value
	stage.Store("the current step")
	ctx, cancel := context.WithCancel(context.WithValue(parent, stageKey{}, func(s string) { stage.Store(s) }))
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
		case <-done:
			return
		}
		fmt.Fprintf(w, "\nnewbie-train: interrupt: stopping after %s (press Ctrl-C again to quit at once)\n", stage.Load())
		cancel()
		select {
		case <-sigs:
		case <-done:
			return
		}
		fmt.Fprintln(w, "newbie-train: second interrupt: quitting now. Every save is atomic: the last complete one is intact, and whatever this one left half-written is removed at the next start.")
		quit()
	}()
	return ctx, func() { close(done); cancel() }
}
