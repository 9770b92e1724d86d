package policy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestTraceAgreesWithDecideShop(t *testing.T) {
	for _, unzoned := range []Action{Allow, Deny} {
		in := shopInput()
		in.Config.UnzonedDefault = unzoned
		c := Compile(in)
		if bad := append(checkTracer(c, in), checkSetShapes(c)...); len(bad) > 0 {
			t.Errorf("unzoned %s:\n%s", unzoned, strings.Join(bad, "\n"))
		}
	}
}

func TestTraceAgreesWithDecideRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		in := genInput(b)
		c := Compile(in)
		if bad := append(checkTracer(c, in), checkSetShapes(c)...); len(bad) > 0 {
			t.Fatalf("input %d (%x):\n%s", i, b, strings.Join(bad, "\n"))
		}
	}
}
