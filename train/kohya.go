package train

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/newbie-train/newbie-train/optim"
)

// kohyaMeta adds to a LoRA's metadata the ss_* training metadata kohya's
// sd-scripts writes (train_network.py), which LoRA browsers, AUTOMATIC1111's
// additional-networks and image sites read: the keys that mean something
// here, each as sd-scripts formats it (Python's str(): True/False, tuples
// as "(1024, 1024)", dicts as JSON). The kohya writer adds ss_network_dim,
// ss_network_alpha, ss_network_module and sshs_model_hash itself. Keys of
// things this trainer does not have (text-encoder learning rate, clip
// skip, noise offset, regularisation images, …) are left out rather than
// filled with guesses.
func (r *run) kohyaMeta(base map[string]string) map[string]string {
	cfg := r.cfg
	t, d := cfg.Train, cfg.Data
	pyBool := func(b bool) string {
		if b {
			return "True"
		}
		return "False"
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	started := r.out.id.started()
	steps := max(1, (r.batches+max(t.GradientAccumulation, 1)-1)/max(t.GradientAccumulation, 1))
	sched := t.Schedule
	if sched == "cosine" && t.Cycles > 1 {
		sched = "cosine_with_restarts"
	}
	mixed := "no"
	if r.opt != nil {
		switch r.opt.Precision() {
		case optim.BF16:
			mixed = "bf16"
		case optim.FP16:
			mixed = "fp16"
		}
	}
	warmup := cfg.Schedule(r.total).Warmup()
	betas := make([]string, len(t.Optimizer.Betas))
	for i, b := range t.Optimizer.Betas {
		betas[i] = f(b)
	}
	sessionSum := sha256.Sum256([]byte(r.out.id.ID))

	// Per dataset folder (by its base name, as sd-scripts keys them): the
	// repeats, image count and tag frequency of the training images.
	type dirInfo struct {
		Repeats int `json:"n_repeats"`
		Images  int `json:"img_count"`
	}
	dirs := map[string]*dirInfo{}
	tags := map[string]map[string]int{}
	buckets := map[string]int{}
	trainImages, samples := 0, 0
	for _, it := range r.ds.Items {
		if r.heldOut[it.Hash] {
			continue
		}
		trainImages++
		samples += it.Repeats
		buckets[fmt.Sprintf("%d,%d", it.Bucket.W, it.Bucket.H)]++
		dir := filepath.Base(filepath.Dir(it.Path))
		if dirs[dir] == nil {
			dirs[dir] = &dirInfo{Repeats: it.Repeats}
			tags[dir] = map[string]int{}
		}
		dirs[dir].Images++
		for _, tag := range it.Caption.AllTags() {
			if tag = strings.TrimSpace(tag); tag != "" {
				tags[dir][tag]++
			}
		}
	}
	type bucket struct {
		Resolution [2]int `json:"resolution"`
		Count      int    `json:"count"`
	}
	bucketInfo := map[string]map[string]bucket{"buckets": {}}
	i := 0
	for _, k := range slices.Sorted(maps.Keys(buckets)) {
		var w, h int
		fmt.Sscanf(k, "%d,%d", &w, &h)
		bucketInfo["buckets"][strconv.Itoa(i)] = bucket{Resolution: [2]int{w, h}, Count: buckets[k]}
		i++
	}
	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			return "{}"
		}
		return string(b)
	}

	m := map[string]string{}
	for k, v := range base {
		m[k] = v
	}
	for k, v := range map[string]string{
		"ss_session_id":                  strconv.FormatUint(uint64(binary.BigEndian.Uint32(sessionSum[:4])), 10),
		"ss_training_started_at":         f(float64(started.Unix())),
		"ss_training_finished_at":        f(float64(time.Now().UnixMilli()) / 1000),
		"ss_output_name":                 cfg.Save.Name,
		"ss_learning_rate":               f(t.LearningRate),
		"ss_unet_lr":                     f(t.LearningRate),
		"ss_num_train_images":            strconv.Itoa(samples),
		"ss_num_validation_images":       strconv.Itoa(len(r.heldOut)),
		"ss_num_reg_images":              "0",
		"ss_num_batches_per_epoch":       strconv.Itoa(r.batches),
		"ss_num_epochs":                  strconv.Itoa((r.total + steps - 1) / steps),
		"ss_epoch":                       strconv.Itoa((r.step + steps - 1) / steps),
		"ss_steps":                       strconv.Itoa(r.step),
		"ss_max_train_steps":             strconv.Itoa(r.total),
		"ss_gradient_checkpointing":      pyBool(t.ActivationCheckpointing),
		"ss_gradient_accumulation_steps": strconv.Itoa(t.GradientAccumulation),
		"ss_batch_size_per_device":       strconv.Itoa(t.BatchSize),
		"ss_total_batch_size":            strconv.Itoa(t.BatchSize * t.GradientAccumulation),
		"ss_lr_warmup_steps":             strconv.Itoa(warmup),
		"ss_lr_scheduler":                sched,
		"ss_network_dropout":             f(cfg.LoRA.Dropout),
		"ss_mixed_precision":             mixed,
		"ss_full_fp16":                   "False",
		"ss_v2":                          "False",
		"ss_base_model_version":          cfg.Model.Preset,
		"ss_cache_latents":               "True",
		"ss_seed":                        strconv.FormatUint(t.Seed, 10),
		"ss_max_grad_norm":               f(t.GradClip),
		"ss_optimizer":                   fmt.Sprintf("torch.optim.AdamW(weight_decay=%s,betas=(%s),eps=%s)", f(t.Optimizer.WeightDecay), strings.Join(betas, ","), f(t.Optimizer.Eps)),
		"ss_caption_dropout_rate":        f(d.Caption.CaptionDropout),
		"ss_caption_tag_dropout_rate":    f(d.Caption.TagDropout),
		"ss_shuffle_caption":             pyBool(d.Caption.Shuffle),
		"ss_keep_tokens":                 strconv.Itoa(d.Caption.KeepTokens),
		"ss_flip_aug":                    pyBool(d.Flip),
		"ss_color_aug":                   "False",
		"ss_random_crop":                 pyBool(d.Crop == "random"),
		"ss_resolution":                  fmt.Sprintf("(%d, %d)", d.Resolution, d.Resolution),
		"ss_enable_bucket":               "True",
		"ss_bucket_no_upscale":           pyBool(d.NoUpscale),
		"ss_min_bucket_reso":             strconv.Itoa(d.Bucket.MinSide),
		"ss_max_bucket_reso":             strconv.Itoa(d.Bucket.MaxSide),
		"ss_dataset_dirs":                js(dirs),
		"ss_tag_frequency":               js(tags),
		"ss_bucket_info":                 js(bucketInfo),
	} {
		m[k] = v
	}
	if w := cfg.Model.Weights; w != "" {
		m["ss_sd_model_name"] = filepath.Base(w)
		if st, err := os.Stat(w); err == nil && !st.IsDir() {
			m["ss_new_sd_model_hash"] = r.baseHash // the file's SHA-256, as sd-scripts' calculate_sha256
		}
	}
	return m
}
