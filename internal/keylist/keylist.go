// Package keylist writes the per-tensor lines of the loaders' key errors
// (missing, unexpected and mis-shaped tensors), a few of each kind: a file
// of another model size mismatches in every layer, and the first lines of
// each kind tell the story while the error values hold every name.
package keylist

import (
	"fmt"
	"strings"
)

// Lines is how many lines of one kind are written.
const Lines = 8

// Write appends up to Lines of the n lines line(i) gives, each on its own
// indented line, and then how many were left out.
func Write(b *strings.Builder, n int, line func(i int) string) {
	for i := range min(n, Lines) {
		b.WriteString("\n  " + line(i))
	}
	if n > Lines {
		fmt.Fprintf(b, "\n  … and %d more", n-Lines)
	}
}
