package newbie

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// Options say how a Pipeline runs the encoders.
type Options struct {
	// TextDType is the storage and compute dtype of Gemma 3 and Jina CLIP
	// (default BF16, as NewBie runs them; F32 or F64 for checks).
	TextDType kernels.DType
	// VAEDType is the VAE's storage dtype (default F32) and VAEAutocast
	// the dtype its convolutions and attention run in (default BF16;
	// kernels.F32 turns autocast off).
	VAEDType, VAEAutocast kernels.DType
	// TextBatch is the most texts per forward pass (default 8), ImageBatch
	// the most images (default 1): they bound the activations.
	TextBatch, ImageBatch int
	// MaxImagePixels is the largest image (width × height) the VAE phase
	// will be given, which its memory estimate assumes (default 1024²);
	// MaxTextTokens the longest padded text batch the text phases' do
	// (default 512, Gemma's limit; Jina's is 2048). A larger batch is
	// checked again before it runs.
	MaxImagePixels, MaxTextTokens int
	// Budget, when positive, is the most device memory the phases may hold
	// (what was allocated before a phase counts against it); otherwise a
	// phase must fit the memory the device reports free, when it reports
	// it (kernels.DeviceMemory).
	Budget int64
	// Log, when set, gets a line as each phase starts (with its estimate)
	// and ends (with its time and measured peak).
	Log io.Writer
}

func (o Options) withDefaults() Options {
	if o.TextDType == 0 {
		o.TextDType = kernels.BF16
	}
	if o.VAEDType == 0 {
		o.VAEDType = kernels.F32
	}
	if o.VAEAutocast == 0 {
		o.VAEAutocast = kernels.BF16
	}
	if o.TextBatch <= 0 {
		o.TextBatch = 8
	}
	if o.ImageBatch <= 0 {
		o.ImageBatch = 1
	}
	if o.MaxImagePixels <= 0 {
		o.MaxImagePixels = 1024 * 1024
	}
	if o.MaxTextTokens <= 0 {
		o.MaxTextTokens = tokenizers.GemmaBatch.MaxLength
	}
	return o
}

// vaeAutocast is the autocast dtype vae.NewEncoder takes (0: off).
func (o Options) vaeAutocast() kernels.DType {
	if o.VAEAutocast == kernels.F32 || o.VAEAutocast == kernels.F64 {
		return 0
	}
	return o.VAEAutocast
}

// PhaseStats is what one phase did: one component resident from its load
// to its release.
type PhaseStats struct {
	Part Part
	// Items are the images or texts encoded; Batches the forward calls.
	Items, Batches int
	// Load is the time to load the weights, Run the time encoding.
	Load, Run time.Duration
	// Estimate is the plan's prediction, made before the phase started
	// for the largest batch the options allow; Largest is the same
	// estimate for the largest batch that actually ran, the one to compare
	// with Peak.
	Estimate, Largest Estimate
	// Base is what the device held when the phase started; Peak the
	// allocator's peak during the phase (Base included); Reserved what the
	// backend held from the device at its end, its cache included.
	Base, Peak, Reserved int64
}

// PhaseError is a phase refused before it started because its estimate
// exceeds the memory available.
type PhaseError struct {
	Estimate Estimate
	// Available is what the phase may use; Short how much it lacks.
	Available, Short int64
	// Where says what the limit is (the budget, or the device's free
	// memory).
	Where string
}

func (e *PhaseError) Error() string {
	return fmt.Sprintf("newbie: phase %s would need about %s but %s leaves %s: %s short (%s; a smaller batch or resolution lowers the activations)",
		e.Estimate.Phase, bytesText(e.Estimate.Total), e.Where, bytesText(e.Available), bytesText(e.Short), e.Estimate)
}

