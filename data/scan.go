package data

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
)

// Item is one validated image with its caption.
type Item struct {
	// Path of the image file.
	Path string
	// CaptionPath is the caption file, or "" when the default caption was
	// used.
	CaptionPath string
	Format      Format
	// Hash is the SHA-256 of the file's bytes: the image's identity in the
	// encode cache and for duplicate detection.
	Hash string
	// Width and Height are the displayed size (after EXIF orientation).
	Width, Height int
	// Orientation is the EXIF orientation applied when decoding (1 = none).
	Orientation int
	// Repeats is how often the image appears per epoch.
	Repeats int
	// Caption is the parsed caption; CaptionText the file's text.
	Caption     *Caption
	CaptionText string
	Bucket      Bucket
	// Notes record conversions applied (CMYK, 16-bit, alpha).
	Notes []string
}

// Problem is a file skipped (or, in strict mode, refused) with its reason.
type Problem struct {
	Path   string
	Reason string
}

// String is "path: reason".
func (p Problem) String() string { return p.Path + ": " + p.Reason }

// Report is the scan's summary: what was kept, where it went, what was
// skipped and why.
type Report struct {
	Items   int
	Samples int // items × repeats: samples per epoch
	Skipped []Problem
	// Converted lists images kept after a conversion rule applied.
	Converted []Problem
	Buckets   map[Bucket]int
}

// Table renders the report for people: images per bucket, then every
// skipped file with its reason.
func (r *Report) Table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "bucket\timages\t\n")
	keys := make([]Bucket, 0, len(r.Buckets))
	for k := range r.Buckets {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].W != keys[j].W {
			return keys[i].W < keys[j].W
		}
		return keys[i].H < keys[j].H
	})
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\t\n", k, r.Buckets[k])
	}
	fmt.Fprintf(tw, "total\t%d\t\n", r.Items)
	tw.Flush()
	fmt.Fprintf(&b, "%d images kept (%d samples per epoch), %d converted, %d skipped\n", r.Items, r.Samples, len(r.Converted), len(r.Skipped))
	for _, p := range r.Converted {
		fmt.Fprintf(&b, "  converted %s\n", p)
	}
	for _, p := range r.Skipped {
		fmt.Fprintf(&b, "  skipped   %s\n", p)
	}
	return b.String()
}

// Dataset is the result of a scan: the kept items in a stable order (folder
// order, then path) and the options they were scanned with.
type Dataset struct {
	Items   []*Item
	Options Options
}

var repeatsName = regexp.MustCompile(`^(\d+)_(.+)$`)

// folderJob is one resolved folder with its repeat count. entries is its
// listing when resolveFolders already read it (a configured folder used as
// is; its subfolders are reported there).
type folderJob struct {
	path    string
	repeats int
	entries []entry
	listed  bool
}

// entry is a folder entry with symbolic links resolved.
type entry struct {
	name, path string
	dir        bool
}

// readFolder lists a folder with every symbolic link followed: a link to a
// folder counts as a folder, a link to a file as a file. A broken link, or
// a link to a folder that contains the folder being read (a loop: kohya's
// layout would read it forever), is returned as a problem.
func readFolder(dir string) ([]entry, []Problem, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("data: dataset folder: %w", err)
	}
	var out []entry
	var problems []Problem
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		isDir := e.IsDir()
		if isDir && strings.HasPrefix(e.Name(), ".") {
			continue // .git, .ipynb_checkpoints, …: not dataset material
		}
		if e.Type()&fs.ModeSymlink != 0 {
			st, err := os.Stat(p)
			if err != nil {
				problems = append(problems, Problem{p, fmt.Sprintf("broken symbolic link: %v", unwrapPath(err))})
				continue
			}
			isDir = st.IsDir()
			if isDir {
				if anc, ok := linksToAncestor(p, dir); ok {
					problems = append(problems, Problem{p, fmt.Sprintf("symbolic link loop: it points to %s, which contains it; refused", anc)})
					continue
				}
			}
		}
		out = append(out, entry{name: e.Name(), path: p, dir: isDir})
	}
	return out, problems, nil
}

