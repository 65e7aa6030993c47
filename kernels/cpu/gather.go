package cpu

import "github.com/newbie-train/newbie-train/kernels"

// Embedding lookups: Gather copies table rows selected by I32 ids, and
// ScatterAdd is its backward, adding rows back at the same ids.

// idsOperand checks an id buffer and the table-like operand it indexes,
// returning the number of rows the table has. Every id is checked before
// any element is written, so a bad id leaves the output untouched.
func (c *Backend) idsOperand(op string, ids *buffer, table *buffer, tableName string, dim int) (rows int, ok bool) {
	if ids.dt != kernels.I32 {
		c.fail("%s: ids is %v, want I32", op, ids.dt)
		return 0, false
	}
	if dim <= 0 || table.n%dim != 0 {
		c.fail("%s: %s has %d elements, not a whole number of rows of dim %d", op, tableName, table.n, dim)
		return 0, false
	}
	rows = table.n / dim
	for i, id := range ids.i32 {
		if id < 0 || int(id) >= rows {
			c.fail("%s: id %d at position %d is outside the %d rows of %s", op, id, i, rows, tableName)
			return 0, false
		}
	}
	return rows, true
}

// Gather copies rows of table [rows, dim] selected by ids (I32, [n]) into
// dst [n, dim], converting dtypes if they differ.
func (c *Backend) Gather(dst, table, ids kernels.Buffer, dim int) {
	d := c.buf("Gather", "dst", dst)
	t := c.buf("Gather", "table", table)
	ix := c.buf("Gather", "ids", ids)
	if d == nil || t == nil || ix == nil {
		return
	}
	if _, ok := c.idsOperand("Gather", ix, t, "table", dim); !ok {
		return
	}
	if d.n != ix.n*dim {
		c.fail("Gather: dst has %d elements, want %d ids × dim %d", d.n, ix.n, dim)
		return
	}
	if d == t {
		c.fail("Gather: dst and table are the same buffer")
		return
	}
	kernels.ParallelFor(ix.n, max(1, elemGrain/dim), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			copyConvert(d, i*dim, t, int(ix.i32[i])*dim, dim)
		}
	})
}

// ScatterAdd adds src [n, dim] into rows ids of dst [rows, dim]. Repeated
// ids accumulate in id-list order; the work is split across columns, never
// across ids, so each element's sum has a fixed order. It computes in
// float32 (float64 for F64 dst) and rounds on every store, as a device
// adding into a low-precision buffer would.
func (c *Backend) ScatterAdd(dst, src, ids kernels.Buffer, dim int) {
	d := c.floatOperand("ScatterAdd", "dst", dst, -1)
	s := c.floatOperand("ScatterAdd", "src", src, -1)
	ix := c.buf("ScatterAdd", "ids", ids)
	if d == nil || s == nil || ix == nil {
		return
	}
	if _, ok := c.idsOperand("ScatterAdd", ix, d, "dst", dim); !ok {
		return
	}
	if s.n != ix.n*dim {
		c.fail("ScatterAdd: src has %d elements, want %d ids × dim %d", s.n, ix.n, dim)
		return
	}
	if d == s {
		c.fail("ScatterAdd: dst and src are the same buffer")
		return
	}
	const colGrain = 64
	pieces := (dim + colGrain - 1) / colGrain
	kernels.ParallelFor(pieces, max(1, elemGrain/max(1, ix.n*colGrain)), func(lo, hi int) {
		j0, j1 := lo*colGrain, min(dim, hi*colGrain)
		if wide(d) {
			scatterCols[float64](d, s, ix.i32, dim, j0, j1)
		} else {
			scatterCols[float32](d, s, ix.i32, dim, j0, j1)
		}
	})
}

// scatterCols does ScatterAdd for columns [j0, j1).
func scatterCols[T realT](d, s *buffer, ids []int32, dim, j0, j1 int) {
	m := j1 - j0
	acc := make([]T, m)
	add := make([]T, m)
	for i, id := range ids {
		at := int(id)*dim + j0
		readReal(acc, d, at)
		readReal(add, s, i*dim+j0)
		for j, v := range add {
			acc[j] += v
		}
		writeReal(d, at, acc)
	}
}
