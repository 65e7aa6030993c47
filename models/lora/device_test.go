package lora

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
)

// TestPEFTGoldenParityCUDA is TestPEFTGoldenParity on the GPU backend; it
// skips where there is no GPU.
func TestPEFTGoldenParityCUDA(t *testing.T) {
	g := needGolden(t)
	if _, err := kernels.Open("cuda", 0); err != nil {
		t.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	cases := []parityCase{
		{"f32", kernels.F32, kernels.F32, 0, false, 1e-5, 1e-5},
		{"f32-checkpointed", kernels.F32, kernels.F32, 0, true, 1e-5, 1e-5},
		{"bf16-storage-autocast", kernels.BF16, kernels.F32, kernels.BF16, false, 2e-2, 5e-2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be, err := kernels.Open("cuda", 0)
			if err != nil {
				t.Fatal(err)
			}
			checkPEFTParity(t, g, be, tc)
		})
	}
}
