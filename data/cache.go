package data

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// cacheVersion is part of every key: bump it when the file layout or the
// preprocessing changes meaning, and every old entry is re-encoded.
const cacheVersion = "newbie-cache-v2"

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// EncodedItem is one image's place in the cache.
type EncodedItem struct {
	Item *Item
	// Latents holds one cache file per crop variant.
	Latents []string
	// Flipped holds the mirrored crops' files, parallel to Latents (empty
	// without flip augmentation).
	Flipped []string
	// Features and Pooled hold, per caption variant, the cache file of the
	// feature encoder's output and of the pooled encoder's; Captions the
	// texts. The three are parallel.
	Features []string
	Pooled   []string
	Captions []string
}

// Encoded is a dataset whose every sample is in the cache: what the Loader
// reads.
type Encoded struct {
	Items []EncodedItem
	// EmptyFeatures is the feature cache file of the empty caption, shared
	// by every caption-dropout sample ("" when caption dropout is off).
	EmptyFeatures string
	// EmptyPooled is the pooled cache file of the empty caption, set only
	// when the dropout mode blanks both encoders (DropoutBlanksBoth); by
	// default a dropped sample keeps its caption's pooled vector.
	EmptyPooled string
	// Fingerprint identifies the exact set of cache entries; a loader cursor
	// saved under one fingerprint refuses to resume under another.
	Fingerprint string
	Options     Options
}

// CacheStats counts what a build did.
type CacheStats struct {
	LatentsEncoded, LatentsReused   int
	FeaturesEncoded, FeaturesReused int
	PooledEncoded, PooledReused     int
	// Damaged lists cache files found damaged and re-encoded.
	Damaged []string
	// Skipped lists images that failed to decode at encode time (only
	// possible with SkipDeepValidate) and were left out.
	Skipped []Problem
}

// The cache build's phases, in the order they run (Progress.Phase).
const (
	PhaseLatents  = "latents"
	PhaseFeatures = "features"
	PhasePooled   = "pooled"
)

// Progress is a snapshot of one phase of the cache build for a progress
// bar. Done, Total and ETA count that phase only: each phase runs its own
// encoder at its own rate.
type Progress struct {
	Phase           string
	Done, Total     int
	Encoded, Reused int
	Elapsed, ETA    time.Duration
	Current         string // the file or caption being worked on
}

// String draws a one-line bar: "latents [#########-----------] 45/100  45%  enc 40 reused 5  ETA 1m2s".
func (p Progress) String() string {
	const width = 24
	frac := 1.0
	if p.Total > 0 {
		frac = float64(p.Done) / float64(p.Total)
	}
	n := int(frac * width)
	eta := "--"
	if p.Done > 0 && p.Done < p.Total {
		eta = p.ETA.Round(time.Second).String()
	} else if p.Done == p.Total {
		eta = "0s"
	}
	return fmt.Sprintf("%s [%s%s] %d/%d %3.0f%%  enc %d reused %d  ETA %s", p.Phase, strings.Repeat("#", n), strings.Repeat("-", width-n), p.Done, p.Total, 100*frac, p.Encoded, p.Reused, eta)
}

// CacheBuilder runs the encoders over a dataset and stores the results.
type CacheBuilder struct {
	VAE  ImageEncoder
	Text TextEncoders
	// Progress, when set, is called after every entry (from one goroutine).
	Progress func(Progress)
	// Warn, when set, receives warnings (damaged files); they are also in
	// CacheStats.
	Warn func(string)
	// ImageBatch is how many same-bucket images go to the image encoder in
	// one call (a GPU VAE is faster on batches; host memory grows with it).
	// Default 1.
	ImageBatch int
}

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (o Options) cacheDType() safetensors.DType {
	if o.CacheBF16 {
		return safetensors.BF16
	}
	return safetensors.F32
}

// latentJob / textJob are unique units of encoding work.
type latentJob struct {
	key  string
	item *Item
	crop CropWindow
	flip bool
}

