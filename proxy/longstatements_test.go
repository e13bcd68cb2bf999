package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// TestLongStatementsKeepTheirFingerprint: Prisma-shaped SELECTs of 200 quoted columns, whose
// first sqlKept bytes end inside a quoted identifier and which differ only in their WHERE
// clause, each get the fingerprint of their whole text, prepared or simple; the text shown is
// the normalised prefix.
func TestLongStatementsKeepTheirFingerprint(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	conn := h.connect(t, ctx, h.superURL())
	var cols, defs []string
	for i := range 200 {
		cols = append(cols, fmt.Sprintf(`"LongUser"."someColumnNumber%d"`, i))
		defs = append(defs, fmt.Sprintf(`"someColumnNumber%d" int`, i))
	}
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE "LongUser" (`+strings.Join(defs, ", ")+`)`); err != nil {
		t.Fatal(err)
	}
	// A temporary table pins the session: the statements below are measured all the same.
	head := `SELECT ` + strings.Join(cols, ", ") + ` FROM "LongUser" WHERE `
	for strings.Count(head[:sqlKept], `"`)%2 == 0 {
		head = " " + head // until the cut falls inside a quoted identifier
	}
	wheres := []string{`"someColumnNumber1" = %s`, `"someColumnNumber2" = %s`, `("someColumnNumber1" = %s AND 1=1)`}
	want := map[string]bool{}
	for _, w := range wheres {
		fp, _, err := fingerprint.Of(head + fmt.Sprintf(w, "$1"))
		if err != nil {
			t.Fatal(err)
		}
		want[fp.String()] = true
		for i := range 3 {
			if _, err := conn.Exec(ctx, head+fmt.Sprintf(w, "$1"), i); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, head+fmt.Sprintf(w, fmt.Sprint(i+10)), pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
	}
	shown, err := sqlnorm.NormalizePrefix(head[:sqlKept])
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, st := range h.mgr.Statements() {
		if !strings.HasPrefix(st.Text, "SELECT") || !strings.Contains(st.Text, "LongUser") {
			continue
		}
		got[st.Fingerprint] = true
		if st.Calls != 6 {
			t.Errorf("statement %s: %d calls, want 6", st.Fingerprint, st.Calls)
		}
		if !strings.HasPrefix(shown, strings.TrimSuffix(st.Text, "…")) || len(st.Text) < 100 {
			t.Errorf("statement %s shows %q, want a prefix of %q", st.Fingerprint, st.Text, shown)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("fingerprints %v, want %v", got, want)
	}
}
