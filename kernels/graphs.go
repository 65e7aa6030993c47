package kernels

import "fmt"

// Graphs is implemented by backends that can replay a region of queued ops
// as device graphs (CUDA graphs) instead of launching its ops one by one.
// A caller brackets a region that repeats — a training step, a model
// evaluation — with BeginGraph and EndGraph under a key naming its shape.
// The first run of a key runs as usual and is recorded; a later run whose
// ops, arguments and buffer addresses are the same is captured and from
// then on replayed; a run that differs anywhere runs as usual and replaces
// the record. So a region computes the same as without graphs whatever it
// does, and only the launch cost changes. Host reads (Sync, Download) and
// EndGraph close the current graph; uploads inside a region are replayed
// with their new contents. Regions do not nest: a BeginGraph inside a
// region is ignored, with its EndGraph.
type Graphs interface {
	BeginGraph(key string)
	EndGraph()
	// GraphStats are counters since the backend opened.
	GraphStats() GraphStats
}

// GraphStats counts what the graph regions of a backend did.
type GraphStats struct {
	// Off, when not empty, says why graphs are not used (every region runs
	// as plain launches).
	Off string
	// Runs counts the regions run. Segments counts the pieces they were
	// cut into (at host reads, EndGraph and a length limit): Recorded ran
	// plainly the first time, Mismatched ran plainly because they differed
	// from the record, Captured were captured (and launched), Replayed
	// launched a graph captured before, Failed could not be captured.
	Runs, Segments                                   int
	Recorded, Mismatched, Captured, Replayed, Failed int
	// OpsGraphed counts the ops that ran inside graphs (captured or
	// replayed), OpsPlain those launched one by one inside regions.
	OpsGraphed, OpsPlain int64
	// LastFailure is the last capture or launch failure, if any.
	LastFailure string
}

// Sub returns the counters accumulated since an earlier snapshot.
func (s GraphStats) Sub(earlier GraphStats) GraphStats {
	return GraphStats{
		Off: s.Off, Runs: s.Runs - earlier.Runs, Segments: s.Segments - earlier.Segments,
		Recorded: s.Recorded - earlier.Recorded, Mismatched: s.Mismatched - earlier.Mismatched,
		Captured: s.Captured - earlier.Captured, Replayed: s.Replayed - earlier.Replayed, Failed: s.Failed - earlier.Failed,
		OpsGraphed: s.OpsGraphed - earlier.OpsGraphed, OpsPlain: s.OpsPlain - earlier.OpsPlain, LastFailure: s.LastFailure,
	}
}

// String summarises the counters in one line.
func (s GraphStats) String() string {
	if s.Off != "" {
		return "graphs off: " + s.Off
	}
	total := s.OpsGraphed + s.OpsPlain
	share := 0.0
	if total > 0 {
		share = 100 * float64(s.OpsGraphed) / float64(total)
	}
	out := fmt.Sprintf("graphs: %d regions, %d segments (%d replayed, %d captured, %d recorded, %d differed, %d failed), %.1f%% of %d ops in graphs",
		s.Runs, s.Segments, s.Replayed, s.Captured, s.Recorded, s.Mismatched, s.Failed, share, total)
	if s.LastFailure != "" {
		out += "; last failure: " + s.LastFailure
	}
	return out
}

// BeginGraph opens a graph region on b when b supports graphs.
func BeginGraph(b Backend, key string) {
	if g, ok := b.(Graphs); ok {
		g.BeginGraph(key)
	}
}

// EndGraph closes the region BeginGraph opened on b.
func EndGraph(b Backend) {
	if g, ok := b.(Graphs); ok {
		g.EndGraph()
	}
}

// Switchable is implemented by backends with optional paths (fast
// kernels, graph replay) that can be switched off: by an environment
// variable read when the backend opens, or later by SetOff between steps.
type Switchable interface {
	// Switches says how each path is set, for benchmarks and logs.
	Switches() string
	// SetOff turns off exactly the named paths (a comma-separated list;
	// empty turns every path on). It fails on an unknown name and inside
	// a graph region.
	SetOff(names string) error
}
