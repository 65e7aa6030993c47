package data

import (
	"context"
	"image"
	"image/color"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodXML = `<character_1>
<n>alice</n>
<gender>1girl</gender>
<appearance>long hair, blue eyes, red ribbon</appearance>
</character_1>
<general_tags>
<style>anime, cel shading</style>
<background>simple background, white background</background>
</general_tags>`

// TestScanOutcomes builds a dataset with one file per situation a user's
// folder can contain and checks each file's outcome and message.
func TestScanOutcomes(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(8, 9))
	img := smoothImage(r, 60, 40)
	jpg := jpegBytes(t, smoothImage(r, 40, 72), 6, false)
	alphaImg := image.NewNRGBA(image.Rect(0, 0, 40, 40))
	deep := image.NewNRGBA64(image.Rect(0, 0, 40, 40))
	for y := 0; y < 40; y++ {
		for x := 0; x < 40; x++ {
			alphaImg.SetNRGBA(x, y, color.NRGBA{200, 10, 10, uint8(255 - x)})
			deep.SetNRGBA64(x, y, color.NRGBA64{uint16(1000 * x), 3, uint16(900 * y), 65535})
		}
	}
	files := map[string][]byte{
		"good.png":      pngBytes(t, img),
		"good.txt":      []byte(goodXML),
		"rotated.jpg":   jpg,
		"rotated.txt":   []byte("1girl, solo, smile"),
		"lossless.webp": webpLossless(t, twoToneImage(r, 48, 32)),
		"lossless.txt":  []byte("a girl standing in a field of flowers, looking at the viewer"),
		"trunc.jpg":     jpg[:len(jpg)*2/3],
		"trunc.txt":     []byte("x"),
		"tiny.png":      pngBytes(t, image.NewNRGBA(image.Rect(0, 0, 1, 1))),
		"tiny.txt":      []byte("x"),
		"empty.png":     {},
		"empty.txt":     []byte("x"),
		"text.png":      []byte("this is not an image at all"),
		"text.txt":      []byte("x"),
		"badxml.png":    pngBytes(t, smoothImage(r, 40, 40)),
		"badxml.txt":    []byte("<character_1>\n<n>bob</n>\n<gender>1boy</appearance>\n</character_1>"),
		"nocaption.png": pngBytes(t, smoothImage(r, 40, 48)),
		"copy.png":      pngBytes(t, img), // same bytes as good.png
		"copy.txt":      []byte("x"),
		"alpha.png":     pngBytes(t, alphaImg),
		"alpha.txt":     []byte("x"),
		"deep.png":      pngBytes(t, deep),
		"deep.txt":      []byte("x"),
		"notes.md":      []byte("not an image: ignored"),
	}
	for name, b := range files {
		writeFile(t, filepath.Join(dir, name), b)
	}
	o := testOptions(dir)
	o.Alpha = Reject
	ds, rep, err := Scan(context.Background(), o)
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	skipped := map[string]string{}
	for _, p := range rep.Skipped {
		skipped[filepath.Base(p.Path)] = p.Reason
	}
	kept := map[string]*Item{}
	for _, it := range ds.Items {
		kept[filepath.Base(it.Path)] = it
	}
	cases := []struct {
		file string
		kept bool
		msg  string
	}{
		{"copy.png", true, ""},
		{"rotated.jpg", true, ""},
		{"lossless.webp", true, ""},
		{"deep.png", true, "16-bit samples used at full precision"},
		{"trunc.jpg", false, "truncated or corrupt JPEG"},
		{"tiny.png", false, "too small: 1x1, shorter side below min_side 16"},
		{"empty.png", false, "empty file (0 bytes)"},
		{"text.png", false, "not a PNG, JPEG or WebP image"},
		{"badxml.png", false, "badxml.txt:3: malformed XML caption: element <gender> closed by </appearance>"},
		{"nocaption.png", false, "no caption file nocaption.txt"},
		// Files are taken in name order: copy.png comes first, so good.png
		// is the duplicate.
		{"good.png", false, "duplicate of " + filepath.Join(dir, "copy.png") + " (same content)"},
		{"alpha.png", false, "has transparent pixels, rejected by the alpha rule"},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			it, isKept := kept[c.file]
			if isKept != c.kept {
				t.Fatalf("kept = %v, want %v (reason %q)", isKept, c.kept, skipped[c.file])
			}
			if !c.kept && !strings.Contains(skipped[c.file], c.msg) {
				t.Errorf("reason %q, want it to contain %q", skipped[c.file], c.msg)
			}
			if c.kept && c.msg != "" && !strings.Contains(strings.Join(it.Notes, ";"), c.msg) {
				t.Errorf("notes %q, want %q", it.Notes, c.msg)
			}
		})
	}
	if it := kept["rotated.jpg"]; it != nil {
		if it.Orientation != 6 || it.Width != 72 || it.Height != 40 {
			t.Errorf("rotated.jpg: orientation %d size %dx%d, want 6 and 72x40", it.Orientation, it.Width, it.Height)
		}
		if it.Caption.Format != FormatTags {
			t.Errorf("rotated caption format %s", it.Caption.Format)
		}
	}
	if it := kept["lossless.webp"]; it != nil && it.Caption.Format != FormatText {
		t.Errorf("natural-language caption read as %s", it.Caption.Format)
	}
	if it := kept["copy.png"]; it != nil && it.Caption.Format != FormatTags {
		t.Errorf("copy caption %s", it.Caption.Format)
	}
	table := rep.Table()
	for _, want := range []string{"bucket", "total", "skipped", "tiny.png", "too small", "converted"} {
		if !strings.Contains(table, want) {
			t.Errorf("summary table lacks %q:\n%s", want, table)
		}
	}
	t.Logf("summary:\n%s", table)

	// Strict mode makes the same folder fatal, listing every problem.
	o.Strict = true
	if _, _, err := Scan(context.Background(), o); err == nil || !strings.Contains(err.Error(), "strict mode: 8 problem(s)") || !strings.Contains(err.Error(), "trunc.jpg") {
		t.Errorf("strict scan error: %v", err)
	}
	// The default caption replaces a missing one when configured.
	o.Strict = false
	o.Caption.AllowMissing = true
	o.Caption.Default = "1girl"
	ds, _, err = Scan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, it := range ds.Items {
		if filepath.Base(it.Path) == "nocaption.png" {
			found = it.CaptionText == "1girl" && it.CaptionPath == ""
		}
	}
	if !found {
		t.Errorf("nocaption.png did not get the default caption")
	}
}

