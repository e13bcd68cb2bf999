package pgauth

import "testing"

func TestSASLprep(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"ascii", "plain-pw", "plain-pw"},
		{"ascii control characters stay", "bell\x07pw", "bell\x07pw"},
		{"no-break space", "pass\u00a0word", "pass word"},
		{"ideographic space", "a\u3000b", "a b"},
		{"zero width space is a space (C.1.2 before B.1)", "a\u200bb", "a b"},
		{"soft hyphen mapped to nothing", "soft\u00adhyphen", "softhyphen"},
		{"variation selector mapped to nothing", "\u00e9\ufe0f", "\u00e9"},
		{"ligature", "\ufb01sh", "fish"},
		{"fullwidth", "\uff30\uff21\uff33\uff33\uff11\uff12\uff13", "PASS123"},
		{"composed", "caf" + "e\u0301", "caf\u00e9"},
		{"nothing left after mapping", "\u00ad\u200d", "\u00ad\u200d"},
		{"ascii control in non-ascii input", "\ufb01\u0007", "\ufb01\u0007"},
		{"private use", "\ufb01\ue000", "\ufb01\ue000"},
		{"plane 16 private use", "\ufb01\U00100000", "\ufb01\U00100000"},
		{"noncharacter", "\ufb01\U0001fffe", "\ufb01\U0001fffe"},
		{"left-to-right mark", "\ufb01\u200e", "\ufb01\u200e"},
		{"tag character", "\ufb01\U000e0041", "\ufb01\U000e0041"},
		{"unassigned in unicode 3.2", "\ufb01\U0001f600", "\ufb01\U0001f600"},
		{"added in unicode 4.0, unassigned in 3.2", "p\u00e4ss\u1d2c", "p\u00e4ss\u1d2c"},
		{"invalid utf-8", "\ufb01\xff", "\ufb01\xff"},
		{"right-to-left", "\u05d0\u00a0\u05d1", "\u05d0 \u05d1"},
		{"bidi: RandALCat and LCat", "\u05d0\u00a0a\u05d0", "\u05d0\u00a0a\u05d0"},
		{"bidi: RandALCat not last", "\u05d0\u00a01", "\u05d0\u00a01"},
		{"bidi: RandALCat not first", "1\u00a0\u05d0", "1\u00a0\u05d0"},
		// PostgreSQL checks the mapped input, before NFKC turns U+2122 into the LCat "TM".
		{"bidi checked before normalizing", "\u05d0\u2122\u05d0", "\u05d0TM\u05d0"},
		// Bidi classes as of Unicode 3.2: Braille was not L then, Khmer U+17B4 was.
		{"bidi: braille was not LCat", "\u05d0\u2801\u00a0\u05d0", "\u05d0\u2801 \u05d0"},
		{"bidi: U+17B4 was LCat", "\u05d0\u17b4\u00a0\u05d0", "\u05d0\u17b4\u00a0\u05d0"},
	} {
		if got := SASLprep(tc.in); got != tc.want {
			t.Errorf("%s: SASLprep(%+q) = %+q, want %+q", tc.name, tc.in, got, tc.want)
		}
	}
}
