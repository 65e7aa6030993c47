package cpu_test

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

func TestConformance(t *testing.T) {
	kerneltest.Run(t, func(*testing.T) kernels.Backend { return cpu.New() })
}
