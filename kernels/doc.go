// Package kernels defines the Backend interface: every primitive operation the
// training engine needs, expressed over opaque device buffers, so that the
// pure-Go reference backend (kernels/cpu) and the GPU backend (kernels/cuda)
// are interchangeable and nothing above this package knows which one runs.
//
// Conventions shared by every op:
//
//   - Buffers are flat, contiguous arrays of one DType. Shapes are passed with
//     each call; all matrices and tensors are row-major (last axis fastest).
//   - Floating-point ops read any float dtype and write any float dtype: they
//     load to float32 (float64 when the output is F64), compute, and round
//     once on store. Mixed input dtypes are allowed unless an op says so.
//   - Ops are queued, not awaited: they return nothing. A backend records the
//     first failure it meets and reports it from Sync (the GPU learns of faults
//     late, so the CPU backend behaves the same way). Arguments that disagree
//     with the buffers (wrong lengths, dtypes an op does not take) are such
//     failures; callers in autograd validate shapes before calling.
//   - Elementwise ops allow the output to alias an input exactly (in place);
//     no other aliasing is allowed.
package kernels
