package cuda

import "testing"

// TestDeviceMemory: the driver's free memory drops by about what a large
// allocation takes (the allocator asks the device for it) and the total is
// the device's size; AllocSize is the allocator's size class.
func TestDeviceMemory(t *testing.T) {
	g := openGPU(t)
	free0, total, err := g.DeviceMemory()
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || free0 <= 0 || free0 > total {
		t.Fatalf("free %d, total %d", free0, total)
	}
	const n = 256 << 20 // bytes, a large block of its own
	b, err := g.Alloc(f32, n/4)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(b)
	free1, _, err := g.DeviceMemory()
	if err != nil {
		t.Fatal(err)
	}
	if d := free0 - free1; d < n || d > n+(64<<20) {
		t.Errorf("a %d-byte allocation lowered free memory by %d", n, d)
	}
	if got := g.AllocSize(1); got != smallAlign {
		t.Errorf("AllocSize(1) = %d, want %d", got, smallAlign)
	}
	if got, want := g.AllocSize(n+1), roundSize(n+1); got != want || got%largeAlign != 0 {
		t.Errorf("AllocSize(%d) = %d, want %d", n+1, got, want)
	}
	t.Logf("%s: %d of %d bytes free", g.Name(), free0, total)
}
