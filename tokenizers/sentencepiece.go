package tokenizers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// The SentencePiece model file is a protocol-buffer ModelProto
// (sentencepiece_model.proto). Only the fields that decide ids are read;
// the wire format is decoded here, without a protobuf library.

// Piece types (ModelProto.SentencePiece.Type).
const (
	pieceNormal      = 1
	pieceUnknown     = 2
	pieceControl     = 3
	pieceUserDefined = 4
	pieceUnused      = 5
	pieceByte        = 6
)

// Model types (TrainerSpec.ModelType).
const (
	spmUnigram = 1
	spmBPE     = 2
	spmWord    = 3
	spmChar    = 4
)

type spPiece struct {
	piece string
	score float32
	typ   int
}

// modelProto is what is read of a ModelProto, with the proto's defaults
// for absent fields.
type modelProto struct {
	pieces []spPiece
	// trainer_spec
	modelType                  int
	unkID, bosID, eosID, padID int
	unkPiece                   string
	// normalizer_spec
	charsmap       []byte
	addDummyPrefix bool
}

// protoReader walks the fields of one message.
type protoReader struct {
	b   []byte
	msg string // for errors
}

// varint reads a base-128 varint.
func (r *protoReader) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if len(r.b) == 0 {
			return 0, fmt.Errorf("%s: truncated varint", r.msg)
		}
		c := r.b[0]
		r.b = r.b[1:]
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%s: varint longer than 10 bytes", r.msg)
}

// field is one field of a message: its number, wire type and value (the
// varint or fixed value in num, the bytes of a length-delimited one in data).
type field struct {
	number int
	wire   int
	num    uint64
	data   []byte
}

// next reads the next field; ok is false at the end of the message.
func (r *protoReader) next() (f field, ok bool, err error) {
	if len(r.b) == 0 {
		return f, false, nil
	}
	key, err := r.varint()
	if err != nil {
		return f, false, err
	}
	f.number, f.wire = int(key>>3), int(key&7)
	if f.number == 0 {
		return f, false, fmt.Errorf("%s: field number 0", r.msg)
	}
	switch f.wire {
	case 0:
		f.num, err = r.varint()
	case 1:
		if len(r.b) < 8 {
			return f, false, fmt.Errorf("%s: field %d: truncated 64-bit value", r.msg, f.number)
		}
		f.num, r.b = binary.LittleEndian.Uint64(r.b), r.b[8:]
	case 2:
		var n uint64
		if n, err = r.varint(); err == nil {
			if n > uint64(len(r.b)) {
				return f, false, fmt.Errorf("%s: field %d: length %d runs past the end (%d bytes left): truncated", r.msg, f.number, n, len(r.b))
			}
			f.data, r.b = r.b[:n], r.b[n:]
		}
	case 5:
		if len(r.b) < 4 {
			return f, false, fmt.Errorf("%s: field %d: truncated 32-bit value", r.msg, f.number)
		}
		f.num, r.b = uint64(binary.LittleEndian.Uint32(r.b)), r.b[4:]
	default:
		return f, false, fmt.Errorf("%s: field %d has wire type %d, which a ModelProto does not use", r.msg, f.number, f.wire)
	}
	return f, err == nil, err
}

// fieldSpec names a field a message reads and gives its wire type.
type fieldSpec struct {
	name string
	wire int
}

// eachField calls fn on every field of message b (msg names it in errors)
// that specs lists, after checking its wire type; other fields are skipped.
func eachField(b []byte, msg string, specs map[int]fieldSpec, fn func(f field) error) error {
	r := protoReader{b: b, msg: msg}
	for {
		f, ok, err := r.next()
		if err != nil || !ok {
			return err
		}
		spec, known := specs[f.number]
		if !known {
			continue
		}
		if f.wire != spec.wire {
			return fmt.Errorf("%s.%s (field %d) has wire type %d, want %d", msg, spec.name, f.number, f.wire, spec.wire)
		}
		if err := fn(f); err != nil {
			return err
		}
	}
}

// int32Value is a varint field as a (possibly negative) int32.
func (f field) int32Value() int { return int(int32(f.num)) }

var (
	modelFields      = map[int]fieldSpec{1: {"pieces", 2}, 2: {"trainer_spec", 2}, 3: {"normalizer_spec", 2}}
	pieceFields      = map[int]fieldSpec{1: {"piece", 2}, 2: {"score", 5}, 3: {"type", 0}}
	normalizerFields = map[int]fieldSpec{2: {"precompiled_charsmap", 2}, 3: {"add_dummy_prefix", 0}}
	trainerFields    = map[int]fieldSpec{3: {"model_type", 0}, 40: {"unk_id", 0},
		41: {"bos_id", 0}, 42: {"eos_id", 0}, 43: {"pad_id", 0}, 45: {"unk_piece", 2}}
)

func parseModelProto(data []byte) (*modelProto, error) {
	m := &modelProto{modelType: spmUnigram, unkID: 0, bosID: 1, eosID: 2, padID: -1,
		unkPiece: "<unk>", addDummyPrefix: true}
	err := eachField(data, "ModelProto", modelFields, func(f field) error {
		switch f.number {
		case 1:
			p, err := parsePiece(f.data, len(m.pieces))
			if err != nil {
				return err
			}
			m.pieces = append(m.pieces, p)
		case 2:
			return eachField(f.data, "ModelProto.trainer_spec", trainerFields, m.trainerField)
		case 3:
			return eachField(f.data, "ModelProto.normalizer_spec", normalizerFields, func(f field) error {
				if f.number == 2 {
					m.charsmap = f.data
				} else {
					m.addDummyPrefix = f.num != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(m.pieces) == 0 {
		return nil, errors.New("ModelProto: no pieces")
	}
	return m, nil
}

func parsePiece(b []byte, index int) (spPiece, error) {
	p := spPiece{typ: pieceNormal}
	msg := fmt.Sprintf("ModelProto.pieces[%d]", index)
	err := eachField(b, msg, pieceFields, func(f field) error {
		switch f.number {
		case 1:
			if !utf8.Valid(f.data) {
				return fmt.Errorf("%s.piece is not UTF-8", msg)
			}
			p.piece = string(f.data)
		case 2:
			p.score = math.Float32frombits(uint32(f.num))
		case 3:
			p.typ = int(f.num)
			if p.typ < pieceNormal || p.typ > pieceByte {
				return fmt.Errorf("%s.type %d is not a piece type", msg, p.typ)
			}
		}
		return nil
	})
	if err == nil && p.piece == "" {
		err = fmt.Errorf("%s has no piece text", msg)
	}
	return p, err
}

func (m *modelProto) trainerField(f field) error {
	switch f.number {
	case 3:
		m.modelType = int(f.num)
	case 40:
		m.unkID = f.int32Value()
	case 41:
		m.bosID = f.int32Value()
	case 42:
		m.eosID = f.int32Value()
	case 43:
		m.padID = f.int32Value()
	case 45:
		m.unkPiece = string(f.data)
	}
	return nil
}