// textJob is one entry of a text phase: kind is "features" or "pooled".
type textJob struct {
	kind, key, caption string
}

func (b CacheBuilder) latentKey(o Options, it *Item, crop CropWindow, flip bool) string {
	parts := []string{cacheVersion, "latent", it.Hash, b.VAE.Identity(), it.Bucket.String(), crop.String(), resizeFilterID, string(o.Alpha), string(o.cacheDType())}
	if flip {
		parts = append(parts, "mirrored")
	}
	return digest(parts...)
}

// featuresKey and pooledKey name the two text entries apart, so changing one
// encoder re-encodes only its own entries. Each key covers exactly the text
// its encoder sees.
func (b CacheBuilder) featuresKey(o Options, caption string) string {
	return digest(cacheVersion, kindFeatures, FeatureText(o.Caption.SystemPrompt, caption), b.Text.Features.Identity(), string(o.cacheDType()))
}

func (b CacheBuilder) pooledKey(caption string) string {
	return digest(cacheVersion, kindPooled, PooledText(caption), b.Text.Pooled.Identity())
}

// The kinds of cache entry; each kind has its own folder of the same name
// (latents live in "latents").
const (
	kindLatent   = "latent"
	kindFeatures = "features"
	kindPooled   = "pooled"
)

// plan computes every cache file the dataset needs, without encoding.
func (b CacheBuilder) plan(ds *Dataset) (*Encoded, []latentJob, []textJob, []textJob, error) {
	if b.VAE == nil || b.Text.Features == nil || b.Text.Pooled == nil {
		return nil, nil, nil, nil, errors.New("data: cache needs an image encoder and both text encoders")
	}
	if ds == nil || len(ds.Items) == 0 {
		return nil, nil, nil, nil, errors.New("data: cache: empty dataset")
	}
	o := ds.Options
	if o.CacheDir == "" {
		return nil, nil, nil, nil, errors.New("data: no cache directory set (Options.CacheDir)")
	}
	enc := &Encoded{Options: o}
	seenL, seenF, seenP := map[string]bool{}, map[string]bool{}, map[string]bool{}
	var lj []latentJob
	var fj, pj []textJob
	// addText records caption's features and pooled entries (once per key)
	// and returns their files.
	addText := func(caption string) (feat, pool string) {
		fk, pk := b.featuresKey(o, caption), b.pooledKey(caption)
		if !seenF[fk] {
			seenF[fk] = true
			fj = append(fj, textJob{kindFeatures, fk, caption})
		}
		if !seenP[pk] {
			seenP[pk] = true
			pj = append(pj, textJob{kindPooled, pk, caption})
		}
		return textPath(o, kindFeatures, fk), textPath(o, kindPooled, pk)
	}
	var all []string
	for _, it := range ds.Items {
		ei := EncodedItem{Item: it}
		all = append(all, "repeats="+strconv.Itoa(it.Repeats))
		for v := 0; v < o.Buckets.CropVariants; v++ {
			crop := cropWindow(it.Width, it.Height, it.Bucket, o.Buckets.RandomCrop, o.Seed, it.Hash, v)
			for _, flip := range []bool{false, true} {
				if flip && !o.Flip {
					continue
				}
				k := b.latentKey(o, it, crop, flip)
				p := latentPath(o, k)
				if flip {
					ei.Flipped = append(ei.Flipped, p)
				} else {
					ei.Latents = append(ei.Latents, p)
				}
				if !seenL[k] {
					seenL[k] = true
					lj = append(lj, latentJob{k, it, crop, flip})
				}
				all = append(all, k)
			}
		}
		for _, c := range it.Caption.Variants(o.Caption, o.Seed, it.Hash) {
			fp, pp := addText(c)
			ei.Features = append(ei.Features, fp)
			ei.Pooled = append(ei.Pooled, pp)
			ei.Captions = append(ei.Captions, c)
			all = append(all, keyOf(fp), keyOf(pp))
		}
		enc.Items = append(enc.Items, ei)
	}
	if o.Caption.CaptionDropout > 0 {
		// The empty caption is encoded once; its pooled entry is needed
		// only when dropout blanks both encoders.
		fk := b.featuresKey(o, "")
		enc.EmptyFeatures = textPath(o, kindFeatures, fk)
		if !seenF[fk] {
			seenF[fk] = true
			fj = append(fj, textJob{kindFeatures, fk, ""})
		}
		all = append(all, fk)
		if o.Caption.DropoutBlanks == DropoutBlanksBoth {
			pk := b.pooledKey("")
			enc.EmptyPooled = textPath(o, kindPooled, pk)
			if !seenP[pk] {
				seenP[pk] = true
				pj = append(pj, textJob{kindPooled, pk, ""})
			}
			all = append(all, pk)
		}
	}
	// Everything the batch sequence depends on besides the seed (which the
	// cursor carries): the entries in order, batch size, drop-last, dropout
	// and what it blanks.
	head := []string{strconv.Itoa(o.Loader.BatchSize), strconv.FormatBool(o.Loader.DropLast), strconv.FormatFloat(o.Caption.CaptionDropout, 'g', -1, 64), o.Caption.DropoutBlanks}
	enc.Fingerprint = digest(append(head, all...)...)[:16]
	return enc, lj, fj, pj, nil
}

