package tokenizers

import (
	"sort"
	"unicode/utf8"
)

//go:generate go run ./internal/gengrapheme -tables tables.rs -out grapheme_table.go

// graphemeCat is a code point's category for extended grapheme cluster
// breaking (UAX #29), as unicode-segmentation classifies it: the
// Grapheme_Cluster_Break value, with Extended_Pictographic and
// InCB=Consonant as categories of their own.
type graphemeCat uint8

const (
	gcAny graphemeCat = iota
	gcCR
	gcControl
	gcExtend
	gcExtendedPictographic
	gcInCBConsonant
	gcL
	gcLF
	gcLV
	gcLVT
	gcPrepend
	gcRegionalIndicator
	gcSpacingMark
	gcT
	gcV
	gcZWJ
)

type graphemeRange struct {
	lo, hi rune
	cat    graphemeCat
}

type runeRange struct{ lo, hi rune }

// graphemeCategory returns r's category.
func graphemeCategory(r rune) graphemeCat {
	if r < 0x80 {
		switch {
		case r == '\r':
			return gcCR
		case r == '\n':
			return gcLF
		case r < 0x20 || r == 0x7f:
			return gcControl
		}
		return gcAny
	}
	i := sort.Search(len(graphemeRanges), func(i int) bool { return graphemeRanges[i].hi >= r })
	if i < len(graphemeRanges) && graphemeRanges[i].lo <= r {
		return graphemeRanges[i].cat
	}
	return gcAny
}

// isInCBExtend reports whether r has Indic_Conjunct_Break=Extend.
func isInCBExtend(r rune) bool {
	if r < 0x300 {
		return false
	}
	i := sort.Search(len(incbExtendRanges), func(i int) bool { return incbExtendRanges[i].hi >= r })
	return i < len(incbExtendRanges) && incbExtendRanges[i].lo <= r
}

// isInCBLinker reports whether r has Indic_Conjunct_Break=Linker (the
// viramas of Devanagari, Bengali, Gujarati, Oriya, Telugu and Malayalam).
func isInCBLinker(r rune) bool {
	switch r {
	case 0x94D, 0x9CD, 0xACD, 0xB4D, 0xC4D, 0xD4D:
		return true
	}
	return false
}

// graphemeSplitter walks a string one extended grapheme cluster at a time,
// with the rules of UAX #29 (Unicode 16) as unicode-segmentation applies
// them: GB3–GB13 with GB9c (Indic conjuncts) and GB11 (emoji ZWJ sequences).
type graphemeSplitter struct {
	s   string
	pos int
}

// next returns the next cluster, or "" at the end.
func (g *graphemeSplitter) next() string {
	s := g.s
	start := g.pos
	if start >= len(s) {
		return ""
	}
	r, n := utf8.DecodeRuneInString(s[start:])
	before := graphemeCategory(r)
	i := start + n
	// Context for the rules that look further back than one code point.
	riCount := 0 // regional indicators in a row ending at before
	if before == gcRegionalIndicator {
		riCount = 1
	}
	// pictBeforeZWJ: the code points up to before match ExtPict Extend* ZWJ.
	// pict: they match ExtPict Extend*.
	pict := before == gcExtendedPictographic
	pictBeforeZWJ := false
	// conjunct: they match InCB=Consonant [InCB=Extend InCB=Linker]*, with
	// linker telling whether a Linker occurred in that tail.
	conjunct := before == gcInCBConsonant
	linker := false
	for i < len(s) {
		r, n = utf8.DecodeRuneInString(s[i:])
		after := graphemeCategory(r)
		if graphemeBreak(before, after, riCount, pictBeforeZWJ, conjunct && linker) {
			break
		}
		// Advance the context over r.
		switch {
		case after == gcExtendedPictographic:
			pict, pictBeforeZWJ = true, false
		case after == gcExtend:
			pictBeforeZWJ = false
		case after == gcZWJ:
			pictBeforeZWJ = pict
			pict = false
		default:
			pict, pictBeforeZWJ = false, false
		}
		switch {
		case after == gcInCBConsonant:
			conjunct, linker = true, false
		case isInCBLinker(r):
			linker = linker || conjunct
		case isInCBExtend(r):
		default:
			conjunct, linker = false, false
		}
		if after == gcRegionalIndicator {
			riCount++
		} else {
			riCount = 0
		}
		before = after
		i += n
	}
	g.pos = i
	return s[start:i]
}

// graphemeBreak reports whether a cluster boundary falls between a code
// point of category before and one of category after. riCount is the
// number of regional indicators in a row ending at before, pictZWJ whether
// the text so far ends in ExtPict Extend* ZWJ, and conjunctLinked whether
// it ends in InCB=Consonant [Extend Linker]* with at least one Linker.
func graphemeBreak(before, after graphemeCat, riCount int, pictZWJ, conjunctLinked bool) bool {
	switch {
	case before == gcCR && after == gcLF: // GB3
		return false
	case before == gcControl || before == gcCR || before == gcLF: // GB4
		return true
	case after == gcControl || after == gcCR || after == gcLF: // GB5
		return true
	case before == gcL && (after == gcL || after == gcV || after == gcLV || after == gcLVT): // GB6
		return false
	case (before == gcLV || before == gcV) && (after == gcV || after == gcT): // GB7
		return false
	case (before == gcLVT || before == gcT) && after == gcT: // GB8
		return false
	case after == gcExtend || after == gcZWJ: // GB9
		return false
	case after == gcSpacingMark: // GB9a
		return false
	case before == gcPrepend: // GB9b
		return false
	case after == gcInCBConsonant: // GB9c
		return !conjunctLinked
	case before == gcZWJ && after == gcExtendedPictographic: // GB11
		return !pictZWJ
	case before == gcRegionalIndicator && after == gcRegionalIndicator: // GB12, GB13
		return riCount%2 == 0
	}
	return true // GB999
}
