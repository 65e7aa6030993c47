package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/kernels"
)

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the backends built in",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(stdout, "%s %s %s/%s, backends: %s\n", programVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH, strings.Join(kernels.Registered(), ", "))
			return nil
		},
	}
}

// programVersion is "newbie-train", the module version and the VCS
// revision the binary was built from.
func programVersion() string {
	v := "newbie-train (devel)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = "newbie-train " + bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
	}
	return v
}