// Build encodes whatever the cache lacks and returns the encoded dataset.
// Existing entries are verified (key, shapes, checksum); a damaged one is
// reported through Warn and re-encoded, never loaded.
func (b CacheBuilder) Build(ctx context.Context, ds *Dataset) (*Encoded, CacheStats, error) {
	var st CacheStats
	enc, lj, fj, pj, err := b.plan(ds)
	if err != nil {
		return nil, st, err
	}
	o := ds.Options
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, sub := range []string{"latents", kindFeatures, kindPooled} {
		if err := os.MkdirAll(filepath.Join(o.CacheDir, sub), 0o755); err != nil {
			return nil, st, fmt.Errorf("data: cache directory: %w", err)
		}
	}
	// Progress counts per phase: phase names the running one, start, done,
	// encoded and reused restart with it.
	var phase string
	var start time.Time
	var total, done, encoded, reused int
	begin := func(name string, n int) {
		phase, start, total, done, encoded, reused = name, time.Now(), n, 0, 0, 0
	}
	report := func(cur string, wasEncoded bool) {
		done++
		if wasEncoded {
			encoded++
		} else {
			reused++
		}
		if b.Progress == nil {
			return
		}
		el := time.Since(start)
		p := Progress{Phase: phase, Done: done, Total: total, Encoded: encoded, Reused: reused, Elapsed: el, Current: cur}
		if p.Encoded > 0 {
			// Reused entries cost almost nothing: the rate that predicts
			// the rest is the encoding rate.
			p.ETA = time.Duration(float64(el) / float64(p.Encoded) * float64(total-done))
		}
		b.Progress(p)
	}
	check := func(path, key string, verify func(string, string) error) bool {
		err := verify(path, key)
		if err == nil {
			return true
		}
		if !errors.Is(err, fs.ErrNotExist) {
			msg := fmt.Sprintf("cache file %s is damaged (%v); re-encoding it", path, err)
			st.Damaged = append(st.Damaged, msg)
			if b.Warn != nil {
				b.Warn(msg)
			}
		}
		return false
	}

	// Latents: images are decoded and resized on all workers; encoder calls
	// are serialised because a GPU model is one device queue.
	type result struct {
		job latentJob
		img RGB
		err error
	}
	budget := newPixelBudget(o.MaxPixels)
	begin(PhaseLatents, len(lj))
	var todo []latentJob
	for _, j := range lj {
		if check(latentPath(o, j.key), j.key, verifyLatent) {
			st.LatentsReused++
			report(j.item.Path, false)
			continue
		}
		todo = append(todo, j)
	}
	jobs := make(chan latentJob)
	results := make(chan result, o.Workers)
	var wg sync.WaitGroup
	for w := 0; w < o.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				img, err := prepareImage(j.item, j.crop, j.flip, o, budget)
				results <- result{j, img, err}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, j := range todo {
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	var firstErr error
	skipped := map[*Item]bool{}
	fail := func(err error) {
		firstErr = err
		cancel() // stop feeding the workers; the loop drains what is in flight
	}
	imageBatch := max(b.ImageBatch, 1)
	byBucket := map[Bucket][]result{}
	encodeBatch := func(rs []result) error {
		imgs := make([]RGB, len(rs))
		for i, r := range rs {
			imgs[i] = r.img
		}
		lat, err := b.VAE.EncodeImages(ctx, imgs)
		if err == nil && len(lat) != len(rs) {
			err = fmt.Errorf("image encoder returned %d latents for %d images", len(lat), len(rs))
		}
		if err != nil {
			return fmt.Errorf("data: encoding %s (batch of %d): %w", rs[0].job.item.Path, len(rs), err)
		}
		for i, r := range rs {
			if err := writeLatent(o, r.job, lat[i]); err != nil {
				return err
			}
			st.LatentsEncoded++
			report(r.job.item.Path, true)
		}
		return nil
	}
	for r := range results {
		if firstErr != nil {
			continue // drain
		}
		if r.err != nil {
			if o.Strict {
				fail(r.err)
				continue
			}
			st.Skipped = append(st.Skipped, Problem{r.job.item.Path, r.err.Error()})
			skipped[r.job.item] = true
			report(r.job.item.Path, false)
			continue
		}
		// Images of one bucket share a size, so they can go to the encoder
		// together; the batch is sent once it is full.
		byBucket[r.job.item.Bucket] = append(byBucket[r.job.item.Bucket], r)
		if len(byBucket[r.job.item.Bucket]) >= imageBatch {
			if err := encodeBatch(byBucket[r.job.item.Bucket]); err != nil {
				fail(err)
			}
			delete(byBucket, r.job.item.Bucket)
		}
	}
	if firstErr == nil {
		// Leftover partial batches, in a fixed order.
		keys := make([]Bucket, 0, len(byBucket))
		for k := range byBucket {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		for _, k := range keys {
			if err := encodeBatch(byBucket[k]); err != nil {
				fail(err)
				break
			}
		}
	}
	if firstErr != nil {
		return nil, st, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, st, err
	}

	// Texts: every features entry, then every pooled entry, each phase
	// calling its one encoder only. The real encoders keep one model
	// resident and reload when the caller alternates, so the phases must
	// not interleave.
	if err := b.buildTexts(ctx, o, fj, &st, check, begin, report); err != nil {
		return nil, st, err
	}
	if err := b.buildTexts(ctx, o, pj, &st, check, begin, report); err != nil {
		return nil, st, err
	}
	if len(skipped) > 0 {
		kept := enc.Items[:0]
		for _, ei := range enc.Items {
			if !skipped[ei.Item] {
				kept = append(kept, ei)
			}
		}
		enc.Items = kept
		if len(kept) == 0 {
			return nil, st, errors.New("data: no image could be encoded")
		}
	}
	return enc, st, nil
}

// textBatch is how many texts go to a text encoder in one call.
const textBatch = 16

// buildTexts runs one text phase: jobs are all of one kind (features or
// pooled); missing or damaged entries are encoded in batches of textBatch,
// in plan order, by that kind's encoder alone.
func (b CacheBuilder) buildTexts(ctx context.Context, o Options, jobs []textJob, st *CacheStats,
	check func(path, key string, verify func(string, string) error) bool,
	begin func(string, int), report func(string, bool)) error {
	if len(jobs) == 0 {
		return nil
	}
	kind := jobs[0].kind
	enc, verify, encoded, reused := b.Text.Features, verifyFeatures, &st.FeaturesEncoded, &st.FeaturesReused
	phase := PhaseFeatures
	if kind == kindPooled {
		enc, verify, encoded, reused = b.Text.Pooled, verifyPooled, &st.PooledEncoded, &st.PooledReused
		phase = PhasePooled
	}
	begin(phase, len(jobs))
	var pending []textJob
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		texts := make([]string, len(pending))
		for i, j := range pending {
			if kind == kindFeatures {
				texts[i] = FeatureText(o.Caption.SystemPrompt, j.caption)
			} else {
				texts[i] = PooledText(j.caption)
			}
		}
		out, err := enc.EncodeTexts(ctx, texts)
		if err != nil {
			return fmt.Errorf("data: text encoder %s: %w", enc.Identity(), err)
		}
		if len(out) != len(pending) {
			return fmt.Errorf("data: text encoder %s returned %d encodings for %d texts", enc.Identity(), len(out), len(pending))
		}
		for i, j := range pending {
			if kind == kindFeatures {
				err = writeFeatures(o, j, out[i])
			} else {
				err = writePooled(o, j, out[i])
			}
			if err != nil {
				return err
			}
			*encoded++
			report(clip(j.caption), true)
		}
		pending = pending[:0]
		return nil
	}
	for _, j := range jobs {
		if check(textPath(o, kind, j.key), j.key, verify) {
			*reused++
			report(clip(j.caption), false)
			continue
		}
		pending = append(pending, j)
		if len(pending) == textBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func latentPath(o Options, key string) string {
	return filepath.Join(o.CacheDir, "latents", key+".safetensors")
}

// textPath is the file of a features or pooled entry: the kind is the
// folder.
func textPath(o Options, kind, key string) string {
	return filepath.Join(o.CacheDir, kind, key+".safetensors")
}

// prepareImage decodes, crops and resizes one image to its bucket (mirrored
// left to right when flip is set) and maps it to [−1, 1], the VAE's input
// range. The full-size decode counts against budget until it is resized.
func prepareImage(it *Item, crop CropWindow, flip bool, o Options, budget *pixelBudget) (RGB, error) {
	held := budget.acquire(it.Width * it.Height)
	src, err := LoadRGB(it, o)
	if err != nil {
		budget.release(held)
		return RGB{}, err
	}
	img := cropResize(src, crop.X, crop.Y, crop.W, crop.H, it.Bucket.W, it.Bucket.H)
	src = RGB{}
	budget.release(held)
	if flip {
		img = mirror(img)
	}
	for i, v := range img.Pix {
		img.Pix[i] = 2*v - 1
	}
	return img, nil
}

// mirror flips a planar image left to right.
func mirror(img RGB) RGB {
	out := RGB{Pix: make([]float32, len(img.Pix)), W: img.W, H: img.H}
	for c := range 3 {
		for y := range img.H {
			row := (c*img.H + y) * img.W
			for x := range img.W {
				out.Pix[row+x] = img.Pix[row+img.W-1-x]
			}
		}
	}
	return out
}

// encodeFloats stores v as dt (F32 or BF16) little-endian.
func encodeFloats(dt safetensors.DType, v []float32) []byte {
	if dt == safetensors.BF16 {
		out := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(out[2*i:], kernels.BF16FromF32(x))
		}
		return out
	}
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}

// checksum is the CRC-32C of the tensors' bytes in name order; stored in the
// metadata, it catches damage the header checks cannot see (flipped bits,
// a file overwritten in place).
func checksum(ts map[string][]byte) string {
	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	sort.Strings(names)
	var c uint32
	for _, n := range names {
		c = crc32.Update(c, crcTable, ts[n])
	}
	return strconv.FormatUint(uint64(c), 16)
}

func writeLatent(o Options, j latentJob, l Latent) error {
	if len(l.Data) != l.C*l.H*l.W || l.C < 1 {
		return fmt.Errorf("data: image encoder returned %d values for a %dx%dx%d latent of %s", len(l.Data), l.C, l.H, l.W, j.item.Path)
	}
	dt := o.cacheDType()
	raw := encodeFloats(dt, l.Data)
	meta := map[string]string{
		"kind": "latent", "key": j.key, "image": j.item.Path, "bucket": j.item.Bucket.String(),
		"crop": j.crop.String(), "flipped": strconv.FormatBool(j.flip), "crc32c": checksum(map[string][]byte{"latent": raw}),
	}
	err := safetensors.Write(latentPath(o, j.key), []safetensors.Tensor{{Name: "latent", DType: dt, Shape: []int{l.C, l.H, l.W}, Data: raw}}, meta)
	if err != nil {
		return fmt.Errorf("data: cache: %w", err)
	}
	return nil
}

func writeFeatures(o Options, j textJob, e TextEncoding) error {
	if len(e.Features) != e.Tokens*e.Dim || len(e.Mask) != e.Tokens || e.Tokens < 1 {
		return fmt.Errorf("data: text encoder returned %d features and %d mask values for %d tokens of width %d", len(e.Features), len(e.Mask), e.Tokens, e.Dim)
	}
	dt := o.cacheDType()
	ts := map[string][]byte{
		"features": encodeFloats(dt, e.Features),
		"mask":     kernels.EncodeI32(e.Mask),
	}
	meta := map[string]string{"kind": kindFeatures, "key": j.key, "caption": j.caption, "crc32c": checksum(ts)}
	err := safetensors.Write(textPath(o, kindFeatures, j.key), []safetensors.Tensor{
		{Name: "features", DType: dt, Shape: []int{e.Tokens, e.Dim}, Data: ts["features"]},
		{Name: "mask", DType: safetensors.I32, Shape: []int{e.Tokens}, Data: ts["mask"]},
	}, meta)
	if err != nil {
		return fmt.Errorf("data: cache: %w", err)
	}
	return nil
}

// writePooled stores the pooled vector in f32 whatever the cache dtype: it
// is small, and it conditions every block through the time embedding.
func writePooled(o Options, j textJob, e TextEncoding) error {
	if len(e.Pooled) < 1 {
		return fmt.Errorf("data: pooled text encoder returned no pooled vector for %q", clip(j.caption))
	}
	raw := encodeFloats(safetensors.F32, e.Pooled)
	meta := map[string]string{"kind": kindPooled, "key": j.key, "caption": j.caption, "crc32c": checksum(map[string][]byte{"pooled": raw})}
	err := safetensors.Write(textPath(o, kindPooled, j.key), []safetensors.Tensor{
		{Name: "pooled", DType: safetensors.F32, Shape: []int{len(e.Pooled)}, Data: raw},
	}, meta)
	if err != nil {
		return fmt.Errorf("data: cache: %w", err)
	}
	return nil
}

// openVerified opens a cache file and checks that it is the entry for key,
// has the named tensors and that its checksum matches.
func openVerified(path, key, kind string, names ...string) (*safetensors.File, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	meta := f.Metadata()
	if meta["kind"] != kind || meta["key"] != key {
		f.Close()
		return nil, fmt.Errorf("holds %q entry %.12s, want %s entry %.12s", meta["kind"], meta["key"], kind, key)
	}
	ts := map[string][]byte{}
	for _, n := range names {
		b, err := f.Bytes(n)
		if err != nil {
			f.Close()
			return nil, err
		}
		ts[n] = b
	}
	if got := checksum(ts); got != meta["crc32c"] {
		f.Close()
		return nil, fmt.Errorf("checksum %s does not match the recorded %s", got, meta["crc32c"])
	}
	return f, nil
}

func verifyLatent(path, key string) error {
	f, err := openVerified(path, key, "latent", "latent")
	if err != nil {
		return err
	}
	return f.Close()
}

func verifyFeatures(path, key string) error {
	f, err := openVerified(path, key, kindFeatures, "features", "mask")
	if err != nil {
		return err
	}
	return f.Close()
}

func verifyPooled(path, key string) error {
	f, err := openVerified(path, key, kindPooled, "pooled")
	if err != nil {
		return err
	}
	return f.Close()
}

func keyOf(path string) string {
	return strings.TrimSuffix(filepath.Base(path), ".safetensors")
}

// LoadLatent reads and verifies a latent cache file.
func LoadLatent(path string) (Latent, error) {
	f, err := openVerified(path, keyOf(path), "latent", "latent")
	if err != nil {
		return Latent{}, fmt.Errorf("data: cache entry %s damaged or missing (run the cache step again): %w", path, err)
	}
	defer f.Close()
	info, _ := f.Info("latent")
	if len(info.Shape) != 3 {
		return Latent{}, fmt.Errorf("data: %s: latent shape %v is not [C,H,W]", path, info.Shape)
	}
	v, err := f.Float32("latent")
	if err != nil {
		return Latent{}, fmt.Errorf("data: %w", err)
	}
	return Latent{Data: v, C: info.Shape[0], H: info.Shape[1], W: info.Shape[2]}, nil
}

// LoadFeatures reads and verifies a features cache file: the encoding's
// features and mask, without Pooled.
func LoadFeatures(path string) (TextEncoding, error) {
	f, err := openVerified(path, keyOf(path), kindFeatures, "features", "mask")
	if err != nil {
		return TextEncoding{}, fmt.Errorf("data: cache entry %s damaged or missing (run the cache step again): %w", path, err)
	}
	defer f.Close()
	info, _ := f.Info("features")
	if len(info.Shape) != 2 {
		return TextEncoding{}, fmt.Errorf("data: %s: features shape %v is not [L,D]", path, info.Shape)
	}
	var e TextEncoding
	e.Tokens, e.Dim = info.Shape[0], info.Shape[1]
	if e.Features, err = f.Float32("features"); err != nil {
		return e, fmt.Errorf("data: %w", err)
	}
	m, err := f.Float64("mask")
	if err != nil {
		return e, fmt.Errorf("data: %w", err)
	}
	e.Mask = make([]int32, len(m))
	for i, x := range m {
		e.Mask[i] = int32(x)
	}
	return e, nil
}

// LoadPooled reads and verifies a pooled cache file.
func LoadPooled(path string) ([]float32, error) {
	f, err := openVerified(path, keyOf(path), kindPooled, "pooled")
	if err != nil {
		return nil, fmt.Errorf("data: cache entry %s damaged or missing (run the cache step again): %w", path, err)
	}
	defer f.Close()
	v, err := f.Float32("pooled")
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return v, nil
}

// Prune deletes cache files that enc does not use (entries of edited
// captions, removed images, old settings) and stray temporary files of
// interrupted writes. It returns how many files it removed. Only files
// named like cache entries are touched.
//
// The "text" folder held both encoders' outputs in one file before
// newbie-cache-v2; no current key points there, so every entry found in it
// is unused and goes, and an upgraded cache does not keep its dead text
// entries.
func Prune(enc *Encoded) (int, error) {
	if enc == nil || enc.Options.CacheDir == "" {
		return 0, errors.New("data: pruning cache: no encoded dataset or cache directory")
	}
	used := map[string]bool{}
	for _, ei := range enc.Items {
		for _, files := range [][]string{ei.Latents, ei.Flipped, ei.Features, ei.Pooled} {
			for _, p := range files {
				used[p] = true
			}
		}
	}
	for _, p := range []string{enc.EmptyFeatures, enc.EmptyPooled} {
		if p != "" {
			used[p] = true
		}
	}
	removed := 0
	for _, sub := range []string{"latents", kindFeatures, kindPooled, "text"} {
		dir := filepath.Join(enc.Options.CacheDir, sub)
		entries, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return removed, fmt.Errorf("data: pruning cache: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || !strings.Contains(name, ".safetensors") {
				continue
			}
			p := filepath.Join(dir, name)
			if used[p] {
				continue
			}
			if err := os.Remove(p); err != nil {
				return removed, fmt.Errorf("data: pruning cache: %w", err)
			}
			removed++
		}
	}
	return removed, nil
}
