package data

import (
	"strings"
	"testing"
)

func TestOptionsDefaultsAndValidate(t *testing.T) {
	d := Options{Folders: []Folder{{Path: "x"}}}.Defaults()
	if d.MinSide != 256 || d.Caption.Extension != ".txt" || d.Buckets.TargetArea != 1024*1024 || d.Buckets.Step != 16 ||
		d.Caption.Variants != 1 || d.Caption.SystemPrompt != GemmaSystemPrompt || d.Loader.BatchSize != 1 || d.Alpha != White {
		t.Errorf("defaults: %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if e := (Options{Folders: []Folder{{Path: "x"}}, Caption: CaptionOptions{Extension: "caption", ShuffleTags: true}}).Defaults(); e.Caption.Extension != ".caption" || e.Caption.Variants != 4 {
		t.Errorf("extension %q variants %d", e.Caption.Extension, e.Caption.Variants)
	}
	cases := []struct {
		name string
		edit func(*Options)
		msg  string
	}{
		{"no folders", func(o *Options) { o.Folders = nil }, "no dataset folders"},
		{"alpha", func(o *Options) { o.Alpha = "grey" }, `alpha policy "grey"`},
		{"cmyk", func(o *Options) { o.CMYK = White }, `cmyk policy "white"`},
		{"format", func(o *Options) { o.Caption.Format = "yaml" }, `caption format "yaml"`},
		{"tag dropout", func(o *Options) { o.Caption.TagDropout = 1 }, "tag_dropout 1"},
		{"caption dropout", func(o *Options) { o.Caption.CaptionDropout = -0.1 }, "caption_dropout -0.1"},
		{"dropout blanks", func(o *Options) { o.Caption.DropoutBlanks = "jina" }, `data.caption.dropout_blanks "jina"`},
		{"step", func(o *Options) { o.Buckets.Step = 12 }, "bucket step 12"},
		{"sides", func(o *Options) { o.Buckets.MaxSide = 100 }, "bucket sides [512, 100]"},
		{"area", func(o *Options) { o.Buckets.TargetArea = 1000 }, "target area 1000"},
		{"batch", func(o *Options) { o.Loader.BatchSize = -1 }, "batch size -1"},
		{"repeats", func(o *Options) { o.Folders[0].Repeats = -2 }, "repeats -2"},
	}
	for _, c := range cases {
		o := Options{Folders: []Folder{{Path: "x"}}}.Defaults()
		c.edit(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.msg)
		}
	}
}

func TestProgressString(t *testing.T) {
	cases := []struct {
		p    Progress
		want string
	}{
		{Progress{Phase: PhaseLatents, Done: 0, Total: 10}, "latents [------------------------] 0/10   0%  enc 0 reused 0  ETA --"},
		{Progress{Phase: PhaseFeatures, Done: 5, Total: 10, Encoded: 4, Reused: 1, ETA: 61e9}, "features [############------------] 5/10  50%  enc 4 reused 1  ETA 1m1s"},
		{Progress{Phase: PhasePooled, Done: 10, Total: 10, Encoded: 10}, "pooled [########################] 10/10 100%  enc 10 reused 0  ETA 0s"},
	}
	for _, c := range cases {
		if got := c.p.String(); got != c.want {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}