// linksToAncestor reports whether the folder link resolves to parent or a
// folder above it.
func linksToAncestor(link, parent string) (string, bool) {
	target, err1 := filepath.EvalSymlinks(link)
	real, err2 := filepath.EvalSymlinks(parent)
	if err1 != nil || err2 != nil {
		return "", false
	}
	for p := real; ; p = filepath.Dir(p) {
		if p == target {
			return target, true
		}
		if filepath.Dir(p) == p {
			return "", false
		}
	}
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// nestedReason is the skip reason of a folder inside a dataset folder.
const nestedReason = "nested folder, not read (as in kohya); give it its own data.folders entry to train on it"

// resolveFolders expands the configured folders: a folder with images is
// used as is; a folder with none is read as a parent of "N_name" folders.
// Folders that are not used that way (other subfolders, and "N_name"
// folders beside images) are returned as problems, by name, as are links
// that loop or are broken and a configured folder that is another one
// again under a second path.
func resolveFolders(folders []Folder) ([]folderJob, []Problem, error) {
	var out []folderJob
	var problems []Problem
	seen := map[string]string{}
	for _, f := range folders {
		if real, err := filepath.EvalSymlinks(f.Path); err == nil {
			if first, dup := seen[real]; dup {
				problems = append(problems, Problem{f.Path, "the same folder as " + first + "; read once"})
				continue
			}
			seen[real] = f.Path
		}
		entries, ps, err := readFolder(f.Path)
		if err != nil {
			return nil, nil, err
		}
		problems = append(problems, ps...)
		hasImages := false
		var subs, others []string
		for _, e := range entries {
			if e.dir {
				if repeatsName.MatchString(e.name) {
					subs = append(subs, e.path)
				} else {
					others = append(others, e.path)
				}
				continue
			}
			if _, ok := imageExts[strings.ToLower(filepath.Ext(e.name))]; ok {
				hasImages = true
			}
		}
		if hasImages || len(subs) == 0 {
			out = append(out, folderJob{path: f.Path, repeats: folderRepeats(f.Path, f.Repeats), entries: entries, listed: true})
			others = append(others, subs...)
		} else {
			for _, s := range subs {
				out = append(out, folderJob{path: s, repeats: folderRepeats(s, f.Repeats)})
			}
		}
		sort.Strings(others)
		for _, o := range others {
			problems = append(problems, Problem{o, nestedReason})
		}
	}
	return out, problems, nil
}

// folderRepeats: a configured count wins; else the "N_name" prefix; else 1.
func folderRepeats(path string, configured int) int {
	if configured > 0 {
		return configured
	}
	if m := repeatsName.FindStringSubmatch(filepath.Base(path)); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

// Scan finds, pairs and validates every image of the configured folders.
// Files with problems are skipped and listed in the report; with Strict any
// problem is an error. The error also comes when no image is left, and
// when ctx is cancelled (then it wraps ctx.Err()).
func Scan(ctx context.Context, o Options) (*Dataset, *Report, error) {
	o = o.Defaults()
	if err := o.Validate(); err != nil {
		return nil, nil, err
	}
	jobs, folderProblems, err := resolveFolders(o.Folders)
	if err != nil {
		return nil, nil, err
	}
	type task struct {
		path    string
		repeats int
	}
	var tasks []task
	for _, j := range jobs {
		entries := j.entries
		if !j.listed {
			// An "N_name" folder of a parent: read it now, and report the
			// folders inside it.
			var ps []Problem
			if entries, ps, err = readFolder(j.path); err != nil {
				return nil, nil, err
			}
			folderProblems = append(folderProblems, ps...)
			for _, e := range entries {
				if e.dir {
					folderProblems = append(folderProblems, Problem{e.path, nestedReason})
				}
			}
		}
		for _, e := range entries {
			if e.dir {
				continue
			}
			if _, ok := imageExts[strings.ToLower(filepath.Ext(e.name))]; ok {
				tasks = append(tasks, task{e.path, j.repeats})
			}
		}
	}
	buckets := Buckets(o.Buckets)
	budget := newPixelBudget(o.MaxPixels)
	items := make([]*Item, len(tasks))
	problems := make([]*Problem, len(tasks))
	converted := make([][]string, len(tasks))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < o.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				it, err := validateFile(tasks[i].path, o, buckets, budget)
				if err != nil {
					problems[i] = &Problem{Path: tasks[i].path, Reason: err.Error()}
					continue
				}
				it.Repeats = tasks[i].repeats
				items[i] = it
				converted[i] = it.Notes
			}
		}()
	}
