package main

import (
	"fmt"
	"math"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/internal/fixtures"
	"github.com/newbie-train/newbie-train/models/newbie"
)

// jobConfig writes the demo config and 6 generated images into dir and
// returns the config's path and the --set flags of a short run of steps
// into save.output out.
func jobConfig(t *testing.T, dir string, steps int) (string, func(out string, more ...string) []string) {
	t.Helper()
	path, err := configs.WriteExample("demo.yaml", dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := data.WriteDemoDataset(cfg.Data.Folders[0].Path, 6, cfg.Data.Resolution); err != nil {
		t.Fatal(err)
	}
	if _, err := newbie.WriteDemoModel(cfg.Model.Path); err != nil {
		t.Fatal(err)
	}
	return path, func(out string, more ...string) []string {
		args := []string{"--config", path, "--set", fmt.Sprintf("train.max_steps=%d", steps), "--set", "train.warmup_steps=1",
			"--set", "logging.every=1", "--set", "save.output=" + filepath.Join(dir, out)}
		for _, m := range more {
			args = append(args, "--set", m)
		}
		return args
	}
}

// TestDataParallelUsage: --gpus inside a job, a bad --gpus and a broken
// job environment are usage errors, found before anything runs.
func TestDataParallelUsage(t *testing.T) {
	dir := t.TempDir()
	path, _ := jobConfig(t, dir, 2)
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"zero GPUs", nil, []string{"--gpus", "0"}, "--gpus 0: want 1 or more"},
		{"--gpus in a job", map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, []string{"--gpus", "2"}, "--gpus 2 inside a job (rank 0 of 2"},
		{"bad RANK", map[string]string{"RANK": "x", "WORLD_SIZE": "2"}, nil, `RANK="x" is not a whole number`},
		{"no rendezvous", map[string]string{"RANK": "1", "WORLD_SIZE": "2"}, nil, "WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			code, _, stderr := runCLI(t, append([]string{"--config", path}, c.args...)...)
			if code != exitUsage || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, exitUsage, c.want)
			}
		})
	}
}

// TestGPUsLaunchesAJob: `--gpus 2` on the CPU backend starts two processes
// that meet through the rendezvous and sum over its connections; Ctrl-C on
// the launcher stops both at the same step with a resumable state (exit
// 130); the run resumed on one process with gradient_accumulation 2
// finishes it. Every step's loss, before and after the interrupt, equals
// one process accumulating two micro-batches, bit for bit.
func TestGPUsLaunchesAJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four training processes")
	}
	const steps = 10
	dir := t.TempDir()
	_, args := jobConfig(t, dir, steps)
	ref := start(t, args("one", "train.gradient_accumulation=2")...)
	if code := ref.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("one process: exit %d\n%s", code, ref.output())
	}

	// Ctrl-C reaches the launcher alone (the ranks have process groups of
	// their own); it passes it on.
	job := start(t, append([]string{"--gpus", "2"}, args("two")...)...)
	job.waitFor(t, "step 3/", time.Minute)
	job.signal(syscall.SIGINT)
	if code := job.wait(t, time.Minute); code != exitInterrupted {
		t.Fatalf("interrupted job: exit %d, want %d\n%s", code, exitInterrupted, job.output())
	}
	out := job.output()
	if !strings.Contains(out, "data parallel: 2 ranks") || !strings.Contains(out, "a resumable state is saved in") {
		t.Errorf("rank 0 does not say it ran a job of 2 ranks and saved a state:\n%s", out)
	}
	path, _, err := checkpoints.LatestState(filepath.Join(dir, "two", "states"))
	if err != nil {
		t.Fatalf("no state after the interrupt: %v\n%s", err, out)
	}
	st, err := checkpoints.LoadState(path)
	if err != nil || st.Step < 3 || st.Step >= steps {
		t.Fatalf("state %s: step %d, %v", path, st.Step, err)
	}
	resumed := start(t, append(args("two", "train.gradient_accumulation=2"), "--resume", "latest")...)
	if code := resumed.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("resumed on one process: exit %d\n%s", code, resumed.output())
	}
	want := fixtures.LogLosses(t, filepath.Join(dir, "one", "demo_lora.jsonl"))
	got := fixtures.LogLosses(t, filepath.Join(dir, "two", "demo_lora.jsonl"))
	for step := 1; step <= steps; step++ {
		if math.Float64bits(got[step]) != math.Float64bits(want[step]) {
			t.Errorf("step %d (the job stopped after %d): %v, one process accumulating 2: %v", step, st.Step, got[step], want[step])
		}
	}
}

// TestKilledRankFailsTheOther: two ranks started as torchrun starts them
// (the job's variables in the environment); the second is killed mid-run,
// and the first fails within seconds naming it, instead of waiting.
func TestKilledRankFailsTheOther(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two training processes")
	}
	dir := t.TempDir()
	_, args := jobConfig(t, dir, 100000)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	env := func(rank int) []string {
		return []string{fmt.Sprintf("RANK=%d", rank), "WORLD_SIZE=2", fmt.Sprintf("LOCAL_RANK=%d", rank), "LOCAL_WORLD_SIZE=2",
			"MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port)}
	}
	rank0 := startEnv(t, env(0), args("out")...)
	rank1 := startEnv(t, env(1), args("out")...)
	rank0.waitFor(t, "step 2/", time.Minute)
	rank1.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	code := rank0.wait(t, 30*time.Second)
	out := rank0.output()
	if code != exitFailure || !strings.Contains(out, "rank 1") {
		t.Fatalf("rank 0 after rank 1 was killed: exit %d\n%s", code, out)
	}
	t.Logf("rank 0 failed %v after the kill: %s", time.Since(killed).Round(time.Millisecond), lastLine(out))
	// Rank 0 let go of the output folder on its way out.
	rerun := start(t, args("out", "train.max_steps=2")...)
	if code := rerun.wait(t, time.Minute); code != 0 {
		t.Errorf("a run on the failed job's output folder: exit %d\n%s", code, rerun.output())
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestBenchOnRanks: `bench --gpus 2` (on the CPU: two processes summing
// over the rendezvous) gives micro-batch k the inputs `bench --accum 2`
// gives it on one process, so both print the same losses.
func TestBenchOnRanks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes")
	}
	base := []string{"bench", "--backend", "cpu", "--preset", "tiny", "--steps", "3", "--warmup", "1", "--checkpointing", "off", "--res", "64", "--caption", "8"}
	losses := func(args ...string) string {
		out, err := exec.Command(builtBinary(t), append(base, args...)...).Output()
		if err != nil {
			t.Fatalf("bench %v: %v\n%s", args, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "losses,") {
				return l
			}
		}
		t.Fatalf("bench %v printed no losses:\n%s", args, out)
		return ""
	}
	one, two := losses("--accum", "2"), losses("--gpus", "2")
	if one != two {
		t.Errorf("one process, 2 micro-batches: %s\ntwo processes: %s", one, two)
	}
}

// TestLaunchedUsageError: a job whose ranks find a config error before
// anything ran (here --resume latest with no state) exits 2, as one
// process would.
func TestLaunchedUsageError(t *testing.T) {
	dir := t.TempDir()
	_, args := jobConfig(t, dir, 4)
	p := start(t, append([]string{"--gpus", "2", "--resume", "latest"}, args("none")...)...)
	if code := p.wait(t, time.Minute); code != exitUsage || !strings.Contains(p.output(), "nothing to resume") {
		t.Fatalf("exit %d, want %d saying there is nothing to resume:\n%s", code, exitUsage, p.output())
	}
}
