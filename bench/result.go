package bench

import (
	"fmt"
	"strings"

	"github.com/newbie-train/newbie-train/kernels"
)

// Result is the outcome of Bench: what was measured and one Mode
// per checkpointing mode.
type Result struct {
	Backend string // the backend's Name, e.g. "cuda:0 (NVIDIA H200)"
	// Switches are the backend's optional paths and how they are set
	// (kernels.Switchable), e.g. whether its fused kernels and graphs are on.
	Switches string
	Preset   string
	// Layers is the model's count of main transformer layers (the
	// preset's unless Options.Layers replaced it).
	Layers int
	// FP8Base is whether the frozen linear weights were stored in fp8.
	FP8Base bool
	// CheckpointBlocks is how many blocks the checkpointing mode
	// checkpointed (0: every one) of Blocks.
	CheckpointBlocks, Blocks int
	// RecomputeNorms is whether the norms were recomputed in the backward,
	// RecomputeFFNBlocks in how many blocks the feed-forward inputs were
	// (bench.Options).
	RecomputeNorms     bool
	RecomputeFFNBlocks int
	// Plan is what Options.MemoryBudgetGiB's plan picked ("" without one).
	Plan string
	// Params is the frozen base model's size; LoRAParams the trainable
	// adapters' and LoRALayers how many linear layers carry one.
	Params     int64
	LoRAParams int64
	LoRALayers int
	Rank       int
	Alpha      float64
	Batch      int
	// Accum is the micro-batches per step on each of Ranks ranks.
	Accum      int
	Ranks      int
	Resolution int
	// Latent is the latent's [C, H, W]; ImageTokens the image tokens per
	// sample; CaptionTokens the caption tokens per sample.
	Latent        [3]int
	ImageTokens   int
	CaptionTokens int
	// FLOPs is the work of one step on one rank counted as the PyTorch
	// anchor counts it (see StepFLOPs), the numerator of every TFLOP/s
	// figure (a GPU's).
	FLOPs float64
	// BuildSeconds is the time to build the random model and adapters.
	BuildSeconds float64
	// BaseBytes is the memory held before the first step: frozen weights,
	// adapters with their gradients and the optimizer's moments.
	BaseBytes int64
	Modes     []Mode
	// Compared is whether the modes ran under Options.CompareOff.
	Compared bool
}

// Mode is the measurement of one checkpointing mode.
type Mode struct {
	Checkpointing bool
	// Paths is the list of optional paths that were off (CompareOff's
	// entry; "" for all on or for the backend as opened).
	Paths string
	// StepSeconds are the host-clock durations of the timed steps (each
	// Stepper.Step synchronises with the device once it has the loss).
	StepSeconds []float64
	// Median, Min and Max of StepSeconds.
	Median, Min, Max float64
	// SamplesPerSecond is every rank's samples of a step (Batch × Accum ×
	// Ranks) / Median; TFLOPs is FLOPs / Median / 1e12.
	SamplesPerSecond float64
	TFLOPs           float64
	// PeakBytes is the backend's peak allocated memory over the timed steps
	// (the peak counter is reset after the warm-up); ActivationBytes is
	// PeakBytes − BaseBytes, what the step itself adds at its highest.
	// ReservedBytes is what the backend holds from the device after the
	// timed steps (its cache included; cumulative across modes, since the
	// allocator keeps blocks for reuse).
	PeakBytes, ActivationBytes, ReservedBytes int64
	// EstimatedBytes is the trainer's memory plan for the mode's step
	// (newbie.EstimateTrain's total), beside the measured PeakBytes; 0
	// where it has none.
	EstimatedBytes int64
	// Loss is the last timed step's loss, a sanity check (finite); Losses
	// are every timed step's.
	Loss   float64
	Losses []float64
	// Graphs is what graph replay did over the timed steps.
	Graphs kernels.GraphStats
	// Profile is filled when Options.Profile is set.
	Profile *Profile
	// Err is the failure of this mode (e.g. out of memory), empty on
	// success; a failed mode does not stop the others.
	Err string
}