// Pipeline runs the cache step's encoders on one engine, one component at
// a time: a component is loaded when it is first asked to encode (or by
// WithVAE, WithGemma, WithJina) and freed — weights released, the
// engine's step ended so its autocast casts go too, the memory back in the
// backend's caching allocator — before another is loaded, so the step's
// peak is its largest phase, not the sum. Before each load the phase's
// peak is estimated (memory.go) and a phase that will not fit is refused
// with a *PhaseError. Each phase's time and measured peak (the allocator's
// counter, reset as the phase starts) are kept in Phases.
//
// The encoders the Pipeline hands out implement the data package's
// interfaces; their identities come from the files (content digests,
// tokenizer identities, dtypes), so a cache can compute every key before
// anything is loaded and never load an encoder whose outputs it already
// holds. A caller that alternates between encoders makes the pipeline
// reload them (PhaseStats shows each load); encode every text with one
// before the other.
//
// A Pipeline is used by one goroutine at a time, like its engine; end
// every phase (EndPhase or Close) before the engine is used for training:
// ending a phase ends the engine's step.
type Pipeline struct {
	e *ag.Engine
	m *Model
	o Options

	ids     map[Part]string // the encoders' identities
	digests map[Part]string // the weights' content digests

	mu       sync.Mutex
	resident Part
	cur      *PhaseStats
	phases   []PhaseStats

	vaeModel *vae.VAE
	vaeEnc   *vae.Encoder
	gemma    *textenc.Gemma
	gemmaEnc *GemmaEncoder
	jina     *textenc.Jina
	jinaEnc  *JinaEncoder

	trunc map[Part]Truncations
}

// NewPipeline prepares the encoders of a discovered model on e's backend.
// The VAE, both text encoders and both tokenizers must be present. It
// reads every weight file once to compute the encoders' identities.
func NewPipeline(e *ag.Engine, m *Model, o Options) (*Pipeline, error) {
	if err := m.Require(EncoderParts...); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	p := &Pipeline{e: e, m: m, o: o, ids: map[Part]string{}, digests: map[Part]string{}, trunc: map[Part]Truncations{}}
	for _, part := range []Part{PartVAE, PartGemma, PartJina} {
		w := p.weights(part)
		d, err := digestFiles(w.Files)
		if err != nil {
			return nil, err
		}
		p.digests[part] = d
		switch part {
		case PartVAE:
			ac := "off"
			if a := o.vaeAutocast(); a != 0 {
				ac = a.String()
			}
			p.ids[part] = fmt.Sprintf("flux-vae/config=%s/weights=%s/dtype=%v/autocast=%s", shortHash(m.VAE.Arch.JSON()), d, o.VAEDType, ac)
		case PartGemma:
			p.ids[part] = gemmaIdentity(m.Gemma.Arch, o.TextDType, d, m.GemmaTokenizer.Identity)
		case PartJina:
			p.ids[part] = jinaIdentity(m.Jina.Arch, m.Jina.Arch.DefaultTask, o.TextDType, d, m.JinaTokenizer.Identity)
		}
	}
	return p, nil
}

// weights is a weights part's description.
func (p *Pipeline) weights(part Part) *Weights { return p.m.PartWeights(part) }

// phaseName names a part's phase.
func phaseName(part Part) string {
	return map[Part]string{PartVAE: "encode-vae", PartGemma: "encode-gemma", PartJina: "encode-jina"}[part]
}

// Identity is the identity of a part's encoder (see the data package's
// encoder interfaces), known without loading it.
func (p *Pipeline) Identity(part Part) string { return p.ids[part] }

// Plan returns the estimate of a part's phase with the pipeline's options
// (the largest batch it will be given).
func (p *Pipeline) Plan(part Part) Estimate {
	r := RounderOf(p.e.Backend())
	switch part {
	case PartVAE:
		side := 1
		for side*side < p.o.MaxImagePixels {
			side++
		}
		return EstimateVAEEncode(p.m.VAE.Arch, p.o.VAEDType, p.o.vaeAutocast(), p.o.ImageBatch, side, side, r)
	}
	return p.planText(part, p.o.TextBatch, p.o.MaxTextTokens)
}

// planText estimates a text phase for batches of texts × tokens (at most
// the encoder's own limit).
func (p *Pipeline) planText(part Part, texts, tokens int) Estimate {
	r := RounderOf(p.e.Backend())
	if part == PartGemma {
		return EstimateGemma(p.m.Gemma.Arch, p.o.TextDType, texts, min(tokens, tokenizers.GemmaBatch.MaxLength), r)
	}
	return EstimateJina(p.m.Jina.Arch, p.o.TextDType, texts, min(tokens, tokenizers.JinaBatch.MaxLength), r)
}

