package cuda

import "path/filepath"

// blasAPI holds the cuBLAS entry points the backend uses.
type blasAPI struct {
	create, destroy, setStream, setWorkspace, setMathMode sym
	gemmEx, gemmStridedBatchedEx                          sym
}

func newBlasAPI() *blasAPI {
	return &blasAPI{
		create: sym{name: "cublasCreate_v2"}, destroy: sym{name: "cublasDestroy_v2"},
		setStream: sym{name: "cublasSetStream_v2"}, setWorkspace: sym{name: "cublasSetWorkspace_v2"},
		setMathMode: sym{name: "cublasSetMathMode"},
		gemmEx:      sym{name: "cublasGemmEx"}, gemmStridedBatchedEx: sym{name: "cublasGemmStridedBatchedEx"},
	}
}

func (b *blasAPI) all() []*sym {
	return []*sym{&b.create, &b.destroy, &b.setStream, &b.setWorkspace, &b.setMathMode, &b.gemmEx, &b.gemmStridedBatchedEx}
}

// cuBLAS and CUDA library constants (cublas_api.h, library_types.h).
const (
	cublasOpN = 0
	cublasOpT = 1

	cudaR32F  = 0
	cudaR64F  = 1
	cudaR16F  = 2
	cudaR16BF = 14

	cublasCompute32F = 68
	cublasCompute64F = 70

	cublasDefaultMath = 0
	cublasGemmDefault = -1

	// blasWorkspaceBytes is the workspace handed to cuBLAS so it never
	// allocates on its own (32 MiB, what PyTorch gives it on Hopper).
	blasWorkspaceBytes = 32 << 20
)

// globFiles is filepath.Glob, named so tests can substitute a fake tree.
var globFiles = filepath.Glob