// Profile is where one training step goes, by backend op kind.
type Profile struct {
	// Ops is the number of backend ops one step issues (each at least one
	// kernel launch on the GPU; cuBLAS may launch more than one per Gemm).
	Ops int
	// QueueSeconds is the host time from the step's start to its first
	// wait for the device (the forward and backward being queued); a value
	// near the step time means the step is bound by the host, not the GPU.
	QueueSeconds float64
	// SyncedSeconds is the timed step's host time: with every op waited
	// for (the sum of the per-op times plus the host's own work), or, with
	// a device clock, with every op bracketed by device marks and graphs
	// off.
	SyncedSeconds float64
	// DeviceClock says the kinds' seconds are device time between marks
	// around each op (kernels.DeviceTimer); DeviceSeconds is then the
	// device time from the step's first mark to its last, and what the
	// kinds do not add up to is the device waiting for the host.
	DeviceClock   bool
	DeviceSeconds float64
	// Kinds are the per-kind counts and times, most time first.
	Kinds []OpKind
}

// OpKind is one kind of backend op within a profiled step.
type OpKind struct {
	Kind  string
	Count int
	// Seconds is the kind's device time between marks placed before and
	// after each op when the profile has a device clock; otherwise the
	// summed time from each op's call until the device has finished it
	// (a wait after every op, so it includes one launch and one wait per
	// op: an upper bound on the device time).
	Seconds float64
}

// Table formats the result as Markdown: a header of what was measured, one
// row per mode, then each mode's profile when there is one.
func (r Result) Table() string {
	var sb strings.Builder
	gib := func(n int64) string { return fmt.Sprintf("%.2f", float64(n)/(1<<30)) }
	fmt.Fprintf(&sb, "backend: %s\n", r.Backend)
	if r.Switches != "" {
		fmt.Fprintf(&sb, "switches: %s\n", r.Switches)
	}
	base := "bf16"
	if r.FP8Base {
		base = "fp8 (E4M3, per-row scales; norms and biases bf16)"
	}
	fmt.Fprintf(&sb, "model: %s (%d layers), %d frozen %s parameters; LoRA r%d α%g on %d layers (%d fp32 parameters); AdamW, clip 1.0, bf16 autocast\n",
		r.Preset, r.Layers, r.Params, base, r.Rank, r.Alpha, r.LoRALayers, r.LoRAParams)
	fmt.Fprintf(&sb, "input: batch %d, %d×%d image → latent %d×%d×%d (%d image tokens) + %d caption tokens\n",
		r.Batch, r.Resolution, r.Resolution, r.Latent[0], r.Latent[1], r.Latent[2], r.ImageTokens, r.CaptionTokens)
	if r.CheckpointBlocks > 0 && r.CheckpointBlocks < r.Blocks {
		fmt.Fprintf(&sb, "checkpointing on: %d of the %d blocks (--checkpoint-blocks)\n", r.CheckpointBlocks, r.Blocks)
	}
	if r.Plan != "" {
		fmt.Fprintf(&sb, "%s\n", r.Plan)
	}
	if r.RecomputeNorms {
		fmt.Fprintf(&sb, "the blocks' norms recomputed in the backward, not kept (--recompute-norms)\n")
	}
	if r.RecomputeFFNBlocks > 0 {
		fmt.Fprintf(&sb, "the feed-forward inputs of %d of the %d blocks recomputed in the backward (--recompute-ffn-blocks)\n", min(r.RecomputeFFNBlocks, r.Blocks), r.Blocks)
	}
	if r.Accum > 1 || r.Ranks > 1 {
		fmt.Fprintf(&sb, "step: %d micro-batch(es) on each of %d rank(s); samples/s counts all %d samples of a step, TFLOP/s is one GPU's\n", r.Accum, r.Ranks, r.Batch*r.Accum*r.Ranks)
	}
	fmt.Fprintf(&sb, "work: %.4g TFLOP per step (the PyTorch anchor's count); model built in %.1f s; %s GiB held before the first step\n\n",
		r.FLOPs/1e12, r.BuildSeconds, gib(r.BaseBytes))
	paths := func(run Mode) string {
		if !r.Compared {
			return ""
		}
		return "| " + pathsLabel(run.Paths) + " "
	}
	if r.Compared {
		sb.WriteString("| paths ")
	}
	sb.WriteString("| checkpointing | s/step (median) | min | max | samples/s | TFLOP/s | peak GiB | step's own GiB | reserved GiB | loss |\n")
	if r.Compared {
		sb.WriteString("| --- ")
	}
	sb.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, run := range r.Modes {
		if run.Err != "" && run.Median == 0 {
			fmt.Fprintf(&sb, "%s| %s | failed: %s | | | | | | | | |\n", paths(run), onOff(run.Checkpointing), run.Err)
			continue
		}
		fmt.Fprintf(&sb, "%s| %s | %.4f | %.4f | %.4f | %.3g | %.3g | %s | %s | %s | %.4f |\n",
			paths(run), onOff(run.Checkpointing), run.Median, run.Min, run.Max, run.SamplesPerSecond, run.TFLOPs,
			gib(run.PeakBytes), gib(run.ActivationBytes), gib(run.ReservedBytes), run.Loss)
	}
	for _, run := range r.Modes {
		if run.EstimatedBytes > 0 && run.PeakBytes > 0 {
			fmt.Fprintf(&sb, "\nmemory plan, %s: %s GiB estimated for a measured peak of %s GiB (×%.3f)\n", r.modeLabel(run),
				gib(run.EstimatedBytes), gib(run.PeakBytes), float64(run.EstimatedBytes)/float64(run.PeakBytes))
		}
	}
	for _, run := range r.Modes {
		if len(run.Losses) > 0 {
			fmt.Fprintf(&sb, "\nlosses, %s:", r.modeLabel(run))
			for _, l := range run.Losses {
				fmt.Fprintf(&sb, " %.9g", l)
			}
			sb.WriteString("\n")
		}
	}
	for _, run := range r.Modes {
		if run.Graphs != (kernels.GraphStats{}) {
			fmt.Fprintf(&sb, "\n%s, timed steps: %s\n", r.modeLabel(run), run.Graphs)
		}
	}
	for _, run := range r.Modes {
		if run.Err != "" && run.Median != 0 {
			fmt.Fprintf(&sb, "\n%s: %s\n", r.modeLabel(run), run.Err)
		}
		p := run.Profile
		if p == nil {
			continue
		}
		fmt.Fprintf(&sb, "\nprofile, %s: %d backend ops per step; host queues the forward and backward in %.3f s (step median %.3f s); %s\n\n",
			r.modeLabel(run), p.Ops, p.QueueSeconds, run.Median, p.clockText("step"))
		p.writeKinds(&sb)
	}
	return sb.String()
}