// textGuard re-checks a text batch longer than the plan assumed before it
// runs: its activations (the weights are resident) against what is free.
func (p *Pipeline) textGuard(part Part) func(texts, tokens int) error {
	return func(texts, tokens int) error {
		est := p.planText(part, texts, tokens)
		p.seen(est) // called inside run, which holds p.mu
		if tokens <= p.o.MaxTextTokens && texts <= p.o.TextBatch {
			return nil
		}
		est.Total -= est.Weights
		est.Weights = 0
		return Check(p.e.Backend(), p.o.Budget, est)
	}
}

// seen keeps the largest batch's estimate of the current phase. Callers
// hold p.mu.
func (p *Pipeline) seen(est Estimate) {
	if p.cur != nil && est.Total > p.cur.Largest.Total {
		p.cur.Largest = est
	}
}

// Available is the device memory a phase may use now, and what limits it;
// ok is false when nothing limits it (no budget, a backend that reports no
// device memory).
func Available(b kernels.Backend, budget int64) (avail int64, where string, ok bool, err error) {
	ms := b.MemStats()
	if budget > 0 {
		return budget - ms.Allocated, fmt.Sprintf("the budget of %s (%s already held)", bytesText(budget), bytesText(ms.Allocated)), true, nil
	}
	dm, has := b.(kernels.DeviceMemory)
	if !has {
		return 0, "", false, nil
	}
	free, total, err := dm.DeviceMemory()
	if err != nil {
		return 0, "", false, err
	}
	cached := ms.Reserved - ms.Allocated
	return free + cached, fmt.Sprintf("%s (%s of %s free, %s cached by the allocator)", b.Name(), bytesText(free), bytesText(total), bytesText(cached)), true, nil
}

// Check refuses an estimate that does not fit the device: a *PhaseError
// saying which phase and by how much, or nil.
func Check(b kernels.Backend, budget int64, est Estimate) error {
	avail, where, ok, err := Available(b, budget)
	if err != nil {
		return fmt.Errorf("newbie: phase %s: reading the device's free memory: %w", est.Phase, err)
	}
	if ok && est.Total > avail {
		return &PhaseError{Estimate: est, Available: avail, Short: est.Total - avail, Where: where}
	}
	return nil
}

// begin makes part the resident component, ending another's phase first.
// Callers hold p.mu.
func (p *Pipeline) begin(part Part) error {
	if p.resident == part {
		return nil
	}
	if err := p.endLocked(); err != nil {
		return err
	}
	be := p.e.Backend()
	est := p.Plan(part)
	if err := Check(be, p.o.Budget, est); err != nil {
		return err
	}
	if p.o.Log != nil {
		fmt.Fprintf(p.o.Log, "phase %s: loading %s, estimated peak %s\n", est.Phase, p.weights(part).Path, est)
	}
	st := &PhaseStats{Part: part, Estimate: est, Base: be.MemStats().Allocated}
	be.ResetPeak()
	t0 := time.Now()
	if err := p.load(part); err != nil {
		p.e.EndStep()
		return err
	}
	st.Load = time.Since(t0)
	p.resident, p.cur = part, st
	return nil
}

// load builds part's model and adapter on the engine.
func (p *Pipeline) load(part Part) error {
	e, o := p.e, p.o
	switch part {
	case PartVAE:
		m, err := vae.Load(e, p.m.VAE.Path, vae.Options{DType: o.VAEDType})
		if err != nil {
			return err
		}
		enc, err := vae.NewEncoder(m, o.vaeAutocast(), o.ImageBatch)
		if err != nil {
			m.Release()
			return err
		}
		p.vaeModel, p.vaeEnc = m, enc
	case PartGemma:
		g, err := textenc.Load(e, p.m.Gemma.Path, textenc.Options{DType: o.TextDType})
		if err != nil {
			return err
		}
		enc, err := NewGemmaEncoder(g, p.m.GemmaTokenizer.Tokenizer, TextOptions{Batch: o.TextBatch, Weights: p.digests[PartGemma], Source: p.m.Gemma.Path, Guard: p.textGuard(PartGemma)})
		if err != nil {
			g.Release()
			return err
		}
		p.gemma, p.gemmaEnc = g, enc
	case PartJina:
		j, err := textenc.LoadJina(e, p.m.Jina.Path, textenc.JinaOptions{DType: o.TextDType})
		if err != nil {
			return err
		}
		enc, err := NewJinaEncoder(j, p.m.JinaTokenizer.Tokenizer, TextOptions{Batch: o.TextBatch, Weights: p.digests[PartJina], Source: p.m.Jina.Path, Guard: p.textGuard(PartJina)})
		if err != nil {
			j.Release()
			return err
		}
		p.jina, p.jinaEnc = j, enc
	}
	return nil
}

