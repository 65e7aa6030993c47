package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

var _ kernels.DeviceTimer = (*Backend)(nil)

// StartTiming opens a timing window (kernels.DeviceTimer): graph regions
// run as plain launches until StopTiming.
func (c *Backend) StartTiming() error {
	if !c.enter("StartTiming") {
		c.leave()
		return errors.New("cuda: StartTiming: backend unusable")
	}
	defer c.leave()
	if c.plan.active() {
		return errors.New("cuda: StartTiming inside a graph region")
	}
	c.timing, c.marks = true, 0
	return nil
}

// Mark records a timing event on the stream; a failure is the backend's
// sticky error.
func (c *Backend) Mark() {
	if !c.enter("Mark") {
		c.leave()
		return
	}
	defer c.leave()
	if !c.timing {
		c.failf("Mark outside a timing window")
		return
	}
	d := c.l.drv
	if c.marks == len(c.timerEvents) {
		var ev uintptr
		var pin runtime.Pinner
		pin.Pin(&ev)
		r := d.eventCreate.call(uintptr(unsafe.Pointer(&ev)), 0) // timing on
		pin.Unpin()
		if !c.check("cuEventCreate", r) {
			return
		}
		c.timerEvents = append(c.timerEvents, ev)
	}
	if c.check("cuEventRecord", d.eventRecord.call(c.timerEvents[c.marks], c.stream)) {
		c.marks++
	}
}

// StopTiming waits for the last mark and returns every mark's seconds
// after the first.
func (c *Backend) StopTiming() ([]float64, error) {
	if !c.enter("StopTiming") {
		c.leave()
		return nil, errors.New("cuda: StopTiming: backend unusable")
	}
	defer c.leave()
	n := c.marks
	c.timing, c.marks = false, 0
	if c.err != nil {
		return nil, c.err
	}
	if n == 0 {
		return nil, nil
	}
	d := c.l.drv
	if r := d.eventSynchronize.call(c.timerEvents[n-1]); r != 0 {
		return nil, fmt.Errorf("cuda: cuEventSynchronize: %s", d.errText(r))
	}
	out := make([]float64, n)
	var ms float32
	var pin runtime.Pinner
	pin.Pin(&ms)
	defer pin.Unpin()
	for i := 1; i < n; i++ {
		if r := d.eventElapsedTime.call(uintptr(unsafe.Pointer(&ms)), c.timerEvents[0], c.timerEvents[i]); r != 0 {
			return nil, fmt.Errorf("cuda: cuEventElapsedTime: %s", d.errText(r))
		}
		out[i] = float64(ms) / 1e3
	}
	return out, nil
}
