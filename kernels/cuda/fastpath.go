package cuda

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// Fast paths are kernels that serve common shapes faster than the general
// kernels beside them, which stay correct for every shape. Each can be
// turned off with the environment variable NEWBIE_TRAIN_CUDA_OFF, a
// comma-separated list of the names below read when a backend opens, so
// that a fast path that misbehaves on some GPU can be set aside without a
// rebuild: the general kernels then run.
const fastPathEnv = "NEWBIE_TRAIN_CUDA_OFF"

// Names of the fast paths NEWBIE_TRAIN_CUDA_OFF can turn off.
const (
	// fastConv is the bf16 implicit-GEMM convolution (conv_tc.cu).
	fastConv = "conv"
	// fastConvGEMM is the fp32 and fp16 convolution as cuBLAS products over
	// im2col columns (conv_gemm.cu); off, those run the direct kernel.
	fastConvGEMM = "convgemm"
	// fastGroupNorm is the vectorised, multi-block GroupNorm and its fused
	// SiLU (groupnorm_fast.cu).
	fastGroupNorm = "groupnorm"
	// fastAttn256 is the tensor-core attention forward at head size 256
	// (attn_fwd_tc256).
	fastAttn256 = "attn256"
	// fastAttnSIMT is the tiled attention forward on the CUDA cores
	// (attention_simt.cu) for fp32, and for fp16 and bf16 where the
	// tensor-core kernels do not run; off, those run attn_fwd_f.
	fastAttnSIMT = "attnsimt"
	// fastFused is the one-pass kernels of the fused block ops
	// (fused_norm.cu); off, those ops run as their compositions of the
	// primitive kernels (kernels.Compose*).
	fastFused = "fused"
	// fastThinGemm is the bf16 products whose inner dimension is a LoRA
	// rank (gemm_thin.cu); off, cuBLAS runs them.
	fastThinGemm = "thingemm"
	// fastGraphs is graph replay of repeating regions (graph.go); off,
	// every region runs as plain launches.
	fastGraphs = "graphs"
)

var fastPaths = []string{fastConv, fastConvGEMM, fastGroupNorm, fastAttn256, fastAttnSIMT, fastFused, fastThinGemm, fastGraphs}

// parseFastPathsOff reads a NEWBIE_TRAIN_CUDA_OFF value into the set of
// fast paths turned off, refusing names it does not know (a typo would
// otherwise leave the path on unnoticed).
func parseFastPathsOff(v string) (map[string]bool, error) {
	off := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(fastPaths, f) {
			return nil, fmt.Errorf("%s=%q: unknown fast path %q (known: %s)", fastPathEnv, v, f, strings.Join(fastPaths, ", "))
		}
		off[f] = true
	}
	return off, nil
}

// fastPathsOffFromEnv is parseFastPathsOff of the environment.
func fastPathsOffFromEnv() (map[string]bool, error) { return parseFastPathsOff(os.Getenv(fastPathEnv)) }

// fast reports whether fast path name is on for this backend.
func (c *Backend) fast(name string) bool { return !c.off[name] }
