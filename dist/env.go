package dist

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// The environment variables torchrun sets for every process it starts, and
// that Launch sets for its children.
const (
	EnvRank           = "RANK"
	EnvWorldSize      = "WORLD_SIZE"
	EnvLocalRank      = "LOCAL_RANK"
	EnvLocalWorldSize = "LOCAL_WORLD_SIZE"
	EnvMasterAddr     = "MASTER_ADDR"
	EnvMasterPort     = "MASTER_PORT"
	// EnvAgentStore is "True" when torchrun's agent itself serves a TCP
	// store on MASTER_ADDR:MASTER_PORT (PyTorch's processes then connect to
	// it as clients). That port is taken, so the rendezvous uses the next.
	EnvAgentStore = "TORCHELASTIC_USE_AGENT_STORE"
)

// jobVars are the variables that describe a process's place in a job; a
// launcher replaces all of them in its children's environment.
var jobVars = []string{EnvRank, EnvWorldSize, EnvLocalRank, EnvLocalWorldSize, EnvMasterAddr, EnvMasterPort, EnvAgentStore}

// Env is a process's place in a data-parallel job, as torchrun describes
// it in the environment.
type Env struct {
	// Rank is this process's index in the job, 0 ≤ Rank < WorldSize.
	Rank, WorldSize int
	// LocalRank is its index among the processes of its machine: the GPU it
	// drives. LocalWorldSize is how many processes that machine runs.
	LocalRank, LocalWorldSize int
	// MasterAddr and MasterPort name rank 0's machine and a port there.
	MasterAddr string
	MasterPort int
	// AgentStore is set when torchrun's agent serves its own store on
	// MasterPort; the rendezvous then listens on MasterPort+1.
	AgentStore bool

	// fromEnv is set when the environment named a job (torchrun, Launch),
	// even one of a single process.
	fromEnv bool
}

// Single is the Env of a plain run: one process, no job.
func Single() Env { return Env{WorldSize: 1, LocalWorldSize: 1} }

// Distributed reports whether the environment named a job, even one of a
// single process (`torchrun --nproc-per-node 1` runs through NCCL like any
// other world size).
func (e Env) Distributed() bool { return e.fromEnv }

// RendezvousAddr is where rank 0 serves the rendezvous: MASTER_ADDR and
// MASTER_PORT, or the port after it when torchrun's agent holds that one.
func (e Env) RendezvousAddr() string {
	port := e.MasterPort
	if e.AgentStore {
		port++
	}
	return net.JoinHostPort(e.MasterAddr, strconv.Itoa(port))
}

// Vars returns the environment entries ("NAME=value") that describe e, the
// inverse of ParseEnv.
func (e Env) Vars() []string {
	v := []string{
		EnvRank + "=" + strconv.Itoa(e.Rank),
		EnvWorldSize + "=" + strconv.Itoa(e.WorldSize),
		EnvLocalRank + "=" + strconv.Itoa(e.LocalRank),
		EnvLocalWorldSize + "=" + strconv.Itoa(e.LocalWorldSize),
	}
	if e.MasterAddr != "" {
		v = append(v, EnvMasterAddr+"="+e.MasterAddr, EnvMasterPort+"="+strconv.Itoa(e.MasterPort))
	}
	if e.AgentStore {
		v = append(v, EnvAgentStore+"=True")
	}
	return v
}

// String describes the process's place, for logs.
func (e Env) String() string {
	if !e.fromEnv {
		return "single process"
	}
	return fmt.Sprintf("rank %d of %d (local rank %d of %d, rendezvous %s)", e.Rank, e.WorldSize, e.LocalRank, e.LocalWorldSize, e.RendezvousAddr())
}

// ParseEnv reads the torchrun variables through getenv (os.Getenv in a
// program). With neither RANK nor WORLD_SIZE set it returns Single(). An
// error names the variable and the value at fault.
func ParseEnv(getenv func(string) string) (Env, error) {
	rankS, worldS := getenv(EnvRank), getenv(EnvWorldSize)
	if rankS == "" && worldS == "" {
		if lr := getenv(EnvLocalRank); lr != "" {
			return Env{}, fmt.Errorf("%s=%s is set but %s and %s are not: set all three (torchrun does) or none", EnvLocalRank, lr, EnvRank, EnvWorldSize)
		}
		return Single(), nil
	}
	if rankS == "" || worldS == "" {
		return Env{}, fmt.Errorf("%s=%q and %s=%q: a job needs both (torchrun sets both)", EnvRank, rankS, EnvWorldSize, worldS)
	}
	e := Env{fromEnv: true}
	var err error
	if e.WorldSize, err = envInt(EnvWorldSize, worldS, 1); err != nil {
		return Env{}, err
	}
	if e.Rank, err = envInt(EnvRank, rankS, 0); err != nil {
		return Env{}, err
	}
	if e.Rank >= e.WorldSize {
		return Env{}, fmt.Errorf("%s=%d is not below %s=%d", EnvRank, e.Rank, EnvWorldSize, e.WorldSize)
	}
	e.LocalRank, e.LocalWorldSize = e.Rank, e.WorldSize
	if s := getenv(EnvLocalRank); s != "" {
		if e.LocalRank, err = envInt(EnvLocalRank, s, 0); err != nil {
			return Env{}, err
		}
	}
	if s := getenv(EnvLocalWorldSize); s != "" {
		if e.LocalWorldSize, err = envInt(EnvLocalWorldSize, s, 1); err != nil {
			return Env{}, err
		}
	}
	if e.LocalRank >= e.LocalWorldSize {
		return Env{}, fmt.Errorf("%s=%d is not below %s=%d", EnvLocalRank, e.LocalRank, EnvLocalWorldSize, e.LocalWorldSize)
	}
	e.MasterAddr = strings.TrimSpace(getenv(EnvMasterAddr))
	portS := getenv(EnvMasterPort)
	if e.MasterAddr == "" || portS == "" {
		if e.WorldSize > 1 {
			return Env{}, fmt.Errorf("%s=%d needs %s and %s (rank 0's host and a free port there; torchrun sets them)", EnvWorldSize, e.WorldSize, EnvMasterAddr, EnvMasterPort)
		}
		return e, nil
	}
	if e.MasterPort, err = envInt(EnvMasterPort, portS, 1); err != nil {
		return Env{}, err
	}
	e.AgentStore = getenv(EnvAgentStore) == "True"
	limit := 65535
	if e.AgentStore {
		limit-- // the rendezvous takes the next port
	}
	if e.MasterPort > limit {
		return Env{}, fmt.Errorf("%s=%d is not a TCP port (1 to %d)", EnvMasterPort, e.MasterPort, limit)
	}
	return e, nil
}

// envInt parses a whole number of at least min.
func envInt(name, s string, min int) (int, error) {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a whole number", name, s)
	}
	if v < min {
		return 0, fmt.Errorf("%s=%d must be at least %d", name, v, min)
	}
	return v, nil
}
