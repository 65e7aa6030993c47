package data

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Cursor is a position in the loader's batch sequence. The training state
// saves the cursor of the next batch; a loader started from it yields exactly
// the batches the interrupted run would have seen next.
type Cursor struct {
	// Fingerprint ties the cursor to one encoded dataset and batch size;
	// resuming against a different one is refused rather than silently
	// yielding a different sequence.
	Fingerprint string `json:"fingerprint"`
	Seed        uint64 `json:"seed"`
	Epoch       int    `json:"epoch"`
	Batch       int    `json:"batch"`
}

// Sample describes one element of a batch: which image and which of its
// pre-encoded variants.
type Sample struct {
	Image          string
	Caption        string // the caption text used ("" when dropped)
	CaptionVariant int
	CropVariant    int
	Dropped        bool // caption dropout chose the empty caption
	Flipped        bool // flip augmentation chose the mirrored crop
}

// Batch is one bucket-pure training batch in host memory.
type Batch struct {
	// Cursor is this batch's position; Next the position after it.
	Cursor, Next Cursor
	Bucket       Bucket
	Samples      []Sample
	// Latents is [B, C, LH, LW].
	Latents   []float32
	C, LH, LW int
	// Features is [B, Tokens, Dim], zero-padded after each sample's own
	// tokens; Mask is [B, Tokens] (1 = real token).
	Features    []float32
	Mask        []int32
	Tokens, Dim int
	// Pooled is [B, PooledDim].
	Pooled    []float32
	PooledDim int
}

// sampleRef is one draw of an epoch: an item and its position in the
// epoch's shuffled order (the key of its augmentation choices).
type sampleRef struct {
	item, pos int
}

type plannedBatch struct {
	bucket  Bucket
	samples []sampleRef
}

// epochPlan lays out one epoch: every item repeated, shuffled by a stream
// keyed by (seed, epoch), then dealt in that order into per-bucket batches,
// each emitted as soon as it is full; leftovers follow in the order their
// buckets first appeared. The plan is a pure function of (dataset, seed,
// epoch): the loader recomputes it on resume instead of saving it.
func epochPlan(enc *Encoded, seed uint64, epoch int) []plannedBatch {
	var refs []sampleRef
	for i, ei := range enc.Items {
		for r := 0; r < ei.Item.Repeats; r++ {
			refs = append(refs, sampleRef{item: i})
		}
	}
	r := newRNG(seed, "epoch", strconv.Itoa(epoch))
	r.shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
	bs := enc.Options.Loader.BatchSize
	queues := map[Bucket][]sampleRef{}
	var order []Bucket
	var out []plannedBatch
	for pos := range refs {
		refs[pos].pos = pos
		b := enc.Items[refs[pos].item].Item.Bucket
		if _, ok := queues[b]; !ok {
			order = append(order, b)
		}
		queues[b] = append(queues[b], refs[pos])
		if len(queues[b]) == bs {
			out = append(out, plannedBatch{b, queues[b]})
			queues[b] = []sampleRef{}
		}
	}
	if !enc.Options.Loader.DropLast {
		for _, b := range order {
			if len(queues[b]) > 0 {
				out = append(out, plannedBatch{b, queues[b]})
			}
		}
	}
	return out
}

// EpochBatches counts the batches an epoch of items makes under o, and how
// many batches have each size: batches hold one bucket, so every bucket
// ends in a partial batch unless its sample count (repeats included) is a
// multiple of the batch size, or drop_last drops it. The order of an epoch
// changes neither, so both are known right after the scan, before anything
// is encoded.
func EpochBatches(items []*Item, o LoaderOptions) (batches int, sizes map[int]int) {
	perBucket := map[Bucket]int{}
	for _, it := range items {
		perBucket[it.Bucket] += it.Repeats
	}
	bs := max(o.BatchSize, 1)
	sizes = map[int]int{}
	for _, n := range perBucket {
		if full := n / bs; full > 0 {
			sizes[bs] += full
		}
		if rest := n % bs; rest > 0 && !o.DropLast {
			sizes[rest]++
		}
	}
	for _, c := range sizes {
		batches += c
	}
	return batches, sizes
}