// EndPhase frees the resident component, if any, and records its phase.
func (p *Pipeline) EndPhase() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.endLocked()
}

// Close ends the current phase; the pipeline may be used again after.
func (p *Pipeline) Close() error { return p.EndPhase() }

func (p *Pipeline) endLocked() error {
	if p.resident == "" {
		return nil
	}
	be := p.e.Backend()
	st := p.cur
	ms := be.MemStats()
	st.Peak, st.Reserved = ms.Peak, ms.Reserved
	var sum Truncations
	switch p.resident {
	case PartVAE:
		p.vaeModel.Release()
		p.vaeModel, p.vaeEnc = nil, nil
	case PartGemma:
		sum = p.gemmaEnc.Truncations()
		p.gemma.Release()
		p.gemma, p.gemmaEnc = nil, nil
	case PartJina:
		sum = p.jinaEnc.Truncations()
		p.jina.Release()
		p.jina, p.jinaEnc = nil, nil
	}
	if sum.Encoder != "" {
		t := p.trunc[p.resident]
		t.Encoder, t.Limit = sum.Encoder, sum.Limit
		t.Texts += sum.Texts
		t.Truncated += sum.Truncated
		t.Longest = max(t.Longest, sum.Longest)
		p.trunc[p.resident] = t
	}
	p.phases = append(p.phases, *st)
	p.resident, p.cur = "", nil
	err := p.e.EndStep() // the autocast weight casts and any leftovers go too
	if p.o.Log != nil {
		fmt.Fprintf(p.o.Log, "phase %s: %d items in %.1fs (load %.1fs), peak %s (estimated %s above %s held before)\n",
			st.Estimate.Phase, st.Items, st.Run.Seconds(), st.Load.Seconds(), bytesText(st.Peak), bytesText(st.Estimate.Total), bytesText(st.Base))
	}
	if err != nil {
		return fmt.Errorf("newbie: ending phase %s: %w", st.Estimate.Phase, err)
	}
	return nil
}

// Phases returns the phases run so far, in order (the resident one not
// yet among them).
func (p *Pipeline) Phases() []PhaseStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]PhaseStats(nil), p.phases...)
}

// Truncations reports, per text encoder, the texts cut to its token limit
// over every phase so far, for one warning each (Truncations.Warning).
func (p *Pipeline) Truncations() []Truncations {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Truncations
	for _, part := range []Part{PartGemma, PartJina} {
		t := p.trunc[part]
		switch {
		case p.resident == part && part == PartGemma:
			t = mergeTrunc(t, p.gemmaEnc.Truncations())
		case p.resident == part && part == PartJina:
			t = mergeTrunc(t, p.jinaEnc.Truncations())
		}
		if t.Encoder != "" {
			out = append(out, t)
		}
	}
	return out
}

func mergeTrunc(a, b Truncations) Truncations {
	a.Encoder, a.Limit = b.Encoder, b.Limit
	a.Texts += b.Texts
	a.Truncated += b.Truncated
	a.Longest = max(a.Longest, b.Longest)
	return a
}

// run encodes under the part's phase, loading it first when needed, and
// counts the work.
func (p *Pipeline) run(part Part, items int, f func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(part); err != nil {
		return err
	}
	t0 := time.Now()
	err := f()
	p.cur.Run += time.Since(t0)
	p.cur.Items += items
	p.cur.Batches++
	return err
}

// ImageEncoder is the VAE as the cache's data.ImageEncoder, loaded when
// first asked to encode.
func (p *Pipeline) ImageEncoder() data.ImageEncoder { return lazyImage{p} }

