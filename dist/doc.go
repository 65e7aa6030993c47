// Package dist is data-parallel training's plumbing: one process per GPU,
// each holding a full copy of the model, each back-propagating its own share
// of a step's batches, their gradients summed across processes before the
// optimizer step.
//
// The pieces, each usable and tested on its own:
//
//   - Communicator: a rank's handle on the job (rank, world size, in-place
//     sums and broadcasts of backend buffers, barrier, abort). Open builds
//     one from the environment: NCCL on the CUDA backend (found through
//     NativeBackend, so this package never names a backend), sums over the
//     rendezvous connections on a backend without a collective library
//     (the CPU backend: a job's setup tried without GPUs), a trivial one
//     for a single process. NewInProcess gives N goroutine ranks over N
//     backends, summing in a fixed rank order, for tests.
//   - Env: the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK,
//     MASTER_ADDR, MASTER_PORT), so `torchrun --no-python` starts a job.
//   - Rendezvous and Session: rank 0 serves the NCCL unique id over TCP;
//     the connections stay open for barriers and to notice a rank whose
//     process ended, so the others fail at once instead of hanging.
//   - PlanBuckets and Reducer: gradients grouped, as PyTorch's DDP groups
//     them, into buckets summed as soon as the backward has produced them.
//   - Shard and StepBatches: which of a step's global batches each rank
//     takes, so a run resumes with any world size.
//   - Launch: `--gpus N` on one machine, N copies of the program with the
//     torchrun variables set; one rank dying stops the others.
package dist