// clockText says how the profile's times were taken, for its heading.
func (p *Profile) clockText(what string) string {
	if p.DeviceClock {
		var busy float64
		for _, k := range p.Kinds {
			busy += k.Seconds
		}
		return fmt.Sprintf("timed by device events around each op (graphs off), the %s takes %.3f s of device time, %.3f s of it in ops", what, p.DeviceSeconds, busy)
	}
	return fmt.Sprintf("waiting after every op the %s takes %.3f s", what, p.SyncedSeconds)
}

// writeKinds writes the profile's per-kind table.
func (p *Profile) writeKinds(sb *strings.Builder) {
	var total float64
	for _, k := range p.Kinds {
		total += k.Seconds
	}
	unit := "time (s, op + wait)"
	if p.DeviceClock {
		unit = "device time (s)"
	}
	fmt.Fprintf(sb, "| op kind | count | %s | share |\n| --- | --- | --- | --- |\n", unit)
	for _, k := range p.Kinds {
		share := 0.0
		if total > 0 {
			share = k.Seconds / total
		}
		fmt.Fprintf(sb, "| %s | %d | %.4f | %.1f%% |\n", k.Kind, k.Count, k.Seconds, 100*share)
	}
}

// modeLabel names a mode in the lines after the table: "checkpointing
// on", with the paths that were off when the run compared them.
func (r Result) modeLabel(run Mode) string {
	l := "checkpointing " + onOff(run.Checkpointing)
	if r.Compared {
		l = pathsLabel(run.Paths) + ", " + l
	}
	return l
}
