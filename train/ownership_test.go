package train

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/newbie-train/newbie-train/configs"
)

// writeConfig writes cfg's effective config into its folder, for a
// second process to load.
func writeConfig(t *testing.T, cfg *configs.Config) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(cfg.Save.Output), "effective.yaml")
	if err := os.WriteFile(p, cfg.YAML(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startTraining starts a second process training the config at path and
// returns once it has logged its first step.
func startTraining(t *testing.T, path string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperRunEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	var seen []string
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if strings.HasPrefix(sc.Text(), "step 1/") {
			go io.Copy(io.Discard, out)
			return cmd
		}
	}
	t.Fatalf("the second process never trained:\n%s", strings.Join(seen, "\n"))
	return nil
}

// TestTwoProcessesOneFolder (defect 3): while one process trains into an
// output folder, a second run on it — same config or another — is refused
// naming the first one's PID and start time, and writes nothing there;
// once the first is killed with SIGKILL its lock is taken over.
func TestTwoProcessesOneFolder(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 4, 1, 4)
	other := startTraining(t, writeConfig(t, cfg))
	pid := other.Process.Pid
	for _, c := range []struct {
		name string
		edit func(*configs.Config)
	}{
		{"same config", func(*configs.Config) {}},
		{"another config", func(c *configs.Config) { c.Train.LearningRate = 5e-4 }},
		{"resume", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			c2 := *cfg
			o := Options{Log: io.Discard}
			if c.edit != nil {
				c.edit(&c2)
			} else {
				o.Resume = "latest"
			}
			_, err := Run(context.Background(), &c2, o)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("in use by another newbie-train process (PID %d", pid)) ||
				!strings.Contains(err.Error(), "started ") {
				t.Fatalf("second run: %v, want a refusal naming PID %d and its start time", err, pid)
			}
		})
	}
	other.Process.Signal(syscall.SIGKILL)
	other.Wait()
	var log strings.Builder
	// Fresh: the killed run may or may not have saved its first state.
	if _, err := Run(context.Background(), cfg, Options{Log: &log, Fresh: true}); err != nil {
		t.Fatalf("after the holder was killed: %v\n%s", err, log.String())
	}
	if want := fmt.Sprintf("took over the lock of PID %d", pid); !strings.Contains(log.String(), want) {
		t.Errorf("log does not say %q:\n%s", want, log.String())
	}
	if _, err := os.Stat(filepath.Join(cfg.Save.Output, lockFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the lock file outlived the run: %v", err)
	}
}

// stateSteps lists the steps of the states under dir.
func stateSteps(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestPriorRunStatesSurvive (defect 1): after a finished run, the same
// output folder with another learning rate is refused, naming the change;
// with --fresh the finished run is moved aside intact, and the new run's
// states are its own: its interrupted state survives pruning (the old
// run's higher-numbered states once deleted it) and --resume latest takes
// it.
func TestPriorRunStatesSurvive(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 8, 2, 4)
	cfg.Save.KeepLast = 2
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	changed := *cfg
	changed.Train.LearningRate = 5e-4
	_, err := Run(context.Background(), &changed, Options{Log: io.Discard})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "train.learning_rate: 0.001 → 0.0005") || !strings.Contains(err.Error(), "--fresh") {
		t.Fatalf("a new run on a used folder: %v, want a ConfigError naming the changed key", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var log strings.Builder
	_, err = Run(ctx, &changed, Options{Fresh: true, Log: io.MultiWriter(&log, &stopAfter{steps: 3, cancel: cancel})})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("fresh run: %v\n%s", err, log.String())
	}
	states := stateSteps(t, filepath.Join(cfg.Save.Output, "states"))
	if len(states) != 2 || states[len(states)-1] != "state-00000003" {
		t.Errorf("the new run's states are %v, want its own two newest ending at step 3", states)
	}
	moved, _ := filepath.Glob(filepath.Join(cfg.Save.Output, oldRunsDir, "*"))
	if len(moved) != 1 {
		t.Fatalf("old runs %v", moved)
	}
	if got := stateSteps(t, filepath.Join(moved[0], "states")); strings.Join(got, " ") != "state-00000006 state-00000008" {
		t.Errorf("the moved run's states are %v", got)
	}
	for _, f := range []string{"demo_lora.safetensors", "demo_lora_peft", runFile, "demo_lora.jsonl"} {
		if _, err := os.Stat(filepath.Join(moved[0], f)); err != nil {
			t.Errorf("the moved run lacks %s: %v", f, err)
		}
	}
	if _, err := Run(context.Background(), &changed, Options{Resume: "latest", Log: io.Discard}); err != nil {
		t.Fatalf("--resume latest of the new run: %v", err)
	}
}

// TestResumeTruncatesLog (defect 3): a run resumed from an earlier state
// logs the steps after it once, not twice.
func TestResumeTruncatesLog(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 6, 3, 4)
	cfg.Save.KeepLast = 0
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	want := losses(t, cfg.Logging.LogFile)
	// A line cut short by a kill, too.
	f, _ := os.OpenFile(cfg.Logging.LogFile, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"step":7,"lo`)
	f.Close()
	if _, err := Run(context.Background(), cfg, Options{Resume: filepath.Join(cfg.Save.Output, "states", "state-00000003"), Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(cfg.Logging.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "\n"); n != 6 {
		t.Errorf("the log has %d lines after the resume, want 6:\n%s", n, raw)
	}
	got := losses(t, cfg.Logging.LogFile)
	for step, v := range want {
		if got[step] != v {
			t.Errorf("step %d: %v after the resume, %v before", step, got[step], v)
		}
	}
}

// TestStaleTempsModesAndPruning: temporaries a kill left are removed at
// the start; every file is 0644 and every folder 0755 (less the umask);
// keep_last_loras keeps that many steps of intermediate LoRA files.
func TestStaleTempsModesAndPruning(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 5, 1, 4)
	cfg.Save.KeepLastLoRAs = 2
	out := cfg.Save.Output
	for _, p := range []string{".demo_lora.safetensors.tmp-1a2b3c", "demo_lora-step00000001.safetensors.tmp-4242", "states/.state-00000002.tmp-0f0f/tensors.safetensors", ".demo_lora_peft.tmp-99/adapter_model.safetensors", "cache/latents/x.safetensors.tmp-77"} {
		os.MkdirAll(filepath.Dir(filepath.Join(out, p)), 0o755)
		os.WriteFile(filepath.Join(out, p), []byte("partial"), 0o600)
	}
	var log strings.Builder
	if _, err := Run(context.Background(), cfg, Options{Log: &log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "removed 5 temporary file(s)") {
		t.Errorf("log does not report the cleanup:\n%s", log.String())
	}
	mask := umask()
	var steps []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if strings.Contains(name, ".tmp") || strings.HasPrefix(name, ".") {
			t.Errorf("left behind: %s", p)
		}
		if strings.Contains(name, "-step") {
			steps = append(steps, name)
		}
		info, _ := d.Info()
		want := os.FileMode(0o644) &^ mask
		if d.IsDir() {
			want = 0o755 &^ mask
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, info.Mode().Perm(), want)
		}
		return nil
	})
	// Steps 3 and 4 in three formats; step 5 is the final LoRA.
	if len(steps) != 6 || !strings.Contains(strings.Join(steps, " "), "step00000003") || strings.Contains(strings.Join(steps, " "), "step00000002") {
		t.Errorf("intermediate LoRA files %v, want steps 3 and 4 only", steps)
	}
}

// umask is the process's file-creation mask.
func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}
