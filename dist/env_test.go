package dist

import (
	"strings"
	"testing"
)

func mapEnv(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     []string
		want    Env
		wantErr string // substring of the error; "" for success
	}{
		{name: "no job", env: nil, want: Single()},
		{name: "master only is still no job", env: []string{EnvMasterAddr, "h"}, want: Single()},
		{name: "torchrun", env: []string{EnvRank, "3", EnvWorldSize, "4", EnvLocalRank, "1", EnvLocalWorldSize, "2", EnvMasterAddr, "node0", EnvMasterPort, "29500"},
			want: Env{Rank: 3, WorldSize: 4, LocalRank: 1, LocalWorldSize: 2, MasterAddr: "node0", MasterPort: 29500, fromEnv: true}},
		{name: "local rank defaults to rank", env: []string{EnvRank, "1", EnvWorldSize, "2", EnvMasterAddr, "127.0.0.1", EnvMasterPort, "1234"},
			want: Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, MasterAddr: "127.0.0.1", MasterPort: 1234, fromEnv: true}},
		{name: "world of one needs no master", env: []string{EnvRank, "0", EnvWorldSize, "1"},
			want: Env{WorldSize: 1, LocalWorldSize: 1, fromEnv: true}},
		{name: "agent store", env: []string{EnvRank, "0", EnvWorldSize, "2", EnvMasterAddr, "h", EnvMasterPort, "29500", EnvAgentStore, "True"},
			want: Env{WorldSize: 2, LocalWorldSize: 2, MasterAddr: "h", MasterPort: 29500, AgentStore: true, fromEnv: true}},
		{name: "rank without world", env: []string{EnvRank, "0"}, wantErr: `RANK="0" and WORLD_SIZE=""`},
		{name: "local rank alone", env: []string{EnvLocalRank, "0"}, wantErr: "LOCAL_RANK=0 is set but RANK and WORLD_SIZE are not"},
		{name: "rank not a number", env: []string{EnvRank, "one", EnvWorldSize, "2"}, wantErr: `RANK="one" is not a whole number`},
		{name: "negative rank", env: []string{EnvRank, "-1", EnvWorldSize, "2"}, wantErr: "RANK=-1 must be at least 0"},
		{name: "world zero", env: []string{EnvRank, "0", EnvWorldSize, "0"}, wantErr: "WORLD_SIZE=0 must be at least 1"},
		{name: "rank too big", env: []string{EnvRank, "2", EnvWorldSize, "2"}, wantErr: "RANK=2 is not below WORLD_SIZE=2"},
		{name: "local rank too big", env: []string{EnvRank, "1", EnvWorldSize, "4", EnvLocalRank, "2", EnvLocalWorldSize, "2", EnvMasterAddr, "h", EnvMasterPort, "1"}, wantErr: "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"},
		{name: "no master", env: []string{EnvRank, "0", EnvWorldSize, "2"}, wantErr: "WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT"},
		{name: "port not a number", env: []string{EnvRank, "0", EnvWorldSize, "2", EnvMasterAddr, "h", EnvMasterPort, "http"}, wantErr: `MASTER_PORT="http" is not a whole number`},
		{name: "port too big", env: []string{EnvRank, "0", EnvWorldSize, "2", EnvMasterAddr, "h", EnvMasterPort, "70000"}, wantErr: "MASTER_PORT=70000 is not a TCP port (1 to 65535)"},
		{name: "no port after the agent's", env: []string{EnvRank, "0", EnvWorldSize, "2", EnvMasterAddr, "h", EnvMasterPort, "65535", EnvAgentStore, "True"}, wantErr: "MASTER_PORT=65535 is not a TCP port (1 to 65534)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv(mapEnv(tt.env...))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestEnvVarsRoundTrip checks that Vars writes what ParseEnv reads, as the
// launcher relies on.
func TestEnvVarsRoundTrip(t *testing.T) {
	for _, e := range []Env{
		{Rank: 2, WorldSize: 3, LocalRank: 2, LocalWorldSize: 3, MasterAddr: "127.0.0.1", MasterPort: 40000, fromEnv: true},
		{Rank: 0, WorldSize: 2, LocalRank: 0, LocalWorldSize: 1, MasterAddr: "node0", MasterPort: 29500, AgentStore: true, fromEnv: true},
	} {
		kv := []string{}
		for _, v := range e.Vars() {
			name, value, _ := strings.Cut(v, "=")
			kv = append(kv, name, value)
		}
		got, err := ParseEnv(mapEnv(kv...))
		if err != nil {
			t.Fatal(err)
		}
		if got != e {
			t.Fatalf("round trip of %+v gave %+v", e, got)
		}
	}
}

func TestRendezvousAddr(t *testing.T) {
	e := Env{MasterAddr: "::1", MasterPort: 29500}
	if got := e.RendezvousAddr(); got != "[::1]:29500" {
		t.Fatalf("got %s", got)
	}
	e.AgentStore = true
	if got := e.RendezvousAddr(); got != "[::1]:29501" {
		t.Fatalf("with the agent's store: got %s", got)
	}
}
