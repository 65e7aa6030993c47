package textenc

import (
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// keyLens checks a batch of token ids (B rows of equal length L, each id
// below vocab) and its attention mask (nil: no padding; else ones then
// zeros per row: right padding, the only kind the attention's key lengths
// express) and returns each row's number of real tokens and L.
func keyLens(ids, mask [][]int32, vocab int) ([]int32, int, error) {
	if len(ids) == 0 || len(ids[0]) == 0 {
		return nil, 0, fmt.Errorf("textenc: forward: empty batch")
	}
	l := len(ids[0])
	if mask != nil && len(mask) != len(ids) {
		return nil, 0, fmt.Errorf("textenc: forward: %d mask rows for %d id rows", len(mask), len(ids))
	}
	lens := make([]int32, len(ids))
	for b, row := range ids {
		if len(row) != l {
			return nil, 0, fmt.Errorf("textenc: forward: id row %d has %d tokens, row 0 has %d", b, len(row), l)
		}
		for i, id := range row {
			if id < 0 || int(id) >= vocab {
				return nil, 0, fmt.Errorf("textenc: forward: token id %d at [%d, %d] is outside the vocabulary of %d", id, b, i, vocab)
			}
		}
		lens[b] = int32(l)
		if mask == nil {
			continue
		}
		if len(mask[b]) != l {
			return nil, 0, fmt.Errorf("textenc: forward: mask row %d has %d entries for %d tokens", b, len(mask[b]), l)
		}
		n := 0
		for n < l && mask[b][n] == 1 {
			n++
		}
		for i := n; i < l; i++ {
			if mask[b][i] != 0 {
				return nil, 0, fmt.Errorf("textenc: forward: mask row %d is not ones then zeros (value %d at %d after padding began at %d); only right padding is supported", b, mask[b][i], i, n)
			}
		}
		if n == 0 {
			return nil, 0, fmt.Errorf("textenc: forward: mask row %d has no real token", b)
		}
		lens[b] = int32(n)
	}
	return lens, l, nil
}

// graphKey names a forward's graph region (kernels.BeginGraph) by what
// fixes its ops: the model, its dtype and the batch's shape. Key lengths
// and ids are uploads, replayed with their new contents.
func graphKey(model string, d kernels.DType, ids [][]int32) string {
	l := 0
	if len(ids) > 0 {
		l = len(ids[0])
	}
	return fmt.Sprintf("%s %v %dx%d", model, d, len(ids), l)
}

// ropeTensors builds the cos/sin tables [B, L, headDim/2] of a rotary
// embedding in dtype d: Gemma and Jina both build the angles, cosines and
// sines in float32 (ropeTable) and cast them to the activations' dtype.
func ropeTensors(e *ag.Engine, d kernels.DType, r Rope, headDim, b, l int) (cos, sin *ag.Tensor) {
	c1, s1 := ropeTable(r, headDim, l)
	n := len(c1)
	c, s := make([]float64, b*n), make([]float64, b*n)
	for i := range b {
		copy(c[i*n:], c1)
		copy(s[i*n:], s1)
	}
	shape := []int{b, l, headDim / 2}
	return e.FromFloat64(d, shape, c), e.FromFloat64(d, shape, s)
}

// lookup checks a batch (keyLens; at most maxLen tokens a row when maxLen >
// 0) and the engine, and returns the rows of the embedding table the ids
// select, [B, L, dim], with each row's number of real tokens. A nil table
// is a released model's.
func lookup(e *ag.Engine, table *ag.Tensor, ids, mask [][]int32, vocab, maxLen int) (*ag.Tensor, []int32, error) {
	if table == nil {
		return nil, nil, fmt.Errorf("textenc: forward on a released model")
	}
	lens, l, err := keyLens(ids, mask, vocab)
	if err != nil {
		return nil, nil, err
	}
	if maxLen > 0 && l > maxLen {
		return nil, nil, fmt.Errorf("textenc: forward: %d tokens exceed the model's max_position_embeddings %d", l, maxLen)
	}
	if err := e.Err(); err != nil {
		return nil, nil, fmt.Errorf("textenc: forward: engine already failed: %w", err)
	}
	flat := make([]int32, 0, len(ids)*l)
	for _, row := range ids {
		flat = append(flat, row...)
	}
	idt := e.FromInt32([]int{len(ids), l}, flat)
	emb := ag.Embedding(table, idt)
	idt.Release()
	return emb, lens, nil
}