// Loader yields batches in a fixed order, prefetching on a goroutine.
type Loader struct {
	enc     *Encoded
	seed    uint64
	perEp   int
	start   Cursor
	take    func(i int64) bool
	next    Cursor
	ch      chan loaded
	cancel  context.CancelFunc
	done    chan struct{}
	lastErr error
}

type loaded struct {
	b   *Batch
	err error
}

// NewLoader starts a loader at from. A zero cursor (empty fingerprint)
// starts at the beginning with seed enc.Options.Seed; a saved cursor must
// carry enc's fingerprint.
func NewLoader(enc *Encoded, from Cursor) (*Loader, error) {
	return NewShardLoader(enc, from, nil)
}

// NewShardLoader is NewLoader for one rank of a data-parallel job: of the
// batch sequence from `from` on — the same sequence on every rank — it
// yields only the batches take accepts, take(i) being asked for the i-th
// batch counted from from (0, 1, …), and skips the others without reading
// their files. A nil take yields every batch.
func NewShardLoader(enc *Encoded, from Cursor, take func(i int64) bool) (*Loader, error) {
	if enc == nil || len(enc.Items) == 0 {
		return nil, errors.New("data: loader: empty dataset")
	}
	if from.Fingerprint == "" {
		from = Cursor{Fingerprint: enc.Fingerprint, Seed: enc.Options.Seed}
	}
	if from.Fingerprint != enc.Fingerprint {
		return nil, fmt.Errorf("data: loader: cursor belongs to dataset %s but the cache now holds %s (images, captions, settings or batch size changed); the batch sequence cannot be resumed", from.Fingerprint, enc.Fingerprint)
	}
	if from.Epoch < 0 || from.Batch < 0 {
		return nil, fmt.Errorf("data: loader: invalid cursor epoch %d batch %d", from.Epoch, from.Batch)
	}
	perEp := len(epochPlan(enc, from.Seed, 0))
	if perEp == 0 {
		return nil, fmt.Errorf("data: loader: no full batch of %d in any bucket and drop_last is on", enc.Options.Loader.BatchSize)
	}
	from = normalise(from, perEp)
	ctx, cancel := context.WithCancel(context.Background())
	l := &Loader{enc: enc, seed: from.Seed, perEp: perEp, start: from, take: take, next: from, ch: make(chan loaded, max(enc.Options.Loader.Prefetch-1, 0)), cancel: cancel, done: make(chan struct{})}
	go l.produce(ctx, from)
	return l, nil
}

func normalise(c Cursor, perEp int) Cursor {
	c.Epoch += c.Batch / perEp
	c.Batch %= perEp
	return c
}

// BatchesPerEpoch is the number of batches in every epoch.
func (l *Loader) BatchesPerEpoch() int { return l.perEp }

// Cursor is the position after the last batch Next returned (the start
// before the first): for a loader that takes every batch, the position of
// the batch the next call returns.
func (l *Loader) Cursor() Cursor { return l.next }

// After is the position n batches after the loader's start, skipped
// batches counted: where a data-parallel step leaves the run once its
// ranks have taken n batches of the sequence between them.
func (l *Loader) After(n int64) Cursor {
	c := l.start
	pos := int64(c.Epoch)*int64(l.perEp) + int64(c.Batch) + n
	c.Epoch, c.Batch = int(pos/int64(l.perEp)), int(pos%int64(l.perEp))
	return c
}

// Next returns the next batch. After an error (a damaged cache file) the
// loader is finished and returns the same error.
func (l *Loader) Next() (*Batch, error) {
	if l.lastErr != nil {
		return nil, l.lastErr
	}
	r, ok := <-l.ch
	if !ok {
		l.lastErr = errors.New("data: loader is closed")
		return nil, l.lastErr
	}
	if r.err != nil {
		l.lastErr = r.err
		return nil, r.err
	}
	l.next = r.b.Next
	return r.b, nil
}

// Close stops the prefetching goroutine and waits for it.
func (l *Loader) Close() {
	l.cancel()
	for range l.ch { // unblock a producer waiting to send
	}
	<-l.done
}

