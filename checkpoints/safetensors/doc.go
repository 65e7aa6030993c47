// Package safetensors reads and writes the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header naming every tensor's dtype, shape and byte
// range, then the raw little-endian tensor bytes.
//
// The reader memory-maps the file so that a multi-gigabyte weight file is
// never copied into Go memory: Bytes returns a slice of the mapping, and the
// Float32/Float64/BF16 conversions allocate only the one tensor asked for.
// Every header field is validated before any tensor is handed out, so a
// truncated, foreign or hand-edited file is reported by name instead of
// producing garbage weights.
//
// The writer streams tensors to a temporary file, fsyncs it and renames it
// into place, so a crash or a failed write never leaves a partial file under
// the final name (checkpoints and the encode cache both rely on this).
package safetensors
