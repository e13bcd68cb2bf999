package pgauth

import (
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"
)

// SASLprep prepares a password for SCRAM-SHA-256 the way PostgreSQL's pg_saslprep does (SASLprep,
// RFC 4013, a stringprep profile of RFC 3454), so that a verifier derived here from a plaintext
// password matches what the server stores and what libpq clients prove.
//
// It follows PostgreSQL rather than the letter of the RFCs where they differ: pure ASCII is used
// as it is (control characters included); the prohibition and bidi checks look at the mapped
// input, not at the normalized output; and wherever SASLprep fails (invalid UTF-8, nothing left
// after mapping, a prohibited or unassigned character, a bidi violation) the password is used
// unchanged instead of being refused.
//
// Unicode versions: stringprep is defined on Unicode 3.2. Table A.1 (unassigned there) is kept
// as it is in saslprep_a1.go. NFKC and the bidi classes come from x/text's newer Unicode;
// normalization of characters assigned in 3.2 is stable across versions, and the few bidi
// classes that changed since 3.2 are corrected by the tables below.
func SASLprep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || !utf8.ValidString(password) {
		return password
	}
	// Map: non-ASCII spaces to U+0020, "commonly mapped to nothing" characters to nothing.
	mapped := make([]rune, 0, len(password))
	for _, r := range password {
		switch {
		case unicode.Is(saslprepSpaces, r):
			mapped = append(mapped, ' ')
		case unicode.Is(saslprepMapToNothing, r):
		default:
			mapped = append(mapped, r)
		}
	}
	if len(mapped) == 0 {
		return password
	}
	// Prohibit, then the bidi rule of RFC 3454 section 6: a string with a RandALCat character
	// has no LCat character and starts and ends with a RandALCat character.
	randAL := false
	for _, r := range mapped {
		if unicode.Is(saslprepProhibited, r) || unicode.Is(unicode.Noncharacter_Code_Point, r) || unicode.Is(saslprepUnassigned, r) {
			return password
		}
		randAL = randAL || isRandALCat(r)
	}
	if randAL {
		if !isRandALCat(mapped[0]) || !isRandALCat(mapped[len(mapped)-1]) {
			return password
		}
		for _, r := range mapped {
			if isLCat(r) {
				return password
			}
		}
	}
	return norm.NFKC.String(string(mapped))
}

// RFC 3454 table C.1.2: non-ASCII space characters, mapped to U+0020 (SASLprep, RFC 4013 2.1).
var saslprepSpaces = &unicode.RangeTable{R16: []unicode.Range16{
	{0x00a0, 0x00a0, 1}, {0x1680, 0x1680, 1}, {0x2000, 0x200b, 1}, {0x202f, 0x202f, 1},
	{0x205f, 0x205f, 1}, {0x3000, 0x3000, 1},
}}

// RFC 3454 table B.1: commonly mapped to nothing.
var saslprepMapToNothing = &unicode.RangeTable{R16: []unicode.Range16{
	{0x00ad, 0x00ad, 1}, {0x034f, 0x034f, 1}, {0x1806, 0x1806, 1}, {0x180b, 0x180d, 1},
	{0x200b, 0x200d, 1}, {0x2060, 0x2060, 1}, {0xfe00, 0xfe0f, 1}, {0xfeff, 0xfeff, 1},
}}

// RFC 3454 tables C.1.2, C.2.1, C.2.2, C.3, C.5, C.6, C.7, C.8, C.9 merged: prohibited output
// (SASLprep, RFC 4013 2.3). C.4, the noncharacters, is unicode.Noncharacter_Code_Point.
var saslprepProhibited = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x0000, 0x001f, 1}, {0x007f, 0x00a0, 1}, {0x0340, 0x0341, 1}, {0x06dd, 0x06dd, 1},
		{0x070f, 0x070f, 1}, {0x1680, 0x1680, 1}, {0x180e, 0x180e, 1}, {0x2000, 0x200f, 1},
		{0x2028, 0x202f, 1}, {0x205f, 0x2063, 1}, {0x206a, 0x206f, 1}, {0x2ff0, 0x2ffb, 1},
		{0x3000, 0x3000, 1}, {0xd800, 0xf8ff, 1}, {0xfeff, 0xfeff, 1}, {0xfff9, 0xfffd, 1},
	},
	R32: []unicode.Range32{
		{0x1d173, 0x1d17a, 1}, {0xe0001, 0xe0001, 1}, {0xe0020, 0xe007f, 1}, {0xf0000, 0xffffd, 1},
		{0x100000, 0x10fffd, 1},
	},
}

// isRandALCat reports membership of RFC 3454 table D.1 (bidi class R or AL in Unicode 3.2). The
// only code points whose R/AL membership changed since are prohibited anyway (U+06DD, U+070F).
func isRandALCat(r rune) bool {
	p, _ := bidi.LookupRune(r)
	return p.Class() == bidi.R || p.Class() == bidi.AL
}

// isLCat reports membership of RFC 3454 table D.2 (bidi class L in Unicode 3.2), from the
// current class corrected by the code points whose class L changed since 3.2.
func isLCat(r rune) bool {
	if unicode.Is(saslprepWasL, r) {
		return true
	}
	if unicode.Is(saslprepWasNotL, r) {
		return false
	}
	p, _ := bidi.LookupRune(r)
	return p.Class() == bidi.L
}

// Code points in RFC 3454 table D.2 (class L in Unicode 3.2) that are not L in Unicode 15 or in
// Unicode 17 (x/text's tables before and from Go 1.27).
var saslprepWasL = &unicode.RangeTable{
	R16: []unicode.Range16{{0x17b4, 0x17b5, 1}, {0x1885, 0x1886, 1}},
	R32: []unicode.Range32{
		{0x1d6c1, 0x1d6c1, 1}, {0x1d6db, 0x1d6db, 1}, {0x1d6fb, 0x1d6fb, 1}, {0x1d715, 0x1d715, 1},
		{0x1d735, 0x1d735, 1}, {0x1d74f, 0x1d74f, 1}, {0x1d76f, 0x1d76f, 1}, {0x1d789, 0x1d789, 1},
		{0x1d7a9, 0x1d7a9, 1}, {0x1d7c3, 0x1d7c3, 1},
	},
}

// Code points not in RFC 3454 table D.2 that are class L in Unicode 15 (Braille among them).
var saslprepWasNotL = &unicode.RangeTable{R16: []unicode.Range16{
	{0x0cbf, 0x0cbf, 1}, {0x0cc6, 0x0cc6, 1}, {0x1734, 0x1734, 1}, {0x2132, 0x2132, 1},
	{0x2800, 0x28ff, 1}, {0x302e, 0x302f, 1},
}}
