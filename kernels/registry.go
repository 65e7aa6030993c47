package kernels

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Factory opens a backend on the device with the given index.
type Factory func(device int) (Backend, error)

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// Register makes a backend available to Open under name. Backends call it
// from an init function; registering a name twice panics (a programming error
// caught at start-up).
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("kernels: backend " + name + " registered twice")
	}
	registry[name] = f
}

// Registered lists the registered backend names in sorted order.
func Registered() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open opens the named backend on a device index.
func Open(name string, device int) (Backend, error) {
	registryMu.Lock()
	f, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("backend %q is not built into this program (have: %s)", name, strings.Join(Registered(), ", "))
	}
	b, err := f(device)
	if err != nil {
		return nil, fmt.Errorf("open backend %s: %w", name, err)
	}
	return b, nil
}