func (l *Loader) produce(ctx context.Context, c Cursor) {
	defer close(l.done)
	defer close(l.ch)
	plan, planEpoch := []plannedBatch(nil), -1
	for i := int64(0); ; i++ {
		next := normalise(Cursor{Fingerprint: c.Fingerprint, Seed: c.Seed, Epoch: c.Epoch, Batch: c.Batch + 1}, l.perEp)
		if l.take != nil && !l.take(i) {
			if ctx.Err() != nil {
				return
			}
			c = next
			continue
		}
		if planEpoch != c.Epoch {
			plan, planEpoch = epochPlan(l.enc, l.seed, c.Epoch), c.Epoch
		}
		b, err := l.assemble(plan[c.Batch], c, next)
		select {
		case l.ch <- loaded{b, err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
		c = next
	}
}

// assemble loads one planned batch from the cache. Augmentation choices
// (caption dropout, caption variant, crop variant) come from a stream keyed
// by (seed, epoch, position in the epoch's order).
func (l *Loader) assemble(pb plannedBatch, c, next Cursor) (*Batch, error) {
	o := l.enc.Options
	b := &Batch{Cursor: c, Next: next, Bucket: pb.bucket}
	var texts []TextEncoding
	for _, ref := range pb.samples {
		ei := l.enc.Items[ref.item]
		r := newRNG(l.seed, "sample", strconv.Itoa(c.Epoch), strconv.Itoa(ref.pos))
		s := Sample{Image: ei.Item.Path}
		s.Dropped = o.Caption.CaptionDropout > 0 && r.float64() < o.Caption.CaptionDropout
		s.CaptionVariant = r.intn(len(ei.Features))
		s.CropVariant = r.intn(len(ei.Latents))
		latentFile := ei.Latents[s.CropVariant]
		if len(ei.Flipped) > 0 {
			// Drawn after the other choices, so turning flip on leaves
			// every earlier choice of the stream as it was.
			if s.Flipped = r.float64() < 0.5; s.Flipped {
				latentFile = ei.Flipped[s.CropVariant]
			}
		}
		textFile, pooledFile := ei.Features[s.CaptionVariant], ei.Pooled[s.CaptionVariant]
		if s.Dropped {
			textFile = l.enc.EmptyFeatures
			if l.enc.EmptyPooled != "" {
				pooledFile = l.enc.EmptyPooled
			}
		} else {
			s.Caption = ei.Captions[s.CaptionVariant]
		}
		lat, err := LoadLatent(latentFile)
		if err != nil {
			return nil, err
		}
		if len(b.Samples) == 0 {
			b.C, b.LH, b.LW = lat.C, lat.H, lat.W
		} else if lat.C != b.C || lat.H != b.LH || lat.W != b.LW {
			return nil, fmt.Errorf("data: %s: latent %dx%dx%d differs from its batch's %dx%dx%d", latentFile, lat.C, lat.H, lat.W, b.C, b.LH, b.LW)
		}
		b.Latents = append(b.Latents, lat.Data...)
		te, err := LoadFeatures(textFile)
		if err != nil {
			return nil, err
		}
		if te.Pooled, err = LoadPooled(pooledFile); err != nil {
			return nil, err
		}
		if len(texts) > 0 && (te.Dim != texts[0].Dim || len(te.Pooled) != len(texts[0].Pooled)) {
			return nil, fmt.Errorf("data: %s: text widths %d/%d differ from its batch's %d/%d", textFile, te.Dim, len(te.Pooled), texts[0].Dim, len(texts[0].Pooled))
		}
		texts = append(texts, te)
		b.Samples = append(b.Samples, s)
	}
	for _, t := range texts {
		b.Tokens = max(b.Tokens, t.Tokens)
	}
	b.Dim, b.PooledDim = texts[0].Dim, len(texts[0].Pooled)
	n := len(texts)
	b.Features = make([]float32, n*b.Tokens*b.Dim)
	b.Mask = make([]int32, n*b.Tokens)
	for i, t := range texts {
		copy(b.Features[i*b.Tokens*b.Dim:], t.Features)
		copy(b.Mask[i*b.Tokens:], t.Mask)
		b.Pooled = append(b.Pooled, t.Pooled...)
	}
	return b, nil
}
