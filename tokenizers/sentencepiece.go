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
	modelType                    int
	byteFallback                 bool
	unkID, bosID, eosID, padID   int
	unkPiece, bosPiece, eosPiece string
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

// want checks a field's wire type.
func (f field) want(wire int, msg string) error {
	if f.wire != wire {
		return fmt.Errorf("%s: field %d has wire type %d, want %d", msg, f.number, f.wire, wire)
	}
	return nil
}

// int32Value is a varint field as a (possibly negative) int32.
func (f field) int32Value() int { return int(int32(f.num)) }

func parseModelProto(data []byte) (*modelProto, error) {
	m := &modelProto{modelType: spmUnigram, unkID: 0, bosID: 1, eosID: 2, padID: -1,
		unkPiece: "<unk>", bosPiece: "<s>", eosPiece: "</s>", addDummyPrefix: true}
	r := protoReader{b: data, msg: "ModelProto"}
	for {
		f, ok, err := r.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		switch f.number {
		case 1:
			if err := f.want(2, "ModelProto.pieces"); err != nil {
				return nil, err
			}
			p, err := parsePiece(f.data, len(m.pieces))
			if err != nil {
				return nil, err
			}
			m.pieces = append(m.pieces, p)
		case 2:
			if err := f.want(2, "ModelProto.trainer_spec"); err != nil {
				return nil, err
			}
			if err := m.parseTrainerSpec(f.data); err != nil {
				return nil, err
			}
		case 3:
			if err := f.want(2, "ModelProto.normalizer_spec"); err != nil {
				return nil, err
			}
			if err := m.parseNormalizerSpec(f.data); err != nil {
				return nil, err
			}
		}
	}
	if len(m.pieces) == 0 {
		return nil, errors.New("ModelProto: no pieces")
	}
	return m, nil
}

func parsePiece(b []byte, index int) (spPiece, error) {
	p := spPiece{typ: pieceNormal}
	msg := fmt.Sprintf("ModelProto.pieces[%d]", index)
	r := protoReader{b: b, msg: msg}
	hasPiece := false
	for {
		f, ok, err := r.next()
		if err != nil {
			return p, err
		}
		if !ok {
			break
		}
		switch f.number {
		case 1:
			if err := f.want(2, msg+".piece"); err != nil {
				return p, err
			}
			if !utf8.Valid(f.data) {
				return p, fmt.Errorf("%s.piece is not UTF-8", msg)
			}
			p.piece, hasPiece = string(f.data), true
		case 2:
			if err := f.want(5, msg+".score"); err != nil {
				return p, err
			}
			p.score = math.Float32frombits(uint32(f.num))
		case 3:
			if err := f.want(0, msg+".type"); err != nil {
				return p, err
			}
			p.typ = int(f.num)
			if p.typ < pieceNormal || p.typ > pieceByte {
				return p, fmt.Errorf("%s.type %d is not a piece type", msg, p.typ)
			}
		}
	}
	if !hasPiece || p.piece == "" {
		return p, fmt.Errorf("%s has no piece text", msg)
	}
	return p, nil
}

func (m *modelProto) parseTrainerSpec(b []byte) error {
	const msg = "ModelProto.trainer_spec"
	r := protoReader{b: b, msg: msg}
	for {
		f, ok, err := r.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		var werr error
		switch f.number {
		case 3:
			werr = f.want(0, msg+".model_type")
			m.modelType = int(f.num)
		case 35:
			werr = f.want(0, msg+".byte_fallback")
			m.byteFallback = f.num != 0
		case 40:
			werr = f.want(0, msg+".unk_id")
			m.unkID = f.int32Value()
		case 41:
			werr = f.want(0, msg+".bos_id")
			m.bosID = f.int32Value()
		case 42:
			werr = f.want(0, msg+".eos_id")
			m.eosID = f.int32Value()
		case 43:
			werr = f.want(0, msg+".pad_id")
			m.padID = f.int32Value()
		case 45:
			werr = f.want(2, msg+".unk_piece")
			m.unkPiece = string(f.data)
		case 46:
			werr = f.want(2, msg+".bos_piece")
			m.bosPiece = string(f.data)
		case 47:
			werr = f.want(2, msg+".eos_piece")
			m.eosPiece = string(f.data)
		}
		if werr != nil {
			return werr
		}
	}
}

func (m *modelProto) parseNormalizerSpec(b []byte) error {
	const msg = "ModelProto.normalizer_spec"
	r := protoReader{b: b, msg: msg}
	for {
		f, ok, err := r.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		var werr error
		switch f.number {
		case 2:
			werr = f.want(2, msg+".precompiled_charsmap")
			m.charsmap = f.data
		case 3:
			werr = f.want(0, msg+".add_dummy_prefix")
			m.addDummyPrefix = f.num != 0
		}
		if werr != nil {
			return werr
		}
	}
}
