package kernels

// Optional memory interfaces. A planner that wants to know, before it
// starts a phase, whether the phase will fit asks the backend through these;
// a backend that does not implement one (the CPU backend's memory is the
// host's) simply has no such limit to report.

// DeviceMemory is implemented by backends that can say how much device
// memory is left. Free is what the device can still hand out beyond what
// the backend already holds (its cached blocks are Reserved − Allocated in
// MemStats, and reusable on top of Free); total is the device's size.
type DeviceMemory interface {
	DeviceMemory() (free, total int64, err error)
}

// AllocRounding is implemented by backends whose allocator rounds requests
// up to size classes: AllocSize is the bytes a request of n bytes holds,
// which is what MemStats.Allocated counts for it.
type AllocRounding interface {
	AllocSize(n int64) int64
}

// ConstantArena is implemented by backends that pack buffers living as long
// as a model (its frozen weights) tighter than the buffers of a step, which
// a caching allocator rounds up so that freed ones can be reused.
// ReserveConstants announces that count constants of n bytes in all follow; each
// AllocConstant is then carved from one allocation of that size, and the
// allocation is given back when the last of them is freed. A constant
// allocated with nothing announced is an ordinary buffer.
type ConstantArena interface {
	ReserveConstants(n int64, count int)
	AllocConstant(d DType, n int) (Buffer, error)
}