func TestScanPolicies(t *testing.T) {
	dir := t.TempDir()
	deep := image.NewNRGBA64(image.Rect(0, 0, 40, 40))
	for i := range deep.Pix {
		deep.Pix[i] = byte(i*7 + 1)
	}
	for i := 6; i < len(deep.Pix); i += 8 { // opaque
		deep.Pix[i], deep.Pix[i+1] = 255, 255
	}
	writeFile(t, filepath.Join(dir, "deep.png"), pngBytes(t, deep))
	writeFile(t, filepath.Join(dir, "deep.txt"), []byte("x"))
	alpha := image.NewNRGBA(image.Rect(0, 0, 40, 40))
	for i := range alpha.Pix {
		alpha.Pix[i] = byte(i*5 + 3)
	}
	writeFile(t, filepath.Join(dir, "alpha.png"), pngBytes(t, alpha))
	writeFile(t, filepath.Join(dir, "alpha.txt"), []byte("x"))
	cases := []struct {
		name       string
		deep, alph Policy
		keep       int
		msg        string
	}{
		{"convert all", Convert, White, 2, ""},
		{"reject 16-bit", Reject, Black, 1, "16-bit image rejected by the high_bit_depth rule"},
		{"reject alpha", Convert, Reject, 1, "rejected by the alpha rule"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := testOptions(dir)
			o.HighBitDepth, o.Alpha = c.deep, c.alph
			ds, rep, err := Scan(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds.Items) != c.keep {
				t.Fatalf("kept %d, want %d: %s", len(ds.Items), c.keep, rep.Table())
			}
			if c.msg != "" && (len(rep.Skipped) != 1 || !strings.Contains(rep.Skipped[0].Reason, c.msg)) {
				t.Errorf("skipped %v, want %q", rep.Skipped, c.msg)
			}
		})
	}
}

func TestFolderLayout(t *testing.T) {
	root := t.TempDir()
	r := rand.New(rand.NewPCG(10, 11))
	for _, f := range []struct{ folder, name string }{{"10_alice", "a"}, {"3_bob", "b"}, {"3_bob", "c"}} {
		writeFile(t, filepath.Join(root, f.folder, f.name+".png"), pngBytes(t, smoothImage(r, 40, 40)))
		writeFile(t, filepath.Join(root, f.folder, f.name+".caption"), []byte("1girl"))
	}
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "d.jpeg"), jpegBytes(t, smoothImage(r, 40, 40), 0, false))
	writeFile(t, filepath.Join(other, "d.caption"), []byte("1boy"))
	o := testOptions(root)
	o.Folders = []Folder{{Path: root}, {Path: other, Repeats: 5}, {Path: filepath.Join(root, "3_bob"), Repeats: 2}}
	o.Caption.Extension = "caption"
	ds, rep, err := Scan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	reps := map[string]int{}
	for _, it := range ds.Items {
		reps[filepath.Base(it.Path)] += it.Repeats
	}
	// c.png is listed twice (3_bob via the root and directly): the second
	// copy is a duplicate, so b and c keep their first folder's repeats.
	want := map[string]int{"a.png": 10, "b.png": 3, "c.png": 3, "d.jpeg": 5}
	for k, v := range want {
		if reps[k] != v {
			t.Errorf("%s repeats %d, want %d", k, reps[k], v)
		}
	}
	if rep.Samples != 21 {
		t.Errorf("samples per epoch %d, want 21", rep.Samples)
	}
	if len(rep.Skipped) != 2 {
		t.Errorf("skipped %v, want the two duplicates", rep.Skipped)
	}
	if _, _, err := Scan(context.Background(), Options{Folders: []Folder{{Path: filepath.Join(root, "missing")}}}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing folder: %v", err)
	}
	if err := os.WriteFile(filepath.Join(other, "d.caption"), []byte("<a>unclosed"), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Folders = []Folder{{Path: other}}
	if _, rep, err := Scan(context.Background(), o); err == nil || !strings.Contains(rep.Skipped[0].Reason, "d.caption:1: malformed XML caption") {
		t.Errorf("unclosed XML: %v %v", err, rep)
	}
}
