package kernels

// DeviceTimer is implemented by backends that can timestamp their own
// queue, so that a profiler can attribute device time to each op without
// waiting after it (a wait adds a launch and a round trip to every op,
// which swamps the small ones). Marks cost a few microseconds of device
// time each; the window's total is what to read them against.
type DeviceTimer interface {
	// StartTiming opens a timing window. Until StopTiming, graph regions
	// run as plain launches, so that marks fall between the ops they
	// bracket.
	StartTiming() error
	// Mark records a timestamp on the device after the work queued so
	// far.
	Mark()
	// StopTiming waits for the device, closes the window and returns each
	// mark's time in seconds after the window's first mark.
	StopTiming() ([]float64, error)
}