// TextEncoders are Gemma 3 and Jina CLIP as the cache's
// data.TextEncoders, each loaded when first asked to encode.
func (p *Pipeline) TextEncoders() data.TextEncoders {
	return data.TextEncoders{Features: lazyText{p, PartGemma}, Pooled: lazyText{p, PartJina}}
}

// lazyImage is the VAE phase's data.ImageEncoder.
type lazyImage struct{ p *Pipeline }

// Identity implements data.ImageEncoder.
func (l lazyImage) Identity() string { return l.p.ids[PartVAE] }

// LatentChannels implements data.ImageEncoder.
func (l lazyImage) LatentChannels() int { return l.p.m.VAE.Arch.LatentChannels }

// Downsample implements data.ImageEncoder.
func (l lazyImage) Downsample() int { return l.p.m.VAE.Arch.Downsample() }

// EncodeImages implements data.ImageEncoder.
func (l lazyImage) EncodeImages(ctx context.Context, imgs []data.RGB) ([]data.Latent, error) {
	if len(imgs) == 0 {
		return nil, nil
	}
	if err := l.p.checkImages(len(imgs), imgs[0].W*imgs[0].H); err != nil {
		return nil, err
	}
	var out []data.Latent
	err := l.p.run(PartVAE, len(imgs), func() error {
		o := l.p.o
		l.p.seen(EstimateVAEEncode(l.p.m.VAE.Arch, o.VAEDType, o.vaeAutocast(), min(len(imgs), o.ImageBatch), imgs[0].H, imgs[0].W, RounderOf(l.p.e.Backend())))
		var err error
		out, err = l.p.vaeEnc.EncodeImages(ctx, imgs)
		return err
	})
	return out, err
}

// checkImages re-checks the VAE phase's estimate for images larger than
// the plan assumed, before they run.
func (p *Pipeline) checkImages(n, px int) error {
	if px <= p.o.MaxImagePixels {
		return nil
	}
	side := 1
	for side*side < px {
		side++
	}
	est := EstimateVAEEncode(p.m.VAE.Arch, p.o.VAEDType, p.o.vaeAutocast(), min(n, p.o.ImageBatch), side, side, RounderOf(p.e.Backend()))
	p.mu.Lock()
	resident := p.resident == PartVAE
	p.mu.Unlock()
	if resident {
		// the weights are held already: only the activations are new
		est.Total -= est.Weights
		est.Weights = 0
	}
	return Check(p.e.Backend(), p.o.Budget, est)
}

// lazyText is a text phase's data.TextEncoder.
type lazyText struct {
	p    *Pipeline
	kind Part
}

// Identity implements data.TextEncoder.
func (l lazyText) Identity() string { return l.p.ids[l.kind] }

// EncodeTexts implements data.TextEncoder.
func (l lazyText) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	if len(texts) == 0 {
		return nil, nil
	}
	var out []data.TextEncoding
	err := l.p.run(l.kind, len(texts), func() error {
		var err error
		if l.kind == PartGemma {
			out, err = l.p.gemmaEnc.EncodeTexts(ctx, texts)
		} else {
			out, err = l.p.jinaEnc.EncodeTexts(ctx, texts)
		}
		return err
	})
	return out, err
}

// WithVAE runs one VAE phase: loads the VAE (after the memory check),
// gives work its encoder, and frees it when work returns.
func (p *Pipeline) WithVAE(work func(data.ImageEncoder) error) error {
	return p.with(PartVAE, func() error { return work(p.ImageEncoder()) })
}

// WithGemma runs one Gemma 3 phase (see WithVAE).
func (p *Pipeline) WithGemma(work func(data.TextEncoder) error) error {
	return p.with(PartGemma, func() error { return work(p.TextEncoders().Features) })
}

// WithJina runs one Jina CLIP phase (see WithVAE).
func (p *Pipeline) WithJina(work func(data.TextEncoder) error) error {
	return p.with(PartJina, func() error { return work(p.TextEncoders().Pooled) })
}

func (p *Pipeline) with(part Part, work func() error) error {
	p.mu.Lock()
	err := p.begin(part)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	werr := work()
	return errors.Join(werr, p.EndPhase())
}

// The lazy encoders are what the cache takes.
var (
	_ data.ImageEncoder = lazyImage{}
	_ data.TextEncoder  = lazyText{}
)