feed:
	for i := range tasks {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("data: scan stopped: %w", err)
	}

	rep := &Report{Buckets: map[Bucket]int{}, Skipped: folderProblems}
	ds := &Dataset{Options: o}
	firstByHash := map[string]string{}
	for i, it := range items {
		if problems[i] != nil {
			rep.Skipped = append(rep.Skipped, *problems[i])
			continue
		}
		if prev, dup := firstByHash[it.Hash]; dup {
			rep.Skipped = append(rep.Skipped, Problem{it.Path, "duplicate of " + prev + " (same content)"})
			continue
		}
		firstByHash[it.Hash] = it.Path
		for _, n := range converted[i] {
			rep.Converted = append(rep.Converted, Problem{it.Path, n})
		}
		ds.Items = append(ds.Items, it)
		rep.Items++
		rep.Samples += it.Repeats
		rep.Buckets[it.Bucket]++
	}
	if o.Strict && len(rep.Skipped) > 0 {
		var lines []string
		for _, p := range rep.Skipped {
			lines = append(lines, "  "+p.String())
		}
		return nil, rep, fmt.Errorf("data: strict mode: %d problem(s):\n%s", len(rep.Skipped), strings.Join(lines, "\n"))
	}
	if len(ds.Items) == 0 {
		return nil, rep, fmt.Errorf("data: no usable images in %d file(s) of %d folder(s)", len(tasks), len(jobs))
	}
	return ds, rep, nil
}

// validateFile runs every check on one image and its caption. The returned
// error is the reason the file is skipped, phrased for the person who owns
// the dataset.
func validateFile(path string, o Options, buckets []Bucket, budget *pixelBudget) (*Item, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("unreadable: permission denied")
		}
		return nil, fmt.Errorf("unreadable: %v", err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("empty file (0 bytes)")
	}
	format, ok := sniff(b)
	if !ok {
		return nil, fmt.Errorf("not a PNG, JPEG or WebP image (first bytes % x)", b[:min(8, len(b))])
	}
	cfg, err := decodeConfig(format, b)
	if err != nil {
		return nil, fmt.Errorf("unreadable %s header: %v", format, err)
	}
	if cfg.Width == 0 || cfg.Height == 0 {
		return nil, fmt.Errorf("%s has zero size (%dx%d)", format, cfg.Width, cfg.Height)
	}
	if err := checkPixels(cfg.Width, cfg.Height, o.MaxPixels); err != nil {
		return nil, err
	}
	it := &Item{Path: path, Format: format, Orientation: 1}
	if format == JPEG {
		it.Orientation = jpegOrientation(b)
	}
	it.Width, it.Height = orientedSize(cfg.Width, cfg.Height, it.Orientation)
	if min(it.Width, it.Height) < o.MinSide {
		return nil, fmt.Errorf("too small: %dx%d, shorter side below min_side %d", it.Width, it.Height, o.MinSide)
	}
	cls := classify(cfg.ColorModel)
	if cls.cmyk {
		if o.CMYK == Reject {
			return nil, fmt.Errorf("CMYK image rejected by the cmyk rule")
		}
		it.Notes = append(it.Notes, "CMYK converted to RGB")
	}
	if cls.deep {
		if o.HighBitDepth == Reject {
			return nil, fmt.Errorf("16-bit image rejected by the high_bit_depth rule")
		}
		it.Notes = append(it.Notes, "16-bit samples used at full precision")
	}
	if !o.SkipDeepValidate {
		held := budget.acquire(cfg.Width * cfg.Height)
		img, err := decodeImage(format, b)
		transparent := err == nil && cls.alphaModel && hasTransparency(img)
		img = nil
		budget.release(held)
		if err != nil {
			return nil, fmt.Errorf("truncated or corrupt %s: %v", format, err)
		}
		if transparent {
			if o.Alpha == Reject {
				return nil, fmt.Errorf("has transparent pixels, rejected by the alpha rule")
			}
			it.Notes = append(it.Notes, "transparent pixels composited over "+string(o.Alpha))
		}
	} else if !looksComplete(format, b) {
		return nil, fmt.Errorf("truncated %s: the end-of-image marker is missing", format)
	}
	sum := sha256.Sum256(b)
	it.Hash = hex.EncodeToString(sum[:])
	it.Bucket, err = assignBucket(buckets, it.Width, it.Height, o.Buckets)
	if err != nil {
		return nil, err
	}
	if err := readCaption(it, o.Caption); err != nil {
		return nil, err
	}
	return it, nil
}

// readCaption finds the sibling caption file, reads and parses it.
func readCaption(it *Item, o CaptionOptions) error {
	cp := strings.TrimSuffix(it.Path, filepath.Ext(it.Path)) + o.Extension
	raw, err := os.ReadFile(cp)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !o.AllowMissing {
			return fmt.Errorf("no caption file %s", filepath.Base(cp))
		}
		it.CaptionText = o.Default
	case err != nil:
		return fmt.Errorf("caption unreadable: %v", err)
	default:
		it.CaptionPath = cp
		it.CaptionText = string(raw)
	}
	name := it.CaptionPath
	if name == "" {
		name = "default caption for " + it.Path
	}
	c, err := ParseCaption(name, it.CaptionText, o.Format)
	if err != nil {
		return err
	}
	it.Caption = c
	return nil
}

// checkPixels refuses an image whose header declares more than max
// pixels, before anything is decoded (a 2 MB PNG may declare 30000×30000:
// 3.6 GB of pixels).
func checkPixels(w, h, maxPixels int) error {
	if n := int64(w) * int64(h); n > int64(maxPixels) {
		return fmt.Errorf("too large: %dx%d is %.1f megapixels, more than max_pixels %d (%.1f megapixels); not decoded", w, h, float64(n)/1e6, maxPixels, float64(maxPixels)/1e6)
	}
	return nil
}

// LoadRGB decodes an item's image to planar float RGB in [0, 1], with the
// EXIF orientation applied and transparency composited by the alpha rule.
// The size its header declares is checked against o.MaxPixels first.
func LoadRGB(it *Item, o Options) (RGB, error) {
	o = o.Defaults()
	b, err := os.ReadFile(it.Path)
	if err != nil {
		return RGB{}, fmt.Errorf("data: %w", err)
	}
	// The cache key is the hash taken at scan time: a file edited since
	// must not be encoded under its old identity.
	if sum := sha256.Sum256(b); it.Hash != "" && hex.EncodeToString(sum[:]) != it.Hash {
		return RGB{}, fmt.Errorf("data: %s changed since the dataset was scanned; scan again", it.Path)
	}
	cfg, err := decodeConfig(it.Format, b)
	if err != nil {
		return RGB{}, fmt.Errorf("data: %s: unreadable %s header: %w", it.Path, it.Format, err)
	}
	if err := checkPixels(cfg.Width, cfg.Height, o.MaxPixels); err != nil {
		return RGB{}, fmt.Errorf("data: %s: %w", it.Path, err)
	}
	img, err := decodeImage(it.Format, b)
	if err != nil {
		return RGB{}, fmt.Errorf("data: %s: truncated or corrupt %s: %w", it.Path, it.Format, err)
	}
	// With SkipDeepValidate the scan could not look at the pixels, so the
	// alpha rule is enforced here.
	if o.Alpha == Reject && classify(img.ColorModel()).alphaModel && hasTransparency(img) {
		return RGB{}, fmt.Errorf("data: %s has transparent pixels, rejected by the alpha rule", it.Path)
	}
	var bg float32 = 1
	if o.Alpha == Black {
		bg = 0
	}
	return toRGB(img, it.Orientation, bg), nil
}
